"""Recorded event histories replayed through ``evolve`` and the coordinator (STYLE #8).

Each ``tests/histories/<name>.ndjson`` is a real pool history, one CloudEvents JSON per line
exactly as the log stores it (``events.codec.encode``). Replaying it must rebuild into the state
summarised in ``<name>.expected.json``: per pool the decider's agents, tasks, resources, spending,
budgets and sequence, and the coordinator's loads, task statuses and what it would issue now. A
change that alters what a history rebuilds into fails here with a diff of the two summaries.

When such a change is intended, accept it deliberately and review the diff in git::

    AGENTBUS_REGENERATE_HISTORIES=1 pytest tests/unit/test_histories.py

The histories themselves are fixtures and are not rewritten by that. They were recorded by
running the scenarios in ``SCENARIOS`` through the real decider + coordinator loop
(``tests.gwt.Loop``: fixed command ids, event ids ``<command id>#<sequence>``, times one second
apart per decision, the audit's wall-clock ``decision_us`` zeroed). Only to add or change a
scenario, record them again, then regenerate::

    AGENTBUS_RECORD_HISTORIES=1 AGENTBUS_REGENERATE_HISTORIES=1 pytest tests/unit/test_histories.py

``budgets.ndjson`` holds one CostRecorded written at schema version 1 (``tokens_in`` and
``tokens_out``, no pricing flag), so every replay goes through the upcaster.
"""

from __future__ import annotations

import difflib
import json
import os
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from contracts import Envelope, Payload
from contracts import commands as c
from contracts import event_types as e
from contracts.money import to_usd
from events.codec import decode, encode, envelope_dict, from_record
from events.log import StoredRecord
from services.coordination.coordinator import Coordinator
from services.domain.decider import evolve
from services.domain.replay import RAW_FIELDS, replay_record
from services.domain.state import PoolState
from tests.gwt import T0, Loop

HISTORIES = Path(__file__).resolve().parent.parent / "histories"
REGENERATE = os.environ.get("AGENTBUS_REGENERATE_HISTORIES") == "1"
RECORD = os.environ.get("AGENTBUS_RECORD_HISTORIES") == "1"

# The CostRecorded (by cost id) that budgets.ndjson keeps at schema version 1.
V1_COST = "k-a-2"


# -- the scenarios the histories were recorded from ---------------------------------------------


def _agent(agent_id: str, caps: tuple[str, ...] = (), capacity: int = 1) -> c.RegisterAgent:
    return c.RegisterAgent(agent_id=agent_id, name=f"agent {agent_id}", kind="llm", capabilities=caps,
                           capacity=capacity)


def _task(task_id: str, req: tuple[str, ...] = (), priority: int = 5, **data: Any) -> c.SubmitTask:
    return c.SubmitTask(task_id=task_id, type="work", priority=priority, required_capabilities=req, data=data)


class Script:
    """Drives a Loop in batches: each batch is queued, then decided until quiet."""

    def __init__(self, pool: str) -> None:
        self.loop = Loop(pool=pool)
        self.n = 0

    def batch(self, *cmds: Payload) -> None:
        for cmd in cmds:
            self.n += 1
            self.loop.send(cmd, f"cmd-{self.n:03d}")
        self.loop.run()


