"""Request bodies: one model per write, generated from the contract registry, and how bodies are read.

An entity endpoint's body is its command's contract model plus the envelope keys ``pool`` and
``command_id`` (never part of the payload). An id the server generates when absent is optional;
an id that comes from the path is left out of the document and, when sent anyway, must equal the
path's. FastAPI validates requests against these models and documents them from them, so the
OpenAPI document is exact by construction: bounds, enums, nested models and all.
(``POST /v1/commands``, whose body names its command, is ``services.http.commands``.)

Every body is a JSON object, whatever its Content-Type says, decoded by orjson.

This module must never accept a body the contract model would refuse, and never touch the service.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Coroutine
from typing import Annotated, Any, TypeVar, cast

import orjson
from fastapi import Request, Response
from fastapi.routing import APIRoute
from pydantic import BeforeValidator, Field, ValidationError, create_model
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import PydanticCustomError
from starlette.datastructures import Headers

from contracts import DEFAULT_POOL, REGISTRY, Command
from contracts.values import id_problem, text_problem
from services.http.errors import NotAnObject, field_errors, invalid

__all__ = [
    "MAX_ID",
    "EnvelopeId",
    "JSONBodyRoute",
    "JSONObjectRequest",
    "PoolName",
    "body_model",
    "command_from",
    "command_id_field",
    "command_model",
    "inline_request_bodies",
    "pool_field",
    "pool_problem",
]

MAX_ID = 200  # ids, pools and idempotency keys: the envelope caps them at 200 characters
C = TypeVar("C", bound=Command)


# --- reading a body -----------------------------------------------------------------------------


class JSONObjectRequest(Request):
    """A request whose body is read as one JSON object by orjson, whatever its Content-Type."""

    @property
    def headers(self) -> Headers:
        # FastAPI reads a body as JSON only when Content-Type says so or is absent; this API has
        # always read every body as JSON, so the content type is kept from the body parser.
        if not hasattr(self, "_headers"):
            self._headers = Headers(raw=[(k, v) for k, v in self.scope["headers"] if k != b"content-type"])
        return self._headers

    async def body(self) -> bytes:
        raw = await super().body()
        # Whitespace alone is no body, as an empty one, rather than malformed JSON.
        return b"" if raw[:1].isspace() and not raw.strip() else raw

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            raw = await self.body()
            obj = orjson.loads(raw)
            if _LONG_NUMBER.search(raw):
                obj = _exact(raw)
            if not isinstance(obj, dict):
                raise NotAnObject(type(obj).__name__)
            self._json = obj
        return self._json


# orjson reads an integer beyond 64 bits as a rounded float: 2**70 would be kept as 1.18e21 without
# a word. A body with a run of 19 digits (rare) is read again by the standard library, which keeps
# integers exact, so the contract refuses one out of range by name.
_LONG_NUMBER = re.compile(rb"[0-9]{19}")


def _no_constant(name: str) -> Any:
    raise json.JSONDecodeError(f"{name} is not JSON", name, 0)


def _exact(raw: bytes) -> Any:
    return json.loads(raw, parse_constant=_no_constant)


class JSONBodyRoute(APIRoute):
    """A route that reads its body with ``JSONObjectRequest``."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def json_object_handler(request: Request) -> Response:
            return await handler(JSONObjectRequest(request.scope, request.receive))

        return json_object_handler


# --- entity bodies ------------------------------------------------------------------------------


def _envelope_id(value: Any) -> Any:
    # One message for every way a pool or command id can be wrong, as the API has always said it.
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_ID:
        raise PydanticCustomError("string_type", f"must be a string of 1 to {MAX_ID} characters")
    problem = text_problem(value)  # lands in text columns: PostgreSQL refuses NUL
    if problem is not None:
        raise PydanticCustomError("text_unstorable", problem)
    return value


# A pool or command id in a body (the validator checks the bounds first; Field states them in the
# document).
EnvelopeId = Annotated[str, BeforeValidator(_envelope_id), Field(min_length=1, max_length=MAX_ID)]


