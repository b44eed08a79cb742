"""Audit log types: the answer of ``GET /api/v1/audit`` (docs/protocol.md §3.10, admin calls).

Example:
    >>> import msgspec
    >>> log = msgspec.json.decode(
    ...     b'{"entries": [{"timestamp": "2026-01-02T03:04:05Z", "event": "checkpoint_delete",'
    ...     b' "event_details": {"tinker_path": "tinker://r/weights/a"}}]}', type=AuditLogResponse)
    >>> entry = log.entries[0]
    >>> entry.event, entry.timestamp.year, entry.event_details["tinker_path"]
    ('checkpoint_delete', 2026, 'tinker://r/weights/a')
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

import msgspec

from ._base import WireStruct

__all__ = ["AuditEventType", "AuditLogEntry", "AuditLogResponse"]

#: Which resource's events `RestClient.get_audit_log` asks for.
AuditEventType = Literal["all", "checkpoints", "projects", "teams", "organizations"]


class AuditLogEntry(WireStruct, frozen=True, kw_only=True):
    """One audit event.

    Attributes:
        timestamp: When it happened.
        event: ``<resource>_<action>``, e.g. ``checkpoint_delete``, ``session_create``.
        event_details: Who did it, what it was about, and whatever else the event records.
        model_id: Deprecated (read `event_details`): set on checkpoint events only.
        tinker_path: Deprecated (read `event_details`): set on checkpoint events only.
        purpose: Deprecated (read `event_details`): set on checkpoint reads only.
    """

    timestamp: dt.datetime
    event: str
    event_details: dict[str, Any] = msgspec.field(default_factory=dict)
    model_id: str | None = None
    tinker_path: str | None = None
    purpose: str | None = None


class AuditLogResponse(WireStruct, frozen=True, kw_only=True):
    """The audit events of one UTC day, oldest first."""

    entries: list[AuditLogEntry] = msgspec.field(default_factory=list)
