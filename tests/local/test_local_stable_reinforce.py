"""stable_reinforce in the local backend, fast (numpy fake backend): stability records made
when a sample asks for them, provenance checked against them before anything runs, and the
4xx answers for every way a request can be wrong, through the unmodified official SDK and
raw HTTP. The loss itself and learning run on the real model in
test_local_stable_reinforce_e2e.py."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from tests.support.local_fake_backend import FakeBackend
from tests.support.local_support import FAKE, RawClient
from tinkex_jax.local import LocalServer, serve
from tinkex_jax.local._stability import SequenceRecord, StabilityRecords
from tinkex_jax.types import Datum, ModelInput, PromptProvenanceSpan, SampledProvenanceSpan
from tinkex_jax.wire import encode_forward_backward_request

tinker = pytest.importorskip("tinker")
T = tinker.types

PROMPT = [1, 2, 3, 4]


@pytest.fixture
def server(tmp_path: Any) -> Iterator[tuple[LocalServer, FakeBackend]]:
    backend = FakeBackend()
    with serve(tmp_path, base_models=[FAKE], backend=backend, stability_record_ttl_s=3600,
               stability_max_tokens=1000) as srv:
        yield srv, backend


@pytest.fixture
def official(server: tuple[LocalServer, FakeBackend]) -> Iterator[Any]:
    client = tinker.ServiceClient(base_url=server[0].base_url, api_key=server[0].api_key)
    yield client
    client.close("success").result()


def sample(training: Any, *, record: bool = True, n: int = 2, seed: int = 3) -> tuple[Any, Any]:
    """Sample `n` sequences of at least two tokens (stop=[] so none ends early)."""
    sampler = training.save_weights_and_get_sampling_client(record_stability_info=record)
    sampler = sampler.result() if hasattr(sampler, "result") else sampler
    prompt = T.ModelInput.from_ints(PROMPT)
    res = sampler.sample(prompt=prompt, num_samples=n, sampling_params=T.SamplingParams(
        max_tokens=4, temperature=1.0, seed=seed, stop=[])).result()
    return prompt, res


def rl_loop_datum(prompt: Any, seq: Any, advantage: float, *, spans: bool = True,
                  prompt_advantage: float = 0.0) -> Any:
    """A datum built as the cookbook's rl_loop.py builds it (targets 0 on the prompt)."""
    ob_len = prompt.length - 1
    toks = list(seq.tokens)
    model_input = prompt.append(T.EncodedTextChunk(tokens=toks[:-1]))
    datum = T.Datum(model_input=model_input, loss_fn_inputs={
        "target_tokens": T.TensorData.from_numpy(np.array([0] * ob_len + toks, np.int64)),
        "logprobs": T.TensorData.from_numpy(
            np.array([0.0] * ob_len + list(seq.logprobs), np.float32)),
        "advantages": T.TensorData.from_numpy(np.array(
            [prompt_advantage] * ob_len + [advantage] * len(toks), np.float32))})
    if not spans:
        return datum
    sid = seq.sequence_id
    return datum.with_provenance(
        model_input=[T.PromptProvenanceSpan(sequence_id=sid, length=prompt.length),
                     T.SampledProvenanceSpan(sequence_id=sid, length=len(toks) - 1)],
        loss_fn_inputs=[T.PromptProvenanceSpan(sequence_id=sid, offset=1,
                                               length=prompt.length - 1),
                        T.SampledProvenanceSpan(sequence_id=sid, length=len(toks))])


def fb_calls(backend: FakeBackend) -> int:
    return sum(1 for c in backend.calls if c[0] in ("forward_backward", "forward"))


def expect_error(call: Any, cls: Any, *fragments: str) -> str:
    with pytest.raises(cls) as info:
        call()
    text = str(info.value)
    for fragment in fragments:
        assert fragment in text, text
    return text


# ----------------------------------------------------------------------------- records


