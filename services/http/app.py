"""The HTTP API: commands in (validated, wrapped, appended to the commands topic), read models out.

Every write validates its body against the contract model (``services.runtime.ingest.parse_command``),
wraps it in a command envelope and appends it; ``?wait=true`` waits for the decider's outcome.
Reads come from the projections (optionally after ``min_position``) and the event log.

This module must never decide anything (only the decider accepts or rejects commands), never
append anything but commands, and never append a command it could not validate: bad input is a
422/413 with nothing appended. The response shapes are a public contract: extend, never rename.
"""

from __future__ import annotations

import contextlib
import csv
import decimal
import io
import re
import xml.etree.ElementTree as ET  # builds only (never parses input): no XXE surface
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Annotated, Any, Literal, NoReturn
from urllib.parse import urlsplit, urlunsplit

import orjson
from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from pydantic import BaseModel, ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from contracts import REGISTRY, Reason, UnknownType, new_id, utcnow
from contracts.base import Command
from events.codec import DecodeError, envelope_dict, from_dict, from_record
from events.log import LogError
from projections import queries
from services.runtime.embedded import Runner
from services.runtime.ingest import command_envelope, parse_command
from services.runtime.service import Service
from services.runtime.settings import Settings

__all__ = ["BodyLimitMiddleware", "JSONBytesResponse", "create_app"]

# Outcome waits are capped so a stuck decider cannot hold a connection for ever.
DEFAULT_WAIT_S = 10.0
MAX_WAIT_S = 60.0
# How long a read waits for the projector to reach ``min_position`` before answering 504.
READ_WAIT_S = 5.0
# /v1/events stops scanning after this many records per request, so a filter that matches
# nothing cannot make one request read the whole log; the client continues from next_after.
EVENTS_SCAN_CAP = 50_000
MAX_ID = 200  # ids, pools and idempotency keys: the envelope caps them at 200 characters

# Commands that create an entity answer 201 when applied; every other applied command 200.
CREATED = frozenset({"RegisterAgent", "SubmitTask", "AllocateResources", "RecordCost"})
# Rejections meaning "the id in the request names nothing": 404 rather than 409.
NOT_FOUND = frozenset({Reason.UNKNOWN_AGENT, Reason.UNKNOWN_TASK, Reason.UNKNOWN_ALLOCATION})
# Keys of a write body that belong to the envelope, never to the payload.
ENVELOPE_KEYS = ("pool", "command_id")
_REF = "#/components/schemas/{model}"
_WRITE_TAGS: list[str | Enum] = ["commands"]
_READ_TAGS: list[str | Enum] = ["reads"]


# --- responses ----------------------------------------------------------------------------------


def _default(value: Any) -> Any:
    # orjson handles datetimes, tuples and dicts itself; these are the stragglers.
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, set | frozenset):
        return sorted(value)
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, BaseException):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


class JSONBytesResponse(Response):
    """JSON rendered by orjson: datetimes become RFC 3339 strings, tuples arrays."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, default=_default, option=orjson.OPT_NON_STR_KEYS)


def _json(content: Any, status_code: int = 200) -> JSONBytesResponse:
    return JSONBytesResponse(content, status_code=status_code)


# --- body size limit ----------------------------------------------------------------------------


class BodyTooLarge(Exception):
    """The request body went past the configured limit while it was being received."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body is larger than {limit} bytes")
        self.limit = limit


class BodyLimitMiddleware:
    """Answer 413 for bodies over ``max_bytes`` before they are read whole.

    Checks Content-Length up front and counts streamed chunks (chunked transfer has no length),
    so an oversized upload costs at most ``max_bytes`` of memory.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    await _send_error(send, 400, "invalid Content-Length header")
                    return
                if length > self.max_bytes:
                    await _send_error(send, 413, f"request body is larger than {self.max_bytes} bytes")
                    return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge as exc:
            if started:
                raise
            await _send_error(send, 413, str(exc))


async def _send_error(send: Send, status: int, detail: str) -> None:
    body = orjson.dumps({"detail": detail})
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
    })
    await send({"type": "http.response.body", "body": body})


# --- request bodies -----------------------------------------------------------------------------


def _invalid(errors: list[dict[str, Any]]) -> NoReturn:
    raise RequestValidationError(errors)


def _error(loc: tuple[str | int, ...], type_: str, msg: str, input_: Any = None) -> dict[str, Any]:
    return {"type": type_, "loc": list(loc), "msg": msg, "input": input_}


def _field_errors(exc: ValidationError, prefix: tuple[str | int, ...]) -> list[dict[str, Any]]:
    """Pydantic errors as FastAPI's 422 items, with ``ctx`` values made JSON-safe."""
    out = []
    for err in exc.errors(include_url=False):
        item: dict[str, Any] = {
            "type": err["type"],
            "loc": [*prefix, *err["loc"]],
            "msg": err["msg"],
            "input": err.get("input"),
        }
        if "ctx" in err:
            # A model validator's ctx holds the ValueError itself, which is not JSON.
            item["ctx"] = {k: v if isinstance(v, str | int | float | bool | None) else str(v)
                           for k, v in err["ctx"].items()}
        out.append(item)
    return out


