"""Read-model queries about workflows: runs and their steps, named definitions, and the system's status.

Answers are plain, JSON-ready dicts in the shapes the HTTP API serves: times as ISO 8601 strings
in UTC, money in USD from the stored micro-dollars (``contracts.money``), a run's id as
``execution_id``. Also the look-ups the workflow writes need: a stored definition by name and
version (``definition_snapshot``), an agent by id or name (``find_agent``).

The latest version of a definition is the one registered last (log order), as Zeebe resolves
"latest": versions are free text ("1.10.0", "2024-05-beta"), so no ordering of their own is
guessed. Lists of runs come newest first.

Every function reads only: none may write a table (only the projector writes), read a clock (a
caller passes ``now``) or import ``services``. Each answer's statements run in one
``ProjectionStore.run_read`` (one read transaction), so its figures agree with each other.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa

from contracts.money import to_usd
from projections import queries, tables
from projections.store import ProjectionStore

MAX_PAGE_SIZE = queries.MAX_PAGE_SIZE
# Step statuses: still open (a task in flight, a signal awaited), and ended.
OPEN = ("queued", "assigned", "running", "retrying", "waiting")
ENDED = frozenset({"completed", "failed", "cancelled", "skipped"})
FINAL = frozenset({"completed", "partially_completed", "failed", "cancelled", "timed_out"})
# Tasks waiting for an agent: the queue (as ``queries.capacity`` counts its depth).
WAITING_TASKS = ("queued", "retrying")

__all__ = [
    "agent_exists",
    "definition_snapshot",
    "definition_versions",
    "find_agent",
    "get_definition",
    "get_workflow",
    "list_definitions",
    "list_workflows",
    "system_status",
    "workflow_status",
]


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _as_of(conn: sa.Connection, pool: str, now: datetime | None) -> datetime | None:
    """``now``, or else the pool's latest event time (the read model's own "now")."""
    if now is not None:
        return now
    p = tables.pools.c
    value: datetime | None = conn.scalar(sa.select(p.last_event_at).where(p.pool == pool))
    return value


def _execution_time(run: sa.RowMapping, now: datetime | None) -> float | None:
    """Seconds from the run's first step to its end (or to ``now`` while it runs)."""
    started, ended = run["started_at"], run["ended_at"]
    if started is None:
        return None
    end = ended if ended is not None else now
    if end is None:
        return None
    seconds: float = max((end - started).total_seconds(), 0.0)
    return seconds


def _summary(run: sa.RowMapping, now: datetime | None) -> dict[str, Any]:
    return {
        "execution_id": run["workflow_id"],
        "name": run["name"],
        "version": run["version"],
        "status": run["status"],
        "created_at": _iso(run["created_at"]),
        "started_at": _iso(run["started_at"]),
        "ended_at": _iso(run["ended_at"]),
        "execution_time": _execution_time(run, now),
        "total_tasks": run["total_tasks"],
        "completed_tasks": run["completed_tasks"],
        "failed_tasks": run["failed_tasks"],
        "skipped_tasks": run["skipped_tasks"],
        "cost_usd": to_usd(run["cost_micros"]),
    }


def _fetch_all(conn: sa.Connection, stmt: sa.Select[Any]) -> Any:
    return conn.execute(stmt).all()


def _mappings(conn: sa.Connection, stmt: sa.Select[Any]) -> Any:
    return conn.execute(stmt).mappings().all()


def _of_run(stmt: sa.Select[Any], table: sa.Table) -> sa.Select[Any]:
    run = table.c.workflow_id == sa.bindparam("workflow_id")
    return stmt.where(table.c.pool == sa.bindparam("pool"), run)


# A run and its steps by pool and run id, built once (values bound at execution): the statements a
# client polling a run's status makes on every poll.


_W, _S = tables.workflows, tables.workflow_steps
_RUN = _of_run(sa.select(_W), _W)
_STEPS = _of_run(sa.select(_S), _S).order_by(_S.c.position)
_RUN_STATUS = _of_run(sa.select(_W.c.status, _W.c.reason, _W.c.completed_tasks), _W)
_STEP_STATUSES = _of_run(sa.select(_S.c.step, _S.c.kind, _S.c.status), _S).order_by(_S.c.position)


