"""Lenient reading of servers built for older SDKs (docs/protocol.md §12), against the fake server
answering in the older shapes: every call the server answered succeeds, falls back to the
older flow where there is one (with a debug log), and the result says what is absent."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pytest

import tinkex_jax as tinker
from tests.support.fake_tinker import FakeTinker, json_response, make_service
from tinkex_jax.builders import datum_from_tokens

PROMPT = tinker.ModelInput.from_ints([5, 6, 7, 8])
PARAMS = tinker.SamplingParams(max_tokens=3)
PATH = "tinker://run-1/weights/s1"


@pytest.fixture
def older() -> FakeTinker:
    return FakeTinker(older=True)


@pytest.fixture
def service(older: FakeTinker) -> Any:
    service = make_service(older)
    yield service
    service.close()


def _data(n: int = 2) -> list[tinker.Datum]:
    return [datum_from_tokens([1 + i, 2, 3, 4]) for i in range(n)]


# ----------------------------------------------------------------------------- sampling


def test_samples_without_sequence_ids_have_none(service, caplog):
    sampler = service.create_sampling_client(base_model="base/model").result(timeout=5)
    with caplog.at_level(logging.DEBUG, logger="tinkex_jax.sampling"):
        out = sampler.sample(PROMPT, 2, PARAMS).result(timeout=5)
    assert [s.tokens for s in out.sequences] == [[1, 2, 3], [1, 2, 3]]
    assert [s.logprobs for s in out.sequences] == [[-0.5] * 3] * 2
    assert [s.sequence_id for s in out.sequences] == [None, None]
    assert "no sample_sequence_ids" in caplog.text


def test_a_wrong_number_of_sequence_ids_is_not_guessed_from(caplog):
    fake = FakeTinker()
    service = make_service(fake)
    sampler = service.create_sampling_client(base_model="base/model").result(timeout=5)

    def one_id_for_two(request: Any) -> Any:
        response = fake.answer(fake.calls_to("asample")[-1])  # recorded just now
        body = response.json()
        body["sample_sequence_ids"] = body["sample_sequence_ids"][:1]
        return json_response(200, body)

    fake.inject("asample", one_id_for_two)
    with caplog.at_level(logging.DEBUG, logger="tinkex_jax.sampling"):
        out = sampler.sample(PROMPT, 2, PARAMS).result(timeout=5)
    assert [s.sequence_id for s in out.sequences] == [None, None]
    assert "1 sample_sequence_ids for 2 sequences" in caplog.text
    service.close()


def test_a_sequence_without_an_id_cannot_name_provenance(service):
    """stable_reinforce data built from such a sequence fails, clearly, before sending."""
    sampler = service.create_sampling_client(base_model="base/model").result(timeout=5)
    sequence = sampler.sample(PROMPT, 1, PARAMS).result(timeout=5).sequences[0]
    with pytest.raises(tinker.ValidationError, match="sequence_id"):
        tinker.SampledProvenanceSpan(sequence_id=sequence.sequence_id, length=3)
    with pytest.raises(tinker.ValidationError, match="sequence_id"):
        tinker.PromptProvenanceSpan(sequence_id=sequence.sequence_id, length=4)


def test_ignored_prompt_logprobs_last_n_is_trimmed_to_what_was_asked(service, older, caplog):
    sampler = service.create_sampling_client(base_model="base/model").result(timeout=5)
    with caplog.at_level(logging.DEBUG, logger="tinkex_jax.sampling"):
        out = sampler.sample(PROMPT, 1, PARAMS, include_prompt_logprobs=True,
                             prompt_logprobs_last_n=2).result(timeout=5)
        logprobs = sampler.compute_logprobs(PROMPT, prompt_logprobs_last_n=1).result(timeout=5)
    assert out.prompt_logprobs == [None, None, -1.0, -1.0]
    assert logprobs == [None, None, None, -1.0]
    assert older.calls_to("asample")[0].json["prompt_logprobs_last_n"] == 2  # sent as asked
    assert "ignored prompt_logprobs_last_n=2" in caplog.text
    assert isinstance(out.prompt_logprobs_np, np.ndarray)


# ----------------------------------------------------------------------------- training


def test_results_without_loss_sum_simply_lack_it(service):
    tc = service.create_lora_training_client("base/model").result(timeout=5)
    out = tc.forward_backward(_data(), "cross_entropy").result(timeout=5)
    assert "loss:sum" not in out.metrics and out.metrics["seq:max"] == 1.0
    assert len(out.loss_fn_outputs) == 2
    forward = tc.forward(_data(1), "cross_entropy").result(timeout=5)
    assert "loss:sum" not in forward.metrics and len(forward.loss_fn_outputs) == 1


def test_custom_loss_without_a_server_loss_sum(service):
    tc = service.create_lora_training_client("base/model").result(timeout=5)

    def nll(logprobs: Any, batch: Any) -> Any:
        return -(logprobs * batch.mask).sum(), {}

    out = tc.forward_backward_custom(_data(), nll).result(timeout=5)
    # the fake's logprobs are -seq_id = -1 at each of the 2 x 3 target positions
    assert out.metrics["loss:sum"] == pytest.approx(6.0)
    assert "surrogate_loss:sum" not in out.metrics


def test_create_from_state_falls_back_to_create_model_then_load(service, older, caplog):
    with caplog.at_level(logging.DEBUG, logger="tinkex_jax.session"):
        tc = service.create_training_client_from_state_with_optimizer(PATH).result(timeout=5)
    loads = older.calls_to("load_weights")
    assert "model_id" not in loads[0].json  # the 0.38 form first, answered 422
    assert loads[1].json == {"model_id": "sess-1:train:0", "seq_id": 1, "path": PATH,
                             "optimizer": True, "type": "load_weights"}
    assert [c.path for c in older.calls if c.path in (
        "load_weights", "weights_info", "create_model", "get_info")] == [
        "load_weights", "weights_info", "create_model", "get_info", "load_weights"]
    create = older.calls_to("create_model")[0].json
    assert (create["model_seq_id"], create["base_model"], create["lora_config"]["rank"]) == (
        0, "base/model", 8)
    assert tc.model_id == "sess-1:train:0"
    assert "older SDKs" in caplog.text
    tc.forward_backward(_data(1), "cross_entropy").result(timeout=5)
    assert older.calls_to("forward_backward")[-1].fb.seq_id == 2  # after the load's seq 1


def test_a_config_that_says_no_create_via_load_goes_straight_to_the_older_flow():
    fake = FakeTinker(client_config={"create_model_via_load_weights": False})
    service = make_service(fake)
    tc = service.create_training_client_from_state(PATH).result(timeout=5)
    assert [c.json.get("model_id") for c in fake.calls_to("load_weights")] == [tc.model_id]
    assert fake.calls_to("load_weights")[0].json["optimizer"] is False
    service.close()


def test_other_load_rejections_are_not_mistaken_for_an_older_server():
    fake = FakeTinker()
    fake.inject("load_weights", json_response(400, {"detail": "checkpoint is corrupt"}))
    service = make_service(fake)
    with pytest.raises(tinker.BadRequestError, match="corrupt"):
        service.create_training_client_from_state(PATH).result(timeout=5)
    assert "create_model" not in fake.paths()
    service.close()


# ----------------------------------------------------------------------------- session end


@pytest.mark.parametrize("status", [404, 405, 410])
def test_no_finish_endpoint_counts_as_finished(status, caplog):
    fake = FakeTinker(older=status != 410, finish_status=status)
    if status == 410:
        fake.inject("sessions/sess-1/finish", json_response(410, {"detail": "finished"}))
    service = make_service(fake)
    service.create_sampling_client(base_model="base/model").result(timeout=5)
    with caplog.at_level(logging.DEBUG, logger="tinkex_jax.session"):
        assert service.close().result(timeout=5) is None
    assert len(fake.calls_to("sessions/sess-1/finish")) == 1
    assert f"finish answered HTTP {status}; treated as finished" in caplog.text
    with pytest.raises(tinker.TinkerError, match="closed"):
        service.create_sampling_client(base_model="base/model")


def test_a_context_manager_exits_cleanly_on_an_older_server():
    fake = FakeTinker(older=True)
    with make_service(fake) as service:
        sampler = service.create_sampling_client(base_model="base/model").result(timeout=5)
        assert sampler.sample(PROMPT, 1, PARAMS).result(timeout=5).sequences
    assert fake.calls_to("sessions/sess-1/finish")[0].json == {"reason": {"type": "success"}}


def test_a_newer_server_answers_the_same_without_any_fallback(caplog):
    """The same calls against the fake in its 0.38 shapes: no debug fallbacks, ids kept."""
    fake = FakeTinker()
    with caplog.at_level(logging.DEBUG, logger="tinkex_jax"), make_service(fake) as service:
        sampler = service.create_sampling_client(base_model="base/model").result(timeout=5)
        out = sampler.sample(PROMPT, 2, PARAMS, include_prompt_logprobs=True,
                             prompt_logprobs_last_n=2).result(timeout=5)
        service.create_training_client_from_state(PATH).result(timeout=5)
    assert [s.sequence_id for s in out.sequences] == ["seq-0", "seq-1"]
    assert out.prompt_logprobs == [None, None, -1.0, -1.0]
    assert len(fake.calls_to("load_weights")) == 1 and "create_model" not in fake.paths()
    assert "older SDKs" not in caplog.text and "treated as finished" not in caplog.text
    assert "ignored prompt_logprobs_last_n" not in caplog.text


# ----------------------------------------------------------------------------- JSON results


@pytest.mark.parametrize("older", [False, True])
def test_json_results_of_protobuf_kinds_are_read(older, caplog):
    fake = FakeTinker(json_results=True, older=older)
    with caplog.at_level(logging.DEBUG, logger="tinkex_jax.futures"), \
            make_service(fake) as service:
        tc = service.create_lora_training_client("base/model").result(timeout=5)
        out = tc.forward_backward(_data(2), "cross_entropy").result(timeout=5)
        sampler = service.create_sampling_client(base_model="base/model").result(timeout=5)
        sampled = sampler.sample(PROMPT, 2, PARAMS, include_prompt_logprobs=True).result(
            timeout=5)
    assert [o["logprobs"].tolist() for o in out.loss_fn_outputs] == [[-1.0] * 3] * 2
    assert ("loss:sum" in out.metrics) is not older
    assert [s.tokens for s in sampled.sequences] == [[1, 2, 3]] * 2
    assert [s.logprobs for s in sampled.sequences] == [[-0.5] * 3] * 2
    assert sampled.prompt_logprobs == [None, -1.0, -1.0, -1.0]
    expected_ids = [None, None] if older else ["seq-0", "seq-1"]
    assert [s.sequence_id for s in sampled.sequences] == expected_ids
    assert "reading it as JSON" in caplog.text


def test_json_that_is_not_a_result_is_still_an_error():
    from tinkex_jax._shell._legacy_json import decode_legacy_result, is_legacy_result

    assert not is_legacy_result("Sample", {"metrics": {}})
    assert not is_legacy_result("ForwardBackward", {"sequences": []})
    assert not is_legacy_result("OptimStep", {"loss_fn_outputs": []})
    with pytest.raises(tinker.APIResponseValidationError, match="SampleResponse"):
        decode_legacy_result("Sample", b'{"sequences": [{"tokens": "nope"}]}')
    topk = decode_legacy_result("Sample", b'{"sequences": [], "topk_prompt_logprobs": '
                                          b'[null, [[3, -0.5], [4, -2.0]], [[5, -0.25]]]}')
    assert topk.topk_prompt_logprobs == [None, [(3, -0.5), (4, -2.0)], [(5, -0.25)]]


def test_ephemeral_sampler_save_answered_with_a_path_opens_a_session_on_it(service, older,
                                                                           caplog):
    tc = service.create_lora_training_client("base/model", rank=4).result(timeout=5)
    with caplog.at_level(logging.DEBUG, logger="tinkex_jax.training"):
        sampler = tc.save_weights_and_get_sampling_client().result(timeout=5)
    saved = f"tinker://{tc.model_id}/sampler_weights/ephemeral-"
    opened = older.calls_to("create_sampling_session")[-1].json
    assert opened["model_path"].startswith(saved) and sampler.model_path == opened["model_path"]
    assert sampler.sample(PROMPT, 1, PARAMS).result(timeout=5).sequences[0].tokens == [1, 2, 3]
    assert "opening a sampling session" in caplog.text
