"""The future store: results of asynchronous requests, long-polled by ``retrieve_future``.

Requests that return a future (create_model, forward_backward, optim_step, save/load,
asample) get a ``request_id`` at submission. A worker thread later resolves it with an
encoded payload (JSON or protobuf bytes) or rejects it with a message and a category. A
``retrieve_future`` long poll waits on the loop until the entry is done or the timeout
passes, so it wakes up the moment the worker finishes. Results stay re-fetchable (client
retries) until `retention_s` after their first retrieval; unretrieved results are kept.
A future belongs to the owner of the request that made it (`create`'s ``owner``); asking
for another owner's future is answered as if it did not exist.

Example:
    >>> import asyncio
    >>> store = FutureStore()
    >>> rid = store.create("OptimStep")
    >>> store.resolve(rid, Payload(b'{"metrics": {}}', JSON))
    >>> outcome = asyncio.run(store.wait(rid, timeout=1.0))
    >>> outcome.body
    b'{"metrics": {}}'
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ._errors import Category, NotFoundError

__all__ = ["JSON", "PROTOBUF", "Failure", "FutureStore", "Outcome", "Payload"]

JSON = "application/json"
PROTOBUF = "application/x-protobuf"


@dataclass(frozen=True)
class Payload:
    """A finished request's encoded result and its content type."""

    body: bytes
    content_type: str = JSON


@dataclass(frozen=True)
class Failure:
    """A failed request: the message for the user and who is at fault."""

    message: str
    category: Category = "user"


Outcome = Payload | Failure


@dataclass
class _Entry:
    request_id: str
    kind: str
    created_at: float
    owner: str | None = None
    outcome: Outcome | None = None
    done_at: float | None = None
    retrieved_at: float | None = None
    event: asyncio.Event = field(default_factory=asyncio.Event)
    loops: set[asyncio.AbstractEventLoop] = field(default_factory=set)


class FutureStore:
    """Thread-safe store of pending and finished futures.

    `create`, `resolve` and `reject` may be called from any thread; `wait` runs on an
    event loop and is woken through ``call_soon_threadsafe``.

    Args:
        retention_s: Seconds a result stays available after it was first retrieved.
        max_results: Most finished entries kept; beyond it the oldest retrieved ones (then
            the oldest unretrieved ones) are dropped, down to 90 % of it.
        clock: Monotonic clock (injectable for tests).
        prefix: Prefix of the generated request ids.
    """

    def __init__(self, *, retention_s: float = 600.0, max_results: int = 10_000,
                 clock: Callable[[], float] = time.monotonic, prefix: str = "req") -> None:
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._retention_s = retention_s
        self._max_results = max_results
        self._clock = clock
        self._prefix = prefix
        self._collected_at = -float("inf")
        self._finished = 0  # entries with an outcome (what max_results bounds)

    # ------------------------------------------------------------------ writers

    def create(self, kind: str, owner: str | None = None) -> str:
        """Register a new pending future of `kind` and return its ``request_id``; only
        `owner` (None: anyone) may retrieve it."""
        with self._lock:
            request_id = f"{self._prefix}-{next(self._ids)}"
            self._entries[request_id] = _Entry(request_id, kind, self._clock(), owner)
            self._maybe_collect_locked()
        return request_id

    def resolve(self, request_id: str, payload: Payload) -> None:
        """Finish a future successfully (no-op if unknown or already finished)."""
        self._finish(request_id, payload)

    def reject(self, request_id: str, message: str, category: Category = "user") -> None:
        """Finish a future with a failure (no-op if unknown or already finished)."""
        self._finish(request_id, Failure(message, category))

    def _finish(self, request_id: str, outcome: Outcome) -> None:
        with self._lock:
            entry = self._entries.get(request_id)
            if entry is None or entry.outcome is not None:
                return
            entry.outcome = outcome
            entry.done_at = self._clock()
            self._finished += 1
            loops = list(entry.loops)
        for loop in loops:
            if not loop.is_closed():
                loop.call_soon_threadsafe(entry.event.set)

    # ------------------------------------------------------------------ readers

    def kind(self, request_id: str) -> str:
        """The request type of a known future; raises `NotFoundError` otherwise."""
        with self._lock:
            entry = self._entries.get(request_id)
        if entry is None:
            raise NotFoundError(_unknown_message(request_id))
        return entry.kind

    def peek(self, request_id: str) -> Outcome | None:
        """The outcome if finished, None while pending; raises `NotFoundError` if unknown."""
        with self._lock:
            entry = self._entries.get(request_id)
            if entry is None:
                raise NotFoundError(_unknown_message(request_id))
            return entry.outcome

    async def wait(self, request_id: str, timeout: float, owner: str | None = None
                   ) -> Outcome | None:
        """Wait up to `timeout` seconds for a future; None if it is still pending.

        A finished outcome is marked retrieved (it stays re-fetchable for the retention
        period). Raises `NotFoundError` for an unknown id, or one that `owner` (None: anyone)
        did not make.
        """
        loop = asyncio.get_running_loop()
        with self._lock:
            entry = self._entries.get(request_id)
            if entry is None or (owner is not None and entry.owner not in (None, owner)):
                raise NotFoundError(_unknown_message(request_id))
            if entry.outcome is None:
                entry.loops.add(loop)
        if entry.outcome is None:
            try:
                await asyncio.wait_for(entry.event.wait(), timeout=max(timeout, 0.0))
            except TimeoutError:
                return None
        with self._lock:
            if entry.retrieved_at is None:
                entry.retrieved_at = self._clock()
        return entry.outcome

    def stats(self) -> dict[str, int]:
        """Counts of pending and finished entries."""
        with self._lock:
            pending = sum(1 for e in self._entries.values() if e.outcome is None)
            return {"pending": pending, "finished": len(self._entries) - pending}

    # ------------------------------------------------------------------ housekeeping

    def collect(self) -> None:
        """Drop results whose retention has passed."""
        with self._lock:
            self._collect_locked()

    def _maybe_collect_locked(self) -> None:
        """Collect at most once per `_COLLECT_EVERY_S` of the clock (a scan is O(entries), so
        doing it on every new id made each request cost more as results piled up), or at
        once when the store is over its size bound."""
        now = self._clock()
        if now - self._collected_at < _COLLECT_EVERY_S and self._finished <= self._max_results:
            return
        self._collect_locked()

    def _collect_locked(self) -> None:
        now = self._clock()
        self._collected_at = now
        expired = [rid for rid, e in self._entries.items()
                   if e.retrieved_at is not None and now - e.retrieved_at > self._retention_s]
        for rid in expired:
            del self._entries[rid]  # only retrieved, hence finished, entries expire
        finished = [e for e in self._entries.values() if e.outcome is not None]
        if len(finished) > self._max_results:  # trim to 90 %: the next trim is far away
            excess = len(finished) - (self._max_results - self._max_results // 10)
            finished.sort(key=lambda e: (e.retrieved_at is None, e.done_at or 0.0))
            for e in finished[:excess]:
                del self._entries[e.request_id]
            finished = finished[excess:]
        self._finished = len(finished)


_COLLECT_EVERY_S = 1.0


def _unknown_message(request_id: str) -> str:
    return (f"Unknown request_id {request_id!r}: this server never issued it, or its result "
            "was retrieved long ago and dropped. Fix: poll only ids returned by this server "
            "(a restarted server forgets pending requests; resubmit them).")
