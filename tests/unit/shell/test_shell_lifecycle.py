"""Session life cycle (docs/protocol.md §2), headers (§1.1), logging and redaction."""

from __future__ import annotations

import logging
import pickle

import httpx
import pytest

import tinkex_jax as tinker
from tests.support.fake_tinker import TEST_KEY, FakeTinker, json_response, make_service
from tinkex_jax._shell import FakeTime
from tinkex_jax.errors import NotFoundError, PermissionDeniedError


def test_construction_does_no_network_io():
    fake = FakeTinker()
    service = make_service(fake)
    assert fake.calls == [] and service.session_id is None
    service.close().result(timeout=5)
    assert fake.calls == []


def test_happy_path_order_and_finish_on_close():
    fake = FakeTinker()
    service = make_service(fake, user_metadata={"team": "a"}, project_id="proj",
                           display_name="run 1", tags=["t2", "t1"])
    service.create_lora_training_client("base/model").result(timeout=5)
    assert fake.paths()[:3] == ["client/config", "client/dynamic_config", "create_session"]
    session = fake.calls_to("create_session")[0].json
    assert session == {"tags": ["t1", "t2"], "user_metadata": {"team": "a"},
                       "sdk_version": "0.38.0", "project_id": "proj", "display_name": "run 1",
                       "type": "create_session"}
    assert fake.calls_to("client/config")[0].json == {"sdk_version": "0.38.0"}
    service.close().result(timeout=5)
    finish = fake.calls_to("sessions/sess-1/finish")
    assert [c.json for c in finish] == [{"reason": {"type": "success"}}]


def test_client_config_404_aborts_with_a_clear_message():
    fake = FakeTinker()
    fake.inject("client/config", json_response(404, {"detail": "Not Found"}))
    service = make_service(fake)
    with pytest.raises(NotFoundError) as info:
        service.create_lora_training_client("base/model").result(timeout=5)
    message = str(info.value)
    assert "does not serve the Tinker API" in message and "base_url" in message
    assert "create_session" not in fake.paths()
    # a later call tries again (the failure is not cached)
    service.create_lora_training_client("base/model").result(timeout=5)
    service.close()


def test_dynamic_config_404_is_tolerated_and_values_are_used_when_present():
    fake = FakeTinker(dynamic_config={"refresh_interval_sec": 42.0})
    service = make_service(fake)
    service.create_sampling_client(base_model="base/model").result(timeout=5)
    assert service._shell.dynamic_config.refresh_interval_sec == 42.0
    service.close()


def test_session_is_created_once_for_concurrent_calls():
    fake = FakeTinker()
    service = make_service(fake)
    futures = [service.create_sampling_client(base_model="base/model") for _ in range(5)]
    clients = [f.result(timeout=5) for f in futures]
    assert fake.paths().count("create_session") == 1
    seqs = sorted(c.json["sampling_session_seq_id"]
                  for c in fake.calls_to("create_sampling_session"))
    assert seqs == [0, 1, 2, 3, 4]
    assert len({c.sampling_session_id for c in clients}) == 5
    service.close()


@pytest.mark.parametrize(("raised", "status"), [
    (None, "success"), (ValueError("oops"), "errored"), (KeyboardInterrupt(), "interrupted")])
def test_context_manager_finish_reason(raised, status):
    fake = FakeTinker()
    with pytest.raises(type(raised)) if raised else _nullcontext():  # noqa: SIM117
        with make_service(fake) as service:
            service.create_sampling_client(base_model="base/model").result(timeout=5)
            if raised:
                raise raised
    body = fake.calls_to("sessions/sess-1/finish")[0].json
    assert body["reason"] == {"type": status}
    if raised:
        assert type(raised).__name__ in body["detail"]


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_a_rejected_finish_makes_close_fail_but_still_stops():
    fake = FakeTinker()
    fake.inject("sessions/sess-1/finish", json_response(403, {"detail": "not yours"}))
    service = make_service(fake)
    service.create_sampling_client(base_model="base/model").result(timeout=5)
    with pytest.raises(PermissionDeniedError):
        service.close().result(timeout=5)
    with pytest.raises(tinker.TinkerError, match="closed"):
        service.create_sampling_client(base_model="base/model")


def test_sdk_headers_on_public_calls_only():
    fake = FakeTinker(pending_polls=1)
    service = make_service(fake)
    tc = service.create_lora_training_client("base/model").result(timeout=5)
    tc.optim_step(tinker.AdamParams()).result(timeout=5)
    by_path = {c.path: c.headers for c in fake.calls}
    assert by_path["create_model"]["x-sdk-method"] == (
        "ServiceClient.create_lora_training_client")
    assert by_path["create_session"]["x-sdk-method"] == (
        "ServiceClient.create_lora_training_client")
    assert by_path["optim_step"]["x-sdk-method"] == "TrainingClient.optim_step"
    assert by_path["optim_step"]["x-sdk-version"] == "0.38.0"
    assert all("x-sdk-method" not in c.headers for c in fake.calls_to("retrieve_future"))
    headers = by_path["optim_step"]
    assert headers["x-api-key"] == TEST_KEY
    assert headers["x-idempotency-key"].startswith("tinkex-jax-retry-")
    assert headers["x-stainless-read-timeout"] == "60"
    assert headers["user-agent"].startswith("tinkex-jax/")
    assert "authorization" not in headers
    assert fake.calls[0].path == "client/config"
    assert str(httpx.URL(f"http://tinker.test/prefix/api/v1/{fake.calls[0].path}")) == (
        "http://tinker.test/prefix/api/v1/client/config")
    service.close()


