"""What every aiokafka client of the log shares: a start that cleans up after itself."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

# A start cancelled part-way is let finish for up to this long before it is closed. aiokafka's
# bootstrap opens a connection and asks it for the cluster's metadata before it either keeps it
# or closes it; a cancellation in between (a stop while a consumer starts) leaves that socket to
# no client at all, so closing the client cannot reach it and it surfaces later as an unraisable
# ResourceWarning. The broker answers that request in milliseconds: past this, the start is
# cancelled where it stands after all.
SETTLE_S = 5.0


async def start_or_close(start: Awaitable[Any], close: Callable[[], Awaitable[Any]]) -> None:
    """Await ``start``; if it fails or is cancelled (a stop while connecting), ``close()`` first.

    aiokafka leaves the connections of a half-started client open otherwise (aio-libs/aiokafka#715).
    A cancellation is passed on only after the start has ended (within ``SETTLE_S``) and the client
    was closed (see ``SETTLE_S``).
    """
    task = asyncio.ensure_future(start)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        try:
            await _settle(task)
        finally:
            with contextlib.suppress(Exception):
                await close()
        raise
    except BaseException:
        with contextlib.suppress(Exception):
            await close()
        raise


async def _settle(task: asyncio.Future[Any]) -> None:
    """Wait for a start whose caller was cancelled to end (cancelling it past ``SETTLE_S``, or at
    a second cancellation), its outcome retrieved."""
    try:
        await asyncio.wait([task], timeout=SETTLE_S)
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.wait([task])
        if not task.cancelled():
            task.exception()
