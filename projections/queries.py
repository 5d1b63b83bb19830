"""Read-model queries for the HTTP API and CLI: plain, JSON-ready dicts and lists.

Datetimes come back as ISO 8601 strings in UTC. Every function reads only; none may ever write a
table (only the projector writes) or import ``services``. Each query's statements run in one
``ProjectionStore.run_read`` (one read transaction, one hand-off to a reader thread on SQLite), so
the figures of one answer agree with each other.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from contracts.commands import PoolPolicy
from contracts.money import to_usd
from projections import tables
from projections.performance import profile_from_row, report
from projections.store import ProjectionStore

MAX_PAGE_SIZE = 1000
_RESOURCES = ("cpu_cores", "memory_mb", "disk_mb", "network_mbps")
# A resource, the agent count or the task slots count as a bottleneck above this share of their
# limit (capacity).
BOTTLENECK_UTILIZATION = 0.8


def _jsonable(row: sa.RowMapping | dict[str, Any]) -> dict[str, Any]:
    # str(k): SQLAlchemy's keys are a str subclass, which strict encoders such as orjson refuse.
    return {str(k): v.isoformat() if isinstance(v, datetime) else v for k, v in row.items()}


def _rows(conn: sa.Connection, stmt: sa.Select[Any],
          params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The rows of ``stmt`` as ``_jsonable`` makes them, with the keys and the datetime columns found
    once per result instead of once per value (a page of 50 tasks spent a fifth of its time in
    ``_jsonable``)."""
    result = conn.execute(stmt, params)
    keys = [str(k) for k in result.keys()]  # one per selected column, in their order
    times = [i for i, c in enumerate(stmt.selected_columns)
             if isinstance(c.type, sa.DateTime | tables.UTCDateTime)]
    if not times:
        return [dict(zip(keys, row, strict=True)) for row in result]
    out = []
    for row in result:
        values = list(row)
        for i in times:
            value = values[i]
            if value is not None:
                values[i] = value.isoformat()
        out.append(dict(zip(keys, values, strict=True)))
    return out


async def _all(store: ProjectionStore, stmt: sa.Select[Any], params: dict[str, Any] | None = None,
               ) -> list[dict[str, Any]]:
    """The rows of ``stmt`` (its bound parameters' values in ``params``), JSON-ready."""
    return await store.run_statement(_rows, stmt, params)


async def _one(store: ProjectionStore, stmt: sa.Select[Any], params: dict[str, Any] | None = None,
               ) -> dict[str, Any] | None:
    rows = await _all(store, stmt, params)
    return rows[0] if rows else None


def _by_key(table: sa.Table, key: str) -> sa.Select[Any]:
    """One row of ``table`` by pool and ``key``, built once: the point reads every status poll makes
    skip building the statement and its cache key per request (values bound at execution)."""
    return sa.select(table).where(table.c.pool == sa.bindparam("pool"), table.c[key] == sa.bindparam("key"))


_AGENT = _by_key(tables.agents, "agent_id")
_TASK = _by_key(tables.tasks, "task_id")


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
    return await _one(store, _AGENT, {"pool": pool, "key": agent_id})


# --- tasks ---


def check_page(page: int, page_size: int) -> None:
    """Refuse a page number below 1 or a page size outside 1..MAX_PAGE_SIZE."""
    if page < 1:
        raise ValueError("page starts at 1")
    if not 1 <= page_size <= MAX_PAGE_SIZE:
        raise ValueError(f"page_size must be between 1 and {MAX_PAGE_SIZE}")


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
    check_page(page, page_size)
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
    count_stmt = sa.select(sa.func.count()).select_from(t).where(*where)

    def read(conn: sa.Connection) -> tuple[Any, list[dict[str, Any]]]:
        # One read transaction, so the total and the page agree.
        return conn.scalar(count_stmt), _rows(conn, page_stmt)

    total, items = await store.run_read(read)
    return {"items": items, "page": page, "page_size": page_size, "total": int(total or 0)}


async def get_task(store: ProjectionStore, pool: str, task_id: str) -> dict[str, Any] | None:
    """One task with its status, agent, attempts and timings; None if unknown."""
    return await _one(store, _TASK, {"pool": pool, "key": task_id})


# --- resources ---


