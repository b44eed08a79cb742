"""The server engine over HTTP with a fake numpy backend: auth, errors, dedup, ordering,
gradient accumulation, long polls, restart persistence."""

from __future__ import annotations

import logging
import socket
import threading
import time

import httpx
import numpy as np
import pytest

from tests.support.local_fake_backend import FAKE, FakeBackend
from tests.support.local_support import RawClient, datum
from tinkex_jax.local import serve
from tinkex_jax.wire import decode_forward_backward_output


def test_health_config_and_auth(fake_server):
    http = httpx.Client(base_url=fake_server.base_url)
    assert http.get("/api/v1/healthz").json() == {"status": "ok"}
    missing = http.post("/api/v1/client/config", json={"sdk_version": "0.38.0"})
    assert missing.status_code == 401 and "X-API-Key" in missing.json()["detail"]
    bad = http.post("/api/v1/client/config", json={}, headers={"X-API-Key": "sk-123"})
    assert bad.status_code == 401 and "tml-" in bad.json()["detail"]
    other = http.post("/api/v1/client/config", json={}, headers={"X-API-Key": "tml-x"})
    assert other.status_code == 401 and "printed" in other.json()["detail"]
    key = {"X-API-Key": fake_server.api_key}
    config = http.post("/api/v1/client/config", json={"sdk_version": "0.38.0"},
                       headers=key).json()
    assert config["pjwt_auth_enabled"] is False
    unknown = http.get("/api/v1/no_such_thing", headers=key)
    assert unknown.status_code == 404 and unknown.json()["code"] == "not_found"


def test_required_api_key(tmp_path, fake_backend):
    with serve(tmp_path, base_models=[FAKE], backend=fake_backend,
               api_key="tml-secret") as server:
        assert RawClient(server, "tml-other").post("create_session", {}).status_code == 401
        assert RawClient(server, "tml-secret").session().startswith("sess-")


def test_bad_bodies_get_json_400s(raw):
    not_json = raw.http.post("/api/v1/create_session", content=b"{nope",
                             headers={"Content-Type": "application/json"})
    assert not_json.status_code == 400 and "not valid JSON" in not_json.json()["detail"]
    wrong = raw.post("create_model", {"session_id": "s", "model_seq_id": "zero",
                                      "base_model": FAKE})
    assert wrong.status_code == 400 and "model_seq_id" in wrong.json()["detail"]
    garbage = raw.http.post("/api/v1/forward_backward", content=b"\xff\xff\xff",
                            headers={"Content-Type": "application/x-protobuf"})
    assert garbage.status_code == 400 and garbage.json()["detail"]


def test_a_client_that_disconnects_mid_body_is_not_a_server_error(fake_server, caplog):
    caplog.set_level(logging.DEBUG, logger="tinkex_jax.local")
    host, port = fake_server.base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(b"POST /api/v1/retrieve_future HTTP/1.1\r\nHost: x\r\n"
                     b"X-API-Key: " + fake_server.api_key.encode() + b"\r\n"
                     b"Content-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{\"request_id\"")
    deadline = time.monotonic() + 10
    while not any("client disconnected" in r.getMessage() for r in caplog.records):
        assert time.monotonic() < deadline, "the server never saw the disconnect"
        time.sleep(0.02)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert httpx.get(f"{fake_server.base_url}/api/v1/healthz").json() == {"status": "ok"}


def test_unknown_base_model_and_model_id(raw):
    sid = raw.session()
    r = raw.post("create_model", {"session_id": sid, "model_seq_id": 0,
                                  "base_model": "nope/llama", "lora_config": {"rank": 4}})
    assert r.status_code == 400
    assert "Unknown base model 'nope/llama'" in r.json()["detail"]
    assert FAKE in r.json()["detail"]
    r = raw.fb_request("sess-x:train:9", 1, [datum([1, 2, 3])])
    assert r.status_code == 404 and "Unknown model_id" in r.json()["detail"]
    assert raw.retrieve("req-nope").status_code == 404


