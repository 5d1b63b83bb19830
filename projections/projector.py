"""The projector: applies batches of events to the read-model tables, with its position, atomically.

One call to ``Projector.apply`` is one transaction holding every row the batch changed and the
new position (last offset + 1), so a crash never applies an event twice or skips one, and events
below the stored position are skipped on re-delivery.

It is built for throughput (tens of thousands of events per second): a batch reads the rows it
needs once per table (``projections.loading``), applies the events to plain dicts in log order
(``projections.handlers``), and writes each changed row once (``projections.sql``): executemany
INSERT for rows the batch created, INSERT .. ON CONFLICT DO UPDATE for rows it read. Per-event SQL
round trips must never creep back in.

It trusts the decider. An event that contradicts the model (a task that was never submitted, an
agent whose load would drop below zero) is a bug upstream: the batch fails with ProjectionError
and nothing is written, rather than the model quietly drifting from the log. It must never import
``services``, read a clock, or write anything not derived from the events.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from projections import sql
from projections.batch import Batch, Item, ProjectionError
from projections.handlers import HANDLERS
from projections.loading import load
from projections.performance import FOLDED
from projections.store import MAIN_PROJECTOR, ProjectionStore

# The table split for the two phases of an apply: what each event reads, then how it applies.
_READS = {kind: entry.reads for kind, entry in HANDLERS.items()}
_HANDLE = {kind: entry.handle for kind, entry in HANDLERS.items()}
# When to refresh PostgreSQL statistics (see Projector._analyze): after this many events, then
# whenever the count doubles, at least every _MAX_ANALYZE_INTERVAL events.
_FIRST_ANALYZE = 1000
_MAX_ANALYZE_INTERVAL = 1_000_000

__all__ = ["ProjectionError", "Projector"]


def _apply(conn: sa.Connection, name: str, topic: str, partition: int,
           batch: Sequence[Item]) -> tuple[int, int] | None:
    """One apply inside the write transaction on ``conn``: (events applied, the new position), or
    None when every item is below the stored position. Synchronous: see ``ProjectionStore.run_write``."""
    start = sql.read_position(conn, name, topic, partition)
    items = [item for item in batch if item[0] >= start]
    if not items:
        return None
    b = Batch(topic, partition)
    load(conn, b, items, _READS)
    for offset, env in items:
        data = env.data
        kind = type(data)
        handle = _HANDLE.get(kind)
        if handle is not None:
            b.offset, b.env = offset, env
            b.saw(env)
            handle(b, env, data)
            if kind in FOLDED:
                b.perform(env)
    for table, rows, upsert in b.writes():
        sql.write_rows(conn, table, rows, upsert)
    end = items[-1][0] + 1
    if not sql.move_position(conn, name, topic, partition, start, end):
        raise RuntimeError(
            f"projector {name!r} position in {topic}[{partition}] moved during an "
            "apply: two projectors are writing the same partition"
        )
    return len(items), end


class Projector:
    """Applies event batches to the read models and stores its position in the same transaction."""

    def __init__(self, store: ProjectionStore, name: str = MAIN_PROJECTOR) -> None:
        self.store = store
        self.name = name
        self._applied = 0
        self._analyze_at = _FIRST_ANALYZE

    async def position(self, topic: str, partition: int) -> int:
        """The next offset to apply in the partition (0 if none was applied)."""
        return await self.store.read_position(self.name, topic, partition)

    async def apply(self, topic: str, partition: int, batch: Sequence[Item]) -> int:
        """Apply (offset, envelope) items in increasing offset order, in one transaction.

        Items below the stored position are skipped; returns how many were applied (unknown
        event types count: they advance the position without effect).
        """
        previous = -1
        for offset, _ in batch:
            if offset <= previous:
                raise ValueError(f"offsets must increase: {offset} after {previous}")
            previous = offset
        applied = await self.store.run_write(_apply, self.name, topic, partition, batch)
        if applied is None:
            return 0
        count, end = applied
        self.store.advanced(self.name, topic, partition, end)
        self._applied += count
        if self.store.dialect == "postgresql" and self._applied >= self._analyze_at:
            await self._analyze()
        return count

    async def _analyze(self) -> None:
        """Refresh PostgreSQL's planner statistics while the tables grow fast.

        Without statistics (fresh tables, a rebuild, the first minute before autovacuum runs)
        PostgreSQL estimates ``pool = x`` as selective and reads the batch's rows through the
        (pool, agent_id) index plus a filter: a scan of the whole pool per batch, which makes a
        rebuild quadratic. Analyzing after 1k, 2k, 4k, ... events (then every million) keeps the
        primary-key lookup the obvious plan at a cost of a few ANALYZEs.
        """
        await sql.analyze(self.store.engine)
        self._analyze_at = self._applied + min(self._applied, _MAX_ANALYZE_INTERVAL)
