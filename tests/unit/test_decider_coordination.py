"""Given / when / then for the decider's coordination rules: policy, inference, partial matches,
unassignable marks, health and heartbeat timers, task timeouts, retries, circuit breakers,
deferrals, max agents, budget flags and scaling decisions."""

from __future__ import annotations

from typing import Any

import pytest

from contracts import Reason
from contracts import commands as c
from contracts import event_types as e
from services.domain.decider import decide
from services.domain.retries import retry_delay, unit
from services.domain.state import utilization
from tests.gwt import build_state, given

# -- history builders ------------------------------------------------------------------------------


def registered(
    agent_id: str = "a", caps: tuple[str, ...] = (), capacity: int = 1, timeout: float = 30.0, **kw: Any
) -> e.AgentRegistered:
    return e.AgentRegistered(
        agent_id=agent_id,
        name=agent_id,
        kind=kw.pop("kind", "generic"),
        capabilities=caps,
        capacity=capacity,
        heartbeat_timeout_s=timeout,
        **kw,
    )


def submitted(task_id: str = "t", req: tuple[str, ...] = (), **kw: Any) -> e.TaskSubmitted:
    return e.TaskSubmitted(task_id=task_id, type="work", priority=5, required_capabilities=req, **kw)


def assigned(task_id: str = "t", agent_id: str = "a", attempt: int = 1) -> e.TaskAssigned:
    return e.TaskAssigned(task_id=task_id, agent_id=agent_id, attempt=attempt)


def timer(timer_id: str, kind: str, delay: float, generation: int, **kw: Any) -> e.TimerScheduled:
    return e.TimerScheduled(timer_id=timer_id, kind=kind, delay_s=delay, generation=generation, **kw)


def policy(**kw: Any) -> e.PoolPolicySet:
    return e.PoolPolicySet(**c.SetPoolPolicy(**kw).model_dump())


RETRY = c.RetryPolicy(max_attempts=3, strategy="exponential", base_delay_s=2, max_delay_s=60)
A = registered("a")
HB = (A, e.AgentHeartbeatReceived(agent_id="a"), timer("heartbeat:a", "heartbeat", 30, 1, agent_id="a"))


# -- pool policy -----------------------------------------------------------------------------------


def test_set_pool_policy_replaces_the_whole_policy() -> None:
    cmd = c.SetPoolPolicy(
        default_strategy="performance_weighted",
        weights=c.ScoreWeights(capability=1, load=0),
        min_capability_match=0.3,
        breaker_threshold=2,
    )
    given(policy(default_strategy="round_robin", dead_after_timeouts=9)).when(cmd).then(
        e.PoolPolicySet(**cmd.model_dump())
    ).then_state(
        lambda s: (
            s.policy.default_strategy == "performance_weighted"
            and s.policy.weights.capability == 1
            and s.policy.dead_after_timeouts == 3.0  # back to the default: not carried over
            and s.policy.breaker_threshold == 2
        )
    )


def test_an_unknown_default_strategy_is_refused_by_the_contract() -> None:
    with pytest.raises(ValueError):
        c.SetPoolPolicy(default_strategy="fastest")  # type: ignore[arg-type]


@pytest.mark.parametrize("strategy", list(c.STRATEGIES))
def test_every_known_strategy_may_be_asked_for_per_task(strategy: str) -> None:
    given().when(c.SubmitTask(task_id="t", type="w", strategy=strategy)).then(
        e.TaskSubmitted(task_id="t", type="w", priority=5, strategy=strategy)
    )


# -- capability inference --------------------------------------------------------------------------


def test_submit_infers_preferred_capabilities_from_the_default_rules() -> None:
    data = {"data_source": "PostgreSQL", "volume": "large", "real_time": True}
    given().when(c.SubmitTask(task_id="t", type="q", required_capabilities=("sql",), data=data)).then(
        e.TaskSubmitted(
            task_id="t",
            type="q",
            priority=5,
            required_capabilities=("sql",),
            data=data,
            inferred_capabilities=("high_throughput", "low_latency", "postgresql_optimization"),
        )
    ).then_state(
        lambda s: (
            s.tasks["t"].preferred == {"high_throughput", "low_latency", "postgresql_optimization"}
            and s.tasks["t"].required == {"sql"}
        )
    )


