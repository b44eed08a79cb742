"""The local backend's audit log (``GET /api/v1/audit``, docs/protocol.md §3.10 admin calls).

Each caller sees the events of what its owner (key or JWT subject) created or changed, plus
those of rows written before owners were recorded. A day's log is built from two sources in
the same SQLite database as the rest of the state:

- **what exists**: the creation of each session (and its finish), training run, sampling
  session and live checkpoint, at the time stored with it;
- **what changed it**, recorded by the REST routes as they succeed: checkpoint deletes (with
  the deleted checkpoint's creation time in ``event_details``), publishes, unpublishes, TTL
  changes, reads (downloads of exported weights, copies) and session project assignments.

Events are named ``<resource>_<action>`` (``checkpoint_create``, ``checkpoint_delete``,
``checkpoint_publish``, ``checkpoint_unpublish``, ``checkpoint_ttl_set``, ``checkpoint_read``,
``session_create``, ``session_finish``, ``training_run_create``, ``sampler_create``,
``project_session_assign``). ``event_type`` selects ``checkpoints`` (``checkpoint_*``),
``projects`` (``project_*``), or ``all``; there are no team or organization events on a
local server, so ``teams`` and ``organizations`` give an empty log. Checkpoint events also
carry the deprecated ``model_id`` / ``tinker_path`` fields (and ``purpose`` on reads).

Example:
    >>> import tempfile, datetime as dt
    >>> from pathlib import Path
    >>> from tinkex_jax.local._storage import SessionRow, Storage
    >>> st = Storage(Path(tempfile.mkdtemp()), clock=lambda: 86400.0 * 3 + 5)
    >>> st.create_session(SessionRow(session_id="s1", created_at=st.now()))
    >>> log = AuditLog(st)
    >>> log.record("checkpoint_delete", {"tinker_path": "tinker://r/weights/a"},
    ...            model_id="r", tinker_path="tinker://r/weights/a")
    >>> [e["event"] for e in log.entries("all", dt.date(1970, 1, 4))["entries"]]
    ['session_create', 'checkpoint_delete']
    >>> [e["event"] for e in log.entries("checkpoints", dt.date(1970, 1, 4))["entries"]]
    ['checkpoint_delete']
    >>> st.close()
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from typing import Any

from ._errors import UserError
from ._rest import KIND_TO_TYPE, iso_time
from ._storage import Storage, may_use

__all__ = ["EVENT_TYPES", "AuditLog", "parse_audit_query"]

#: ``event_type`` values and the event-name prefix each selects (None: every event).
EVENT_TYPES: dict[str, str | None] = {
    "all": None,
    "checkpoints": "checkpoint_",
    "projects": "project_",
    "teams": "team_",
    "organizations": "organization_",
}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_events (
    ts REAL NOT NULL, event TEXT NOT NULL, details TEXT NOT NULL DEFAULT '{}',
    model_id TEXT, tinker_path TEXT, purpose TEXT, owner TEXT
);
CREATE INDEX IF NOT EXISTS audit_events_by_time ON audit_events (ts);
"""


def parse_audit_query(event_type: str | None, day: str | None, today: float) -> tuple[str,
                                                                                     dt.date]:
    """Check the query of ``GET audit``; `today` (epoch seconds) picks the default day.

    Example:
        >>> parse_audit_query(None, "2026-01-15", 0.0)
        ('all', datetime.date(2026, 1, 15))
    """
    kind = event_type or "all"
    if kind not in EVENT_TYPES:
        raise UserError(f"Query parameter event_type={kind!r} is not one of "
                        f"{', '.join(EVENT_TYPES)}.")
    if day is None or day == "":
        return kind, dt.datetime.fromtimestamp(today, tz=dt.UTC).date()
    try:
        return kind, dt.date.fromisoformat(day)
    except ValueError:
        raise UserError(f"Query parameter day={day!r} is not a date. Fix: send YYYY-MM-DD "
                        "(a UTC day).") from None


