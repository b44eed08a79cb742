"""Fail fast on a missing server, wait visibly on one that answered: the first-contact rule
(``wait_for_server``), the INFO notices of every wait, and their bounded rate. Time is the
injected fake clock (`FakeTime`): no test sleeps or times anything."""

from __future__ import annotations

import asyncio
import logging
import socket

import httpx
import pytest

import tinkex_jax as tinker
from tests.support.fake_tinker import TEST_KEY, FakeTinker, Scripted, json_response
from tinkex_jax._shell import FakeTime, HttpCore, _waits, resolve_settings, retrieve_future
from tinkex_jax._shell._limits import BytesBudget
from tinkex_jax._shell._retry import BillingPause, base_retry_delay, with_holder_retries
from tinkex_jax._shell._waits import WaitLog, describe_no_answer, logging_untouched
from tinkex_jax.errors import APIConnectionError, InternalServerError, TinkerError
from tinkex_jax.types import OptimStepResponse

WAIT_LOGGER = "tinkex_jax.wait"


def refused() -> httpx.ConnectError:
    error = httpx.ConnectError("All connection attempts failed")
    error.__cause__ = ConnectionRefusedError(111, "Connect call failed")
    return error


def unknown_host() -> httpx.ConnectError:
    error = httpx.ConnectError("[Errno -2] Name or service not known")
    error.__cause__ = socket.gaierror(-2, "Name or service not known")
    return error


def core(handler: Scripted, fake: FakeTime, **settings: object) -> HttpCore:
    s = resolve_settings(api_key=TEST_KEY, base_url="http://t.test", env={}, **settings)
    return HttpCore(s, fake.runtime, transport=httpx.MockTransport(handler))


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def notices(caplog: pytest.LogCaptureFixture, level: int = logging.INFO) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == WAIT_LOGGER and r.levelno == level]


# ---------------------------------------------------------------------- first contact


def test_refused_first_contact_fails_within_wait_for_server(caplog):
    fake = FakeTime()
    handler = Scripted(default=lambda r: (_ for _ in ()).throw(refused()))
    with caplog.at_level(logging.DEBUG, logger="tinkex_jax"), \
            pytest.raises(APIConnectionError) as info:
        asyncio.run(core(handler, fake).send("POST", "client/config", json={}))
    error = info.value
    assert error.server_never_answered
    # the retries stay inside the 5 s window: the last wait is cut to end at its edge
    assert sum(fake.delays) == pytest.approx(5.0)
    assert fake.delays[:3] == [base_retry_delay(k, 0.5) for k in range(3)]
    message = str(error)
    assert "no Tinker server answered at http://t.test (connection refused" in message
    assert "wait_for_server" in message and "TINKEX_WAIT_FOR_SERVER" in message
    assert ".." not in message
    # one INFO line says what it waits for and for how long, the rest are DEBUG
    shown = notices(caplog)
    assert len(shown) == 1 and "up to 5 s" in shown[0] and "http://t.test" in shown[0]
    assert len(notices(caplog, logging.DEBUG)) == len(fake.delays) - 1


def test_unknown_host_is_named_and_zero_means_one_try():
    fake = FakeTime()
    handler = Scripted(default=lambda r: (_ for _ in ()).throw(unknown_host()))
    with pytest.raises(APIConnectionError, match=r"unknown host 't\.test'; 1 try"):
        asyncio.run(core(handler, fake, wait_for_server=0).send("GET", "healthz"))
    assert fake.delays == [] and len(handler.requests) == 1


def test_a_longer_wait_for_server_keeps_trying_until_the_server_comes_up():
    fake = FakeTime()
    handler = Scripted(*[refused() for _ in range(6)], json_response(200, {"ok": True}))
    response = asyncio.run(core(handler, fake, wait_for_server=120).send("GET", "healthz"))
    assert response.status_code == 200 and len(fake.delays) == 6


def test_after_one_answer_connection_failures_get_the_full_retry_policy():
    fake = FakeTime()
    handler = Scripted(json_response(200, {}), *[refused() for _ in range(10)],
                       json_response(200, {"ok": True}))
    c = core(handler, fake)
    asyncio.run(c.send("GET", "healthz"))
    assert c.answered
    asyncio.run(c.send("GET", "healthz"))
    # ten retries, far past the 5 s first-contact window
    assert fake.delays == [base_retry_delay(k, 0.5) for k in range(10)]
    assert sum(fake.delays) > 30


def test_the_holder_loop_does_not_retry_a_server_that_never_answered():
    fake = FakeTime()
    calls = []

    async def never():
        calls.append(1)
        error = APIConnectionError("no server")
        error.server_never_answered = True
        raise error

    with pytest.raises(APIConnectionError):
        asyncio.run(with_holder_retries(never, runtime=fake.runtime, billing=BillingPause(),
                                        what="x"))
    assert calls == [1] and fake.delays == []