async def _body(request: Request, *, required: bool) -> dict[str, Any]:
    """The JSON object body; {} when it is optional and empty. 422 when not a JSON object."""
    raw = await request.body()
    if not raw.strip():
        if required:
            _invalid([_error(("body",), "missing", "a JSON object body is required")])
        return {}
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        _invalid([{
            "type": "json_invalid",
            "loc": ["body", exc.pos],
            "msg": f"JSON decode error: {exc.msg} (line {exc.lineno}, column {exc.colno})",
            "input": {},
            "ctx": {"error": exc.msg},
        }])
    if not isinstance(obj, dict):
        _invalid([_error(("body",), "dict_type", "the request body must be a JSON object",
                         type(obj).__name__)])
    return obj


def _id_value(value: Any, loc: tuple[str | int, ...]) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_ID:
        _invalid([_error(loc, "string_type", f"must be a string of 1 to {MAX_ID} characters", value)])
    return value


def _parse(type_name: str, data: dict[str, Any], prefix: tuple[str | int, ...],
           type_loc: tuple[str | int, ...] = ("body", "type")) -> Command:
    """``parse_command`` with its failures as 422 items located at ``prefix`` / ``type_loc``."""
    try:
        return parse_command(type_name, data)
    except UnknownType:
        _invalid([_error(type_loc, "unknown_command_type", f"unknown command type {type_name!r}", type_name)])
    except ValidationError as exc:
        _invalid(_field_errors(exc, prefix))
    except ValueError as exc:  # an event type sent as a command
        _invalid([_error(type_loc, "not_a_command", str(exc), type_name)])


# --- the service behind the API -----------------------------------------------------------------


# --- writes -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WriteOptions:
    """Query and header options shared by every write."""

    wait: bool
    timeout: float
    pool: str | None
    idempotency_key: str | None
    actor: str | None
    correlation_id: str | None


# Dependencies are ``async def`` on purpose: FastAPI runs plain ``def`` dependencies in its
# thread pool, two thread hops per request that cut HTTP throughput several times over.
async def _write_options(
    wait: Annotated[bool, Query(description="Wait for the decider's outcome (events or rejection).")] = False,
    timeout: Annotated[float, Query(gt=0, le=MAX_WAIT_S, description="Seconds to wait with wait=true.")] = (
        DEFAULT_WAIT_S
    ),
    pool: Annotated[str | None, Query(min_length=1, max_length=MAX_ID,
                                      description="Pool, when the body does not name one.")] = None,
    idempotency_key: Annotated[str | None, Header(
        alias="Idempotency-Key", min_length=1, max_length=MAX_ID,
        description="Command id; a repeat returns the first outcome.")] = None,
    actor: Annotated[str | None, Header(alias="X-Agentbus-Actor", max_length=MAX_ID)] = None,
    correlation_id: Annotated[str | None, Header(alias="X-Correlation-Id", max_length=MAX_ID)] = None,
) -> WriteOptions:
    return WriteOptions(wait, timeout, pool, idempotency_key, actor, correlation_id)


Write = Annotated[WriteOptions, Depends(_write_options)]


async def _runner(request: Request) -> Service:
    runner: Service | None = getattr(request.app.state, "runner", None)
    if runner is None:
        raise HTTPException(503, "agentbus is starting")
    return runner


Run = Annotated[Service, Depends(_runner)]


async def _submit(runner: Service, opts: WriteOptions, cmd: Command, *, pool: str | None,
                  command_id: str | None, source: str = "urn:agentbus:api",
                  correlation_id: str | None = None, causation_id: str | None = None,
                  actor: str | None = None) -> JSONBytesResponse:
    """Append ``cmd`` and answer 202, or with wait=true its outcome (201/200, 409/404, 202 pending)."""
    if runner.failure is not None:
        raise HTTPException(503, f"agentbus has failed: {runner.failure}")
    # The header wins: clients retry with the same key whatever they put in the body.
    cid = opts.idempotency_key or command_id or new_id()
    env = command_envelope(cmd, pool=pool or opts.pool or "default", command_id=cid, source=source,
                           actor=opts.actor or actor, correlation_id=opts.correlation_id or correlation_id,
                           causation_id=causation_id)
    partition, position, duplicate = await runner.submit(env)
    accepted = {"command_id": cid, "status": "accepted", "partition": partition, "position": position,
                "duplicate": duplicate}
    if not opts.wait:
        return _json(accepted, 202)
    ref = await runner.outcomes.wait(cid, opts.timeout)
    if ref is None:
        return _json({**accepted, "status": "pending"}, 202)
    events = [{"position": off, "partition": ref.partition, **envelope_dict(ev)}
              for off, ev in await runner.outcome_events(ref)]
    if len(events) == 1 and events[0]["type"] == "CommandRejected":
        data = events[0]["data"]
        body = {"command_id": cid, "status": "rejected", "code": data["code"], "message": data["message"],
                "details": data.get("details", {}), "duplicate": duplicate, "events": events}
        return _json(body, 404 if data["code"] in NOT_FOUND else 409)
    status = 201 if env.type in CREATED else 200
    return _json({"command_id": cid, "status": "applied", "duplicate": duplicate, "events": events}, status)


