"""The decider snapshot codec (``services.domain.snapshot``): decode(encode(s)) is s, exactly.

"Exactly" is checked by ``assert_identical``, stricter than ``==``: the same classes all the way
down (a frozenset must not come back as a set, a tuple as a list, an int as a float) and the
same ``model_fields_set`` on every pydantic model. Three sources of states:

* the recorded histories (``tests/histories``), at every position, both replay paths;
* Hypothesis states generated from the type hints of the state classes (``strategy``, written
  here independently of the codec), so a field added to any state dataclass or model is
  generated and round-tripped with no change to this file;
* one state with every field of every class set to a value other than its default (``populated``),
  which fails when a field comes back as its default, i.e. when it was not written.

A field of a type neither this file nor the codec knows fails here (``strategy``/``populated``
raise) or at import (the codec refuses to compile).
"""

from __future__ import annotations

import dataclasses
import math
import struct
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import lz4.frame
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, PrivateAttr

from contracts.commands import PoolPolicy, RetryPolicy
from events.codec import decode as decode_event
from services.domain import snapshot as snap
from services.domain.decider import evolve
from services.domain.replay import replay_record
from services.domain.snapshot import FORMAT, DeciderSnapshot, OpenCommand, OutcomeColumns, SnapshotError
from services.domain.state import AgentState, PoolState
from tests.unit.test_histories import SCENARIOS, lines_of

INT64 = (-(2**63), 2**63 - 1)


# -- exact comparison ------------------------------------------------------------------------------


def assert_identical(a: Any, b: Any, path: str = "state") -> None:
    """``a`` and ``b`` are the same value of the same classes, fields set included, at every depth."""
    assert type(a) is type(b), f"{path}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, float) and math.isnan(a):
        assert math.isnan(b), f"{path}: nan != {b!r}"
    elif isinstance(a, BaseModel):
        assert a.model_fields_set == b.model_fields_set, f"{path}: fields set differ"
        for name in type(a).model_fields:
            assert_identical(getattr(a, name), getattr(b, name), f"{path}.{name}")
    elif dataclasses.is_dataclass(a) and not isinstance(a, type):
        for f in dataclasses.fields(a):
            if f.compare:
                assert_identical(getattr(a, f.name), getattr(b, f.name), f"{path}.{f.name}")
    elif isinstance(a, dict):
        assert list(a) == list(b) or set(a) == set(b), f"{path}: keys differ"
        for k in a:
            for ka, kb in ((k, next(x for x in b if x == k)),):
                assert_identical(ka, kb, f"{path}[{k!r}] key")
            assert_identical(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), f"{path}: length {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_identical(x, y, f"{path}[{i}]")
    elif isinstance(a, set | frozenset):
        assert a == b, f"{path}: {a!r} != {b!r}"
        for x in a:
            assert_identical(x, next(y for y in b if y == x), f"{path}{{{x!r}}}")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def round_trip(s: DeciderSnapshot) -> DeciderSnapshot:
    back = snap.decode(snap.encode(s))
    assert back == s
    assert_identical(s, back)
    return back


# -- the recorded histories --------------------------------------------------------------------------


def _history_states(name: str) -> Iterator[tuple[int, dict[str, PoolState], dict[str, PoolState]]]:
    """After each event of the history: (position, states by full decode, states by the raw replay)."""
    full: dict[str, PoolState] = {}
    raw: dict[str, PoolState] = {}

    def raw_of(pool: str) -> PoolState:
        return raw.setdefault(pool, PoolState(pool))

    for i, line in enumerate(lines_of(name)):
        env = decode_event(line)
        evolve(full.setdefault(env.pool, PoolState(env.pool)), env)
        if not replay_record(raw_of, orjson.loads(line)):
            evolve(raw_of(env.pool), decode_event(line))
        yield i + 1, full, raw


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_every_state_of_a_recorded_history_round_trips(name: str) -> None:
    seen = 0
    for position, full, raw in _history_states(name):
        # The index holds the commands the pools have seen (written as runs of its positions) but
        # one (written by name), then more.
        ids = [cid for state in full.values() for cid in sorted(state.seen)][1:]
        ids += [f"cmd-{i}" for i in range(position)]
        outcomes = OutcomeColumns.of((cid, (i, 1 + i % 3, None if i % 2 else f"d{i}"))
                                     for i, cid in enumerate(ids))
        for states in (full, raw):
            open_command = OpenCommand("cmd-x", position - 1, 1, None)
            round_trip(DeciderSnapshot(0, position, states, outcomes, open_command))
        seen += 1
    assert seen == len(lines_of(name)) > 10


