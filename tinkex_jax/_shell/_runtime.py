"""The effects the shell uses for time and randomness, injectable so tests need no sleeping.

``sleep`` is used by every retry and backoff; ``tick`` by the periodic background loops
(heartbeat, telemetry flush, config refresh), so a test can record retry delays without
making the background loops spin; ``block`` is the blocking sleep of the synchronous retry
loop of file downloads (`tinkex_jax._shell._fetch`).

Example:
    >>> import asyncio
    >>> fake = FakeTime()
    >>> asyncio.run(fake.runtime.sleep(2.5)); fake.delays, fake.runtime.clock()
    ([2.5], 1002.5)
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import random as _random
import time
from collections.abc import Awaitable, Callable

__all__ = ["REAL_RUNTIME", "FakeTime", "Runtime"]


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclasses.dataclass(frozen=True)
class Runtime:
    """Time and randomness for the shell.

    Attributes:
        sleep: Awaitable sleep used by retries and backoff.
        tick: Awaitable sleep used by periodic background loops.
        clock: Monotonic seconds.
        random: Uniform float in [0, 1) (retry jitter).
        wall: Current UTC time (Retry-After dates, telemetry timestamps).
        block: Blocking sleep used by the retries of synchronous file downloads.
    """

    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    tick: Callable[[float], Awaitable[None]] = asyncio.sleep
    clock: Callable[[], float] = time.monotonic
    random: Callable[[], float] = _random.random
    wall: Callable[[], dt.datetime] = _utcnow
    block: Callable[[float], None] = time.sleep


REAL_RUNTIME = Runtime()


class FakeTime:
    """A controllable clock for tests: `sleep` (and `block`) record the delay and advance the
    clock.

    Background loops get a `tick` that waits forever unless ``ticks=True``, in which case it
    behaves like `sleep` but is recorded separately in ``ticks``.
    """

    def __init__(self, *, start: float = 1000.0, random_value: float = 0.5,
                 ticks: bool = False) -> None:
        self.now = start
        self.delays: list[float] = []
        self.ticks: list[float] = []
        self._random_value = random_value
        self._run_ticks = ticks
        self.runtime = Runtime(sleep=self._sleep, tick=self._tick, clock=self._clock,
                               random=self._random, wall=self._wall, block=self._block)

    def _clock(self) -> float:
        return self.now

    def _random(self) -> float:
        return self._random_value

    def _wall(self) -> dt.datetime:
        return dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=self.now)

    async def _sleep(self, seconds: float) -> None:
        self.delays.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)

    def _block(self, seconds: float) -> None:
        self.delays.append(seconds)
        self.now += seconds

    async def _tick(self, seconds: float) -> None:
        if not self._run_ticks:
            await asyncio.Event().wait()
        self.ticks.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)