def test_dedup_returns_the_original_request_id(raw, fake_backend):
    sid = raw.session()
    body = {"session_id": sid, "model_seq_id": 0, "base_model": FAKE,
            "lora_config": {"rank": 4, "seed": 1}, "type": "create_model"}
    first, again = raw.ok("create_model", body), raw.ok("create_model", body)
    assert first == again
    model_id = raw.result(first["request_id"])["model_id"]
    assert model_id == f"{sid}:train:0"
    a = raw.fb_request(model_id, 1, [datum([1, 2, 3])]).json()
    b = raw.fb_request(model_id, 1, [datum([1, 2, 3])]).json()
    assert a["request_id"] == b["request_id"]
    clash = raw.fb_request(model_id, 1, [datum([4, 5, 6])])
    assert clash.status_code == 400 and "already used" in clash.json()["detail"]
    raw.result(a["request_id"])
    assert [c[0] for c in fake_backend.calls] == ["forward_backward"]  # ran once


def test_requests_run_in_arrival_order_and_gradients_accumulate(raw, fake_backend):
    sid = raw.session()
    m1, m2 = raw.create_model(sid, 0), raw.create_model(sid, 1)
    fake_backend.gate.clear()  # hold everything in flight
    futs = [raw.fb_request(m1, 2, [datum([3, 4, 5])]).json(),  # chunk 2 arrives first
            raw.fb_request(m1, 1, [datum([1, 2, 3])]).json(),
            raw.ok("optim_step", {"model_id": m1, "seq_id": 3, "type": "optim_step",
                                  "adam_params": {"learning_rate": 0.5}}),
            raw.fb_request(m2, 1, [datum([1, 2, 3]), datum([3, 4, 5])]).json(),
            raw.ok("optim_step", {"model_id": m2, "seq_id": 2, "type": "optim_step",
                                  "adam_params": {"learning_rate": 0.5}})]
    fake_backend.gate.set()
    for f in futs:
        raw.result(f["request_id"])
    assert [c[0] for c in fake_backend.calls] == [
        "forward_backward", "forward_backward", "optim_step", "forward_backward", "optim_step"]
    assert fake_backend.calls[0][1] == [3]  # arrival order, not seq order, within a call
    # two chunks accumulated == one request with both datums
    probe = [datum([1, 2, 3, 4, 5, 6])]
    lp1 = raw.fb(m1, 4, probe, forward_only=True).loss_fn_outputs[0]["logprobs"].tolist()
    lp2 = raw.fb(m2, 3, probe, forward_only=True).loss_fn_outputs[0]["logprobs"].tolist()
    np.testing.assert_allclose(lp1, lp2, rtol=1e-6)


def test_outputs_shapes_and_metrics(raw):
    model = raw.create_model(raw.session())
    out = raw.fb(model, 1, [datum([1, 2, 3, 4]), datum([5, 6])])
    assert [o["logprobs"].shape for o in out.loss_fn_outputs] == [(3,), (1,)]
    assert all(k.count(":") == 1 for k in out.metrics)
    total = sum(float(o["elementwise_loss"].to_numpy().sum()) for o in out.loss_fn_outputs)
    assert out.metrics["loss:sum"] == pytest.approx(total, rel=1e-5)
    metrics = raw.optim(model, 2)["metrics"]
    assert metrics["grad_norm:mean"] > 0 and metrics["num_datums:sum"] == 2


def test_long_poll_answers_try_again_and_heartbeats_stay_responsive(raw, fake_backend):
    sid = raw.session()
    model = raw.create_model(sid)
    fake_backend.gate.clear()
    fake_backend.entered.clear()
    rid = raw.fb_request(model, 1, [datum([1, 2, 3])]).json()["request_id"]
    assert fake_backend.entered.wait(5)
    start = time.monotonic()
    pending = raw.retrieve(rid).json()
    assert pending == {"type": "try_again", "request_id": rid, "queue_state": "active"}
    assert time.monotonic() - start >= 0.15  # the server held the poll before try_again
    # the compute is still held at the gate, yet the server answers: the loop is not blocked
    assert not fake_backend.gate.is_set()
    raw.ok("session_heartbeat", {"session_id": sid, "type": "session_heartbeat"})
    threading.Timer(0.05, fake_backend.gate.set).start()
    result = decode_forward_backward_output(raw.result(rid))
    assert len(result.loss_fn_outputs) == 1 and "loss:sum" in result.metrics


