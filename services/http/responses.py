"""What the HTTP API answers: the JSON renderer and the models of every write and error response.

The models document the responses in the OpenAPI document; the endpoints build plain dicts and
render them with orjson (a pydantic round trip per response would cost throughput for nothing).
So each model here must match what the endpoints build, and the API's tests check every
response against the document. This module must never decide, read or write anything; the
shapes are a public contract: extend them, never rename a field.
"""

from __future__ import annotations

import decimal
from datetime import datetime
from typing import Any, Literal

import orjson
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from contracts import Reason

__all__ = [
    "Accepted",
    "BeyondEnd",
    "Error",
    "EventRecord",
    "FieldError",
    "JSONBytesResponse",
    "Outcome",
    "Rejection",
    "ValidationErrors",
    "json_response",
]


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
    if isinstance(value, bytes):  # a body echoed in a 422 that was not read as JSON
        return value.decode("utf-8", "replace")
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


class JSONBytesResponse(JSONResponse):
    """JSON rendered by orjson: datetimes become RFC 3339 strings, tuples arrays.

    A JSONResponse, so FastAPI documents an operation's ``response_model`` as its JSON body.
    """

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, default=_default, option=orjson.OPT_NON_STR_KEYS)


def json_response(content: Any, status_code: int = 200) -> JSONBytesResponse:
    """``content`` as a JSON response."""
    return JSONBytesResponse(content, status_code=status_code)


class _Doc(BaseModel):
    """A response model: documentation only, never instantiated on the request path."""

    model_config = ConfigDict(frozen=True)


_POSITION = (
    "The read-your-writes token: pass it as min_position to any read of the pool, which then "
    "reflects this command's outcome. It is the command's offset on the commands topic of its "
    "partition; for a duplicate, the first command's (the embedded log) or that of a command "
    "decided after it (Kafka, which cannot look a command up by id).")


class Accepted(_Doc):
    """The command is on the log; the decider has not answered yet (or not within ?timeout)."""

    command_id: str = Field(description="The command's id: the Idempotency-Key, the body's command_id, "
                                        "or a generated UUIDv7.")
    status: Literal["accepted", "pending"] = Field(
        description="accepted: appended; pending: appended, and wait=true timed out before the outcome.")
    partition: int = Field(ge=0, description="The log partition of the command's pool.")
    position: int = Field(ge=0, description=_POSITION)
    duplicate: bool = Field(description="The command id was seen before; nothing new was appended.")


class EventRecord(_Doc):
    """One event as CloudEvents JSON, with where it is on the log. Absent attributes have no value."""

    position: int = Field(ge=0, description="The event's offset in its partition of the events topic.")
    partition: int = Field(ge=0)
    specversion: str
    id: str
    source: str
    type: str = Field(description="The event type, e.g. TaskSubmitted.")
    time: datetime
    subject: str | None = None
    datacontenttype: str
    dataschema: str | None = None
    schemaversion: int
    pool: str
    sequence: int | None = None
    commandid: str | None = None
    causationid: str | None = None
    correlationid: str | None = None
    actor: str | None = None
    commanddigest: str | None = Field(
        default=None, description="On the first event of an outcome: a digest of the command's type, "
                                  "pool and payload, to tell a retry from a reused key.")
    data: dict[str, Any] = Field(description="The event's payload, as its contract type defines it.")


class Outcome(_Doc):
    """wait=true: the decider applied the command; these are the events it appended."""

    command_id: str
    status: Literal["applied"]
    partition: int = Field(ge=0, description="The log partition of the command's pool.")
    position: int = Field(ge=0, description=_POSITION)
    duplicate: bool = Field(description="The command id was seen before: this is the first outcome.")
    events: list[EventRecord]


class Rejection(_Doc):
    """wait=true: the decider rejected the command (404: the id in the request names nothing)."""

    command_id: str
    status: Literal["rejected"]
    code: Reason = Field(description="A stable reason code clients may switch on.")
    message: str
    details: dict[str, Any]
    partition: int = Field(ge=0, description="The log partition of the command's pool.")
    position: int = Field(ge=0, description=_POSITION)
    duplicate: bool
    events: list[EventRecord] = Field(description="The CommandRejected event.")


class Error(_Doc):
    """A failure named in one sentence."""

    detail: str


class BeyondEnd(_Doc):
    """min_position is at or past the end of the pool's commands partition: no write answered it."""

    detail: str
    position: int = Field(description="The min_position asked for.")
    partition: int = Field(ge=0, description="The commands partition of the pool read.")
    end: int = Field(ge=0, description="The end of that partition now: positions below it exist.")


class FieldError(_Doc):
    """One reason the request was refused, located in it: ``loc`` starts with body, query, path or
    header; ``type`` is pydantic's error type (missing, extra_forbidden, less_than_equal, ...)."""

    type: str
    loc: list[str | int]
    msg: str
    input: Any = None
    ctx: dict[str, Any] | None = None


class ValidationErrors(_Doc):
    """The request was refused before anything was appended."""

    detail: list[FieldError]