def lifecycle() -> Loop:
    """Agents with skills, priorities, the whole task lifecycle, resources, a deregistration."""
    s = Script("default")
    s.batch(c.SetResourceLimits(max_cpu_cores=8, max_memory_mb=16_384, max_disk_mb=100_000,
                                max_network_mbps=1000))
    s.batch(_agent("planner", ("plan",), 2), _agent("coder", ("code", "python"), 2),
            _agent("reviewer", ("review",)))
    s.batch(
        _task("t1", ("code",)),
        _task("t2", ("code", "python"), priority=8),
        _task("t3", ("review",)),
        _task("t4", ("plan",)),
        _task("t5", ("gpu",)),  # nobody has a GPU: marked unassignable
        _task("t6", ("code",), priority=1),
        _task("t7", ("code",), priority=9),
    )
    s.batch(
        c.AllocateResources(allocation_id="r1", agent_id="coder", cpu_cores=2, memory_mb=4096),
        c.AllocateResources(allocation_id="r2", agent_id="planner", cpu_cores=1, memory_mb=2048),
        c.AllocateResources(allocation_id="r3", agent_id="reviewer", cpu_cores=6, memory_mb=1024),  # over
    )
    s.batch(c.StartTask(task_id="t1", agent_id="coder"))
    s.batch(c.CompleteTask(task_id="t1", agent_id="coder", result={"lines": 120}))  # frees a slot for t7
    s.batch(c.StartTask(task_id="t3", agent_id="reviewer"), c.FailTask(task_id="t3", error="timeout"))
    s.batch(c.CancelTask(task_id="t4", reason="not needed"))
    s.batch(_task("t8", ("plan",)), c.CancelTask(task_id="t8"))  # cancelled while its assignment flies
    s.batch(c.ReleaseResources(allocation_id="r2"))
    s.batch(c.DeregisterAgent(agent_id="coder", reason="maintenance"))  # t2, t7 back to the queue
    s.batch(_agent("coder-2", ("code", "python"), 3))
    s.batch(c.CompleteTask(task_id="t2"), c.CompleteTask(task_id="t7", agent_id="wrong"))
    return s.loop


def budgets() -> Loop:
    """Pool, agent and workflow budgets spent by costs, parked work, budgets raised again."""
    s = Script("default")
    s.batch(_agent("a", capacity=2), _agent("b", capacity=2))
    s.batch(
        c.SetBudget(limit_usd=10),
        c.SetBudget(scope="agent", scope_id="a", limit_usd=1),
        c.SetBudget(scope="workflow", scope_id="wf-1", limit_usd=2),
    )
    s.batch(_task("t1", workflow_id="wf-1"), _task("t2", workflow_id="wf-1"), _task("t3", workflow_id="wf-2"),
            _task("t4"))
    s.batch(
        c.RecordCost(cost_id="k-a-1", agent_id="a", task_id="t1", model="gpt-4o", input_tokens=20_000,
                     output_tokens=5_000),
        c.RecordCost(cost_id=V1_COST, agent_id="a", task_id="t1", model="gpt-4o", input_tokens=300_000,
                     output_tokens=40_000, cost_usd=1.2),  # agent a is spent
    )
    s.batch(c.CompleteTask(task_id="t1"), _task("t5"), _task("t6", workflow_id="wf-1"))  # a is skipped
    s.batch(c.RecordCost(cost_id="k-b-1", agent_id="b", task_id="t2", model="claude-sonnet-4",
                         input_tokens=100_000, output_tokens=40_000))  # wf-1 is spent
    s.batch(c.CompleteTask(task_id="t2"), _task("t7", workflow_id="wf-1"))  # refused: wf-1 is spent
    s.batch(_task("t8"))  # waits: b is full, a is spent
    s.batch(c.RecordCost(cost_id="k-b-2", agent_id="b", model="o3", cost_usd=8))  # the pool is spent
    s.batch(c.SetBudget(scope="agent", scope_id="a", limit_usd=5))  # a has room, the pool has no money
    s.batch(*(c.CompleteTask(task_id=t) for t in ("t3", "t4", "t5")))
    s.batch(c.SetBudget(limit_usd=50))  # t8 starts
    s.batch(c.SetBudget(scope="workflow", scope_id="wf-1", limit_usd=10))  # parked t6 starts
    return s.loop


def churn() -> Loop:
    """Agents leave and come back while assignments fly; ends with assignments still in flight."""
    s = Script("edge")
    s.batch(_agent("e1", ("x",), 2), _agent("e2", ("x", "y"), 2))
    # e1 comes back with less room while its assignments are decided behind the re-registration.
    s.batch(_task("u1", ("x",)), _task("u2", ("x",)), _task("u3", ("x",)), c.DeregisterAgent(agent_id="e1"),
            _agent("e1", ("x",), 1))
    s.batch(c.CompleteTask(task_id="u2"), c.CompleteTask(task_id="u3"))
    # e2 comes back without x while u4 flies to it (e1 is full): CAPABILITY_MISMATCH, u4 waits.
    s.batch(_task("u4", ("x",)), c.DeregisterAgent(agent_id="e2"), _agent("e2", ("y",), 2))
    # e1 frees its slot and leaves before u4's assignment to it is decided: AGENT_NOT_ACTIVE.
    s.batch(c.CompleteTask(task_id="u1"), c.DeregisterAgent(agent_id="e1"), _task("u5", ("y",)))
    s.batch(c.RecordCost(cost_id="k1", agent_id="e2", task_id="u5", model="m", cost_usd=0.25))
    # The process stops here: e3's registration is decided, the assignments it caused are not.
    s.n += 1
    s.loop.send(_agent("e3", ("x", "y"), 3), f"cmd-{s.n:03d}")
    s.loop.step()
    assert any(by for _, _, by in s.loop.queue), "the history should end with assignments in flight"
    return s.loop