async def _write(request: Request, runner: Service, opts: WriteOptions, type_name: str, *,
                 required: bool = True, path: Mapping[str, str] | None = None,
                 id_field: str | None = None) -> JSONBytesResponse:
    """An entity endpoint: envelope keys out of the body, path ids in, validate, submit."""
    body = await _body(request, required=required)
    pool = _id_value(body.pop("pool"), ("body", "pool")) if "pool" in body else None
    command_id = _id_value(body.pop("command_id"), ("body", "command_id")) if "command_id" in body else None
    for name, value in (path or {}).items():
        if name in body and body[name] != value:
            _invalid([_error(("body", name), "value_error",
                             f"{name} {body[name]!r} differs from the path's {value!r}", body[name])])
        body[name] = value
    if id_field is not None and body.get(id_field) is None:
        body[id_field] = new_id()
    cmd = _parse(type_name, body, ("body",))
    return await _submit(runner, opts, cmd, pool=pool, command_id=command_id)


async def _command(request: Request, runner: Service, opts: WriteOptions) -> JSONBytesResponse:
    """POST /v1/commands: ``{type, data, pool?, command_id?}`` or a structured CloudEvent."""
    body = await _body(request, required=True)
    if "specversion" in body:
        return await _cloudevent(runner, opts, body)
    extra = sorted(set(body) - {"type", "data", *ENVELOPE_KEYS})
    if extra:
        _invalid([_error(("body", k), "extra_forbidden", "Extra inputs are not permitted", body[k])
                  for k in extra])
    type_name = body.get("type")
    if not isinstance(type_name, str) or not type_name:
        _invalid([_error(("body", "type"), "missing", "a command type name is required", type_name)])
    data = body.get("data", {})
    if not isinstance(data, dict):
        _invalid([_error(("body", "data"), "dict_type", "data must be a JSON object", data)])
    pool = _id_value(body["pool"], ("body", "pool")) if "pool" in body else None
    command_id = _id_value(body["command_id"], ("body", "command_id")) if "command_id" in body else None
    cmd = _parse(type_name, data, ("body", "data"))
    return await _submit(runner, opts, cmd, pool=pool, command_id=command_id)


async def _cloudevent(runner: Service, opts: WriteOptions, obj: dict[str, Any]) -> JSONBytesResponse:
    """A structured-mode CloudEvents command: its id is the command id, its pool the envelope's."""
    if obj.get("specversion") != "1.0":
        _invalid([_error(("body", "specversion"), "value_error",
                         "only CloudEvents specversion 1.0 is supported", obj.get("specversion"))])
    type_name = obj.get("type")
    contract = REGISTRY.get(type_name) if isinstance(type_name, str) else None
    if contract is None:
        _invalid([_error(("body", "type"), "unknown_command_type", f"unknown command type {type_name!r}",
                         type_name)])
    if contract.kind != "command":
        _invalid([_error(("body", "type"), "not_a_command",
                         f"{type_name!r} is an event; only commands may be sent", type_name)])
    # Ingest stamps the time (deciders take time from the envelope); a client's time is optional.
    obj = {**obj, "time": obj.get("time") or _now_iso()}
    try:
        env = from_dict(obj)
    except DecodeError as exc:
        cause = exc.__cause__
        if isinstance(cause, ValidationError):
            envelope_level = str(exc).startswith("invalid envelope")
            prefix: tuple[str | int, ...] = ("body",) if envelope_level else ("body", "data")
            _invalid(_field_errors(cause, prefix))
        _invalid([_error(("body",), "value_error", str(exc))])
    cmd = env.data
    assert isinstance(cmd, Command)
    return await _submit(runner, opts, cmd, pool=env.pool, command_id=env.id, source=env.source,
                         correlation_id=env.correlationid, causation_id=env.causationid, actor=env.actor)


def _now_iso() -> str:
    return utcnow().isoformat()


# --- OpenAPI request bodies ---------------------------------------------------------------------

_ENVELOPE_PROPS: dict[str, Any] = {
    "pool": {"type": "string", "minLength": 1, "maxLength": MAX_ID, "default": "default",
             "description": "The pool (partition key) of the command; not part of the payload."},
    "command_id": {"type": "string", "minLength": 1, "maxLength": MAX_ID,
                   "description": "Idempotency key; the Idempotency-Key header wins over it."},
}


