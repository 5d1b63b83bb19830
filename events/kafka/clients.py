"""What every aiokafka client of the log shares: a start that cleans up after itself."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any


async def start_or_close(start: Awaitable[Any], close: Callable[[], Awaitable[Any]]) -> None:
    """Await ``start``; if it fails or is cancelled (a stop while connecting), ``close()`` first.

    aiokafka leaves the connections of a half-started client open otherwise; they surface later as
    unraisable ResourceWarnings (aio-libs/aiokafka#715).
    """
    try:
        await start
    except BaseException:
        with contextlib.suppress(Exception):
            await close()
        raise