def test_records_expire_without_use_and_use_renews_them() -> None:
    now = [1000.0]
    records = StabilityRecords(ttl_s=100.0, max_tokens=10_000, clock=lambda: now[0])
    records.record("a", SequenceRecord.create("s", [1, 2], [3, 4], [-0.1, -0.2]))
    records.record("b", SequenceRecord.create("s", [1, 2], [5], [-0.3]))
    data = [Datum(model_input=ModelInput.from_ints([1, 2, 3]),
                  loss_fn_inputs={"target_tokens": [2, 3, 4], "advantages": [0.0, 1.0, 1.0]},
                  model_input_spans=[PromptProvenanceSpan(sequence_id="a", length=2),
                                     SampledProvenanceSpan(sequence_id="a", length=1)],
                  loss_fn_input_spans=[PromptProvenanceSpan(sequence_id="a", offset=1,
                                                            length=1),
                                       SampledProvenanceSpan(sequence_id="a", length=2)])]
    now[0] += 90
    (derived,) = records.resolve("s", data)  # uses (and so renews) "a" only
    np.testing.assert_allclose(derived["sampled_logprobs"], [0.0, -0.1, -0.2])
    assert derived["sampled_mask"].tolist() == [0.0, 1.0, 1.0]
    now[0] += 20  # "b": 110 s without use; "a": 20 s since its use
    assert records.collect() == 1 and len(records) == 1
    records.resolve("s", data)
    now[0] += 101
    with pytest.raises(Exception, match="expired: not used for 100 s"):
        records.resolve("s", data)


def test_records_are_bounded_least_recently_used_first() -> None:
    records = StabilityRecords(ttl_s=100.0, max_tokens=10, clock=lambda: 0.0)
    prompt = np.array([1, 2, 3], np.int32)
    prompt.setflags(write=False)
    for i in range(4):  # 3 prompt + 1 sampled = 4 tokens each: two fit in 10
        records.record(f"s{i}", SequenceRecord.create("s", prompt, [i], [-1.0]))
    assert len(records) == 2 and records.tokens == 8
    assert SequenceRecord.create("s", prompt, [1], [-1.0]).prompt is prompt  # shared, no copy
    with pytest.raises(ValueError, match="one logprob per token"):
        SequenceRecord.create("s", prompt, [1, 2], [-1.0])


# ----------------------------------------------------------------------------- the server


def test_a_valid_request_trains_and_names_the_recorded_sequences(
        server: tuple[LocalServer, FakeBackend], official: Any) -> None:
    srv, backend = server
    training = official.create_lora_training_client(base_model=FAKE, rank=2).result()
    prompt, res = sample(training)
    ids = [s.sequence_id for s in res.sequences]
    assert len(set(ids)) == 2 and all(ids)
    assert len(srv.engine.stability) == 2
    data = [rl_loop_datum(prompt, s, a) for s, a in zip(res.sequences, [1.0, -1.0])]
    before = fb_calls(backend)
    out = training.forward_backward(data, "stable_reinforce").result()
    assert fb_calls(backend) == before + 1 and len(out.loss_fn_outputs) == 2
    # fresh samples from the same weights: on-policy, nothing capped or dropped
    assert out.metrics["stable_reinforce/truncated_tokens:sum"] == 0
    assert out.metrics["stable_reinforce/dropped_datums:sum"] == 0
    assert out.metrics["stable_reinforce/max_abs_log_ratio:max"] < 1e-4
    training.optim_step(T.AdamParams(learning_rate=0.1)).result()
    # what the server handed the loss: the recorded logprobs at sampled positions only
    record = srv.engine.stability._entries[ids[0]].record
    np.testing.assert_allclose(record.logprobs, res.sequences[0].logprobs, rtol=1e-6)
    assert record.prompt.tolist() == PROMPT and record.tokens.tolist() == res.sequences[0].tokens