def test_service_client_on_a_closed_port_fails_in_seconds_of_fake_time():
    fake = FakeTime()
    url = f"http://127.0.0.1:{closed_port()}"
    with tinker.ServiceClient(base_url=url, telemetry=False, _runtime=fake.runtime) as service, \
            pytest.raises(APIConnectionError) as info:
        service.create_lora_training_client("tinkex-jax/tiny").result(timeout=60)
    assert info.value.server_never_answered
    assert sum(fake.delays) <= 5.0
    assert str(info.value).startswith("ServiceClient.create_lora_training_client: no Tinker "
                                      f"server answered at {url} (connection refused")


def test_wait_for_server_option_and_environment():
    fake = FakeTime()
    url = f"http://127.0.0.1:{closed_port()}"
    with tinker.ServiceClient(base_url=url, telemetry=False, wait_for_server=0,
                              _runtime=fake.runtime) as service, \
            pytest.raises(APIConnectionError, match="1 try"):
        service.get_server_capabilities()
    assert fake.delays == []
    env = {"TINKEX_WAIT_FOR_SERVER": "90"}
    assert resolve_settings(api_key=TEST_KEY, env=env).wait_for_server == 90.0
    assert resolve_settings(api_key=TEST_KEY, env=env, wait_for_server=1).wait_for_server == 1.0
    assert resolve_settings(api_key=TEST_KEY, env={}).wait_for_server == 5.0
    with pytest.raises(TinkerError, match="TINKEX_WAIT_FOR_SERVER: expected seconds >= 0"):
        resolve_settings(api_key=TEST_KEY, env={"TINKEX_WAIT_FOR_SERVER": "soon"})
    with pytest.raises(TinkerError, match="wait_for_server: expected seconds >= 0"):
        resolve_settings(api_key=TEST_KEY, env={}, wait_for_server=-1)


def test_a_server_that_answered_then_went_away_is_retried_for_the_holder_budget():
    fake = FakeTime()
    server = FakeTinker()
    gone = []

    def handler(request: httpx.Request) -> httpx.Response:
        if gone:
            raise refused()
        return server.handler(request)

    with tinker.ServiceClient(base_url="http://t.test", api_key=TEST_KEY, telemetry=False,
                              transport=httpx.MockTransport(handler),
                              _runtime=fake.runtime) as service:
        service.create_lora_training_client("base/model").result(timeout=30)
        gone.append(True)  # the server stops answering: its calls keep every retry (300 s)
        with pytest.raises(APIConnectionError) as info:
            service.get_server_capabilities()
        gone.clear()
    assert not info.value.server_never_answered
    assert sum(fake.delays) >= 300
    assert "got no answer" in str(info.value) and "connection refused" in str(info.value)


def test_a_joined_session_counts_as_answered():
    from tinkex_jax._shell import Shell

    settings = resolve_settings(api_key=TEST_KEY, base_url="http://t.test", env={})
    joined = Shell(settings, session_id="sess-1")
    fresh = Shell(settings)
    try:
        assert joined.http.answered and not fresh.http.answered
    finally:
        joined.close()
        fresh.close()


# ---------------------------------------------------------------------- wait notices


def test_retry_notices_say_what_and_how_long_at_a_bounded_rate(caplog):
    fake = FakeTime()
    handler = Scripted(default=lambda r: json_response(503, {"detail": "busy"}))
    c = core(handler, fake)
    c.answered = True
    with caplog.at_level(logging.DEBUG, logger="tinkex_jax"), \
            pytest.raises(InternalServerError):
        asyncio.run(c.send("POST", "optim_step", json={}))
    # the ten retries are announced at 0, 0.4, 1.3, 3.1, 6.6, 13.6, 22.3, 31.1, 39.8 and
    # 48.6 s; the first two waits end before 3 s (DEBUG), the third is the first INFO (at
    # 1.3 s), the next INFO comes 30 s later (the ninth, at 39.8 s)
    shown = notices(caplog)
    assert len(shown) == 2 and len(notices(caplog, logging.DEBUG)) == 8
    assert shown[0] == ("POST /api/v1/optim_step: HTTP 503; retrying in 1.8 s (retry 3 of 10 "
                        "for this request).")
    assert "retry 9 of 10" in shown[1]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_holder_notices_name_the_remaining_budget(caplog):
    fake = FakeTime()
    outcomes: list[object] = [InternalServerError("busy", status_code=503)] * 2 + ["ok"]

    async def call():
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    with caplog.at_level(logging.INFO, logger="tinkex_jax"):
        assert asyncio.run(with_holder_retries(
            call, runtime=fake.runtime, billing=BillingPause(), what="POST /api/v1/get_info",
            waits=WaitLog(fake.runtime.clock))) == "ok"
    # the first wait (1 s) is short: DEBUG; the second ends 3 s after the start: INFO
    assert notices(caplog) == ["POST /api/v1/get_info failed (HTTP 503); trying it again in "
                               "2 s, and for up to 299 s more before giving up."]


