"""SamplingClient: asample bodies, seq ids, backpressure, resubmission, pickling (§3.6, §6.4)."""

from __future__ import annotations

import math
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest

import tinkex_jax as tinker
from tests.support.fake_tinker import TEST_KEY, FakeTinker, json_response, make_service, serve_http
from tinkex_jax._shell import FakeTime
from tinkex_jax._shell._retry import sample_retry_delay
from tinkex_jax.clients import RetryConfig

PROMPT = tinker.ModelInput.from_ints([5, 6, 7, 8])
PARAMS = tinker.SamplingParams(max_tokens=3, temperature=0.5)


@pytest.fixture
def fake():
    return FakeTinker()


@pytest.fixture
def clock():
    return FakeTime()


@pytest.fixture
def service(fake, clock):
    service = make_service(fake, clock)
    yield service
    service.close()


@pytest.fixture
def sampler(service):
    return service.create_sampling_client(base_model="base/model").result(timeout=5)


def asample_seq_ids(fake: FakeTinker) -> list[int]:
    return [c.json["seq_id"] for c in fake.calls_to("asample")]


def test_sample_body_headers_and_sequence_ids(fake, sampler):
    out = sampler.sample(PROMPT, 2, PARAMS, include_prompt_logprobs=True,
                         topk_prompt_logprobs=2).result(timeout=5)
    assert [s.tokens for s in out.sequences] == [[1, 2, 3], [1, 2, 3]]
    assert [s.sequence_id for s in out.sequences] == ["seq-0", "seq-1"]
    call = fake.calls_to("asample")[0]
    assert call.json == {
        "sampling_session_id": "sess-1:sample:0", "seq_id": 0, "num_samples": 2,
        "prompt": {"chunks": [{"tokens": [5, 6, 7, 8], "type": "encoded_text"}]},
        "sampling_params": {"max_tokens": 3, "temperature": 0.5, "top_k": -1, "top_p": 1.0},
        "prompt_logprobs": True, "topk_prompt_logprobs": 2, "topk_sample_logprobs": 0,
        "prompt_alt_tokens_k": 0, "record_stability_info": False, "type": "sample"}
    assert call.headers["x-tinker-sampling-backpressure"] == "1"
    assert call.headers["x-sdk-method"] == "SamplingClient.sample"
    polls = fake.calls_to("retrieve_future")
    assert polls[-1].headers["x-tinker-request-type"] == "Sample"
    assert polls[-1].headers["accept"] == "application/x-protobuf"


def test_seq_ids_count_up_per_client(fake, sampler):
    futures = [sampler.sample(PROMPT, 1, PARAMS) for _ in range(5)]
    for f in futures:
        f.result(timeout=5)
    assert sorted(asample_seq_ids(fake)) == [0, 1, 2, 3, 4]


def test_compute_logprobs(fake, sampler):
    assert sampler.compute_logprobs(PROMPT).result(timeout=5) == [None, -1.0, -1.0, -1.0]
    body = fake.calls_to("asample")[0].json
    assert body["num_samples"] == 1 and body["prompt_logprobs"] is True
    assert body["sampling_params"]["max_tokens"] == 1


def test_429_is_backpressure_with_the_same_seq_id(fake, clock, sampler):
    fake.inject("asample", json_response(429, {}), json_response(429, {}))
    sampler.sample(PROMPT, 1, PARAMS).result(timeout=5)
    assert asample_seq_ids(fake) == [0, 0, 0]
    assert clock.delays == [1.0, 1.0]  # small prompt: 1 s each
    assert sampler._shell.sample_dispatcher.concurrency_limit() == 10  # reduced for 10 s
    clock.now += 11
    assert sampler._shell.sample_dispatcher.concurrency_limit() == 400


def test_410_while_polling_resubmits_with_a_new_seq_id(fake, clock, sampler):
    fake.inject("retrieve_future", json_response(410, {"detail": "promise expired"}))
    out = sampler.sample(PROMPT, 1, PARAMS).result(timeout=5)
    assert len(out.sequences) == 1
    assert asample_seq_ids(fake) == [0, 1]
    assert clock.delays == [sample_retry_delay(0, 0.5)]


def test_sample_retry_delays_follow_the_schedule(fake, clock, sampler):
    fake.inject("retrieve_future", *[json_response(410, {}) for _ in range(4)])
    sampler.sample(PROMPT, 1, PARAMS).result(timeout=5)
    assert asample_seq_ids(fake) == [0, 1, 2, 3, 4]
    assert clock.delays == [sample_retry_delay(a, 0.5) for a in range(4)]


