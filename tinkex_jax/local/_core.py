"""The core the engine's services share: request dedup, futures and lanes.

* **Dedup.** Accepted requests are remembered by their client-chosen key (``(model_id,
  seq_id)`` for training operations, ``(sampling_session_id, seq_id)`` for samples,
  ``(session_id, model_seq_id)`` and ``(session_id, sampling_session_seq_id)`` for
  creations) with a fingerprint of their body. A resubmission with the same body gets the
  original answer (the same ``request_id``); one with a different body is rejected.
* **Futures.** Each asynchronous request gets a ``request_id`` in the `FutureStore`; the
  task that runs it resolves it with an encoded payload or rejects it with a message.
* **Lanes.** `Core.submit` queues the task in a lane of the `Scheduler`: each training
  model is one lane, so its requests run one at a time in arrival order (optim_step, save
  and load are barriers); each sample gets a lane of its own.

* **Owners.** Everything a request creates belongs to the caller's owner name (a hash of
  its key, `tinkex_jax.local._jwt.key_owner`, or its JWT's subject): futures here, rows in
  `Storage`. A service looks a thing up for an owner and answers 404 when it belongs to
  another; ``owner=None`` is the server's own access (housekeeping, an open console).

Also here, because several services need them: the base-model lookup and the session
lookup (sessions are created only by ``create_session``, never implicitly). The services
(`_sessions`, `_training`, `_weights`, `_sampling`, `_catalog`) build on this;
`_engine.Engine` wires them together.

This module must not know any request type beyond its dedup key, must not touch HTTP, and
never blocks the event loop: `submit` only queues, the work runs on a compute worker.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> from tinkex_jax.local._config import ServerConfig
    >>> from tinkex_jax.local._effects import Effects
    >>> from tinkex_jax.local._storage import Storage
    >>> config = ServerConfig(data_dir=Path(tempfile.mkdtemp()), warm_up=False,
    ...                       base_models=("m",))
    >>> core = Core(config, backend=None, storage=Storage(config.data_dir),  # type: ignore
    ...             effects=Effects())
    >>> core.start()
    >>> answer = core.submit("Echo", "lane:a", ("echo", "1"), fingerprint(b"x"),
    ...                      lambda: json_payload({"ok": True}))
    >>> core.scheduler.join(5.0), core.seen(("echo", "1"), fingerprint(b"x"), "echo 1") == answer
    (True, True)
    >>> core.stop()
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import ValidationError
from ..wire import encode_json
from ._backend import Backend, BaseModelInfo
from ._config import ServerConfig
from ._effects import Effects
from ._errors import GoneError, NotFoundError, ServerError, UserError
from ._futures import JSON, Failure, FutureStore, Outcome, Payload
from ._scheduler import Scheduler
from ._storage import CURRENT_REQUEST, SessionRow, Storage, may_use

__all__ = ["DURABLE_KINDS", "Core", "Dedup", "Json", "Key", "fingerprint", "json_payload"]

_log = logging.getLogger("tinkex_jax.local")
#: Future kinds recorded durably (`Storage.record_request`): an acknowledged save completes
#: or is reported failed, even across a crash of the server.
DURABLE_KINDS = frozenset({"SaveWeights", "SaveWeightsForSampler", "SaveWeightsExternal"})

Json = dict[str, Any]
Key = tuple[str, ...]


def fingerprint(body: bytes) -> bytes:
    """A short digest of a request body, to tell a retry from a different request.

    Example:
        >>> fingerprint(b"a") == fingerprint(b"a"), fingerprint(b"a") == fingerprint(b"b")
        (True, False)
    """
    return hashlib.blake2b(body, digest_size=16).digest()


def json_payload(obj: Any) -> Payload:
    """A future's JSON result."""
    return Payload(encode_json(obj), JSON)


@dataclass
class _Seen:
    fingerprint: bytes
    response: Json


