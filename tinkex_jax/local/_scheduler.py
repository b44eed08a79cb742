"""Per-lane FIFO execution on worker threads.

Each training model is a *lane*: its requests run one at a time, in arrival order, so a
forward_backward submitted before an optim_step is applied before it, and optim_step /
save / load act as barriers. Different lanes may run concurrently when there is more than
one worker; a worker always takes the oldest waiting task among lanes that are idle. With
one worker (the default) this is a single global FIFO.

Example:
    >>> s = Scheduler(workers=1); s.start()
    >>> out = []
    >>> for i in range(3):
    ...     s.submit("model:a", lambda i=i: out.append(i))
    >>> s.join()
    True
    >>> s.stop(); out
    [0, 1, 2]
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections import deque
from collections.abc import Callable

__all__ = ["Scheduler"]

_log = logging.getLogger("tinkex_jax.local")


class Scheduler:
    """Runs submitted callables on worker threads, in order within each lane.

    Args:
        workers: Number of worker threads.
        name: Thread name prefix.
    """

    def __init__(self, workers: int = 1, name: str = "tinkex-compute") -> None:
        self._workers = workers
        self._name = name
        self._lanes: dict[str, deque[tuple[int, Callable[[], None]]]] = {}
        self._busy: set[str] = set()
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._stopping = False
        self._pending = 0

    def start(self) -> None:
        """Start the worker threads (idempotent)."""
        with self._cond:
            if self._threads:
                return
            self._stopping = False
            for i in range(self._workers):
                thread = threading.Thread(target=self._run, name=f"{self._name}-{i}",
                                          daemon=True)
                self._threads.append(thread)
                thread.start()

    def submit(self, lane: str, task: Callable[[], None]) -> None:
        """Queue `task` at the end of `lane`; it runs after every earlier task of the lane."""
        with self._cond:
            self._lanes.setdefault(lane, deque()).append((next(self._seq), task))
            self._pending += 1
            self._cond.notify_all()

    def queued(self, lane: str) -> int:
        """Tasks waiting or running in `lane`."""
        with self._cond:
            return len(self._lanes.get(lane, ())) + (lane in self._busy)

    def join(self, timeout: float | None = None) -> bool:
        """Block until every submitted task has finished; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._pending == 0, timeout=timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the workers after the task each one is running; queued tasks are dropped."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            threads, self._threads = self._threads, []
        for thread in threads:
            thread.join(timeout)

    def _next_task(self) -> tuple[str, Callable[[], None]] | None:
        best: tuple[int, str] | None = None
        for lane, tasks in self._lanes.items():
            if tasks and lane not in self._busy and (best is None or tasks[0][0] < best[0]):
                best = (tasks[0][0], lane)
        if best is None:
            return None
        lane = best[1]
        _, task = self._lanes[lane].popleft()
        if not self._lanes[lane]:
            del self._lanes[lane]
        self._busy.add(lane)
        return lane, task

    def _run(self) -> None:
        while True:
            with self._cond:
                picked = self._next_task()
                while picked is None and not self._stopping:
                    self._cond.wait()
                    picked = self._next_task()
                if picked is None:
                    return
            lane, task = picked
            try:
                task()
            except BaseException:  # a task must never kill its worker
                _log.exception("local backend task in lane %s crashed", lane)
            finally:
                with self._cond:
                    self._busy.discard(lane)
                    self._pending -= 1
                    self._cond.notify_all()