def test_no_retry_when_disabled(fake, service):
    sampler = service.create_sampling_client(
        base_model="m", retry_config=RetryConfig(enable_retry_logic=False)).result(timeout=5)
    fake.inject("retrieve_future", json_response(410, {}))
    with pytest.raises(tinker.APIStatusError):
        sampler.sample(PROMPT, 1, PARAMS).result(timeout=5)
    assert asample_seq_ids(fake) == [0]


def test_user_errors_are_not_retried(fake, clock, sampler):
    fake.inject("retrieve_future", json_response(200, {"error": "prompt too long",
                                                       "category": "user"}))
    with pytest.raises(tinker.RequestFailedError, match="prompt too long"):
        sampler.sample(PROMPT, 1, PARAMS).result(timeout=5)
    assert asample_seq_ids(fake) == [0] and clock.delays == []


def test_stuck_detection_fails_after_progress_timeout(fake, clock, service):
    sampler = service.create_sampling_client(
        base_model="m", retry_config=RetryConfig(progress_timeout=3.0)).result(timeout=5)
    fake.inject("retrieve_future", *[json_response(410, {}) for _ in range(100)])
    with pytest.raises(tinker.APIConnectionError, match="stuck"):
        sampler.sample(PROMPT, 1, PARAMS).result(timeout=5)
    assert 2 <= len(asample_seq_ids(fake)) < 10


def test_validation_happens_before_sending(fake, sampler):
    before = len(fake.calls)
    with pytest.raises(tinker.ValidationError, match="num_samples"):
        sampler.sample(PROMPT, 0, PARAMS)
    with pytest.raises(tinker.ValidationError, match="prompt_logprobs_last_n"):
        sampler.sample(PROMPT, 1, PARAMS, prompt_logprobs_last_n=2)
    assert len(fake.calls) == before


def test_sampling_client_from_model_path_fetches_the_base_model(fake, service):
    sc = service.create_sampling_client(
        model_path="tinker://sess-1:train:0/sampler_weights/w").result(timeout=5)
    assert sc.get_base_model() == "base/model"
    assert fake.paths()[-1] == "samplers/sess-1:sample:0"
    assert fake.calls_to("create_sampling_session")[0].json["model_path"] == (
        "tinker://sess-1:train:0/sampler_weights/w")


def test_handle_round_trip_in_process(fake, sampler, monkeypatch):
    handle = sampler.get_sampler_handle()
    assert TEST_KEY not in handle
    monkeypatch.setattr("tinkex_jax.clients._sampling.shadow_shell",
                        _shadow_with(fake))
    clone = tinker.SamplingClient.from_sampler_handle(handle, api_key="tml-other-key")
    assert clone.sampling_session_id == sampler.sampling_session_id
    assert clone.get_base_model() == "base/model"
    clone.sample(PROMPT, 1, PARAMS).result(timeout=5)
    clone_seq = asample_seq_ids(fake)[-1]
    assert clone_seq >= 1_000_000_000 and clone_seq % 1_000_000_000 == 0
    assert fake.calls_to("asample")[-1].headers["x-api-key"] == "tml-other-key"
    assert fake.paths().count("create_session") == 1  # the clone joined the session


def test_join_sampling_session_gives_the_clone_id(sampler, monkeypatch):
    fake = FakeTinker(client_config={"sample_join_sampling_session": True})
    fake.inject("join_sampling_session", json_response(200, {"client_counter": 7}))
    monkeypatch.setattr("tinkex_jax.clients._sampling.shadow_shell", _shadow_with(fake))
    state = sampler._state()
    state["client_config"]["sample_join_sampling_session"] = True
    from tinkex_jax.clients._sampling import _unpickle_sampling_client

    clone = _unpickle_sampling_client(state, api_key=TEST_KEY)
    clone.sample(PROMPT, 1, PARAMS).result(timeout=5)
    clone.sample(PROMPT, 1, PARAMS).result(timeout=5)
    assert asample_seq_ids(fake) == [7_000_000_000, 7_000_000_001]
    assert fake.paths().count("join_sampling_session") == 1


def _shadow_with(fake: FakeTinker):
    from tinkex_jax._shell import Shell

    def factory(settings, *, session_id, client_config, dynamic_config, **_):
        return Shell(settings, transport=fake.transport, name="SamplingClient",
                     session_id=session_id, client_config=client_config,
                     dynamic_config=dynamic_config, runtime=FakeTime().runtime)

    return factory


