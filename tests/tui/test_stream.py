"""The tail's reconnection: a server that cannot be reached is tried again with growing delays, and
each failure is reported, never raised."""

from __future__ import annotations

import asyncio
import contextlib

from services.executors.standins.serving import free_port
from services.tui.stream import FIRST_DELAY_S, StreamState, Tail


async def test_reconnects_with_backoff_and_says_why() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    states: list[StreamState] = []
    third_failure = asyncio.Event()

    def record(state: StreamState) -> None:
        states.append(state)
        if len([s for s in states if s.retry_in is not None]) >= 3:
            third_failure.set()

    tail = Tail(url, "default", {}, on_event=lambda _: None, on_state=record)
    task = asyncio.create_task(tail.run())
    try:
        async with asyncio.timeout(10):
            await third_failure.wait()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    failures = [s for s in states if s.retry_in is not None]
    assert [s.retry_in for s in failures[:3]] == [FIRST_DELAY_S, 2 * FIRST_DELAY_S, 4 * FIRST_DELAY_S]
    assert not any(s.live for s in states)
    assert failures[0].text.startswith(f"disconnected: cannot reach agentbus at ws://{url[7:]}/ws/v1/events")
    assert failures[0].text.endswith(f"reconnecting in {FIRST_DELAY_S:g} s")