# --- runs ---


async def list_workflows(
    store: ProjectionStore,
    pool: str,
    status: str | None = None,
    name: str | None = None,
    page: int = 1,
    page_size: int = 50,
    now: datetime | None = None,
) -> dict[str, Any]:
    """A page of the pool's runs, newest first, with the total matching the filters.

    ``execution_time`` of a running run counts up to ``now`` (default: the pool's latest event).
    An empty ``name`` filters nothing, as an absent one (no definition has an empty name), so a
    query string with ``name=`` left blank lists every run.
    """
    queries.check_page(page, page_size)
    w = tables.workflows
    where = [w.c.pool == pool]
    if status is not None:
        where.append(w.c.status == status)
    if name:
        where.append(w.c.name == name)
    columns = [c for c in w.columns if c.name not in ("definition", "inputs")]
    page_stmt = (
        sa.select(*columns)
        .where(*where)
        .order_by(w.c.position.desc())
        .limit(page_size)
        .offset((page - 1) * page_size)
    )
    count_stmt = sa.select(sa.func.count()).select_from(w).where(*where)

    def read(conn: sa.Connection) -> tuple[Any, Any, datetime | None]:
        # One read transaction, so the total and the page agree.
        return conn.scalar(count_stmt), conn.execute(page_stmt).mappings().all(), _as_of(conn, pool, now)

    total, rows, as_of = await store.run_read(read)
    return {
        "workflows": [_summary(r, as_of) for r in rows],
        "total": int(total or 0),
        "page": page,
        "page_size": page_size,
    }


def _audit(row: sa.RowMapping) -> dict[str, Any]:
    return {
        "position": row["position"],
        "agent_id": row["agent_id"],
        "attempt": row["attempt"],
        "strategy": row["strategy"],
        "candidates": row["candidates"],
        "eligible": row["eligible"],
        "considered": row["considered"],
        "decision_us": row["decision_us"],
        "capability_gap": row["capability_gap"],
        "preferred": row["preferred"],
        "skipped": row["skipped"],
        "assigned_at": _iso(row["assigned_at"]),
        "event_id": row["event_id"],
    }


def _step(row: sa.RowMapping, audit: list[dict[str, Any]] | None, names: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": row["step"],
        "kind": row["kind"],
        "status": row["status"],
        "depends_on": row["depends_on"],
        "continue_on_failure": row["continue_on_failure"],
        "task_id": row["task_id"],
        "agent_id": row["agent_id"],
        "agent_name": names.get(row["agent_id"]) if row["agent_id"] is not None else None,
        "attempts": row["attempts"],
        "submitted_at": _iso(row["submitted_at"]),
        "started_at": _iso(row["started_at"]),
        "ended_at": _iso(row["ended_at"]),
        "result": row["result"],
        "error": row["error"],
        "reason": row["reason"],
        "cost_usd": to_usd(row["cost_micros"]),
    }
    if audit is not None:
        out["audit"] = audit
    return out


