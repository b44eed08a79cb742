"""Retry schedules of docs/protocol.md §6, asserted exactly with a fake clock (no sleeping)."""

from __future__ import annotations

import asyncio
import datetime as dt

import httpx
import pytest

from tests.support.fake_tinker import TEST_KEY, Scripted, json_response
from tinkex_jax._shell import FakeTime, HttpCore, resolve_settings
from tinkex_jax._shell._retry import (
    BillingPause,
    base_retry_delay,
    holder_retry_delay,
    parse_retry_after,
    poll_backoff,
    sample_retry_delay,
    with_holder_retries,
)
from tinkex_jax.errors import (
    APIConnectionError,
    APITimeoutError,
    BadRequestError,
    BillingError,
    InternalServerError,
    NotFoundError,
    RateLimitError,
)

JITTER_U = 0.5  # FakeTime's random value


def core(handler: Scripted, fake: FakeTime, **settings: object) -> HttpCore:
    s = resolve_settings(api_key=TEST_KEY, base_url="http://t.test", env={}, **settings)
    return HttpCore(s, fake.runtime, transport=httpx.MockTransport(handler))


def ok() -> httpx.Response:
    return json_response(200, {"ok": True})


# ---------------------------------------------------------------------- pure schedules


def test_pure_schedules():
    assert [base_retry_delay(k, 0.0) for k in range(7)] == [0.5, 1, 2, 4, 8, 10, 10]
    assert base_retry_delay(0, 0.999) == pytest.approx(0.5 * (1 - 0.25 * 0.999))
    assert [holder_retry_delay(a) for a in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    assert [poll_backoff(n) for n in (0, 1, 4, 5, 50)] == [1, 2, 16, 30, 30]
    assert sample_retry_delay(2, 0.5) == 2.0
    assert sample_retry_delay(2, 0.0) == pytest.approx(1.5)
    assert sample_retry_delay(2, 1.0) == pytest.approx(2.5)
    assert sample_retry_delay(20, 1.0) == 10.0


def test_retry_after_parsing():
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    assert parse_retry_after({"retry-after-ms": "250"}, now) == 0.25
    assert parse_retry_after({"retry-after": "3"}, now) == 3.0
    assert parse_retry_after({"retry-after": "Thu, 01 Jan 2026 00:00:30 GMT"}, now) == 30.0
    assert parse_retry_after({"retry-after": "0"}, now) is None
    assert parse_retry_after({"retry-after": "61"}, now) is None
    assert parse_retry_after({"retry-after": "soon"}, now) is None
    assert parse_retry_after({"retry-after-ms": "2000", "retry-after": "9"}, now) == 2.0


# ---------------------------------------------------------------------- base retries


def test_base_retries_5xx_with_jittered_exponential_schedule():
    fake = FakeTime()
    handler = Scripted(*[json_response(503, {"detail": "busy"}) for _ in range(4)], ok())
    response = asyncio.run(core(handler, fake).send("POST", "optim_step", json={"a": 1}))
    assert response.status_code == 200
    assert fake.delays == [base_retry_delay(k, JITTER_U) for k in range(4)]
    assert [r.headers["x-stainless-retry-count"] for r in handler.requests] == [
        "0", "1", "2", "3", "4"]
    keys = {r.headers["x-idempotency-key"] for r in handler.requests}
    assert len(keys) == 1  # one key for every base retry of one logical call


def test_retry_after_headers_set_the_delay():
    fake = FakeTime()
    handler = Scripted(json_response(429, {}, {"retry-after-ms": "1500"}),
                       json_response(503, {}, {"retry-after": "7"}),
                       json_response(503, {}, {"retry-after": "600"}), ok())
    asyncio.run(core(handler, fake).send("GET", "healthz"))
    assert fake.delays == [1.5, 7.0, base_retry_delay(2, JITTER_U)]


def test_x_should_retry_overrides_the_status_rule():
    fake = FakeTime()
    handler = Scripted(json_response(400, {"detail": "x"}, {"x-should-retry": "true"}), ok())
    asyncio.run(core(handler, fake).send("POST", "optim_step", json={}))
    assert len(handler.requests) == 2
    handler = Scripted(json_response(503, {"detail": "no"}, {"x-should-retry": "false"}))
    with pytest.raises(InternalServerError):
        asyncio.run(core(handler, fake).send("POST", "optim_step", json={}))
    assert len(handler.requests) == 1


def test_max_retries_bounds_attempts_and_zero_disables():
    fake = FakeTime()
    handler = Scripted(default=lambda r: json_response(502, {"detail": "bad gateway"}))
    with pytest.raises(InternalServerError) as info:
        asyncio.run(core(handler, fake, max_retries=2).send("POST", "optim_step", json={}))
    assert len(handler.requests) == 3 and len(fake.delays) == 2
    assert "POST /api/v1/optim_step" in str(info.value) and "HTTP 502" in str(info.value)
    handler = Scripted(default=lambda r: json_response(502, {}))
    with pytest.raises(InternalServerError):
        asyncio.run(core(handler, FakeTime()).send("POST", "asample", json={}, max_retries=0))
    assert len(handler.requests) == 1


def test_non_retryable_4xx_raise_at_once():
    fake = FakeTime()
    handler = Scripted(json_response(404, {"detail": "no such model"}))
    with pytest.raises(NotFoundError, match="no such model"):
        asyncio.run(core(handler, fake).send("POST", "get_info", json={}))
    assert fake.delays == []


def answered(c: HttpCore) -> HttpCore:
    """A core whose server has answered before (first-contact rules: test_shell_waits.py)."""
    c.answered = True
    return c


def test_connection_drops_are_retried_then_raised():
    fake = FakeTime()
    handler = Scripted(httpx.ConnectError("refused"), httpx.ReadError("reset"), ok())
    asyncio.run(answered(core(handler, fake)).send("POST", "optim_step", json={}))
    assert fake.delays == [base_retry_delay(0, JITTER_U), base_retry_delay(1, JITTER_U)]
    handler = Scripted(default=lambda r: (_ for _ in ()).throw(httpx.ConnectError("down")))
    with pytest.raises(APIConnectionError, match="got no answer") as info:
        asyncio.run(answered(core(handler, FakeTime(), max_retries=1)).send("GET", "healthz"))
    assert not info.value.server_never_answered
    handler = Scripted(httpx.ReadTimeout("slow"))
    with pytest.raises(APITimeoutError, match="timed out"):
        asyncio.run(core(handler, FakeTime(), max_retries=0).send("GET", "healthz"))


def test_empty_400_is_a_proxy_rejection_and_retried():
    fake = FakeTime()
    handler = Scripted(httpx.Response(400, content=b""), ok())
    c = core(handler, fake)
    asyncio.run(c.send("POST", "optim_step", json={}))
    assert len(handler.requests) == 2 and len(fake.delays) == 1
    # with no retries left it surfaces as a (retryable) connection error, not a 400
    handler = Scripted(httpx.Response(400, content=b""))
    with pytest.raises(APIConnectionError, match="empty HTTP 400"):
        asyncio.run(core(handler, FakeTime()).send("POST", "asample", json={}, max_retries=0))
    # a 400 with a body is the server's answer: not retried
    handler = Scripted(json_response(400, {"detail": "bad input"}))
    with pytest.raises(BadRequestError, match="bad input"):
        asyncio.run(core(handler, FakeTime()).send("POST", "optim_step", json={}))


def test_proxy_rejection_budget_is_exhausted_then_replenished():
    fake = FakeTime()
    c = core(Scripted(default=lambda r: httpx.Response(400, content=b"")), fake, max_retries=0)
    c.proxy_rejects.left = 1
    with pytest.raises(APIConnectionError):
        asyncio.run(c.send("POST", "x", json={}))
    with pytest.raises(BadRequestError):  # budget gone: a plain 400
        asyncio.run(c.send("POST", "x", json={}))


# ---------------------------------------------------------------------- holder retries


def test_holder_retries_double_up_to_30_and_stop_after_300_s():
    fake = FakeTime()
    calls = []

    async def always_503():
        calls.append(fake.now)
        raise InternalServerError("busy", status_code=503)

    with pytest.raises(InternalServerError):
        asyncio.run(with_holder_retries(always_503, runtime=fake.runtime,
                                        billing=BillingPause(), what="x"))
    # 1+2+4+8+16+30*8 = 271, then the last sleep is cut to the 29 s left
    assert fake.delays == [1, 2, 4, 8, 16, 30, 30, 30, 30, 30, 30, 30, 30, 29]
    assert sum(fake.delays) == 300


def test_holder_retries_do_not_retry_fatal_errors():
    fake = FakeTime()

    async def not_found():
        raise NotFoundError("gone", status_code=404)

    with pytest.raises(NotFoundError):
        asyncio.run(with_holder_retries(not_found, runtime=fake.runtime, billing=BillingPause(),
                                        what="x"))
    assert fake.delays == []


def test_billing_pause_sleeps_5_s_until_the_window_closes():
    fake = FakeTime()
    attempts = []

    async def billing_problem():
        attempts.append(fake.now)
        raise BillingError("pay", status_code=402)

    with pytest.raises(BillingError):
        asyncio.run(with_holder_retries(billing_problem, runtime=fake.runtime,
                                        billing=BillingPause(max_pause=20.0), what="x"))
    assert fake.delays == [5.0] * 5 and len(attempts) == 6


def test_billing_pause_recovers_and_rate_limits_its_warning(caplog):
    fake = FakeTime()
    outcomes = [BillingError("pay", status_code=402)] * 3 + ["ok"]

    async def call():
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    with caplog.at_level("WARNING", logger="tinkex_jax"):
        assert asyncio.run(with_holder_retries(call, runtime=fake.runtime,
                                               billing=BillingPause(), what="x")) == "ok"
    assert fake.delays == [5.0, 5.0, 5.0]
    assert sum("billing" in r.getMessage() for r in caplog.records) == 1


def test_rate_limit_in_holder_loop_is_retried():
    fake = FakeTime()
    outcomes = [RateLimitError("slow", status_code=429), APIConnectionError("x"), "done"]

    async def call():
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    assert asyncio.run(with_holder_retries(call, runtime=fake.runtime, billing=BillingPause(),
                                           what="x")) == "done"
    assert fake.delays == [1, 2]


def test_deprecation_notes_are_logged_once(caplog):
    note = {"x-deprecation-note": "asample v1 goes away in May", "x-deprecation-level": "error"}
    handler = Scripted(json_response(200, {}, note), json_response(200, {}, note))
    c = core(handler, FakeTime())
    with caplog.at_level("WARNING", logger="tinkex_jax"):
        asyncio.run(c.send("GET", "healthz"))
        asyncio.run(c.send("GET", "healthz"))
    records = [r for r in caplog.records if "goes away" in r.getMessage()]
    assert len(records) == 1 and records[0].levelname == "ERROR"