async def resources(store: ProjectionStore, pool: str) -> dict[str, Any]:
    """The pool's limits, what active allocations hold, what is free, and those allocations."""
    lim, al = tables.resource_limits, tables.allocations
    active = (sa.select(al).where(al.c.pool == pool, al.c.status == "active")
              .order_by(al.c.allocated_at, al.c.allocation_id))

    def read(conn: sa.Connection) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        found = conn.execute(sa.select(lim).where(lim.c.pool == pool)).mappings().first()
        return None if found is None else dict(found), _rows(conn, active)

    limits, allocations = await store.run_read(read)
    # fsum: the sum of the amounts rounded once (ten 0.1 cores are 1.0, as the decider counts them).
    allocated = {r: math.fsum(a[r] for a in allocations) for r in _RESOURCES}
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
    c = tables.costs

    def read(conn: sa.Connection) -> dict[str, Any]:
        def by(column: sa.Column[Any]) -> dict[str, float]:
            rows = conn.execute(
                sa.select(column, sa.func.sum(c.c.cost_micros))
                .where(c.c.pool == pool, column.is_not(None))
                .group_by(column)
                .order_by(column)
            )
            return {key: to_usd(int(total)) for key, total in rows}

        total = conn.scalar(sa.select(sa.func.sum(c.c.cost_micros)).where(c.c.pool == pool))
        return {
            "total_usd": to_usd(int(total or 0)),
            "by_agent": by(c.c.agent_id),
            "by_model": by(c.c.model),
            "by_task": by(c.c.task_id),
            "budgets": _budget_rows(conn, pool),
        }

    return await store.run_read(read)


def _budget(b: sa.RowMapping) -> dict[str, Any]:
    """A budget row in USD (stored in micro-dollars, so what is left is exact)."""
    return {
        "scope": b["scope"],
        "scope_id": b["scope_id"],
        "limit_usd": to_usd(b["limit_micros"]),
        "spent_usd": to_usd(b["spent_micros"]),
        # Never negative: an overspend shows as exceeded, not as a negative allowance.
        "left_usd": to_usd(max(b["limit_micros"] - b["spent_micros"], 0)),
        "exceeded": b["exceeded"],
        "updated_at": b["updated_at"].isoformat(),
    }


def _budget_rows(conn: sa.Connection, pool: str) -> list[dict[str, Any]]:
    bu = tables.budgets
    stmt = sa.select(bu).where(bu.c.pool == pool).order_by(bu.c.scope, bu.c.scope_id)
    return [_budget(b) for b in conn.execute(stmt).mappings()]


async def budgets(store: ProjectionStore, pool: str) -> list[dict[str, Any]]:
    """The pool's budgets, each with what is spent and left, by scope and scope id."""
    return await store.run_read(_budget_rows, pool)


async def prices(store: ProjectionStore, pool: str) -> dict[str, Any] | None:
    """The pool's own prices as its last PricesSet left them (None: it never set any)."""
    row = await _one(store, sa.select(tables.prices).where(tables.prices.c.pool == pool))
    return None if row is None else _without_pool(row)


# --- audit trails ---


async def assignments(
    store: ProjectionStore,
    pool: str,
    task_id: str | None = None,
    agent_id: str | None = None,
    limit: int = 100,
    after: int | None = None,
) -> list[dict[str, Any]]:
    """Assignment audit rows in log order; ``after`` = last position seen, for paging.

    Each row holds every candidate the coordinator considered (``candidates``: agent_id, score,
    load, capacity, capability_match and the score's ``components``), the strategy, the
    capability gap of a fallback, the preferred (inferred) capabilities and the agents skipped.
    """
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


# --- pools and policies ---


def _pool_row(conn: sa.Connection, pool: str) -> dict[str, Any] | None:
    p = tables.pools
    found = conn.execute(sa.select(p).where(p.c.pool == pool)).mappings().first()
    return None if found is None else dict(found)


def _policy(pool_row: dict[str, Any] | None) -> PoolPolicy:
    if pool_row is None or pool_row["policy"] is None:
        return PoolPolicy()
    return PoolPolicy.model_validate(pool_row["policy"])


async def pool_policy(store: ProjectionStore, pool: str) -> dict[str, Any]:
    """The pool's coordination policy, defaults filled in, and when it was last set (or None)."""
    row = await store.run_read(_pool_row, pool)
    set_at = None if row is None or row["policy_set_at"] is None else row["policy_set_at"]
    return {
        "policy": _policy(row).model_dump(mode="json"),
        "set_at": None if set_at is None else set_at.isoformat(),
    }


async def rate_limits(store: ProjectionStore, pool: str) -> dict[str, Any]:
    """Every rate limit of the pool by scope and scope_id (None: that dimension is unlimited)."""
    r = tables.rate_limits
    stmt = sa.select(r).where(r.c.pool == pool).order_by(r.c.scope, r.c.scope_id)
    return {"items": [_without_pool(row) for row in await _all(store, stmt)]}


