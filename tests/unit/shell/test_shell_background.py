"""Heartbeats, config refresh and telemetry batching (docs/protocol.md §2, §3.8)."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from tinkex_jax._shell import FakeTime
from tinkex_jax._shell._background import Telemetry, heartbeat_loop, refresh_loop
from tinkex_jax.errors import APIConnectionError, APIStatusError
from tinkex_jax.types import ClientDynamicConfigResponse
from tinkex_jax.wire import encode_json


def test_heartbeat_every_10_s_until_410():
    fake = FakeTime(ticks=True)
    sent = []

    async def send():
        sent.append(fake.now)
        if len(sent) == 3:
            raise APIStatusError("finished", status_code=410)

    asyncio.run(heartbeat_loop(send, runtime=fake.runtime, session_id="s"))
    assert fake.ticks == [10.0, 10.0, 10.0]
    assert sent == [1010.0, 1020.0, 1030.0]  # the first one 10 s after start


def test_heartbeat_failures_warn_only_after_120_s(caplog):
    fake = FakeTime(ticks=True)
    beats = []

    async def send():
        beats.append(fake.now)
        if len(beats) > 30:
            raise APIStatusError("finished", status_code=410)
        raise APIConnectionError("down")

    with caplog.at_level(logging.DEBUG, logger="tinkex_jax"):
        asyncio.run(heartbeat_loop(send, runtime=fake.runtime, session_id="s"))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    # failures from t=10; >120 s of failure first at t=130, then at most every 120 s
    assert len(warnings) == 2
    assert "130 s" in warnings[0].getMessage() and "250 s" in warnings[1].getMessage()


def test_heartbeat_success_resets_the_failure_clock(caplog):
    fake = FakeTime(ticks=True)
    n = [0]

    async def send():
        n[0] += 1
        if n[0] > 40:
            raise APIStatusError("finished", status_code=410)
        if n[0] % 10:  # one success every 100 s
            raise APIConnectionError("flaky")

    with caplog.at_level(logging.WARNING, logger="tinkex_jax"):
        asyncio.run(heartbeat_loop(send, runtime=fake.runtime, session_id="s"))
    assert caplog.records == []


def test_refresh_loop_applies_new_values_and_keeps_old_on_failure():
    fake = FakeTime(ticks=True)
    applied = []
    answers = [ClientDynamicConfigResponse(refresh_interval_sec=5.0), RuntimeError("down"),
               ClientDynamicConfigResponse(refresh_interval_sec=60.0)]

    async def fetch():
        if not answers:
            raise asyncio.CancelledError
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def apply(config):
        applied.append(config.refresh_interval_sec)

    interval = [300.0]

    def current():
        return applied[-1] if applied else interval[0]

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(refresh_loop(fetch, apply, runtime=fake.runtime, interval=current))
    assert applied == [5.0, 60.0]
    assert fake.ticks == [300.0, 10.0, 10.0, 60.0]  # never faster than every 10 s


def test_telemetry_batches_of_at_most_100_and_redaction():
    fake = FakeTime()
    sent = []

    async def send(request):
        sent.append(json.loads(encode_json(request)))

    t = Telemetry(enabled=True, send=send, runtime=fake.runtime, session_id=lambda: "sess-1",
                  secrets=["tml-SECRET"])
    t.session_start()
    for i in range(150):
        t.event("step", {"i": i})
    try:
        raise ValueError("bad key tml-SECRET")
    except ValueError as error:
        t.exception(error, where="TrainingClient.forward")
    asyncio.run(t.flush())
    assert [len(b["events"]) for b in sent] == [100, 52]
    first = sent[0]
    assert first["session_id"] == "sess-1" and first["events"][0]["event"] == "SESSION_START"
    assert [e["event_session_index"] for e in first["events"][:3]] == [0, 1, 2]
    last = sent[1]["events"][-1]
    assert last["event"] == "UNHANDLED_EXCEPTION" and last["error_type"] == "ValueError"
    assert "tml-SECRET" not in json.dumps(sent)
    assert "<redacted>" in last["error_message"]
    assert t.pending == 0


def test_telemetry_off_queues_nothing_and_failures_drop_batches(caplog):
    fake = FakeTime()

    async def fail(request):
        raise APIConnectionError("no")

    off = Telemetry(enabled=False, send=fail, runtime=fake.runtime, session_id=lambda: None,
                    secrets=())
    off.session_start()
    off.event("x")
    assert off.pending == 0
    on = Telemetry(enabled=True, send=fail, runtime=fake.runtime, session_id=lambda: None,
                   secrets=())
    on.event("x")
    with caplog.at_level(logging.DEBUG, logger="tinkex_jax"):
        asyncio.run(on.flush())
    assert on.pending == 0 and on.dropped == 1
    # telemetry problems are the SDK's own business: DEBUG only, never a warning
    dropped = [r for r in caplog.records if "telemetry" in r.getMessage()]
    assert [r.levelname for r in dropped] == ["DEBUG"]


def test_sessionless_telemetry_uses_a_sessionless_id():
    sent = []

    async def send(request):
        sent.append(request.session_id)

    t = Telemetry(enabled=True, send=send, runtime=FakeTime().runtime, session_id=lambda: None,
                  secrets=())
    t.event("rest")
    asyncio.run(t.flush())
    assert sent[0].startswith("sessionless-")
