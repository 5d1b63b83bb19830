"""The write endpoints: each validates a command, wraps it in an envelope and appends it.

A write answers 202 with the command id and its log position, or with ``?wait=true`` the
decider's outcome: 201/200 and the events, 409 (404 when the id in the request names nothing)
and the rejection, or 202 "pending" when the wait ran out. The entity endpoints are rows of
``ENDPOINTS``: adding a command to the API is adding a row.

This module must never decide anything (only the decider accepts or rejects commands), never
append anything but commands, and never append a command it could not validate: bad input is a
422 (or 413) with nothing appended.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException, Path, Query, Response

from contracts import SYSTEM_POOL, Reason, new_id
from contracts.base import Command
from contracts.commands import DeregisterAgent, ReleaseResources
from contracts.system_commands import SYSTEM_COMMANDS
from contracts.values import Id, Text
from events.codec import envelope_dict
from services.http.bodies import MAX_ID, JSONBodyRoute, body_model, command_from, command_model
from services.http.commands import CommandRequest, parse_any_command
from services.http.deps import ServiceDep, Write, WriteOptions
from services.http.errors import error_item, invalid
from services.http.permissions import authorize_command
from services.http.responses import (
    Accepted,
    Error,
    JSONBytesResponse,
    Outcome,
    Rejection,
    ValidationErrors,
    json_response,
)
from services.runtime.ingest import command_envelope
from services.runtime.outcomes import KeyReused, command_digest
from services.runtime.service import Service

__all__ = ["ENDPOINTS", "router", "submit"]

# Commands that create an entity answer 201 when applied; every other applied command 200.
CREATED = frozenset({"RegisterAgent", "SubmitTask", "AllocateResources", "RecordCost"})
# Rejections meaning "the id in the request names nothing": 404 rather than 409.
NOT_FOUND = frozenset({Reason.UNKNOWN_AGENT, Reason.UNKNOWN_TASK, Reason.UNKNOWN_ALLOCATION})

# strict_content_type=False with JSONBodyRoute: every body is JSON, whatever its Content-Type.
router = APIRouter(tags=["commands"], route_class=JSONBodyRoute, strict_content_type=False, responses={
    400: {"model": Error, "description": "The Content-Length header is not a number."},
    404: {"model": Rejection, "description": "wait=true: rejected because an id in the request "
                                             "names no agent, task or allocation."},
    409: {"model": Rejection, "description": "wait=true: the decider rejected the command."},
    413: {"model": Error, "description": "The body is larger than the configured limit."},
    422: {"model": ValidationErrors, "description": "Invalid input, or an Idempotency-Key (command_id) "
                                                    "already used with another request "
                                                    "(type idempotency_key_reused); nothing was appended."},
    503: {"model": Error, "description": "The service is starting, has failed, or cannot reach its log."},
})


def _applied(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": Outcome, "description": "wait=true: applied; the events it appended."}
            for status in statuses}


_ACCEPTED = "Accepted: on the log, not yet decided (or still pending when wait=true timed out)."


async def submit(service: Service, opts: WriteOptions, cmd: Command, *, pool: str | None,
                 command_id: str | None, source: str = "urn:agentbus:api",
                 correlation_id: str | None = None, causation_id: str | None = None,
                 actor: str | None = None, generated: str | None = None) -> JSONBytesResponse:
    """Append ``cmd`` and answer 202, or with wait=true its outcome (201/200, 409/404, 202 pending).

    ``generated`` names the id field the API made up because the body left it out: a retry makes
    up another, so it is not part of what the client asked for (the command's digest).
    A command id seen before with another digest is refused (422, nothing appended); with the
    same, the first outcome is answered and nothing is appended.
    """
    if service.failure is not None:
        raise HTTPException(503, f"agentbus has failed: {service.failure}")
    if opts.principal is not None:  # raises Forbidden (403); an agent's report is made in its name
        cmd, generated = authorize_command(opts.principal, cmd, generated)
    # The header wins: clients retry with the same key whatever they put in the body.
    cid = opts.idempotency_key or command_id or new_id()
    named = pool
    pool = pool or opts.pool or "default"
    contract = type(cmd).__name__
    if pool == SYSTEM_POOL and not isinstance(cmd, SYSTEM_COMMANDS):
        invalid([error_item(("body" if named else "query", "pool"), "pool_reserved",
                            f"the pool {SYSTEM_POOL!r} holds the deployment's own settings (tokens, webhook "
                            f"sources, subscriptions, audit checkpoints): a {contract} goes to another pool",
                            pool)])
    payload = cmd.__pydantic_serializer__.to_json(cmd, exclude={generated} if generated else None)
    digest = command_digest(contract, pool, payload)
    try:
        ref, seen = service.outcomes.admit(cid, digest)
    except KeyReused as exc:
        where = ("header", "Idempotency-Key") if opts.idempotency_key else ("body", "command_id")
        invalid([error_item(where, "idempotency_key_reused", str(exc), cid)])
    position = -1
    if ref is not None and not service.log.dedupes_ids:
        # A retry of a decided command: its outcome stands, and a log that cannot refuse a repeated
        # id would store it again. Any decided position is a token that reads reflect it with.
        partition, position, duplicate = ref.partition, await service.decided_position(ref.partition), True
    if position < 0:
        env = command_envelope(cmd, pool=pool, command_id=cid, source=source, actor=opts.actor or actor,
                               correlation_id=opts.correlation_id or correlation_id,
                               causation_id=causation_id, digest=digest)
        try:
            partition, position, duplicate = await service.submit(env)
        except BaseException:
            if not seen:
                service.outcomes.forget(cid)
            raise
        duplicate = duplicate or seen
    token = {"partition": partition, "position": position}
    accepted = {"command_id": cid, "status": "accepted", **token, "duplicate": duplicate}
    if not opts.wait:
        return json_response(accepted, 202)
    ref = await service.outcomes.wait(cid, opts.timeout)
    if ref is None:
        return json_response({**accepted, "status": "pending"}, 202)
    events = [{"position": off, "partition": ref.partition, **envelope_dict(ev)}
              for off, ev in await service.outcome_events(ref)]
    if len(events) == 1 and events[0]["type"] == "CommandRejected":
        data = events[0]["data"]
        body = {"command_id": cid, "status": "rejected", "code": data["code"], "message": data["message"],
                "details": data.get("details", {}), **token, "duplicate": duplicate, "events": events}
        return json_response(body, 404 if data["code"] in NOT_FOUND else 409)
    status = 201 if contract in CREATED else 200
    return json_response({"command_id": cid, "status": "applied", **token, "duplicate": duplicate,
                          "events": events}, status)


# --- entity endpoints ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A write whose JSON body is one command's payload (plus ``pool`` and ``command_id``)."""

    method: str
    path: str
    command: str
    summary: str
    generated: str | None = None  # the id made up when the body leaves it out
    path_id: str | None = None  # the id the path names (the body may repeat it, never contradict it)
    body_required: bool = True


ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("POST", "/v1/agents", "RegisterAgent", "Register an agent", generated="agent_id"),
    Endpoint("POST", "/v1/agents/{agent_id}/heartbeat", "AgentHeartbeat", "Report an agent alive",
             path_id="agent_id", body_required=False),
    Endpoint("POST", "/v1/tasks", "SubmitTask", "Submit a task", generated="task_id"),
    Endpoint("POST", "/v1/tasks/{task_id}/start", "StartTask", "Start a task", path_id="task_id",
             body_required=False),
    Endpoint("POST", "/v1/tasks/{task_id}/complete", "CompleteTask", "Complete a task", path_id="task_id",
             body_required=False),
    Endpoint("POST", "/v1/tasks/{task_id}/fail", "FailTask", "Fail a task", path_id="task_id",
             body_required=False),
    Endpoint("POST", "/v1/tasks/{task_id}/cancel", "CancelTask", "Cancel a task", path_id="task_id",
             body_required=False),
    Endpoint("PUT", "/v1/resources/limits", "SetResourceLimits", "Set the pool's resource limits"),
    Endpoint("POST", "/v1/resources/allocations", "AllocateResources", "Allocate resources to an agent",
             generated="allocation_id"),
    Endpoint("POST", "/v1/costs", "RecordCost", "Record a model call's cost", generated="cost_id"),
    Endpoint("PUT", "/v1/budgets", "SetBudget", "Set a budget"),
    Endpoint("PUT", "/v1/pools/policy", "SetPoolPolicy", "Replace the pool's coordination policy",
             body_required=False),
    Endpoint("PUT", "/v1/rate-limits", "SetRateLimit", "Set an agent's or a model's token buckets"),
    Endpoint("PUT", "/v1/scaling/policies", "SetScalingPolicy", "Set the scaling policy of an agent kind"),
    Endpoint("PUT", "/v1/prices", "SetPrices", "Change the pool's model prices (merged into its table)"),
)

