"""The audit reads: ``?as_of=`` on the read endpoints, and ``GET /v1/tasks/{task_id}/history``.

``as_of`` (a log position or an RFC 3339 time, ``services.audit.as_of``) makes a read answer from
the pool's read models as they were then, rebuilt from the log, in the live endpoint's shape: an
endpoint takes the ``AsOf`` dependency and runs its query through ``at``, which runs it on the
live read models without ``as_of`` and on the rebuilt ones with it. A position past the end of the
events log, or a time still to come, is a 409 naming the end (as ``min_position`` past the end);
an ``as_of`` that is no position or time, or lies too far into the log to rebuild on request, a
422. Permissions are the endpoint's own: ``as_of`` reads what the endpoint reads.

This module must never write anything (its rebuilds go to private files, ``services.audit``) and
never compute what ``projections.queries`` or ``services.audit`` compute.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Concatenate, NoReturn, ParamSpec, TypeVar

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from pydantic import BaseModel, Field

from contracts import utcnow
from projections import ProjectionStore, queries
from services.audit import as_of as point_in_time
from services.audit.history import task_history
from services.http.deps import MAX_POSITION, ModelRead, PositionBeyondEnd, ReadScope, ServiceDep
from services.http.errors import error_item, invalid
from services.http.responses import BeyondEnd, Error, EventRecord, ValidationErrors, json_response

__all__ = ["AsOf", "PointInTimeRead", "at", "router"]

P = ParamSpec("P")
T = TypeVar("T")

router = APIRouter(tags=["audit"])

_AS_OF = (
    "Answer as of this point of the log, from the state rebuilt from the events up to it: a position "
    "of the events topic (an event's `position`; an integer, or <partition>:<position> pairs joined by "
    "commas, e.g. 0:41,1:7), the event there included; or an RFC 3339 time (e.g. 2025-05-01T12:00:00Z): "
    "every event stamped at or before it. The answer has the live read's shape. A position past the "
    "end of the log, or a time after now: 409. Not a position or time, or beyond the first "
    f"{point_in_time.MAX_EVENTS} positions of the pool's partition (too far to rebuild on request): 422.")


# --- as_of ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PointInTimeRead:
    """A read asked for as of a point: where rebuilt models are kept, and the point."""

    models: point_in_time.PointInTime
    point: point_in_time.AsOf

    @property
    def time(self) -> datetime | None:
        """The time asked for (None for a position: the read model's own latest event time)."""
        return self.point.time


class _PastTheEnd(PositionBeyondEnd):
    """``as_of`` past the end of the events log: answered 409 like ``min_position`` past its end."""

    def __init__(self, exc: point_in_time.AsOfBeyondEnd) -> None:
        Exception.__init__(self, str(exc))
        self.position, self.partition, self.end = exc.position, exc.partition, exc.end


def _refuse(text: str, type_: str, exc: Exception) -> NoReturn:
    invalid([error_item(("query", "as_of"), type_, str(exc), text)])


async def _point_in_time(
    request: Request,
    service: ServiceDep,
    as_of: Annotated[str | None, Query(min_length=1, max_length=10_000, description=_AS_OF)] = None,
) -> PointInTimeRead | None:
    if as_of is None:
        return None
    try:
        point = point_in_time.parse_as_of(as_of, service.partitions)
    except point_in_time.AsOfError as exc:
        _refuse(as_of, "value_error", exc)
    state = request.app.state
    models: point_in_time.PointInTime | None = getattr(state, "point_in_time", None)
    if models is None:
        models = state.point_in_time = point_in_time.PointInTime()
    return PointInTimeRead(models, point)


AsOf = Annotated[PointInTimeRead | None, Depends(_point_in_time)]


async def at(read: ReadScope, as_of: PointInTimeRead | None,
             query: Callable[Concatenate[ProjectionStore, str, P], Awaitable[T]],
             *args: P.args, **kwargs: P.kwargs) -> T:
    """``query(store, pool, *args, **kwargs)`` on the live read models, or on those as of ``as_of``."""
    if as_of is None:
        return await query(read.service.store, read.pool, *args, **kwargs)
    service, pool = read.service, read.pool

    def on(store: ProjectionStore) -> Awaitable[T]:
        return query(store, pool, *args, **kwargs)

    try:
        return await as_of.models.read(service.log, service.topics.events, service.partition_of(pool), pool,
                                       as_of.point, on, now=utcnow())
    except point_in_time.AsOfBeyondEnd as exc:
        raise _PastTheEnd(exc) from None
    except point_in_time.AsOfError as exc:
        _refuse(as_of.point.text, "value_error", exc)
    except point_in_time.AsOfTooFar as exc:
        _refuse(as_of.point.text, "as_of_too_far", exc)


# --- a task's history -----------------------------------------------------------------------------


class _Doc(BaseModel):
    """A response model: documentation only, never instantiated on the request path."""


class CommandCause(_Doc):
    """The command an event's decision answered (the event's ``causationid`` names it)."""

    id: str
    type: str | None = Field(description="Its command type; null when the commands topic no longer holds it "
                                          "(a rejection still names the type it refused).")
    time: datetime = Field(description="When it was stamped at ingest.")
    source: str | None
    actor: str | None = Field(description="Who sent it: an API token or JWT subject, an agent, or the "
                                          "service's own coordinator, timers, workflows.")
    causationid: str | None = Field(description="What the command names as its own cause.")
    correlationid: str | None
    partition: int = Field(ge=0)
    position: int | None = Field(description="Its position on the commands topic (null when not found).")
    caused_by: int | None = Field(description="The position of the event of this history that its "
                                              "causationid names.")


class DecisionCause(_Doc):
    """The coordinator's choice behind an assignment: the TaskAssigned and its audit."""

    position: int = Field(description="The TaskAssigned's position.")
    agent_id: str
    attempt: int
    capability_gap: list[str]
    audit: dict[str, Any] | None = Field(description="strategy, candidates (agent_id, score, load, capacity, "
                                                     "capability_match, components), eligible, considered, "
                                                     "decision_us, capability_gap, preferred, skipped; null "
                                                     "when the assignment carried none.")


class TimerArming(_Doc):
    """The TimerScheduled that armed a timer."""

    position: int
    time: datetime
    delay_s: float
    due_at: datetime
    attempt: int


class TimerCause(_Doc):
    """A durable timer whose firing made the decision."""

    timer_id: str
    kind: str = Field(description="task_timeout, retry, heartbeat, agent_dead, circuit, defer, ...")
    generation: int
    position: int = Field(description="The TimerFired's position.")
    fired_at: datetime
    task_id: str | None
    agent_id: str | None
    scheduled: TimerArming | None = Field(description="Its arming, when it lies in the part of the log read.")


class Cause(_Doc):
    """What caused an event: its command, and the decision or timer behind that command."""

    command: CommandCause | None
    decision: DecisionCause | None
    timer: TimerCause | None


class HistoryEvent(EventRecord):
    """An event about the task, as ``GET /v1/events`` shows it, with its cause."""

    cause: Cause


class TaskHistory(_Doc):
    """Every event about a task in log order (its own, its timers', costs against it, rejections of
    commands about it), each with what caused it."""

    task_id: str
    pool: str
    partition: int = Field(ge=0)
    events: list[HistoryEvent]
    complete: bool = Field(description="False when the read stopped short of the end of the partition: "
                                       "continue with after=next_after.")
    next_after: int = Field(ge=-1, description="The last position read.")


_HISTORY_RESPONSES: dict[int | str, dict[str, Any]] = {
    404: {"model": Error, "description": "No such task in the pool."},
    409: {"model": BeyondEnd, "description": "min_position is at or past the end of the commands log."},
    422: {"model": ValidationErrors, "description": "An invalid query parameter."},
    503: {"model": Error, "description": "The service is starting, has failed, or cannot reach its log."},
    504: {"model": Error, "description": "min_position: the command was not decided, or its outcome "
                                         "not read into what is read, within 5 s."},
}


@router.get("/v1/tasks/{task_id}/history", response_model=TaskHistory, responses=_HISTORY_RESPONSES,
            summary="A task's events, each with its command, decision and timer")
async def get_task_history(
    task_id: str,
    read: ModelRead,
    after: Annotated[int | None, Query(ge=-1, le=MAX_POSITION - 1, description=(
        "Continue after this position (a previous answer's next_after); default: from the task's "
        "submission."))] = None,
) -> Response:
    task = await queries.get_task(read.service.store, read.pool, task_id)
    if task is None:
        raise HTTPException(404, f"task {task_id!r} not found")
    service = read.service
    submitted = datetime.fromisoformat(task["submitted_at"])
    history = await task_history(service.log, service.topics, service.partition_of(read.pool), read.pool,
                                 task_id, submitted_at=submitted, after=after)
    return json_response(history)