def test_inference_needs_equal_values_and_skips_required_capabilities() -> None:
    data = {"data_source": "mysql", "volume": "small", "real_time": 1}  # 1 is not True
    given().when(c.SubmitTask(task_id="t", type="q", data=data)).then(
        e.TaskSubmitted(task_id="t", type="q", priority=5, data=data)
    )
    data2 = {"volume": "large"}
    given().when(
        c.SubmitTask(task_id="t", type="q", required_capabilities=("high_throughput",), data=data2)
    ).then(
        e.TaskSubmitted(
            task_id="t", type="q", priority=5, required_capabilities=("high_throughput",), data=data2
        )
    )


def test_pool_rules_replace_the_defaults_and_reach_into_nested_data() -> None:
    rules = (c.InferenceRule(key="input.lang", equals="de", capability="german"),)
    data = {"input": {"lang": "DE"}, "data_source": "postgresql"}
    given(policy(inference_rules=rules)).when(c.SubmitTask(task_id="t", type="q", data=data)).then(
        e.TaskSubmitted(task_id="t", type="q", priority=5, data=data, inferred_capabilities=("german",))
    )
    given(policy(inference_rules=())).when(c.SubmitTask(task_id="t", type="q", data=data)).then(
        e.TaskSubmitted(task_id="t", type="q", priority=5, data=data)
    )


# -- partial matches and unassignable tasks --------------------------------------------------------

PARTIAL = (registered("a", ("x",), 2), submitted("t", ("x", "y")))


def test_a_partial_match_is_rejected_without_the_allowance() -> None:
    given(*PARTIAL, policy(min_capability_match=0.3)).when(c.AssignTask(task_id="t", agent_id="a")).rejects(
        Reason.CAPABILITY_MISMATCH, missing=["y"], match=0.5, threshold=0.3
    )


def test_a_partial_match_is_rejected_while_the_policy_wants_full_matches() -> None:
    given(*PARTIAL).when(c.AssignTask(task_id="t", agent_id="a", allow_partial=True)).rejects(
        Reason.CAPABILITY_MISMATCH, threshold=1.0
    )


def test_a_partial_match_above_the_threshold_is_assigned_with_its_gap() -> None:
    given(*PARTIAL, policy(min_capability_match=0.3)).when(
        c.AssignTask(task_id="t", agent_id="a", allow_partial=True)
    ).then(e.TaskAssigned(task_id="t", agent_id="a", attempt=1, capability_gap=("y",)))


def test_a_match_below_the_threshold_is_rejected_even_with_the_allowance() -> None:
    history = (
        registered("a", ("x",), 2),
        submitted("t", ("x", "y", "z", "w")),
        policy(min_capability_match=0.3),
    )
    given(*history).when(c.AssignTask(task_id="t", agent_id="a", allow_partial=True)).rejects(
        Reason.CAPABILITY_MISMATCH, match=0.25
    )


def test_mark_unassignable_records_the_missing_capabilities_and_keeps_the_task_queued() -> None:
    given(A, submitted("t", ("gpu",))).when(
        c.MarkTaskUnassignable(task_id="t", missing=("gpu",), best_match=0.0, threshold=0.3)
    ).then(e.TaskUnassignable(task_id="t", missing=("gpu",), best_match=0.0, threshold=0.3)).then_state(
        lambda s: s.tasks["t"].status == "queued" and s.tasks["t"].unassignable == ("gpu",)
    )


def test_an_assignment_clears_the_unassignable_mark() -> None:
    history = (
        submitted("t", ("gpu",)),
        e.TaskUnassignable(task_id="t", missing=("gpu",)),
        registered("g", ("gpu",)),
    )
    given(*history).when(c.AssignTask(task_id="t", agent_id="g")).then(assigned("t", "g")).then_state(
        lambda s: s.tasks["t"].unassignable is None
    )