def test_client_future_forwards_with_a_future_warning(service):
    future = service.create_sampling_client(base_model="base/model")
    with pytest.warns(FutureWarning, match="result"):
        assert future.get_base_model() == "base/model"
    with pytest.warns(FutureWarning):
        assert future.sampling_session_id.startswith("sess-1:sample:")


CHILD = textwrap.dedent("""
    import pickle, sys
    sampler = pickle.loads(sys.stdin.buffer.read())
    shell = sampler._shell
    out = sampler.sample(__import__("tinkex_jax").ModelInput.from_ints([1, 2]), 2,
                         __import__("tinkex_jax").SamplingParams(max_tokens=2)).result(timeout=20)
    beats = [t for t in shell._background if "heartbeat" in repr(t.get_coro())]
    print(sampler.sampling_session_id, shell.session_id, shell.joined, len(beats),
          len(out.sequences), out.sequences[0].sequence_id)
""")


def test_pickled_sampler_samples_from_a_second_process():
    fake = FakeTinker()
    with serve_http(fake) as base_url:
        service = tinker.ServiceClient(base_url=base_url, api_key=TEST_KEY, telemetry=False)
        sampler = service.create_sampling_client(base_model="base/model").result(timeout=10)
        sampler.sample(PROMPT, 1, PARAMS).result(timeout=10)
        payload = pickle.dumps(sampler)
        assert TEST_KEY.encode() not in payload
        env = {**os.environ, "TINKER_API_KEY": "tml-child-key", "TINKER_TELEMETRY": "0"}
        env["PYTHONPATH"] = os.pathsep.join([str(Path(tinker.__file__).parents[1]),
                                             env.get("PYTHONPATH", "")])
        child = subprocess.run([sys.executable, "-c", CHILD], input=payload, env=env,
                               capture_output=True, timeout=60)
        service.close().result(timeout=10)
    assert child.returncode == 0, child.stderr.decode()
    session, shell_session, joined, beats, n, first_id = child.stdout.decode().split()
    assert (session, shell_session, joined, beats, n) == (
        "sess-1:sample:0", "sess-1", "True", "1", "2")
    assert first_id.startswith("seq-")
    child_calls = [c for c in fake.calls_to("asample")
                   if c.headers["x-api-key"] == "tml-child-key"]
    assert len(child_calls) == 1
    seq = child_calls[0].json["seq_id"]
    assert seq >= 1_000_000_000 and seq % 1_000_000_000 == 0  # its own block of 1e9
    assert fake.paths().count("create_session") == 1  # the child made no session
    assert fake.paths().count("client/config") == 1  # it reused the cached config


def test_nan_prompt_logprobs_become_none(fake, sampler):
    out = sampler.sample(PROMPT, 1, PARAMS, include_prompt_logprobs=True).result(timeout=5)
    assert out.prompt_logprobs[0] is None and not any(
        v is not None and math.isnan(v) for v in out.prompt_logprobs)


def test_sampling_through_a_real_socket_has_no_mock(fake):
    with serve_http(fake) as base_url:
        service = tinker.ServiceClient(base_url=base_url, telemetry=False)
        sc = service.create_sampling_client(base_model="m").result(timeout=10)
        assert len(sc.sample(PROMPT, 3, PARAMS).result(timeout=10).sequences) == 3
        service.close().result(timeout=10)
    asample = fake.calls_to("asample")[0]
    assert asample.headers["x-api-key"] == "tml-local"
    # it crossed a real socket: the Host header names the 127.0.0.1 port the fake listens on
    assert asample.headers["host"] == httpx.URL(base_url).netloc.decode() and (
        httpx.URL(base_url).host == "127.0.0.1")


def test_cancelling_a_sample_sends_cancel_future_when_enabled():
    import threading
    import time

    fake = FakeTinker(dynamic_config={"sample_cancel_enabled": True}, pending_polls=10**6)
    service = make_service(fake)
    sampler = service.create_sampling_client(base_model="m").result(timeout=5)
    # keep the poll pending: every retrieve_future answers try_again, slowly
    polled = threading.Event()

    def slow_try_again(request):
        polled.set()
        time.sleep(0.002)
        return None  # fall through to the fake's try_again

    fake.inject("retrieve_future", *[slow_try_again] * 10_000)
    future = sampler.sample(PROMPT, 1, PARAMS)
    assert polled.wait(5)
    future.cancel()
    deadline = time.monotonic() + 5
    while not fake.calls_to("cancel_future") and time.monotonic() < deadline:
        time.sleep(0.005)
    request_id = fake.calls_to("retrieve_future")[-1].json["request_id"]
    assert [c.json for c in fake.calls_to("cancel_future")] == [{"request_id": request_id}]
    service.close()