# The contract's id rules (no '/', no control characters...): a bad id is a 422, never a 500.
PathId = Annotated[Id, Path(min_length=1, max_length=MAX_ID)]


def _entity_endpoint(spec: Endpoint) -> Callable[..., Awaitable[Response]]:
    """The endpoint function of ``spec``, with the signature FastAPI reads its inputs from."""
    contract = command_model(spec.command)
    model = body_model(spec.command, generated=spec.generated, path=spec.path_id)
    # An optional body left out: every field at its default.
    empty = None if spec.body_required else model()

    async def endpoint(*, service: Service, opts: WriteOptions, body: Command | None = None,
                       **path: str) -> Response:
        if body is None:
            assert empty is not None  # FastAPI passes no None for a required body
            body = empty
        values: dict[str, Any] = {}
        for name, value in path.items():
            if name in body.model_fields_set and getattr(body, name) != value:
                sent = getattr(body, name)
                invalid([error_item(("body", name), "value_error",
                                    f"{name} {sent!r} differs from the path's {value!r}", sent)])
            values[name] = value
        generated = None
        if spec.generated is not None and getattr(body, spec.generated) is None:
            values[spec.generated] = new_id()
            generated = spec.generated
        cmd = command_from(body, contract, **values)
        return await submit(service, opts, cmd, pool=body.pool, command_id=body.command_id,  # type: ignore[attr-defined]
                            generated=generated)

    kw = inspect.Parameter.KEYWORD_ONLY
    params = [inspect.Parameter("service", kw, annotation=ServiceDep),
              inspect.Parameter("opts", kw, annotation=Write)]
    if spec.path_id is not None:
        params.append(inspect.Parameter(spec.path_id, kw, annotation=PathId))
    params.append(inspect.Parameter("body", kw, annotation=Annotated[model, Body()],
                                    default=inspect.Parameter.empty if spec.body_required else None))
    endpoint.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    endpoint.__name__ = endpoint.__qualname__ = _snake(spec.command)
    return endpoint