def test_only_a_queued_task_can_be_marked_unassignable() -> None:
    given(A, submitted("t"), assigned()).when(c.MarkTaskUnassignable(task_id="t")).rejects(
        Reason.INVALID_TASK_STATE, status="assigned"
    )


# -- heartbeats and health -------------------------------------------------------------------------


def test_the_first_heartbeat_arms_the_liveness_timer_with_the_agents_own_timeout() -> None:
    given(registered("a", timeout=5)).when(c.AgentHeartbeat(agent_id="a", cpu=50)).then(
        e.AgentHeartbeatReceived(agent_id="a", cpu=50),
        timer("heartbeat:a", "heartbeat", 5, 1, agent_id="a"),
    ).then_state(lambda s: s.timers["heartbeat:a"].generation == 1 and s.timer_seq == 1)


def test_each_heartbeat_re_arms_the_timer_under_a_new_generation() -> None:
    given(*HB).when(c.AgentHeartbeat(agent_id="a")).then(
        e.AgentHeartbeatReceived(agent_id="a"), timer("heartbeat:a", "heartbeat", 30, 2, agent_id="a")
    ).then_state(lambda s: list(s.timers) == ["heartbeat:a"] and s.timers["heartbeat:a"].generation == 2)


def test_a_missed_heartbeat_marks_the_agent_unhealthy_and_reassigns_its_tasks() -> None:
    history = (
        registered("a", capacity=3),
        e.AgentHeartbeatReceived(agent_id="a"),
        timer("heartbeat:a", "heartbeat", 30, 1, agent_id="a"),
        submitted("t2", timeout_s=60),
        submitted("t1"),
        assigned("t2"),
        assigned("t1"),
        timer("timeout:t2", "task_timeout", 60, 2, task_id="t2", agent_id="a", attempt=1),
    )
    given(*history).when(c.FireTimer(timer_id="heartbeat:a", generation=1)).then(
        e.TimerFired(timer_id="heartbeat:a", kind="heartbeat", generation=1, agent_id="a"),
        e.AgentMarkedUnhealthy(agent_id="a", reason="no heartbeat for 30.0s"),
        e.TaskReassigned(task_id="t1", agent_id="a", reason="agent unhealthy: no heartbeat for 30.0s"),
        e.TaskReassigned(task_id="t2", agent_id="a", reason="agent unhealthy: no heartbeat for 30.0s"),
        e.TimerCancelled(
            timer_id="timeout:t2", generation=2, reason="agent unhealthy: no heartbeat for 30.0s"
        ),
        timer("dead:a", "agent_dead", 90, 3, agent_id="a"),
    ).then_state(
        lambda s: (
            not s.agents["a"].healthy
            and s.agents["a"].active
            and not s.agents["a"].tasks
            and [s.tasks[t].status for t in ("t1", "t2")] == ["queued", "queued"]
            and set(s.timers) == {"dead:a"}
        )  # the heartbeat timer fired; the timeout was cancelled
    )


def test_a_stale_or_repeated_firing_changes_nothing() -> None:
    given(
        *HB, e.AgentHeartbeatReceived(agent_id="a"), timer("heartbeat:a", "heartbeat", 30, 2, agent_id="a")
    ).when(c.FireTimer(timer_id="heartbeat:a", generation=1)).then()
    fired = e.TimerFired(timer_id="heartbeat:a", kind="heartbeat", generation=1, agent_id="a")
    given(*HB, fired, e.AgentMarkedUnhealthy(agent_id="a", reason="x")).when(
        c.FireTimer(timer_id="heartbeat:a", generation=1)
    ).then()
    given(A).when(c.FireTimer(timer_id="nothing", generation=7)).then()


def test_an_unhealthy_agent_gets_no_work() -> None:
    given(*HB, e.AgentMarkedUnhealthy(agent_id="a", reason="x"), submitted()).when(
        c.AssignTask(task_id="t", agent_id="a")
    ).rejects(Reason.AGENT_UNHEALTHY, agent_id="a")


