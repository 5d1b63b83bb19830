"""The read endpoints of workflows: runs and their steps, named definitions, and the system's status.

Every read takes the ``ModelRead`` dependency (the pool, after ``min_position`` when asked: see
``services.http.deps``) and answers what ``projections.workflows`` computes. The response models
below document the shapes for the OpenAPI document and the tests; they never build a response.
The one thing added here is the clock: a running run's ``execution_time`` counts up to now.
Reads of runs take ``as_of`` (``services.http.audit_reads.at``): the same query, on the read
models rebuilt from the log up to that point.

This module must never write anything (no command, no table).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, NoReturn

from fastapi import APIRouter, HTTPException, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from contracts import utcnow
from contracts.workflows import StepStatus, WorkflowStatus
from projections import tables
from projections import workflows as queries
from services.http.audit_reads import AsOf, at
from services.http.deps import MAX_POSITION, ModelRead
from services.http.read_schemas import row_model
from services.http.reads import READ_RESPONSES
from services.http.responses import Error, json_response

__all__ = [
    "DefinitionList",
    "DefinitionVersions",
    "SystemStatus",
    "WorkflowDetail",
    "WorkflowPage",
    "WorkflowProgress",
    "router",
]

router = APIRouter(tags=["workflows"], responses=READ_RESPONSES)

MAX_PAGE_SIZE = 500
_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": Error, "description": "No such run or definition."}}


class _Shape(BaseModel):
    model_config = ConfigDict(extra="forbid")


class WorkflowSummary(_Shape):
    """A run: where it is, how long it ran and what it cost."""

    execution_id: str = Field(description="The workflow id the run was started with.")
    name: str
    version: str
    status: WorkflowStatus
    created_at: datetime
    started_at: datetime | None = Field(description="Its first step was submitted (or began to wait).")
    ended_at: datetime | None
    execution_time: float | None = Field(ge=0, description="Seconds from started_at to ended_at (to now "
                                                           "while it runs); null until it started.")
    total_tasks: int = Field(ge=0)
    completed_tasks: int = Field(ge=0)
    failed_tasks: int = Field(ge=0, description="Failures the run does not tolerate (continue_on_failure "
                                                "steps excluded).")
    skipped_tasks: int = Field(ge=0)
    cost_usd: float = Field(ge=0, description="The sum of its steps' costs.")


class WorkflowPage(_Shape):
    """A page of runs, newest first, with the total matching the filters."""

    workflows: list[WorkflowSummary]
    total: int = Field(ge=0)
    page: int = Field(ge=1)
    page_size: int = Field(ge=1)


class StepAssignment(_Shape):
    """One assignment of a step's task with the coordinator's reasoning (as ``/v1/audit``)."""

    position: int
    agent_id: str
    attempt: int
    strategy: str | None
    candidates: list[dict[str, Any]] = Field(description="Every agent weighed: agent_id, score, load, "
                                                         "capacity, capability_match, components.")
    eligible: int | None
    considered: int | None
    decision_us: float | None
    capability_gap: list[str]
    preferred: list[str]
    skipped: dict[str, int]
    assigned_at: datetime
    event_id: str


class WorkflowStep(_Shape):
    """A step: its task (or signal), how far it got, its outcome and its cost."""

    name: str
    kind: Literal["task", "signal"]
    status: StepStatus
    depends_on: list[str]
    continue_on_failure: bool
    task_id: str | None = Field(description="Its task, once submitted (<workflow id>.<step>).")
    agent_id: str | None
    agent_name: str | None = Field(None, description="Its agent's name, as registered (None when the "
                                                     "agent is not in the read model).")
    attempts: int = Field(ge=0)
    submitted_at: datetime | None
    started_at: datetime | None
    ended_at: datetime | None
    result: Any
    error: str | None = Field(description="The last failure, or why it was cancelled.")
    reason: str | None = Field(description="Why it was skipped.")
    cost_usd: float = Field(ge=0)
    audit: list[StepAssignment] | None = Field(None, description="A task step's assignments, in log order.")


class WorkflowDetail(WorkflowSummary):
    """A run with its inputs, definition snapshot, end reason and steps (definition order)."""

    inputs: dict[str, Any]
    reason: str | None
    code: str | None = Field(description="The rule that ended it, e.g. BUDGET_EXCEEDED.")
    definition: dict[str, Any]
    steps: list[WorkflowStep]


class WorkflowProgress(_Shape):
    """Where a run is, in brief."""

    execution_id: str
    status: WorkflowStatus
    progress: float = Field(ge=0, le=1, description="Ended steps / steps.")
    current_tasks: list[str] = Field(description="Its open steps (in flight, or waiting for a signal).")
    message: str


class DefinitionListing(_Shape):
    name: str
    versions: list[str] = Field(description="In registration order.")
    latest: str = Field(description="The version registered last.")


class DefinitionList(_Shape):
    """Every named definition of the pool."""

    definitions: list[DefinitionListing]


class DefinitionVersion(_Shape):
    version: str
    digest: str = Field(description="SHA-256 of the definition (keys sorted).")
    registered_at: datetime
    definition: dict[str, Any]


class DefinitionVersions(_Shape):
    """A named definition's versions (only the one asked for with ?version=) and the latest."""

    name: str
    versions: list[DefinitionVersion]
    latest: str