SCENARIOS: dict[str, Callable[[], Loop]] = {"lifecycle": lifecycle, "budgets": budgets, "churn": churn}


def record(name: str) -> bytes:
    """The NDJSON of scenario ``name``: its events, times one second apart per decision."""
    loop = SCENARIOS[name]()
    lines: list[bytes] = []
    for i, d in enumerate(loop.decisions, start=1):
        for env in d.events:
            timed = env.model_copy(update={"time": T0 + timedelta(seconds=i), "data": _untimed(env.data)})
            if isinstance(env.data, e.CostRecorded) and env.data.cost_id == V1_COST:
                lines.append(_as_v1(timed))
            else:
                lines.append(encode(timed))
    return b"".join(line + b"\n" for line in lines)


def _untimed(ev: Any) -> Any:
    """An assignment's audit without its wall-clock ``decision_us`` (the one non-deterministic field)."""
    if isinstance(ev, e.TaskAssigned) and ev.audit is not None:
        return ev.model_copy(update={"audit": ev.audit.model_copy(update={"decision_us": 0.0})})
    return ev


def _as_v1(env: Envelope) -> bytes:
    """A CostRecorded as schema version 1 wrote it."""
    obj = envelope_dict(env)
    data = dict(obj["data"])
    data["tokens_in"], data["tokens_out"] = data.pop("input_tokens"), data.pop("output_tokens")
    del data["priced_from_table"]
    obj.update(schemaversion=1, dataschema="urn:agentbus:schema:CostRecorded:1", data=data)
    return orjson.dumps(obj)


# -- replay and summary -----------------------------------------------------------------------------


def lines_of(name: str) -> list[bytes]:
    return (HISTORIES / f"{name}.ndjson").read_bytes().splitlines()


def replay(envelopes: list[Envelope]) -> tuple[dict[str, PoolState], Coordinator]:
    states: dict[str, PoolState] = {}
    coordinator = Coordinator()
    for env in envelopes:
        state = states.get(env.pool)
        if state is None:
            state = states[env.pool] = PoolState(env.pool)
        evolve(state, env)
        coordinator.observe(env)
    return states, coordinator


def _key(scope: tuple[str, str]) -> str:
    return f"{scope[0]}:{scope[1]}"


def summary(envelopes: list[Envelope]) -> dict[str, Any]:
    """What the history rebuilds into, as plain JSON."""
    states, coordinator = replay(envelopes)
    pools: dict[str, Any] = {}
    for pool, st in sorted(states.items()):
        view = coordinator.view(pool)
        pools[pool] = {
            "sequence": st.sequence,
            "agents": {
                a.agent_id: {"active": a.active, "capacity": a.capacity,
                             "capabilities": sorted(a.capabilities), "tasks": sorted(a.tasks),
                             "allocations": sorted(a.allocations)}
                for a in sorted(st.agents.values(), key=lambda a: a.agent_id)
            },
            "tasks": {
                t.task_id: {"status": t.status, "agent": t.agent_id, "attempts": t.attempts}
                for t in sorted(st.tasks.values(), key=lambda t: t.task_id)
            },
            "resources": {"limits": None if st.limits is None else list(st.limits), "used": list(st.used)},
            "costs": len(st.costs),
            # Kept in micro-dollars, shown in USD as the API shows them.
            "spent": {_key(k): to_usd(v) for k, v in sorted(st.spent.items())},
            "budgets": {_key(k): to_usd(v) for k, v in sorted(st.budgets.items())},
            "exceeded": sorted(_key(k) for k in st.exceeded),
            "coordinator": {
                "loads": {a.agent_id: a.load for a in sorted(view.agents.values(), key=lambda a: a.agent_id)},
                "tasks": {t.task_id: t.status for t in sorted(view.tasks.values(), key=lambda t: t.task_id)},
                "exhausted": sorted(_key(k) for k in view.exhausted),
                # What a coordinator rebuilt from this history issues first (ids are deterministic).
                "next": [
                    [a.command_id, type(a.command).__name__,
                     a.command.model_dump(include={"task_id", "agent_id"})]
                    for a in view.schedule()
                ],
            },
        }
    types = Counter(env.type for env in envelopes)
    return {"events": len(envelopes), "types": dict(sorted(types.items())), "pools": pools}