def test_seen_ids_are_written_as_runs_of_the_index_and_come_back() -> None:
    ids = [f"c{i}" for i in range(1000)]
    a, b = PoolState("a"), PoolState("b")
    a.seen = set(ids[:400]) | set(ids[600:700]) | {"open-one"}
    b.seen = set(ids[400:600]) | set(ids[700::2])
    outcomes = OutcomeColumns(ids, list(range(1000)), [1] * 1000, [None] * 999 + ["dg"])
    s = DeciderSnapshot(0, 1001, {"a": a, "b": b}, outcomes, OpenCommand("open-one", 1000, 1, None))
    header, sections = _parts(snap.encode(s))
    rows = header["snapshot"][2]
    assert rows["a"][snap._SEEN_AT] == [[0, 400, 600, 100], ["open-one"]]
    b_runs = rows["b"][snap._SEEN_AT][0]
    assert b_runs[:2] == [400, 200] and b_runs[2:] == [x for i in range(700, 1000, 2) for x in (i, 1)]
    assert header["columns"] == {"n": 1000, "ids_bytes": len("\n".join(ids)), "digests": [[999, "dg"]]}
    assert sections == "\n".join(ids).encode() + _int64s(*range(1000)) + _int64s(*[1] * 1000)
    round_trip(s)


@pytest.mark.parametrize("ids", [["plain", "two\nlines", "end"], ["\n"], [""], ["", "a", ""]])
def test_ids_a_line_cannot_hold_come_back(ids: list[str]) -> None:
    unique = list(dict.fromkeys(ids))
    state = PoolState("p")
    state.seen = set(unique)
    n = len(unique)
    outcomes = OutcomeColumns(unique, list(range(n)), [1] * n, [None] * n)
    round_trip(DeciderSnapshot(0, n, {"p": state}, outcomes))


def test_a_seen_id_beside_an_id_the_columns_hold_twice_comes_back() -> None:
    state = PoolState("p")
    state.seen = {"a", "x"}
    outcomes = OutcomeColumns(["a", "a"], [0, 1], [1, 1], [None, None])
    back = snap.decode(snap.encode(DeciderSnapshot(0, 2, {"p": state}, outcomes)))
    assert back.states["p"].seen == {"a", "x"} and back.outcomes == outcomes


def test_an_id_utf8_cannot_hold_is_refused_on_encode() -> None:
    outcomes = OutcomeColumns(["bad\ud800"], [0], [1], [None])
    with pytest.raises(SnapshotError, match="cannot be written"):
        snap.encode(DeciderSnapshot(0, 1, {"p": PoolState("p")}, outcomes))


# -- generated states -------------------------------------------------------------------------------

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(*INT64) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
)


