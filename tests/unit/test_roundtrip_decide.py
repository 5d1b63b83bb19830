"""Whatever the contracts accept, the decider rejects it or emits events that read back equal.

Every command type, drawn with boundary values (the bounds themselves, the tiniest and hugest
floats, 64-bit integers, astral characters, empty and longest strings, nested free-form data),
is decided against a pool where most commands apply (agents registered, tasks queued, assigned
and running, an allocation, policies and timers). Each event is then written by the codec and
read back, as the log does; ``decide`` may raise ``Rejected`` and nothing else.
"""

from __future__ import annotations

import copy
import math
import types
import typing
from datetime import UTC, datetime
from functools import cache
from typing import Any, Literal

import annotated_types as at
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from contracts import Payload, Reason
from contracts import commands as c
from contracts.roundtrip import Unreadable, check, full_check
from contracts.values import INT64_MAX, INT64_MIN, MAX_JSON_DEPTH
from events.codec import decode, encode, from_record
from events.log import StoredRecord
from services.domain.decider import Rejected, decide, evolve
from services.domain.envelopes import rejection
from services.domain.state import PoolState
from tests.gwt import wrap

POOL = "default"
AGENTS = ("a1", "a2", "a3")
TASKS = ("t1", "t2", "t3", "t4")
SETUP: list[c.Command] = [
    c.RegisterAgent(agent_id="a1", name="one", capabilities=("text", "code"), capacity=10),
    c.RegisterAgent(agent_id="a2", name="two", kind="gpu", capabilities=("text",), capacity=2),
    c.SetResourceLimits(max_cpu_cores=1000, max_memory_mb=1e9, max_disk_mb=1e9, max_network_mbps=1e6),
    c.AllocateResources(allocation_id="al1", agent_id="a1", cpu_cores=1, memory_mb=512),
    c.SubmitTask(task_id="t1", type="x", required_capabilities=("text",)),
    c.SubmitTask(task_id="t2", type="x", timeout_s=60, retry=c.RetryPolicy(max_attempts=3)),
    c.AssignTask(task_id="t2", agent_id="a1"),
    c.SubmitTask(task_id="t3", type="x"),
    c.AssignTask(task_id="t3", agent_id="a1"),
    c.StartTask(task_id="t3", agent_id="a1"),
    c.SetScalingPolicy(agent_kind="generic", min_agents=0, max_agents=100),
    c.SetRateLimit(scope_id="a1", requests_per_min=100),
]


def _setup() -> PoolState:
    state = PoolState(POOL)
    for i, cmd in enumerate(SETUP):
        for env in wrap(decide(state, cmd), pool=POOL, start=state.sequence, command_id=f"setup-{i}"):
            evolve(state, env)
    return state


STATE = _setup()
TIMERS = sorted(STATE.timers)
assert TIMERS, "the setup arms timers (heartbeats, the task timeout)"

# --- boundary-biased strategies from the models' own declarations ------------------------------

ASTRAL = "\U0001f600"
TINY, SMALLEST_NORMAL, HUGE = 5e-324, 2.2250738585072014e-308, 1.7976931348623157e308
NAME_CHARS = st.characters(categories=("L", "N"), include_characters="-_:." + ASTRAL)
TEXT_CHARS = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")

JSON_LEAF = (st.none() | st.booleans()
             | st.sampled_from([INT64_MIN, INT64_MAX, 0, -1, 2**53 + 1])
             | st.integers(INT64_MIN, INT64_MAX)
             | st.sampled_from([TINY, -TINY, SMALLEST_NORMAL, HUGE, -HUGE, 0.1, -0.0, 1e-300])
             | st.floats(allow_nan=False, allow_infinity=False)
             | st.sampled_from(["", ASTRAL * 50, "é", "\u2028", "a\\u0000b"])
             | st.text(TEXT_CHARS, max_size=20))
JSON: st.SearchStrategy[Any] = st.recursive(
    JSON_LEAF,
    lambda inner: (st.lists(inner, max_size=3)
                   | st.dictionaries(st.text(TEXT_CHARS, max_size=8), inner, max_size=3)),
    max_leaves=12,
)


def _deep(depth: int) -> Any:
    value: Any = [ASTRAL]
    for i in range(depth - 1):
        value = {f"k{i}": value}
    return value


JSON_OBJECT = st.dictionaries(st.text(TEXT_CHARS, max_size=8), JSON, max_size=4) | st.just(
    {"deep": _deep(MAX_JSON_DEPTH - 1)})


def _flat(metadata: list[Any]) -> list[Any]:
    out: list[Any] = []
    for m in metadata:
        out.extend(_flat(list(m.metadata)) if isinstance(m, FieldInfo) else [m])
    return out


def _bound(metadata: list[Any], kind: type, attr: str) -> Any:
    return next((getattr(m, attr) for m in metadata if isinstance(m, kind)), None)


