"""``run_eagerly`` runs a coroutine in the caller's step up to its first real wait, and the rest
as a task would: results, exceptions and cancellation reach the coroutine as they would in a task."""

from __future__ import annotations

import asyncio

import pytest

from services.runtime.eager import run_eagerly


async def test_a_coroutine_that_never_waits_is_done_when_the_call_returns() -> None:
    done: list[str] = []
    writable = asyncio.Event()
    writable.set()

    async def write() -> None:
        await writable.wait()  # set: returns without suspending (a socket with room in its buffer)
        done.append("written")

    assert run_eagerly(write()) is None
    assert done == ["written"]


async def test_what_it_raises_before_waiting_is_raised_by_the_call() -> None:
    async def fail() -> None:
        raise ConnectionResetError("gone")

    with pytest.raises(ConnectionResetError, match="gone"):
        run_eagerly(fail())


async def test_after_a_wait_the_rest_runs_as_a_task_in_order() -> None:
    loop = asyncio.get_running_loop()
    drained = loop.create_future()
    steps: list[str] = []

    async def write() -> None:
        steps.append("first frame")
        steps.append(f"drained: {await drained}")
        await asyncio.sleep(0)  # a bare yield on the way
        steps.append("second frame")

    rest = run_eagerly(write())
    assert steps == ["first frame"]  # up to the wait, in the call
    assert rest is not None and not rest.done()
    await asyncio.sleep(0.01)
    assert steps == ["first frame"]  # still waiting for the future
    drained.set_result("yes")
    await rest
    assert steps == ["first frame", "drained: yes", "second frame"]


async def test_an_exception_of_what_it_waits_for_reaches_the_coroutine() -> None:
    loop = asyncio.get_running_loop()
    drained: asyncio.Future[None] = loop.create_future()
    caught: list[BaseException] = []

    async def write() -> None:
        try:
            await drained
        except OSError as exc:
            caught.append(exc)
            raise

    rest = run_eagerly(write())
    assert rest is not None
    drained.set_exception(BrokenPipeError("peer closed"))
    with pytest.raises(BrokenPipeError):
        await rest
    assert len(caught) == 1 and isinstance(caught[0], BrokenPipeError)


async def test_cancelling_the_rest_cancels_what_it_waits_for_and_unwinds_it() -> None:
    event = asyncio.Event()
    unwound: list[str] = []

    async def write() -> None:
        try:
            await event.wait()
        finally:
            unwound.append("finally")

    rest = run_eagerly(write())
    assert rest is not None
    await asyncio.sleep(0)
    rest.cancel()
    with pytest.raises(asyncio.CancelledError):
        await rest
    assert unwound == ["finally"]
    assert not event._waiters  # type: ignore[attr-defined]  # its waiter was taken away


async def test_a_coroutine_that_swallows_the_cancel_finishes_its_own_way() -> None:
    loop = asyncio.get_running_loop()
    first: asyncio.Future[None] = loop.create_future()
    second: asyncio.Future[str] = loop.create_future()
    steps: list[str] = []

    async def write() -> None:
        try:
            await first
        except asyncio.CancelledError:
            steps.append("cancelled, going on")
        steps.append(await second)

    rest = run_eagerly(write())
    assert rest is not None
    await asyncio.sleep(0)
    rest.cancel()
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert first.cancelled()
    second.set_result("finished")
    await rest
    assert steps == ["cancelled, going on", "finished"]
