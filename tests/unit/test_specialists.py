"""Specialists win under every strategy: capabilities inferred from a task's data are preferred
first, whatever the strategy, which then orders the agents as it always does; the selection audit
says so. Through the real decider (which infers) and coordinator (``tests.unit.fleet.World``)."""

from __future__ import annotations

from typing import Any

import pytest

from contracts import commands as c
from contracts import event_types as e
from contracts.commands import STRATEGIES
from tests.unit.fleet import World

SPECIALTY = "postgresql_optimization"  # inferred from data_source=postgresql by the built-in rules
POSTGRES = {"data_source": "postgresql"}


def _pool(strategy: str) -> list[Any]:
    """A generalist that the strategy's own order puts first, and an idle specialist."""
    # performance_weighted scores specialization too: weigh it 0 so that only the preference
    # tier, not the score, can make the specialist win.
    weights = {"specialization": 0.0} if strategy == "performance_weighted" else {}
    return [
        c.SetPoolPolicy(default_strategy=strategy, weights=weights),
        # Registered first (round_robin), sorts first (ties), weighs more (weighted).
        c.RegisterAgent(agent_id="a-generalist", name="g", capabilities=("text",), capacity=10,
                        weight=4.0, heartbeat_timeout_s=3600),
        c.RegisterAgent(agent_id="z-specialist", name="s", capabilities=("text", SPECIALTY), capacity=10,
                        heartbeat_timeout_s=3600),
        # resource_based: the generalist's machine is the idler one.
        c.AgentHeartbeat(agent_id="a-generalist", cpu=5, memory=5),
        c.AgentHeartbeat(agent_id="z-specialist", cpu=80, memory=80),
    ]


def _assigned(w: World, task_id: str) -> e.TaskAssigned:
    [assigned] = [x for x in w.events(e.TaskAssigned) if x.task_id == task_id]
    return assigned


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_the_generalist_comes_first_without_inferred_capabilities(strategy: str) -> None:
    w = World()
    w.do(*_pool(strategy), c.SubmitTask(task_id="plain", type="w"))
    assigned = _assigned(w, "plain")
    assert assigned.agent_id == "a-generalist"
    assert assigned.audit is not None and assigned.audit.preferred == ()
    assert all("preferred" not in x.components for x in assigned.audit.candidates)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_an_idle_specialist_wins_under_every_strategy(strategy: str) -> None:
    w = World()
    w.do(*_pool(strategy), c.SubmitTask(task_id="pg", type="w", data=POSTGRES))
    assert w.state.tasks["pg"].preferred == frozenset({SPECIALTY})
    assigned = _assigned(w, "pg")
    assert assigned.agent_id == "z-specialist"
    audit = assigned.audit
    assert audit is not None and audit.preferred == (SPECIALTY,)
    ranked = [(x.agent_id, x.components["preferred"]) for x in audit.candidates]
    assert ranked == [("z-specialist", 1.0), ("a-generalist", 0.0)]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_with_no_specialist_free_the_task_goes_to_a_generalist(strategy: str) -> None:
    w = World()
    pool = _pool(strategy)
    busy = c.RegisterAgent(agent_id="z-specialist", name="s", capabilities=("text", SPECIALTY), capacity=1,
                           heartbeat_timeout_s=3600)
    w.do(pool[0], busy, c.SubmitTask(task_id="first", type="w", data=POSTGRES))
    assert _assigned(w, "first").agent_id == "z-specialist"  # now full
    w.do(pool[1], c.SubmitTask(task_id="pg", type="w", data=POSTGRES))
    assigned = _assigned(w, "pg")
    assert assigned.agent_id == "a-generalist"
    assert assigned.audit is not None and assigned.audit.preferred == (SPECIALTY,)
    assert [(x.agent_id, x.components["preferred"]) for x in assigned.audit.candidates] == [
        ("a-generalist", 0.0)]