def test_provenance_errors_through_the_official_sdk(
        server: tuple[LocalServer, FakeBackend], official: Any, tmp_path: Any) -> None:
    srv, backend = server
    training = official.create_lora_training_client(base_model=FAKE, rank=2).result()
    prompt, res = sample(training)
    seq = res.sequences[0]
    good = rl_loop_datum(prompt, seq, 1.0)
    before = fb_calls(backend)

    def fb(data: list[Any], **kw: Any) -> Any:
        return lambda: training.forward_backward(data, "stable_reinforce", **kw).result()

    # missing provenance: the second datum has none; the first is not applied either
    expect_error(fb([good, rl_loop_datum(prompt, seq, 1.0, spans=False)]),
                 tinker.BadRequestError, "data[1]: expected provenance spans",
                 "record_stability_info=True", "with_provenance")
    # sampled without record_stability_info: the id is unknown
    _, plain = sample(training, record=False)
    expect_error(fb([rl_loop_datum(prompt, plain.sequences[0], 1.0)]), tinker.NotFoundError,
                 f"unknown sequence_id {plain.sequences[0].sequence_id!r}",
                 "record_stability_info=True")
    # a span past the end of its sequence's sampled tokens
    n = len(seq.tokens)
    sid = seq.sequence_id
    bad_range = good.with_provenance(
        model_input=good.model_input_spans,
        loss_fn_inputs=[T.PromptProvenanceSpan(sequence_id=sid, offset=1, length=2),
                        T.SampledProvenanceSpan(sequence_id=sid, offset=1, length=n + 1)])
    expect_error(fb([bad_range]), tinker.BadRequestError, "loss_fn_input_spans[1]",
                 "out of range", f"has {n} sampled tokens")
    # a token that is not the recorded one (model input) and a wrong sampled target
    tokens = prompt.to_ints() + list(seq.tokens[:-1])
    tokens[-1] = (tokens[-1] + 1) % 15
    tampered = T.Datum(model_input=T.ModelInput.from_ints(tokens),
                       loss_fn_inputs=good.loss_fn_inputs,
                       model_input_spans=good.model_input_spans,
                       loss_fn_input_spans=good.loss_fn_input_spans)
    expect_error(fb([tampered]), tinker.BadRequestError, f"position {len(tokens) - 1}",
                 "model_input_spans[1]", "the record of sequence")
    targets = good.loss_fn_inputs["target_tokens"].to_numpy().copy()
    targets[-1] = (targets[-1] + 1) % 15
    wrong_target = T.Datum(model_input=good.model_input,
                           loss_fn_inputs={**good.loss_fn_inputs,
                                           "target_tokens": T.TensorData.from_numpy(targets)},
                           model_input_spans=good.model_input_spans,
                           loss_fn_input_spans=good.loss_fn_input_spans)
    expect_error(fb([wrong_target]), tinker.BadRequestError, "loss_fn_input_spans[1]",
                 f"token {int(targets[-1])}")
    # spans that do not tile (the official Datum checks tiling only in with_provenance)
    short = T.Datum(model_input=good.model_input, loss_fn_inputs=good.loss_fn_inputs,
                    model_input_spans=good.model_input_spans[:1],
                    loss_fn_input_spans=good.loss_fn_input_spans)
    expect_error(fb([short]), tinker.BadRequestError, "model_input_spans")
    # an advantage on a prompt position
    expect_error(fb([rl_loop_datum(prompt, seq, 1.0, prompt_advantage=0.5)]),
                 tinker.BadRequestError, "is a prompt position", "advantage 0")
    # config checks of the loss table
    expect_error(fb([good], loss_fn_config={"ratio_cap": 0.5}), tinker.BadRequestError,
                 "ratio_cap", ">= 1")
    expect_error(fb([good], loss_fn_config={"clip_low_threshold": 0.5}),
                 tinker.BadRequestError, "does not accept loss_fn_config keys")
    assert fb_calls(backend) == before  # nothing ran, nothing half-applied

    # another session's sequence
    other = tinker.ServiceClient(base_url=srv.base_url, api_key=srv.api_key)
    try:
        theirs = other.create_lora_training_client(base_model=FAKE, rank=2).result()
        expect_error(lambda: theirs.forward_backward([good], "stable_reinforce").result(),
                     tinker.PermissionDeniedError, "sampled in another session")
    finally:
        other.close("success").result()

    # expiry: a day without use by default; this server keeps records 3600 s
    storage = srv.engine.storage
    storage._clock = lambda: time.time() + 3700
    expect_error(fb([good]), tinker.NotFoundError, "is gone", "expired: not used for 3600 s")
    assert fb_calls(backend) == before


