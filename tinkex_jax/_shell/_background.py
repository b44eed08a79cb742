"""Background work of a session (docs/protocol.md §2, §3.8): heartbeats, config refresh and
telemetry batching. Each loop is a plain coroutine over injected callables, so tests drive
it with a fake clock.
"""

from __future__ import annotations

import collections
import logging
import platform
import threading
import traceback
import uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from ..errors import APIStatusError
from ..types import (
    ClientDynamicConfigResponse,
    GenericEvent,
    SessionEndEvent,
    SessionStartEvent,
    Severity,
    TelemetryEvent,
    TelemetrySendRequest,
    UnhandledExceptionEvent,
)
from ._constants import PROTOCOL_VERSION
from ._errors import SecretSet, redact
from ._runtime import Runtime

__all__ = ["Telemetry", "heartbeat_loop", "refresh_loop"]

logger = logging.getLogger("tinkex_jax.session")

HEARTBEAT_INTERVAL = 10.0
HEARTBEAT_WARN_AFTER = 120.0


async def heartbeat_loop(
    send: Callable[[], Awaitable[object]],
    *,
    runtime: Runtime,
    session_id: str,
    interval: float = HEARTBEAT_INTERVAL,
    warn_after: float = HEARTBEAT_WARN_AFTER,
) -> None:
    """Send a heartbeat every `interval` s (the first after one interval) until a 410.

    Failures are silent until heartbeats have failed for more than `warn_after` seconds;
    then a warning is logged (again at most every `warn_after` seconds).
    """
    last_ok = runtime.clock()
    last_warning = float("-inf")
    while True:
        await runtime.tick(interval)
        try:
            await send()
        except APIStatusError as error:
            if error.status_code == 410:
                logger.debug("session %s is finished (heartbeat answered 410)", session_id)
                return
            failure: Exception = error
        except Exception as error:
            failure = error
        else:
            last_ok = runtime.clock()
            continue
        now = runtime.clock()
        if now - last_ok > warn_after and now - last_warning >= warn_after:
            last_warning = now
            logger.warning("Heartbeats for session %s have failed for %.0f s (%s: %s). The "
                           "server may end the session if this continues.", session_id,
                           now - last_ok, type(failure).__name__, failure)
        else:
            logger.debug("heartbeat failed: %s", failure)


async def refresh_loop(
    fetch: Callable[[], Awaitable[ClientDynamicConfigResponse]],
    apply: Callable[[ClientDynamicConfigResponse], None],
    *,
    runtime: Runtime,
    interval: Callable[[], float],
) -> None:
    """Refresh the dynamic config every ``max(interval(), 10)`` s; failures keep old values."""
    while True:
        await runtime.tick(max(interval(), 10.0))
        try:
            apply(await fetch())
        except Exception as error:
            logger.debug("dynamic config refresh failed (keeping the last values): %s", error)


def _iso_duration(seconds: float) -> str:
    return f"PT{max(seconds, 0.0):.3f}S"


class Telemetry:
    """Batches telemetry events and sends them with `send` (at most 100 per request).

    Thread-safe for logging; `flush` and `run` belong on the shell's event loop. Messages and
    tracebacks are redacted of every secret before they are queued.
    """

    MAX_BATCH = 100
    FLUSH_INTERVAL = 10.0

    def __init__(
        self,
        *,
        enabled: bool,
        send: Callable[[TelemetrySendRequest], Awaitable[object]],
        runtime: Runtime,
        session_id: Callable[[], str | None],
        secrets: Iterable[str],
    ) -> None:
        self.enabled = enabled
        self._send = send
        self._runtime = runtime
        self._session_id = session_id
        # a SecretSet grows while the session runs (JWTs, command outputs): keep it live
        self._secrets: Iterable[str] = (secrets if isinstance(secrets, SecretSet)
                                        else tuple(secrets))
        self._events: collections.deque[TelemetryEvent] = collections.deque()
        self._lock = threading.Lock()
        self._index = 0
        self._sessionless_id = f"sessionless-{uuid.uuid4()}"
        self.process_uuid = str(uuid.uuid4())
        self.sent_batches = 0
        self.dropped = 0

    def _common(self) -> dict[str, Any]:
        with self._lock:
            index = self._index
            self._index += 1
        return {"event_id": str(uuid.uuid4()), "event_session_index": index,
                "timestamp": self._runtime.wall()}

    def _push(self, event: TelemetryEvent) -> None:
        if self.enabled:
            self._events.append(event)

    def session_start(self) -> None:
        """Queue SESSION_START."""
        if self.enabled:
            self._push(SessionStartEvent(**self._common()))

    def session_end(self, duration_seconds: float) -> None:
        """Queue SESSION_END with the session's duration."""
        if self.enabled:
            self._push(SessionEndEvent(duration=_iso_duration(duration_seconds), **self._common()))

    def exception(self, error: BaseException, *, where: str | None,
                  severity: Severity = "ERROR") -> None:
        """Queue UNHANDLED_EXCEPTION (message and traceback redacted)."""
        if not self.enabled:
            return
        tb = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        message = f"{where}: {error}" if where else str(error)
        self._push(UnhandledExceptionEvent(
            severity=severity, error_message=redact(message, self._secrets)[:4000],
            error_type=type(error).__name__, traceback=redact(tb, self._secrets)[-8000:],
            **self._common()))

    def event(self, name: str, data: dict[str, Any] | None = None, *,
              severity: Severity = "INFO") -> None:
        """Queue a GENERIC_EVENT."""
        if self.enabled:
            self._push(GenericEvent(event_name=name, event_data=dict(data or {}),
                                    severity=severity, **self._common()))

    @property
    def pending(self) -> int:
        """Events waiting to be sent."""
        return len(self._events)

    async def flush(self) -> None:
        """Send every queued event, in batches; a failed batch is dropped (logged at DEBUG:
        telemetry is the SDK's business, never a reason to bother the user)."""
        while self._events:
            batch: list[TelemetryEvent] = []
            while self._events and len(batch) < self.MAX_BATCH:
                batch.append(self._events.popleft())
            request = TelemetrySendRequest(
                events=batch, platform=platform.system() or "Unknown",
                sdk_version=PROTOCOL_VERSION,
                session_id=self._session_id() or self._sessionless_id,
                process_uuid=self.process_uuid)
            try:
                await self._send(request)
                self.sent_batches += 1
            except Exception as error:
                self.dropped += len(batch)
                logger.debug("dropped %d telemetry events (%s); TINKER_TELEMETRY=0 turns "
                             "telemetry off", len(batch), type(error).__name__)

    async def run(self) -> None:
        """Flush every 10 s until cancelled."""
        while True:
            await self._runtime.tick(self.FLUSH_INTERVAL)
            await self.flush()