def strategy(tp: Any) -> st.SearchStrategy[Any]:
    """Values of the type hint ``tp``: what the state may hold there (``Any``: event JSON)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Annotated:
        return strategy(args[0])
    if tp is Any:
        return _JSON
    if tp is type(None):
        return st.none()
    if tp is str:
        return st.text(max_size=8)
    if tp is bool:
        return st.booleans()
    if tp is int:
        return st.integers(*INT64)
    if tp is float:
        # Finite, and small enough that a price in nano-dollars is too (Prices turns them into
        # integers); non-finite floats: test_non_finite_floats_come_back.
        return st.floats(allow_nan=False, allow_infinity=False, min_value=-1e290, max_value=1e290)
    if origin is typing.Literal:
        return st.sampled_from(args)
    if origin in (typing.Union, types.UnionType):
        return st.one_of(*(strategy(a) for a in args))
    if origin is set:
        return st.sets(strategy(args[0]), max_size=3)
    if origin is frozenset:
        return st.frozensets(strategy(args[0]), max_size=3)
    if origin is list:
        return st.lists(strategy(args[0]), max_size=3)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return st.lists(strategy(args[0]), max_size=3).map(tuple)
        return st.tuples(*(strategy(a) for a in args))
    if origin in (dict, Mapping):
        return st.dictionaries(strategy(args[0]), strategy(args[1]), max_size=2)
    if tp is OutcomeColumns:  # columns of one length: from (command id, outcome) pairs
        return st.dictionaries(strategy(str), strategy(tuple[int, int, str | None]), max_size=3).map(
            lambda index: OutcomeColumns.of(index.items()))
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        return st.builds(tp, **{f.name: strategy(hints[f.name]) for f in dataclasses.fields(tp) if f.init})
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        names = list(tp.model_fields)
        values = st.fixed_dictionaries({n: strategy(i.annotation) for n, i in tp.model_fields.items()})
        return st.builds(lambda v, fs: tp.model_construct(fs, **v), values,
                         st.sets(st.sampled_from(names)) if names else st.just(set()))
    raise TypeError(f"the test cannot generate {tp!r}: teach tests/unit/test_snapshots.strategy")


@settings(max_examples=50, deadline=None, suppress_health_check=[
    HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])
@given(strategy(DeciderSnapshot))
def test_a_generated_state_round_trips(s: DeciderSnapshot) -> None:
    round_trip(s)


class _Counter:
    def __init__(self) -> None:
        self.n = 0

    def next(self) -> int:
        self.n += 1
        return self.n


def populated(tp: Any, default: Any = dataclasses.MISSING, n: _Counter | None = None) -> Any:
    """A value of ``tp`` unlike ``default``, with every field of every record in it set away from
    its default too (so a field the codec dropped comes back as its default and differs)."""
    n = n or _Counter()
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Annotated:
        return populated(args[0], default, n)
    if tp is Any:
        return {"k": [n.next(), "v", 1.5, None, True, {"deep": [1, 2]}]}
    if tp is str:
        return f"s{n.next()}"
    if tp is bool:
        return default is not True
    if tp is int:
        return 1000 + n.next()
    if tp is float:
        return 0.25 + n.next()
    if origin is typing.Literal:
        return next(a for a in args if a != default)
    if origin in (typing.Union, types.UnionType):
        return populated(next(a for a in args if a is not type(None)), dataclasses.MISSING, n)
    if origin in (set, frozenset):
        return origin({populated(args[0], n=n), populated(args[0], n=n)})
    if origin is list:
        return [populated(args[0], n=n), populated(args[0], n=n)]
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return (populated(args[0], n=n), populated(args[0], n=n))
        return tuple(populated(a, n=n) for a in args)
    if origin in (dict, Mapping):
        return {populated(args[0], n=n): populated(args[1], n=n) for _ in range(2)}
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        kwargs = {}
        for f in dataclasses.fields(tp):
            if f.init:
                d: Any = f.default
                if f.default_factory is not dataclasses.MISSING:
                    d = f.default_factory()
                kwargs[f.name] = populated(hints[f.name], d, n)
        return tp(**kwargs)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        values = {name: populated(info.annotation, info.get_default(call_default_factory=True), n)
                  for name, info in tp.model_fields.items()}
        return tp.model_construct(set(values), **values)
    raise TypeError(f"the test cannot populate {tp!r}: teach tests/unit/test_snapshots.populated")


def _records(value: Any) -> Iterator[Any]:
    """Every dataclass and pydantic model instance inside ``value``."""
    if isinstance(value, BaseModel) or (dataclasses.is_dataclass(value) and not isinstance(value, type)):
        yield value
        children: Any = ([getattr(value, n) for n in type(value).model_fields] if isinstance(value, BaseModel)
                         else [getattr(value, f.name) for f in dataclasses.fields(value)])
    elif isinstance(value, dict):
        children = [*value.keys(), *value.values()]
    elif isinstance(value, list | tuple | set | frozenset):
        children = list(value)
    else:
        return
    for child in children:
        yield from _records(child)


def test_a_state_with_every_field_set_round_trips() -> None:
    s = populated(DeciderSnapshot)
    classes: set[type] = set()
    for record in _records(s):
        classes.add(type(record))
        if isinstance(record, BaseModel):
            for name, info in type(record).model_fields.items():
                assert getattr(record, name) != info.get_default(call_default_factory=True), name
        else:
            for f in dataclasses.fields(record):
                if f.init and f.default is not dataclasses.MISSING:
                    assert getattr(record, f.name) != f.default, f"{type(record).__name__}.{f.name}"
                if f.init and f.default_factory is not dataclasses.MISSING:
                    assert getattr(record, f.name) != f.default_factory(), f"{type(record).__name__}.{f.name}"
    # Every class the state is made of is in it (a new one would be reached the same way).
    assert {PoolState, AgentState, RetryPolicy, PoolPolicy, OpenCommand} <= classes
    back = round_trip(s)
    assert back.states == s.states


def test_non_finite_floats_come_back() -> None:
    state = PoolState("p", limits=(math.inf, -math.inf, 1.0, 2.0), used=[math.nan, 0.0, -0.0, 1e308])
    state.agents["a"] = AgentState("a", "llm", frozenset({"x"}), 1, weight=math.inf,
                                   breaker_cooldown_s=-math.inf)
    back = snap.decode(snap.encode(DeciderSnapshot(0, 1, {"p": state})))
    assert_identical(DeciderSnapshot(0, 1, {"p": state}), back)
    assert math.copysign(1.0, back.states["p"].used[2]) == -1.0


def test_equal_capability_sets_are_one_object_live_and_after_a_snapshot() -> None:
    # Every task keeps its capability sets, and a fleet asks for few distinct ones: sharing them is
    # what keeps 50,000 tasks from holding 200,000 copies (216 bytes each) of a handful of sets.
    from contracts import event_types as e
    from services.domain.evolution import apply_event

    state = PoolState("p")
    for i, caps in enumerate([("code", "text"), ("text", "code"), ("text",), ("code", "text")]):
        apply_event(state, e.TaskSubmitted, e.TaskSubmitted(task_id=f"t{i}", type="x", priority=1,
                                                            required_capabilities=caps), i, f"c{i}")
    live = state.tasks
    assert live["t0"].required is live["t1"].required is live["t3"].required
    assert live["t0"].required == {"code", "text"} and live["t2"].required == {"text"}
    assert live["t0"].preferred is live["t2"].preferred
    back = snap.decode(snap.encode(DeciderSnapshot(0, 4, {"p": state}))).states["p"].tasks
    assert back["t0"].required is back["t1"].required is back["t3"].required is live["t0"].required
    assert back["t2"].required is live["t2"].required


def test_a_pydantic_models_fields_set_comes_back() -> None:
    state = PoolState("p", policy=PoolPolicy(default_strategy="round_robin"))
    state.agents["a"] = AgentState("a", "llm", frozenset(), 1, retry=RetryPolicy(max_attempts=5))
    back = snap.decode(snap.encode(DeciderSnapshot(0, 1, {"p": state}))).states["p"]
    assert back.policy.model_fields_set == {"default_strategy"}
    assert back.policy.model_dump(exclude_unset=True) == {"default_strategy": "round_robin"}
    assert back.agents["a"].retry is not None and back.agents["a"].retry.model_fields_set == {"max_attempts"}


# -- what the codec refuses ------------------------------------------------------------------------


@dataclass
class _WithTime:
    at: datetime


@dataclass
class _A:
    x: int


@dataclass
class _B:
    y: int


@dataclass
class _Union:
    either: _A | _B


@dataclass
class _Derived:
    x: int
    cached: int = field(init=False, default=0)  # takes part in equality, but __init__ cannot set it


class _Private(BaseModel):
    x: int = 0
    _secret: int = PrivateAttr(default=0)


@pytest.mark.parametrize("tp", [_WithTime, _Union, _Derived, _Private])
def test_a_type_the_codec_cannot_round_trip_refuses_to_compile(tp: type) -> None:
    with pytest.raises(TypeError, match="snapshot codec"):
        snap._codec(tp)


def test_a_subclass_where_the_state_declares_a_class_is_refused() -> None:
    class Special(RetryPolicy):
        pass

    state = PoolState("p")
    state.agents["a"] = AgentState("a", "llm", frozenset(), 1, retry=Special())
    with pytest.raises(SnapshotError, match="Special"):
        snap.encode(DeciderSnapshot(0, 1, {"p": state}))


def test_a_value_json_cannot_hold_is_refused_on_encode() -> None:
    state = PoolState("p")
    state.sequence = 2**70
    with pytest.raises(SnapshotError, match="cannot be written"):
        snap.encode(DeciderSnapshot(0, 1, {"p": state}))


# -- bodies that must not decode -------------------------------------------------------------------


def _parts(body: bytes) -> tuple[Any, bytes]:
    """A body's JSON header and the binary sections after it."""
    raw = lz4.frame.decompress(body)
    mark, n = struct.unpack_from("<4sQ", raw)
    assert mark == b"\x00abs"
    return orjson.loads(raw[12:12 + n]), raw[12 + n:]


