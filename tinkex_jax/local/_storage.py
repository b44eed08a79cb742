"""Durable state of the local backend: SQLite metadata plus checkpoint directories.

Layout of the data directory::

    <data_dir>/tinkex.sqlite3            sessions, training runs, samplers, checkpoints
    <data_dir>/checkpoints/<uuid>/       one directory per checkpoint (adapter, optimizer,
                                         meta.json; or Hugging Face files for exports)

Checkpoint directories are written to a temporary name and renamed into place before their
row is inserted, so a crash never leaves a listed checkpoint without files. Expired
checkpoints (TTL) are invisible at once and their files are deleted by `reap_expired`.

Example:
    >>> import tempfile
    >>> st = Storage(Path(tempfile.mkdtemp()))
    >>> st.create_session(SessionRow(session_id="s1", created_at=0.0))
    >>> [s.session_id for s in st.list_sessions(10, 0)]
    ['s1']
    >>> st.close()
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

__all__ = ["LEGACY_OWNERS", "CheckpointRow", "RunRow", "SamplerRow", "SessionRow", "Storage",
           "may_use"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    session_id TEXT PRIMARY KEY, created_at REAL NOT NULL, last_seen REAL NOT NULL DEFAULT 0,
    finished_at REAL, finish_reason TEXT, finish_detail TEXT, tags TEXT NOT NULL DEFAULT '[]',
    user_metadata TEXT NOT NULL DEFAULT '{}', sdk_version TEXT NOT NULL DEFAULT '',
    project_id TEXT, display_name TEXT, owner TEXT
);
CREATE TABLE IF NOT EXISTS training_runs (
    run_id TEXT PRIMARY KEY, session_id TEXT NOT NULL, model_seq_id INTEGER NOT NULL,
    base_model TEXT NOT NULL, lora_rank INTEGER NOT NULL, lora_seed INTEGER NOT NULL,
    lora_alpha REAL NOT NULL, train_attn INTEGER NOT NULL, train_mlp INTEGER NOT NULL,
    train_unembed INTEGER NOT NULL, optimizer_config TEXT NOT NULL DEFAULT '{"type":"adamw"}',
    user_metadata TEXT NOT NULL DEFAULT '{}', created_at REAL NOT NULL,
    last_request_time REAL NOT NULL, owner TEXT NOT NULL DEFAULT 'local', corrupted TEXT
);
CREATE TABLE IF NOT EXISTS samplers (
    sampler_id TEXT PRIMARY KEY, session_id TEXT NOT NULL, seq_id INTEGER NOT NULL,
    base_model TEXT NOT NULL, model_path TEXT, source_run_id TEXT, created_at REAL NOT NULL,
    owner TEXT
);
CREATE TABLE IF NOT EXISTS checkpoints (
    run_id TEXT NOT NULL, checkpoint_id TEXT NOT NULL, kind TEXT NOT NULL, name TEXT NOT NULL,
    tinker_path TEXT NOT NULL, dir TEXT NOT NULL, size_bytes INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL, expires_at REAL, public INTEGER NOT NULL DEFAULT 0,
    user_metadata TEXT, has_optimizer INTEGER NOT NULL DEFAULT 0, owner TEXT,
    PRIMARY KEY (run_id, checkpoint_id)
);
CREATE INDEX IF NOT EXISTS checkpoints_by_time ON checkpoints (created_at);
"""


@dataclass(frozen=True)
class SessionRow:
    """A client session (one ServiceClient)."""

    session_id: str
    created_at: float
    last_seen: float = 0.0
    finished_at: float | None = None
    finish_reason: str | None = None
    finish_detail: str | None = None
    tags: list[str] = field(default_factory=list)
    user_metadata: dict[str, Any] = field(default_factory=dict)
    sdk_version: str = ""
    project_id: str | None = None
    display_name: str | None = None
    owner: str | None = None  # `may_use`


