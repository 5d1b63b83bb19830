"""Read-model queries for the HTTP API and CLI: plain, JSON-ready dicts and lists.

Datetimes come back as ISO 8601 strings in UTC. Every function reads only; none may ever write a
table (only the projector writes) or import ``services``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa

from projections import tables
from projections.store import ProjectionStore

MAX_PAGE_SIZE = 1000
_RESOURCES = ("cpu_cores", "memory_mb", "disk_mb", "network_mbps")


def _jsonable(row: sa.RowMapping | dict[str, Any]) -> dict[str, Any]:
    # str(k): SQLAlchemy's keys are a str subclass, which strict encoders such as orjson refuse.
    return {str(k): v.isoformat() if isinstance(v, datetime) else v for k, v in row.items()}


async def _all(store: ProjectionStore, stmt: sa.Select[Any]) -> list[dict[str, Any]]:
    async with store.engine.connect() as conn:
        result = await conn.execute(stmt)
        return [_jsonable(r) for r in result.mappings()]


async def _one(store: ProjectionStore, stmt: sa.Select[Any]) -> dict[str, Any] | None:
    rows = await _all(store, stmt)
    return rows[0] if rows else None


# --- agents ---


async def list_agents(
    store: ProjectionStore, pool: str, status: str | None = None
) -> list[dict[str, Any]]:
    """The pool's agents (optionally only 'active' or 'deregistered'), by agent_id."""
    a = tables.agents
    stmt = sa.select(a).where(a.c.pool == pool).order_by(a.c.agent_id)
    if status is not None:
        stmt = stmt.where(a.c.status == status)
    return await _all(store, stmt)


async def get_agent(store: ProjectionStore, pool: str, agent_id: str) -> dict[str, Any] | None:
    """One agent with its capabilities, capacity, load, status and counters; None if unknown."""
    a = tables.agents
    return await _one(store, sa.select(a).where(a.c.pool == pool, a.c.agent_id == agent_id))


# --- tasks ---


async def list_tasks(
    store: ProjectionStore,
    pool: str,
    status: str | None = None,
    agent_id: str | None = None,
    type: str | None = None,  # shadows the builtin on purpose: the API's filter is "type"
    page: int = 1,
    page_size: int = 50,
) -> dict[str, Any]:
    """A page of the pool's tasks in submission order, with the total matching the filters."""
    if page < 1:
        raise ValueError("page starts at 1")
    if not 1 <= page_size <= MAX_PAGE_SIZE:
        raise ValueError(f"page_size must be between 1 and {MAX_PAGE_SIZE}")
    t = tables.tasks
    where = [t.c.pool == pool]
    if status is not None:
        where.append(t.c.status == status)
    if agent_id is not None:
        where.append(t.c.agent_id == agent_id)
    if type is not None:
        where.append(t.c.type == type)
    page_stmt = (
        sa.select(t)
        .where(*where)
        .order_by(t.c.submitted_at, t.c.task_id)
        .limit(page_size)
        .offset((page - 1) * page_size)
    )
    # One connection (one transaction on SQLite) so the total and the page agree.
    async with store.engine.connect() as conn:
        total = await conn.scalar(sa.select(sa.func.count()).select_from(t).where(*where))
        items = [_jsonable(r) for r in (await conn.execute(page_stmt)).mappings()]
    return {"items": items, "page": page, "page_size": page_size, "total": int(total or 0)}


async def get_task(store: ProjectionStore, pool: str, task_id: str) -> dict[str, Any] | None:
    """One task with its status, agent, attempts and timings; None if unknown."""
    t = tables.tasks
    return await _one(store, sa.select(t).where(t.c.pool == pool, t.c.task_id == task_id))


# --- resources ---