class QueueStatus(_Shape):
    depth: int = Field(ge=0, description="Tasks queued or waiting to retry.")
    oldest_queued_at: datetime | None = Field(description="Submission of the oldest of them.")
    waiting_by_reason: dict[str, int] = Field(description="How many wait, by waiting_reason code.")


RateLimit = row_model(tables.rate_limits, "RateLimit", "An agent's or a model's token buckets.",
                      without=("pool",))


class SystemStatus(_Shape):
    """The pool at a glance: counts by status, spend, the queue and the rate limits."""

    workflows: dict[str, int]
    tasks: dict[str, int]
    total_cost_usd: float = Field(ge=0)
    queue: QueueStatus
    rate_limits: list[RateLimit]  # type: ignore[valid-type]
    agents: dict[str, int]


def _not_found(what: str) -> NoReturn:
    raise HTTPException(404, what)


@router.get("/v1/workflows", summary="List workflow runs, newest first", response_model=WorkflowPage)
async def list_workflows(
    read: ModelRead,
    as_of: AsOf,
    status: Annotated[WorkflowStatus | None, Query()] = None,
    name: Annotated[str | None, Query(max_length=100)] = None,
    # Bounded so that the page's first row, (page - 1) * page_size, is a 64-bit number.
    page: Annotated[int, Query(ge=1, le=MAX_POSITION // MAX_PAGE_SIZE)] = 1,
    page_size: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 50,
) -> Response:
    # As of a point, running runs count up to the time asked (a position: the latest event).
    return json_response(await at(read, as_of, queries.list_workflows, status=status, name=name,
                                  page=page, page_size=page_size,
                                  now=utcnow() if as_of is None else as_of.time))


@router.get("/v1/workflows/{workflow_id}", summary="One workflow run with its steps",
            response_model=WorkflowDetail, responses=_NOT_FOUND)
async def get_workflow(workflow_id: str, read: ModelRead, as_of: AsOf) -> Response:
    # As of a point, a running run counts up to the time asked (a position: its latest event).
    run = await at(read, as_of, queries.get_workflow, workflow_id,
                   now=utcnow() if as_of is None else as_of.time)
    if run is None:
        _not_found(f"workflow {workflow_id!r} not found in pool {read.pool!r}")
    return json_response(run)


@router.get("/v1/workflows/{workflow_id}/status", summary="Where a workflow run is",
            response_model=WorkflowProgress, responses=_NOT_FOUND)
async def workflow_status(workflow_id: str, read: ModelRead, as_of: AsOf) -> Response:
    progress = await at(read, as_of, queries.workflow_status, workflow_id)
    if progress is None:
        _not_found(f"workflow {workflow_id!r} not found in pool {read.pool!r}")
    return json_response(progress)


@router.get("/v1/workflow-definitions", summary="Named workflow definitions and their versions",
            response_model=DefinitionList)
async def list_definitions(read: ModelRead) -> Response:
    return json_response(await queries.list_definitions(read.service.store, read.pool))


@router.get("/v1/workflow-definitions/{name}", summary="A named definition's versions",
            response_model=DefinitionVersions, responses=_NOT_FOUND)
async def get_definition(
    name: str,
    read: ModelRead,
    version: Annotated[str | None, Query(min_length=1, max_length=50,
                                         description="Only this version.")] = None,
) -> Response:
    found = await queries.definition_versions(read.service.store, read.pool, name, version)
    if found is None:
        _not_found(f"workflow definition {name!r} not found in pool {read.pool!r}")
    if not found["versions"]:
        _not_found(f"workflow definition {name!r} has no version {version!r} (latest: {found['latest']!r})")
    return json_response(found)


@router.get("/v1/system/status", summary="The pool at a glance", response_model=SystemStatus)
async def system_status(read: ModelRead) -> Response:
    return json_response(await queries.system_status(read.service.store, read.pool))