@dataclass(frozen=True)
class RunRow:
    """A training run: one LoRA training model and its configuration."""

    run_id: str
    session_id: str
    model_seq_id: int
    base_model: str
    lora_rank: int
    lora_seed: int
    lora_alpha: float
    train_attn: bool
    train_mlp: bool
    train_unembed: bool
    created_at: float
    last_request_time: float
    optimizer_config: dict[str, Any] = field(default_factory=lambda: {"type": "adamw"})
    user_metadata: dict[str, Any] = field(default_factory=dict)
    owner: str = "local"
    corrupted: str | None = None  # why the run's state is unusable, once it is


@dataclass(frozen=True)
class SamplerRow:
    """A sampling session: a base model, plus saved weights unless it samples the base."""

    sampler_id: str
    session_id: str
    seq_id: int
    base_model: str
    created_at: float
    model_path: str | None = None
    source_run_id: str | None = None
    owner: str | None = None  # `may_use`


@dataclass(frozen=True)
class CheckpointRow:
    """A saved checkpoint (``kind`` is weights, sampler_weights or external_weights)."""

    run_id: str
    checkpoint_id: str
    kind: str
    name: str
    tinker_path: str
    dir: str
    created_at: float
    size_bytes: int = 0
    expires_at: float | None = None
    public: bool = False
    user_metadata: dict[str, str] | None = None
    has_optimizer: bool = False
    owner: str | None = None  # `may_use`; the owner of its run


#: Owners of rows written before owners were recorded (an older data directory): such rows
#: stay open to every key, as they were.
LEGACY_OWNERS = (None, "local")
_OWNED = "(owner = ? OR owner IS NULL OR owner = 'local')"


def may_use(row_owner: str | None, owner: str | None) -> bool:
    """Whether `owner` may use a row owned by `row_owner` (None asks for every row: the
    server's own housekeeping and an open server's console).

    Example:
        >>> may_use("tml:user:local-a", "tml:user:local-a"), may_use("tml:user:local-a", "b")
        (True, False)
        >>> may_use(None, "b"), may_use("tml:user:local-a", None)
        (True, True)
    """
    return owner is None or row_owner in LEGACY_OWNERS or row_owner == owner


_JSON_FIELDS = {"tags", "user_metadata", "optimizer_config"}
_BOOL_FIELDS = {"train_attn", "train_mlp", "train_unembed", "public", "has_optimizer"}


