"""Telemetry events and batches (docs/protocol.md §3.8)."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

import msgspec

from ._base import WireStruct

__all__ = [
    "GenericEvent",
    "SessionEndEvent",
    "SessionStartEvent",
    "Severity",
    "TelemetryEvent",
    "TelemetryResponse",
    "TelemetrySendRequest",
    "UnhandledExceptionEvent",
]

Severity = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


class SessionStartEvent(WireStruct, frozen=True, kw_only=True, tag="SESSION_START",
                        tag_field="event"):
    """The session started."""

    event_id: str
    event_session_index: int
    severity: Severity = "INFO"
    timestamp: dt.datetime


class SessionEndEvent(WireStruct, frozen=True, kw_only=True, tag="SESSION_END",
                      tag_field="event"):
    """The session ended; ``duration`` is ISO-8601 (e.g. ``PT12.5S``)."""

    event_id: str
    event_session_index: int
    severity: Severity = "INFO"
    timestamp: dt.datetime
    duration: str | None = None


class UnhandledExceptionEvent(WireStruct, frozen=True, kw_only=True, tag="UNHANDLED_EXCEPTION",
                              tag_field="event"):
    """An exception escaped the SDK (message already redacted of credentials)."""

    event_id: str
    event_session_index: int
    severity: Severity = "ERROR"
    timestamp: dt.datetime
    error_message: str
    error_type: str
    traceback: str | None = None


class GenericEvent(WireStruct, frozen=True, kw_only=True, tag="GENERIC_EVENT",
                   tag_field="event"):
    """A named event with free-form data."""

    event_id: str
    event_session_index: int
    severity: Severity = "INFO"
    timestamp: dt.datetime
    event_name: str
    event_data: dict[str, Any] = msgspec.field(default_factory=dict)


TelemetryEvent = SessionStartEvent | SessionEndEvent | UnhandledExceptionEvent | GenericEvent


class TelemetrySendRequest(WireStruct, frozen=True, kw_only=True):
    """Body of ``telemetry``: a batch of at most 100 events."""

    events: list[TelemetryEvent]
    platform: str
    sdk_version: str
    session_id: str
    process_uuid: str


class TelemetryResponse(WireStruct, frozen=True, kw_only=True):
    """Answer to ``telemetry``."""

    status: str = "accepted"
