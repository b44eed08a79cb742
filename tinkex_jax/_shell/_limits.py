"""Dispatch limits (docs/protocol.md §6.4, §7.3): byte budgets and the sampling dispatcher.

All of these live on the shell's event loop; none is thread-safe by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

__all__ = ["BytesBudget", "SampleDispatcher"]


class BytesBudget:
    """An async semaphore counted in (estimated) bytes.

    A request larger than the whole budget is admitted when nothing else is in flight, so it
    can never wait forever.

    Example:
        >>> import asyncio
        >>> async def main():
        ...     budget = BytesBudget(100)
        ...     async with budget.hold(80):
        ...         return budget.in_flight
        >>> asyncio.run(main())
        80
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = max(1, int(capacity))
        self.in_flight = 0
        self._cond: asyncio.Condition | None = None

    def _condition(self) -> asyncio.Condition:
        if self._cond is None:
            self._cond = asyncio.Condition()
        return self._cond

    async def acquire(self, size: int) -> int:
        """Wait until `size` bytes fit; return the amount actually held."""
        size = max(0, int(size))
        cond = self._condition()
        async with cond:
            await cond.wait_for(
                lambda: self.in_flight == 0 or self.in_flight + size <= self.capacity)
            self.in_flight += size
        return size

    async def release(self, size: int) -> None:
        """Give back `size` bytes."""
        cond = self._condition()
        async with cond:
            self.in_flight = max(0, self.in_flight - size)
            cond.notify_all()

    @contextlib.asynccontextmanager
    async def hold(self, size: int) -> AsyncIterator[None]:
        """Hold `size` bytes for the duration of the block."""
        held = await self.acquire(size)
        try:
            yield
        finally:
            await self.release(held)


class SampleDispatcher:
    """Limits for asample submissions: at most `max_concurrent` POSTs in flight and a byte
    budget of prompt estimates. After a 429 (`backpressure`) and for `window` seconds the
    concurrency drops to `reduced_concurrent` and prompts count `penalty` times their size.

    Example:
        >>> import asyncio
        >>> async def main():
        ...     now = [0.0]
        ...     d = SampleDispatcher(bytes_budget=1000, clock=lambda: now[0])
        ...     d.backpressure()
        ...     limited = d.concurrency_limit(), d.cost(10)
        ...     now[0] = 11.0
        ...     return limited, (d.concurrency_limit(), d.cost(10))
        >>> asyncio.run(main())
        ((10, 200), (400, 10))
    """

    def __init__(self, *, bytes_budget: int, clock: Callable[[], float],
                 max_concurrent: int = 400, reduced_concurrent: int = 10,
                 window: float = 10.0, penalty: int = 20) -> None:
        self.bytes_budget = max(1, int(bytes_budget))
        self.max_concurrent = max_concurrent
        self.reduced_concurrent = reduced_concurrent
        self.window = window
        self.penalty = penalty
        self._clock = clock
        self._until = float("-inf")
        self.in_flight = 0
        self.bytes_in_flight = 0
        self._cond: asyncio.Condition | None = None

    def _condition(self) -> asyncio.Condition:
        if self._cond is None:
            self._cond = asyncio.Condition()
        return self._cond

    def backpressure(self) -> None:
        """Record a 429: limit concurrency and inflate costs for the next `window` seconds."""
        self._until = self._clock() + self.window

    def _limited(self) -> bool:
        return self._clock() < self._until

    def concurrency_limit(self) -> int:
        """How many asample POSTs may be in flight now."""
        return self.reduced_concurrent if self._limited() else self.max_concurrent

    def cost(self, size: int) -> int:
        """The budget a prompt of `size` estimated bytes takes now."""
        return size * self.penalty if self._limited() else size

    def _fits(self, cost: int) -> bool:
        if self.in_flight == 0:
            return True
        return (self.in_flight < self.concurrency_limit()
                and self.bytes_in_flight + cost <= self.bytes_budget)

    @contextlib.asynccontextmanager
    async def slot(self, size: int) -> AsyncIterator[None]:
        """Hold one submission slot for a prompt of `size` estimated bytes."""
        cond = self._condition()
        async with cond:
            cost = self.cost(size)
            while not self._fits(cost):
                await cond.wait()
                cost = self.cost(size)
            self.in_flight += 1
            self.bytes_in_flight += cost
        try:
            yield
        finally:
            async with cond:
                self.in_flight -= 1
                self.bytes_in_flight -= cost
                cond.notify_all()