def test_the_next_heartbeat_makes_it_healthy_again() -> None:
    history = (
        *HB,
        e.TimerFired(timer_id="heartbeat:a", kind="heartbeat", generation=1, agent_id="a"),
        e.AgentMarkedUnhealthy(agent_id="a", reason="x"),
        timer("dead:a", "agent_dead", 90, 2, agent_id="a"),
    )
    given(*history).when(c.AgentHeartbeat(agent_id="a", load=0.1)).then(
        e.AgentHeartbeatReceived(agent_id="a", load=0.1),
        e.AgentMarkedHealthy(agent_id="a"),
        e.TimerCancelled(timer_id="dead:a", generation=2, reason="heartbeat received"),
        timer("heartbeat:a", "heartbeat", 30, 3, agent_id="a"),
    ).then_state(lambda s: s.agents["a"].healthy and set(s.timers) == {"heartbeat:a"})


def test_an_agent_silent_beyond_the_grace_is_declared_dead_and_its_allocations_released() -> None:
    history = (
        *HB,
        e.ResourcesAllocated(
            allocation_id="r", agent_id="a", cpu_cores=1, memory_mb=2, disk_mb=0, network_mbps=0
        ),
        e.TimerFired(timer_id="heartbeat:a", kind="heartbeat", generation=1, agent_id="a"),
        e.AgentMarkedUnhealthy(agent_id="a", reason="x"),
        timer("dead:a", "agent_dead", 90, 2, agent_id="a"),
    )
    reason = "agent declared dead: no heartbeat"
    given(*history).when(c.FireTimer(timer_id="dead:a", generation=2)).then(
        e.TimerFired(timer_id="dead:a", kind="agent_dead", generation=2, agent_id="a"),
        e.ResourcesReleased(
            allocation_id="r",
            agent_id="a",
            cpu_cores=1,
            memory_mb=2,
            disk_mb=0,
            network_mbps=0,
            reason=reason,
        ),
        e.AgentDeregistered(agent_id="a", reason=reason),
    ).then_state(lambda s: not s.agents["a"].active and s.used == [0.0, 0.0, 0.0, 0.0] and not s.timers)


def test_deregistration_cancels_the_agents_timers() -> None:
    given(*HB).when(c.DeregisterAgent(agent_id="a")).then(
        e.TimerCancelled(timer_id="heartbeat:a", generation=1, reason="agent deregistered"),
        e.AgentDeregistered(agent_id="a"),
    ).then_state(lambda s: not s.timers)


# -- task timeouts and retries ---------------------------------------------------------------------


def test_an_assignment_with_a_timeout_arms_a_timer_for_that_attempt() -> None:
    given(A, submitted(timeout_s=12)).when(c.AssignTask(task_id="t", agent_id="a")).then(
        assigned(), timer("timeout:t", "task_timeout", 12, 1, task_id="t", agent_id="a", attempt=1)
    )


def test_completion_cancels_the_timeout() -> None:
    history = (
        A,
        submitted(timeout_s=12),
        assigned(),
        timer("timeout:t", "task_timeout", 12, 1, task_id="t", agent_id="a", attempt=1),
    )
    given(*history).when(c.CompleteTask(task_id="t")).then(
        e.TaskCompleted(task_id="t", agent_id="a"),
        e.TimerCancelled(timer_id="timeout:t", generation=1, reason="run ended"),
    ).then_state(lambda s: not s.timers)


def test_a_timeout_without_retries_fails_the_task() -> None:
    history = (
        A,
        submitted(timeout_s=12),
        assigned(),
        timer("timeout:t", "task_timeout", 12, 1, task_id="t", agent_id="a", attempt=1),
    )
    given(*history).when(c.FireTimer(timer_id="timeout:t", generation=1)).then(
        e.TimerFired(timer_id="timeout:t", kind="task_timeout", generation=1, task_id="t", agent_id="a"),
        e.TaskTimedOut(task_id="t", agent_id="a", attempt=1, timeout_s=12),
        e.TaskFailed(task_id="t", agent_id="a", error="timed out after 12.0s", attempt=1),
    ).then_state(lambda s: s.tasks["t"].status == "failed" and not s.agents["a"].tasks)


