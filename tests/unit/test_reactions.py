"""Health, circuit breakers, retries, timeouts and rate limits end to end in a clocked pool
(decider + coordinator + timer book), performance profiles, and the scaling reactor."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from contracts import commands as c
from contracts import event_types as e
from projections.performance import ALPHA, PerformanceBook, report
from services.coordination.scaling import Scaler
from tests.unit.fleet import T0, World, stamp


def register(agent_id: str, capacity: int = 5, **kw: Any) -> c.RegisterAgent:
    # Liveness is watched from registration: agents of scenarios that are not about health and
    # never heartbeat get a timeout longer than the scenario.
    kw.setdefault("heartbeat_timeout_s", 3600)
    return c.RegisterAgent(agent_id=agent_id, name=agent_id, capacity=capacity, **kw)


def holder(world: World, task_id: str) -> str | None:
    return world.state.tasks[task_id].agent_id


# -- health ----------------------------------------------------------------------------------------


def test_a_missed_heartbeat_moves_the_work_and_the_next_heartbeat_brings_the_agent_back() -> None:
    w = World()
    w.do(
        register("a", heartbeat_timeout_s=10),
        c.AgentHeartbeat(agent_id="a"),
        c.SubmitTask(task_id="t1", type="w"),
        c.SubmitTask(task_id="t2", type="w"),
    )
    assert {holder(w, "t1"), holder(w, "t2")} == {"a"}
    w.do(register("b", heartbeat_timeout_s=60))
    w.advance(9)
    w.do(c.AgentHeartbeat(agent_id="a"))  # re-armed: due at 19 now
    w.advance(9.5)
    assert w.state.agents["a"].healthy
    w.advance(1)  # 19.5: a missed it
    assert not w.state.agents["a"].healthy
    assert [(x.task_id, x.reason) for x in w.events(e.TaskReassigned)] == [
        ("t1", "agent unhealthy: no heartbeat for 10.0s"),
        ("t2", "agent unhealthy: no heartbeat for 10.0s"),
    ]
    assert holder(w, "t1") == holder(w, "t2") == "b"
    w.do(c.AgentHeartbeat(agent_id="a"), c.SubmitTask(task_id="t3", type="w"))
    assert w.state.agents["a"].healthy and holder(w, "t3") == "a"
    assert [x.kind for x in w.events(e.TimerFired)] == ["heartbeat"]


def test_an_agent_silent_for_the_grace_is_declared_dead() -> None:
    w = World()
    w.do(
        c.SetPoolPolicy(dead_after_timeouts=2),
        c.SetResourceLimits(
            max_cpu_cores=4, max_memory_mb=8, max_disk_mb=8, max_network_mbps=8, max_agents=1
        ),
        register("a", heartbeat_timeout_s=5),
        c.AgentHeartbeat(agent_id="a"),
        c.AllocateResources(allocation_id="r", agent_id="a", cpu_cores=3),
    )
    w.advance(5)
    assert not w.state.agents["a"].healthy and w.state.agents["a"].active
    w.advance(9.9)
    assert w.state.agents["a"].active
    w.advance(0.1)  # 5 + 2 * 5
    assert not w.state.agents["a"].active
    assert w.state.used == [0.0, 0.0, 0.0, 0.0] and not w.state.timers
    w.do(register("b"))  # its place in the pool is free again
    assert w.state.agents["b"].active


# -- circuit breaker -------------------------------------------------------------------------------


def test_a_failing_agent_is_skipped_until_its_breaker_half_opens_and_a_trial_succeeds() -> None:
    w = World()
    w.do(c.SetPoolPolicy(breaker_threshold=2, breaker_cooldown_s=30), register("a", capacity=2))
    w.do(c.SubmitTask(task_id="f1", type="w"), c.SubmitTask(task_id="f2", type="w"))
    w.do(register("b", capacity=2), c.FailTask(task_id="f1"), c.FailTask(task_id="f2"))
    assert w.state.agents["a"].breaker == "open"
    w.do(
        c.SubmitTask(task_id="t1", type="w"),
        c.SubmitTask(task_id="t2", type="w"),
        c.SubmitTask(task_id="t3", type="w"),
    )
    assert [holder(w, t) for t in ("t1", "t2", "t3")] == ["b", "b", None]
    w.advance(30)
    assert w.state.agents["a"].breaker == "half_open"
    assert holder(w, "t3") == "a"  # the one trial task
    w.do(c.SubmitTask(task_id="t4", type="w"))
    assert holder(w, "t4") is None
    w.do(c.CompleteTask(task_id="t3"))
    assert w.state.agents["a"].breaker == "closed" and holder(w, "t4") == "a"
    assert w.events(e.CommandRejected) == []


# -- retries and timeouts --------------------------------------------------------------------------


def test_a_failed_task_is_retried_after_its_backoff_and_fails_for_good_after_the_last_attempt() -> None:
    w = World()
    retry = c.RetryPolicy(max_attempts=3, strategy="linear", base_delay_s=5, max_delay_s=60)
    w.do(register("a"), c.SubmitTask(task_id="t", type="w", retry=retry))
    w.do(c.FailTask(task_id="t"))
    assert w.state.tasks["t"].status == "retrying"
    w.advance(4.9)
    assert w.state.tasks["t"].status == "retrying"
    w.advance(0.1)
    assert w.state.tasks["t"].status == "assigned" and w.state.tasks["t"].attempts == 2
    w.do(c.FailTask(task_id="t"))
    w.advance(10)  # linear: 2 * 5
    assert w.state.tasks["t"].attempts == 3
    w.do(c.FailTask(task_id="t", error="again"))
    assert w.state.tasks["t"].status == "failed"
    assert [x.delay_s for x in w.events(e.TaskRetryScheduled)] == [5.0, 10.0]
    assert w.events(e.TaskFailed) == [e.TaskFailed(task_id="t", agent_id="a", error="again", attempt=3)]


def test_a_run_that_outlives_its_timeout_is_retried_elsewhere() -> None:
    w = World()
    retry = c.RetryPolicy(max_attempts=2, strategy="immediate")
    w.do(register("a", capacity=1), c.SubmitTask(task_id="t", type="w", timeout_s=20, retry=retry))
    w.do(register("b", capacity=1), c.SubmitTask(task_id="u", type="w"))  # b busy with u
    w.advance(20)
    assert [x.task_id for x in w.events(e.TaskTimedOut)] == ["t"]
    assert holder(w, "t") == "a" and w.state.tasks["t"].attempts == 2  # requeued at once, a was free
    w.do(c.CompleteTask(task_id="t"))
    w.advance(100)
    assert w.state.tasks["t"].status == "completed"
    assert sorted(w.state.timers) == ["heartbeat:a", "heartbeat:b"]  # only the agents' liveness


# -- rate limits -----------------------------------------------------------------------------------


def test_a_rate_limited_agent_is_skipped_and_work_waits_with_a_deferral() -> None:
    w = World()
    w.do(register("a", capacity=10), c.SetRateLimit(scope="agent", scope_id="a", requests_per_min=2))
    w.do(*[c.SubmitTask(task_id=f"t{i}", type="w") for i in range(3)])
    assert [holder(w, f"t{i}") for i in range(3)] == ["a", "a", None]
    [deferred] = w.events(e.TaskDeferred)
    assert (deferred.task_id, deferred.reason, deferred.delay_s) == ("t2", "RATE_LIMITED", 30.0)
    w.advance(29.9)
    assert holder(w, "t2") is None
    w.advance(0.1)  # the deferral timer fires at 30s: one request token is back
    assert holder(w, "t2") == "a"
    assert w.events(e.CommandRejected) == []


def test_the_coordinator_skips_a_limited_agent_for_a_free_one_and_says_so() -> None:
    w = World()
    w.do(
        register("a", capacity=10),
        register("b", capacity=10),
        c.SetRateLimit(scope="agent", scope_id="a", requests_per_min=1),
    )
    w.do(*[c.SubmitTask(task_id=f"t{i}", type="w") for i in range(4)])
    assert [holder(w, f"t{i}") for i in range(4)] == ["a", "b", "b", "b"]
    audits = [x.audit for x in w.events(e.TaskAssigned)]
    assert audits[1] is not None and audits[1].skipped == {"rate_limited": 1}
    assert w.events(e.TaskDeferred) == []


def test_a_model_wide_concurrency_limit_spans_agents() -> None:
    w = World()
    w.do(
        c.SetRateLimit(scope="model", scope_id="m", concurrent=2),
        register("a", capacity=5, metadata={"model": "m"}),
        register("b", capacity=5, metadata={"model": "m"}),
        register("c", capacity=5, metadata={"model": "other"}),
    )
    w.do(*[c.SubmitTask(task_id=f"t{i}", type="w") for i in range(6)])
    held_by = [holder(w, f"t{i}") for i in range(6)]
    assert sum(1 for h in held_by if h in ("a", "b")) == 2
    assert sum(1 for h in held_by if h == "c") == 4
    [first_m] = [f"t{i}" for i, h in enumerate(held_by) if h == "a"][:1]
    w.do(c.SubmitTask(task_id="x", type="w"))
    assert holder(w, "x") == "c"
    w.do(c.CompleteTask(task_id=first_m), c.SubmitTask(task_id="y", type="w"))
    assert holder(w, "y") in ("a", "b")


def test_tokens_per_minute_limit_by_recorded_usage() -> None:
    w = World()
    w.do(register("a", capacity=10), c.SetRateLimit(scope="agent", scope_id="a", tokens_per_min=600))
    w.do(c.SubmitTask(task_id="t0", type="w"))
    w.do(
        c.RecordCost(
            cost_id="k",
            agent_id="a",
            task_id="t0",
            model="m",
            input_tokens=700,
            output_tokens=200,
            cost_usd=0.0,
        )
    )
    w.do(c.SubmitTask(task_id="t1", type="w"))
    assert holder(w, "t1") is None  # 300 tokens in debt
    assert w.events(e.TaskDeferred)[0].delay_s == pytest.approx(30.0, abs=0.01)
    w.advance(31)
    assert holder(w, "t1") == "a"


# -- performance profiles --------------------------------------------------------------------------


def _feed(book: PerformanceBook, *items: tuple[float, Any]) -> None:
    for i, (t, ev) in enumerate(items):
        for env in stamp([ev], pool="p", start=i, command_id=f"c{i}", at=T0 + timedelta(seconds=t)):
            book.observe(env)


def test_a_profile_moves_with_outcomes_duration_and_health() -> None:
    book = PerformanceBook()
    reg = e.AgentRegistered(agent_id="a", name="a", kind="k", capacity=3)
    _feed(
        book,
        (0, reg),
        (0, e.TaskAssigned(task_id="t1", agent_id="a", attempt=1)),
        (10, e.TaskCompleted(task_id="t1", agent_id="a")),
        (10, e.TaskAssigned(task_id="t2", agent_id="a", attempt=1)),
        (20, e.TaskStarted(task_id="t2", agent_id="a")),
        (50, e.TaskFailed(task_id="t2", agent_id="a", error="x", attempt=1)),
        (60, e.AgentMarkedUnhealthy(agent_id="a", reason="x")),
        (80, e.AgentMarkedHealthy(agent_id="a")),
    )
    p = book.profile("a")
    assert (p.completed, p.failed) == (1, 1)
    assert p.success_rate == pytest.approx(1 - ALPHA)
    assert p.error_rate == pytest.approx(ALPHA)
    assert p.mean_duration_s == 10.0
    now = (T0 + timedelta(seconds=100)).timestamp()
    assert p.availability(now) == pytest.approx(80 / 100)
    r = report(p, now=now)
    expected = 0.4 * (1 - ALPHA) + 0.3 * (60 / 70) + 0.2 * 0.8 + 0.1 * (1 - ALPHA)
    assert r["score"] == pytest.approx(expected, abs=1e-6)
    assert r["availability"] == 0.8 and r["completed"] == 1


def test_a_new_agent_starts_optimistic_and_timeouts_and_losses_count_as_errors() -> None:
    book = PerformanceBook()
    assert book.profile("n").score() == pytest.approx(1.0)
    _feed(
        book,
        (0, e.TaskTimedOut(task_id="t", agent_id="n", attempt=1, timeout_s=5)),
        (0, e.TaskRetryScheduled(task_id="t", agent_id="n", error="timeout", attempt=1, delay_s=1)),
        (1, e.TaskReassigned(task_id="u", agent_id="n", reason="unhealthy")),
    )
    p = book.profile("n")
    assert (p.timeouts, p.failed, p.lost) == (1, 1, 1)
    assert p.error_rate == pytest.approx(1 - (1 - ALPHA) ** 2)


# -- scaling reactor -------------------------------------------------------------------------------


class Scaled:
    """Feeds a Scaler, recording its decisions as the decider would (all accepted)."""

    def __init__(self, **policy: Any) -> None:
        self.scaler = Scaler("p")
        self.seq = 0
        self.decisions: list[c.DecideScaling] = []
        self(0, e.ScalingPolicySet(**c.SetScalingPolicy(agent_kind="llm", **policy).model_dump()))

    def __call__(self, t: float, *events: Any) -> None:
        for env in stamp(
            events, pool="p", start=self.seq, command_id=f"c{self.seq}", at=T0 + timedelta(seconds=t)
        ):
            self.seq += 1
            self.scaler.observe(env)
        for cmd in self.scaler.take():
            self.decisions.append(cmd.command)
            self.seq += 1
            [env] = stamp(
                [e.ScalingDecided(**cmd.command.model_dump())],
                pool="p",
                start=self.seq,
                command_id=cmd.command_id,
                at=T0 + timedelta(seconds=t),
            )
            self.scaler.observe(env)


def llm(agent_id: str, capacity: int = 2) -> e.AgentRegistered:
    return e.AgentRegistered(
        agent_id=agent_id, name=agent_id, kind="llm", capabilities=("text",), capacity=capacity
    )


def test_scaling_up_on_queue_depth_with_cooldown() -> None:
    s = Scaled(
        min_agents=1,
        max_agents=6,
        target_utilization=0.8,
        queue_threshold=2,
        cooldown_s=60,
        stability_window_s=120,
    )
    assert [(d.from_agents, d.to_agents) for d in s.decisions] == [(0, 1)]  # below min at once
    assert "below min_agents" in s.decisions[0].reason
    s(1, llm("a"))
    s(
        2,
        *[
            e.TaskSubmitted(task_id=f"t{i}", type="w", priority=5, required_capabilities=("text",))
            for i in range(8)
        ],
    )
    assert len(s.decisions) == 1  # within the cooldown of the first decision
    s(61, e.AgentHeartbeatReceived(agent_id="a"))
    last = s.decisions[-1]
    assert (last.from_agents, last.to_agents) == (1, 4)  # 1 + ceil((8 - 2) / 2)
    assert last.reason == "queue depth 8 above threshold 2"
    assert last.metrics["queue_depth"] == 8 and last.metrics["agents"] == 1
    s(200, e.AgentHeartbeatReceived(agent_id="a"))
    assert len(s.decisions) == 2  # the same ask is not repeated while the fleet has not moved


def test_scaling_down_needs_a_stable_window_and_goes_to_the_highest_recommendation() -> None:
    s = Scaled(
        min_agents=0,
        max_agents=10,
        target_utilization=0.5,
        queue_threshold=100,
        cooldown_s=0,
        stability_window_s=60,
    )
    s(0, *[llm(f"a{i}") for i in range(4)])
    s(
        0,
        *[e.TaskSubmitted(task_id=f"t{i}", type="w", priority=5) for i in range(4)],
        *[e.TaskAssigned(task_id=f"t{i}", agent_id=f"a{i}", attempt=1) for i in range(4)],
    )
    assert s.decisions == []  # 4 of 8 slots held: exactly at target
    s(10, e.TaskCompleted(task_id="t0", agent_id="a0"), e.TaskCompleted(task_id="t1", agent_id="a1"))
    s(40, e.AgentHeartbeatReceived(agent_id="a0"))
    assert s.decisions == []  # recommended 2 since t=10 only
    s(50, e.TaskCompleted(task_id="t2", agent_id="a2"))  # would be 1 now
    s(71, e.AgentHeartbeatReceived(agent_id="a0"))  # low since 10; the window (11..71) saw 2 and 1
    [d] = s.decisions
    assert (d.from_agents, d.to_agents) == (4, 2)  # the highest of the window, not the latest 1
    assert "below target" in d.reason


def test_a_smaller_ask_while_more_agents_are_on_their_way_waits_for_the_window() -> None:
    """1 -> 3 was decided; before the autoscaler started them the queue shrank: asking 1 -> 2 now
    would lower the target (flapping 1, 3, 2, 3), so it waits out the stability window."""
    s = Scaled(min_agents=1, max_agents=6, target_utilization=0.8, queue_threshold=4, cooldown_s=0,
               stability_window_s=60)
    s(0, llm("a"))
    for i in range(9):
        s(1, e.TaskSubmitted(task_id=f"t{i}", type="w", priority=5, required_capabilities=("text",)))
    assert [(d.from_agents, d.to_agents) for d in s.decisions][1:] == [(1, 2), (1, 3), (1, 4)]
    s(5, e.TaskCancelled(task_id="t0"), e.TaskCancelled(task_id="t1"), e.TaskCancelled(task_id="t2"))
    assert s.decisions[-1].to_agents == 4  # queue 6 would ask 1 -> 2: held back
    s(70, e.AgentHeartbeatReceived(agent_id="a"))  # the window passed and none came: ask anew
    assert (s.decisions[-1].from_agents, s.decisions[-1].to_agents) == (1, 2)
    s(71, e.AgentDeregistered(agent_id="a"))  # below min_agents: the bound applies at once
    assert (s.decisions[-1].from_agents, s.decisions[-1].to_agents) == (0, 1)


def test_utilization_above_target_scales_up() -> None:
    s = Scaled(min_agents=0, max_agents=10, target_utilization=0.5, queue_threshold=100, cooldown_s=0)
    s(
        0,
        llm("a", capacity=4),
        *[e.TaskSubmitted(task_id=f"t{i}", type="w", priority=5) for i in range(4)],
        *[e.TaskAssigned(task_id=f"t{i}", agent_id="a", attempt=1) for i in range(4)],
    )
    # Evaluated on every event: the third assignment (3 of 4 slots) crosses the target.
    assert [(d.from_agents, d.to_agents) for d in s.decisions] == [(1, 2)]
    assert s.decisions[-1].reason == "utilization 0.75 above target 0.50"


def test_scaling_decisions_go_through_the_decider_and_onto_the_log() -> None:
    w = World()
    w.do(c.SetScalingPolicy(agent_kind="llm", min_agents=2, max_agents=4, cooldown_s=0))
    [d] = w.events(e.ScalingDecided)
    assert (d.agent_kind, d.from_agents, d.to_agents) == ("llm", 0, 2)
    assert [env.commandid for env in w.log if isinstance(env.data, e.ScalingDecided)] == [
        "scale:default:llm:0:0"
    ]
    w.do(register("x", kind="llm"), register("y", kind="llm"))
    assert len(w.events(e.ScalingDecided)) == 1


def test_a_policy_set_on_a_busy_pool_starts_from_its_current_figures() -> None:
    w = World()
    w.do(register("x", capacity=2, kind="llm", capabilities=("text",)),
         register("y", capacity=2, kind="llm", capabilities=("text",)),
         register("z", capacity=9, kind="other", capabilities=("img",)))
    w.do(*[c.SubmitTask(task_id=f"t{i}", type="w", required_capabilities=("text",)) for i in range(7)])
    w.do(c.SetScalingPolicy(agent_kind="llm", min_agents=1, max_agents=8, target_utilization=0.5,
                            queue_threshold=1, cooldown_s=0))
    [d] = w.events(e.ScalingDecided)
    assert d.metrics == {"agents": 2.0, "capacity": 4.0, "held": 4.0, "utilization": 1.0, "queue_depth": 3.0,
                         "desired": 4.0}
    assert (d.from_agents, d.to_agents) == (2, 4)
