"""The unmodified official ``tinker`` 0.38.0 SDK against the local backend, end to end.

One ServiceClient drives the whole happy path on the tiny preset; each step asserts real
values (losses fall, shapes match, logprobs agree across training / sampling / restored
checkpoints), not just the absence of exceptions.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from tests.support.local_support import TINY

pytestmark = [pytest.mark.official, pytest.mark.slow]

tinker = pytest.importorskip("tinker")
T = tinker.types

TEXTS = ["abc=abc\nxyz=xyz\nqq", "hello world, hello!!", "def f(x): return x+1",
         "12+7=19\n3+4=7\n5+5=1"]


def ids(text: str) -> list[int]:
    return list(text.encode())


def ce_datum(text: str) -> Any:
    toks = ids(text)
    return T.Datum(model_input=T.ModelInput.from_ints(toks[:-1]),
                   loss_fn_inputs={"target_tokens": toks[1:],
                                   "weights": [1.0] * (len(toks) - 1)})


def rl_datum(text: str, sampling_logprobs: np.ndarray, advantage: float) -> Any:
    toks = ids(text)
    n = len(toks) - 1
    return T.Datum(model_input=T.ModelInput.from_ints(toks[:-1]), loss_fn_inputs={
        "target_tokens": toks[1:],
        "logprobs": T.TensorData.from_numpy(np.asarray(sampling_logprobs, np.float32)),
        "advantages": T.TensorData.from_numpy(np.full(n, advantage, np.float32)),
        "sequence_ratio_mask": T.TensorData.from_numpy(np.ones(n, np.float32))})


def logprobs_of(out: Any) -> list[np.ndarray]:
    return [np.asarray(o["logprobs"].to_numpy()) for o in out.loss_fn_outputs]


@pytest.fixture(scope="module")
def service(tiny_server: Any) -> Iterator[Any]:
    client = tinker.ServiceClient(base_url=tiny_server.base_url, api_key=tiny_server.api_key)
    yield client


@pytest.fixture(scope="module")
def trained(service: Any) -> dict[str, Any]:
    """A training client after a few cross-entropy steps, with its losses."""
    tc = service.create_lora_training_client(base_model=TINY, rank=8, seed=0).result()
    data = [ce_datum(t) for t in TEXTS]
    losses = []
    for _ in range(6):
        fb = tc.forward_backward(data, "cross_entropy")
        opt = tc.optim_step(T.AdamParams(learning_rate=1e-2))
        losses.append(fb.result().metrics["loss:sum"])
        assert opt.result().metrics["learning_rate:mean"] == pytest.approx(1e-2)
    return {"tc": tc, "data": data, "losses": losses}


def test_create_and_get_info(trained: dict[str, Any]) -> None:
    info = trained["tc"].get_info()
    assert info.model_data.model_name == TINY
    assert info.model_data.tokenizer_id == TINY
    assert info.lora_rank == 8 and info.is_lora
    assert info.model_id == trained["tc"].model_id
    assert ":train:" in info.model_id


def test_cross_entropy_learns(trained: dict[str, Any]) -> None:
    losses = trained["losses"]
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.8 * losses[0], losses


def test_forward_matches_loss_and_shapes(trained: dict[str, Any]) -> None:
    tc, data = trained["tc"], trained["data"]
    out = tc.forward(data, "cross_entropy").result()
    assert len(out.loss_fn_outputs) == len(data)
    for datum, o in zip(data, out.loss_fn_outputs):
        n = datum.model_input.length
        assert o["logprobs"].shape == [n] or tuple(o["logprobs"].shape) == (n,)
        assert np.all(o["logprobs"].to_numpy() <= 0)
        np.testing.assert_allclose(o["elementwise_loss"].to_numpy(),
                                   -o["logprobs"].to_numpy(), rtol=1e-5, atol=1e-6)
    total = -sum(float(lp.sum()) for lp in logprobs_of(out))
    assert out.metrics["loss:sum"] == pytest.approx(total, rel=1e-4)
    # forward does not train: a second forward gives the same numbers
    again = tc.forward(data, "cross_entropy").result()
    for a, b in zip(logprobs_of(out), logprobs_of(again)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("loss_fn", ["importance_sampling", "ppo", "cispo", "dro", "gspo"])
def test_rl_losses_at_ratio_one(service: Any, loss_fn: str) -> None:
    """With sampling logprobs equal to the model's, every ratio is 1, so the losses have
    closed forms: IS/PPO/GSPO = -sum(A); CISPO/DRO = -sum(lp * A)."""
    tc = service.create_lora_training_client(base_model=TINY, rank=4, seed=1).result()
    texts = TEXTS[:2]
    current = logprobs_of(tc.forward([ce_datum(t) for t in texts], "cross_entropy").result())
    adv = [1.5, -0.5]
    data = [rl_datum(t, lp, a) for t, lp, a in zip(texts, current, adv)]
    out = tc.forward_backward(data, loss_fn).result()
    lps = logprobs_of(out)
    for got, want in zip(lps, current):
        np.testing.assert_allclose(got, want, atol=2e-5)
    if loss_fn in ("importance_sampling", "ppo", "gspo"):
        expected = -sum(a * lp.size for a, lp in zip(adv, current))
    else:
        expected = -sum(a * float(lp.sum()) for a, lp in zip(adv, current))
    assert out.metrics["loss:sum"] == pytest.approx(expected, rel=1e-3, abs=1e-3)
    metrics = tc.optim_step(T.AdamParams(learning_rate=1e-3)).result().metrics
    assert metrics["grad_norm:mean"] > 0


def test_loss_fn_config_reaches_the_server(service: Any) -> None:
    # PPO at ratio 1.5 (sampling logprobs below the current ones by log 1.5) with A = 1:
    # every token's loss is -min(1.5, clip_high), so the configured threshold shows directly
    tc = service.create_lora_training_client(base_model=TINY, rank=4, seed=1).result()
    current = logprobs_of(tc.forward([ce_datum(TEXTS[0])], "cross_entropy").result())[0]
    toks = list(TEXTS[0].encode())
    datum = T.Datum(model_input=T.ModelInput.from_ints(toks[:-1]), loss_fn_inputs={
        "target_tokens": toks[1:],
        "logprobs": (current - np.log(1.5)).astype(np.float32).tolist(),
        "advantages": [1.0] * current.size})
    for clip_high, expected in ((1.2, 1.2), (1.4, 1.4), (2.0, 1.5)):
        out = tc.forward([datum], "ppo", loss_fn_config={"clip_low_threshold": 0.8,
                                                         "clip_high_threshold": clip_high})
        assert out.result().metrics["loss:sum"] == pytest.approx(-expected * current.size,
                                                                 rel=1e-4)


def test_state_round_trip_with_and_without_optimizer(service: Any,
                                                     trained: dict[str, Any]) -> None:
    tc, data = trained["tc"], trained["data"]
    saved = tc.save_state("ckpt-a").result().path
    assert saved == f"tinker://{tc.model_id}/weights/ckpt-a"
    at_save = logprobs_of(tc.forward(data, "cross_entropy").result())
    step = T.AdamParams(learning_rate=5e-3, weight_decay=0.01, grad_clip_norm=1.0)

    def one_step(client: Any) -> list[np.ndarray]:
        client.forward_backward(data, "cross_entropy").result()
        client.optim_step(step).result()
        return logprobs_of(client.forward(data, "cross_entropy").result())

    with_opt = service.create_training_client_from_state_with_optimizer(saved).result()
    without = service.create_training_client_from_state(saved).result()
    assert with_opt.model_id.endswith(":train:" + with_opt.model_id.rsplit(":", 1)[1])
    for client in (with_opt, without):  # weights restored exactly
        for a, b in zip(logprobs_of(client.forward(data, "cross_entropy").result()), at_save):
            np.testing.assert_allclose(a, b, atol=1e-6)
    original = one_step(tc)
    resumed = one_step(with_opt)
    fresh = one_step(without)
    for a, b in zip(original, resumed):
        np.testing.assert_allclose(a, b, atol=1e-5)  # same Adam moments, same step
    assert any(not np.allclose(a, b, atol=1e-5) for a, b in zip(original, fresh))
    # the deprecated in-place load (legacy load_weights form) rewinds the same client
    with pytest.warns(FutureWarning):
        tc.load_state_with_optimizer(saved).result()
    for a, b in zip(logprobs_of(tc.forward(data, "cross_entropy").result()), at_save):
        np.testing.assert_allclose(a, b, atol=1e-6)
    for a, b in zip(one_step(tc), resumed):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_sampling_from_saved_and_ephemeral_weights(service: Any,
                                                   trained: dict[str, Any]) -> None:
    tc = trained["tc"]
    path = tc.save_weights_for_sampler("final").result().path
    assert path == f"tinker://{tc.model_id}/sampler_weights/final"
    sampler = service.create_sampling_client(model_path=path).result()
    prompt = T.ModelInput.from_ints(ids("abc=abc\nxyz="))
    res = sampler.sample(prompt, num_samples=3,
                         sampling_params=T.SamplingParams(max_tokens=8, seed=7, temperature=0.7),
                         include_prompt_logprobs=True, topk_prompt_logprobs=3).result()
    assert len(res.sequences) == 3
    for seq in res.sequences:
        assert 1 <= len(seq.tokens) <= 8 and len(seq.logprobs) == len(seq.tokens)
        assert seq.stop_reason in ("length", "stop")
        assert all(0 <= t < 259 for t in seq.tokens)
    assert res.prompt_logprobs[0] is None and len(res.prompt_logprobs) == prompt.length
    assert all(lp is not None and lp <= 0 for lp in res.prompt_logprobs[1:])
    top = res.topk_prompt_logprobs
    assert top[0] is None and all(len(row) == 3 for row in top[1:])
    assert all(row[0][1] >= row[1][1] >= row[2][1] for row in top[1:])
    # same seed, same samples
    again = sampler.sample(prompt, num_samples=3, sampling_params=T.SamplingParams(
        max_tokens=8, seed=7, temperature=0.7)).result()
    assert [s.tokens for s in again.sequences] == [s.tokens for s in res.sequences]
    # sampled-token logprobs are the training model's logprobs of those tokens
    seq = res.sequences[0]
    full = ids("abc=abc\nxyz=") + list(seq.tokens)
    fwd = tc.forward([T.Datum(model_input=T.ModelInput.from_ints(full[:-1]),
                              loss_fn_inputs={"target_tokens": full[1:],
                                              "weights": [1.0] * (len(full) - 1)})],
                     "cross_entropy").result()
    tail = logprobs_of(fwd)[0][-len(seq.tokens):]
    np.testing.assert_allclose(tail, seq.logprobs, atol=1e-4)
    # ephemeral sampler over the same weights: compute_logprobs agrees
    ephemeral = tc.save_weights_and_get_sampling_client().result()
    assert ephemeral.get_base_model() == TINY
    lp_eph = ephemeral.compute_logprobs(T.ModelInput.from_ints(full)).result()
    lp_saved = sampler.compute_logprobs(T.ModelInput.from_ints(full)).result()
    assert lp_eph[0] is None and lp_saved[0] is None
    np.testing.assert_allclose(lp_eph[1:], lp_saved[1:], atol=1e-5)
    np.testing.assert_allclose(lp_eph[1:], logprobs_of(fwd)[0], atol=1e-4)
    last = ephemeral.compute_logprobs(T.ModelInput.from_ints(full),
                                      prompt_logprobs_last_n=3).result()
    assert all(v is None for v in last[:-3])
    np.testing.assert_allclose(last[-3:], lp_eph[-3:], atol=1e-6)


def test_base_model_sampling_with_stops(service: Any) -> None:
    sampler = service.create_sampling_client(base_model=TINY).result()
    prompt = T.ModelInput.from_ints(ids("abc=abc\nxyz=xyz\nhello="))
    greedy = sampler.sample(prompt, num_samples=1, sampling_params=T.SamplingParams(
        max_tokens=24, temperature=0.0, stop=["\n"])).result().sequences[0]
    text = bytes(t for t in greedy.tokens if t < 256).decode(errors="replace")
    if greedy.stop_reason == "stop":
        assert text.endswith("\n") and text.count("\n") == 1
    else:
        assert "\n" not in text and len(greedy.tokens) == 24
    capped = sampler.sample(prompt, num_samples=2, sampling_params=T.SamplingParams(
        max_tokens=3, temperature=1.0, top_k=5, top_p=0.9, seed=1, stop=[])).result()
    assert all(len(s.tokens) == 3 and s.stop_reason == "length" for s in capped.sequences)


def test_rest_client(service: Any, trained: dict[str, Any], tiny_server: Any) -> None:
    tc = trained["tc"]
    rc = tinker.RestClient(base_url=tiny_server.base_url, api_key=tiny_server.api_key)
    path = tc.save_state("rest-a").result().path
    sampler_path = tc.save_weights_for_sampler("rest-b").result().path
    runs = rc.list_training_runs(limit=100).result()
    assert tc.model_id in [r.training_run_id for r in runs.training_runs]
    assert runs.cursor.total_count >= 1
    run = rc.get_training_run(tc.model_id).result()
    assert run.base_model == TINY and run.lora_rank == 8 and run.is_lora
    assert run.last_checkpoint.tinker_path == path
    assert run.last_sampler_checkpoint.tinker_path == sampler_path
    assert rc.get_training_run_by_tinker_path(path).result().training_run_id == tc.model_id
    listed = {c.checkpoint_id: c for c in rc.list_checkpoints(tc.model_id).result().checkpoints}
    assert {"weights/rest-a", "sampler_weights/rest-b"} <= set(listed)
    assert listed["weights/rest-a"].checkpoint_type == "training"
    assert listed["weights/rest-a"].size_bytes > 0
    user = rc.list_user_checkpoints(limit=100).result().checkpoints
    assert {path, sampler_path} <= {c.tinker_path for c in user}
    rc.set_checkpoint_ttl_from_tinker_path(path, 7200).result()
    rc.publish_checkpoint_from_tinker_path(path).result()
    now = {c.checkpoint_id: c for c in rc.list_checkpoints(tc.model_id).result().checkpoints}
    assert now["weights/rest-a"].public is True and now["weights/rest-a"].expires_at
    rc.unpublish_checkpoint_from_tinker_path(path).result()
    rc.set_checkpoint_ttl_from_tinker_path(path, None).result()
    now = {c.checkpoint_id: c for c in rc.list_checkpoints(tc.model_id).result().checkpoints}
    assert now["weights/rest-a"].public is False and now["weights/rest-a"].expires_at is None
    info = rc.get_weights_info_by_tinker_path(path).result()
    assert (info.base_model, info.lora_rank, info.is_lora) == (TINY, 8, True)
    assert info.train_attn and info.train_mlp and info.train_unembed
    sampler = service.create_sampling_client(model_path=sampler_path).result()
    got = rc.get_sampler(sampler._sampling_session_id).result()
    assert got.base_model == TINY and got.model_path == sampler_path
    session_id = tc.model_id.split(":train:")[0]
    assert session_id in rc.list_sessions(limit=100).result().sessions
    session = rc.get_session(session_id).result()
    assert tc.model_id in session.training_run_ids
    assert sampler._sampling_session_id in session.sampler_ids
    ext = tc.save_weights_external("hf-export").result()
    assert ext.path == f"tinker://{tc.model_id}/external_weights/hf-export"
    urls = rc.get_external_weights_urls(ext.path).result().urls
    assert set(urls) == {"adapter_config.json", "adapter_model.safetensors"}
    assert all(u.startswith(tiny_server.base_url) for u in urls.values())
    with urllib.request.urlopen(urls["adapter_config.json"]) as f:
        config = json.loads(f.read())
    assert config["r"] == 8 and config["base_model_name_or_path"] == TINY
    assert rc.get_weights_info_by_tinker_path(ext.path).result().lora_rank == 8
    rc.delete_checkpoint_from_tinker_path(sampler_path).result()
    after = {c.checkpoint_id for c in rc.list_checkpoints(tc.model_id).result().checkpoints}
    assert "sampler_weights/rest-b" not in after
    with pytest.raises(tinker.NotFoundError, match="No checkpoint"):
        service.create_sampling_client(model_path=sampler_path).result()
    caps = rc.get_server_capabilities().result()
    assert [m.model_name for m in caps.supported_models] == [TINY]


def test_a_corrupted_run_as_the_official_sdk_sees_it(service: Any, tiny_server: Any) -> None:
    tc = service.create_lora_training_client(base_model=TINY, rank=4, seed=0).result()
    data = [ce_datum(TEXTS[0])]
    tc.forward_backward(data, "cross_entropy").result()
    tc.optim_step(T.AdamParams(learning_rate=1e-3)).result()
    path = tc.save_state("before-loss").result().path
    rc = tinker.RestClient(base_url=tiny_server.base_url, api_key=tiny_server.api_key)
    assert rc.get_training_run(tc.model_id).result().corrupted is False
    tiny_server.corrupt_run(tc.model_id, "its state was lost")
    assert rc.get_training_run(tc.model_id).result().corrupted is True
    with pytest.raises(tinker.RequestFailedError, match="is corrupted"):
        tc.forward_backward(data, "cross_entropy").result()
    resumed = service.create_training_client_from_state_with_optimizer(path).result()
    resumed.forward_backward(data, "cross_entropy").result()
    resumed.optim_step(T.AdamParams(learning_rate=1e-3)).result()
    assert rc.get_training_run(resumed.model_id).result().corrupted is False


def test_close_finishes_the_session(tiny_server: Any) -> None:
    client = tinker.ServiceClient(base_url=tiny_server.base_url, api_key=tiny_server.api_key)
    tc = client.create_lora_training_client(base_model=TINY, rank=2).result()
    tc.forward([ce_datum(TEXTS[0])], "cross_entropy").result()
    client.close("success").result()
    session_id = tc.model_id.split(":train:")[0]
    row = tiny_server.engine.storage.get_session(session_id)
    assert row.finish_reason == "success" and row.finished_at is not None