def test_the_memory_bound_drops_the_oldest_records(
        server: tuple[LocalServer, FakeBackend], official: Any) -> None:
    srv, _ = server
    training = official.create_lora_training_client(base_model=FAKE, rank=2).result()
    prompt, first = sample(training, n=1, seed=1)
    for seed in range(2, 200):  # 8 tokens per record; the server keeps 1000 tokens
        sample(training, n=1, seed=seed)
        if first.sequences[0].sequence_id not in srv.engine.stability._entries:
            break
    assert srv.engine.stability.tokens <= 1000
    expect_error(
        lambda: training.forward_backward([rl_loop_datum(prompt, first.sequences[0], 1.0)],
                                          "stable_reinforce").result(),
        tinker.NotFoundError, "record memory bound", "stability_max_tokens")


def test_raw_http_errors_and_recording_needs_a_sampling_session(
        server: tuple[LocalServer, FakeBackend]) -> None:
    srv, _ = server
    raw = RawClient(srv)
    try:
        session = raw.session()
        model = raw.create_model(session)
        adhoc = raw.post("asample", {
            "base_model": FAKE, "seq_id": 1, "num_samples": 1, "record_stability_info": True,
            "prompt": {"chunks": [{"type": "encoded_text", "tokens": PROMPT}]},
            "sampling_params": {"max_tokens": 2}})
        assert adhoc.status_code == 400
        assert "record_stability_info needs a sampling session" in adhoc.json()["detail"]
        datum = Datum(model_input=ModelInput.from_ints(PROMPT),
                      loss_fn_inputs={"target_tokens": [2, 3, 4, 5],
                                      "advantages": [0.0, 1.0, 1.0, 1.0]},
                      model_input_spans=[PromptProvenanceSpan(sequence_id="nope:1:0",
                                                              length=4)],
                      loss_fn_input_spans=[SampledProvenanceSpan(sequence_id="nope:1:0",
                                                                 length=4)])
        unknown = raw.fb_request(model, 1, [datum], loss_fn="stable_reinforce")
        assert unknown.status_code == 404 and unknown.json()["code"] == "not_found"
        assert "unknown sequence_id 'nope:1:0'" in unknown.json()["detail"]
        # an empty span message (neither arm set) is a 400, not a server failure
        from tinkex_jax.wire import tinker_public_pb2 as pb

        msg = pb.ForwardBackwardRequest()
        msg.ParseFromString(encode_forward_backward_request(unknown_request(model, datum)))
        msg.data[0].model_input_spans[0].Clear()
        empty = raw.http.post("/api/v1/forward_backward", content=msg.SerializeToString(),
                              headers={"Content-Type": "application/x-protobuf"})
        assert empty.status_code == 400, empty.text
        assert "model_input_spans[0]" in empty.json()["detail"]
        custom = raw.fb_request(model, 3, [datum], loss_fn="custom")
        assert custom.status_code == 400
        assert "not a built-in loss this server computes" in custom.json()["detail"]
    finally:
        raw.http.close()


def unknown_request(model: str, datum: Datum) -> Any:
    from tinkex_jax.types import ForwardBackwardRequest

    return ForwardBackwardRequest(model_id=model, seq_id=2, data=[datum],
                                  loss_fn="stable_reinforce")
