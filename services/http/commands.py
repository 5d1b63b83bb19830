"""The body of ``POST /v1/commands``: any command by type name, or as a structured CloudEvent.

The command is named inside the body, so its payload cannot be typed before the body is read. It
is documented as the union of every command in both forms, built from the contract registry,
and validated here with the same contract models, so that a refusal is located where the client
put the mistake: ("body", "type") for a type that is no command, ("body", "data", ...) for a
payload that breaks its contract.

This module must never accept a command the contract model would refuse, and never touch the
service.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, TypeAdapter, ValidationError, create_model
from pydantic.json_schema import SkipJsonSchema

from contracts import REGISTRY, Command, Envelope, UnknownType, utcnow
from events.codec import DecodeError, from_dict
from services.http.bodies import (
    EnvelopeId,
    PoolName,
    command_id_field,
    command_model,
    pool_field,
    pool_problem,
)
from services.http.errors import error_item, field_errors, invalid
from services.runtime.ingest import parse_command

__all__ = ["CommandRequest", "parse_any_command"]

ENVELOPE_KEYS = ("pool", "command_id")


def _data(contract: type[Command]) -> Any:
    # An absent "data" is read as {}: required exactly when the command has required fields.
    if any(f.is_required() for f in contract.model_fields.values()):
        return (contract, ...)
    return (contract | Annotated[None, SkipJsonSchema()], None)  # type: ignore[type-arg]


def _by_name(contract: type[Command]) -> type[BaseModel]:
    name = contract.__name__
    fields: dict[str, Any] = {
        "type": (Literal[name], ...),
        "data": _data(contract),
        "pool": pool_field(),
        "command_id": command_id_field(),
    }
    return create_model(f"{name}Command", __config__=ConfigDict(extra="forbid"), __module__=__name__,
                        __doc__=f"{name} by type name.", **fields)


def _as_cloudevent(contract: type[Command]) -> type[BaseModel]:
    name = contract.__name__
    fields: dict[str, Any] = {
        "specversion": (Literal["1.0"], ...),
        "type": (Literal[name], ...),
        "data": _data(contract),
        "time": (datetime | Annotated[None, SkipJsonSchema()],  # type: ignore[type-arg]
                 Field(None, description="Stamped at ingest when absent.")),
    }
    return create_model(f"{name}CloudEvent", __base__=Envelope, __module__=__name__,
                        __doc__=f"{name} as a structured-mode CloudEvents 1.0 command: id = command id, "
                                "pool = envelope pool.", **fields)


def _accept_object(value: Any) -> Any:
    return value


_COMMANDS = [command_model(c.name) for c in REGISTRY.contracts("command")]
_BY_NAME = Annotated[Union[tuple(_by_name(c) for c in _COMMANDS)], Field(discriminator="type")]  # type: ignore[valid-type]  # noqa: UP007
_CLOUDEVENT = Annotated[Union[tuple(_as_cloudevent(c) for c in _COMMANDS)], Field(discriminator="type")]  # type: ignore[valid-type]  # noqa: UP007

# Documented as the union of every command; read as a plain object and validated by
# ``parse_any_command``, whose error locations ("body", "type") and ("body", "data", ...) a union
# validator could not give (it puts the member's tag in the location).
CommandRequest = Annotated[
    dict[str, Any],
    PlainValidator(_accept_object, json_schema_input_type=Union[_BY_NAME, _CLOUDEVENT]),  # noqa: UP007
]


def parse_any_command(body: dict[str, Any]) -> tuple[Command, dict[str, Any]]:
    """The command in a ``POST /v1/commands`` body and its envelope options (pool, command_id, and
    for a CloudEvent its source, actor, correlation and causation ids); 422 when invalid."""
    if "specversion" in body:
        return _cloudevent(body)
    extra = sorted(set(body) - {"type", "data", *ENVELOPE_KEYS})
    if extra:
        invalid([error_item(("body", k), "extra_forbidden", "Extra inputs are not permitted", body[k])
                 for k in extra])
    type_name = body.get("type")
    if not isinstance(type_name, str) or not type_name:
        invalid([error_item(("body", "type"), "missing", "a command type name is required", type_name)])
    data = body.get("data", {})
    if not isinstance(data, dict):
        invalid([error_item(("body", "data"), "dict_type", "data must be a JSON object", data)])
    options = {key: _envelope_id(body[key], key) for key in ENVELOPE_KEYS if key in body}
    try:
        cmd = parse_command(type_name, data)
    except UnknownType:
        invalid([error_item(("body", "type"), "unknown_command_type", f"unknown command type {type_name!r}",
                            type_name)])
    except ValidationError as exc:
        invalid(field_errors(exc, ("body", "data")))
    except ValueError as exc:  # an event type sent as a command
        invalid([error_item(("body", "type"), "not_a_command", str(exc), type_name)])
    return cmd, options


_ENVELOPE_ID: TypeAdapter[str] = TypeAdapter(EnvelopeId)
_POOL: TypeAdapter[str] = TypeAdapter(PoolName)


def _envelope_id(value: Any, key: str) -> str:
    try:
        return (_POOL if key == "pool" else _ENVELOPE_ID).validate_python(value)
    except ValidationError as exc:
        invalid(field_errors(exc, ("body", key)))


def _cloudevent(obj: dict[str, Any]) -> tuple[Command, dict[str, Any]]:
    """A structured-mode CloudEvents command: its id is the command id, its pool the envelope's."""
    if obj.get("specversion") != "1.0":
        invalid([error_item(("body", "specversion"), "value_error",
                            "only CloudEvents specversion 1.0 is supported", obj.get("specversion"))])
    type_name = obj.get("type")
    contract = REGISTRY.get(type_name) if isinstance(type_name, str) else None
    if contract is None:
        invalid([error_item(("body", "type"), "unknown_command_type", f"unknown command type {type_name!r}",
                            type_name)])
    if contract.kind != "command":
        invalid([error_item(("body", "type"), "not_a_command",
                            f"{type_name!r} is an event; only commands may be sent", type_name)])
    # Ingest stamps the time (deciders take time from the envelope); a client's time is optional.
    obj = {**obj, "time": obj.get("time") or utcnow().isoformat()}
    try:
        env = from_dict(obj)
    except DecodeError as exc:
        cause = exc.__cause__
        if isinstance(cause, ValidationError):
            envelope_level = str(exc).startswith("invalid envelope")
            invalid(field_errors(cause, ("body",) if envelope_level else ("body", "data")))
        invalid([error_item(("body",), "value_error", str(exc))])
    problem = pool_problem(env.pool)
    if problem is not None:
        invalid([error_item(("body", "pool"), "pool_invalid", problem, env.pool)])
    cmd = env.data
    assert isinstance(cmd, Command)
    return cmd, {"pool": env.pool, "command_id": env.id, "source": env.source, "actor": env.actor,
                 "correlation_id": env.correlationid, "causation_id": env.causationid}