def _text(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True) + "\n"


# -- tests ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_a_history_rebuilds_into_its_recorded_summary(name: str) -> None:
    if RECORD:
        (HISTORIES / f"{name}.ndjson").write_bytes(record(name))
    actual = _text(summary([decode(line) for line in lines_of(name)]))
    path = HISTORIES / f"{name}.expected.json"
    if REGENERATE:
        path.write_text(actual)
    expected = path.read_text()
    if actual != expected:
        diff = "".join(difflib.unified_diff(expected.splitlines(True), actual.splitlines(True),
                                            f"{path.name} (expected)", f"{name}.ndjson (replayed)"))
        pytest.fail(
            f"{name}.ndjson no longer rebuilds into {path.name}:\n{diff}\n"
            "If the change is intended: AGENTBUS_REGENERATE_HISTORIES=1 pytest tests/unit/test_histories.py",
            pytrace=False,
        )


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_the_runner_path_rebuilds_the_same(name: str) -> None:
    """``from_record`` (trusted attributes, as the deciders rebuild) agrees with a full decode."""
    lines = lines_of(name)
    records = [StoredRecord("events", 0, i, "", line, None, (), 0) for i, line in enumerate(lines)]
    assert summary([from_record(r) for r in records]) == summary([decode(line) for line in lines])


def _states() -> tuple[dict[str, PoolState], Callable[[str], PoolState]]:
    states: dict[str, PoolState] = {}

    def state_of(pool: str) -> PoolState:
        return states.get(pool) or states.setdefault(pool, PoolState(pool))

    return states, state_of


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_the_raw_replay_rebuilds_exactly_the_same_state(name: str) -> None:
    """The decider's replay evolves most events from their JSON (``services.domain.replay``) and
    decodes the rest: every field of every pool's state equals a replay of decoded envelopes."""
    full, full_of = _states()
    raw, raw_of = _states()
    raw_types: Counter[str] = Counter()
    for line in lines_of(name):
        env = decode(line)
        evolve(full_of(env.pool), env)
        if replay_record(raw_of, orjson.loads(line)):
            raw_types[env.type] += 1
        else:
            evolve(raw_of(env.pool), decode(line))
    assert raw == full
    # The raw path was taken, for every kind of event it lists that the history holds.
    held = {env.type for env in map(decode, lines_of(name))}
    listed = {kind.__name__ for kind in RAW_FIELDS} & held
    assert listed and listed <= set(raw_types), listed - set(raw_types)


