"""The coordinator's strategies, capability inference and fallback, given events, then what it issues."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from contracts import commands as c
from contracts import event_types as e
from services.coordination.coordinator import STRATEGY
from tests.unit.fleet import Feed, World


def agent(agent_id: str, caps: tuple[str, ...] = (), capacity: int = 10, **kw: Any) -> e.AgentRegistered:
    return e.AgentRegistered(
        agent_id=agent_id,
        name=agent_id,
        kind=kw.pop("kind", "generic"),
        capabilities=caps,
        capacity=capacity,
        **kw,
    )


def task(task_id: str, req: tuple[str, ...] = (), strategy: str | None = None, **kw: Any) -> e.TaskSubmitted:
    return e.TaskSubmitted(
        task_id=task_id,
        type="w",
        priority=kw.pop("priority", 5),
        required_capabilities=req,
        strategy=strategy,
        **kw,
    )


def held(f: Feed, task_id: str, agent_id: str) -> None:
    f(e.TaskAssigned(task_id=task_id, agent_id=agent_id, attempt=1))


def policy(**kw: Any) -> e.PoolPolicySet:
    return e.PoolPolicySet(**c.SetPoolPolicy(**kw).model_dump())


def chosen(f: Feed) -> list[tuple[str, str]]:
    """Schedule and confirm every assignment (as the decider would), returning (task, agent)."""
    out = []
    for a in f.schedule():
        assert isinstance(a.command, c.AssignTask)
        out.append((a.command.task_id, a.command.agent_id))
        f(
            e.TaskAssigned(
                task_id=a.command.task_id,
                agent_id=a.command.agent_id,
                attempt=1,
                capability_gap=a.command.audit.capability_gap if a.command.audit else (),
            ),
            command_id=a.command_id,
        )
    return out


# -- strategies ------------------------------------------------------------------------------------


def test_round_robin_rotates_over_free_agents() -> None:
    f = Feed()
    f(agent("b"), agent("a"), agent("c"))
    f(*[task(f"t{i}", strategy="round_robin") for i in range(7)])
    assert [a for _, a in chosen(f)] == ["b", "a", "c", "b", "a", "c", "b"]  # registration order, then rotate


def test_round_robin_skips_full_agents_and_comes_back_to_them() -> None:
    f = Feed()
    f(agent("a", capacity=1), agent("b"), agent("c"))
    f(*[task(f"t{i}", strategy="round_robin") for i in range(4)])
    assert [a for _, a in chosen(f)] == ["a", "b", "c", "b"]
    f(e.TaskCompleted(task_id="t0", agent_id="a"))
    f(task("t9", strategy="round_robin"))
    assert chosen(f) == [("t9", "a")]  # a was picked longest ago


def test_least_connections_counts_tasks_not_ratios() -> None:
    f = Feed()
    f(agent("a", capacity=10), agent("b", capacity=2), *[task(f"p{i}") for i in range(3)])
    held(f, "p0", "a")
    held(f, "p1", "a")
    held(f, "p2", "b")
    f(task("t", strategy="least_connections"), task("u"))
    assert chosen(f) == [("t", "b"), ("u", "a")]  # b holds 1 < 2; by ratio a (2/10) beats b (2/2 full)


def test_weighted_spreads_work_in_proportion_to_weights() -> None:
    f = Feed()
    f(agent("a", capacity=100, weight=3), agent("b", capacity=100, weight=1))
    f(*[task(f"t{i}", strategy="weighted") for i in range(40)])
    assert Counter(a for _, a in chosen(f)) == {"a": 30, "b": 10}


def test_resource_based_prefers_the_agent_with_the_most_headroom() -> None:
    f = Feed()
    f(agent("a"), agent("b"), task("p"))
    held(f, "p", "b")
    f(
        e.AgentHeartbeatReceived(agent_id="a", cpu=90, memory=70),
        e.AgentHeartbeatReceived(agent_id="b", cpu=10, memory=30),
    )
    f(task("t", strategy="resource_based"))
    [a] = f.schedule()
    assert a.command.agent_id == "b"
    assert a.command.audit.candidates[0].score == pytest.approx(0.8)
    f(e.AgentHeartbeatReceived(agent_id="b", cpu=99, memory=99), task("u", strategy="resource_based"))
    assert [x.command.agent_id for x in f.schedule()] == ["a"]  # fresh figures re-rank at once


def test_capability_based_prefers_the_most_focused_group() -> None:
    f = Feed()
    f(agent("generalist", ("sql", "python", "go")), agent("focused", ("sql",), capacity=2))
    f(task("p"))
    held(f, "p", "focused")  # busier, yet still the better fit
    f(task("t", ("sql",), strategy="capability_based"))
    [a] = f.schedule()
    assert a.command.agent_id == "focused"
    assert [x.agent_id for x in a.command.audit.candidates] == ["focused", "generalist"]
    assert [x.components["specialization"] for x in a.command.audit.candidates] == [1.0, pytest.approx(1 / 3)]


def test_the_pool_default_strategy_applies_unless_the_task_names_one() -> None:
    f = Feed()
    f(policy(default_strategy="round_robin"), agent("a"), agent("b"))
    f(task("t1"), task("t2"), task("t3", strategy="least_loaded"))
    out = f.schedule()
    assert [(x.command.agent_id, x.command.audit.strategy) for x in out] == [
        ("a", "round_robin"),
        ("b", "round_robin"),
        ("a", STRATEGY),
    ]


# -- inference and performance-weighted ------------------------------------------------------------


def test_a_specialist_wins_over_a_generalist_by_inferred_capabilities() -> None:
    world = World()
    world.do(
        c.RegisterAgent(agent_id="generalist", name="g", capabilities=("sql", "python", "etl"), capacity=5),
        c.RegisterAgent(
            agent_id="specialist", name="s", capabilities=("sql", "postgresql_optimization"), capacity=5
        ),
        c.SubmitTask(task_id="p1", type="w", required_capabilities=("sql",)),  # makes the specialist busier
        c.SubmitTask(task_id="p2", type="w", required_capabilities=("sql",)),
    )
    world.do(
        c.SubmitTask(
            task_id="q",
            type="query",
            required_capabilities=("sql",),
            strategy="performance_weighted",
            data={"data_source": "postgresql"},
        )
    )
    assert world.state.tasks["q"].agent_id == "specialist"
    audit = world.state.tasks["q"]
    assigned = next(x for x in world.events(e.TaskAssigned) if x.task_id == "q")
    assert assigned.audit is not None
    assert assigned.audit.preferred == ("postgresql_optimization",)
    assert audit.preferred == {"postgresql_optimization"}
    top = {x.agent_id: x for x in assigned.audit.candidates}
    assert top["specialist"].components["specialization"] == 1.0
    assert top["generalist"].components["specialization"] == 0.0
    assert top["specialist"].score > top["generalist"].score


def test_performance_weighted_score_is_the_weighted_sum_of_its_components() -> None:
    f = Feed()
    f(agent("a", ("x",), capacity=4), task("p"))
    held(f, "p", "a")
    f(task("t", ("x",), strategy="performance_weighted", inferred_capabilities=("y",)))
    [a] = f.schedule()
    [cand] = a.command.audit.candidates
    comp = cand.components
    # "preferred": the share of the inferred capabilities (here y) it covers, ranked by first.
    assert comp == {"capability": 1.0, "performance": 1.0, "specialization": 0.0, "load": 0.25,
                    "preferred": 0.0}
    assert cand.score == pytest.approx(0.4 * 1 + 0.3 * 1 + 0.2 * 0 + 0.1 * (1 - 0.25))


def test_performance_weighted_keeps_work_away_from_an_agent_that_fails() -> None:
    f = Feed()
    f(agent("a"), agent("b"))
    for i in range(4):  # a fails four runs, b completes four
        f.at(i * 10)
        f(task(f"a{i}"), task(f"b{i}"))
        held(f, f"a{i}", "a")
        held(f, f"b{i}", "b")
        f.at(i * 10 + 5)
        f(
            e.TaskFailed(task_id=f"a{i}", agent_id="a", error="x", attempt=1),
            e.TaskCompleted(task_id=f"b{i}", agent_id="b"),
        )
    f(*[task(f"t{i}", strategy="performance_weighted") for i in range(3)])
    assert {x.command.agent_id for x in f.schedule()} == {"b"}
    assert f.view.performance.profile("a").success_rate < 0.5 < f.view.performance.profile("b").success_rate


def test_score_weights_are_configurable() -> None:
    # No inferred capabilities here: those would put a specialist first under every strategy,
    # whatever the weights (tests/unit/test_specialists.py).
    def pick(*weights: e.PoolPolicySet) -> str:
        f = Feed()
        f(*weights, agent("spec", ("x", "y")), agent("gen", ("x",)), task("p"))
        held(f, "p", "gen")
        f(task("t", ("x",), strategy="performance_weighted"))
        [a] = f.schedule()
        return a.command.agent_id

    assert pick() == "gen"  # the focused agent (specialization 1 against 0.5) despite its load
    only_load = policy(weights=c.ScoreWeights(capability=0, performance=0, specialization=0, load=1))
    assert pick(only_load) == "spec"  # only load counts now


# -- fallback: partial matches and unassignable tasks ----------------------------------------------


def test_a_partial_match_is_used_only_when_no_full_match_is_free_and_records_the_gap() -> None:
    world = World()
    world.do(
        c.SetPoolPolicy(min_capability_match=0.3),
        c.RegisterAgent(agent_id="full", name="f", capabilities=("x", "y"), capacity=1),
        c.RegisterAgent(agent_id="half", name="h", capabilities=("x",), capacity=2),
        c.SubmitTask(task_id="t1", type="w", required_capabilities=("x", "y")),
        c.SubmitTask(task_id="t2", type="w", required_capabilities=("x", "y")),
    )
    a1, a2 = world.events(e.TaskAssigned)
    assert (a1.agent_id, a1.capability_gap) == ("full", ())
    assert (a2.agent_id, a2.capability_gap) == ("half", ("y",))
    assert a2.audit is not None and a2.audit.capability_gap == ("y",)
    assert a2.audit.candidates[0].capability_match == 0.5
    assert world.events(e.CommandRejected) == []


def test_below_the_threshold_a_task_is_marked_unassignable_until_a_capable_agent_registers() -> None:
    world = World()
    world.do(
        c.SetPoolPolicy(min_capability_match=0.3),
        c.RegisterAgent(agent_id="a", name="a", capabilities=("x",), capacity=2),
        c.SubmitTask(task_id="t", type="w", required_capabilities=("w", "x", "y", "z")),
    )
    assert world.events(e.TaskUnassignable) == [
        e.TaskUnassignable(task_id="t", missing=("w", "y", "z"), best_match=0.25, threshold=0.3)
    ]
    assert world.state.tasks["t"].status == "queued"
    world.do(c.RegisterAgent(agent_id="b", name="b", capabilities=("x", "y"), capacity=1))  # 50%: enough
    assert world.state.tasks["t"].agent_id == "b"
    assert world.state.tasks["t"].unassignable is None
    assert len(world.events(e.TaskUnassignable)) == 1


def test_a_task_is_marked_again_when_its_last_capable_agent_leaves() -> None:
    world = World()
    world.do(
        c.RegisterAgent(agent_id="g", name="g", capabilities=("gpu",)),
        c.SubmitTask(task_id="t", type="w", required_capabilities=("gpu",)),
    )
    assert world.events(e.TaskUnassignable) == []
    world.do(c.DeregisterAgent(agent_id="g"))
    assert world.events(e.TaskUnassignable) == [e.TaskUnassignable(task_id="t", missing=("gpu",))]
    assert world.state.tasks["t"].status == "queued"


def test_coordinator_commands_have_deterministic_ids_and_a_rebuilt_view_does_not_repeat_them() -> None:
    world = World()
    world.do(c.SubmitTask(task_id="t", type="w", required_capabilities=("gpu",)))
    from services.coordination.coordinator import Coordinator

    rebuilt = Coordinator()
    for env in world.log:
        rebuilt.observe(env)
    assert rebuilt.schedule() == []
    assert [env.commandid for env in world.log if isinstance(env.data, e.TaskUnassignable)] == [
        "unassignable:default:t:0:0"
    ]
