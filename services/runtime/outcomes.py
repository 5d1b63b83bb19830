"""Where a command's outcome is: command id -> (partition, first event offset, event count).

Lets the API answer ``?wait=true`` and repeated command ids with the first outcome.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class OutcomeRef:
    """The events a command produced: ``count`` records from ``offset`` in ``partition``."""

    partition: int
    offset: int
    count: int


class Outcomes:
    """Outcome index plus waiters; filled by the decider loop after its events are durable."""

    def __init__(self) -> None:
        self._index: dict[str, OutcomeRef] = {}
        self._waiters: dict[str, list[asyncio.Future[OutcomeRef]]] = {}

    def __len__(self) -> int:
        return len(self._index)

    def record(self, command_id: str, ref: OutcomeRef) -> None:
        self._index.setdefault(command_id, ref)
        waiters = self._waiters.pop(command_id, None)
        if waiters:
            for fut in waiters:
                if not fut.done():
                    fut.set_result(self._index[command_id])

    def get(self, command_id: str) -> OutcomeRef | None:
        return self._index.get(command_id)

    async def wait(self, command_id: str, timeout: float) -> OutcomeRef | None:
        """The outcome of ``command_id``, waiting up to ``timeout`` seconds; None on timeout."""
        ref = self._index.get(command_id)
        if ref is not None:
            return ref
        fut: asyncio.Future[OutcomeRef] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(command_id, []).append(fut)
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            return None
        finally:
            waiters = self._waiters.get(command_id)
            if waiters is not None and fut in waiters:
                waiters.remove(fut)
                if not waiters:
                    del self._waiters[command_id]
