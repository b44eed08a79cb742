"""The engine takes its clocks, identifiers and unseeded random draws from the injected
`Effects`: pinning them pins session ids, timestamps, LoRA seeds and sampling seeds."""

from __future__ import annotations

import itertools
from typing import Any

from starlette.testclient import TestClient

from tests.support.local_fake_backend import FAKE, FakeBackend
from tinkex_jax.local import ServerConfig
from tinkex_jax.local._app import create_app
from tinkex_jax.local._effects import Effects
from tinkex_jax.local._engine import Engine
from tinkex_jax.wire import decode_sample_response

KEY = {"X-API-Key": "tml-test"}


def _result(client: TestClient, request_id: str) -> Any:
    while True:
        response = client.post("/api/v1/retrieve_future", headers=KEY,
                               json={"request_id": request_id})
        assert response.status_code == 200, response.text
        if "x-protobuf" in response.headers["content-type"]:
            return response.content
        if response.json().get("type") != "try_again":
            return response.json()


def _unseeded_sample(client: TestClient, sampler_id: str, seq_id: int) -> list[float]:
    fut = client.post("/api/v1/asample", headers=KEY, json={
        "sampling_session_id": sampler_id, "seq_id": seq_id, "num_samples": 1,
        "prompt": {"chunks": [{"type": "encoded_text", "tokens": [1, 2, 3]}]},
        "sampling_params": {"max_tokens": 4, "temperature": 0.0}}).json()
    out = decode_sample_response(_result(client, fut["request_id"]),
                                 fut["sample_sequence_ids"])
    return list(out.sequences[0].logprobs)


def _serve(tmp_path: Any, effects: Effects) -> tuple[Engine, TestClient]:
    config = ServerConfig(data_dir=tmp_path, base_models=(FAKE,), warm_up=False,
                          api_key=KEY["X-API-Key"],
                          sampler_logprob_noise=0.5)  # the noise is drawn from the seed
    engine = Engine(config, FakeBackend(), effects=effects)
    return engine, TestClient(create_app(engine))


def test_pinned_effects_pin_ids_times_and_seeds(tmp_path: Any) -> None:
    ids = itertools.count(1)
    effects = Effects(clock=lambda: 1_000_000.0, new_id=lambda: f"{next(ids):02x}".ljust(32, "0"),
                      random_bits=lambda bits: 2**bits - 1)
    engine, client = _serve(tmp_path, effects)
    with client:
        session = client.post("/api/v1/create_session", headers=KEY, json={}).json()
        sid = session["session_id"]
        assert sid == "sess-01" + "0" * 18
        assert engine.storage.get_session(sid).created_at == 1_000_000.0
        fut = client.post("/api/v1/create_model", headers=KEY, json={
            "session_id": sid, "model_seq_id": 0, "base_model": FAKE,
            "lora_config": {"rank": 4}}).json()  # no seed: drawn from Effects.random_bits
        model_id = _result(client, fut["request_id"])["model_id"]
        assert engine.storage.get_run(model_id).lora_seed == (2**32 - 1) % 2**31
        sampler = client.post("/api/v1/create_sampling_session", headers=KEY, json={
            "session_id": sid, "sampling_session_seq_id": 0, "base_model": FAKE}).json()
        first = _unseeded_sample(client, sampler["sampling_session_id"], 1)
        second = _unseeded_sample(client, sampler["sampling_session_id"], 2)
    assert first == second  # both unseeded samples got the pinned seed, hence the same noise


def test_real_effects_draw_fresh_seeds(tmp_path: Any) -> None:
    _, client = _serve(tmp_path, Effects())
    with client:
        sid = client.post("/api/v1/create_session", headers=KEY, json={}).json()["session_id"]
        sampler = client.post("/api/v1/create_sampling_session", headers=KEY, json={
            "session_id": sid, "sampling_session_seq_id": 0, "base_model": FAKE}).json()
        first = _unseeded_sample(client, sampler["sampling_session_id"], 1)
        second = _unseeded_sample(client, sampler["sampling_session_id"], 2)
    assert first != second