def test_a_failure_with_attempts_left_schedules_a_retry_then_the_timer_requeues_it() -> None:
    history = (A, submitted(retry=RETRY), assigned())
    when = (
        given(*history)
        .when(c.FailTask(task_id="t", error="boom"))
        .then(
            e.TaskRetryScheduled(task_id="t", agent_id="a", error="boom", attempt=1, delay_s=2.0),
            timer("retry:t", "retry", 2.0, 1, task_id="t", attempt=1),
        )
        .then_state(
            lambda s: (
                s.tasks["t"].status == "retrying" and s.tasks["t"].failures == 1 and not s.agents["a"].tasks
            )
        )
    )
    assert decide(when.state, c.FireTimer(timer_id="retry:t", generation=1)) == [
        e.TimerFired(timer_id="retry:t", kind="retry", generation=1, task_id="t"),
        e.TaskRequeued(task_id="t", agent_id="a", reason="retry: run 2 of 3"),
    ]


def test_the_second_failure_waits_twice_as_long_and_the_last_fails_for_good() -> None:
    history = (
        A,
        submitted(retry=RETRY),
        assigned(),
        e.TaskRetryScheduled(task_id="t", agent_id="a", error="x", attempt=1, delay_s=2),
        e.TaskRequeued(task_id="t", agent_id="a", reason="retry"),
        assigned(attempt=2),
    )
    given(*history).when(c.FailTask(task_id="t")).then(
        e.TaskRetryScheduled(task_id="t", agent_id="a", error="failed", attempt=2, delay_s=4.0),
        timer("retry:t", "retry", 4.0, 1, task_id="t", attempt=2),
    )
    last = (
        *history,
        e.TaskRetryScheduled(task_id="t", agent_id="a", error="x", attempt=2, delay_s=4),
        e.TaskRequeued(task_id="t", agent_id="a", reason="retry"),
        assigned(attempt=3),
    )
    given(*last).when(c.FailTask(task_id="t", error="still")).then(
        e.TaskFailed(task_id="t", agent_id="a", error="still", attempt=3)
    ).then_state(lambda s: s.tasks["t"].status == "failed" and s.tasks["t"].failures == 3)


def test_an_immediate_retry_requeues_in_the_same_decision() -> None:
    retry = c.RetryPolicy(max_attempts=2, strategy="immediate")
    given(A, submitted(retry=retry), assigned()).when(c.FailTask(task_id="t")).then(
        e.TaskRetryScheduled(task_id="t", agent_id="a", error="failed", attempt=1, delay_s=0.0),
        e.TaskRequeued(task_id="t", agent_id="a", reason="retry after failed run 1"),
    ).then_state(lambda s: s.tasks["t"].status == "queued")


def test_a_timeout_with_attempts_left_is_retried() -> None:
    history = (
        A,
        submitted(retry=RETRY, timeout_s=5),
        assigned(),
        timer("timeout:t", "task_timeout", 5, 1, task_id="t", agent_id="a", attempt=1),
    )
    given(*history).when(c.FireTimer(timer_id="timeout:t", generation=1)).then(
        e.TimerFired(timer_id="timeout:t", kind="task_timeout", generation=1, task_id="t", agent_id="a"),
        e.TaskTimedOut(task_id="t", agent_id="a", attempt=1, timeout_s=5),
        e.TaskRetryScheduled(task_id="t", agent_id="a", error="timed out after 5.0s", attempt=1, delay_s=2.0),
        timer("retry:t", "retry", 2.0, 2, task_id="t", attempt=1),
    )


def test_cancelling_a_task_waiting_to_retry_cancels_its_timer() -> None:
    history = (
        A,
        submitted(retry=RETRY),
        assigned(),
        e.TaskRetryScheduled(task_id="t", agent_id="a", error="x", attempt=1, delay_s=2),
        timer("retry:t", "retry", 2, 1, task_id="t", attempt=1),
    )
    given(*history).when(c.CancelTask(task_id="t")).then(
        e.TaskCancelled(task_id="t", agent_id="a"),
        e.TimerCancelled(timer_id="retry:t", generation=1, reason="task cancelled"),
    ).then_state(lambda s: s.tasks["t"].status == "cancelled" and not s.timers)