def pool_problem(value: str) -> str | None:
    """What makes ``value`` no pool name (its length aside), or None: the rules of ids."""
    return id_problem(value)


def _pool(value: Any) -> Any:
    value = _envelope_id(value)
    problem = pool_problem(value)
    if problem is not None:
        raise PydanticCustomError("pool_invalid", problem)
    return value


# A pool in a body or a query: an envelope id that is also an id (no '/', no control characters,
# trimmed), as the README's table says; a stream channel pool/<pool>/<channel> then reads one way.
PoolName = Annotated[str, BeforeValidator(_pool), Field(min_length=1, max_length=MAX_ID)]


def pool_field() -> Any:
    """The ``pool`` of a body: the envelope's, never part of the payload (absent: None)."""
    return (PoolName, Field(None, json_schema_extra={"default": DEFAULT_POOL},
                              description="The pool (partition key) of the command; not in the payload."))


def command_id_field() -> Any:
    """The ``command_id`` of a body: the idempotency key (absent: None)."""
    return (EnvelopeId, Field(None, description="Idempotency key; the Idempotency-Key header wins over it."))


def body_model(type_name: str, *, generated: str | None = None, path: str | None = None) -> type[Command]:
    """The body of the endpoint for command ``type_name``: its contract model plus ``pool`` and
    ``command_id``; ``generated`` names the id made up when absent, ``path`` the id in the path.

    A subclass of the contract model, so every constraint and rule of the contract applies.
    """
    contract = command_model(type_name)
    # None defaults on str fields: absent means "not given", while an explicit null is refused.
    fields: dict[str, Any] = {"pool": pool_field(), "command_id": command_id_field()}
    if generated is not None:
        fields[generated] = (str | None, Field(None, min_length=1, max_length=MAX_ID,
                                               description="Generated (a UUIDv7) when absent."))
    if path is not None:
        fields[path] = (Annotated[str | None, SkipJsonSchema()], Field(None))  # type: ignore[type-arg]
    model = create_model(f"{type_name}Body", __base__=contract, __module__=__name__, __doc__=contract.__doc__,
                         **fields)
    return cast(type[Command], model)


def command_model(type_name: str) -> type[Command]:
    """The contract model of the command ``type_name``."""
    model = REGISTRY[type_name].model
    if not issubclass(model, Command):
        raise TypeError(f"{type_name} is an event, not a command")
    return model


def command_from(body: Command, contract: type[C], **values: Any) -> C:
    """The ``contract`` command a validated ``body`` carries, with ``values`` (ids) filled in; 422
    when an id filled in breaks the contract.

    Validated again, as the contract model itself: that costs less than ``model_construct``
    (SubmitTask: 4-7 us against 8.5-12 us per request, measured on the machine that runs the
    tests), and what is appended is then checked by the contract whatever the body model allowed.
    """
    fields = {name: getattr(body, name) for name in contract.model_fields}
    fields.update(values)
    try:
        return contract.model_validate(fields)
    except ValidationError as exc:
        invalid(field_errors(exc, ("body",)))


# --- the document -------------------------------------------------------------------------------


def inline_request_bodies(document: dict[str, Any]) -> dict[str, Any]:
    """Each operation's body schema written out in the operation (nested models stay components),
    and ``required: false`` said explicitly for optional bodies, so an operation reads whole."""
    schemas = document.get("components", {}).get("schemas", {})
    inlined: set[str] = set()
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            body = operation.get("requestBody")
            if body is None:
                continue
            body.setdefault("required", False)
            for media in body.get("content", {}).values():
                ref = media.get("schema", {}).get("$ref", "")
                name = ref.rsplit("/", 1)[-1]
                if name.endswith("Body") and name in schemas:
                    media["schema"] = schemas[name]
                    inlined.add(name)
    for name in inlined:
        del schemas[name]
    return document
