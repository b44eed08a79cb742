"""The background event-loop thread that runs all of a client's I/O.

One thread per shell, started on first use, stopped by `LoopThread.stop`. Work is handed to
it with `submit`, which returns a `concurrent.futures.Future` (thread-safe).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from ..errors import TinkerError

__all__ = ["LoopThread"]

T = TypeVar("T")


class LoopThread:
    """An asyncio event loop on a daemon thread, started lazily.

    Example:
        >>> lt = LoopThread("doc")
        >>> async def add(a, b): return a + b
        >>> lt.submit(add(1, 2)).result()
        3
        >>> lt.stop(); lt.running
        False
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopped = False

    @property
    def running(self) -> bool:
        """Whether the thread is started and not stopped."""
        return self._thread is not None and self._thread.is_alive() and not self._stopped

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop, starting the thread if needed."""
        with self._lock:
            if self._stopped:
                raise TinkerError(f"{self._name}: this client is closed. Fix: create a new "
                                  "ServiceClient (or RestClient) to make more requests")
            if self._loop is None:
                loop = asyncio.new_event_loop()
                ready = threading.Event()
                thread = threading.Thread(target=self._run, args=(loop, ready),
                                          name=f"tinkex_jax-{self._name}", daemon=True)
                thread.start()
                ready.wait()
                self._loop, self._thread = loop, thread
            return self._loop

    @staticmethod
    def _run(loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
        asyncio.set_event_loop(loop)
        loop.call_soon(ready.set)
        try:
            loop.run_forever()
        finally:
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def is_current(self) -> bool:
        """Whether the caller runs on this loop's thread."""
        return self._thread is not None and threading.current_thread() is self._thread

    def submit(self, coro: Coroutine[Any, Any, T], *,
               context: contextvars.Context | None = None) -> concurrent.futures.Future[T]:
        """Schedule `coro` on the loop (from any thread) and return its future."""
        try:
            loop = self.loop
        except BaseException:
            coro.close()
            raise
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def start() -> None:
            if future.cancelled():
                coro.close()
                return
            task = loop.create_task(coro, context=context)

            def on_task_done(t: asyncio.Task[T]) -> None:
                if future.done():
                    return
                with contextlib.suppress(concurrent.futures.InvalidStateError):
                    if t.cancelled():
                        future.cancel()
                    elif (exc := t.exception()) is not None:
                        future.set_exception(exc)
                    else:
                        future.set_result(t.result())

            def on_future_done(f: concurrent.futures.Future[T]) -> None:
                if f.cancelled():
                    loop.call_soon_threadsafe(task.cancel)

            task.add_done_callback(on_task_done)
            future.add_done_callback(on_future_done)

        loop.call_soon_threadsafe(start)
        return future

    def stop(self) -> None:
        """Cancel remaining tasks and stop the loop (safe from any thread, idempotent)."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return

        async def shutdown() -> None:
            current = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not current]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            loop.stop()

        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(lambda: loop.create_task(shutdown()))
        if threading.current_thread() is not thread:
            thread.join(timeout=5.0)