async def resources(store: ProjectionStore, pool: str) -> dict[str, Any]:
    """The pool's limits, what active allocations hold, what is free, and those allocations."""
    lim, al = tables.resource_limits, tables.allocations
    async with store.engine.connect() as conn:
        limits_row = (await conn.execute(sa.select(lim).where(lim.c.pool == pool))).mappings()
        limits = next(iter(limits_row), None)
        active = (
            await conn.execute(
                sa.select(al)
                .where(al.c.pool == pool, al.c.status == "active")
                .order_by(al.c.allocated_at, al.c.allocation_id)
            )
        ).mappings()
        allocations = [_jsonable(r) for r in active]
    allocated = {r: sum(a[r] for a in allocations) for r in _RESOURCES}
    free = None
    if limits is not None:
        free = {r: limits[f"max_{r}"] - allocated[r] for r in _RESOURCES}
    return {
        "limits": None if limits is None else _jsonable(limits),
        "allocated": allocated,
        "free": free,
        "allocations": allocations,
    }


# --- costs ---


async def cost_summary(store: ProjectionStore, pool: str) -> dict[str, Any]:
    """Total spend, spend by agent, model and task, and every budget with what is left."""
    c, bu = tables.costs, tables.budgets

    async with store.engine.connect() as conn:

        async def by(column: sa.Column[Any]) -> dict[str, float]:
            rows = await conn.execute(
                sa.select(column, sa.func.sum(c.c.cost_usd))
                .where(c.c.pool == pool, column.is_not(None))
                .group_by(column)
                .order_by(column)
            )
            return {key: float(total) for key, total in rows}

        total = await conn.scalar(sa.select(sa.func.sum(c.c.cost_usd)).where(c.c.pool == pool))
        by_agent = await by(c.c.agent_id)
        by_model = await by(c.c.model)
        by_task = await by(c.c.task_id)
        budget_rows = (
            await conn.execute(
                sa.select(bu).where(bu.c.pool == pool).order_by(bu.c.scope, bu.c.scope_id)
            )
        ).mappings()
        budgets = [
            {
                "scope": b["scope"],
                "scope_id": b["scope_id"],
                "limit_usd": b["limit_usd"],
                "spent_usd": b["spent_usd"],
                # Never negative: an overspend shows as exceeded, not as a negative allowance.
                "left_usd": max(b["limit_usd"] - b["spent_usd"], 0.0),
                "exceeded": b["exceeded"],
                "updated_at": b["updated_at"].isoformat(),
            }
            for b in budget_rows
        ]
    return {
        "total_usd": float(total or 0.0),
        "by_agent": by_agent,
        "by_model": by_model,
        "by_task": by_task,
        "budgets": budgets,
    }


# --- audit trails ---


async def assignments(
    store: ProjectionStore,
    pool: str,
    task_id: str | None = None,
    agent_id: str | None = None,
    limit: int = 100,
    after: int | None = None,
) -> list[dict[str, Any]]:
    """Assignment audit rows in log order; ``after`` = last position seen, for paging."""
    a = tables.assignments
    stmt = sa.select(a).where(a.c.pool == pool).order_by(a.c.position).limit(limit)
    if task_id is not None:
        stmt = stmt.where(a.c.task_id == task_id)
    if agent_id is not None:
        stmt = stmt.where(a.c.agent_id == agent_id)
    if after is not None:
        stmt = stmt.where(a.c.position > after)
    return await _all(store, stmt)


async def rejections(
    store: ProjectionStore,
    pool: str,
    command_id: str | None = None,
    limit: int = 100,
    after: int | None = None,
) -> list[dict[str, Any]]:
    """Rejected commands in log order (optionally of one command_id); ``after`` as above."""
    r = tables.rejections
    stmt = sa.select(r).where(r.c.pool == pool).order_by(r.c.position).limit(limit)
    if command_id is not None:
        stmt = stmt.where(r.c.command_id == command_id)
    if after is not None:
        stmt = stmt.where(r.c.position > after)
    return await _all(store, stmt)


async def dump_tables(store: ProjectionStore) -> dict[str, list[dict[str, Any]]]:
    """Every read-model table's rows by primary key (positions excluded): rebuild == live checks."""
    out: dict[str, list[dict[str, Any]]] = {}
    async with store.engine.connect() as conn:
        for table in tables.READ_MODELS:
            stmt = sa.select(table).order_by(*table.primary_key.columns)
            out[table.name] = [_jsonable(r) for r in (await conn.execute(stmt)).mappings()]
    return out
