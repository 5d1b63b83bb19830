"""Counts of the read models by pool and status, across every pool: what the metrics read.

One GROUP BY per table, answered from the (pool, status) indexes, on one connection (one snapshot
on SQLite, so the tables agree with each other). It must never write a table nor import
``services``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sqlalchemy as sa

from projections import tables
from projections.store import ProjectionStore
from projections.workflows import WAITING_TASKS

__all__ = ["WAITING_TASKS", "StatusCounts", "status_counts"]

# (pool, status) -> rows
Counts = dict[tuple[str, str], int]


@dataclass(frozen=True)
class StatusCounts:
    """Tasks, agents and workflow runs by (pool, status)."""

    tasks: Counts = field(default_factory=dict)
    agents: Counts = field(default_factory=dict)
    workflows: Counts = field(default_factory=dict)


async def status_counts(store: ProjectionStore) -> StatusCounts:
    """Every pool's tasks, agents and workflow runs counted by status."""
    async with store.engine.connect() as conn:

        async def count(table: sa.Table) -> Counts:
            pool, status = table.c.pool, table.c.status
            rows = await conn.execute(sa.select(pool, status, sa.func.count()).group_by(pool, status))
            return {(str(p), str(s)): int(n) for p, s, n in rows}

        return StatusCounts(await count(tables.tasks), await count(tables.agents),
                            await count(tables.workflows))
