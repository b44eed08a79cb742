"""Keys and ownership against the real server (numpy model layer): every route answers 404
for what another key created, published checkpoints are readable by every key (and
changeable only by their owner), through raw HTTP, through tinkex_jax and through the
official SDK; the server's keys (made, stored, given, or none on a loopback no-auth server)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

import tinkex_jax
from tests.support.local_fake_backend import FAKE, FakeBackend
from tests.support.local_support import RawClient, datum
from tinkex_jax.errors import ValidationError
from tinkex_jax.local import LocalServer, ServerConfig, serve
from tinkex_jax.local._config import API_KEY_FILE, with_api_key
from tinkex_jax.local._jwt import key_owner
from tinkex_jax.local._server import exposure_warning

ALICE = "tml-alice-0123456789"
BOB = "tml-bob-9876543210"


@pytest.fixture
def shared(tmp_path: Path) -> Iterator[LocalServer]:
    with serve(tmp_path / "data", base_models=[FAKE], backend=FakeBackend(), api_key=ALICE,
               extra_api_keys=(BOB,), long_poll_timeout_s=0.2) as server:
        yield server


@dataclass
class Alices:
    session: str
    model: str
    state: str
    sampler_path: str
    export: str
    sampler: str
    request_id: str


def alices_things(alice: RawClient) -> Alices:
    sid = alice.session()
    model = alice.create_model(sid, rank=2)
    fut = alice.fb_request(model, 1, [datum([1, 2, 3])]).json()
    alice.result(fut["request_id"])

    def saved(path: str, body: dict[str, Any]) -> str:
        return str(alice.result(alice.ok(path, body)["request_id"])["path"])

    state = saved("save_weights", {"model_id": model, "path": "a-state", "seq_id": 2})
    sampler_path = saved("save_weights_for_sampler", {"model_id": model, "path": "a-samp",
                                                      "seq_id": 3})
    export = saved("save_weights_external", {"model_id": model, "path": "a-ext", "seq_id": 4})
    sampler = alice.ok("create_sampling_session", {
        "session_id": sid, "sampling_session_seq_id": 0,
        "base_model": FAKE})["sampling_session_id"]
    return Alices(sid, model, state, sampler_path, export, sampler, fut["request_id"])


def ckpt_url(path: str, suffix: str = "") -> str:
    run, _, checkpoint = path[len("tinker://"):].partition("/")
    return f"/api/v1/training_runs/{run}/checkpoints/{checkpoint}{suffix}"


def not_found(response: httpx.Response) -> None:
    assert response.status_code == 404, (response.request.url, response.text)
    assert ALICE not in response.text and key_owner(ALICE) not in response.text


def test_another_key_gets_404_on_every_route(shared: LocalServer) -> None:
    alice, bob = RawClient(shared, ALICE), RawClient(shared, BOB)
    a = alices_things(alice)
    bob_sid = bob.session()
    bob_model = bob.create_model(bob_sid, rank=2)
    sample = {"seq_id": 1, "num_samples": 1, "sampling_params": {"max_tokens": 2},
              "prompt": {"chunks": [{"type": "encoded_text", "tokens": [1, 2]}]}}
    posts: list[tuple[str, dict[str, Any]]] = [
        ("session_heartbeat", {"session_id": a.session}),
        (f"sessions/{a.session}/finish", {}),
        ("create_model", {"session_id": a.session, "model_seq_id": 5, "base_model": FAKE}),
        ("create_sampling_session", {"session_id": a.session, "sampling_session_seq_id": 5,
                                     "base_model": FAKE}),
        ("load_weights", {"session_id": a.session, "model_seq_id": 6, "path": a.state}),
        ("load_weights", {"session_id": bob_sid, "model_seq_id": 6, "path": a.state}),
        ("load_weights", {"model_id": a.model, "seq_id": 9, "path": a.state}),
        ("optim_step", {"model_id": a.model, "seq_id": 9,
                        "adam_params": {"learning_rate": 0.1}}),
        ("save_weights", {"model_id": a.model, "path": "b", "seq_id": 9}),
        ("save_weights_for_sampler", {"model_id": a.model, "path": "b", "seq_id": 9}),
        ("save_weights_for_sampler", {"model_id": a.model, "seq_id": 9,
                                      "sampling_session_seq_id": 9}),
        ("save_weights_external", {"model_id": a.model, "path": "b", "seq_id": 9}),
        ("unload_model", {"model_id": a.model}),
        ("get_info", {"model_id": a.model}),
        ("retrieve_future", {"request_id": a.request_id}),
        ("join_sampling_session", {"sampling_session_id": a.sampler}),
        ("asample", {**sample, "sampling_session_id": a.sampler}),
        ("asample", {**sample, "model_path": a.sampler_path}),
        ("create_sampling_session", {"session_id": bob_sid, "sampling_session_seq_id": 7,
                                     "model_path": a.sampler_path}),
        ("weights_info", {"tinker_path": a.state}),
        ("copy_weights", {"source_path": a.state}),
    ]
    for path, body in posts:
        not_found(bob.post(path, body))
    not_found(bob.fb_request(a.model, 9, [datum([1, 2, 3])]))
    gets = [f"sessions/{a.session}", f"sessions/{a.session}/trace_export",
            f"samplers/{a.sampler}", f"training_runs/{a.model}",
            f"training_runs/{a.model}/checkpoints"]
    for path in gets:
        not_found(bob.http.get(f"/api/v1/{path}"))
    not_found(bob.http.put(f"/api/v1/sessions/{a.session}/project", json={"project_id": "p"}))
    for path in (a.state, a.export):
        not_found(bob.http.delete(ckpt_url(path)))
        not_found(bob.http.post(ckpt_url(path, "/publish")))
        not_found(bob.http.delete(ckpt_url(path, "/publish")))
        not_found(bob.http.put(ckpt_url(path, "/ttl"), json={"ttl_seconds": 7200}))
    not_found(bob.http.get(ckpt_url(a.export, "/external_weights_urls")))
    # bob's own copy into alice's session is refused too
    bob_state = bob.result(bob.ok("save_weights", {"model_id": bob_model, "path": "b",
                                                   "seq_id": 1})["request_id"])["path"]
    not_found(bob.post("copy_weights", {"source_path": bob_state, "session_id": a.session,
                                        "model_seq_id": 3}))
    # lists show only one's own
    assert bob.http.get("/api/v1/sessions").json()["sessions"] == [bob_sid]
    runs = bob.http.get("/api/v1/training_runs").json()["training_runs"]
    assert [r["training_run_id"] for r in runs] == [bob_model]
    assert runs[0]["model_owner"] == key_owner(BOB)  # a hash, never the key
    mine = bob.http.get("/api/v1/checkpoints").json()["checkpoints"]
    assert [c["tinker_path"] for c in mine] == [bob_state]
    audit = json.dumps(bob.http.get("/api/v1/audit").json())
    assert a.session not in audit and a.model not in audit and bob_sid in audit
    # and nothing of alice's changed
    assert alice.ok("session_heartbeat", {"session_id": a.session})
    assert len(alice.http.get("/api/v1/checkpoints").json()["checkpoints"]) == 3
    assert alice.fb(a.model, 10, [datum([1, 2, 3])]).metrics["loss:sum"] > 0
    stored = (shared.config.data_dir / "tinkex.sqlite3").read_bytes()
    assert ALICE.encode() not in stored and BOB.encode() not in stored


def test_published_checkpoints_are_readable_by_every_key(shared: LocalServer) -> None:
    alice, bob = RawClient(shared, ALICE), RawClient(shared, BOB)
    a = alices_things(alice)
    for path in (a.state, a.sampler_path, a.export):
        assert alice.http.post(ckpt_url(path, "/publish")).status_code == 200
    info = bob.ok("weights_info", {"tinker_path": a.state})
    assert info["base_model"] == FAKE
    bob_sid = bob.session()
    loaded = bob.result(bob.ok("load_weights", {"session_id": bob_sid, "model_seq_id": 0,
                                                "path": a.state})["request_id"])
    assert loaded["model_id"] == f"{bob_sid}:train:0"
    assert bob.fb(loaded["model_id"], 1, [datum([1, 2, 3])]).metrics["loss:sum"] > 0
    sampler = bob.ok("create_sampling_session", {"session_id": bob_sid,
                                                 "sampling_session_seq_id": 0,
                                                 "model_path": a.sampler_path})
    assert len(bob.sample(sampler["sampling_session_id"], 1, [1, 2]).sequences) == 1
    copied = bob.ok("copy_weights", {"source_path": a.state, "session_id": bob_sid,
                                     "model_seq_id": 4})["tinker_path"]
    assert copied.startswith(f"tinker://{bob_sid}:train:4/")
    urls = bob.http.get(ckpt_url(a.export, "/external_weights_urls")).json()["urls"]
    assert httpx.get(urls["adapter_config.json"]).json() == {"peft_type": "LORA"}
    # readable is not changeable: 403, and alice's checkpoint stays as it was
    for response in (bob.http.delete(ckpt_url(a.state)),
                     bob.http.delete(ckpt_url(a.state, "/publish")),
                     bob.http.put(ckpt_url(a.state, "/ttl"), json={"ttl_seconds": 7200})):
        assert response.status_code == 403 and "only its owner" in response.json()["detail"]
    assert alice.ok("weights_info", {"tinker_path": a.state})
    listed = {c["tinker_path"]: c for c in
              alice.http.get(ckpt_url(a.state).rsplit("/", 2)[0]).json()["checkpoints"]}
    assert listed[a.state]["public"] is True and "expires_at" not in listed[a.state]
    # a published checkpoint does not open its run
    assert bob.http.get(f"/api/v1/training_runs/{a.model}").status_code == 404


@pytest.mark.parametrize("sdk_name", ["tinkex_jax", "official"])
def test_both_sdks_see_404_for_another_keys_work(shared: LocalServer, sdk_name: str) -> None:
    sdk: Any = tinkex_jax if sdk_name == "tinkex_jax" else pytest.importorskip("tinker")
    kw = {"telemetry": False} if sdk_name == "tinkex_jax" else {}
    alice = sdk.ServiceClient(base_url=shared.base_url, api_key=ALICE, **kw)
    bob = sdk.ServiceClient(base_url=shared.base_url, api_key=BOB, **kw)
    try:
        training = alice.create_lora_training_client(base_model=FAKE, rank=2).result()
        path = training.save_state("sdk-state").result().path
        sampler_path = training.save_weights_for_sampler("sdk-samp").result().path
        rest_bob = sdk.RestClient(base_url=shared.base_url, api_key=BOB)
        with pytest.raises(sdk.NotFoundError):
            bob.create_training_client_from_state(path).result()
        with pytest.raises(sdk.NotFoundError):
            bob.create_sampling_client(model_path=sampler_path).result().sample(
                sdk.types.ModelInput.from_ints([1, 2]), 1,
                sdk.types.SamplingParams(max_tokens=2)).result()
        with pytest.raises(sdk.NotFoundError):
            rest_bob.get_training_run(training.model_id).result()
        with pytest.raises(sdk.NotFoundError):
            rest_bob.get_weights_info_by_tinker_path(path).result()
        with pytest.raises(sdk.NotFoundError):
            rest_bob.delete_checkpoint_from_tinker_path(path).result()
        listed = rest_bob.list_training_runs().result().training_runs
        assert training.model_id not in [r.training_run_id for r in listed]
        # published: readable by bob, still not his to delete
        sdk.RestClient(base_url=shared.base_url, api_key=ALICE
                       ).publish_checkpoint_from_tinker_path(path).result()
        theirs = bob.create_training_client_from_state(path).result()
        assert theirs.model_id != training.model_id
        with pytest.raises(sdk.PermissionDeniedError):
            rest_bob.delete_checkpoint_from_tinker_path(path).result()
    finally:
        for client in (alice, bob):
            client.close("success").result()


def test_jwt_subjects_own_what_they_create(tmp_path: Path) -> None:
    with serve(tmp_path, base_models=[FAKE], backend=FakeBackend(), api_key=ALICE,
               extra_api_keys=(BOB,), pjwt_auth_enabled=True, long_poll_timeout_s=0.2
               ) as server, \
            tinkex_jax.ServiceClient(base_url=server.base_url, api_key=ALICE,
                                     telemetry=False) as alice, \
            tinkex_jax.ServiceClient(base_url=server.base_url, api_key=BOB,
                                     telemetry=False) as bob:
        training = alice.create_lora_training_client(base_model=FAKE, rank=2).result()
        rest_bob = bob.create_rest_client()
        with pytest.raises(tinkex_jax.NotFoundError):
            rest_bob.get_training_run(training.model_id).result()
        assert alice.create_rest_client().get_training_run(training.model_id).result()
        # a raw key and a JWT minted from it are the same owner
        with httpx.Client(base_url=f"{server.base_url}/api/v1") as http:
            token = http.post("auth/token", json={}, headers={"X-API-Key": ALICE}).json()["jwt"]
            run = http.get(f"training_runs/{training.model_id}", headers={"X-API-Key": token})
            assert run.status_code == 200 and run.json()["model_owner"] == key_owner(ALICE)


# ----------------------------------------------------------------------------- keys


def test_a_server_without_a_key_makes_one_and_keeps_it(tmp_path: Path) -> None:
    config = ServerConfig(data_dir=tmp_path, base_models=(FAKE,))
    assert config.api_key is None and config.api_keys == ()
    with serve(tmp_path, base_models=[FAKE], backend=FakeBackend()) as server:
        key = server.api_key
        assert key.startswith("tml-") and len(key) >= 40
        assert (tmp_path / API_KEY_FILE).read_text().strip() == key
        assert os.stat(tmp_path / API_KEY_FILE).st_mode & 0o077 == 0
        assert key not in repr(server) and key not in repr(server.config)
        guessed = RawClient(server, "tml-local").post("create_session", {})
        assert guessed.status_code == 401 and "printed" in guessed.json()["detail"]
        sid = RawClient(server).session()
    with serve(tmp_path, base_models=[FAKE], backend=FakeBackend()) as server:
        assert server.api_key == key  # the same key after a restart: still its sessions
        assert RawClient(server).http.get(f"/api/v1/sessions/{sid}").status_code == 200
    assert with_api_key(ServerConfig(data_dir=tmp_path, api_key="tml-given-key")).api_key == (
        "tml-given-key")


def test_no_auth_takes_any_tml_key_on_loopback_only(tmp_path: Path) -> None:
    with serve(tmp_path, base_models=[FAKE], backend=FakeBackend(), no_auth=True) as server:
        assert server.api_key == "tml-local"  # what the SDKs send to a loopback URL
        one, two = RawClient(server, "tml-one"), RawClient(server, "tml-two")
        sid = one.session()
        assert one.http.get(f"/api/v1/sessions/{sid}").status_code == 200
        assert two.http.get(f"/api/v1/sessions/{sid}").status_code == 404  # still owned
        assert RawClient(server, "sk-nope").post("create_session", {}).status_code == 401
        assert not (tmp_path / API_KEY_FILE).exists()
    with pytest.raises(ValidationError, match="loopback"):
        ServerConfig(data_dir=tmp_path, host="0.0.0.0", no_auth=True)
    with pytest.raises(ValidationError, match="no api_key"):
        ServerConfig(data_dir=tmp_path, no_auth=True, api_key="tml-some-key")
    with pytest.raises(ValidationError, match="api_key"):
        ServerConfig(data_dir=tmp_path, extra_api_keys=("tml-only-extra",))
    with pytest.raises(ValidationError, match="tml-"):
        ServerConfig(data_dir=tmp_path, api_key="sk-123456789")


def test_exposed_hosts_are_warned_about(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert exposure_warning(ServerConfig(data_dir=tmp_path)) is None
    warning = exposure_warning(ServerConfig(data_dir=tmp_path, host="0.0.0.0"))
    assert warning is not None and "0.0.0.0" in warning and "API key" in warning
    from tinkex_jax.cli import main

    assert main(["serve", "--host", "0.0.0.0", "--no-auth", "--data-dir",
                 str(tmp_path)]) == 2
    assert "loopback" in capsys.readouterr().err
