"""The workflow write endpoints: start a run, cancel it, signal it, store a named definition.

``POST /v1/workflows`` takes a definition as users write it, as JSON or YAML (``Content-Type:
application/yaml``), in one of three forms: ``{"definition": {...}, "inputs": {...}}``; the
definition file itself with the inputs in the ``inputs`` query parameter; or ``{"definition":
"<stored name>", "version": ...}``. Before anything is appended, every problem of the request is
found and answered at once as a 422 located in the document the client sent: field errors, the
definition's structural problems (``contracts.workflows.definition_problems``), the inputs'
problems and steps pinned to agents the pool does not have. ``check_definition`` and
``load_document`` live in ``workflow_documents`` (pure; ``agentbus workflow validate`` uses them).

Cancel and signal are plain commands. ``PUT /v1/workflow-definitions/{name}`` waits for the
decision by default, since its answer (201 stored, 200 unchanged, 409 a version never changes)
is the decision.

This module must never decide anything (the decider accepts or rejects every command), never
append a command it could not validate, and never append anything for a request it answers 4xx.
"""

from __future__ import annotations

import dataclasses
import email.message
from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Body, HTTPException, Path, Query, Request, Response
from fastapi.routing import APIRoute
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    TypeAdapter,
    ValidationError,
)

from contracts import Reason, new_id, utcnow
from contracts.base import Command
from contracts.commands import CancelWorkflow, RegisterWorkflowDefinition, SignalWorkflow, StartWorkflow
from contracts.values import Id, JSONObject, Text
from contracts.workflows import (
    MAX_WORKFLOW_ID,
    StepName,
    Version,
    WorkflowDefinition,
    WorkflowName,
)
from events.codec import envelope_dict
from projections import workflows as wf_queries
from services.http import deps
from services.http.bodies import MAX_ID, EnvelopeId, JSONObjectRequest, PoolName
from services.http.deps import ServiceDep, Write, WriteOptions
from services.http.errors import NotAnObject, error_item, field_errors, invalid
from services.http.responses import (
    Accepted,
    Error,
    EventRecord,
    JSONBytesResponse,
    Outcome,
    Rejection,
    ValidationErrors,
    json_response,
)
from services.http.workflow_documents import (
    Checked,
    check_definition,
    inputs_problems,
    load_document,
    refuse_duplicate_keys,
)
from services.http.writes import submit
from services.runtime.service import Service

__all__ = ["YAML_TYPES", "Checked", "check_definition", "load_document", "router"]

Loc = tuple[str | int, ...]

# Content types read as YAML; every other body is JSON, as everywhere else in the API.
YAML_TYPES = frozenset({"application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml"})
# Rejections meaning "the id or name in the path names nothing": 404 rather than 409.
NOT_FOUND = frozenset({Reason.UNKNOWN_WORKFLOW, Reason.UNKNOWN_STEP})
def _media_type(headers: list[tuple[bytes, bytes]]) -> str:
    for name, value in headers:
        if name == b"content-type":
            message = email.message.Message()
            message["content-type"] = value.decode("latin-1")
            return message.get_content_type()
    return ""


class DocumentRequest(JSONObjectRequest):
    """A request whose body is one object, read as YAML when its Content-Type says YAML, else as
    JSON whatever the Content-Type (as every body of the API)."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            if _media_type(self.scope["headers"]) not in YAML_TYPES:
                obj = await super().json()
                refuse_duplicate_keys(await self.body(), obj)  # as a document read from a file
                return obj
            obj = load_document(await self.body(), as_yaml=True)
            if not isinstance(obj, dict):
                raise NotAnObject("null" if obj is None else type(obj).__name__)
            self._json = obj
        return self._json


class DocumentRoute(APIRoute):
    """A route that reads its body with ``DocumentRequest``."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def document_handler(request: Request) -> Response:
            return await handler(DocumentRequest(request.scope, request.receive))

        return document_handler


# --- what the read models know --------------------------------------------------------------------


