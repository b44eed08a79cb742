"""Sampling admission control (ServerConfig.max_pending_samples): the local server answers
429 with the backpressure header, as a busy hosted service does, and both SDKs wait it out
and resubmit. The fake backend's gate holds a request in flight on demand."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

import tinkex_jax as tinker
from tests.support.local_fake_backend import FAKE, FakeBackend
from tests.support.local_support import RawClient
from tinkex_jax.errors import ValidationError
from tinkex_jax.local import LocalServer, ServerConfig, serve
from tinkex_jax.wire import decode_sample_response

PROMPT = {"chunks": [{"type": "encoded_text", "tokens": [3, 4]}]}


@pytest.fixture
def busy_server(tmp_path: Any, fake_backend: FakeBackend) -> Iterator[LocalServer]:
    with serve(tmp_path, base_models=[FAKE], backend=fake_backend, long_poll_timeout_s=0.2,
               max_pending_samples=1) as server:
        yield server


def asample(raw: RawClient, seq_id: int) -> Any:
    return raw.post("asample", {"base_model": FAKE, "seq_id": seq_id, "num_samples": 1,
                                "prompt": PROMPT,
                                "sampling_params": {"max_tokens": 3, "temperature": 0.0}})


def open_gate_later(backend: FakeBackend, seconds: float) -> threading.Timer:
    timer = threading.Timer(seconds, backend.gate.set)
    timer.start()
    return timer


def test_a_full_server_answers_429_with_the_backpressure_header(
        busy_server: LocalServer, fake_backend: FakeBackend) -> None:
    raw = RawClient(busy_server)
    fake_backend.gate.clear()
    first = asample(raw, 1)
    assert first.status_code == 200
    refused = asample(raw, 2)
    assert refused.status_code == 429
    assert refused.headers["x-tinker-sampling-backpressure"] == "1"
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["code"] == "sampling_backpressure"
    assert "max_pending_samples" in refused.json()["detail"]
    fake_backend.gate.set()
    assert len(decode_sample_response(raw.result(first.json()["request_id"])).sequences) == 1
    again = asample(raw, 2)  # the refused seq_id was not recorded: it is accepted now
    assert again.status_code == 200 and again.json()["request_id"] != first.json()["request_id"]
    assert len(decode_sample_response(raw.result(again.json()["request_id"])).sequences) == 1
    engine = busy_server.engine
    assert engine.sampling.pending == 0 and engine.sampling.backpressure_answers == 1


@pytest.mark.slow
def test_our_sdk_waits_out_backpressure(busy_server: LocalServer,
                                        fake_backend: FakeBackend) -> None:
    with tinker.ServiceClient(base_url=busy_server.base_url,
                              api_key=busy_server.api_key) as service:
        sampler = service.create_sampling_client(base_model=FAKE).result()
        params = tinker.SamplingParams(max_tokens=3, temperature=0.0)
        expected = sampler.sample(tinker.ModelInput.from_ints([3, 4]), 1, params).result()
        fake_backend.gate.clear()
        futures = [sampler.sample(tinker.ModelInput.from_ints([3, 4]), 1, params)
                   for _ in range(4)]
        timer = open_gate_later(fake_backend, 1.5)
        results = [f.result(timeout=60) for f in futures]
        timer.join()
    assert [r.sequences[0].tokens for r in results] == [expected.sequences[0].tokens] * 4
    assert busy_server.engine.sampling.backpressure_answers >= 3
    assert busy_server.engine.sampling.pending == 0


@pytest.mark.slow
@pytest.mark.official
def test_the_official_sdk_waits_out_backpressure(busy_server: LocalServer,
                                                 fake_backend: FakeBackend) -> None:
    official = pytest.importorskip("tinker")
    with official.ServiceClient(base_url=busy_server.base_url,
                                api_key=busy_server.api_key) as service:
        sampler = service.create_sampling_client(base_model=FAKE).result()
        params = official.types.SamplingParams(max_tokens=3, temperature=0.0)
        prompt = official.types.ModelInput.from_ints([3, 4])
        fake_backend.gate.clear()
        futures = [sampler.sample(prompt, 1, params) for _ in range(3)]
        timer = open_gate_later(fake_backend, 1.5)
        results = [f.result(timeout=60) for f in futures]
        timer.join()
    assert len({tuple(r.sequences[0].tokens) for r in results}) == 1
    assert busy_server.engine.sampling.backpressure_answers >= 2


def test_the_limit_is_validated(tmp_path: Any) -> None:
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ValidationError, match="max_pending_samples"):
            ServerConfig(data_dir=tmp_path, max_pending_samples=bad)  # type: ignore[arg-type]