def _body(header: Any, sections: bytes = b"") -> bytes:
    head = orjson.dumps(header)
    return bytes(lz4.frame.compress(struct.pack("<4sQ", b"\x00abs", len(head)) + head + sections))


def _valid_tree() -> Any:
    return _parts(snap.encode(DeciderSnapshot(3, 7, {"p": PoolState("p")})))[0]


def _columns(n: int, lines: bytes, **more: Any) -> Any:
    return {**_valid_tree(), "columns": {"n": n, "ids_bytes": len(lines), "digests": [], **more}}


def _int64s(*values: int) -> bytes:
    return struct.pack(f"<{len(values)}q", *values)


def _seen_of(runs: list[int], others: list[Any]) -> Any:
    tree = _valid_tree()
    tree["snapshot"][2]["p"][snap._SEEN_AT] = [runs, others]
    return tree


@pytest.mark.parametrize(("body", "why"), [
    (b"", "not lz4"),
    (b"not a snapshot at all", "not lz4"),
    (bytes(lz4.frame.compress(b"{not json")), "header is not JSON"),
    (bytes(lz4.frame.compress(b"\x01\x00")), "no header"),
    (bytes(lz4.frame.compress(struct.pack("<4sQ", b"\x00xyz", 2) + b"{}")), "no header"),
    (bytes(lz4.frame.compress(struct.pack("<4sQ", b"\x00abs", 99) + b"{}")), "cut short"),
    (_body([1, 2]), "no header"),
    # A body of format 2 or older was JSON alone: refused by its format, never misread.
    (bytes(lz4.frame.compress(orjson.dumps({**_valid_tree(), "format": 2}))), "format 2, this version reads"),
    (_body({**_valid_tree(), "format": FORMAT + 1}), f"format {FORMAT + 1}"),
    (_body({**_valid_tree(), "schema": "0" * 32}), "another state schema"),
    (_body({**_valid_tree(), "snapshot": [1, 2]}), "expected 5 fields"),
    (_body({**_valid_tree(), "snapshot": [1, 2, {"p": 5}, None, [None, 0, 0, None]]}),
     "does not decode"),
    (_body(_columns(1, b"c"), b"c" + _int64s(4)), "the outcome columns take 9 bytes, not the 17"),
    (_body(_columns(2, b"c"), b"c" + _int64s(4, 5, 1, 1)), "1 outcome ids where the header says 2"),
    (_body(_columns(1, b"c", digests=[[1, "d"]]), b"c" + _int64s(4, 1)), "an outcome digest at 1 of 1"),
    (_body(_columns(-1, b"")), "not counts"),
    (_body(_columns(1, b"", ids=[7]), _int64s(4, 1)), "not a list of strings"),
    (_body(_seen_of([0, 1], [])), r"a run of seen command ids \(0, 1\) outside the 0"),
    (_body(_seen_of([0], [])), "not runs and ids"),
    (_body(_seen_of([], [5])), "other seen command ids are not strings"),
    (_body({k: v for k, v in _valid_tree().items() if k != "snapshot"}), "does not decode"),
    (_body({k: v for k, v in _valid_tree().items() if k != "columns"}), "does not decode"),
])
def test_a_body_that_cannot_be_used_raises_snapshot_error(body: bytes, why: str) -> None:
    with pytest.raises(SnapshotError, match=why):
        snap.decode(body)


def test_a_valid_body_names_its_partition_and_position() -> None:
    back = snap.decode(_body(_valid_tree()))
    assert (back.partition, back.position, list(back.states)) == (3, 7, ["p"])


def test_the_schema_digest_follows_the_fields() -> None:
    """The digest is of the field names and types: a renamed or retyped field gives another."""
    name = snap._codec(DeciderSnapshot).name
    assert "TaskState{task_id:str," in name and "spent:dict[tuple[str,str],int]" in name
    assert snap.schema_digest() == snap._SCHEMA and len(snap.schema_digest()) == 32