def _is_name(metadata: list[Any]) -> bool:
    return any(getattr(getattr(m, "func", None), "__name__", "") in ("_id", "_name", "_capabilities")
               for m in metadata)


def _floats(metadata: list[Any]) -> st.SearchStrategy[float]:
    ge, gt = _bound(metadata, at.Ge, "ge"), _bound(metadata, at.Gt, "gt")
    le, lt = _bound(metadata, at.Le, "le"), _bound(metadata, at.Lt, "lt")
    lo = ge if ge is not None else gt if gt is not None else -HUGE
    hi = le if le is not None else lt if lt is not None else HUGE
    edges = [float(lo), float(hi), TINY, SMALLEST_NORMAL, 0.1, 1.0, math.nextafter(float(hi), -math.inf),
             math.nextafter(float(lo), math.inf), 1e-300, -TINY]
    inside = [x for x in edges
              if (lo < x if gt is not None else lo <= x) and (x < hi if lt is not None else x <= hi)]
    return st.sampled_from(inside) | st.floats(lo, hi, exclude_min=gt is not None, exclude_max=lt is not None,
                                               allow_nan=False, allow_infinity=False)


def _ints(metadata: list[Any]) -> st.SearchStrategy[int]:
    ge, gt = _bound(metadata, at.Ge, "ge"), _bound(metadata, at.Gt, "gt")
    le, lt = _bound(metadata, at.Le, "le"), _bound(metadata, at.Lt, "lt")
    lo = ge if ge is not None else gt + 1 if gt is not None else INT64_MIN
    hi = le if le is not None else lt - 1 if lt is not None else INT64_MAX
    edges = [x for x in (lo, hi, lo + 1, hi - 1, 0, 1, 2**31 - 1, 2**53 + 1) if lo <= x <= hi]
    return st.sampled_from(edges) | st.integers(lo, hi)


def _strings(metadata: list[Any]) -> st.SearchStrategy[str]:
    lo = _bound(metadata, at.MinLen, "min_length") or 0
    hi = _bound(metadata, at.MaxLen, "max_length") or 300
    pattern = next((m.pattern for m in metadata if isinstance(getattr(m, "pattern", None), str)), None)
    if pattern is not None:  # a format (a sealed secret, a header name): drawn from it, within the bounds
        return st.from_regex(pattern, fullmatch=True).filter(lambda v: lo <= len(v) <= hi)
    chars = NAME_CHARS if _is_name(metadata) else TEXT_CHARS
    edges = [s for s in ("", "x" * hi, ASTRAL * hi, "é" * hi, "x", "日本") if lo <= len(s) <= hi]
    return st.sampled_from(edges) | st.text(chars, min_size=lo, max_size=min(hi, 40))


def _ids(known: tuple[str, ...]) -> st.SearchStrategy[str]:
    return st.sampled_from(known) | st.sampled_from(["x" * 200, ASTRAL * 200, "new-é"])


# Fields whose value should usually name something in the pool, so the command mostly applies.
KNOWN: dict[str, st.SearchStrategy[Any]] = {
    "agent_id": _ids(AGENTS),
    "task_id": _ids(TASKS),
    "allocation_id": _ids(("al1", "al2")),
    "timer_id": _ids(tuple(TIMERS)),
    "generation": st.sampled_from(sorted({t.generation for t in STATE.timers.values()})) | _ints([at.Ge(0)]),
    "agent_kind": st.sampled_from(["generic", "gpu", "x" * 100, ASTRAL * 100]),
    "scope_id": st.sampled_from(["a1", POOL, "x" * 200]),
}


def for_type(tp: Any, metadata: list[Any]) -> st.SearchStrategy[Any]:
    """Values of ``tp`` within its declared constraints, biased towards their edges."""
    if typing.get_origin(tp) is typing.Annotated:
        inner, *extra = typing.get_args(tp)
        return for_type(inner, [*metadata, *_flat(extra)])
    metadata = _flat(metadata)
    origin = typing.get_origin(tp)
    if tp is Any:
        return JSON
    if tp is type(None):
        return st.none()
    if origin in (typing.Union, types.UnionType):
        return st.one_of([for_type(a, metadata if a is not type(None) else []) for a in typing.get_args(tp)])
    if origin is Literal:
        return st.sampled_from(typing.get_args(tp))
    if tp is bool:
        return st.booleans()
    if tp is str:
        return _strings(metadata)
    if tp is int:
        return _ints(metadata)
    if tp is float:
        return _floats(metadata)
    if origin is tuple:
        item, _ = typing.get_args(tp)
        names = [m for m in metadata if _is_name([m])]
        return st.lists(for_type(item, names), max_size=3).map(tuple)
    if origin is dict:
        _, value = typing.get_args(tp)
        if value is Any:
            return JSON_OBJECT
        return st.dictionaries(_strings([]), for_type(value, []), max_size=3)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return model_strategy(tp)
    if tp is datetime:
        return st.datetimes(timezones=st.just(UTC))
    raise NotImplementedError(f"no strategy for {tp!r}")