def _without_pool(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k != "pool"}


# --- timers ---


async def list_timers(
    store: ProjectionStore, pool: str, status: str | None = "pending", limit: int = 100
) -> list[dict[str, Any]]:
    """Durable timers by due time (status 'pending', 'fired', 'cancelled', or None for all)."""
    t = tables.timers
    stmt = (
        sa.select(t)
        .where(t.c.pool == pool)
        .order_by(t.c.due_at, t.c.timer_id)
        .limit(limit)
    )
    if status is not None:
        stmt = stmt.where(t.c.status == status)
    return await _all(store, stmt)


# --- performance ---


async def agent_performance(
    store: ProjectionStore, pool: str, agent_id: str
) -> dict[str, Any] | None:
    """An agent's performance profile and score; None if the agent never registered.

    The figures are ``projections.performance.report`` of the stored profile (the coordinator's
    own fold), with the pool policy's weights, as of the pool's latest event (the time the
    coordinator scores with; availability counts the time since the agent's last health change
    up to then). ``components`` are the four inputs of the score, each in [0, 1]:
    ``execution_time`` is the speed score (1 for instant runs, 0.5 at the reference duration)
    and ``error_rate`` counts against the score as ``1 - error_rate``; ``contributions`` are
    their weighted parts, which sum to ``score``.
    """
    perf = tables.agent_performance

    def read(conn: sa.Connection) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        found = conn.execute(
            sa.select(perf).where(perf.c.pool == pool, perf.c.agent_id == agent_id)
        ).mappings().first()
        return None if found is None else dict(found), _pool_row(conn, pool)

    stored, pool_row = await store.run_read(read)
    if stored is None:
        return None
    profile = profile_from_row(stored)
    weights = _policy(pool_row).performance
    as_of = None if pool_row is None else pool_row["last_event_at"]
    now = None if as_of is None else as_of.timestamp()
    out = report(profile, weights, now)
    speed = profile.speed(weights.reference_duration_s)
    availability = profile.availability(now)
    out["components"] = {
        "success_rate": out["success_rate"],
        "execution_time": out["speed"],
        "availability": out["availability"],
        "error_rate": out["error_rate"],
    }
    out["contributions"] = {
        "success_rate": round(weights.success * profile.success_rate, 6),
        "execution_time": round(weights.time * speed, 6),
        "availability": round(weights.availability * availability, 6),
        "error_rate": round(weights.errors * (1.0 - profile.error_rate), 6),
    }
    out["as_of"] = None if as_of is None else as_of.isoformat()
    return out


# --- scaling ---


async def scaling_policies(store: ProjectionStore, pool: str) -> dict[str, Any]:
    """Every scaling policy of the pool, by agent kind."""
    sp = tables.scaling_policies
    stmt = sa.select(sp).where(sp.c.pool == pool).order_by(sp.c.agent_kind)
    return {"items": [_without_pool(row) for row in await _all(store, stmt)]}


async def scaling_decisions(
    store: ProjectionStore,
    pool: str,
    agent_kind: str | None = None,
    limit: int = 100,
    after: int | None = None,
) -> dict[str, Any]:
    """Scaling decisions in log order; ``after`` = last position seen, for paging.

    Each: position, time, agent_kind, from and to (also as from_agents and to_agents), reason,
    metrics, event_id.
    """
    sd = tables.scaling_decisions
    stmt = sa.select(sd).where(sd.c.pool == pool).order_by(sd.c.position).limit(limit)
    if agent_kind is not None:
        stmt = stmt.where(sd.c.agent_kind == agent_kind)
    if after is not None:
        stmt = stmt.where(sd.c.position > after)
    items = [
        {
            "position": r["position"],
            "time": r["decided_at"],
            "agent_kind": r["agent_kind"],
            "from": r["from_agents"],
            "to": r["to_agents"],
            # The ScalingDecided field names too ("from" is a keyword in many client languages).
            "from_agents": r["from_agents"],
            "to_agents": r["to_agents"],
            "reason": r["reason"],
            "metrics": r["metrics"],
            "event_id": r["event_id"],
        }
        for r in await _all(store, stmt)
    ]
    return {"items": items}


# --- load balancing and capacity ---


def _ratio(part: float, whole: float | None) -> float | None:
    return None if not whole else round(part / whole, 6)


