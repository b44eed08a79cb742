"""`Future`: the one result type of every submitting method.

A `Future` wraps a thread-safe `concurrent.futures.Future` filled by the client's background
event loop. The same object is used from sync code (``.result(timeout)``), from any asyncio
event loop (``await future`` / ``await future.result_async(timeout)``, e.g. in a notebook),
and with callbacks (``add_done_callback``). Timing out a wait never cancels the request;
`cancel` does.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Generator
from typing import Any, Generic, TypeVar

from ..errors import TinkerError

__all__ = ["Future"]

T = TypeVar("T")


class Future(Generic[T]):
    """The result of a request that is running in the background.

    Submitting methods return at once with a `Future`; the request is already on its way
    (and its result is being polled) whether or not you wait for it. Reading an attribute of
    the result on the future itself (``fb.metrics``) raises an `AttributeError` that names
    the missing ``.result()``.

    Example:
        >>> f = Future.completed(42)
        >>> f.done(), f.result(), f.exception()
        (True, 42, None)
        >>> import asyncio
        >>> async def main():
        ...     return await Future.completed("awaited")
        >>> asyncio.run(main())
        'awaited'
        >>> Future.completed(1.5).real
        Traceback (most recent call last):
        ...
        AttributeError: 'Future' object has no attribute 'real': `real` belongs to its result, a float. Call .result() first: `future.result().real` (or `(await future).real`).
    """

    __slots__ = ("__weakref__", "_future", "_is_loop_thread")

    def __init__(self, future: concurrent.futures.Future[T], *,
                 is_loop_thread: Callable[[], bool] | None = None) -> None:
        self._future = future
        self._is_loop_thread = is_loop_thread

    @classmethod
    def completed(cls, value: T) -> Future[T]:
        """A future that already holds `value`."""
        cf: concurrent.futures.Future[T] = concurrent.futures.Future()
        cf.set_result(value)
        return cls(cf)

    @classmethod
    def failed(cls, error: BaseException) -> Future[T]:
        """A future that already holds `error`."""
        cf: concurrent.futures.Future[T] = concurrent.futures.Future()
        cf.set_exception(error)
        return cls(cf)

    def _check_not_on_loop(self, what: str) -> None:
        if self._is_loop_thread is not None and self._is_loop_thread() and not self.done():
            raise TinkerError(
                f"Future.{what}() was called on the SDK's own event-loop thread, where it would "
                "wait forever. Fix: `await` the future instead.")

    def result(self, timeout: float | None = None) -> T:
        """Wait for the result (blocking), up to `timeout` seconds.

        Raises:
            TimeoutError: the result did not arrive in time (the request keeps running).
            Exception: whatever error the request failed with.
        """
        self._check_not_on_loop("result")
        try:
            return self._future.result(timeout)
        except concurrent.futures.TimeoutError:
            raise TimeoutError(f"the result did not arrive within {timeout} s; the request is "
                               "still running (call .result() again to keep waiting)") from None

    async def result_async(self, timeout: float | None = None) -> T:
        """Wait for the result from any asyncio event loop, up to `timeout` seconds.

        Raises:
            TimeoutError: the result did not arrive in time (the request keeps running).
        """
        if self._future.done():
            return self._future.result()
        waiter = asyncio.shield(asyncio.wrap_future(self._future))
        try:
            return await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            raise TimeoutError(f"the result did not arrive within {timeout} s; the request is "
                               "still running (await it again to keep waiting)") from None

    def __await__(self) -> Generator[Any, None, T]:
        return self.result_async().__await__()

    async def coroutine(self) -> T:
        """The result as a coroutine (the official SDK's spelling of ``await future``), for
        ``asyncio.gather(*(f.coroutine() for f in futures))``."""
        return await self.result_async()

    def done(self) -> bool:
        """Whether the result (or an error) has arrived, or the future was cancelled."""
        return self._future.done()

    def cancelled(self) -> bool:
        """Whether the future was cancelled."""
        return self._future.cancelled()

    def cancel(self) -> bool:
        """Stop waiting for the result and cancel the client-side work; False if done."""
        return self._future.cancel()

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """Wait like `result` and return the error, or None on success."""
        self._check_not_on_loop("exception")
        try:
            return self._future.exception(timeout)
        except concurrent.futures.TimeoutError:
            raise TimeoutError(f"the result did not arrive within {timeout} s") from None

    def add_done_callback(self, fn: Callable[[Future[T]], object]) -> None:
        """Call ``fn(self)`` when the future finishes (at once if it already has).

        The callback runs on the SDK's event-loop thread (or the caller's, if already done);
        keep it short and non-blocking.
        """
        self._future.add_done_callback(lambda _cf: fn(self))

    def future(self) -> concurrent.futures.Future[T]:
        """The underlying `concurrent.futures.Future` (for `concurrent.futures.wait` etc.)."""
        return self._future

    def __getattr__(self, name: str) -> Any:
        # only reached for names a Future does not have: usually the result's attributes,
        # read before waiting (``fb.metrics`` instead of ``fb.result().metrics``)
        if name.startswith("_"):
            raise AttributeError(name)
        raise AttributeError(self._missing(name), name=name, obj=self)

    def _missing(self, name: str) -> str:
        kind = type(self).__name__
        head = f"'{kind}' object has no attribute '{name}'"
        f = self._future
        if f.done() and not f.cancelled() and f.exception() is None:
            value = f.result()
            if hasattr(value, name):
                return (f"{head}: `{name}` belongs to its result, a {type(value).__name__}. "
                        f"Call .result() first: `future.result().{name}` (or "
                        f"`(await future).{name}`).")
            return f"{head}, and neither has its result (a {type(value).__name__})."
        return (f"{head}. If `{name}` belongs to the result, wait for it first: "
                f"`future.result().{name}` (or `(await future).{name}`).")

    def __repr__(self) -> str:
        f = self._future
        if not f.done():
            state = "pending"
        elif f.cancelled():
            state = "cancelled"
        elif (exc := f.exception()) is not None:
            state = f"failed: {type(exc).__name__}"
        else:
            state = "done"
        return f"<{type(self).__module__}.{type(self).__qualname__} {state}>"
