"""JSON codec for envelopes (orjson), and records <-> envelopes with positions in errors.

A record's value is the CloudEvents JSON object, readable by any tool.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson
from pydantic import ValidationError

from contracts import REGISTRY, Envelope, Payload, Registry
from events.log import CorruptRecord, Record, StoredRecord

_ATTRS = (
    "specversion",
    "id",
    "source",
    "type",
    "time",
    "subject",
    "datacontenttype",
    "dataschema",
    "schemaversion",
    "pool",
    "sequence",
    "commandid",
    "causationid",
    "correlationid",
    "actor",
    "commanddigest",
)
_ATTR_SET = frozenset(_ATTRS)


class DecodeError(ValueError):
    """Bytes that are not a valid envelope (bad JSON, missing attributes, invalid data)."""


def _attributes(env: Envelope) -> dict[str, Any]:
    """The envelope's attributes, None-valued optional ones left out."""
    out: dict[str, Any] = {}
    for name in _ATTRS:
        value = getattr(env, name)
        if value is not None:
            out[name] = value
    return out


def envelope_dict(env: Envelope) -> dict[str, Any]:
    """The CloudEvents JSON object of ``env`` (None-valued optional attributes left out)."""
    out = _attributes(env)
    data = env.data
    out["data"] = data.model_dump() if isinstance(data, Payload) else data
    return out


def encode(env: Envelope) -> bytes:
    """Serialize ``env`` to CloudEvents JSON bytes (``data`` last)."""
    out = _attributes(env)
    data = env.data
    if isinstance(data, Payload):
        # pydantic serializes the payload to JSON in Rust; splicing it in skips building dicts.
        return orjson.dumps(out)[:-1] + b',"data":' + data.__pydantic_serializer__.to_json(data) + b"}"
    out["data"] = data
    return orjson.dumps(out)


def to_record(env: Envelope) -> Record:
    """The log record for ``env``: key = pool, id = envelope id, type in a header."""
    return Record(
        key=env.pool,
        value=encode(env),
        id=env.id,
        headers=(("ce_type", env.type.encode()), ("ce_id", env.id.encode())),
    )


def record_type(rec: StoredRecord) -> str | None:
    """The event type ``to_record`` put in the record's ``ce_type`` header (None: no such header),
    so a reader that wants a few types can skip the rest without decoding them."""
    for name, value in rec.headers:
        if name == "ce_type":
            return value.decode(errors="replace")
    return None


def from_dict(obj: Any, *, registry: Registry = REGISTRY, trusted: bool = False) -> Envelope:
    """Build an envelope from its JSON object, typing ``data`` and upcasting old versions.

    ``trusted`` skips re-validating the attributes (records this service wrote itself);
    the payload is always validated. Unknown types keep their data as a dict.
    """
    if not isinstance(obj, dict):
        raise DecodeError("an envelope must be a JSON object")
    type_ = obj.get("type")
    if not isinstance(type_, str):
        raise DecodeError("envelope has no 'type'")
    raw_data = obj.get("data", {})
    if not isinstance(raw_data, dict):
        raise DecodeError("envelope 'data' must be a JSON object")
    contract = registry.get(type_)
    data: Payload | dict[str, Any] = raw_data
    if contract is not None:
        version = obj.get("schemaversion", contract.version)
        try:
            data = registry.parse(type_, raw_data, version if isinstance(version, int) else None)
        except (ValidationError, ValueError) as exc:
            raise DecodeError(f"invalid {type_} data: {exc}") from exc
    if trusted:
        # The parsed object is ours to reuse; only an unexpected attribute forces a copy.
        attrs = obj
        attrs.pop("data", None)
        if not _ATTR_SET.issuperset(attrs):
            attrs = {k: v for k, v in attrs.items() if k in _ATTR_SET}
        time = attrs.get("time")
        if isinstance(time, str):
            attrs["time"] = datetime.fromisoformat(time)
        if contract is not None:
            attrs["schemaversion"] = contract.version
        return Envelope.trusted(**attrs, data=data)
    fields = {k: v for k, v in obj.items() if k != "data"}
    if contract is not None:
        fields["schemaversion"] = contract.version
    try:
        return Envelope.model_validate({**fields, "data": data})
    except ValidationError as exc:
        raise DecodeError(f"invalid envelope: {exc}") from exc


def decode(raw: bytes, *, registry: Registry = REGISTRY, trusted: bool = False) -> Envelope:
    """Parse CloudEvents JSON bytes into an envelope; raises DecodeError."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"malformed JSON: {exc}") from exc
    return from_dict(obj, registry=registry, trusted=trusted)


def from_record(rec: StoredRecord, *, registry: Registry = REGISTRY) -> Envelope:
    """Decode a stored record of this service's own log; errors name topic, partition, offset."""
    return from_value(rec.topic, rec.partition, rec.offset, rec.value, registry=registry)


def from_value(topic: str, partition: int, offset: int, value: bytes, *,
               registry: Registry = REGISTRY) -> Envelope:
    """``from_record`` for a value read without its record (``EventLog.read_values``)."""
    try:
        return decode(value, registry=registry, trusted=True)
    except (DecodeError, ValueError, TypeError, KeyError) as exc:
        raise CorruptRecord(topic, partition, offset, str(exc)) from exc
