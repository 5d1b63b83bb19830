"""Run a coroutine at once, in the caller's step, up to its first suspension.

``asyncio.create_task`` runs a coroutine's first step on a later pass of the event loop, behind
every callback already waiting there; on a busy loop that is tens of milliseconds. ``run_eagerly``
runs it now, and only what is left after its first real suspension becomes a task: what Python
3.12's eager tasks do (``asyncio.eager_task_factory``), for 3.11. The live streams use it to write a
batch of events to an idle WebSocket connection in the hub's own step (``services.http.streams``):
such a write does not suspend unless the connection's send buffer is full.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

__all__ = ["run_eagerly"]


def run_eagerly(coro: Coroutine[Any, Any, None]) -> asyncio.Task[None] | None:
    """Run ``coro`` until it finishes or first waits: None when it finished (an exception it raised
    is raised here); otherwise a task on the running loop that runs the rest, as a task would have.

    Until its first wait the coroutine runs in the caller's task, and the rest in another: only for
    code that does not bind anything to ``asyncio.current_task()`` before it waits (no
    ``asyncio.timeout``, no anyio cancel scope), such as a WebSocket send. Python 3.12's eager
    tasks have no such limit.
    """
    try:
        waiting = coro.send(None)
    except StopIteration:
        return None
    return asyncio.get_running_loop().create_task(_rest(coro, waiting))


async def _rest(coro: Coroutine[Any, Any, None], waiting: Any) -> None:
    """Go on with ``coro``, which yielded ``waiting`` (a future it waits for, or None: a bare yield,
    ``asyncio.sleep(0)``), handling its yields as ``asyncio.Task`` does, cancellation included."""
    while True:
        try:
            if waiting is None:
                await asyncio.sleep(0)
            else:
                waiting._asyncio_future_blocking = False  # as Task.__step does with what it is handed
                await asyncio.wait((waiting,))
        except asyncio.CancelledError as exc:
            # Cancelled: as a task would, cancel what the coroutine waits for and let it see that.
            if waiting is not None:
                waiting.cancel()
            try:
                waiting = coro.throw(exc)
            except StopIteration:
                return
            continue
        try:
            waiting = coro.send(None)  # it reads the future's result (or exception) itself
        except StopIteration:
            return