def test_one_quick_retry_of_a_dropped_connection_stays_at_debug(caplog):
    fake = FakeTime()
    handler = Scripted(json_response(200, {}), httpx.RemoteProtocolError("server disconnected"),
                       json_response(200, {"ok": True}))
    c = core(handler, fake)
    with caplog.at_level(logging.DEBUG, logger="tinkex_jax"):
        asyncio.run(c.send("GET", "healthz"))
        asyncio.run(c.send("GET", "healthz"))  # a stale keep-alive connection, retried once
    assert len(fake.delays) == 1 and notices(caplog) == []
    assert "the connection dropped (RemoteProtocolError)" in notices(caplog, logging.DEBUG)[0]


def try_again(state: str = "active", reason: str | None = None) -> httpx.Response:
    body = {"type": "try_again", "request_id": "r1", "queue_state": state}
    if reason:
        body["queue_state_reason"] = reason
    return json_response(200, body)


def poll(handler: Scripted, fake: FakeTime) -> OptimStepResponse:
    settings = resolve_settings(api_key=TEST_KEY, base_url="http://t.test", env={})
    http = HttpCore(settings, fake.runtime, transport=httpx.MockTransport(handler))
    return asyncio.run(retrieve_future(
        http, "r1", "OptimStep", runtime=fake.runtime, billing=BillingPause(),
        response_budget=BytesBudget(1000), json_type=OptimStepResponse))


def test_a_long_poll_says_it_waits_after_ten_seconds(caplog):
    fake = FakeTime()
    answers = [try_again() for _ in range(4)] + [json_response(200, {"metrics": {}})]

    def slow_server(request: httpx.Request) -> httpx.Response:
        fake.now += 4.0  # each long poll is held 4 s by the server
        return answers.pop(0)

    with caplog.at_level(logging.INFO, logger="tinkex_jax"):
        poll(Scripted(default=slow_server), fake)
    shown = notices(caplog)
    assert len(shown) == 1
    assert shown[0].startswith("Waiting for the result of OptimStep request r1 (12 s so far)")
    assert "no time limit of its own" in shown[0] and ".result(timeout=...)" in shown[0]


def test_a_paused_queue_is_said_at_once(caplog):
    fake = FakeTime()
    handler = Scripted(try_again("paused_capacity", "the cluster is full"),
                       try_again("paused_capacity", "the cluster is full"),
                       json_response(200, {"metrics": {}}))
    with caplog.at_level(logging.INFO, logger="tinkex_jax"):
        poll(handler, fake)
    assert notices(caplog) == [
        "The server holds OptimStep request r1 in its queue: paused_capacity (the cluster is "
        "full). It runs when the server has room; the SDK keeps waiting for it with no time "
        "limit of its own."]


def test_notices_reach_stderr_when_logging_is_unconfigured(monkeypatch, capsys):
    monkeypatch.setattr(_waits, "logging_untouched", lambda target=None: True)
    monkeypatch.setattr(logging.getLogger(WAIT_LOGGER), "level", logging.WARNING)
    WaitLog(lambda: 0.0).notice("retry", "waiting for something, up to 5 s")
    assert capsys.readouterr().err == "tinkex_jax: waiting for something, up to 5 s\n"


def test_logging_untouched_sees_handlers_and_levels():
    parent = logging.getLogger("tinkex_test_untouched")
    parent.propagate = False
    child = logging.getLogger("tinkex_test_untouched.child")
    assert logging_untouched(child)
    child.setLevel(logging.WARNING)
    assert not logging_untouched(child)
    child.setLevel(logging.NOTSET)
    handler = logging.NullHandler()
    parent.addHandler(handler)
    try:
        assert not logging_untouched(child)
    finally:
        parent.removeHandler(handler)


def test_describe_no_answer():
    assert describe_no_answer(refused()) == "connection refused"
    assert describe_no_answer(unknown_host(), "http://nowhere.example/api/v1/x") == (
        "unknown host 'nowhere.example'")
    assert describe_no_answer(httpx.ConnectTimeout("slow")) == "timed out connecting"
    assert describe_no_answer(httpx.RemoteProtocolError("gone")) == (
        "the connection dropped (RemoteProtocolError)")
