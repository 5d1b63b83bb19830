"""The models of what the read endpoints answer, for the OpenAPI document.

A row of a read-model table is documented by a model generated from the table itself, so a new
column shows in the document without anyone remembering to add it. The shapes that
``projections.queries`` computes (summaries, balance, capacity) are written out here; the API's
tests check every response against them.

Documentation only: this module must never validate, build or change a response.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, create_model

from contracts.commands import PerformanceWeights, WaitingCode
from projections import tables
from projections.tables import UTCDateTime
from services.http.responses import EventRecord

__all__ = [
    "Agent",
    "AgentLoad",
    "Allocation",
    "Assignment",
    "Capacity",
    "CostSummary",
    "EventsPage",
    "Health",
    "Items",
    "LoadBalancing",
    "Performance",
    "RejectedCommand",
    "Resources",
    "ScalingDecision",
    "ScalingPolicy",
    "Task",
    "TaskPage",
    "Timer",
    "WaitingReason",
]

T = TypeVar("T")


def _python_type(column: sa.Column[Any]) -> Any:
    kind = column.type
    if isinstance(kind, UTCDateTime):
        return datetime
    if isinstance(kind, sa.Boolean):
        return bool
    if isinstance(kind, sa.Integer):
        return int
    if isinstance(kind, sa.Float):
        return float
    if isinstance(kind, sa.String):  # Text included
        return str
    return Any  # JSON columns hold any JSON value


def row_model(table: sa.Table, name: str, doc: str, *, without: tuple[str, ...] = (),
              shapes: dict[str, Any] | None = None) -> type[BaseModel]:
    """A model of one row of ``table`` as the queries return it (every column; None as null), with
    the JSON columns named in ``shapes`` documented by their model."""
    fields: dict[str, Any] = {}
    for column in table.columns:
        if column.name in without:
            continue
        kind = (shapes or {}).get(column.name) or _python_type(column)
        fields[column.name] = (kind | None if column.nullable and kind is not Any else kind, ...)
    return create_model(name, __module__=__name__, __doc__=doc, **fields)


Agent = row_model(tables.agents, "Agent", "An agent: capabilities, capacity, load, status, health, breaker.")
class WaitingReason(BaseModel):
    """Why a queued (or retrying) task waits: one code, since when, and that code's details.

    ``all_capable_agents_busy``: the ordinary wait, for a capable agent to free up;
    ``no_capable_agent``: no registered agent has (enough of) the required capabilities
    (``missing``, ``best_match``, ``threshold``); ``rate_limited``: every capable free agent is
    rate limited ``until``; ``budget_exceeded``: the budget of ``scope``/``scope_id`` is spent
    (pool, workflow, or for ``agents`` their own); ``circuit_open``: every capable agent's
    breaker is open, the first half-opens ``until``; ``agents_unhealthy``: every capable agent
    missed its heartbeat; ``retry_backoff``: a run failed (``attempt``), the next starts ``until``;
    ``deferred_by_agent``: the agent holding it (``agent_id``) gave it back for ``delay_s`` seconds
    (its ``reason``, e.g. RATE_LIMITED), and no agent is given it before ``until``.
    """

    model_config = ConfigDict(extra="forbid")

    code: WaitingCode
    since: datetime
    until: datetime | None = None
    scope: Literal["pool", "agent", "workflow"] | None = None
    scope_id: str | None = None
    agents: list[str] | None = None
    missing: list[str] | None = None
    best_match: float | None = None
    threshold: float | None = None
    attempt: int | None = None
    reason: str | None = Field(None, description="A deferral's own reason: the coordinator's when not a "
                                                 "rate limit, an agent's always.")
    agent_id: str | None = Field(None, description="deferred_by_agent: the agent that deferred it.")
    delay_s: float | None = Field(None, description="deferred_by_agent: for how long, in seconds.")


Task = row_model(tables.tasks, "Task", "A task: action and parameters, status, agent, attempts, timings, "
                                     "result or error (with its code, and whether it could be retried).",
                 shapes={"waiting_reason": WaitingReason})
ResourceLimits = row_model(tables.resource_limits, "ResourceLimits", "The pool's resource limits.")
Allocation = row_model(tables.allocations, "Allocation", "Resources reserved for an agent.")
Assignment = row_model(tables.assignments, "Assignment",
                       "An accepted assignment with the coordinator's reasoning (candidates, scores).")
RejectedCommand = row_model(tables.rejections, "RejectedCommand", "A command the decider rejected.")
Timer = row_model(tables.timers, "Timer", "A durable timer's latest arming.")
ScalingPolicy = row_model(tables.scaling_policies, "ScalingPolicy", "The scaling policy of an agent kind.",
                          without=("pool",))


class Items(BaseModel, Generic[T]):
    """A list of rows."""

    items: list[T]


class TaskPage(BaseModel):
    """A page of tasks in submission order, with the total matching the filters."""

    items: list[Task]  # type: ignore[valid-type]
    page: int = Field(ge=1)
    page_size: int = Field(ge=1)
    total: int = Field(ge=0)


class ResourceAmounts(BaseModel):
    """An amount of each resource."""

    cpu_cores: float
    memory_mb: float
    disk_mb: float
    network_mbps: float


class Resources(BaseModel):
    """Limits (None until set), what active allocations hold, what is free, and those allocations."""

    limits: ResourceLimits | None  # type: ignore[valid-type]
    allocated: ResourceAmounts
    free: ResourceAmounts | None
    allocations: list[Allocation]  # type: ignore[valid-type]


class Budget(BaseModel):
    """A budget with what is spent and left (never negative: an overspend shows as exceeded)."""

    scope: str
    scope_id: str
    limit_usd: float
    spent_usd: float
    left_usd: float
    exceeded: bool
    updated_at: datetime


class CostSummary(BaseModel):
    """Total spend, spend by agent, model and task, and every budget."""

    total_usd: float
    by_agent: dict[str, float]
    by_model: dict[str, float]
    by_task: dict[str, float]
    budgets: list[Budget]


class Performance(BaseModel):
    """An agent's performance profile and score (see ``projections.queries.agent_performance``)."""

    agent_id: str
    score: float
    success_rate: float
    error_rate: float
    mean_duration_s: float | None
    speed: float
    availability: float
    completed: int
    failed: int
    timeouts: int
    lost: int
    healthy: bool
    weights: PerformanceWeights
    components: dict[str, float]
    contributions: dict[str, float]
    as_of: datetime | None