def _request_body(type_name: str, *, optional: tuple[str, ...] = (), drop: tuple[str, ...] = (),
                  required: bool = True) -> dict[str, Any]:
    """``openapi_extra`` documenting the body as the contract model's JSON Schema plus envelope keys."""
    schema = REGISTRY[type_name].model.model_json_schema(ref_template=_REF)
    schema.pop("$defs", None)  # nested models are published once under components (_component_schemas)
    props = {k: v for k, v in schema.get("properties", {}).items() if k not in drop}
    schema["properties"] = {**props, **_ENVELOPE_PROPS}
    schema["required"] = [r for r in schema.get("required", []) if r not in optional and r not in drop]
    if not schema["required"]:
        del schema["required"]
    return {"requestBody": {"content": {"application/json": {"schema": schema}}, "required": required}}


def _commands_body() -> dict[str, Any]:
    generic = {
        "title": "Command",
        "type": "object",
        "properties": {
            "type": {"type": "string", "enum": sorted(c.name for c in REGISTRY.contracts("command"))},
            "data": {"type": "object", "description": "The payload, validated as the named command."},
            **_ENVELOPE_PROPS,
        },
        "required": ["type"],
        "additionalProperties": False,
    }
    cloudevent = {
        "title": "CloudEvent",
        "type": "object",
        "description": "Structured-mode CloudEvents 1.0 command; id = command id, pool = envelope pool.",
        "properties": {
            "specversion": {"const": "1.0"},
            "id": {"type": "string", "minLength": 1, "maxLength": MAX_ID},
            "source": {"type": "string"},
            "type": {"type": "string"},
            "pool": {"type": "string"},
            "data": {"type": "object"},
        },
        "required": ["specversion", "id", "type"],
    }
    return {"requestBody": {"content": {"application/json": {"schema": {"oneOf": [generic, cloudevent]}}},
                            "required": True}}


def _component_schemas() -> dict[str, Any]:
    """Every contract type's schema, so the request bodies' nested $refs resolve."""
    out: dict[str, Any] = {}
    for contract in REGISTRY.contracts():
        schema = contract.model.model_json_schema(ref_template=_REF)
        out.update(schema.pop("$defs", {}))
        out[contract.name] = schema
    return out


# --- reads --------------------------------------------------------------------------------------

Pool = Annotated[str, Query(min_length=1, max_length=MAX_ID, description="The pool to read.")]
MinPosition = Annotated[int | None, Query(
    ge=-1, description="Wait (up to 5 s) until the read model has applied this events position.")]


async def _caught_up(runner: Service, pool: str, min_position: int | None) -> None:
    if min_position is None or min_position < 0:
        return
    ok = await runner.store.wait_for_position(runner.topics.events, runner.partition_of(pool), min_position,
                                              timeout=READ_WAIT_S)
    if not ok:
        raise HTTPException(504, f"read model has not reached position {min_position} yet")