def test_a_waiting_task_cannot_be_assigned() -> None:
    history = (
        A,
        submitted(retry=RETRY),
        assigned(),
        e.TaskRetryScheduled(task_id="t", agent_id="a", error="x", attempt=1, delay_s=2),
    )
    given(*history).when(c.AssignTask(task_id="t", agent_id="a")).rejects(
        Reason.INVALID_TASK_STATE, status="retrying"
    )


@pytest.mark.parametrize(
    ("strategy", "delays"),
    [
        ("exponential", [1, 2, 4, 8, 10, 10]),
        ("linear", [1, 2, 3, 4, 5, 6]),
        ("constant", [1, 1, 1, 1, 1, 1]),
        ("immediate", [0, 0, 0, 0, 0, 0]),
    ],
)
def test_retry_delays_per_strategy_are_capped(strategy: Any, delays: list[float]) -> None:
    p = c.RetryPolicy(max_attempts=9, strategy=strategy, base_delay_s=1, max_delay_s=10)
    assert [retry_delay(p, "t", n) for n in range(1, 7)] == delays


def test_jitter_is_derived_from_task_and_attempt_so_replay_gives_the_same_schedule() -> None:
    p = c.RetryPolicy(max_attempts=9, strategy="constant", base_delay_s=10, max_delay_s=100, jitter=0.5)
    delays = [retry_delay(p, f"t{i}", 1) for i in range(50)]
    assert delays == [retry_delay(p, f"t{i}", 1) for i in range(50)]
    assert all(5 <= d <= 15 for d in delays) and len(set(delays)) > 40
    assert retry_delay(p, "t", 1) == round(10 * (1 + 0.5 * (2 * unit("t", 1) - 1)), 6)


# -- circuit breaker -------------------------------------------------------------------------------

BREAKER = policy(breaker_threshold=2, breaker_cooldown_s=15)


def test_consecutive_failures_open_the_breaker_for_a_cooldown() -> None:
    history = (
        BREAKER,
        registered("a", capacity=3),
        submitted("t1"),
        submitted("t2"),
        assigned("t1"),
        assigned("t2"),
        e.TaskFailed(task_id="t1", agent_id="a", error="x", attempt=1),
    )
    given(*history).when(c.FailTask(task_id="t2")).then(
        e.TaskFailed(task_id="t2", agent_id="a", error="failed", attempt=1),
        e.CircuitOpened(agent_id="a", failures=2, cooldown_s=15),
        timer("circuit:a", "circuit", 15, 1, agent_id="a"),
    ).then_state(lambda s: s.agents["a"].breaker == "open")


def test_a_success_resets_the_count() -> None:
    history = (
        BREAKER,
        registered("a", capacity=3),
        submitted("t1"),
        submitted("t2"),
        submitted("t3"),
        assigned("t1"),
        assigned("t2"),
        assigned("t3"),
        e.TaskFailed(task_id="t1", agent_id="a", error="x", attempt=1),
        e.TaskCompleted(task_id="t2", agent_id="a"),
    )
    given(*history).when(c.FailTask(task_id="t3")).then(
        e.TaskFailed(task_id="t3", agent_id="a", error="failed", attempt=1)
    )


def test_without_a_threshold_there_is_no_breaker() -> None:
    failures = [
        x
        for i in range(5)
        for x in (
            submitted(f"f{i}"),
            assigned(f"f{i}"),
            e.TaskFailed(task_id=f"f{i}", agent_id="a", error="x", attempt=1),
        )
    ]
    given(registered("a", capacity=3), *failures, submitted("t1"), assigned("t1")).when(
        c.FailTask(task_id="t1")
    ).then(e.TaskFailed(task_id="t1", agent_id="a", error="failed", attempt=1)).then_state(
        lambda s: s.agents["a"].failures == 6 and s.agents["a"].breaker == "closed"
    )


OPEN = (
    BREAKER,
    registered("a", capacity=3),
    submitted("t"),
    e.CircuitOpened(agent_id="a", failures=2, cooldown_s=15),
    timer("circuit:a", "circuit", 15, 1, agent_id="a"),
)


