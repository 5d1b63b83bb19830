"""Waiting for work handed to a thread, which a cancel cannot stop.

A transaction run in a thread goes on to its end whatever happens to the task that awaits it; a
task that stopped at the cancel would leave its state (end offsets, a lock, the callers' answers)
behind the file's. ``settled`` waits until the work is done and hands back the cancel, if one came,
for the caller to raise once it has taken the work's outcome into account.
"""

from __future__ import annotations

import asyncio
from typing import Any


async def settled(work: asyncio.Future[Any]) -> asyncio.CancelledError | None:
    """Wait until ``work`` is done, through any cancel of this task (``work`` itself is never
    cancelled); the last CancelledError received, or None."""
    cancelled: asyncio.CancelledError | None = None
    while not work.done():
        try:
            await asyncio.wait([work])
        except asyncio.CancelledError as exc:
            cancelled = exc
    return cancelled
