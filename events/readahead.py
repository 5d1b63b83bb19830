"""Reading a partition's values in batches, the next batch under way while the caller applies one.

Rebuilds (the deciders' replay, the coordinator's history) are CPU on the loop per event and I/O per
batch: SQLite steps on its own thread, and Kafka's client fetches, while the batch before is folded
in. A batch read ahead of a failure is cancelled and its error retrieved, once the caller stops.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

from events.log import EventLog

__all__ = ["read_values_ahead"]


def _retrieve(future: asyncio.Future[list[tuple[int, bytes]]]) -> None:
    if not future.cancelled():
        future.exception()


async def read_values_ahead(log: EventLog, topic: str, partition: int, offset: int, end: int | None,
                            limit: int) -> AsyncGenerator[list[tuple[int, bytes]], None]:
    """Non-empty batches of (offset, value) of ``topic[partition]`` from ``offset``, at most ``limit``
    each: below ``end``, or to the log's end when ``end`` is None (Kafka's offsets have gaps, so a
    batch is cut at ``end`` rather than counted). Close it (``contextlib.aclosing``) when stopping early."""

    def read(at: int) -> asyncio.Future[list[tuple[int, bytes]]] | None:
        if end is not None and at >= end:
            return None
        n = limit if end is None else min(limit, end - at)
        return asyncio.ensure_future(log.read_values(topic, partition, at, n))

    ahead = read(offset)
    try:
        while ahead is not None:
            batch = await ahead
            if end is not None:
                batch = [item for item in batch if item[0] < end]
            if not batch:
                return  # the end (Kafka may end on a transaction marker)
            ahead = read(batch[-1][0] + 1)
            yield batch
    finally:
        if ahead is not None:  # read ahead of a failure or an early stop: dropped, its error retrieved
            ahead.cancel()
            ahead.add_done_callback(_retrieve)