def test_failed_validation_changes_nothing(raw, fake_backend):
    model = raw.create_model(raw.session())
    probe = [datum([1, 2, 3, 4])]
    before = raw.fb(model, 1, probe, forward_only=True).loss_fn_outputs[0]["logprobs"].tolist()
    calls = len(fake_backend.calls)
    bad_token = raw.fb_request(model, 2, [datum([1, 2, 99])])
    assert bad_token.status_code == 400
    assert "token id 99" in bad_token.json()["detail"]
    assert "vocabulary" in bad_token.json()["detail"]
    bad_loss = raw.fb_request(model, 2, [datum([1, 2, 3])], loss_fn="nll")
    assert bad_loss.status_code == 400 and "cross_entropy" in bad_loss.json()["detail"]
    missing = raw.fb_request(model, 2, [datum([1, 2, 3])], loss_fn="ppo")
    assert missing.status_code == 400 and "advantages" in missing.json()["detail"]
    assert len(fake_backend.calls) == calls  # nothing reached the model
    raw.optim(model, 2)  # nothing was accumulated: SGD with a zero gradient
    after = raw.fb(model, 3, probe, forward_only=True).loss_fn_outputs[0]["logprobs"].tolist()
    assert before == after


def test_sampling_and_prompt_logprobs(raw):
    sid = raw.session()
    sampler = raw.ok("create_sampling_session", {
        "session_id": sid, "sampling_session_seq_id": 0, "base_model": FAKE,
        "type": "create_sampling_session"})["sampling_session_id"]
    assert raw.http.get(f"/api/v1/samplers/{sampler}").json() == {
        "sampler_id": sampler, "base_model": FAKE}
    res = raw.sample(sampler, 0, [1, 2, 3, 4], prompt_logprobs=True,
                     prompt_logprobs_last_n=2, topk_prompt_logprobs=2)
    assert len(res.sequences[0].tokens) <= 4
    lps = res.prompt_logprobs
    assert lps[0] is None and lps[1] is None and lps[2] is not None and lps[3] is not None
    top = res.topk_prompt_logprobs
    assert top[0] is None and top[1] is None and len(top[3]) == 2
    assert top[3][0][1] >= top[3][1][1]
    too_long = raw.post("asample", {
        "sampling_session_id": sampler, "seq_id": 1, "num_samples": 1,
        "prompt": {"chunks": [{"type": "encoded_text", "tokens": [1] * 60}]},
        "sampling_params": {"max_tokens": 10}})
    assert too_long.status_code == 400 and "max_tokens" in too_long.json()["detail"]


def test_a_resubmitted_sample_is_deduplicated(raw, fake_backend):
    sid = raw.session()
    sampler = raw.ok("create_sampling_session", {
        "session_id": sid, "sampling_session_seq_id": 0, "base_model": FAKE,
        "type": "create_sampling_session"})["sampling_session_id"]
    body = {"sampling_session_id": sampler, "seq_id": 5, "num_samples": 1,
            "prompt": {"chunks": [{"type": "encoded_text", "tokens": [1, 2]}]},
            "sampling_params": {"max_tokens": 3, "temperature": 0.0}}
    first = raw.ok("asample", body)
    again = raw.ok("asample", body)  # e.g. after a dropped connection: the same request
    assert again["request_id"] == first["request_id"]
    raw.result(first["request_id"])
    assert sum(1 for c in fake_backend.calls if c[0] == "sample") == 1  # computed once
    other = raw.post("asample", {**body, "num_samples": 2})  # same seq_id, other body
    assert other.status_code == 400 and "seq_id 5" in other.json()["detail"]


