"""Turn order (§7.2), byte budgets (§7.3) and the sampling dispatcher (§6.4)."""

from __future__ import annotations

import asyncio

import pytest

from tinkex_jax._shell import TurnSequencer
from tinkex_jax._shell._limits import BytesBudget, SampleDispatcher
from tinkex_jax.errors import ClientPoisonedError


def test_turns_follow_reserved_ids_whatever_the_scheduling():
    async def main():
        seq, log = TurnSequencer(), []

        async def call(first: int, n: int, delay: int):
            for _ in range(delay):
                await asyncio.sleep(0)
            await seq.wait(first)
            log.append(first)
            seq.release(range(first, first + n))

        # a 3-chunk call (ids 1..3) between two single calls, started in reverse order
        await asyncio.gather(call(4, 1, 0), call(1, 3, 1), call(0, 1, 5))
        return log, seq.next_turn

    assert asyncio.run(main()) == ([0, 1, 4], 5)


def test_out_of_order_release_advances_only_over_contiguous_ids():
    seq = TurnSequencer()
    seq.release([2, 1])
    assert seq.next_turn == 0
    seq.release([0])
    assert seq.next_turn == 3
    seq.release([0, 1])  # idempotent
    assert seq.next_turn == 3


def test_poison_fails_waiting_and_later_requests():
    async def main():
        seq = TurnSequencer()
        waiting = asyncio.ensure_future(seq.wait(3))
        await asyncio.sleep(0)
        seq.poison(RuntimeError("custom loss failed"))
        with pytest.raises(ClientPoisonedError, match="custom loss failed") as info:
            await waiting
        assert isinstance(info.value.__cause__, RuntimeError)
        with pytest.raises(ClientPoisonedError):
            await seq.wait(0)

    asyncio.run(main())


def test_bytes_budget_blocks_until_released_and_admits_oversize_alone():
    async def main():
        budget, order = BytesBudget(100), []

        async def hold(name: str, size: int, steps: int):
            async with budget.hold(size):
                order.append(f"+{name}")
                for _ in range(steps):
                    await asyncio.sleep(0)
                order.append(f"-{name}")

        await asyncio.gather(hold("a", 60, 3), hold("b", 60, 1), hold("huge", 500, 1))
        return order

    order = asyncio.run(main())
    assert order.index("-a") < order.index("+b")  # 60 + 60 > 100
    assert order.index("-b") < order.index("+huge")  # oversize waits until nothing is held


def test_dispatcher_limits_concurrency_and_reduces_it_under_backpressure():
    async def main():
        now = [0.0]
        d = SampleDispatcher(bytes_budget=10_000, clock=lambda: now[0], max_concurrent=20,
                             reduced_concurrent=4)
        peak, active = [0], [0]

        async def submit():
            async with d.slot(10):
                active[0] += 1
                peak[0] = max(peak[0], active[0])
                for _ in range(3):
                    await asyncio.sleep(0)
                active[0] -= 1

        await asyncio.gather(*(submit() for _ in range(30)))
        normal = peak[0]
        d.backpressure()
        peak[0] = 0
        await asyncio.gather(*(submit() for _ in range(30)))
        return normal, peak[0], d.cost(10)

    normal, reduced, cost = asyncio.run(main())
    assert normal == 20
    assert reduced == 4
    assert cost == 200  # prompt bytes count 20x for 10 s after a 429


def test_dispatcher_byte_budget_counts_inflated_cost():
    async def main():
        now = [0.0]
        d = SampleDispatcher(bytes_budget=1000, clock=lambda: now[0])
        d.backpressure()
        peak, active = [0], [0]

        async def submit():
            async with d.slot(20):  # costs 400 during backpressure: two fit
                active[0] += 1
                peak[0] = max(peak[0], active[0])
                await asyncio.sleep(0)
                active[0] -= 1

        await asyncio.gather(*(submit() for _ in range(6)))
        return peak[0]

    assert asyncio.run(main()) == 2