def test_an_open_breaker_keeps_work_away() -> None:
    given(*OPEN).when(c.AssignTask(task_id="t", agent_id="a")).rejects(Reason.CIRCUIT_OPEN, breaker="open")


def test_after_the_cooldown_the_breaker_half_opens_and_lets_one_task_through() -> None:
    given(*OPEN).when(c.FireTimer(timer_id="circuit:a", generation=1)).then(
        e.TimerFired(timer_id="circuit:a", kind="circuit", generation=1, agent_id="a"),
        e.CircuitHalfOpened(agent_id="a"),
    )
    half = (*OPEN, e.CircuitHalfOpened(agent_id="a"), submitted("u"))
    given(*half).when(c.AssignTask(task_id="t", agent_id="a")).then(assigned("t"))
    given(*half, assigned("t")).when(c.AssignTask(task_id="u", agent_id="a")).rejects(
        Reason.CIRCUIT_OPEN, breaker="half_open"
    )


def test_a_trial_success_closes_the_breaker_and_a_trial_failure_opens_it_again() -> None:
    trial = (*OPEN, e.CircuitHalfOpened(agent_id="a"), assigned("t"))
    given(*trial).when(c.CompleteTask(task_id="t")).then(
        e.TaskCompleted(task_id="t", agent_id="a"), e.CircuitClosed(agent_id="a")
    ).then_state(lambda s: s.agents["a"].breaker == "closed" and s.agents["a"].failures == 0)
    given(*trial).when(c.FailTask(task_id="t")).then(
        e.TaskFailed(task_id="t", agent_id="a", error="failed", attempt=1),
        e.CircuitOpened(agent_id="a", failures=1, cooldown_s=15),
        timer("circuit:a", "circuit", 15, 2, agent_id="a"),
    )


# -- rate-limit deferrals --------------------------------------------------------------------------


def test_a_deferred_task_stays_queued_and_a_timer_wakes_the_coordinator() -> None:
    given(A, submitted()).when(c.DeferTask(task_id="t", delay_s=2.5)).then(
        e.TaskDeferred(task_id="t", reason="RATE_LIMITED", delay_s=2.5),
        timer("defer:t", "defer", 2.5, 1, task_id="t"),
    ).then_state(lambda s: s.tasks["t"].status == "queued")
    given(A, submitted(), assigned()).when(c.DeferTask(task_id="t")).rejects(Reason.INVALID_TASK_STATE)


def test_set_rate_limit_is_recorded() -> None:
    cmd = c.SetRateLimit(
        scope="model", scope_id="gpt-4o", requests_per_min=60, tokens_per_min=1000, concurrent=3
    )
    given().when(cmd).then(e.RateLimitSet(**cmd.model_dump()))


# -- resources: max agents and utilization ---------------------------------------------------------

LIMITS = e.ResourceLimitsSet(
    max_cpu_cores=4, max_memory_mb=100, max_disk_mb=100, max_network_mbps=10, max_agents=2
)


def test_registration_beyond_max_agents_is_rejected() -> None:
    given(LIMITS, registered("a"), registered("b")).when(c.RegisterAgent(agent_id="c", name="c")).rejects(
        Reason.RESOURCE_LIMIT_EXCEEDED, over=["agents"], max_agents=2
    )


def test_a_deregistered_agent_frees_its_place() -> None:
    given(LIMITS, registered("a"), registered("b"), e.AgentDeregistered(agent_id="b")).when(
        c.RegisterAgent(agent_id="c", name="c")
    ).then(
        e.AgentRegistered(agent_id="c", name="c", kind="generic", capacity=1),
        e.TimerScheduled(timer_id="heartbeat:c", kind="heartbeat", delay_s=30.0, generation=1, agent_id="c"),
    )


def test_max_agents_below_the_active_count_is_rejected() -> None:
    given(registered("a"), registered("b")).when(
        c.SetResourceLimits(max_cpu_cores=1, max_memory_mb=1, max_disk_mb=1, max_network_mbps=1, max_agents=1)
    ).rejects(Reason.RESOURCE_LIMIT_EXCEEDED, over=["agents"])


