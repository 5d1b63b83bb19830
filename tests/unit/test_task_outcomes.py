"""What an agent may say about a task it ran, and what the decider, the coordinator and the workflow
reactor make of it: failures that say whether to retry (with a code), a holder deferring its task
without spending an attempt, an agent's own retry and breaker defaults, a task's action and
parameters, and pinning a task to an agent by id or name."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from contracts import Reason
from contracts import commands as c
from contracts import event_types as e
from contracts.workflows import WorkflowDefinition
from services.coordination.coordinator import Coordinator
from services.domain.decider import decide
from services.domain.state import PoolState
from services.workflows.reactor import WorkflowReactor
from tests.gwt import build_state, given, wrap
from tests.unit.fleet import World

# -- history builders ------------------------------------------------------------------------------


def registered(agent_id: str = "a", name: str | None = None, **kw: Any) -> e.AgentRegistered:
    return e.AgentRegistered(agent_id=agent_id, name=name or agent_id, kind="generic", capacity=2, **kw)


def submitted(task_id: str = "t", **kw: Any) -> e.TaskSubmitted:
    return e.TaskSubmitted(task_id=task_id, type="work", priority=5, **kw)


def assigned(task_id: str = "t", agent_id: str = "a", attempt: int = 1) -> e.TaskAssigned:
    return e.TaskAssigned(task_id=task_id, agent_id=agent_id, attempt=attempt)


def timer(timer_id: str, kind: str, delay: float, generation: int, **kw: Any) -> e.TimerScheduled:
    return e.TimerScheduled(timer_id=timer_id, kind=kind, delay_s=delay, generation=generation, **kw)


RETRY3 = c.RetryPolicy(max_attempts=3, strategy="constant", base_delay_s=5)
BREAKER1 = e.PoolPolicySet(breaker_threshold=1, breaker_cooldown_s=30)
RUNNING = (registered(), submitted(timeout_s=60), assigned(),
           timer("timeout:t", "task_timeout", 60, 1, task_id="t", agent_id="a", attempt=1))


# -- failures that say whether to retry ------------------------------------------------------------


def test_a_non_retryable_failure_fails_the_task_at_once_whatever_its_retry_policy() -> None:
    history = (BREAKER1, registered(), submitted(retry=RETRY3, timeout_s=60), assigned(),
               timer("timeout:t", "task_timeout", 60, 1, task_id="t", agent_id="a", attempt=1))
    given(*history).when(
        c.FailTask(task_id="t", error="no such page", retryable=False, error_code="http_status:404")
    ).then(
        e.TimerCancelled(timer_id="timeout:t", generation=1, reason="run ended"),
        # No CircuitOpened although the pool's breaker opens at the first failure: a 404 is the
        # task's fault, not the agent's.
        e.TaskFailed(task_id="t", agent_id="a", error="no such page", attempt=1,
                     error_code="http_status:404", retryable=False),
    ).then_state(lambda s: (s.tasks["t"].status == "failed" and s.tasks["t"].failures == 1
                            and s.agents["a"].failures == 0 and s.agents["a"].breaker == "closed"
                            and not s.agents["a"].tasks))


def test_a_retryable_failure_follows_the_retry_policy_and_keeps_its_code() -> None:
    history = (registered(), submitted(retry=RETRY3), assigned())
    given(*history).when(c.FailTask(task_id="t", error="slow", error_code="timeout")).then(
        e.TaskRetryScheduled(task_id="t", agent_id="a", error="slow", attempt=1, delay_s=5.0,
                             error_code="timeout"),
        timer("retry:t", "retry", 5.0, 1, task_id="t", attempt=1),
    ).then_state(lambda s: s.tasks["t"].status == "retrying" and s.agents["a"].failures == 1)


def test_a_retryable_failure_counts_against_the_breaker() -> None:
    given(BREAKER1, registered(), submitted(), assigned()).when(
        c.FailTask(task_id="t", error="502", error_code="http_status:502")
    ).then(
        e.TaskFailed(task_id="t", agent_id="a", error="502", attempt=1, error_code="http_status:502"),
        e.CircuitOpened(agent_id="a", failures=1, cooldown_s=30),
        timer("circuit:a", "circuit", 30, 1, agent_id="a"),
    )


def test_a_non_retryable_failure_on_a_half_open_breaker_leaves_it_half_open() -> None:
    history = (BREAKER1, registered(), e.CircuitOpened(agent_id="a", failures=1, cooldown_s=30),
               e.CircuitHalfOpened(agent_id="a"), submitted(), assigned())
    given(*history).when(c.FailTask(task_id="t", retryable=False, error_code="bad_request")).then(
        e.TaskFailed(task_id="t", agent_id="a", error="failed", attempt=1, error_code="bad_request",
                     retryable=False),
    ).then_state(lambda s: s.agents["a"].breaker == "half_open")


@pytest.mark.parametrize("code", ["", "x" * 101, "http\nstatus", " padded", "nul\x00"])
def test_an_error_code_is_short_text_without_control_characters(code: str) -> None:
    with pytest.raises(ValidationError, match="error_code"):
        c.FailTask(task_id="t", error_code=code)


def test_an_error_code_at_its_bound_is_kept() -> None:
    assert c.FailTask(task_id="t", error_code="x" * 100).error_code == "x" * 100


def test_old_failure_events_read_as_retryable_without_a_code() -> None:
    old = e.TaskFailed.model_validate({"task_id": "t", "agent_id": "a", "error": "x", "attempt": 1})
    assert (old.error_code, old.retryable) == (None, True)
    retry = e.TaskRetryScheduled.model_validate(
        {"task_id": "t", "agent_id": "a", "error": "x", "attempt": 1, "delay_s": 1})
    assert retry.error_code is None
    assert e.TaskDeferred.model_validate({"task_id": "t", "reason": "R", "delay_s": 1}).agent_id is None


# -- an agent's defaults for the tasks it runs -------------------------------------------------------


def test_an_agents_retry_policy_applies_to_a_task_without_one() -> None:
    agent = registered(retry=c.RetryPolicy(max_attempts=2, strategy="constant", base_delay_s=7))
    when = given(agent, submitted(), assigned()).when(c.FailTask(task_id="t", error="x")).then(
        e.TaskRetryScheduled(task_id="t", agent_id="a", error="x", attempt=1, delay_s=7.0),
        timer("retry:t", "retry", 7.0, 1, task_id="t", attempt=1),
    )
    # The timer's requeue counts runs against the agent's policy too.
    assert decide(when.state, c.FireTimer(timer_id="retry:t", generation=1)) == [
        e.TimerFired(timer_id="retry:t", kind="retry", generation=1, task_id="t"),
        e.TaskRequeued(task_id="t", agent_id="a", reason="retry: run 2 of 2"),
    ]


def test_a_tasks_own_retry_policy_wins_over_its_agents() -> None:
    agent = registered(retry=RETRY3)
    given(agent, submitted(retry=c.RetryPolicy(max_attempts=1)), assigned()).when(
        c.FailTask(task_id="t", error="x")
    ).then(e.TaskFailed(task_id="t", agent_id="a", error="x", attempt=1))


def test_a_non_retryable_failure_ignores_the_agents_retry_policy_too() -> None:
    given(registered(retry=RETRY3), submitted(), assigned()).when(
        c.FailTask(task_id="t", retryable=False)
    ).then(e.TaskFailed(task_id="t", agent_id="a", error="failed", attempt=1, retryable=False))


def test_an_agents_breaker_opens_at_its_own_threshold_for_its_own_cooldown() -> None:
    # The pool has no breaker; this agent has one.
    agent = registered(breaker_threshold=1, breaker_cooldown_s=90)
    given(agent, submitted(), assigned()).when(c.FailTask(task_id="t")).then(
        e.TaskFailed(task_id="t", agent_id="a", error="failed", attempt=1),
        e.CircuitOpened(agent_id="a", failures=1, cooldown_s=90),
        timer("circuit:a", "circuit", 90, 1, agent_id="a"),
    )


def test_an_agents_threshold_overrides_the_pools() -> None:
    agent = registered(breaker_threshold=3)
    given(BREAKER1, agent, submitted(), assigned()).when(c.FailTask(task_id="t")).then(
        e.TaskFailed(task_id="t", agent_id="a", error="failed", attempt=1),
    ).then_state(lambda s: s.agents["a"].failures == 1 and s.agents["a"].breaker == "closed")
    # Without a cooldown of its own, the pool's applies.
    given(BREAKER1, registered(breaker_threshold=1), submitted(), assigned()).when(
        c.FailTask(task_id="t")
    ).then(
        e.TaskFailed(task_id="t", agent_id="a", error="failed", attempt=1),
        e.CircuitOpened(agent_id="a", failures=1, cooldown_s=30),
        timer("circuit:a", "circuit", 30, 1, agent_id="a"),
    )


def test_registering_keeps_the_agents_name_and_defaults() -> None:
    cmd = c.RegisterAgent(agent_id="a", name="Fetcher", retry=RETRY3, breaker_threshold=4,
                          breaker_cooldown_s=12.5)
    given().when(cmd).then_state(lambda s: (
        s.agents["a"].name == "Fetcher" and s.agents["a"].retry == RETRY3
        and s.agents["a"].breaker_threshold == 4 and s.agents["a"].breaker_cooldown_s == 12.5))


@pytest.mark.parametrize("field, value", [("breaker_threshold", 0), ("breaker_threshold", 1001),
                                          ("breaker_cooldown_s", 0), ("breaker_cooldown_s", 86_401)])
def test_an_agents_breaker_settings_are_bounded(field: str, value: float) -> None:
    with pytest.raises(ValidationError, match=field):
        c.RegisterAgent(agent_id="a", name="a", **{field: value})


# -- a holder defers its task ------------------------------------------------------------------------


def _deferred_state() -> PoolState:
    """RUNNING, then deferred by its agent for 30 s (its defer timer is generation 2)."""
    return build_state((*RUNNING,
                        e.TaskDeferred(task_id="t", reason="RATE_LIMITED", delay_s=30, agent_id="a"),
                        e.TimerCancelled(timer_id="timeout:t", generation=1, reason="task deferred"),
                        timer("defer:t", "defer", 30, 2, task_id="t", agent_id="a")))


def test_the_holder_defers_its_task_freeing_its_slot_and_counting_no_failure() -> None:
    history = (BREAKER1, *RUNNING, e.TaskStarted(task_id="t", agent_id="a"))
    given(*history).when(c.DeferTask(task_id="t", agent_id="a", reason="RATE_LIMITED", delay_s=30)).then(
        e.TaskDeferred(task_id="t", reason="RATE_LIMITED", delay_s=30, agent_id="a"),
        e.TimerCancelled(timer_id="timeout:t", generation=1, reason="task deferred"),
        timer("defer:t", "defer", 30, 2, task_id="t", agent_id="a"),
    ).then_state(lambda s: (
        s.tasks["t"].status == "queued" and s.tasks["t"].agent_id is None
        and s.tasks["t"].failures == 0 and s.tasks["t"].deferred == ("a", "RATE_LIMITED")
        and not s.agents["a"].tasks and s.agents["a"].failures == 0 and s.agents["a"].breaker == "closed"
        and set(s.timers) == {"defer:t"}))


def test_its_defer_timer_queues_it_again() -> None:
    state = _deferred_state()
    assert decide(state, c.FireTimer(timer_id="defer:t", generation=2)) == [
        e.TimerFired(timer_id="defer:t", kind="defer", generation=2, task_id="t", agent_id="a"),
        e.TaskRequeued(task_id="t", agent_id="a",
                       reason="deferred by agent a (RATE_LIMITED): back in the queue"),
    ]


def test_a_deferred_task_may_be_assigned_once_requeued_and_runs_with_its_attempts_intact() -> None:
    history = (*RUNNING, e.TaskDeferred(task_id="t", reason="OVERLOADED", delay_s=30, agent_id="a"),
               timer("defer:t", "defer", 30, 2, task_id="t", agent_id="a"),
               e.TaskRequeued(task_id="t", agent_id="a", reason="back"))
    given(*history).when(c.AssignTask(task_id="t", agent_id="a")).then(
        e.TaskAssigned(task_id="t", agent_id="a", attempt=2),
        timer("timeout:t", "task_timeout", 60, 3, task_id="t", agent_id="a", attempt=2),
    ).then_state(lambda s: s.tasks["t"].failures == 0 and s.tasks["t"].deferred is None)


def test_a_deferred_task_is_not_assigned_before_its_timer() -> None:
    deferred = (*RUNNING, registered("b"),
                e.TaskDeferred(task_id="t", reason="RATE_LIMITED", delay_s=30, agent_id="a"))
    for agent_id in ("a", "b"):
        given(*deferred).when(c.AssignTask(task_id="t", agent_id=agent_id)).rejects(
            Reason.INVALID_TASK_STATE, status="deferred", deferred_by="a")


def test_a_deferral_without_delay_requeues_at_once() -> None:
    given(*RUNNING).when(c.DeferTask(task_id="t", agent_id="a", reason="RETRY_AFTER", delay_s=0)).then(
        e.TaskDeferred(task_id="t", reason="RETRY_AFTER", delay_s=0, agent_id="a"),
        e.TimerCancelled(timer_id="timeout:t", generation=1, reason="task deferred"),
        e.TaskRequeued(task_id="t", agent_id="a",
                       reason="deferred by agent a (RETRY_AFTER): back in the queue"),
    ).then_state(lambda s: s.tasks["t"].status == "queued" and s.tasks["t"].deferred is None)


def test_a_deferral_by_an_agent_not_holding_the_task_is_rejected() -> None:
    given(*RUNNING, registered("b")).when(c.DeferTask(task_id="t", agent_id="b")).rejects(
        Reason.WRONG_AGENT, holder="a", agent_id="b")


def test_a_queued_task_cannot_be_deferred_by_an_agent() -> None:
    given(registered(), submitted()).when(c.DeferTask(task_id="t", agent_id="a")).rejects(
        Reason.INVALID_TASK_STATE, status="queued")


def test_the_coordinators_deferral_of_a_queued_task_is_unchanged() -> None:
    given(registered(), submitted()).when(c.DeferTask(task_id="t", delay_s=2)).then(
        e.TaskDeferred(task_id="t", reason="RATE_LIMITED", delay_s=2),
        timer("defer:t", "defer", 2, 1, task_id="t"),
    ).then_state(lambda s: s.tasks["t"].deferred is None)
    # ... and its timer only wakes the coordinator up.
    state = build_state((registered(), submitted(),
                         e.TaskDeferred(task_id="t", reason="RATE_LIMITED", delay_s=2),
                         timer("defer:t", "defer", 2, 1, task_id="t")))
    assert decide(state, c.FireTimer(timer_id="defer:t", generation=1)) == [
        e.TimerFired(timer_id="defer:t", kind="defer", generation=1, task_id="t"),
    ]


def test_cancelling_a_deferred_task_cancels_its_defer_timer() -> None:
    state = _deferred_state()
    assert decide(state, c.CancelTask(task_id="t", reason="no longer needed")) == [
        e.TaskCancelled(task_id="t", reason="no longer needed"),
        e.TimerCancelled(timer_id="defer:t", generation=2, reason="task cancelled"),
    ]


def _workflow() -> tuple[Any, ...]:
    defn = WorkflowDefinition.model_validate(
        {"name": "wf", "tasks": [{"name": "a"}, {"name": "b", "depends_on": ["a"]}]})
    started = e.WorkflowStarted(workflow_id="w", name="wf", version=defn.version,
                                definition=defn.model_dump(mode="json"), total_tasks=2)
    step = e.TaskSubmitted(task_id="w.a", type="a", priority=5,
                           data={"workflow_id": "w", "step": "a", "action": None, "parameters": {}})
    return registered(), started, step, assigned("w.a")


def test_a_workflow_step_deferred_by_its_agent_stays_in_flight() -> None:
    history = _workflow()
    given(*history).when(c.DeferTask(task_id="w.a", agent_id="a", delay_s=5)).then(
        # Nothing settles the run: no step ended.
        e.TaskDeferred(task_id="w.a", reason="RATE_LIMITED", delay_s=5, agent_id="a"),
        timer("defer:w.a", "defer", 5, 1, task_id="w.a", agent_id="a"),
    ).then_state(lambda s: (s.workflows["w"].open and s.workflows["w"].steps["a"].status == "queued"
                            and s.workflows["w"].in_flight == 1
                            and s.workflows["w"].steps["b"].status == "pending"))


def test_the_workflow_reactor_sees_the_deferred_step_in_flight_and_starts_nothing() -> None:
    reactor = WorkflowReactor()
    history = (*_workflow(), e.TaskDeferred(task_id="w.a", reason="RATE_LIMITED", delay_s=5, agent_id="a"))
    for i, ev in enumerate(history):
        for env in wrap([ev], pool="default", start=i, command_id=f"h-{i}"):
            reactor.observe(env)
    run = reactor.runs[("default", "w")].run
    assert run.steps["a"].status == "queued" and run.in_flight == 1
    assert reactor.schedule() == []  # b waits for a; a is not submitted twice


# -- the coordinator does not reassign a deferred task before its timer -----------------------------


def _world() -> World:
    w = World()
    hb = {"heartbeat_timeout_s": 3600}
    w.do(c.RegisterAgent(agent_id="a", name="a", capacity=1, **hb),
         c.RegisterAgent(agent_id="b", name="b", capacity=1, **hb),
         c.SubmitTask(task_id="t", type="w"))
    assert w.state.tasks["t"].agent_id == "a"
    return w


def test_the_coordinator_waits_for_the_defer_timer_then_assigns_the_task_again() -> None:
    w = _world()
    w.do(c.DeferTask(task_id="t", agent_id="a", reason="RATE_LIMITED", delay_s=10))
    # b is free and capable, yet nothing is assigned: the task is out of the queue until its timer.
    assert w.state.tasks["t"].status == "queued" and w.state.tasks["t"].agent_id is None
    assert not w.events(e.CommandRejected)
    assert w.view.agents["a"].load == 0 and w.view.tasks["t"].status == "waiting"
    # a's slot is free for other work meanwhile.
    w.do(c.SubmitTask(task_id="t2", type="w"))
    assert w.state.tasks["t2"].agent_id == "a"
    w.advance(9.9)
    assert w.state.tasks["t"].status == "queued" and len(w.events(e.TaskAssigned)) == 2
    w.advance(0.2)
    assert w.state.tasks["t"].status == "assigned" and w.state.tasks["t"].agent_id == "b"
    assert w.state.tasks["t"].attempts == 2 and w.state.tasks["t"].failures == 0
    assert not w.events(e.CommandRejected)


def test_a_coordinator_rebuilt_during_the_deferral_does_not_assign_it_either() -> None:
    w = _world()
    w.do(c.DeferTask(task_id="t", agent_id="a", delay_s=10))
    rebuilt = Coordinator()
    for env in w.log:
        rebuilt.observe(env)
    view = rebuilt.view("default")
    assert all(getattr(a.command, "task_id", None) != "t" for a in view.schedule())
    assert view.agents["a"].load == 0 and view.agents["b"].load == 0


def test_a_non_retryable_failure_with_the_breaker_on_keeps_the_agent_in_service() -> None:
    w = World()
    w.do(c.SetPoolPolicy(breaker_threshold=1),
         c.RegisterAgent(agent_id="a", name="a", capacity=1, heartbeat_timeout_s=3600),
         c.SubmitTask(task_id="t1", type="w"))
    w.do(c.FailTask(task_id="t1", retryable=False, error_code="http_status:404"),
         c.SubmitTask(task_id="t2", type="w"))
    assert w.state.agents["a"].breaker == "closed" and w.state.tasks["t2"].agent_id == "a"
    w.do(c.FailTask(task_id="t2", error_code="http_status:503"), c.SubmitTask(task_id="t3", type="w"))
    assert w.state.agents["a"].breaker == "open" and w.state.tasks["t3"].status == "queued"


# -- action and parameters ---------------------------------------------------------------------------


def test_a_task_carries_its_action_and_parameters() -> None:
    cmd = c.SubmitTask(task_id="t", type="fetch", action="GET /users/{id}", parameters={"id": 7, "q": [1, 2]})
    given().when(cmd).then(
        e.TaskSubmitted(task_id="t", type="fetch", priority=5, action="GET /users/{id}",
                        parameters={"id": 7, "q": [1, 2]}),
    )


def test_the_state_keeps_no_payload_of_a_task() -> None:
    # The decider keeps every task ever submitted: what it keeps of one must not grow with what the
    # client put in it (the data, action and parameters stay on the log), only its workflow.
    big = {"doc": "x" * 10_000, "workflow_id": "w1"}
    cmd = c.SubmitTask(task_id="t", type="fetch", data=big, action="GET /x",
                       parameters={"body": "y" * 10_000})
    given().when(cmd).then_state(lambda s: (s.tasks["t"].workflow == "w1"
                                            and not any(hasattr(s.tasks["t"], f)
                                                        for f in ("data", "action", "parameters"))))


@pytest.mark.parametrize("fields", [{"action": ""}, {"action": "x" * 201},
                                    {"parameters": {"n": float("nan")}}, {"parameters": {"big": 2**64}}])
def test_action_and_parameters_are_bounded(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        c.SubmitTask(task_id="t", type="x", **fields)


def test_old_submissions_read_without_action_or_parameters() -> None:
    old = e.TaskSubmitted.model_validate({"task_id": "t", "type": "x", "priority": 5})
    assert (old.action, old.parameters, old.agent_name) == (None, {}, None)


# -- pinning by id or name ---------------------------------------------------------------------------


FETCHERS = (registered("f2", "fetcher"), registered("f1", "fetcher"), registered("z", "other"))


def _pinned(**kw: Any) -> e.TaskSubmitted:
    return submitted(required_capabilities=(), **kw)


def test_agent_name_may_be_an_agents_id() -> None:
    given(*FETCHERS).when(c.SubmitTask(task_id="t", type="work", agent_name="z")).then(
        _pinned(agent_id="z", agent_name="z"))


def test_agent_name_names_the_active_agent_with_that_name_the_smallest_id_of_several() -> None:
    given(*FETCHERS).when(c.SubmitTask(task_id="t", type="work", agent_name="fetcher")).then(
        _pinned(agent_id="f1", agent_name="fetcher")).then_state(lambda s: s.tasks["t"].pinned == "f1")
    # A deregistered one no longer answers to its name.
    gone = (*FETCHERS, e.AgentDeregistered(agent_id="f1"))
    given(*gone).when(c.SubmitTask(task_id="t", type="work", agent_name="fetcher")).then(
        _pinned(agent_id="f2", agent_name="fetcher"))


def test_an_id_wins_over_a_name() -> None:
    # "fetcher" is also the id of an agent named otherwise.
    history = (*FETCHERS, registered("fetcher", "third"))
    given(*history).when(c.SubmitTask(task_id="t", type="work", agent_name="fetcher")).then(
        _pinned(agent_id="fetcher", agent_name="fetcher"))


def test_an_unknown_agent_name_is_rejected() -> None:
    rejected = given(*FETCHERS, e.AgentDeregistered(agent_id="z")).when(
        c.SubmitTask(task_id="t", type="work", agent_name="nobody")
    ).rejects(Reason.UNKNOWN_AGENT, agent_name="nobody", task_id="t")
    assert "no agent has the id 'nobody'" in rejected.message
    # Not an id, and its only agent by that name is gone: rejected too.
    given(*FETCHERS, e.AgentDeregistered(agent_id="z")).when(
        c.SubmitTask(task_id="t", type="work", agent_name="other")
    ).rejects(Reason.UNKNOWN_AGENT)


def test_agent_id_and_agent_name_must_name_the_same_agent() -> None:
    given(*FETCHERS).when(c.SubmitTask(task_id="t", type="work", agent_id="f1", agent_name="fetcher")).then(
        _pinned(agent_id="f1", agent_name="fetcher"))
    rejected = given(*FETCHERS).when(
        c.SubmitTask(task_id="t", type="work", agent_id="f2", agent_name="fetcher")
    ).rejects(Reason.INVALID_COMMAND, agent_id="f2", agent_name="fetcher", resolved="f1")
    assert "name different agents" in rejected.message
    given(*FETCHERS).when(c.SubmitTask(task_id="t", type="work", agent_id="z", agent_name="nobody")).rejects(
        Reason.UNKNOWN_AGENT)


def test_an_id_given_twice_pins_even_before_the_agent_registers() -> None:
    given().when(c.SubmitTask(task_id="t", type="work", agent_id="later", agent_name="later")).then(
        _pinned(agent_id="later", agent_name="later"))


def test_a_task_pinned_by_name_goes_only_to_that_agent() -> None:
    w = World()
    hb = {"heartbeat_timeout_s": 3600}
    w.do(c.RegisterAgent(agent_id="a", name="general", capacity=5, **hb),
         c.RegisterAgent(agent_id="b", name="special", capacity=5, **hb),
         c.SubmitTask(task_id="t", type="w", agent_name="special"),
         c.SubmitTask(task_id="u", type="w"))
    assert w.state.tasks["t"].agent_id == "b" and w.state.tasks["u"].agent_id == "a"
