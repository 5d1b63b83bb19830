"""Every contract round-trips through the codec; old versions upcast; bad bytes fail loudly (STYLE #7)."""

from __future__ import annotations

import types
import typing
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import annotated_types as at
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from contracts import REGISTRY, Envelope, Payload
from contracts import commands as c
from contracts import event_types as e
from contracts.workflows import WorkflowDefinition
from events.codec import DecodeError, decode, encode, envelope_dict, from_record, to_record
from events.log import CorruptRecord, StoredRecord

NAMES = sorted(contract.name for contract in REGISTRY.contracts())

# -- strategies derived from the models' own field declarations ------------------------------------

TEXT = st.characters(categories=("L", "N", "P", "S", "Zs"))  # printable: no controls, no surrogates
INT64 = (-(2**63), 2**63 - 1)


def text(min_size: int = 0, max_size: int = 24) -> st.SearchStrategy[str]:
    return st.text(TEXT, min_size=min_size, max_size=max_size)


# Ids, names and capabilities: no '/', no whitespace at either end (contracts.values).
NAME_CHARS = st.characters(categories=("L", "N"), include_characters="-_:.")


def name_text(min_size: int = 1, max_size: int = 24) -> st.SearchStrategy[str]:
    names = st.text(NAME_CHARS, min_size=max(min_size, 1), max_size=max_size)
    return names.filter(lambda s: s not in (".", ".."))


def _is_name(metadata: list[Any]) -> bool:
    return any(getattr(getattr(m, "func", None), "__name__", "") in ("_id", "_name", "_capabilities")
               for m in metadata)


JSON: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(*INT64)
    | st.floats(allow_nan=False, allow_infinity=False)
    | text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