async def _stored_definition(service: Service, pool: str, name: str, version: str | None) -> dict[str, Any]:
    """The snapshot of a stored definition; 404 when the pool has none of that name (and version).

    A version, once stored, never changes, so one found is the one; the latest may have been
    stored a moment ago, so it is looked up once the read models hold every decision made."""
    if version is None:
        await deps.projected_so_far(service, pool)
    snapshot = await wf_queries.definition_snapshot(service.store, pool, name, version)
    if snapshot is None and version is not None:
        await deps.projected_so_far(service, pool)
        snapshot = await wf_queries.definition_snapshot(service.store, pool, name, version)
    if snapshot is None:
        which = f"{name!r}" if version is None else f"{name!r} version {version!r}"
        raise HTTPException(404, f"no workflow definition {which} is stored in pool {pool!r}; store one with "
                                 f"PUT /v1/workflow-definitions/{name}")
    return snapshot


async def _agent_problems(service: Service, pool: str, checked: Checked, prefix: Loc) -> list[dict[str, Any]]:
    """A 422 item for each step pinned (``agent_name``) to no agent of the pool, by id or name, nor
    to an executor the workflow brings (``agents:``)."""
    defn = checked.readable
    if defn is None:
        return []
    own = {a.name for a in defn.agents}
    pinned = [(i, s.agent_name) for i, s in enumerate(defn.tasks)
              if i not in checked.broken_steps and s.agent_name is not None and s.agent_name not in own]
    if not pinned:
        return []
    # Agents come and go: asked once the read models hold every decision made (a few ms).
    await deps.projected_so_far(service, pool)
    missing = {name for name in {name for _, name in pinned}
               if not await wf_queries.agent_exists(service.store, pool, name)}
    return [error_item((*prefix, "tasks", i, "agent_name"), "unknown_agent",
                       f"no agent with id or name {name!r} is registered in pool {pool!r}", name)
            for i, name in pinned if name in missing]


# --- sending a command and answering its decision -------------------------------------------------


async def _append(service: Service, opts: WriteOptions, cmd: Command, *, pool: str | None,
                  command_id: str | None, generated: str | None = None) -> dict[str, Any]:
    """Append ``cmd`` (see ``writes.submit``) without waiting: its 202 document."""
    resp = await submit(service, dataclasses.replace(opts, wait=False), cmd, pool=pool, command_id=command_id,
                        generated=generated)
    accepted: dict[str, Any] = orjson.loads(resp.body)
    return accepted


async def _decision(service: Service, accepted: dict[str, Any],
                    timeout: float) -> list[dict[str, Any]] | None:
    """The events the command of ``accepted`` was decided into ([]: decided, and it changed
    nothing), or None when it was not decided within ``timeout`` seconds."""
    cid = accepted["command_id"]
    ref = service.outcomes.get(cid)
    if ref is None:
        if await service.wait_decided(accepted["partition"], accepted["position"], timeout) is None:
            return None
        ref = service.outcomes.get(cid)
        if ref is None:
            return []
    return [{"position": off, "partition": ref.partition, **envelope_dict(ev)}
            for off, ev in await service.outcome_events(ref)]


def _rejection(accepted: dict[str, Any], events: list[dict[str, Any]]) -> JSONBytesResponse | None:
    """The answer to a rejected command (404 when the path names nothing, else 409), or None."""
    if len(events) != 1 or events[0]["type"] != "CommandRejected":
        return None
    data = events[0]["data"]
    body = {"command_id": accepted["command_id"], "status": "rejected", "code": data["code"],
            "message": data["message"], "details": data.get("details", {}),
            "partition": accepted["partition"], "position": accepted["position"],
            "duplicate": accepted["duplicate"], "events": events}
    return json_response(body, 404 if data["code"] in NOT_FOUND else 409)


async def _answer(service: Service, opts: WriteOptions, accepted: dict[str, Any]) -> JSONBytesResponse:
    """202 with ``accepted``; with wait=true the decision: 200 and its events, 404/409 and the
    rejection, or 202 "pending"."""
    if not opts.wait:
        return json_response(accepted, 202)
    events = await _decision(service, accepted, opts.timeout)
    if events is None:
        return json_response({**accepted, "status": "pending"}, 202)
    applied = {**accepted, "status": "applied", "events": events}
    return _rejection(accepted, events) or json_response(applied, 200)


# --- documents of the API -------------------------------------------------------------------------


