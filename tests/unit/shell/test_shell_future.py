"""The one Future type: sync `.result()`, `await` from any loop, callbacks, cancellation."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from tinkex_jax import Future
from tinkex_jax._shell._loop import LoopThread
from tinkex_jax.errors import TinkerError


@pytest.fixture
def loop_thread():
    lt = LoopThread("test")
    yield lt
    lt.stop()


def submit(lt: LoopThread, coro) -> Future:
    return Future(lt.submit(coro), is_loop_thread=lt.is_current)


async def value_after(event: asyncio.Event, value: object) -> object:
    await event.wait()
    return value


def test_result_blocks_until_done_and_times_out_without_cancelling(loop_thread):
    gate = threading.Event()

    async def work():
        while not gate.is_set():
            await asyncio.sleep(0.001)
        return "done"

    f = submit(loop_thread, work())
    assert not f.done()
    with pytest.raises(TimeoutError, match="still running"):
        f.result(timeout=0.01)
    assert not f.cancelled()
    gate.set()
    assert f.result(timeout=5) == "done" and f.done() and f.exception() is None


def test_await_from_another_event_loop(loop_thread):
    async def work():
        await asyncio.sleep(0.001)
        return threading.current_thread().name

    async def user_code():  # e.g. a notebook's loop, not the SDK's
        f = submit(loop_thread, work())
        name = await f
        again = await f.result_async(timeout=5)
        return name, again, threading.current_thread().name

    name, again, user_thread = asyncio.run(user_code())
    assert name == again == "tinkex_jax-test" and user_thread != name


def test_result_async_timeout_keeps_the_request_running(loop_thread):
    gate = threading.Event()

    async def work():
        while not gate.is_set():
            await asyncio.sleep(0.001)
        return 7

    async def user_code():
        f = submit(loop_thread, work())
        with pytest.raises(TimeoutError):
            await f.result_async(timeout=0.01)
        gate.set()
        return await f

    assert asyncio.run(user_code()) == 7


def test_exceptions_and_callbacks(loop_thread):
    async def boom():
        raise ValueError("bad")

    seen = threading.Event()
    results = []
    f = submit(loop_thread, boom())
    f.add_done_callback(lambda fut: (results.append(fut), seen.set()))
    assert seen.wait(5) and results == [f]
    assert isinstance(f.exception(), ValueError)
    with pytest.raises(ValueError, match="bad"):
        f.result()
    assert "failed: ValueError" in repr(f)


def test_cancel_stops_the_work(loop_thread):
    started, cancelled = threading.Event(), threading.Event()

    async def forever():
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    f = submit(loop_thread, forever())
    assert started.wait(5)
    assert f.cancel() and f.cancelled()
    assert cancelled.wait(5)


def test_result_on_the_sdk_thread_is_refused(loop_thread):
    async def inner():
        await asyncio.sleep(1)

    async def outer():
        f = submit(loop_thread, inner())
        try:
            f.result()
        except TinkerError as error:
            return str(error)
        finally:
            f.cancel()
        return "no error"

    assert "await" in submit(loop_thread, outer()).result(timeout=5)


def test_completed_and_failed_constructors():
    assert Future.completed(3).result() == 3
    f = Future.failed(KeyError("k"))
    assert f.done() and isinstance(f.exception(), KeyError)
    assert asyncio.run(Future.completed("x").result_async()) == "x"


def test_stopping_the_loop_cancels_pending_work_and_refuses_new_work():
    lt = LoopThread("stop")
    f = submit(lt, asyncio.sleep(3600))
    time.sleep(0.01)
    lt.stop()
    assert f.cancelled()
    with pytest.raises(TinkerError, match="closed"):
        lt.submit(asyncio.sleep(0))


def test_missing_attributes_point_at_result():
    done = Future.completed([1, 2])
    with pytest.raises(AttributeError, match=r"`append` belongs to its result, a list\. Call "
                                             r"\.result\(\) first"):
        done.append  # noqa: B018
    with pytest.raises(AttributeError, match="neither has its result"):
        done.no_such_thing  # noqa: B018
    failed = Future.failed(ValueError("x"))
    with pytest.raises(AttributeError, match=r"If `metrics` belongs to the result, wait for it"):
        failed.metrics  # noqa: B018
    # private and special names stay plain (copy, pickle and IPython probe them)
    with pytest.raises(AttributeError) as info:
        done._repr_html_  # noqa: B018
    assert str(info.value) == "_repr_html_"
    assert not hasattr(done, "__array__")