def test_requests_go_under_the_base_url_prefix():
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        return fake.handler(request)

    fake = FakeTinker()
    service = tinker.ServiceClient(base_url="http://h.test/services/tinker-prod/",
                                   api_key=TEST_KEY, transport=httpx.MockTransport(handler),
                                   telemetry=False, _runtime=FakeTime().runtime)
    service.create_sampling_client(base_model="m").result(timeout=5)
    assert seen[0] == "/services/tinker-prod/api/v1/client/config"
    service.close()


def test_telemetry_session_start_and_end_are_flushed_on_close():
    fake = FakeTinker()
    service = make_service(fake, telemetry=True)
    service.create_sampling_client(base_model="m").result(timeout=5)
    service.close().result(timeout=5)
    events = [e["event"] for c in fake.calls_to("telemetry") for e in c.json["events"]]
    assert events == ["SESSION_START", "SESSION_END"]
    assert fake.calls_to("telemetry")[0].json["session_id"] == "sess-1"


def test_telemetry_off_by_environment(monkeypatch):
    monkeypatch.setenv("TINKER_TELEMETRY", "0")
    fake = FakeTinker()
    service = tinker.ServiceClient(base_url="http://t.test", api_key=TEST_KEY,
                                   transport=fake.transport, _runtime=FakeTime().runtime)
    service.create_sampling_client(base_model="m").result(timeout=5)
    service.close().result(timeout=5)
    assert fake.calls_to("telemetry") == [] and service.get_telemetry() is None


def test_unexpected_failures_are_reported_to_telemetry_without_the_key():
    fake = FakeTinker()
    fake.inject("create_sampling_session",
                json_response(422, {"detail": f"bad request from key {TEST_KEY}"}))
    service = make_service(fake, telemetry=True)
    with pytest.raises(tinker.UnprocessableEntityError) as info:
        service.create_sampling_client(base_model="m").result(timeout=5)
    assert TEST_KEY not in str(info.value) and TEST_KEY not in repr(info.value.body)
    service.close().result(timeout=5)
    batches = [c.body.decode() for c in fake.calls_to("telemetry")]
    assert any("UNHANDLED_EXCEPTION" in b for b in batches)
    assert all(TEST_KEY not in b for b in batches)


def test_validation_errors_send_nothing():
    fake = FakeTinker()
    service = make_service(fake)
    with pytest.raises(tinker.ValidationError, match="rank"):
        service.create_lora_training_client("m", rank=0)
    with pytest.raises(tinker.ValidationError, match="exactly one"):
        service.create_sampling_client()
    with pytest.raises(tinker.ValidationError, match="tinker://"):
        service.create_training_client_from_state("s3://bucket/x")
    assert fake.calls == []
    service.close()


def test_no_httpx_info_lines_in_user_logs(caplog):
    fake = FakeTinker()
    root = logging.getLogger()
    with caplog.at_level(logging.INFO):
        root.setLevel(logging.INFO)
        service = make_service(fake)
        service.create_lora_training_client("base/model").result(timeout=5)
        service.close().result(timeout=5)
    noisy = [r for r in caplog.records if r.name.startswith(("httpx", "httpcore"))]
    assert noisy == []
    assert not [r for r in caplog.records if r.name.startswith("tinkex_jax")
                and r.levelno == logging.INFO]


def test_the_key_never_appears_in_reprs_errors_logs_or_pickles(caplog):
    fake = FakeTinker()
    fake.inject("get_info", json_response(400, {"detail": f"key {TEST_KEY} rejected",
                                                "echo": {"x-api-key": TEST_KEY}}))
    with caplog.at_level(logging.DEBUG):
        service = make_service(fake)
        with pytest.raises(tinker.BadRequestError) as info:
            service.create_lora_training_client("base/model").result(timeout=5)
        sampler = service.create_sampling_client(base_model="m").result(timeout=5)
        texts = [repr(service), str(service), repr(service._shell), repr(service._shell.settings),
                 str(info.value), repr(info.value), repr(info.value.body),
                 repr(info.value.__dict__), repr(sampler), sampler.get_sampler_handle(),
                 repr(service._shell.http.client.auth)]
        state = pickle.dumps(sampler)
        service.close().result(timeout=5)
    assert all(TEST_KEY not in t for t in texts)
    assert TEST_KEY.encode() not in state
    assert TEST_KEY not in caplog.text
    assert "<redacted>" in str(info.value)