def _snake(name: str) -> str:
    return "".join(f"_{ch.lower()}" if ch.isupper() else ch for ch in name).lstrip("_")


for _spec in ENDPOINTS:
    router.add_api_route(
        _spec.path, _entity_endpoint(_spec), methods=[_spec.method], summary=_spec.summary,
        status_code=202, response_model=Accepted, response_description=_ACCEPTED,
        responses=_applied(201 if _spec.command in CREATED else 200),
    )


# --- writes without a body ----------------------------------------------------------------------


@router.delete("/v1/agents/{agent_id}", summary="Deregister an agent", status_code=202,
               response_model=Accepted, response_description=_ACCEPTED, responses=_applied(200))
async def deregister_agent(agent_id: PathId, service: ServiceDep, opts: Write,
                           reason: Annotated[Text | None, Query(max_length=1000)] = None) -> Response:
    return await submit(service, opts, DeregisterAgent(agent_id=agent_id, reason=reason), pool=None,
                        command_id=None)


@router.delete("/v1/resources/allocations/{allocation_id}", summary="Release an allocation",
               status_code=202, response_model=Accepted, response_description=_ACCEPTED,
               responses=_applied(200))
async def release(allocation_id: PathId, service: ServiceDep, opts: Write) -> Response:
    return await submit(service, opts, ReleaseResources(allocation_id=allocation_id), pool=None,
                        command_id=None)


# --- any command --------------------------------------------------------------------------------


@router.post("/v1/commands", summary="Send any command by type name, or as a CloudEvent", status_code=202,
             response_model=Accepted, response_description=_ACCEPTED, responses=_applied(200, 201))
async def send_command(body: Annotated[CommandRequest, Body()], service: ServiceDep, opts: Write) -> Response:
    cmd, options = parse_any_command(body)
    return await submit(service, opts, cmd, **{"pool": None, "command_id": None, **options})