def test_checkpoints_survive_a_restart(tmp_path):
    backend = FakeBackend()
    with serve(tmp_path, base_models=[FAKE], backend=backend) as server:
        raw = RawClient(server)
        sid = raw.session()
        model = raw.create_model(sid)
        raw.fb(model, 1, [datum([1, 2, 3])])
        raw.optim(model, 2)
        saved = raw.result(raw.ok("save_weights", {
            "model_id": model, "path": "step-1", "seq_id": 3,
            "type": "save_weights"})["request_id"])["path"]
        expected = raw.fb(model, 4, [datum([1, 2, 3, 4])], forward_only=True)
    with serve(tmp_path, base_models=[FAKE], backend=backend) as server:
        raw = RawClient(server)
        runs = raw.http.get("/api/v1/training_runs").json()
        assert [r["training_run_id"] for r in runs["training_runs"]] == [model]
        assert runs["training_runs"][0]["last_checkpoint"]["tinker_path"] == saved
        stale = raw.fb_request(model, 5, [datum([1, 2, 3])])
        assert stale.status_code == 404 and "restarted" in stale.json()["detail"]
        sid2 = raw.session()
        fut = raw.ok("load_weights", {"session_id": sid2, "model_seq_id": 0, "path": saved,
                                      "optimizer": True, "type": "load_weights"})
        loaded = raw.result(fut["request_id"])
        assert loaded["model_id"] == f"{sid2}:train:0"
        got = raw.fb(loaded["model_id"], 1, [datum([1, 2, 3, 4])], forward_only=True)
        assert (got.loss_fn_outputs[0]["logprobs"].tolist()
                == expected.loss_fn_outputs[0]["logprobs"].tolist())
        info = raw.ok("weights_info", {"tinker_path": saved})
        assert info["base_model"] == FAKE and info["lora_rank"] == 4


def test_rest_checkpoint_management(raw):
    model = raw.create_model(raw.session())
    paths = []
    for i, (kind, name) in enumerate([("save_weights", "a"),
                                      ("save_weights_for_sampler", "b")]):
        fut = raw.ok(kind, {"model_id": model, "path": name, "seq_id": i + 1, "type": kind})
        paths.append(raw.result(fut["request_id"])["path"])
    assert paths == [f"tinker://{model}/weights/a", f"tinker://{model}/sampler_weights/b"]
    dup = raw.result(raw.ok("save_weights", {"model_id": model, "path": "a", "seq_id": 3,
                                             "type": "save_weights"})["request_id"])
    assert dup["category"] == "user" and "overwrite" in dup["error"]
    base = f"/api/v1/training_runs/{model}/checkpoints"
    listed = raw.http.get(base).json()["checkpoints"]
    assert [c["checkpoint_id"] for c in listed] == ["weights/a", "sampler_weights/b"]
    assert raw.http.post(f"{base}/weights/a/publish").status_code == 200
    assert raw.http.get(base).json()["checkpoints"][0]["public"] is True
    assert raw.http.delete(f"{base}/weights/a/publish").status_code == 200
    ttl = raw.http.put(f"{base}/weights/a/ttl", json={"ttl_seconds": 3600})
    assert ttl.status_code == 200 and ttl.json()["expires_at"]
    assert raw.http.put(f"{base}/weights/a/ttl", json={"ttl_seconds": 5}).status_code == 400
    assert raw.http.delete(f"{base}/sampler_weights/b").status_code == 200
    assert raw.http.delete(f"{base}/sampler_weights/b").status_code == 404
    user = raw.http.get("/api/v1/checkpoints").json()
    assert [c["checkpoint_id"] for c in user["checkpoints"]] == ["weights/a"]
    assert user["cursor"]["total_count"] == 1
    ext = raw.result(raw.ok("save_weights_external", {
        "model_id": model, "path": "hf", "seq_id": 4,
        "type": "save_weights_external"})["request_id"])
    urls = raw.http.get(f"{base}/external_weights/hf/external_weights_urls").json()["urls"]
    assert sorted(urls) == ["adapter_config.json", "adapter_model.safetensors"]
    assert httpx.get(urls["adapter_config.json"]).json() == {"peft_type": "LORA"}
    assert ext["path"] == f"tinker://{model}/external_weights/hf" and ext["size_bytes"] > 0


def test_expired_checkpoints_disappear(tmp_path):
    backend = FakeBackend()
    with serve(tmp_path, base_models=[FAKE], backend=backend) as server:
        raw = RawClient(server)
        model = raw.create_model(raw.session())
        raw.result(raw.ok("save_weights", {"model_id": model, "path": "t", "seq_id": 1,
                                           "ttl_seconds": 3600,
                                           "type": "save_weights"})["request_id"])
        storage = server.engine.storage
        storage._clock = lambda: time.time() + 7200  # two hours later
        assert raw.http.get("/api/v1/checkpoints").json()["checkpoints"] == []
        assert server.engine.reap() == 1
        gone = raw.post("weights_info", {"tinker_path": f"tinker://{model}/weights/t"})
        assert gone.status_code == 404


