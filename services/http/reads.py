"""The read endpoints: the read models (projections) as JSON, and the service's health.

Every read takes the ``ModelRead`` dependency: the pool it reads, after waiting for
``min_position`` when asked (``services.http.deps``).

This module must never write anything (no command, no table) and never compute what
``projections.queries`` computes: it picks the query, passes the filters and renders the answer.
"""

from __future__ import annotations

from typing import Annotated, Any, NoReturn
from urllib.parse import urlsplit, urlunsplit

from fastapi import APIRouter, HTTPException, Query, Response

from projections import queries
from services.http.audit_reads import AsOf, at
from services.http.bodies import MAX_ID
from services.http.deps import MAX_POSITION, After, ModelRead, ServiceDep
from services.http.read_schemas import (
    Agent,
    Capacity,
    CostSummary,
    Health,
    Items,
    LoadBalancing,
    Performance,
    RejectedCommand,
    Resources,
    ScalingDecision,
    ScalingPolicy,
    Task,
    TaskPage,
    Timer,
)
from services.http.responses import BeyondEnd, Error, ValidationErrors, json_response

__all__ = ["READ_RESPONSES", "health_router", "router"]

# The failures any read may answer, besides its own 200 and 404.
READ_RESPONSES: dict[int | str, dict[str, Any]] = {
    409: {"model": BeyondEnd, "description": "min_position is at or past the end of the commands log "
                                             "(no write answered it), or as_of past the end of the events "
                                             "log; the body names the end."},
    422: {"model": ValidationErrors, "description": "An invalid query parameter."},
    503: {"model": Error, "description": "The service is starting, has failed, or cannot reach its log."},
    504: {"model": Error, "description": "min_position: the command was not decided, or its outcome "
                                         "not read into what is read, within 5 s."},
}
_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": Error, "description": "No such entity."}}

router = APIRouter(tags=["reads"], responses=READ_RESPONSES)
health_router = APIRouter(tags=["reads"])

MAX_PAGE_SIZE = 500
Limit = Annotated[int, Query(ge=1, le=1000)]


def _not_found(what: str, key: str) -> NoReturn:
    raise HTTPException(404, f"{what} {key!r} not found")


@router.get("/v1/agents", summary="List agents", response_model=Items[Agent])  # type: ignore[valid-type]
async def list_agents(read: ModelRead, as_of: AsOf,
                      status: Annotated[str | None, Query(max_length=20)] = None) -> Response:
    return json_response({"items": await at(read, as_of, queries.list_agents, status=status)})


@router.get("/v1/agents/{agent_id}", summary="One agent", response_model=Agent, responses=_NOT_FOUND)
async def get_agent(agent_id: str, read: ModelRead, as_of: AsOf) -> Response:
    agent = await at(read, as_of, queries.get_agent, agent_id)
    if agent is None:
        _not_found("agent", agent_id)
    return json_response(agent)


@router.get("/v1/agents/{agent_id}/performance", summary="An agent's performance profile",
            response_model=Performance, responses=_NOT_FOUND)
async def agent_performance(agent_id: str, read: ModelRead) -> Response:
    profile = await queries.agent_performance(read.service.store, read.pool, agent_id)
    if profile is None:
        _not_found("agent", agent_id)
    return json_response(profile)