def test_an_event_the_raw_replay_cannot_read_is_left_to_the_full_decode() -> None:
    """An older schema version (its upcaster), a field of another JSON type, a missing required
    field, a nested model present: replay_record changes nothing and answers False."""
    [v1] = [x for x in lines_of("budgets") if b'"schemaversion":1,' in x and b"CostRecorded" in x]
    [assigned] = [x for x in lines_of("lifecycle") if b'"type":"TaskAssigned"' in x][:1]
    obj = orjson.loads(assigned)
    bad_attempt = {**obj, "data": {**obj["data"], "attempt": "1"}}
    no_agent = {**obj, "data": {k: v for k, v in obj["data"].items() if k != "agent_id"}}
    [submitted] = [x for x in lines_of("lifecycle") if b'"type":"TaskSubmitted"' in x][:1]
    sub = orjson.loads(submitted)
    with_retry = {**sub, "data": {**sub["data"], "retry": {"max_attempts": 2}}}
    no_pool = {k: v for k, v in obj.items() if k != "pool"}
    bad_caps = {**sub, "data": {**sub["data"], "required_capabilities": ["x", 1]}}
    caps_not_a_list = {**sub, "data": {**sub["data"], "required_capabilities": "x"}}
    states, state_of = _states()
    for item in (orjson.loads(v1), bad_attempt, no_agent, with_retry, no_pool, {**obj, "type": "Nope"},
                 bad_caps, caps_not_a_list):
        assert replay_record(state_of, item) is False
    assert states == {}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_a_history_is_one_consistent_log(name: str) -> None:
    """Unique event ids; per pool, sequences 1, 2, 3, ... in log order; times never go back."""
    envelopes = [decode(line) for line in lines_of(name)]
    assert len({env.id for env in envelopes}) == len(envelopes)
    seqs: dict[str, list[int]] = {}
    for env in envelopes:
        seqs.setdefault(env.pool, []).append(env.sequence or 0)
    assert all(s == list(range(1, len(s) + 1)) for s in seqs.values()), seqs
    times = [env.time for env in envelopes]
    assert times == sorted(times)


def test_the_v1_cost_record_is_upcast_on_replay() -> None:
    [raw] = [x for x in lines_of("budgets") if b'"schemaversion":1,' in x and b"CostRecorded" in x]
    obj = orjson.loads(raw)
    assert obj["data"]["tokens_in"] == 300_000 and "input_tokens" not in obj["data"]
    env = decode(raw)
    assert env.schemaversion == 2
    assert isinstance(env.data, e.CostRecorded)
    assert (env.data.cost_id, env.data.input_tokens, env.data.output_tokens) == (V1_COST, 300_000, 40_000)
    assert (env.data.cost_usd, env.data.priced_from_table) == (1.2, False)


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_recording_is_deterministic(name: str) -> None:
    """Fixed ids and times: recording a scenario twice gives the same bytes."""
    assert record(name) == record(name)


def test_every_scenario_has_its_history_and_summary() -> None:
    assert sorted(p.name for p in HISTORIES.glob("*.ndjson")) == sorted(f"{n}.ndjson" for n in SCENARIOS)
    assert sorted(p.name for p in HISTORIES.glob("*.expected.json")) == sorted(
        f"{n}.expected.json" for n in SCENARIOS
    )


def test_a_raw_view_holds_what_the_contract_would_give_its_handler() -> None:
    """The views are written out per event type at import (``services.domain.replay``): of a
    submission that leaves out the optional fields, and of a cost whose amount is a JSON integer,
    they hold what validating the payload gives (defaults, factories, a float, a tuple)."""
    from services.domain.replay import _SPECS

    # Every optional field left out but the two arrays: an absent array's default is a tuple, not a
    # JSON value, so that record is decoded in full (stored events carry every field).
    assert _SPECS["TaskSubmitted"].view({"task_id": "t", "type": "demo", "priority": 5}) is None
    minimal = {"task_id": "t", "type": "demo", "priority": 5, "required_capabilities": [],
               "inferred_capabilities": []}
    view = _SPECS["TaskSubmitted"].view(minimal)
    model = e.TaskSubmitted.model_validate(minimal)
    assert view is not None
    for name in RAW_FIELDS[e.TaskSubmitted]:
        assert getattr(view, name) == getattr(model, name), name
    again = _SPECS["TaskSubmitted"].view(minimal)
    assert view.data == {} and again is not None and view.data is not again.data  # a new dict each
    caps = _SPECS["TaskSubmitted"].view({**minimal, "required_capabilities": ["a", "b"]})
    assert caps is not None and caps.required_capabilities == ("a", "b")
    cost = {"cost_id": "c", "agent_id": "a", "task_id": None, "cost_usd": 2}
    cview = _SPECS["CostRecorded"].view(cost)
    assert cview is not None and type(cview.cost_usd) is float and cview.cost_usd == 2.0
    assert _SPECS["CostRecorded"].view({**cost, "cost_usd": "2"}) is None
    assert _SPECS["CostRecorded"].view({k: v for k, v in cost.items() if k != "cost_id"}) is None
