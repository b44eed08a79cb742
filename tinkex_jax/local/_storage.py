"""Durable state of the local backend: SQLite metadata plus checkpoint directories.

Layout of the data directory::

    <data_dir>/tinkex.sqlite3            sessions, training runs, samplers, checkpoints,
                                         durable requests (saves)
    <data_dir>/checkpoints/<uuid>/       one directory per checkpoint (adapter, optimizer,
                                         meta.json; or Hugging Face files for exports)
    <data_dir>/checkpoints/.tmp-<boot>-<uuid>/   a checkpoint being written
    <data_dir>/boots/<boot>.lock         held (flock) by the server process ``<boot>``

**Durability.** A checkpoint is written into a temporary directory; its files and the
directory are fsynced, it is renamed into place (and the parent fsynced), and only then is
its row inserted, so a crash never leaves a listed checkpoint without files. A save request
is recorded (`record_request`) before its ``request_id`` is answered, carries the row it is about to add once its files are in place, and is settled
with its answer or error. Each server process holds a lock file for its boot id; a new
`Storage` recovers what dead boots left behind: a save whose files were renamed into place
gets its row (it completed), any other unsettled save is marked failed (a later
``retrieve_future`` of its id says so, `durable_outcome`), their temporaries are removed, and
so are checkpoint directories no row points to once they are 10 minutes old. Another live
server's work on the same directory is left alone.
For tests, ``TINKEX_LOCAL_CRASH_AT=save:start|save:staged|save:renamed`` kills the process
(SIGKILL) at that point of a save, and ``TINKEX_LOCAL_PAUSE_AT`` blocks it there for good
(the test then kills it: the save's ``request_id`` has surely been answered by then).

**Bounded.** Expired checkpoints (TTL) are invisible at once and their files are deleted by
`reap_expired`; `prune_finished` deletes the sampler rows of finished sessions, and later the
finished sessions themselves with their runs that hold no checkpoint, and settled request
records once their clients surely have the answer.

Example:
    >>> import tempfile
    >>> st = Storage(Path(tempfile.mkdtemp()))
    >>> st.create_session(SessionRow(session_id="s1", created_at=0.0))
    >>> [s.session_id for s in st.list_sessions(10, 0)]
    ['s1']
    >>> st.close()
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import re
import secrets
import shutil
import signal
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

__all__ = ["CURRENT_REQUEST", "LEGACY_OWNERS", "CheckpointRow", "DurableOutcome", "RunRow",
           "SamplerRow", "SessionRow", "Storage", "may_use", "save_answer"]

_log = logging.getLogger("tinkex_jax.local")

try:  # POSIX: a boot is alive while its process holds the flock of its lock file
    import fcntl
except ImportError:  # pragma: no cover - Windows: boots are judged by their age instead
    fcntl = None  # type: ignore[assignment]

#: The ``request_id`` whose work runs on this thread (set by `Core.submit` around a durable
#: request's work), so that `Storage.add_checkpoint` can record which request adds which row.
CURRENT_REQUEST: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "tinkex_local_request", default=None)
#: Requests settled by `Storage.recover` stay answerable this long (a client may come back
#: long after the outage); others as long as the caller of `prune_finished` says.
_RECOVERED_RETENTION_S = 86400.0
_TMP = re.compile(r"^\.tmp-([0-9a-f]{8})-([0-9a-f]{32})$")
_CRASH_ENV = "TINKEX_LOCAL_CRASH_AT"
_PAUSE_ENV = "TINKEX_LOCAL_PAUSE_AT"

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
CREATE TABLE IF NOT EXISTS requests (
    request_id TEXT PRIMARY KEY, kind TEXT NOT NULL, owner TEXT, boot TEXT NOT NULL,
    created_at REAL NOT NULL, state TEXT NOT NULL DEFAULT 'pending', planned TEXT,
    answer TEXT, error TEXT, category TEXT, settled_at REAL, recovered INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS requests_by_state ON requests (state, boot);
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


_SAVE_TYPES = {"weights": "save_weights", "sampler_weights": "save_weights_for_sampler",
               "external_weights": "save_weights_external"}


def save_answer(row: CheckpointRow) -> dict[str, Any]:
    """The result a save request answers once it added `row` (docs/protocol.md §5.2).

    Example:
        >>> save_answer(CheckpointRow(run_id="r", checkpoint_id="weights/a", kind="weights",
        ...     name="a", tinker_path="tinker://r/weights/a", dir="d", created_at=0.0))
        {'path': 'tinker://r/weights/a', 'type': 'save_weights'}
    """
    answer: dict[str, Any] = {"path": row.tinker_path, "type": _SAVE_TYPES[row.kind]}
    if row.kind == "external_weights":
        answer["size_bytes"] = row.size_bytes
    return answer


@dataclass(frozen=True)
class DurableOutcome:
    """A durable request as recorded: ``state`` is pending, done (`answer`: the JSON result)
    or failed (`error`, `category`)."""

    state: str
    owner: str | None
    answer: bytes | None = None
    error: str | None = None
    category: str = "server"


def _crash_point(name: str, data_dir: Path) -> None:
    """A test hook: kill this process here when ``TINKEX_LOCAL_CRASH_AT`` names `name`;
    block here for good when ``TINKEX_LOCAL_PAUSE_AT`` does (after creating the file
    ``<data_dir>/paused-at-<name>``, so that a test knows when to kill it)."""
    if os.environ.get(_PAUSE_ENV) == name:
        _log.warning("%s=%s: pausing the save for good (test hook)", _PAUSE_ENV, name)
        (data_dir / f"paused-at-{name.replace(':', '-')}").touch()
        while True:
            time.sleep(3600)
    if os.environ.get(_CRASH_ENV) == name:
        _log.warning("%s=%s: killing the server (test hook)", _CRASH_ENV, name)
        os.kill(os.getpid(), signal.SIGKILL)


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """fsync every file under `root`, then every directory (deepest first)."""
    dirs = [root]
    for path in sorted(root.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if path.is_symlink():
            continue
        if path.is_dir():
            dirs.append(path)
        else:
            _fsync_path(path)
    for directory in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
        with suppress(OSError):  # some file systems refuse fsync on a directory
            _fsync_path(directory)


def _sync_dir(path: Path) -> None:
    with suppress(OSError):
        _fsync_path(path)


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
        # truly random, as the checkpoint directory names: request ids are built from it
        self.boot = secrets.token_hex(4)
        self._boot_lock = _hold_boot_lock(self.data_dir / "boots", self.boot)
        self.recover()

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
        """Close the database connection and release this boot's lock."""
        with self._lock:
            self._db.close()
            if self._boot_lock is not None:
                self._boot_lock.close()
                self._boot_lock = None
                (self.data_dir / "boots" / f"{self.boot}.lock").unlink(missing_ok=True)

    @contextmanager
    def _tx(self, *, durable: bool = False) -> Iterator[sqlite3.Connection]:
        """A write transaction; `durable` commits with a sync of the log (it survives a
        power loss, not only a crash of this process)."""
        with self._lock:
            if durable:
                self._db.execute("PRAGMA synchronous=FULL")
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            finally:
                if durable:
                    self._db.execute("PRAGMA synchronous=NORMAL")

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
        _crash_point("save:start", self.data_dir)
        path = self.checkpoint_root / f".tmp-{self.boot}-{uuid.uuid4().hex}"
        path.mkdir()
        return path

    def add_checkpoint(self, row: CheckpointRow, staged: Path) -> CheckpointRow:
        """Publish a checkpoint written into `staged` (from `new_checkpoint_dir`); replaces
        one with the same id.

        The files and directories are fsynced, the directory is renamed into place (and its
        parent fsynced), then the row is inserted. Inside a durable request's work
        (`CURRENT_REQUEST`), the row is first recorded on the request, so that a crash after
        the rename still completes the save at the next start (`recover`).

        Returns the stored row (with its final directory and size).
        """
        match = _TMP.match(staged.name)
        final = self.checkpoint_root / (match.group(2) if match else uuid.uuid4().hex)
        stored = CheckpointRow(**{**_to_db_plain(row), "dir": final.name,
                                  "size_bytes": dir_size(staged)})
        _fsync_tree(staged)
        request_id = CURRENT_REQUEST.get()
        if request_id is not None:
            with self._lock:
                self._db.execute("UPDATE requests SET planned = ? WHERE request_id = ?",
                                 (json.dumps(_to_db(stored)), request_id))
        _crash_point("save:staged", self.data_dir)
        staged.rename(final)
        _sync_dir(self.checkpoint_root)
        _crash_point("save:renamed", self.data_dir)
        with self._tx(durable=True) as db:
            old = db.execute("SELECT dir FROM checkpoints WHERE run_id = ? AND "
                             "checkpoint_id = ?", (row.run_id, row.checkpoint_id)).fetchall()
            values = _to_db(stored)
            db.execute(f"INSERT OR REPLACE INTO checkpoints ({', '.join(values)}) VALUES "
                       f"({', '.join('?' for _ in values)})", tuple(values.values()))
        for r in old:
            if r["dir"] != final.name:
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

    # ------------------------------------------------------------------ durable requests

    def record_request(self, request_id: str, kind: str, owner: str | None) -> None:
        """Record a request before its id is answered (see the module docstring).

        Committed to SQLite's write-ahead log without a sync: it survives the process being
        killed; after a power loss the id may be unknown instead (a 404, never a silent
        success). Checkpoint rows are committed with a sync.
        """
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO requests (request_id, kind, owner, boot, "
                             "created_at) VALUES (?, ?, ?, ?, ?)",
                             (request_id, kind, owner, self.boot, self._clock()))

    def settle_request(self, request_id: str, *, answer: bytes | None = None,
                       error: str | None = None, category: str = "server") -> None:
        """Record a durable request's outcome: its JSON `answer`, or its `error`."""
        state = "failed" if error is not None else "done"
        with self._lock:
            self._db.execute(
                "UPDATE requests SET state = ?, answer = ?, error = ?, category = ?, "
                "settled_at = ? WHERE request_id = ?",
                (state, None if answer is None else answer.decode(), error, category,
                 self._clock(), request_id))

    def durable_outcome(self, request_id: str) -> DurableOutcome | None:
        """What is recorded about a durable request (None: it was never recorded)."""
        rows = self._query("SELECT state, owner, answer, error, category FROM requests WHERE "
                           "request_id = ?", (request_id,))
        if not rows:
            return None
        r = rows[0]
        return DurableOutcome(state=r["state"], owner=r["owner"],
                              answer=None if r["answer"] is None else r["answer"].encode(),
                              error=r["error"], category=r["category"] or "server")

    # ------------------------------------------------------------------ pruning

    def prune_finished(self, *, samplers_before: float | None,
                       sessions_before: float | None,
                       requests_before: float | None = None) -> int:
        """Delete what finished sessions and settled requests leave behind; returns the
        number of rows deleted.

        Args:
            samplers_before: Sampler rows of sessions finished before this time (epoch s) go.
            sessions_before: Sessions finished before this time go, with their sampler rows
                and their training runs that hold no checkpoint (checkpoints, and the runs
                they belong to, stay until deleted or expired).
            requests_before: Records of requests settled before this time go (their clients
                have long had the answer); those settled by `recover` stay a day, for
                clients that come back after an outage.
        """
        deleted = 0
        with self._tx() as db:
            if samplers_before is not None:
                deleted += db.execute(
                    "DELETE FROM samplers WHERE session_id IN (SELECT session_id FROM "
                    "sessions WHERE finished_at IS NOT NULL AND finished_at < ?)",
                    (samplers_before,)).rowcount
            if sessions_before is not None:
                gone = "(SELECT session_id FROM sessions WHERE finished_at IS NOT NULL AND " \
                       "finished_at < ?)"
                deleted += db.execute(f"DELETE FROM samplers WHERE session_id IN {gone}",
                                      (sessions_before,)).rowcount
                deleted += db.execute(
                    f"DELETE FROM training_runs WHERE session_id IN {gone} AND run_id NOT IN "
                    "(SELECT run_id FROM checkpoints)", (sessions_before,)).rowcount
                deleted += db.execute(
                    "DELETE FROM sessions WHERE finished_at IS NOT NULL AND finished_at < ? "
                    "AND session_id NOT IN (SELECT session_id FROM training_runs)",
                    (sessions_before,)).rowcount
            if requests_before is not None:
                deleted += db.execute(
                    "DELETE FROM requests WHERE state != 'pending' AND recovered = 0 AND "
                    "settled_at < ?", (requests_before,)).rowcount
            deleted += db.execute(
                "DELETE FROM requests WHERE state != 'pending' AND settled_at < ?",
                (self._clock() - _RECOVERED_RETENTION_S,)).rowcount
        return deleted

    # ------------------------------------------------------------------ recovery

    def recover(self) -> None:
        """Finish or fail what dead server processes left (see the module docstring).

        Called when the storage opens; safe while other servers use the same directory.
        """
        dead, alive = _boots(self.data_dir / "boots", self.boot)
        pending = self._query("SELECT request_id, boot, planned FROM requests WHERE "
                              "state = 'pending'")
        for r in pending:
            if r["boot"] not in alive:
                self._recover_request(r["request_id"], r["planned"])
        keep = {r["dir"] for r in self._query("SELECT dir FROM checkpoints")}
        for r in self._query("SELECT planned FROM requests WHERE state = 'pending' AND "
                             "planned IS NOT NULL"):
            keep.add(json.loads(r["planned"])["dir"])
        cutoff = time.time() - 600.0  # the real clock: compared with file mtimes
        for path in self.checkpoint_root.iterdir():
            if not path.is_dir() or path.name in keep:
                continue
            match = _TMP.match(path.name)
            if match is not None:
                stale = match.group(1) not in alive
            else:  # a temporary of an older version, or a final name no row points to (its
                # row was deleted, its files were not): by age, as another live server may
                # be about to add its row (a copy) or to remove it
                stale = path.stat().st_mtime < cutoff
            if stale:
                _log.info("removing %s (left by a server that stopped)", path.name)
                shutil.rmtree(path, ignore_errors=True)
        for boot in dead:
            (self.data_dir / "boots" / f"{boot}.lock").unlink(missing_ok=True)

    def _recover_request(self, request_id: str, planned: str | None) -> None:
        row = None if planned is None else _from_values(json.loads(planned))
        if row is not None and (self.checkpoint_root / row.dir).is_dir():
            with self._tx(durable=True) as db:
                current = db.execute("SELECT dir FROM checkpoints WHERE run_id = ? AND "
                                     "checkpoint_id = ?",
                                     (row.run_id, row.checkpoint_id)).fetchall()
                if not current or current[0]["dir"] != row.dir:
                    values = _to_db(row)
                    db.execute(f"INSERT OR REPLACE INTO checkpoints ({', '.join(values)}) "
                               f"VALUES ({', '.join('?' for _ in values)})",
                               tuple(values.values()))
                db.execute("UPDATE requests SET state = 'done', answer = ?, settled_at = ?, "
                           "recovered = 1 WHERE request_id = ?",
                           (json.dumps(save_answer(row)), self._clock(), request_id))
            for r in current:
                if r["dir"] != row.dir:
                    shutil.rmtree(self.checkpoint_root / r["dir"], ignore_errors=True)
            _log.warning("completed save %s of %s after a restart (its files were in place)",
                         request_id, row.tinker_path)
            return
        with self._lock:
            self._db.execute("UPDATE requests SET recovered = 1 WHERE request_id = ?",
                             (request_id,))
        self.settle_request(request_id, error=(
            "The local server stopped (it was killed or crashed) before this request "
            "finished, so nothing was saved. Fix: save again from a live training client, "
            "or resume from your last checkpoint that exists (tinkex_jax.checkpointing."
            "resume)."), category="server")
        _log.warning("save %s failed: the server stopped before it finished", request_id)