def _validate(model: type[BaseModel], fields: dict[str, Any]) -> BaseModel | None:
    try:
        return model.model_validate(fields)
    except ValidationError:  # a model rule across fields (min <= max...) may still refuse
        return None


@cache
def model_strategy(model: type[BaseModel]) -> st.SearchStrategy[Any]:
    required, optional = {}, {}
    for name, info in model.model_fields.items():
        if name in KNOWN and issubclass(model, c.Command):
            strategy = KNOWN[name] | st.none() if not info.is_required() else KNOWN[name]
        else:
            strategy = for_type(info.annotation, list(info.metadata))
        (required if info.is_required() else optional)[name] = strategy
    return (st.fixed_dictionaries(required, optional=optional)
            .map(lambda fields: _validate(model, fields))
            .filter(lambda m: m is not None))


# --- the property -------------------------------------------------------------------------------


def _reads_back(events: list[Payload], state: PoolState) -> None:
    """Each event through the codec as the log writes and reads it, then into the state."""
    for i, env in enumerate(wrap(events, pool=POOL, start=state.sequence, command_id="cmd")):
        raw = encode(env)
        assert decode(raw).data == env.data, type(env.data).__name__
        stored = StoredRecord("events", 0, i, POOL, raw, env.id, (), 0)
        assert from_record(stored).data == env.data
        evolve(state, env)


COMMAND_NAMES = [m.__name__ for m in c.ALL]


@pytest.mark.parametrize("name", COMMAND_NAMES)
# Executor configurations inside workflow definitions hold many long strings at their bounds: the
# failing example's repr may be large, which says nothing about the command.
@pytest.mark.filterwarnings("ignore:Generating overly large repr")
@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                 HealthCheck.data_too_large])
@given(data=st.data())
def test_every_accepted_command_yields_events_that_read_back_equal(name: str, data: st.DataObject) -> None:
    model = getattr(c, name)
    cmd = data.draw(model_strategy(model), label="command")
    state = copy.deepcopy(STATE)
    try:
        events = decide(state, cmd)
    except Rejected as exc:
        # The rejection is an event too: it must read back like any other.
        _reads_back([rejection(name, exc, cmd.subject())], state)
        return
    _reads_back(events, state)


def test_the_setup_lets_commands_apply() -> None:
    # Not a pool where everything is rejected: the property above is about applied commands.
    state = copy.deepcopy(STATE)
    assert decide(state, c.CompleteTask(task_id="t3", result={"n": INT64_MAX}))
    assert decide(state, c.FireTimer(timer_id=TIMERS[0], generation=STATE.timers[TIMERS[0]].generation))


# --- what the check refuses ---------------------------------------------------------------------


def test_an_event_that_would_not_read_back_rejects_the_command() -> None:
    # Audits are lenient (events reuse them), so a NUL in one reaches the decider: not appended.
    audit = c.SelectionAudit(strategy="least\x00loaded")
    with pytest.raises(Rejected) as caught:
        decide(copy.deepcopy(STATE), c.AssignTask(task_id="t1", agent_id="a1", audit=audit))
    assert caught.value.code is Reason.UNREADABLE_EVENT
    assert "TaskAssigned" in caught.value.message and "audit.strategy" in caught.value.message
    assert caught.value.details == {"event_type": "TaskAssigned", "field": "audit.strategy"}


def test_an_event_its_own_contract_refuses_rejects_the_command() -> None:
    # Built without validation, as a command of an older version might be: the event refuses inf.
    cmd = c.SubmitTask.model_construct(task_id="t9", type="x", timeout_s=math.inf)
    with pytest.raises(Rejected) as caught:
        decide(copy.deepcopy(STATE), cmd)
    assert caught.value.code is Reason.UNREADABLE_EVENT
    assert caught.value.details == {"event_type": "TaskSubmitted", "field": "timeout_s"}


@pytest.mark.parametrize(("equals", "problem"),
                         [(2**64, "64-bit"), ("a\x00", "NUL"), ("\udc00", "surrogate")])
def test_the_check_names_type_field_and_problem(equals: Any, problem: str) -> None:
    policy = c.SetPoolPolicy(inference_rules=(c.InferenceRule(key="k", equals=equals, capability="c"),))
    for checker in (check, full_check):
        with pytest.raises(Unreadable) as caught:
            checker(policy)
        assert caught.value.type_name == "SetPoolPolicy"
        assert caught.value.where == "inference_rules[0].equals"
        assert problem in caught.value.problem


def test_the_fast_check_and_the_full_one_agree_on_good_payloads() -> None:
    task = c.SubmitTask(task_id="t", type="x", data={"a": [1, 2.5, None, True, {"b": ASTRAL}]})
    check(task)
    full_check(task)