def test_utilization_figures() -> None:
    state = build_state(
        (
            LIMITS,
            registered("a", capacity=4),
            submitted("t1"),
            submitted("t2"),
            assigned("t1"),
            e.ResourcesAllocated(
                allocation_id="r", agent_id="a", cpu_cores=1, memory_mb=25, disk_mb=0, network_mbps=0
            ),
        )
    )
    u = utilization(state)
    assert u["agents"] == {"active": 1, "healthy": 1, "max": 2, "utilization": 0.5}
    assert u["tasks"] == {"held": 1, "capacity": 4, "utilization": 0.25, "queued": 1}
    assert u["resources"]["cpu_cores"] == {"used": 1.0, "limit": 4, "utilization": 0.25}
    assert u["resources"]["memory_mb"]["utilization"] == 0.25


# -- budgets: running work is flagged --------------------------------------------------------------


def test_a_spent_budget_flags_the_running_work_it_covers() -> None:
    history = (
        registered("a", capacity=3),
        registered("b"),
        submitted("t1", data={"workflow_id": "w"}),
        submitted("t2"),
        submitted("t3", data={"workflow_id": "w"}),
        assigned("t1"),
        assigned("t2"),
        assigned("t3", "b"),
        e.BudgetSet(scope="workflow", scope_id="w", limit_usd=1),
        e.BudgetSet(scope="agent", scope_id="a", limit_usd=10),
    )
    given(*history).when(c.RecordCost(cost_id="k", agent_id="a", task_id="t1", model="m", cost_usd=1)).then(
        e.CostRecorded(
            cost_id="k", agent_id="a", task_id="t1", model="m", input_tokens=0, output_tokens=0, cost_usd=1
        ),
        e.BudgetExceeded(scope="workflow", scope_id="w", limit_usd=1, spent_usd=1),
        e.TaskBudgetFlagged(task_id="t1", agent_id="a", scope="workflow", scope_id="w"),
        e.TaskBudgetFlagged(task_id="t3", agent_id="b", scope="workflow", scope_id="w"),
    )
    given(*history).when(c.SetBudget(scope="agent", scope_id="a", limit_usd=0)).then(
        e.BudgetSet(scope="agent", scope_id="a", limit_usd=0),
        e.BudgetExceeded(scope="agent", scope_id="a", limit_usd=0, spent_usd=0),
        e.TaskBudgetFlagged(task_id="t1", agent_id="a", scope="agent", scope_id="a"),
        e.TaskBudgetFlagged(task_id="t2", agent_id="a", scope="agent", scope_id="a"),
    )


# -- scaling ---------------------------------------------------------------------------------------

SCALING = c.SetScalingPolicy(
    agent_kind="llm",
    min_agents=1,
    max_agents=5,
    target_utilization=0.5,
    queue_threshold=3,
    cooldown_s=10,
    stability_window_s=30,
)


def test_a_scaling_policy_is_recorded() -> None:
    given().when(SCALING).then(e.ScalingPolicySet(**SCALING.model_dump())).then_state(
        lambda s: s.scaling["llm"].max_agents == 5
    )


def test_a_scaling_decision_within_the_policy_is_recorded() -> None:
    cmd = c.DecideScaling(
        agent_kind="llm", from_agents=1, to_agents=3, reason="queue", metrics={"queue_depth": 9}
    )
    given(e.ScalingPolicySet(**SCALING.model_dump())).when(cmd).then(e.ScalingDecided(**cmd.model_dump()))


def test_scaling_decisions_outside_the_policy_are_rejected() -> None:
    cmd = c.DecideScaling(agent_kind="llm", from_agents=1, to_agents=6, reason="x")
    given(e.ScalingPolicySet(**SCALING.model_dump())).when(cmd).rejects(
        Reason.SCALING_OUT_OF_BOUNDS, to_agents=6
    )
    given().when(cmd).rejects(Reason.UNKNOWN_SCALING_POLICY, agent_kind="llm")


def test_scaling_policy_bounds_are_validated() -> None:
    with pytest.raises(ValueError, match="min_agents"):
        c.SetScalingPolicy(agent_kind="llm", min_agents=3, max_agents=2)