async def load_balancing(store: ProjectionStore, pool: str) -> dict[str, Any]:
    """How evenly work is spread over the agents that can take it.

    Each registered agent's load is the share of its capacity in use (tasks held / capacity).
    The statistics are over the agents the coordinator balances across, the healthy ones
    (an unhealthy agent holds nothing and may take nothing): their mean load, population
    variance and standard deviation, and ``effectiveness = 1 - std / mean`` (one minus the
    coefficient of variation) clipped to [0, 1]: 1 when every agent is equally loaded (or all
    are idle), 0 when the spread is as large as the mean or larger.
    """
    a = tables.agents
    stmt = (
        sa.select(a.c.agent_id, a.c.kind, a.c.load, a.c.capacity, a.c.healthy, a.c.circuit,
                  a.c.weight)
        .where(a.c.pool == pool, a.c.status != "deregistered")
        .order_by(a.c.agent_id)
    )
    rows = await _all(store, stmt)
    agents = [
        {
            "agent_id": r["agent_id"],
            "kind": r["kind"],
            "tasks": r["load"],
            "capacity": r["capacity"],
            "load": round(r["load"] / r["capacity"], 6),
            "healthy": r["healthy"],
            "circuit": r["circuit"],
            "weight": r["weight"],
        }
        for r in rows
    ]
    loads = [r["load"] / r["capacity"] for r in rows if r["healthy"]]
    n = len(loads)
    mean = math.fsum(loads) / n if n else 0.0
    variance = math.fsum((x - mean) ** 2 for x in loads) / n if n else 0.0
    std = math.sqrt(variance)
    effectiveness = 1.0 if mean <= 0 else min(max(1.0 - std / mean, 0.0), 1.0)
    return {
        "agents": agents,
        "balanced_agents": n,
        "tasks_held": sum(r["load"] for r in rows),
        "mean": round(mean, 6),
        "variance": round(variance, 6),
        "std_dev": round(std, 6),
        "coefficient_of_variation": None if mean <= 0 else round(std / mean, 6),
        "effectiveness": round(effectiveness, 6),
    }


def _available(agent: dict[str, Any]) -> bool:
    """May take a task now, as the decider would allow (healthy, breaker permitting, room)."""
    if not agent["healthy"] or agent["circuit"] == "open":
        return False
    if agent["circuit"] == "half_open" and agent["load"] > 0:
        return False
    return bool(agent["load"] < agent["capacity"])


