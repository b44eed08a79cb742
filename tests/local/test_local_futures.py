"""The future store and the lane scheduler (no server, no model)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from tinkex_jax.local._errors import NotFoundError
from tinkex_jax.local._futures import PROTOBUF, Failure, FutureStore, Payload
from tinkex_jax.local._scheduler import Scheduler


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_long_poll_wakes_as_soon_as_a_worker_resolves():
    store = FutureStore()
    rid = store.create("ForwardBackward")

    async def poll() -> tuple[object, float]:
        start = time.monotonic()
        outcome = await store.wait(rid, timeout=10.0)
        return outcome, time.monotonic() - start

    threading.Timer(0.1, store.resolve, (rid, Payload(b"x", PROTOBUF))).start()
    outcome, waited = asyncio.run(poll())
    assert outcome == Payload(b"x", PROTOBUF)
    assert 0.05 < waited < 2.0  # woke on completion, not at the 10 s timeout


def test_pending_poll_returns_none_after_the_timeout():
    store = FutureStore()
    rid = store.create("OptimStep")
    start = time.monotonic()
    assert asyncio.run(store.wait(rid, timeout=0.05)) is None
    assert time.monotonic() - start < 1.0
    assert store.stats() == {"pending": 1, "finished": 0}


def test_results_are_refetchable_then_dropped_after_retention():
    clock = FakeClock()
    store = FutureStore(retention_s=60.0, clock=clock)
    rid = store.create("SaveWeights")
    store.reject(rid, "no space", "server")
    first = asyncio.run(store.wait(rid, timeout=0))
    second = asyncio.run(store.wait(rid, timeout=0))
    assert first == second == Failure("no space", "server")
    clock.now = 61.0
    store.collect()
    with pytest.raises(NotFoundError, match="Unknown request_id"):
        store.peek(rid)


def test_unretrieved_results_are_kept_and_first_outcome_wins():
    clock = FakeClock()
    store = FutureStore(retention_s=1.0, clock=clock)
    rid = store.create("Sample")
    store.resolve(rid, Payload(b"first"))
    store.reject(rid, "late")  # ignored: already finished
    clock.now = 1000.0
    store.collect()
    assert store.peek(rid) == Payload(b"first")


def test_unknown_request_id_is_not_found():
    with pytest.raises(NotFoundError):
        asyncio.run(FutureStore().wait("req-404", timeout=0))


def test_max_results_drops_retrieved_results_first():
    store = FutureStore(max_results=2)
    a, b = store.create("A"), store.create("B")
    store.resolve(a, Payload(b"a"))
    store.resolve(b, Payload(b"b"))
    asyncio.run(store.wait(a, timeout=0))  # a retrieved
    c = store.create("C")
    store.resolve(c, Payload(b"c"))
    store.create("D")  # triggers collection: 3 finished > 2
    with pytest.raises(NotFoundError):
        store.peek(a)
    assert store.peek(b) == Payload(b"b")


def test_a_full_store_trims_to_ninety_percent_and_keeps_finished_bounded():
    clock = FakeClock()  # never advances: collection runs only when the bound is passed
    store = FutureStore(max_results=100, clock=clock)
    seen = []
    for i in range(1000):
        rid = store.create("Sample")
        store.resolve(rid, Payload(str(i).encode()))
        seen.append(store.stats()["finished"])
    assert max(seen) == 101 and min(seen[200:]) >= 90  # 101 -> trimmed to 90 -> grows again
    assert store.peek(rid) == Payload(b"999")  # the newest results are the ones kept


def test_scheduler_keeps_lane_order_and_overlaps_lanes():
    sched = Scheduler(workers=2)
    sched.start()
    order: list[str] = []
    release = threading.Event()
    started_b = threading.Event()

    def slow_a() -> None:
        release.wait(5)
        order.append("a1")

    sched.submit("model:a", slow_a)
    sched.submit("model:a", lambda: order.append("a2"))
    sched.submit("model:b", lambda: (order.append("b1"), started_b.set()))
    assert started_b.wait(5)  # lane b ran while lane a was busy
    assert sched.queued("model:a") == 2
    release.set()
    assert sched.join(5)
    sched.stop()
    assert order == ["b1", "a1", "a2"]


def test_a_crashing_task_does_not_kill_its_worker():
    sched = Scheduler(workers=1)
    sched.start()
    done: list[int] = []
    sched.submit("x", lambda: 1 / 0)
    sched.submit("x", lambda: done.append(1))
    assert sched.join(5)
    sched.stop()
    assert done == [1]