class ScalingDecision(BaseModel):
    """A scaling decision; ``from``/``to`` repeat ``from_agents``/``to_agents``."""

    model_config = ConfigDict(populate_by_name=True)

    position: int
    time: datetime
    agent_kind: str
    from_: int = Field(alias="from")
    to: int
    from_agents: int
    to_agents: int
    reason: str
    metrics: dict[str, Any]
    event_id: str


class AgentLoad(BaseModel):
    """An agent's share of its capacity in use."""

    agent_id: str
    kind: str
    tasks: int
    capacity: int
    load: float
    healthy: bool
    circuit: str
    weight: float


class LoadBalancing(BaseModel):
    """How evenly work is spread over the healthy agents (see ``projections.queries.load_balancing``)."""

    agents: list[AgentLoad]
    balanced_agents: int
    tasks_held: int
    mean: float
    variance: float
    std_dev: float
    coefficient_of_variation: float | None
    effectiveness: float = Field(ge=0, le=1)


class AgentCounts(BaseModel):
    total: int
    available: int
    healthy: int
    unhealthy: int
    circuit_open: int
    max: int | None


class Slots(BaseModel):
    total: int
    used: int
    free: int
    available: int


class ResourceUse(BaseModel):
    used: float
    limit: float | None
    utilization: float | None


class Utilization(BaseModel):
    slots: float | None
    agents: float | None
    resources: dict[str, ResourceUse]


class Queue(BaseModel):
    depth: int
    by_status: dict[str, int]
    unassignable: int
    deferred: int


class Capacity(BaseModel):
    """Agents, task slots, resources and the queue, the bottlenecks, and what to do about them."""

    agents: AgentCounts
    slots: Slots
    load: float | None
    utilization: Utilization
    queue: Queue
    bottlenecks: list[dict[str, Any]] = Field(description="Each names its kind: capability, resource, "
                                                          "agents or slots, with its figures.")
    recommendations: list[str]
    as_of: datetime | None


class EventsPage(BaseModel):
    """A page of the pool's events; continue with after=next_after (the last position looked at)."""

    items: list[EventRecord]
    next_after: int = Field(ge=-1)


class Health(BaseModel):
    """Liveness and readiness; the runtime adds its own readiness flags."""

    model_config = ConfigDict(extra="allow")

    status: Literal["ok", "failed"]
    log: str
    database: str
    partitions: int = Field(ge=1)
    outcomes: int = Field(ge=0)
    error: str | None = Field(None, description="Why the service failed (status failed only).")