async def capacity(store: ProjectionStore, pool: str) -> dict[str, Any]:
    """Agents, task slots, resources and the queue, what limits throughput, and what to do.

    ``available`` agents are healthy, not held back by their circuit breaker, and have a free
    slot. Bottlenecks, in this order: capabilities that queued tasks require and no available
    agent has; resources allocated above 80% of their limit; agents above 80% of max_agents;
    more queued tasks than free slots on available agents. Each yields one recommendation,
    followed by one for unhealthy agents and one for open circuit breakers; all derived from
    the figures alone, so the same read model always gives the same advice.
    """
    a, t, al, lim = tables.agents, tables.tasks, tables.allocations, tables.resource_limits

    def read(conn: sa.Connection) -> tuple[Any, ...]:
        agent_rows = [
            dict(r)
            for r in conn.execute(
                sa.select(a.c.agent_id, a.c.capabilities, a.c.load, a.c.capacity, a.c.healthy, a.c.circuit)
                .where(a.c.pool == pool, a.c.status != "deregistered")
                .order_by(a.c.agent_id)
            ).mappings()
        ]
        by_status = {
            status: int(n)
            for status, n in conn.execute(
                sa.select(t.c.status, sa.func.count())
                .where(t.c.pool == pool)
                .group_by(t.c.status)
                .order_by(t.c.status)
            )
        }
        queued = [
            dict(r)
            for r in conn.execute(
                sa.select(t.c.required_capabilities, t.c.unassignable, t.c.deferred_until)
                .where(t.c.pool == pool, t.c.status == "queued")
            ).mappings()
        ]
        # Summed here with fsum, not by SUM (rounded at every addition): see ``resources``.
        held = conn.execute(
            sa.select(*(al.c[r] for r in _RESOURCES)).where(al.c.pool == pool, al.c.status == "active")
        ).all()
        used = [math.fsum(row[i] for row in held) for i in range(len(_RESOURCES))]
        found = conn.execute(sa.select(lim).where(lim.c.pool == pool)).mappings().first()
        limits = None if found is None else dict(found)
        return agent_rows, by_status, queued, tuple(used), limits, _pool_row(conn, pool)

    agent_rows, by_status, queued, used, limits, pool_row = await store.run_read(read)
    now = None if pool_row is None else pool_row["last_event_at"]

    available = [r for r in agent_rows if _available(r)]
    slots_total = sum(r["capacity"] for r in agent_rows)
    slots_used = sum(r["load"] for r in agent_rows)
    slots_available = sum(r["capacity"] - r["load"] for r in available)
    unhealthy = [r["agent_id"] for r in agent_rows if not r["healthy"]]
    open_circuits = [r["agent_id"] for r in agent_rows if r["circuit"] == "open"]
    max_agents = None if limits is None else limits["max_agents"]
    resources = {}
    for i, name in enumerate(_RESOURCES):
        limit = None if limits is None else limits[f"max_{name}"]
        resources[name] = {"used": float(used[i]), "limit": limit,
                           "utilization": _ratio(float(used[i]), limit)}

    bottlenecks: list[dict[str, Any]] = []
    recommendations: list[str] = []
    needed: dict[str, int] = {}
    for task in queued:
        for cap in task["required_capabilities"]:
            needed[cap] = needed.get(cap, 0) + 1
    free_caps = {cap for r in available for cap in r["capabilities"]}
    for cap in sorted(needed):
        if cap in free_caps:
            continue
        holders = sum(1 for r in agent_rows if cap in r["capabilities"])
        n = needed[cap]
        bottlenecks.append({"kind": "capability", "capability": cap, "queued_tasks": n,
                            "agents_with_capability": holders})
        if holders == 0:
            recommendations.append(
                f"register an agent with capability {cap!r}: {n} queued task(s) need it "
                "and no agent has it")
        else:
            recommendations.append(
                f"add capacity for capability {cap!r}: {n} queued task(s) need it and all "
                f"{holders} agent(s) with it are busy or unavailable")
    for name, figures in resources.items():
        u = figures["utilization"]
        if u is not None and u > BOTTLENECK_UTILIZATION:
            bottlenecks.append({"kind": "resource", "resource": name, **figures})
            recommendations.append(
                f"raise the {name} limit or release allocations: {u:.0%} of it is allocated")
    agents_utilization = _ratio(len(agent_rows), max_agents)
    if agents_utilization is not None and agents_utilization > BOTTLENECK_UTILIZATION:
        bottlenecks.append({"kind": "agents", "registered": len(agent_rows), "max": max_agents,
                            "utilization": agents_utilization})
        recommendations.append(
            f"raise max_agents: {len(agent_rows)} of {max_agents} agents are registered")
    if len(queued) > slots_available:
        bottlenecks.append({"kind": "slots", "queued": len(queued),
                            "available_slots": slots_available})
        recommendations.append(
            f"scale out: {len(queued)} task(s) queued and {slots_available} free task slot(s) "
            "on available agents")
    if unhealthy:
        recommendations.append(f"check the unhealthy agent(s): {', '.join(unhealthy)}")
    if open_circuits:
        recommendations.append(
            f"investigate the failing agent(s) with an open circuit breaker: "
            f"{', '.join(open_circuits)}")

    return {
        "agents": {
            "total": len(agent_rows),
            "available": len(available),
            "healthy": len(agent_rows) - len(unhealthy),
            "unhealthy": len(unhealthy),
            "circuit_open": len(open_circuits),
            "max": max_agents,
        },
        "slots": {
            "total": slots_total,
            "used": slots_used,
            "free": slots_total - slots_used,
            "available": slots_available,
        },
        "load": _ratio(slots_used, slots_total),
        "utilization": {
            "slots": _ratio(slots_used, slots_total),
            "agents": agents_utilization,
            "resources": resources,
        },
        "queue": {
            "depth": by_status.get("queued", 0) + by_status.get("retrying", 0),
            "by_status": by_status,
            "unassignable": sum(1 for q in queued if q["unassignable"] is not None),
            "deferred": sum(
                1 for q in queued
                if q["deferred_until"] is not None and now is not None and q["deferred_until"] > now
            ),
        },
        "bottlenecks": bottlenecks,
        "recommendations": recommendations,
        "as_of": None if now is None else now.isoformat(),
    }


async def dump_tables(store: ProjectionStore) -> dict[str, list[dict[str, Any]]]:
    """Every read-model table's rows by primary key (positions excluded): rebuild == live checks."""

    def read(conn: sa.Connection) -> dict[str, list[dict[str, Any]]]:
        return {table.name: _rows(conn, sa.select(table).order_by(*table.primary_key.columns))
                for table in tables.READ_MODELS}

    return await store.run_read(read)