class _Doc(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


ExecutionId = Annotated[Id, Field(max_length=MAX_WORKFLOW_ID,
                                  description=f"The run's id (at most {MAX_WORKFLOW_ID} characters); "
                                              "default: a new time-ordered id.")]
_POOL = Field(None, description="The pool the run belongs to (default: ?pool, else 'default').")
_COMMAND_ID = Field(None, description="Idempotency key; the Idempotency-Key header wins over it.")


class StartWithDefinition(_Doc):
    """Start a run of the definition given here."""

    definition: WorkflowDefinition
    inputs: JSONObject = Field(default_factory=dict, description="The run's inputs, by declared name.")
    execution_id: ExecutionId | None = None
    pool: PoolName | None = _POOL
    command_id: EnvelopeId | None = _COMMAND_ID


class StartStored(_Doc):
    """Start a run of a stored definition (PUT /v1/workflow-definitions/{name})."""

    definition: WorkflowName = Field(description="The stored definition's name.")
    version: Version | None = Field(None, description="Its version (default: the one stored last).")
    inputs: JSONObject = Field(default_factory=dict, description="The run's inputs, by declared name.")
    execution_id: ExecutionId | None = None
    pool: PoolName | None = _POOL
    command_id: EnvelopeId | None = _COMMAND_ID


class SignalBody(_Doc):
    """The data a signal carries: the signal step's result."""

    data: JSONObject = Field(default_factory=dict)
    pool: PoolName | None = _POOL
    command_id: EnvelopeId | None = _COMMAND_ID


class StartAccepted(_Doc):
    """The run is on its way: its start is on the log (decided with wait=true)."""

    execution_id: str | None = Field(description="The run's id. Null only for a retried request whose "
                                                 "first start is not decided yet and named no id.")
    name: str
    version: str
    status: Literal["queued"] = Field(description="The run's status: queued until its first step starts.")
    created_at: datetime
    total_tasks: int = Field(ge=1)
    command_id: str
    command_status: Literal["accepted", "pending"] = Field(
        description="accepted: on the log; pending: wait=true timed out before the decision.")
    partition: int = Field(ge=0)
    position: int = Field(ge=0, description="Pass as min_position to read the run (GET /v1/workflows/{id}).")
    duplicate: bool


class StartApplied(StartAccepted):
    """wait=true: the run started; the events of its start."""

    command_status: Literal["applied"]  # type: ignore[assignment]
    events: list[EventRecord]


class DefinitionStored(_Doc):
    """The definition is stored (201), or was already, with the same content (200)."""

    command_id: str
    status: Literal["applied", "unchanged"]
    name: str
    version: str
    digest: str | None = Field(description="SHA-256 of the stored snapshot (null when unchanged).")
    partition: int = Field(ge=0)
    position: int = Field(ge=0)
    duplicate: bool
    events: list[EventRecord]


def _accept_object(value: Any) -> Any:
    return value


# Bodies read as plain objects (each endpoint checks its own, so that every problem is listed)
# and documented as the models they are checked against.
StartDocument = Annotated[dict[str, Any], PlainValidator(
    _accept_object, json_schema_input_type=StartWithDefinition | StartStored | WorkflowDefinition)]
DefinitionDocument = Annotated[dict[str, Any], PlainValidator(_accept_object,
                                                              json_schema_input_type=WorkflowDefinition)]
SignalDocument = Annotated[dict[str, Any], PlainValidator(_accept_object, json_schema_input_type=SignalBody)]


def _yaml_too(*components: str) -> dict[str, Any]:
    """``openapi_extra`` documenting a YAML body of the same schema as the JSON one."""
    refs = [{"$ref": f"#/components/schemas/{c}"} for c in components]
    schema = refs[0] if len(refs) == 1 else {"anyOf": refs}
    return {"requestBody": {"content": {t: {"schema": schema} for t in sorted(YAML_TYPES)}}}


router = APIRouter(tags=["workflows"], route_class=DocumentRoute, strict_content_type=False, responses={
    400: {"model": Error, "description": "The Content-Length header is not a number."},
    413: {"model": Error, "description": "The body is larger than the configured limit."},
    422: {"model": ValidationErrors, "description": "Invalid input, every problem located; nothing was "
                                                    "appended."},
    503: {"model": Error, "description": "The service is starting, has failed, or cannot reach its log."},
})

PathId = Annotated[Id, Path(min_length=1, max_length=MAX_ID, description="The run's execution_id.")]
_REJECTED = {"model": Rejection, "description": "wait=true: the decider rejected the command."}
_NO_RUN = {"model": Rejection, "description": "wait=true: no such run (UNKNOWN_WORKFLOW) or signal step "
                                              "(UNKNOWN_STEP)."}


# --- POST /v1/workflows ---------------------------------------------------------------------------


_WORKFLOW_NAME: TypeAdapter[str] = TypeAdapter(WorkflowName)
_VERSION: TypeAdapter[str | None] = TypeAdapter(Version | None)
_INPUTS: TypeAdapter[dict[str, Any]] = TypeAdapter(JSONObject)
_EXECUTION_ID: TypeAdapter[str | None] = TypeAdapter(ExecutionId | None)
_ENVELOPE_ID: TypeAdapter[str | None] = TypeAdapter(EnvelopeId | None)
_POOL_NAME: TypeAdapter[str | None] = TypeAdapter(PoolName | None)
_START_KEYS = frozenset(StartStored.model_fields)
_BROKEN = object()  # a field that broke its rule (its problem is listed)


def _checked(adapter: TypeAdapter[Any], value: Any, loc: Loc, problems: list[dict[str, Any]]) -> Any:
    """``value`` validated by ``adapter``; ``_BROKEN``, with its problems listed, when it breaks a rule."""
    try:
        return adapter.validate_python(value)
    except ValidationError as exc:
        problems.extend(field_errors(exc, loc))
        return _BROKEN


@dataclasses.dataclass
class _StartRequest:
    """What a start request asks for, each part located where the client wrote it."""

    doc: Any  # the definition document, or the name of a stored one
    def_loc: Loc
    version: Any = None
    inputs: Any = dataclasses.field(default_factory=dict)
    inputs_loc: Loc = ("body",)
    execution_id: Any = None
    pool: Any = None
    command_id: Any = None


def _start_request(body: dict[str, Any], inputs: str | None, execution_id: str | None,
                   problems: list[dict[str, Any]]) -> _StartRequest:
    """The parts of a start request in either form, their field problems listed in ``problems``."""
    if "definition" not in body:  # the body is the definition itself
        req = _StartRequest(body, ("body",), inputs_loc=("query",))
        if inputs is not None:
            try:
                req.inputs = _checked(_INPUTS, orjson.loads(inputs), ("query", "inputs"), problems)
            except orjson.JSONDecodeError as exc:
                problems.append(error_item(("query", "inputs"), "json_invalid",
                                           f"inputs is not JSON: {exc.msg} (column {exc.colno})", inputs))
                req.inputs = _BROKEN
        req.execution_id = _checked(_EXECUTION_ID, execution_id, ("query", "execution_id"), problems)
        return req
    for key, value in (("inputs", inputs), ("execution_id", execution_id)):
        if value is not None:
            problems.append(error_item(("query", key), "value_error",
                                       f"{key} belongs in the body here; the query parameter is for a body "
                                       "that is the definition itself", value))
    problems.extend(error_item(("body", key), "extra_forbidden", "Extra inputs are not permitted", body[key])
                    for key in body if key not in _START_KEYS)
    return _StartRequest(
        body["definition"], ("body", "definition"),
        version=_checked(_VERSION, body.get("version"), ("body", "version"), problems),
        inputs=_checked(_INPUTS, body.get("inputs", {}), ("body", "inputs"), problems),
        execution_id=_checked(_EXECUTION_ID, body.get("execution_id"), ("body", "execution_id"), problems),
        pool=_checked(_POOL_NAME, body.get("pool"), ("body", "pool"), problems),
        command_id=_checked(_ENVELOPE_ID, body.get("command_id"), ("body", "command_id"), problems))


@router.post(
    "/v1/workflows", summary="Start a workflow run", status_code=202, response_model=StartAccepted,
    response_description="Accepted: the run's start is on the log (or still pending when wait=true timed "
                         "out).",
    responses={201: {"model": StartApplied, "description": "wait=true: the run started."},
               404: {"model": Error, "description": "No stored definition of that name (and version)."},
               409: _REJECTED},
    openapi_extra=_yaml_too("StartWithDefinition", "StartStored", "WorkflowDefinition"),
)
async def start_workflow(
    body: Annotated[StartDocument, Body(description=(
        'JSON, or YAML with Content-Type application/yaml: {"definition": {...}, "inputs": {...}}; '
        'or {"definition": "<stored name>", "version": "..."}; or the definition itself, with the '
        "inputs in the `inputs` query parameter."))],
    service: ServiceDep, opts: Write,
    inputs: Annotated[str | None, Query(max_length=1_000_000, description=(
        "The inputs as a JSON object, when the body is the definition itself."))] = None,
    execution_id: Annotated[str | None, Query(description=(
        "The run's id, when the body is the definition itself."))] = None,
) -> Response:
    """Every problem of the request is answered at once (422), located in the document sent."""
    problems: list[dict[str, Any]] = []
    req = _start_request(body, inputs, execution_id, problems)
    pool_known = req.pool is not _BROKEN
    pool = (req.pool if pool_known else None) or opts.pool or "default"

    doc = req.doc
    if isinstance(doc, str):  # a stored definition
        name = _checked(_WORKFLOW_NAME, doc, req.def_loc, problems)
        if name is _BROKEN or req.version is _BROKEN or not pool_known:
            invalid(problems)
        try:
            doc = await _stored_definition(service, pool, name, req.version)
        except HTTPException as exc:
            if not problems:
                raise
            invalid([*problems, error_item(req.def_loc, "unknown_definition", str(exc.detail), name)])
    elif not isinstance(doc, dict):
        invalid([*problems, error_item(req.def_loc, "definition_type", "definition must be an object (the "
                                       "definition) or a string (the name of a stored definition)", doc)])
    elif req.version not in (None, _BROKEN):
        problems.append(error_item(("body", "version"), "value_error",
                                   "version picks a stored definition (definition: \"<name>\"); the version "
                                   "of a definition given here is its own version field", req.version))

    checked = check_definition(doc, req.def_loc)
    problems.extend(checked.problems)
    if req.inputs is not _BROKEN:
        problems.extend(inputs_problems(checked, req.inputs, req.inputs_loc))
    if pool_known:
        problems.extend(await _agent_problems(service, pool, checked, req.def_loc))
    if problems:
        invalid(problems)
    assert checked.definition is not None
    defn = checked.definition
    run_inputs: dict[str, Any] = req.inputs
    run_id: str | None = req.execution_id
    command_id: str | None = req.command_id

    generated = None
    if run_id is None:
        run_id, generated = new_id(), "workflow_id"
    try:
        cmd = StartWorkflow(workflow_id=run_id, definition=defn, inputs=run_inputs)
    except ValidationError as exc:
        invalid(field_errors(exc, req.inputs_loc))
    created_at = utcnow()
    accepted = await _append(service, opts, cmd, pool=pool, command_id=command_id, generated=generated)
    run: dict[str, Any] = {"execution_id": run_id, "name": defn.name, "version": defn.version,
                           "status": "queued", "created_at": created_at, "total_tasks": len(defn.tasks)}
    token = {"command_id": accepted["command_id"], "partition": accepted["partition"],
             "position": accepted["position"], "duplicate": accepted["duplicate"]}
    if not opts.wait and not accepted["duplicate"]:
        return json_response({**run, **token, "command_status": "accepted"}, 202)
    # A retry answers the run its first request started (whose id may have been generated).
    events = await _decision(service, accepted, opts.timeout)
    if events is None:
        if generated is not None and accepted["duplicate"]:
            run["execution_id"] = None
        return json_response({**run, **token, "command_status": "pending"}, 202)
    rejected = _rejection(accepted, events)
    if rejected is not None:
        return rejected
    started = next((e for e in events if e["type"] == "WorkflowStarted"), None)
    if started is not None:
        data = started["data"]
        run.update(execution_id=data["workflow_id"], name=data["name"], version=data["version"],
                   created_at=started["time"], total_tasks=data["total_tasks"])
    if not opts.wait:
        return json_response({**run, **token, "command_status": "accepted"}, 202)
    return json_response({**run, **token, "command_status": "applied", "events": events}, 201)


# --- cancel and signal ----------------------------------------------------------------------------


@router.delete("/v1/workflows/{workflow_id}", summary="Cancel a workflow run", status_code=202,
               response_model=Accepted, response_description="Accepted: on the log, not yet decided.",
               responses={200: {"model": Outcome, "description": "wait=true: cancelled; its events."},
                          404: _NO_RUN,
                          409: {"model": Rejection, "description": "wait=true: the run has ended "
                                                                   "(INVALID_WORKFLOW_STATE)."}})
async def cancel_workflow(workflow_id: PathId, service: ServiceDep, opts: Write,
                          reason: Annotated[Text | None, Query(max_length=1000)] = None) -> Response:
    """Its open steps are cancelled, those not started skipped; the run ends ``cancelled``."""
    accepted = await _append(service, opts, CancelWorkflow(workflow_id=workflow_id, reason=reason),
                             pool=None, command_id=None)
    return await _answer(service, opts, accepted)


@router.post("/v1/workflows/{workflow_id}/signals/{name}", summary="Signal a workflow run", status_code=202,
             response_model=Accepted, response_description="Accepted: on the log, not yet decided.",
             responses={200: {"model": Outcome, "description": "wait=true: delivered; its events."},
                        404: _NO_RUN,
                        409: {"model": Rejection, "description": "wait=true: the run has ended, or this "
                                                                 "signal was received already."}},
             openapi_extra=_yaml_too("SignalBody"))
async def signal_workflow(workflow_id: PathId,
                          name: Annotated[StepName, Path(description="The signal step.")],
                          service: ServiceDep, opts: Write,
                          body: Annotated[SignalDocument | None, Body()] = None) -> Response:
    """Completes the signal step ``name`` with ``data`` as its result (kept until the step waits,
    when it comes early)."""
    try:
        signal = SignalBody.model_validate(body or {})
    except ValidationError as exc:
        invalid(field_errors(exc, ("body",)))
    cmd = SignalWorkflow(workflow_id=workflow_id, name=name, data=signal.data)
    accepted = await _append(service, opts, cmd, pool=signal.pool, command_id=signal.command_id)
    return await _answer(service, opts, accepted)


# --- PUT /v1/workflow-definitions/{name} ----------------------------------------------------------


@router.put(
    "/v1/workflow-definitions/{name}", summary="Store a named workflow definition version", status_code=201,
    response_model=DefinitionStored, response_description="Stored: this version is new.",
    responses={200: {"model": DefinitionStored, "description": "This version was stored with the same "
                                                               "content already; nothing changed."},
               202: {"model": Accepted, "description": "wait=false, or the decision took longer than "
                                                       "?timeout: on the log, not yet decided."},
               409: {"model": Rejection, "description": "This version is stored with other content "
                                                        "(DEFINITION_EXISTS): a version never changes."}},
    openapi_extra=_yaml_too("WorkflowDefinition"),
)
async def put_definition(
    name: Annotated[WorkflowName, Path(description="The definition's name (its `name` field).")],
    body: Annotated[DefinitionDocument, Body(description="The definition, as JSON or YAML "
                                                         "(Content-Type application/yaml).")],
    request: Request, service: ServiceDep, opts: Write,
) -> Response:
    """Waits for the decision unless wait=false: 201 stored, 200 unchanged, 409 exists."""
    problems = []
    if "name" in body and body["name"] != name:
        problems.append(error_item(("body", "name"), "value_error",
                                   f"name {body['name']!r} differs from the path's {name!r}", body["name"]))
    checked = check_definition({**body, "name": name}, ("body",))
    if problems or checked.definition is None:
        invalid(problems + checked.problems)
    assert checked.definition is not None
    if "wait" not in request.query_params:
        opts = dataclasses.replace(opts, wait=True)
    accepted = await _append(service, opts, RegisterWorkflowDefinition(definition=checked.definition),
                             pool=None, command_id=None)
    if not opts.wait:
        return json_response(accepted, 202)
    events = await _decision(service, accepted, opts.timeout)
    if events is None:
        return json_response({**accepted, "status": "pending"}, 202)
    rejected = _rejection(accepted, events)
    if rejected is not None:
        return rejected
    stored = next((e for e in events if e["type"] == "WorkflowDefinitionRegistered"), None)
    body_out = {"command_id": accepted["command_id"], "status": "applied" if stored else "unchanged",
                "name": checked.definition.name, "version": checked.definition.version,
                "digest": stored["data"]["digest"] if stored else None, "partition": accepted["partition"],
                "position": accepted["position"], "duplicate": accepted["duplicate"], "events": events}
    return json_response(body_out, 201 if stored else 200)