def _redact(url: str) -> str:
    """``url`` without its password: health is often exposed to monitoring."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _not_found(what: str, key: str) -> NoReturn:
    raise HTTPException(404, f"{what} {key!r} not found")


# --- assignment audit exports -------------------------------------------------------------------

ExportFormat = Literal["json", "csv", "xml"]
CSV_TYPE = "text/csv; charset=utf-8"
XML_TYPE = "application/xml"
# Per assignment, then per candidate; score components follow as component_<name> columns.
_ASSIGNMENT_COLUMNS = ("pool", "position", "task_id", "agent_id", "attempt", "strategy", "eligible",
                       "considered", "decision_us", "capability_gap", "preferred", "skipped", "assigned_at",
                       "event_id")
_CANDIDATE_COLUMNS = ("candidate_rank", "candidate_agent_id", "candidate_chosen", "candidate_score",
                      "candidate_load", "candidate_capacity", "candidate_capability_match")
# Characters XML 1.0 cannot carry even escaped (ids are client-chosen strings).
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return ";".join(str(v) for v in value)
    if isinstance(value, dict):
        return ";".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def assignments_csv(items: list[dict[str, Any]]) -> str:
    """One row per candidate (a row with empty candidate columns when there were none)."""
    components = sorted({name for item in items for cand in item.get("candidates") or ()
                         for name in (cand.get("components") or {})})
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow([*_ASSIGNMENT_COLUMNS, *_CANDIDATE_COLUMNS, *(f"component_{c}" for c in components)])
    for item in items:
        head = [_cell(item.get(col)) for col in _ASSIGNMENT_COLUMNS]
        candidates = item.get("candidates") or []
        if not candidates:
            writer.writerow(head + [""] * (len(_CANDIDATE_COLUMNS) + len(components)))
        for rank, cand in enumerate(candidates, 1):
            parts = cand.get("components") or {}
            chosen = str(cand.get("agent_id") == item.get("agent_id")).lower()
            writer.writerow([
                *head, rank, _cell(cand.get("agent_id")), chosen,
                _cell(cand.get("score")), _cell(cand.get("load")), _cell(cand.get("capacity")),
                _cell(cand.get("capability_match")), *(_cell(parts.get(c)) for c in components),
            ])
    return out.getvalue()


def _xml_text(value: Any) -> str:
    return _NOT_XML.sub("\ufffd", _cell(value))


def assignments_xml(items: list[dict[str, Any]], pool: str) -> bytes:
    """``<assignments><assignment ...><candidate ...><component .../></candidate></assignment>``."""
    root = ET.Element("assignments", pool=_xml_text(pool), count=str(len(items)))
    for item in items:
        attrs = {col: _xml_text(item.get(col)) for col in _ASSIGNMENT_COLUMNS
                 if col not in ("capability_gap", "preferred", "skipped") and item.get(col) is not None}
        node = ET.SubElement(root, "assignment", attrs)
        for name, key in (("capability_gap", "capability_gap"), ("preferred", "preferred")):
            values = item.get(key) or []
            if values:
                group = ET.SubElement(node, name)
                for cap in values:
                    ET.SubElement(group, "capability").text = _xml_text(cap)
        for reason, count in (item.get("skipped") or {}).items():
            ET.SubElement(node, "skipped", reason=_xml_text(reason), count=_xml_text(count))
        for rank, cand in enumerate(item.get("candidates") or [], 1):
            c_attrs = {"rank": str(rank),
                       "chosen": str(cand.get("agent_id") == item.get("agent_id")).lower(),
                       **{k: _xml_text(cand.get(k)) for k in ("agent_id", "score", "load", "capacity",
                                                              "capability_match") if cand.get(k) is not None}}
            c_node = ET.SubElement(node, "candidate", c_attrs)
            for name, value in (cand.get("components") or {}).items():
                ET.SubElement(c_node, "component", name=_xml_text(name), value=_xml_text(value))
    return bytes(ET.tostring(root, encoding="utf-8", xml_declaration=True))


def _download(content: str | bytes, media_type: str, filename: str) -> Response:
    return Response(content, media_type=media_type,
                    headers={"content-disposition": f'inline; filename="{filename}"'})


# --- the app ------------------------------------------------------------------------------------


def create_app(service: Service | None = None, settings: Settings | None = None,
               open_service: Callable[[Settings], Service] | None = None) -> FastAPI:
    """The FastAPI app on a running ``service``; without one its lifespan starts (and stops)
    ``open_service(settings)`` (default: the embedded ``Runner``)."""
    runner = service
    if settings is None:
        settings = runner.settings if runner is not None else Settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if runner is not None:
            yield
            return
        own: Service = open_service(settings) if open_service is not None else Runner(settings)
        app.state.runner = own
        # serve sets this hook to stop the server when a worker dies after startup.
        hook: Callable[[BaseException], Awaitable[None] | None] | None = getattr(
            app.state, "on_runner_failure", None)
        own.on_failure = hook
        try:
            await own.start()
            await own.ready()
        except BaseException as exc:
            app.state.startup_error = exc
            await own.stop()
            raise
        try:
            yield
        finally:
            await own.stop()

    app = FastAPI(
        title="agentbus",
        version="0.1.0",
        summary="Event-sourced control plane for fleets of AI agents",
        description="Writes append commands (202, or the outcome with ?wait=true); reads come from the "
                    "read models. Pass min_position (an events position) to read your own writes.",
        default_response_class=JSONBytesResponse,
        lifespan=lifespan,
    )
    app.state.runner = runner
    app.state.settings = settings
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    _routes(app)

    components = _component_schemas()

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, summary=app.summary,
                                 description=app.description, routes=app.routes)
            schema.setdefault("components", {}).setdefault("schemas", {}).update(components)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.exception_handler(BodyTooLarge)
    async def _too_large(request: Request, exc: BodyTooLarge) -> JSONBytesResponse:
        return _json({"detail": str(exc)}, 413)

    @app.exception_handler(LogError)
    async def _log_error(request: Request, exc: LogError) -> JSONBytesResponse:
        # A corrupt or unreachable log is the server's problem, named precisely, never hidden.
        return _json({"detail": str(exc)}, 503)

    return app


def _routes(app: FastAPI) -> None:
    # -- agents --

    @app.post("/v1/agents", summary="Register an agent", status_code=202, tags=_WRITE_TAGS,
              openapi_extra=_request_body("RegisterAgent", optional=("agent_id",)))
    async def register_agent(request: Request, runner: Run, opts: Write) -> Response:
        return await _write(request, runner, opts, "RegisterAgent", id_field="agent_id")

    @app.post("/v1/agents/{agent_id}/heartbeat", summary="Report an agent alive",
              status_code=202, tags=_WRITE_TAGS,
              openapi_extra=_request_body("AgentHeartbeat", drop=("agent_id",), required=False))
    async def heartbeat(agent_id: str, request: Request, runner: Run, opts: Write) -> Response:
        return await _write(request, runner, opts, "AgentHeartbeat", required=False,
                            path={"agent_id": agent_id})

    @app.delete("/v1/agents/{agent_id}", summary="Deregister an agent", status_code=202, tags=_WRITE_TAGS)
    async def deregister_agent(agent_id: str, request: Request, runner: Run, opts: Write,
                               reason: Annotated[str | None, Query(max_length=1000)] = None) -> Response:
        cmd = _parse("DeregisterAgent", {"agent_id": agent_id, "reason": reason}, ("path",))
        return await _submit(runner, opts, cmd, pool=None, command_id=None)

    # -- tasks --

    @app.post("/v1/tasks", summary="Submit a task", status_code=202, tags=_WRITE_TAGS,
              openapi_extra=_request_body("SubmitTask", optional=("task_id",)))
    async def submit_task(request: Request, runner: Run, opts: Write) -> Response:
        return await _write(request, runner, opts, "SubmitTask", id_field="task_id")

    for action, type_name, body_required in (
        ("start", "StartTask", False),
        ("complete", "CompleteTask", False),
        ("fail", "FailTask", False),
        ("cancel", "CancelTask", False),
    ):
        _task_action(app, action, type_name, body_required)

    # -- resources --

    @app.put("/v1/resources/limits", summary="Set the pool's resource limits",
             status_code=202, tags=_WRITE_TAGS,
             openapi_extra=_request_body("SetResourceLimits"))
    async def set_limits(request: Request, runner: Run, opts: Write) -> Response:
        return await _write(request, runner, opts, "SetResourceLimits")

    @app.post("/v1/resources/allocations", summary="Allocate resources to an agent",
              status_code=202, tags=_WRITE_TAGS,
              openapi_extra=_request_body("AllocateResources", optional=("allocation_id",)))
    async def allocate(request: Request, runner: Run, opts: Write) -> Response:
        return await _write(request, runner, opts, "AllocateResources", id_field="allocation_id")

    @app.delete("/v1/resources/allocations/{allocation_id}", summary="Release an allocation",
                status_code=202, tags=_WRITE_TAGS)
    async def release(allocation_id: str, runner: Run, opts: Write) -> Response:
        cmd = _parse("ReleaseResources", {"allocation_id": allocation_id}, ("path",))
        return await _submit(runner, opts, cmd, pool=None, command_id=None)

    # -- costs --

    @app.post("/v1/costs", summary="Record a model call's cost", status_code=202, tags=_WRITE_TAGS,
              openapi_extra=_request_body("RecordCost", optional=("cost_id",)))
    async def record_cost(request: Request, runner: Run, opts: Write) -> Response:
        return await _write(request, runner, opts, "RecordCost", id_field="cost_id")

    @app.put("/v1/budgets", summary="Set a budget",
             status_code=202, tags=_WRITE_TAGS, openapi_extra=_request_body("SetBudget"))
    async def set_budget(request: Request, runner: Run, opts: Write) -> Response:
        return await _write(request, runner, opts, "SetBudget")

    # -- coordination policy --

    @app.put("/v1/pools/policy", summary="Replace the pool's coordination policy",
             status_code=202, tags=_WRITE_TAGS,
             openapi_extra=_request_body("SetPoolPolicy", required=False))
    async def set_pool_policy(request: Request, runner: Run, opts: Write) -> Response:
        return await _write(request, runner, opts, "SetPoolPolicy", required=False)

    @app.put("/v1/rate-limits", summary="Set an agent's or a model's token buckets",
             status_code=202, tags=_WRITE_TAGS, openapi_extra=_request_body("SetRateLimit"))
    async def set_rate_limit(request: Request, runner: Run, opts: Write) -> Response:
        return await _write(request, runner, opts, "SetRateLimit")

    @app.put("/v1/scaling/policies", summary="Set the scaling policy of an agent kind",
             status_code=202, tags=_WRITE_TAGS, openapi_extra=_request_body("SetScalingPolicy"))
    async def set_scaling_policy(request: Request, runner: Run, opts: Write) -> Response:
        return await _write(request, runner, opts, "SetScalingPolicy")

    # -- any command --

    @app.post("/v1/commands", summary="Send any command by type name, or as a CloudEvent",
              status_code=202, tags=_WRITE_TAGS,
              openapi_extra=_commands_body())
    async def send_command(request: Request, runner: Run, opts: Write) -> Response:
        return await _command(request, runner, opts)

    # -- reads --

    @app.get("/v1/agents", summary="List agents", tags=_READ_TAGS)
    async def list_agents(runner: Run, pool: Pool = "default", min_position: MinPosition = None,
                          status: Annotated[str | None, Query(max_length=20)] = None) -> Response:
        await _caught_up(runner, pool, min_position)
        return _json({"items": await queries.list_agents(runner.store, pool, status=status)})

    @app.get("/v1/agents/{agent_id}", summary="One agent", tags=_READ_TAGS)
    async def get_agent(agent_id: str, runner: Run, pool: Pool = "default",
                        min_position: MinPosition = None) -> Response:
        await _caught_up(runner, pool, min_position)
        agent = await queries.get_agent(runner.store, pool, agent_id)
        if agent is None:
            _not_found("agent", agent_id)
        return _json(agent)

    @app.get("/v1/agents/{agent_id}/performance", summary="An agent's performance profile",
             tags=_READ_TAGS)
    async def agent_performance(agent_id: str, runner: Run, pool: Pool = "default",
                                min_position: MinPosition = None) -> Response:
        await _caught_up(runner, pool, min_position)
        profile = await queries.agent_performance(runner.store, pool, agent_id)
        if profile is None:
            _not_found("agent", agent_id)
        return _json(profile)

    @app.get("/v1/tasks", summary="List tasks, a page at a time", tags=_READ_TAGS)
    async def list_tasks(
        runner: Run, pool: Pool = "default", min_position: MinPosition = None,
        status: Annotated[str | None, Query(max_length=20)] = None,
        agent_id: Annotated[str | None, Query(max_length=MAX_ID)] = None,
        type: Annotated[str | None, Query(max_length=200)] = None,
        page: Annotated[int, Query(ge=1)] = 1,
        page_size: Annotated[int, Query(ge=1, le=500)] = 50,
    ) -> Response:
        await _caught_up(runner, pool, min_position)
        return _json(await queries.list_tasks(runner.store, pool, status=status, agent_id=agent_id, type=type,
                                              page=page, page_size=page_size))

    @app.get("/v1/tasks/{task_id}", summary="One task", tags=_READ_TAGS)
    async def get_task(task_id: str, runner: Run, pool: Pool = "default",
                       min_position: MinPosition = None) -> Response:
        await _caught_up(runner, pool, min_position)
        task = await queries.get_task(runner.store, pool, task_id)
        if task is None:
            _not_found("task", task_id)
        return _json(task)

    @app.get("/v1/resources", summary="Limits, allocations and what is free", tags=_READ_TAGS)
    async def get_resources(runner: Run, pool: Pool = "default",
                            min_position: MinPosition = None) -> Response:
        await _caught_up(runner, pool, min_position)
        return _json(await queries.resources(runner.store, pool))

    @app.get("/v1/costs/summary", summary="Spend and budgets", tags=_READ_TAGS)
    async def cost_summary(runner: Run, pool: Pool = "default", min_position: MinPosition = None) -> Response:
        await _caught_up(runner, pool, min_position)
        return _json(await queries.cost_summary(runner.store, pool))

    @app.get("/v1/audit/assignments", summary="Assignment audit trail (JSON, CSV or XML)", tags=_READ_TAGS,
             responses={200: {"content": {"application/json": {}, CSV_TYPE: {}, XML_TYPE: {}}}})
    async def audit_assignments(
        runner: Run, pool: Pool = "default", min_position: MinPosition = None,
        task_id: Annotated[str | None, Query(max_length=MAX_ID)] = None,
        agent_id: Annotated[str | None, Query(max_length=MAX_ID)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        after: Annotated[int | None, Query(description="Last position seen, for paging.")] = None,
        format: Annotated[ExportFormat, Query(
            description="json (default); csv: one row per candidate; xml: <assignments>.")] = "json",
    ) -> Response:
        await _caught_up(runner, pool, min_position)
        items = await queries.assignments(runner.store, pool, task_id=task_id, agent_id=agent_id, limit=limit,
                                          after=after)
        if format == "csv":
            return _download(assignments_csv(items), CSV_TYPE, "assignments.csv")
        if format == "xml":
            return _download(assignments_xml(items, pool), XML_TYPE, "assignments.xml")
        return _json({"items": items})

    # -- coordination reads --

    @app.get("/v1/scaling/policies", summary="Scaling policies by agent kind", tags=_READ_TAGS)
    async def get_scaling_policies(runner: Run, pool: Pool = "default",
                                   min_position: MinPosition = None) -> Response:
        await _caught_up(runner, pool, min_position)
        return _json(await queries.scaling_policies(runner.store, pool))

    @app.get("/v1/scaling/decisions", summary="Scaling decisions in log order", tags=_READ_TAGS)
    async def get_scaling_decisions(
        runner: Run, pool: Pool = "default", min_position: MinPosition = None,
        agent_kind: Annotated[str | None, Query(max_length=100)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        after: Annotated[int | None, Query(description="Last position seen, for paging.")] = None,
    ) -> Response:
        await _caught_up(runner, pool, min_position)
        return _json(await queries.scaling_decisions(runner.store, pool, agent_kind=agent_kind, limit=limit,
                                                     after=after))

    @app.get("/v1/metrics/load-balancing", summary="Per-agent load and how even it is", tags=_READ_TAGS)
    async def get_load_balancing(runner: Run, pool: Pool = "default",
                                 min_position: MinPosition = None) -> Response:
        await _caught_up(runner, pool, min_position)
        return _json(await queries.load_balancing(runner.store, pool))

    @app.get("/v1/capacity", summary="Fleet capacity, bottlenecks and recommendations", tags=_READ_TAGS)
    async def get_capacity(runner: Run, pool: Pool = "default", min_position: MinPosition = None) -> Response:
        await _caught_up(runner, pool, min_position)
        return _json(await queries.capacity(runner.store, pool))

    @app.get("/v1/timers", summary="Durable timers (pending by default)", tags=_READ_TAGS)
    async def get_timers(
        runner: Run, pool: Pool = "default", min_position: MinPosition = None,
        status: Annotated[str, Query(max_length=20,
                                     description="pending, fired, cancelled or all.")] = "pending",
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> Response:
        await _caught_up(runner, pool, min_position)
        timers = await queries.list_timers(runner.store, pool, status=None if status == "all" else status,
                                           limit=limit)
        return _json({"items": timers} if isinstance(timers, list) else timers)

    @app.get("/v1/audit/rejections", summary="Rejected commands", tags=_READ_TAGS)
    async def audit_rejections(
        runner: Run, pool: Pool = "default", min_position: MinPosition = None,
        command_id: Annotated[str | None, Query(max_length=MAX_ID)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        after: Annotated[int | None, Query(description="Last position seen, for paging.")] = None,
    ) -> Response:
        await _caught_up(runner, pool, min_position)
        items = await queries.rejections(runner.store, pool, command_id=command_id, limit=limit, after=after)
        return _json({"items": items})

    @app.get("/v1/events", summary="The pool's events from the log", tags=_READ_TAGS)
    async def list_events(
        runner: Run, pool: Pool = "default", min_position: MinPosition = None,
        after: Annotated[int, Query(ge=-1, description="Exclusive position to read after.")] = -1,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        type: Annotated[str | None, Query(max_length=200)] = None,
        subject: Annotated[str | None, Query(max_length=MAX_ID)] = None,
    ) -> Response:
        partition = runner.partition_of(pool)
        if min_position is not None and min_position >= 0:
            # The log itself is read here, so wait for the record, not for the projector.
            if not await runner.log.wait(runner.topics.events, partition, min_position, READ_WAIT_S):
                raise HTTPException(504, f"log has not reached position {min_position} yet")
        items: list[dict[str, Any]] = []
        offset, scanned, next_after = after + 1, 0, after
        # Pools share partitions and filters skip records: scan on until the page is full.
        while len(items) < limit and scanned < EVENTS_SCAN_CAP:
            batch = await runner.log.read(runner.topics.events, partition, offset, max(limit, 500))
            if not batch:
                break
            for rec in batch:
                next_after = rec.offset
                scanned += 1
                if rec.key != pool:  # the record key is the pool: skip other pools without decoding
                    continue
                env = from_record(rec)
                if (type is None or env.type == type) and (subject is None or env.subject == subject):
                    items.append({"position": rec.offset, "partition": partition, **envelope_dict(env)})
                    if len(items) >= limit:
                        break
            offset = batch[-1].offset + 1
        return _json({"items": items, "next_after": next_after})

    @app.get("/v1/health", summary="Liveness and readiness", tags=_READ_TAGS)
    async def health(runner: Run) -> Response:
        body: dict[str, Any] = {
            "status": "ok",
            "log": _redact(runner.log.url),
            "database": _redact(runner.store.url),
            "partitions": runner.partitions,
            **runner.readiness(),
            "outcomes": len(runner.outcomes),
        }
        if runner.failure is not None:
            return _json({**body, "status": "failed", "error": str(runner.failure)}, 503)
        return _json(body)


def _task_action(app: FastAPI, action: str, type_name: str, body_required: bool) -> None:
    """POST /v1/tasks/{task_id}/<action>: the task id from the path, the rest from the body."""

    async def endpoint(task_id: str, request: Request, runner: Run, opts: Write) -> Response:
        return await _write(request, runner, opts, type_name, required=body_required,
                            path={"task_id": task_id})

    endpoint.__name__ = f"{action}_task"
    app.post(f"/v1/tasks/{{task_id}}/{action}", summary=f"{action.capitalize()} a task",
             status_code=202, tags=_WRITE_TAGS,
             openapi_extra=_request_body(type_name, drop=("task_id",), required=body_required))(endpoint)