@dataclass
class Dedup:
    """Remembered answers by client key; bounded (oldest forgotten first). Not locked: the
    `Core` holds its lock around every use.

    Example:
        >>> d = Dedup(limit=1)
        >>> d.put(("a",), b"1", {"request_id": "r1"}); d.get(("a",), b"1", "a")
        {'request_id': 'r1'}
        >>> d.put(("b",), b"1", {"request_id": "r2"}); d.get(("a",), b"1", "a") is None
        True
    """

    limit: int = 200_000
    entries: dict[Key, _Seen] = field(default_factory=dict)

    def get(self, key: Key, fingerprint: bytes, what: str) -> Json | None:
        """The answer remembered for `key`, None if none; a different body is an error."""
        seen = self.entries.get(key)
        if seen is None:
            return None
        if seen.fingerprint != fingerprint:
            raise UserError(
                f"{what} was already used by a different request (the server keeps the first "
                "one and answered it). Fix: give every request a fresh seq_id; clients do "
                "this for you unless two clients share one id.")
        return seen.response

    def put(self, key: Key, fingerprint: bytes, response: Json) -> None:
        """Remember the answer to `key`."""
        self.entries[key] = _Seen(fingerprint, response)
        if len(self.entries) > self.limit:
            for old in list(self.entries)[: len(self.entries) - self.limit]:
                del self.entries[old]