def _owner_filter(owner: str | None) -> tuple[str, tuple[Any, ...]]:
    """A WHERE clause (and its arguments) keeping the rows `owner` may use."""
    return ("", ()) if owner is None else (f"WHERE {_OWNED}", (owner,))


def _to_db_plain(row: CheckpointRow) -> dict[str, Any]:
    return {f.name: getattr(row, f.name) for f in fields(row)}


def _from_values(values: Mapping[str, Any]) -> CheckpointRow:
    """A `CheckpointRow` from the column values `_to_db` made of it."""
    out: dict[str, Any] = {}
    for f in fields(CheckpointRow):
        value = values.get(f.name)
        if f.name in _JSON_FIELDS and isinstance(value, str):
            value = json.loads(value)
        elif f.name in _BOOL_FIELDS:
            value = bool(value)
        out[f.name] = value
    return CheckpointRow(**out)


def _hold_boot_lock(directory: Path, boot: str) -> Any:
    """Create and lock ``<directory>/<boot>.lock`` for this process's lifetime (the open
    file; None where file locks are unavailable, where the file's age tells instead)."""
    directory.mkdir(exist_ok=True)
    path = directory / f"{boot}.lock"
    handle = open(path, "a+b")  # noqa: SIM115 - held open until Storage.close
    if fcntl is not None:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    return handle


def _boots(directory: Path, own: str) -> tuple[set[str], set[str]]:
    """The boots with a lock file whose process is gone (nobody holds the lock; without file
    locks: the file is older than a day), and those alive (`own` included). A boot without
    a lock file is gone too (it closed, or its file was removed)."""
    dead: set[str] = set()
    alive = {own}
    for path in directory.glob("*.lock") if directory.is_dir() else ():
        boot = path.stem
        if boot == own:
            continue
        if fcntl is None:
            (dead if path.stat().st_mtime < time.time() - 86400 else alive).add(boot)
            continue
        try:
            with open(path, "a+b") as handle:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held (BlockingIOError): that server is running
            alive.add(boot)
            continue
        dead.add(boot)
    return dead, alive