async def get_workflow(
    store: ProjectionStore, pool: str, workflow_id: str, now: datetime | None = None
) -> dict[str, Any] | None:
    """One run with its inputs, definition snapshot, end reason and steps (definition order);
    None if unknown.

    A task step's ``audit`` is the assignment audit of its task (``queries.assignments``: every
    candidate the coordinator weighed, in log order); a signal step has none.
    """
    a, ag = tables.assignments, tables.agents
    key = {"pool": pool, "workflow_id": workflow_id}

    def read(conn: sa.Connection) -> tuple[Any, Any, dict[str, list[dict[str, Any]]], dict[str, str],
                                           datetime | None] | None:
        run = conn.execute(_RUN, key).mappings().first()
        if run is None:
            return None
        steps = conn.execute(_STEPS, key).mappings().all()
        task_ids = [r["task_id"] for r in steps if r["task_id"] is not None]
        audits: dict[str, list[dict[str, Any]]] = {t: [] for t in task_ids}
        if task_ids:
            for row in conn.execute(
                sa.select(a).where(a.c.pool == pool, a.c.task_id.in_(task_ids)).order_by(a.c.position)
            ).mappings():
                audits[row["task_id"]].append(_audit(row))
        agent_ids = sorted({r["agent_id"] for r in steps if r["agent_id"] is not None})
        names: dict[str, str] = {}
        if agent_ids:
            names = dict(conn.execute(
                sa.select(ag.c.agent_id, ag.c.name).where(ag.c.pool == pool, ag.c.agent_id.in_(agent_ids))
            ).all())
        return run, steps, audits, names, _as_of(conn, pool, now)

    found = await store.run_read(read)
    if found is None:
        return None
    run, steps, audits, names, as_of = found
    out = _summary(run, as_of)
    out.update(
        inputs=run["inputs"],
        reason=run["reason"],
        code=run["code"],
        definition=run["definition"],
        steps=[_step(r, audits.get(r["task_id"], []) if r["kind"] == "task" else None, names) for r in steps],
    )
    return out


def _message(status: str, reason: str | None, steps: list[sa.RowMapping], completed: int) -> str:
    """A person's summary of where a run is."""
    total = len(steps)
    if status in FINAL:
        return f"{status}: {reason}" if reason else f"{status}: {completed} of {total} steps completed"
    done = sum(1 for r in steps if r["status"] in ENDED)
    running = [r["step"] for r in steps if r["status"] in OPEN and r["kind"] == "task"]
    waiting = [r["step"] for r in steps if r["status"] == "waiting"]
    parts = [f"{done} of {total} steps done"]
    if running:
        parts.append(f"running: {', '.join(running)}")
    if waiting:
        parts.append(f"waiting for signal: {', '.join(waiting)}")
    if not running and not waiting:
        parts.append("no step started yet" if status == "queued" else "next steps about to start")
    return "; ".join(parts)


async def workflow_status(store: ProjectionStore, pool: str, workflow_id: str) -> dict[str, Any] | None:
    """Where a run is: status, progress (ended steps / steps), its open steps and a summary; None
    if unknown."""
    key = {"pool": pool, "workflow_id": workflow_id}

    def read(conn: sa.Connection) -> tuple[Any, Any] | None:
        run = conn.execute(_RUN_STATUS, key).mappings().first()
        if run is None:
            return None
        return run, conn.execute(_STEP_STATUSES, key).mappings().all()

    found = await store.run_read(read)
    if found is None:
        return None
    run, steps = found
    ended = sum(1 for r in steps if r["status"] in ENDED)
    return {
        "execution_id": workflow_id,
        "status": run["status"],
        "progress": ended / len(steps) if steps else 0.0,
        "current_tasks": [r["step"] for r in steps if r["status"] in OPEN],
        "message": _message(run["status"], run["reason"], list(steps), run["completed_tasks"]),
    }


# --- definitions ---


async def list_definitions(store: ProjectionStore, pool: str) -> dict[str, Any]:
    """Every named definition of the pool (by name) with its versions in registration order and
    the latest (the last registered)."""
    d = tables.workflow_definitions
    rows = await store.run_read(_fetch_all, sa.select(d.c.name, d.c.version).where(d.c.pool == pool)
                                .order_by(d.c.name, d.c.position))
    by_name: dict[str, list[str]] = {}
    for name, version in rows:
        by_name.setdefault(name, []).append(version)
    return {"definitions": [{"name": name, "versions": versions, "latest": versions[-1]}
                            for name, versions in by_name.items()]}


def _version(row: sa.RowMapping) -> dict[str, Any]:
    return {"version": row["version"], "digest": row["digest"],
            "registered_at": _iso(row["registered_at"]), "definition": row["definition"]}


async def definition_versions(
    store: ProjectionStore, pool: str, name: str, version: str | None = None
) -> dict[str, Any] | None:
    """A named definition's versions (registration order; only ``version`` if given: none when
    it was never registered) with the latest; None if the name was never registered."""
    d = tables.workflow_definitions
    rows = await store.run_read(
        _mappings, sa.select(d).where(d.c.pool == pool, d.c.name == name).order_by(d.c.position))
    if not rows:
        return None
    chosen = [r for r in rows if version is None or r["version"] == version]
    return {"name": name, "versions": [_version(r) for r in chosen], "latest": rows[-1]["version"]}