class Core:
    """Dedup, futures, lanes and the shared lock of one engine (see the module docstring).

    Args:
        config: Server settings.
        backend: The array work (the JAX model layer, or a test fake).
        storage: Durable state; its clock is the wall clock of every service.
        effects: Monotonic clock, identifiers and seeds.

    Attributes:
        lock: The one lock of the engine's in-memory state (models, samplers, dedup); held
            only for bookkeeping, never around backend work.
    """

    def __init__(self, config: ServerConfig, backend: Backend, storage: Storage,
                 effects: Effects) -> None:
        self.config = config
        self.backend = backend
        self.storage = storage
        self.effects = effects
        # request ids name the boot, so an id answered before a restart is never reused
        self.futures = FutureStore(retention_s=config.result_retention_s,
                                   max_results=config.max_retained_results,
                                   clock=effects.monotonic, prefix=f"req-{storage.boot}")
        self.scheduler = Scheduler(workers=config.compute_workers)
        self.lock = threading.RLock()
        self._dedup = Dedup()
        self._one_shot = itertools.count(1)

    # ------------------------------------------------------------------ life cycle

    def start(self) -> None:
        """Start the compute workers and, if configured, load the base models."""
        self.scheduler.start()
        if self.config.warm_up:
            for name in self.config.base_models:
                try:
                    self.backend.warm_up(name)
                except Exception as exc:  # serve the other models; this one errors on use
                    _log.warning("base model %s is unavailable: %s", name, exc)

    def stop(self) -> None:
        """Stop the workers and close storage."""
        self.scheduler.stop()
        self.storage.close()

    # ------------------------------------------------------------------ dedup and futures

    def seen(self, key: Key, body_fp: bytes, what: str) -> Json | None:
        """The earlier answer to this request, or None when `key` is new.

        Raises:
            UserError: `key` was used by a request with another body (`what` names it).
        """
        with self.lock:
            return self._dedup.get(key, body_fp, what)

    def remember(self, key: Key, body_fp: bytes, response: Json) -> None:
        """Remember a synchronous answer (asynchronous ones are remembered by `submit`)."""
        with self.lock:
            self._dedup.put(key, body_fp, response)

    def submit(self, kind: str, lane: str, key: Key | None, body_fp: bytes,
               work: Callable[[], Payload], extra: Json | None = None, *,
               owner: str | None = None) -> Json:
        """Queue `work` in `lane` behind a new future of `owner`; returns the future's JSON.

        The answer (``request_id`` plus `extra`) is remembered under `key` before the work
        runs. Errors of the work reject the future: `ServerError` and `ValidationError`
        with their message, anything else as a server bug. Saves (`DURABLE_KINDS`) are also
        recorded in storage before the answer and settled there, so that they complete or
        are reported failed after a restart (`Storage.recover`, `retrieve`).
        """
        durable = kind in DURABLE_KINDS
        with self.lock:
            request_id = self.futures.create(kind, owner)
            if durable:
                try:
                    self.storage.record_request(request_id, kind, owner)
                except BaseException:
                    self.futures.reject(request_id, "not recorded", "server")
                    raise
            response: Json = {"request_id": request_id, **(extra or {})}
            if key is not None:
                self._dedup.put(key, body_fp, response)

        def run() -> None:
            token = CURRENT_REQUEST.set(request_id) if durable else None
            outcome: Outcome
            try:
                outcome = work()
            except ServerError as exc:
                outcome = Failure(exc.message, exc.category)
            except ValidationError as exc:
                outcome = Failure(str(exc), "user")
            except Exception as exc:
                _log.exception("%s request %s failed", kind, request_id)
                outcome = Failure(
                    f"The local backend failed on this {kind} request "
                    f"({type(exc).__name__}: {exc}). This is a bug; please report it.",
                    "server")
            finally:
                if token is not None:
                    CURRENT_REQUEST.reset(token)
            if durable:
                self._settle(request_id, outcome)
            if isinstance(outcome, Failure):
                self.futures.reject(request_id, outcome.message, outcome.category)
            else:
                self.futures.resolve(request_id, outcome)

        self.scheduler.submit(lane, run)
        return response

    def forget_finished(self, finished: Callable[[str], bool]) -> int:
        """Forget the remembered answers (dedup entries) of the sessions for which
        `finished(session_id)` is true: their clients are gone, and a late retry now gets
        a 404 instead of the first answer. Keeps the dedup table as small as the live
        sessions' requests (the engine's reaper calls this). Returns how many went."""
        def session_of(key: Key) -> str:
            return key[1].split(":", 1)[0] if len(key) > 1 else ""

        with self.lock:
            sessions = {session_of(key) for key in self._dedup.entries}
        done = {session for session in sessions if session and finished(session)}
        with self.lock:
            gone = [key for key in self._dedup.entries if session_of(key) in done]
            for key in gone:
                del self._dedup.entries[key]
        return len(gone)

    def one_shot_lane(self, prefix: str) -> str:
        """A lane no other request uses (each sample runs independently)."""
        return f"{prefix}:{next(self._one_shot)}"

    def _settle(self, request_id: str, outcome: Outcome) -> None:
        try:
            if isinstance(outcome, Failure):
                self.storage.settle_request(request_id, error=outcome.message,
                                            category=outcome.category)
            else:
                self.storage.settle_request(request_id, answer=outcome.body)
        except Exception:  # the in-memory future still answers; a restart says "failed"
            _log.exception("recording the outcome of %s failed", request_id)

    async def retrieve(self, request_id: str, timeout: float, owner: str | None = None
                       ) -> Outcome | None:
        """Long-poll one future of `owner` (None while it is still pending after
        `timeout`; `NotFoundError` for another owner's). A save this process no longer
        holds (answered before a restart, or long ago) is answered from its durable record:
        its result, or its failure."""
        try:
            return await self.futures.wait(request_id, timeout, owner)
        except NotFoundError:
            recorded = self.storage.durable_outcome(request_id)
            if recorded is None or not may_use(recorded.owner, owner):
                raise
        if recorded.state == "done" and recorded.answer is not None:
            return Payload(recorded.answer, JSON)
        if recorded.state == "failed":
            return Failure(recorded.error or "failed", recorded.category)  # type: ignore[arg-type]
        return None

    def collect(self) -> None:
        """Forget results past their retention."""
        self.futures.collect()

    # ------------------------------------------------------------------ shared lookups

    def base(self, name: str) -> BaseModelInfo:
        """A served base model, or a `UserError` that lists the served ones."""
        if name not in self.config.base_models:
            raise UserError(
                f"Unknown base model {name!r}. This local server offers "
                f"{list(self.config.base_models)}. Fix: pass one of them as base_model (start "
                "the server with --base-model to offer others).")
        try:
            return self.backend.base_model(name)
        except KeyError as exc:
            cause = f": {exc.__cause__}" if exc.__cause__ is not None else ""
            raise UserError(f"Base model {name!r} could not be loaded by the local "
                            f"backend{cause}") from None

    def session(self, session_id: str, owner: str | None, *, live: bool = False
                ) -> SessionRow:
        """A session `owner` may use; with `live`, one that is not finished (to create
        something in it).

        Raises:
            NotFoundError: no such session, or it belongs to another owner (sessions are
                made only by ``create_session``).
            GoneError: `live` and the session has finished.
        """
        row = self.storage.get_session(session_id)
        if row is None or not may_use(row.owner, owner):
            raise NotFoundError(
                f"Unknown session {session_id!r}. Fix: create one with create_session first "
                "(a ServiceClient does this when it starts) and use the id it returns, with "
                "the same API key.")
        if live and row.finished_at is not None:
            raise GoneError(
                f"Session {session_id!r} is finished ({row.finish_reason}); nothing new can "
                "be created in it. Fix: create a new ServiceClient.")
        return row