def heartbeat(raw: RawClient, session_id: str) -> httpx.Response:
    return raw.post("session_heartbeat", {"session_id": session_id,
                                          "type": "session_heartbeat"})


def test_idle_sessions_are_reaped_and_finished_ones_answer_410(tmp_path):
    with serve(tmp_path, base_models=[FAKE], backend=FakeBackend(),
               session_idle_timeout_s=900) as server:
        raw = RawClient(server)
        idle, alive = raw.session(), raw.session()
        idle_model, alive_model = raw.create_model(idle), raw.create_model(alive, seq=0)
        storage = server.engine.storage
        storage._clock = lambda: time.time() + 1000  # 1000 s later: only `alive` heartbeats
        assert heartbeat(raw, alive).status_code == 200
        server.engine.reap()
        row = storage.get_session(idle)
        assert (row.finish_reason, row.finish_detail) == ("interrupted", "no heartbeat for 900 s")
        gone = heartbeat(raw, idle)
        assert gone.status_code == 410 and gone.json()["code"] == "gone"
        assert "create a new ServiceClient" in gone.json()["detail"]
        deadline = time.monotonic() + 10
        while server.engine.training.is_loaded(idle_model):  # freed in the model's own lane
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert raw.fb_request(idle_model, 1, [datum([1, 2, 3])]).status_code == 404
        assert storage.get_session(alive).finished_at is None
        assert len(raw.fb(alive_model, 1, [datum([1, 2, 3])]).loss_fn_outputs) == 1
        assert heartbeat(raw, alive).status_code == 200


def test_a_finished_session_answers_410_and_bad_project_bodies_400(raw):
    sid = raw.session()
    raw.ok(f"sessions/{sid}/finish", {"reason": {"type": "success"}})
    assert heartbeat(raw, sid).status_code == 410
    bad = raw.http.put(f"/api/v1/sessions/{sid}/project", content=b"{nope")
    assert bad.status_code == 400 and "not valid JSON" in bad.json()["detail"]


def test_sessions_listing(raw):
    sid = raw.session()
    model = raw.create_model(sid)
    assert sid in raw.http.get("/api/v1/sessions").json()["sessions"]
    info = raw.http.get(f"/api/v1/sessions/{sid}").json()
    assert info["training_run_ids"] == [model] and info["sampler_ids"] == []
    finish = raw.post(f"sessions/{sid}/finish", {"reason": {"type": "success"}})
    assert finish.status_code == 200
    assert raw.http.get("/api/v1/sessions/nope").status_code == 404


def test_old_in_memory_samplers_are_evicted_with_a_clear_error(tmp_path):
    with serve(tmp_path, base_models=[FAKE], backend=FakeBackend(), max_live_samplers=2,
               max_sampler_handles=1) as server:
        raw = RawClient(server)
        sid = raw.session()
        model = raw.create_model(sid)
        saved = raw.result(raw.ok("save_weights_for_sampler", {
            "model_id": model, "path": "keep", "seq_id": 1,
            "type": "save_weights_for_sampler"})["request_id"])["path"]
        from_path = raw.ok("create_sampling_session", {
            "session_id": sid, "sampling_session_seq_id": 0, "model_path": saved,
            "type": "create_sampling_session"})["sampling_session_id"]
        ephemeral = []
        for i in range(3):
            fut = raw.ok("save_weights_for_sampler", {
                "model_id": model, "sampling_session_seq_id": i + 1, "seq_id": i + 2,
                "type": "save_weights_for_sampler"})
            ephemeral.append(raw.result(fut["request_id"])["sampling_session_id"])
        assert ephemeral[0] == f"{sid}:sample:1"
        assert raw.sample(ephemeral[2], 0, [1, 2]).sequences
        gone = raw.post("asample", {
            "sampling_session_id": ephemeral[0], "seq_id": 0, "num_samples": 1,
            "prompt": {"chunks": [{"type": "encoded_text", "tokens": [1, 2]}]},
            "sampling_params": {"max_tokens": 2}})
        assert gone.status_code == 404 and "newer samplers" in gone.json()["detail"]
        assert raw.sample(from_path, 0, [1, 2]).sequences  # reloaded from its checkpoint
        assert raw.sample(ephemeral[2], 1, [1, 2]).sequences