async def get_definition(
    store: ProjectionStore, pool: str, name: str, version: str | None = None
) -> dict[str, Any] | None:
    """One stored definition (name, version, definition, digest, registered_at): ``version``, or
    the latest; None if not registered."""
    d = tables.workflow_definitions
    stmt = sa.select(d).where(d.c.pool == pool, d.c.name == name)
    stmt = stmt.where(d.c.version == version) if version is not None else stmt.order_by(
        d.c.position.desc()).limit(1)
    rows = await store.run_read(_mappings, stmt)
    if not rows:
        return None
    return {"name": rows[0]["name"], **_version(rows[0])}


async def definition_snapshot(
    store: ProjectionStore, pool: str, name: str, version: str | None = None
) -> dict[str, Any] | None:
    """The definition snapshot registered as ``name`` at ``version`` (None: the latest), as
    ``WorkflowDefinition.model_validate`` takes it; None if not registered."""
    row = await get_definition(store, pool, name, version)
    return None if row is None else dict(row["definition"])


# --- agents, for the workflow writes ---


async def find_agent(store: ProjectionStore, pool: str, agent: str) -> dict[str, Any] | None:
    """The pool's agent whose id is ``agent``, else one whose name is (one still registered
    first, then by id); None if there is none. Its ``status`` says whether it is deregistered."""
    a = tables.agents
    found = await queries.get_agent(store, pool, agent)
    if found is not None:
        return found
    stmt = (
        sa.select(a)
        .where(a.c.pool == pool, a.c.name == agent)
        .order_by((a.c.status == "deregistered").asc(), a.c.agent_id)
        .limit(1)
    )
    return await queries._one(store, stmt)


async def agent_exists(store: ProjectionStore, pool: str, agent: str) -> bool:
    """Whether ``agent`` (an id or a name) names an agent of the pool that is not deregistered."""
    found = await find_agent(store, pool, agent)
    return found is not None and found["status"] != "deregistered"


# --- the system at a glance ---


async def system_status(store: ProjectionStore, pool: str) -> dict[str, Any]:
    """Counts of runs, tasks and agents by status, the total spend, the queue (depth, oldest
    waiting task's submission, how many wait for each reason) and the rate limits."""
    w, t, a, c = tables.workflows, tables.tasks, tables.agents, tables.costs

    def read(conn: sa.Connection) -> tuple[Any, ...]:
        def by_status(table: sa.Table) -> dict[str, int]:
            rows = conn.execute(
                sa.select(table.c.status, sa.func.count())
                .where(table.c.pool == pool)
                .group_by(table.c.status)
                .order_by(table.c.status)
            )
            return {status: int(n) for status, n in rows}

        total = conn.scalar(sa.select(sa.func.sum(c.c.cost_micros)).where(c.c.pool == pool))
        waiting = [t.c.pool == pool, t.c.status.in_(WAITING_TASKS)]
        oldest = conn.scalar(sa.select(sa.func.min(t.c.submitted_at)).where(*waiting))
        code = t.c.waiting_reason["code"].as_string()
        reasons = {
            str(reason): int(n)
            for reason, n in conn.execute(
                sa.select(code, sa.func.count()).where(*waiting, code.is_not(None))
                .group_by(code).order_by(code)
            )
        }
        return by_status(w), by_status(t), by_status(a), total, oldest, reasons

    workflows, tasks, agents, total, oldest, reasons = await store.run_read(read)
    return {
        "workflows": workflows,
        "tasks": tasks,
        "total_cost_usd": to_usd(int(total or 0)),
        "queue": {
            "depth": sum(tasks.get(s, 0) for s in WAITING_TASKS),
            "oldest_queued_at": _iso(oldest),
            "waiting_by_reason": reasons,
        },
        "rate_limits": (await queries.rate_limits(store, pool))["items"],
        "agents": agents,
    }