def _to_db(row: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields(row):
        value = getattr(row, f.name)
        if f.name in _JSON_FIELDS:
            value = None if value is None else json.dumps(value)
        elif f.name in _BOOL_FIELDS:
            value = int(bool(value))
        out[f.name] = value
    return out


def _from_db(cls: Any, row: sqlite3.Row) -> Any:
    values: dict[str, Any] = {}
    for f in fields(cls):
        value = row[f.name]
        if f.name in _JSON_FIELDS:
            value = None if value is None else json.loads(value)
        elif f.name in _BOOL_FIELDS:
            value = bool(value)
        values[f.name] = value
    return cls(**values)


def dir_size(path: Path) -> int:
    """Total bytes of the files under `path`."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


class Storage:
    """SQLite metadata and checkpoint files under one data directory; thread-safe.

    Args:
        data_dir: The directory (created if missing).
        clock: Wall clock in seconds (injectable for TTL tests).
    """

    def __init__(self, data_dir: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.checkpoint_root = self.data_dir / "checkpoints"
        self.checkpoint_root.mkdir(exist_ok=True)
        self._clock = clock
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.data_dir / "tinkex.sqlite3", check_same_thread=False,
                                   isolation_level=None)
        self._db.row_factory = sqlite3.Row
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            self._migrate()
        self._clean_partial_dirs()

    def _migrate(self) -> None:
        # data directories written before a column existed get it (NULL for old rows)
        columns = {r["name"] for r in self._db.execute("PRAGMA table_info(training_runs)")}
        if "corrupted" not in columns:
            self._db.execute("ALTER TABLE training_runs ADD COLUMN corrupted TEXT")
        for table in ("sessions", "samplers", "checkpoints"):
            names = {r["name"] for r in self._db.execute(f"PRAGMA table_info({table})")}
            if "owner" not in names:  # written before owners were recorded
                self._db.execute(f"ALTER TABLE {table} ADD COLUMN owner TEXT")

    def now(self) -> float:
        """The storage clock's current time (epoch seconds)."""
        return self._clock()

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return list(self._db.execute(sql, args).fetchall())

    def _insert(self, table: str, values: Mapping[str, Any], *, replace: bool = False) -> None:
        cols = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        verb = "INSERT OR REPLACE" if replace else "INSERT"
        with self._lock:
            self._db.execute(f"{verb} INTO {table} ({cols}) VALUES ({marks})",
                             tuple(values.values()))

    # ------------------------------------------------------------------ sessions

    def create_session(self, row: SessionRow) -> None:
        """Insert a session (ignored if the id exists)."""
        values = _to_db(row)
        cols = ", ".join(values)
        with self._lock:
            self._db.execute(f"INSERT OR IGNORE INTO sessions ({cols}) VALUES "
                             f"({', '.join('?' for _ in values)})", tuple(values.values()))

    def get_session(self, session_id: str) -> SessionRow | None:
        """A session by id."""
        rows = self._query("SELECT * FROM sessions WHERE session_id = ?", (session_id,))
        return _from_db(SessionRow, rows[0]) if rows else None

    def idle_sessions(self, before: float) -> list[str]:
        """Unfinished sessions last seen before `before` (epoch seconds)."""
        rows = self._query("SELECT session_id FROM sessions WHERE finished_at IS NULL AND "
                           "max(last_seen, created_at) < ?", (before,))
        return [r["session_id"] for r in rows]

    def list_sessions(self, limit: int, offset: int, owner: str | None = None
                      ) -> list[SessionRow]:
        """Sessions `owner` may use (None: all), newest first."""
        where, args = _owner_filter(owner)
        rows = self._query(f"SELECT * FROM sessions {where} ORDER BY created_at DESC, "
                           "rowid DESC LIMIT ? OFFSET ?", (*args, limit, offset))
        return [_from_db(SessionRow, r) for r in rows]

    def touch_session(self, session_id: str) -> None:
        """Record a heartbeat."""
        with self._lock:
            self._db.execute("UPDATE sessions SET last_seen = ? WHERE session_id = ?",
                             (self._clock(), session_id))

    def finish_session(self, session_id: str, reason: str, detail: str | None) -> None:
        """Mark a session finished; the first reason wins."""
        with self._lock:
            self._db.execute("UPDATE sessions SET finished_at = ?, finish_reason = ?, "
                             "finish_detail = ? WHERE session_id = ? AND finished_at IS NULL",
                             (self._clock(), reason, detail, session_id))

    def set_session_project(self, session_id: str, project_id: str) -> None:
        """Move a session to a project."""
        with self._lock:
            self._db.execute("UPDATE sessions SET project_id = ? WHERE session_id = ?",
                             (project_id, session_id))

    # ------------------------------------------------------------------ training runs

    def create_run(self, row: RunRow) -> None:
        """Insert (or replace) a training run."""
        self._insert("training_runs", _to_db(row), replace=True)

    def get_run(self, run_id: str) -> RunRow | None:
        """A training run by id."""
        rows = self._query("SELECT * FROM training_runs WHERE run_id = ?", (run_id,))
        return _from_db(RunRow, rows[0]) if rows else None

    def list_runs(self, limit: int, offset: int, owner: str | None = None
                  ) -> tuple[list[RunRow], int]:
        """Training runs `owner` may use (None: all), newest first, and their count."""
        where, args = _owner_filter(owner)
        rows = self._query(f"SELECT * FROM training_runs {where} ORDER BY created_at DESC, "
                           "rowid DESC LIMIT ? OFFSET ?", (*args, limit, offset))
        total = self._query(f"SELECT COUNT(*) AS n FROM training_runs {where}", args)[0]["n"]
        return [_from_db(RunRow, r) for r in rows], int(total)

    def runs_of_session(self, session_id: str) -> list[str]:
        """Ids of the training runs a session created, in creation order."""
        rows = self._query("SELECT run_id FROM training_runs WHERE session_id = ? "
                           "ORDER BY model_seq_id", (session_id,))
        return [r["run_id"] for r in rows]

    def touch_run(self, run_id: str) -> None:
        """Record a request to a training run."""
        with self._lock:
            self._db.execute("UPDATE training_runs SET last_request_time = ? WHERE run_id = ?",
                             (self._clock(), run_id))

    def mark_run_corrupted(self, run_id: str, reason: str) -> None:
        """Record that a run's state is unusable (the first reason wins)."""
        with self._lock:
            self._db.execute("UPDATE training_runs SET corrupted = ? WHERE run_id = ? AND "
                             "corrupted IS NULL", (reason, run_id))

    def clear_run_corrupted(self, run_id: str) -> None:
        """A good state was loaded into the run again."""
        with self._lock:
            self._db.execute("UPDATE training_runs SET corrupted = NULL WHERE run_id = ?",
                             (run_id,))

    # ------------------------------------------------------------------ samplers

    def create_sampler(self, row: SamplerRow) -> None:
        """Insert (or replace) a sampling session."""
        self._insert("samplers", _to_db(row), replace=True)

    def get_sampler(self, sampler_id: str) -> SamplerRow | None:
        """A sampling session by id."""
        rows = self._query("SELECT * FROM samplers WHERE sampler_id = ?", (sampler_id,))
        return _from_db(SamplerRow, rows[0]) if rows else None

    def samplers_of_session(self, session_id: str) -> list[str]:
        """Ids of the sampling sessions of a session, in creation order."""
        rows = self._query("SELECT sampler_id FROM samplers WHERE session_id = ? "
                           "ORDER BY seq_id", (session_id,))
        return [r["sampler_id"] for r in rows]

    # ------------------------------------------------------------------ checkpoints

    def new_checkpoint_dir(self) -> Path:
        """A fresh, empty temporary directory to write a checkpoint into.

        Pass it to `add_checkpoint`, which moves it to its final place.
        """
        # directory names are truly random on purpose (not from the engine's injectable
        # Effects): the final name is the unauthenticated download token of an export
        path = self.checkpoint_root / f".tmp-{uuid.uuid4().hex}"
        path.mkdir()
        return path

    def add_checkpoint(self, row: CheckpointRow, staged: Path) -> CheckpointRow:
        """Publish a checkpoint written into `staged`; replaces one with the same id.

        Returns the stored row (with its final directory and size).
        """
        final = self.checkpoint_root / uuid.uuid4().hex
        staged.rename(final)
        stored = CheckpointRow(**{**_to_db_plain(row), "dir": final.name,
                                  "size_bytes": dir_size(final)})
        old = self._query("SELECT dir FROM checkpoints WHERE run_id = ? AND checkpoint_id = ?",
                          (row.run_id, row.checkpoint_id))
        self._insert("checkpoints", _to_db(stored), replace=True)
        for r in old:
            shutil.rmtree(self.checkpoint_root / r["dir"], ignore_errors=True)
        return stored

    def checkpoint_path(self, row: CheckpointRow) -> Path:
        """The directory holding a checkpoint's files."""
        return self.checkpoint_root / row.dir

    def _live(self, rows: list[sqlite3.Row]) -> list[CheckpointRow]:
        now = self._clock()
        out = [_from_db(CheckpointRow, r) for r in rows]
        return [c for c in out if c.expires_at is None or c.expires_at > now]

    def get_checkpoint(self, run_id: str, checkpoint_id: str) -> CheckpointRow | None:
        """A live (unexpired) checkpoint."""
        rows = self._query("SELECT * FROM checkpoints WHERE run_id = ? AND checkpoint_id = ?",
                           (run_id, checkpoint_id))
        live = self._live(rows)
        return live[0] if live else None

    def list_checkpoints(self, run_id: str) -> list[CheckpointRow]:
        """Live checkpoints of a run, oldest first."""
        return self._live(self._query(
            "SELECT * FROM checkpoints WHERE run_id = ? ORDER BY created_at, rowid", (run_id,)))

    def list_all_checkpoints(self, limit: int, offset: int, owner: str | None = None
                             ) -> tuple[list[CheckpointRow], int]:
        """Live checkpoints `owner` may use (None: all; published ones of other owners are
        not listed), newest first, and their total count."""
        now = self._clock()
        where = "WHERE (expires_at IS NULL OR expires_at > ?)"
        args: tuple[Any, ...] = (now,)
        if owner is not None:
            where, args = f"{where} AND {_OWNED}", (now, owner)
        rows = self._query(f"SELECT * FROM checkpoints {where} ORDER BY created_at DESC, "
                           "rowid DESC LIMIT ? OFFSET ?", (*args, limit, offset))
        total = self._query(f"SELECT COUNT(*) AS n FROM checkpoints {where}", args)[0]["n"]
        return [_from_db(CheckpointRow, r) for r in rows], int(total)

    def latest_checkpoint(self, run_id: str, kind: str) -> CheckpointRow | None:
        """The newest live checkpoint of a kind in a run."""
        live = [c for c in self.list_checkpoints(run_id) if c.kind == kind]
        return live[-1] if live else None

    def delete_checkpoint(self, run_id: str, checkpoint_id: str) -> bool:
        """Delete a checkpoint's row and files; False if it did not exist."""
        with self._tx() as db:
            rows = db.execute("SELECT dir FROM checkpoints WHERE run_id = ? AND "
                              "checkpoint_id = ?", (run_id, checkpoint_id)).fetchall()
            db.execute("DELETE FROM checkpoints WHERE run_id = ? AND checkpoint_id = ?",
                       (run_id, checkpoint_id))
        for r in rows:
            shutil.rmtree(self.checkpoint_root / r["dir"], ignore_errors=True)
        return bool(rows)

    def set_checkpoint_ttl(self, run_id: str, checkpoint_id: str, ttl_s: int | None) -> None:
        """Expire a checkpoint `ttl_s` seconds from now (None: never)."""
        expires = None if ttl_s is None else self._clock() + ttl_s
        with self._lock:
            self._db.execute("UPDATE checkpoints SET expires_at = ? WHERE run_id = ? AND "
                             "checkpoint_id = ?", (expires, run_id, checkpoint_id))

    def set_checkpoint_public(self, run_id: str, checkpoint_id: str, public: bool) -> None:
        """Publish or unpublish a checkpoint."""
        with self._lock:
            self._db.execute("UPDATE checkpoints SET public = ? WHERE run_id = ? AND "
                             "checkpoint_id = ?", (int(public), run_id, checkpoint_id))

    def reap_expired(self) -> int:
        """Delete expired checkpoints (rows and files); returns how many."""
        with self._tx() as db:
            rows = db.execute("SELECT dir FROM checkpoints WHERE expires_at IS NOT NULL AND "
                              "expires_at <= ?", (self._clock(),)).fetchall()
            db.execute("DELETE FROM checkpoints WHERE expires_at IS NOT NULL AND "
                       "expires_at <= ?", (self._clock(),))
        for r in rows:
            shutil.rmtree(self.checkpoint_root / r["dir"], ignore_errors=True)
        return len(rows)

    def _clean_partial_dirs(self, min_age_s: float = 600.0) -> None:
        """Delete checkpoint directories no row points to (a crash mid-save), once they are
        `min_age_s` old, so that a second server on the same directory is left alone."""
        known = {r["dir"] for r in self._query("SELECT dir FROM checkpoints")}
        cutoff = time.time() - min_age_s  # the real clock: compared with file mtimes
        for path in self.checkpoint_root.iterdir():
            if path.is_dir() and path.name not in known and path.stat().st_mtime < cutoff:
                shutil.rmtree(path, ignore_errors=True)


def _owner_filter(owner: str | None) -> tuple[str, tuple[Any, ...]]:
    """A WHERE clause (and its arguments) keeping the rows `owner` may use."""
    return ("", ()) if owner is None else (f"WHERE {_OWNED}", (owner,))


def _to_db_plain(row: CheckpointRow) -> dict[str, Any]:
    return {f.name: getattr(row, f.name) for f in fields(row)}