class AuditLog:
    """Records changes and answers a day's audit log (see the module docstring)."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage
        with storage._tx() as db:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            columns = {r["name"] for r in db.execute("PRAGMA table_info(audit_events)")}
            if "owner" not in columns:  # a log written before owners were recorded
                db.execute("ALTER TABLE audit_events ADD COLUMN owner TEXT")

    def record(self, event: str, details: Mapping[str, Any], *, model_id: str | None = None,
               tinker_path: str | None = None, purpose: str | None = None,
               owner: str | None = None) -> None:
        """Append one event of `owner`, stamped with the storage clock."""
        with self._storage._tx() as db:
            db.execute("INSERT INTO audit_events (ts, event, details, model_id, tinker_path, "
                       "purpose, owner) VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (self._storage.now(), event, json.dumps(dict(details), default=str),
                        model_id, tinker_path, purpose, owner))

    def record_checkpoint(self, event: str, run_id: str, checkpoint_id: str, *,
                          purpose: str | None = None, owner: str | None = None,
                          **details: Any) -> None:
        """Append a checkpoint event (its path, run and type go into the details)."""
        path = f"tinker://{run_id}/{checkpoint_id}"
        kind = checkpoint_id.split("/", 1)[0]
        record = {"training_run_id": run_id, "checkpoint_id": checkpoint_id,
                  "tinker_path": path, "checkpoint_type": KIND_TO_TYPE.get(kind, kind),
                  **details}
        if purpose is not None:
            record["purpose"] = purpose
        self.record(event, record, model_id=run_id, tinker_path=path, purpose=purpose,
                    owner=owner)

    def entries(self, event_type: str, day: dt.date, owner: str | None = None
                ) -> dict[str, Any]:
        """The ``AuditLogResponse`` JSON of one UTC day for `owner` (None: everyone's),
        oldest first."""
        start = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC).timestamp()
        end = start + 86400.0
        prefix = EVENT_TYPES[event_type]
        found: list[tuple[float, int, dict[str, Any]]] = []

        def add(ts: float, event: str, details: dict[str, Any], **extra: Any) -> None:
            if prefix is not None and not event.startswith(prefix):
                return
            entry = {"timestamp": iso_time(ts), "event": event,
                     "event_details": {k: v for k, v in details.items() if v is not None}}
            entry.update({k: v for k, v in extra.items() if v is not None})
            found.append((ts, len(found), entry))

        def query(sql: str, args: tuple[Any, ...]) -> list[Any]:
            return [r for r in self._storage._query(sql, args) if may_use(r["owner"], owner)]

        window = (start, end)
        for r in query("SELECT * FROM sessions WHERE created_at >= ? AND created_at < ?",
                       window):
            add(r["created_at"], "session_create",
                {"session_id": r["session_id"], "project_id": r["project_id"],
                 "display_name": r["display_name"], "tags": json.loads(r["tags"] or "[]"),
                 "sdk_version": r["sdk_version"] or None})
        for r in query("SELECT * FROM sessions WHERE finished_at >= ? AND finished_at < ?",
                       window):
            add(r["finished_at"], "session_finish",
                {"session_id": r["session_id"], "reason": r["finish_reason"]})
        for r in query("SELECT * FROM training_runs WHERE created_at >= ? AND created_at < ?",
                       window):
            add(r["created_at"], "training_run_create",
                {"training_run_id": r["run_id"], "session_id": r["session_id"],
                 "base_model": r["base_model"], "lora_rank": r["lora_rank"]})
        for r in query("SELECT * FROM samplers WHERE created_at >= ? AND created_at < ?",
                       window):
            add(r["created_at"], "sampler_create",
                {"sampler_id": r["sampler_id"], "session_id": r["session_id"],
                 "base_model": r["base_model"], "model_path": r["model_path"]})
        now = self._storage.now()
        for r in query("SELECT * FROM checkpoints WHERE created_at >= ? AND created_at < ? "
                       "AND (expires_at IS NULL OR expires_at > ?)", (start, end, now)):
            add(r["created_at"], "checkpoint_create",
                {"training_run_id": r["run_id"], "checkpoint_id": r["checkpoint_id"],
                 "tinker_path": r["tinker_path"],
                 "checkpoint_type": KIND_TO_TYPE.get(r["kind"], r["kind"]),
                 "size_bytes": r["size_bytes"]},
                model_id=r["run_id"], tinker_path=r["tinker_path"])
        for r in query("SELECT * FROM audit_events WHERE ts >= ? AND ts < ? ORDER BY rowid",
                       window):
            add(r["ts"], r["event"], json.loads(r["details"]), model_id=r["model_id"],
                tinker_path=r["tinker_path"], purpose=r["purpose"])
        found.sort(key=lambda item: (item[0], item[1]))
        return {"entries": [entry for _, _, entry in found]}