def _bounds(metadata: list[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for m in metadata:
        if isinstance(m, at.MinLen):
            out["min_size"] = m.min_length
        elif isinstance(m, at.MaxLen):
            out["max_size"] = m.max_length
        elif isinstance(m, at.Ge):
            out["ge"] = m.ge
        elif isinstance(m, at.Gt):
            out["gt"] = m.gt
        elif isinstance(m, at.Le):
            out["le"] = m.le
        elif isinstance(m, at.Lt):
            out["lt"] = m.lt
    return out


def for_type(tp: Any, metadata: list[Any]) -> st.SearchStrategy[Any]:
    """A strategy for values of ``tp`` within the annotated constraints."""
    if typing.get_origin(tp) is typing.Annotated:
        inner, *extra = typing.get_args(tp)
        flat: list[Any] = []
        for m in extra:  # a Field(...) inside Annotated carries its constraints as metadata
            flat.extend(m.metadata if isinstance(m, FieldInfo) else [m])
        return for_type(inner, [*metadata, *flat])
    b = _bounds(metadata)
    origin = typing.get_origin(tp)
    pattern = next((m.pattern for m in metadata if getattr(m, "pattern", None)), None)
    if tp is str and pattern is not None:
        return st.from_regex(pattern, fullmatch=True).filter(
            lambda v: b.get("min_size", 0) <= len(v) <= b.get("max_size", 10**9))
    if tp is WorkflowDefinition:
        return WORKFLOW_DEFINITIONS
    if tp is Any:
        return JSON
    if tp is type(None):
        return st.none()
    if origin in (typing.Union, types.UnionType):
        return st.one_of(
            [for_type(arg, metadata if arg is not type(None) else []) for arg in typing.get_args(tp)]
        )
    if origin is Literal:
        return st.sampled_from(typing.get_args(tp))
    if tp is bool:
        return st.booleans()
    if tp is str:
        if _is_name(metadata):
            return name_text(b.get("min_size", 1), min(b.get("max_size", 24), 24))
        return text(b.get("min_size", 0), min(b.get("max_size", 24), 24))
    if tp is int:
        lo = b["ge"] if "ge" in b else b["gt"] + 1 if "gt" in b else INT64[0]
        hi = b["le"] if "le" in b else b["lt"] - 1 if "lt" in b else INT64[1]
        return st.integers(lo, hi)
    if tp is float:
        return st.floats(
            min_value=b.get("ge", b.get("gt")),
            max_value=b.get("le", b.get("lt")),
            exclude_min="gt" in b,
            exclude_max="lt" in b,
            allow_nan=False,
            allow_infinity=False,
        )
    if origin is tuple:
        item, ellipsis = typing.get_args(tp)
        assert ellipsis is Ellipsis
        return st.lists(for_type(item, [m for m in metadata if _is_name([m])]), max_size=3).map(tuple)
    if origin is dict:
        key, value = typing.get_args(tp)
        assert key is str or typing.get_args(key)[0] is str
        return st.dictionaries(text(max_size=8), for_type(value, []), max_size=3)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return model_strategy(tp)
    if tp is datetime:
        return TIMES
    raise NotImplementedError(f"no strategy for {tp!r}")


def _workflow(names: list[str]) -> WorkflowDefinition:
    # A chain: each step depends on the one before (sound by construction).
    steps = [{"name": n, "depends_on": names[i - 1:i]} for i, n in enumerate(names)]
    return WorkflowDefinition.model_validate({"name": "wf", "tasks": steps})


WORKFLOW_DEFINITIONS = st.lists(st.from_regex(r"[a-z_][a-z0-9_]{0,10}", fullmatch=True), min_size=1,
                                max_size=4, unique=True).map(_workflow)


def _validate(model: type[BaseModel], fields: dict[str, Any]) -> BaseModel | None:
    try:
        return model.model_validate(fields)
    except ValidationError:  # model validators (e.g. SetBudget's scope_id rule) may still refuse
        return None


def model_strategy(model: type[BaseModel]) -> st.SearchStrategy[Any]:
    """Instances of ``model``: every required field drawn, each optional one drawn or left default."""
    required, optional = {}, {}
    for name, info in model.model_fields.items():
        strategy = for_type(info.annotation, list(info.metadata))
        (required if info.is_required() else optional)[name] = strategy
    return (
        st.fixed_dictionaries(required, optional=optional)
        .map(lambda fields: _validate(model, fields))
        .filter(lambda m: m is not None)
    )


TIMES = st.datetimes(timezones=st.just(UTC))
OPT_TEXT = st.none() | text(1, 40)


def envelope_strategy(
    type_name: str, data: st.SearchStrategy[Any], version: int
) -> st.SearchStrategy[Envelope]:
    return st.builds(
        Envelope,
        id=text(1, 40),
        source=text(1, 40),
        type=st.just(type_name),
        time=TIMES,
        subject=OPT_TEXT,
        dataschema=OPT_TEXT,
        schemaversion=st.just(version),
        pool=text(1, 40),
        sequence=st.none() | st.integers(0, INT64[1]),
        commandid=OPT_TEXT,
        causationid=OPT_TEXT,
        correlationid=OPT_TEXT,
        actor=OPT_TEXT,
        data=data,
    )


def stored(value: bytes, offset: int = 0) -> StoredRecord:
    return StoredRecord(
        topic="events",
        partition=2,
        offset=offset,
        key="default",
        value=value,
        id=None,
        headers=(),
        timestamp_ms=0,
    )


def assert_same(decoded: Envelope, env: Envelope) -> None:
    assert decoded == env
    assert decoded.model_dump(exclude={"data"}) == env.model_dump(exclude={"data"})
    assert type(decoded.data) is type(env.data)
    if isinstance(env.data, Payload):
        assert isinstance(decoded.data, Payload)
        assert decoded.data.model_dump() == env.data.model_dump()
    else:
        assert decoded.data == env.data
    assert decoded.time.utcoffset() == timedelta(0)


# -- round trips -----------------------------------------------------------------------------------


def test_every_command_and_event_is_registered() -> None:
    assert set(NAMES) == {m.__name__ for m in (*c.ALL, *e.ALL)}
    for name in NAMES:
        contract = REGISTRY[name]
        assert contract.model.__name__ == name
        assert contract.kind == contract.model.message_kind
    assert {x.name for x in REGISTRY.contracts("command")} == {m.__name__ for m in c.ALL}
    assert {x.name for x in REGISTRY.contracts("event")} == {m.__name__ for m in e.ALL}


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_round_trip(name: str, data: st.DataObject) -> None:
    contract = REGISTRY[name]
    env = data.draw(envelope_strategy(name, model_strategy(contract.model), contract.version))
    raw = encode(env)
    decoded = decode(raw)
    assert_same(decoded, env)
    assert type(decoded.data) is contract.model
    assert_same(from_record(stored(to_record(env).value)), env)  # the trusted path used on our own log
    assert orjson.loads(encode(decoded)) == orjson.loads(raw)  # same JSON values (0 == 0.0)


@settings(max_examples=50, deadline=None)
@given(
    env=envelope_strategy(
        "SomethingFromTheFuture", st.dictionaries(text(max_size=8), JSON, max_size=4), version=7
    )
)
def test_unknown_types_keep_their_data_and_round_trip(env: Envelope) -> None:
    decoded = decode(encode(env))
    assert isinstance(decoded.data, dict)
    assert_same(decoded, env)
    assert decoded.schemaversion == 7
    assert_same(from_record(stored(encode(env))), env)
    with pytest.raises(TypeError, match="not known"):
        _ = decoded.payload


def test_decoded_time_is_aware_utc() -> None:
    raw = orjson.dumps({**GOOD, "time": "2025-03-04T05:06:07.123456Z"})
    for env in (decode(raw), decode(raw, trusted=True)):
        assert env.time.utcoffset() == timedelta(0)
        assert (env.time.year, env.time.microsecond) == (2025, 123456)


def test_none_attributes_are_left_out_of_the_json() -> None:
    env = Envelope(
        id="x",
        type="AgentDeregistered",
        time=datetime(2025, 1, 1, tzinfo=UTC),
        data=e.AgentDeregistered(agent_id="a"),
    )
    obj = orjson.loads(encode(env))
    assert set(obj) == {
        "specversion",
        "id",
        "source",
        "type",
        "time",
        "datacontenttype",
        "schemaversion",
        "pool",
        "data",
    }
    assert obj["data"] == {"agent_id": "a", "reason": None}
    assert envelope_dict(env)["data"] == obj["data"]


# -- upcasting -------------------------------------------------------------------------------------

V1_COST = {
    "id": "ev-1",
    "type": "CostRecorded",
    "schemaversion": 1,
    "time": "2024-06-01T12:00:00+00:00",
    "pool": "p",
    "data": {
        "cost_id": "k",
        "agent_id": "a",
        "task_id": "t",
        "model": "gpt-4o",
        "tokens_in": 1200,
        "tokens_out": 300,
        "cost_usd": 0.006,
    },
}


@pytest.mark.parametrize("trusted", [False, True])
def test_cost_recorded_v1_is_upcast_to_v2(trusted: bool) -> None:
    env = decode(orjson.dumps(V1_COST), trusted=trusted)
    assert env.schemaversion == 2 == REGISTRY["CostRecorded"].version
    assert env.data == e.CostRecorded(
        cost_id="k",
        agent_id="a",
        task_id="t",
        model="gpt-4o",
        input_tokens=1200,
        output_tokens=300,
        cost_usd=0.006,
        priced_from_table=False,
    )
    again = decode(encode(env))
    assert again == env
    assert orjson.loads(encode(env))["data"]["input_tokens"] == 1200


def test_cost_recorded_v1_without_token_counts_upcasts_to_zero() -> None:
    raw = {
        **V1_COST,
        "data": {"cost_id": "k", "agent_id": "a", "model": "m", "cost_usd": 1.0, "priced_from_table": True},
    }
    data = decode(orjson.dumps(raw)).data
    assert isinstance(data, e.CostRecorded)
    assert (data.input_tokens, data.output_tokens, data.priced_from_table) == (0, 0, True)


@settings(max_examples=50, deadline=None)
@given(
    tokens_in=st.integers(0, 2**40),
    tokens_out=st.integers(0, 2**40),
    usd=st.floats(0, 1e6, allow_nan=False),
    model=text(1, 20),
)
def test_any_v1_cost_upcasts(tokens_in: int, tokens_out: int, usd: float, model: str) -> None:
    raw = {
        **V1_COST,
        "data": {
            "cost_id": "k",
            "agent_id": "a",
            "model": model,
            "tokens_in": tokens_in,
            "tokens_out": tokens_out,
            "cost_usd": usd,
        },
    }
    data = decode(orjson.dumps(raw)).data
    assert data == e.CostRecorded(
        cost_id="k", agent_id="a", model=model, input_tokens=tokens_in, output_tokens=tokens_out, cost_usd=usd
    )


def test_a_record_without_schemaversion_is_read_as_the_current_version() -> None:
    raw = {k: v for k, v in V1_COST.items() if k != "schemaversion"}
    with pytest.raises(DecodeError, match="invalid CostRecorded data"):
        decode(orjson.dumps(raw))  # v2 has no tokens_in
    raw["data"] = {
        "cost_id": "k",
        "agent_id": "a",
        "model": "m",
        "input_tokens": 1,
        "output_tokens": 2,
        "cost_usd": 0.5,
    }
    assert decode(orjson.dumps(raw)).schemaversion == 2


def test_a_version_newer_than_known_is_refused() -> None:
    with pytest.raises(DecodeError, match="newer than supported"):
        decode(orjson.dumps({**V1_COST, "schemaversion": 3}))


# -- registry schemas ------------------------------------------------------------------------------


def test_a_json_schema_exists_for_every_type() -> None:
    schemas = REGISTRY.json_schemas()
    assert sorted(schemas) == NAMES
    for name, schema in schemas.items():
        contract = REGISTRY[name]
        assert schema["$id"] == contract.dataschema == f"urn:agentbus:schema:{name}:{contract.version}"
        assert schema["x-agentbus-kind"] == contract.kind
        assert schema["x-agentbus-version"] == contract.version
        assert schema["type"] == "object"
        assert set(schema.get("properties", {})) == set(contract.model.model_fields)
        assert schema.get("additionalProperties") is False
        orjson.dumps(schema)  # serialisable as published
    assert schemas["CostRecorded"]["x-agentbus-version"] == 2
    assert {"input_tokens", "output_tokens"} <= set(schemas["CostRecorded"]["required"])


# -- decode errors ---------------------------------------------------------------------------------

GOOD = {"id": "x", "type": "AgentDeregistered", "time": "2025-01-01T00:00:00Z", "data": {"agent_id": "a"}}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{not json", "malformed JSON"),
        (b"", "malformed JSON"),
        (b"\xff\xfe", "malformed JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'"text"', "must be a JSON object"),
        (b"null", "must be a JSON object"),
        (orjson.dumps({k: v for k, v in GOOD.items() if k != "type"}), "no 'type'"),
        (orjson.dumps({**GOOD, "type": 5}), "no 'type'"),
        (orjson.dumps({**GOOD, "data": [1]}), "'data' must be a JSON object"),
        (orjson.dumps({**GOOD, "data": {}}), "invalid AgentDeregistered data"),
        (orjson.dumps({**GOOD, "data": {"agent_id": "a", "extra": 1}}), "invalid AgentDeregistered data"),
        (
            orjson.dumps(
                {**GOOD, "type": "RegisterAgent", "data": {"agent_id": "a", "name": "a", "capacity": 0}}
            ),
            "invalid RegisterAgent data",
        ),
        (
            orjson.dumps({**GOOD, "type": "SetBudget", "data": {"scope": "agent", "limit_usd": 1}}),
            "invalid SetBudget data",
        ),
        (orjson.dumps({k: v for k, v in GOOD.items() if k != "id"}), "invalid envelope"),
        (orjson.dumps({k: v for k, v in GOOD.items() if k != "time"}), "invalid envelope"),
        (orjson.dumps({**GOOD, "time": "yesterday"}), "invalid envelope"),
        (orjson.dumps({**GOOD, "colour": "red"}), "invalid envelope"),
        (orjson.dumps({**GOOD, "type": "Unknown", "id": ""}), "invalid envelope"),
    ],
)
def test_decode_errors(raw: bytes, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        decode(raw)


def test_the_good_example_decodes() -> None:
    assert decode(orjson.dumps(GOOD)).data == e.AgentDeregistered(agent_id="a")


@pytest.mark.parametrize("raw", [b"{not json", orjson.dumps({**GOOD, "data": {}})])
def test_a_corrupt_stored_record_names_its_position(raw: bytes) -> None:
    with pytest.raises(CorruptRecord) as info:
        from_record(stored(raw, offset=99))
    assert (info.value.topic, info.value.partition, info.value.offset) == ("events", 2, 99)
    assert "events[2]@99" in str(info.value)