@router.get("/v1/tasks", summary="List tasks, a page at a time", response_model=TaskPage)
async def list_tasks(
    read: ModelRead,
    as_of: AsOf,
    status: Annotated[str | None, Query(max_length=20)] = None,
    agent_id: Annotated[str | None, Query(max_length=MAX_ID)] = None,
    type: Annotated[str | None, Query(max_length=200)] = None,
    # Bounded so that the page's first row, (page - 1) * page_size, is a 64-bit number.
    page: Annotated[int, Query(ge=1, le=MAX_POSITION // MAX_PAGE_SIZE)] = 1,
    page_size: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 50,
) -> Response:
    return json_response(await at(read, as_of, queries.list_tasks, status=status, agent_id=agent_id,
                                  type=type, page=page, page_size=page_size))


@router.get("/v1/tasks/{task_id}", summary="One task", response_model=Task, responses=_NOT_FOUND)
async def get_task(task_id: str, read: ModelRead, as_of: AsOf) -> Response:
    task = await at(read, as_of, queries.get_task, task_id)
    if task is None:
        _not_found("task", task_id)
    return json_response(task)


@router.get("/v1/resources", summary="Limits, allocations and what is free", response_model=Resources)
async def get_resources(read: ModelRead) -> Response:
    return json_response(await queries.resources(read.service.store, read.pool))


@router.get("/v1/costs/summary", summary="Spend and budgets", response_model=CostSummary)
async def cost_summary(read: ModelRead, as_of: AsOf) -> Response:
    return json_response(await at(read, as_of, queries.cost_summary))


@router.get("/v1/audit/rejections", summary="Rejected commands",
            response_model=Items[RejectedCommand])  # type: ignore[valid-type]
async def audit_rejections(
    read: ModelRead,
    command_id: Annotated[str | None, Query(max_length=MAX_ID)] = None,
    limit: Limit = 100,
    after: After = None,
) -> Response:
    items = await queries.rejections(read.service.store, read.pool, command_id=command_id, limit=limit,
                                     after=after)
    return json_response({"items": items})


# --- coordination reads -------------------------------------------------------------------------


@router.get("/v1/scaling/policies", summary="Scaling policies by agent kind",
            response_model=Items[ScalingPolicy])  # type: ignore[valid-type]
async def get_scaling_policies(read: ModelRead) -> Response:
    return json_response(await queries.scaling_policies(read.service.store, read.pool))


@router.get("/v1/scaling/decisions", summary="Scaling decisions in log order",
            response_model=Items[ScalingDecision])
async def get_scaling_decisions(
    read: ModelRead,
    agent_kind: Annotated[str | None, Query(max_length=100)] = None,
    limit: Limit = 100,
    after: After = None,
) -> Response:
    return json_response(await queries.scaling_decisions(read.service.store, read.pool,
                                                         agent_kind=agent_kind, limit=limit, after=after))


@router.get("/v1/metrics/load-balancing", summary="Per-agent load and how even it is",
            response_model=LoadBalancing)
async def get_load_balancing(read: ModelRead) -> Response:
    return json_response(await queries.load_balancing(read.service.store, read.pool))


@router.get("/v1/capacity", summary="Fleet capacity, bottlenecks and recommendations",
            response_model=Capacity)
async def get_capacity(read: ModelRead) -> Response:
    return json_response(await queries.capacity(read.service.store, read.pool))


@router.get("/v1/timers", summary="Durable timers (pending by default)",
            response_model=Items[Timer])  # type: ignore[valid-type]
async def get_timers(
    read: ModelRead,
    status: Annotated[str, Query(max_length=20, description="pending, fired, cancelled or all.")] = "pending",
    limit: Limit = 100,
) -> Response:
    timers = await queries.list_timers(read.service.store, read.pool,
                                       status=None if status == "all" else status, limit=limit)
    return json_response({"items": timers})


# --- health -------------------------------------------------------------------------------------


@health_router.get("/v1/health", summary="Liveness and readiness", response_model=Health,
                   responses={503: {"model": Health | Error,
                                    "description": "The service has failed (or is starting)."}})
async def health(service: ServiceDep) -> Response:
    body: dict[str, Any] = {
        "status": "ok",
        "log": _redact(service.log.url),
        "database": _redact(service.store.url),
        "partitions": service.partitions,
        **service.readiness(),
        "outcomes": len(service.outcomes),
    }
    if service.failure is not None:
        return json_response({**body, "status": "failed", "error": str(service.failure)}, 503)
    return json_response(body)


def _redact(url: str) -> str:
    """``url`` without its password: health is often exposed to monitoring."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))
