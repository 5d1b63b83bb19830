"""Counts of the read models by pool and status, across every pool: what the metrics read.

One GROUP BY per table, answered from the (pool, status) indexes, in one ``run_read`` (one snapshot
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


def _counts(conn: sa.Connection) -> StatusCounts:
    def count(table: sa.Table) -> Counts:
        pool, status = table.c.pool, table.c.status
        rows = conn.execute(sa.select(pool, status, sa.func.count()).group_by(pool, status))
        return {(str(p), str(s)): int(n) for p, s, n in rows}

    return StatusCounts(count(tables.tasks), count(tables.agents), count(tables.workflows))


async def status_counts(store: ProjectionStore) -> StatusCounts:
    """Every pool's tasks, agents and workflow runs counted by status."""
    return await store.run_read(_counts)
