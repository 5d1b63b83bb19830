"""Workflows in the pool decider and the workflow reactor: every transition and failure strategy as
given / when / then, runs through the in-memory decider + coordinator + reactor loop, and
Hypothesis over random DAGs with random outcomes."""

from __future__ import annotations

from collections import Counter
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contracts import Reason
from contracts import commands as c
from contracts import event_types as e
from contracts.workflows import WorkflowDefinition
from services.domain.decider import evolve
from services.domain.state import PoolState
from services.workflows.reactor import WorkflowReactor
from tests import gwt
from tests.gwt import Loop


def definition(*steps: dict[str, Any], **fields: Any) -> WorkflowDefinition:
    return WorkflowDefinition.model_validate({"name": "wf", "tasks": list(steps), **fields})


def started(
    workflow_id: str, defn: WorkflowDefinition, inputs: dict[str, Any] | None = None
) -> e.WorkflowStarted:
    return e.WorkflowStarted(
        workflow_id=workflow_id,
        name=defn.name,
        version=defn.version,
        definition=defn.model_dump(mode="json"),
        inputs=inputs or {},
        total_tasks=len(defn.tasks),
    )


def step_task(workflow_id: str, step: str, **fields: Any) -> c.SubmitTask:
    return c.SubmitTask(
        task_id=f"{workflow_id}.{step}",
        type=step,
        data={"workflow_id": workflow_id, "step": step, "action": None, "parameters": {}},
        **fields,
    )


def submitted(cmd: c.SubmitTask) -> e.TaskSubmitted:
    return e.TaskSubmitted(**cmd.model_dump(), inferred_capabilities=())


AGENT = e.AgentRegistered(agent_id="a1", name="a1", kind="generic", capabilities=("x",), capacity=10)
A, B, D = {"name": "a"}, {"name": "b"}, {"name": "d", "depends_on": ["a", "b"]}


def _running(defn: WorkflowDefinition, *steps: str) -> list[Any]:
    """A run of ``defn`` whose ``steps`` were submitted and assigned to a1."""
    out: list[Any] = [AGENT, started("w", defn)]
    for s in steps:
        out.append(submitted(step_task("w", s)))
        out.append(e.TaskAssigned(task_id=f"w.{s}", agent_id="a1", attempt=1))
    return out


def loop_after(*events: Any) -> Loop:
    """A decider + coordinator + reactor loop whose pool's history is ``events`` (each its own decision)."""
    loop = Loop()
    for i, ev in enumerate(events):
        for env in gwt.wrap([ev], pool="default", start=loop.state.sequence, command_id=f"given-{i}"):
            evolve(loop.state, env)
            loop.coordinator.observe(env)
            loop.workflows.observe(env)
            loop.log.append(env)
    for a in loop.coordinator.schedule() + loop.workflows.schedule():  # what they would issue now
        loop.queue.append((a.command_id, a.command, True))
    loop.run()
    return loop


def _ended(
    status: str,
    reason: str | None = None,
    code: str | None = None,
    *,
    completed: int = 0,
    failed: int = 0,
    skipped: int = 0,
) -> e.WorkflowEnded:
    return e.WorkflowEnded(
        workflow_id="w",
        status=status,
        reason=reason,
        code=code,
        completed_tasks=completed,
        failed_tasks=failed,
        skipped_tasks=skipped,
    )


# -- starting ---------------------------------------------------------------------------------------


def test_start_records_the_snapshot_inputs_budget_and_timeout() -> None:
    defn = definition(
        A,
        global_timeout=60,
        cost_budget=2.5,
        inputs={"topic": {"type": "string", "required": True}, "n": {"type": "integer", "default": 3}},
    )
    gwt.given().when(c.StartWorkflow(workflow_id="w", definition=defn, inputs={"topic": "cats"})).then(
        started("w", defn, {"topic": "cats", "n": 3}),
        e.BudgetSet(scope="workflow", scope_id="w", limit_usd=2.5),
        e.TimerScheduled(
            timer_id="workflow:w", kind="workflow_timeout", delay_s=60, generation=1, workflow_id="w"
        ),
    ).then_state(lambda s: s.workflows["w"].status == "queued")


def test_start_refuses_an_existing_run_and_bad_inputs() -> None:
    defn = definition(A, inputs={"topic": {"type": "string", "required": True}})
    gwt.given(started("w", defn)).when(
        c.StartWorkflow(workflow_id="w", definition=defn, inputs={"topic": "x"})
    ).rejects(Reason.WORKFLOW_EXISTS)
    gwt.given().when(c.StartWorkflow(workflow_id="w", definition=defn)).rejects(Reason.INVALID_COMMAND)
    gwt.given().when(c.StartWorkflow(workflow_id="w", definition=defn, inputs={"topic": 3})).rejects(
        Reason.INVALID_COMMAND
    )


# -- submitting steps -------------------------------------------------------------------------------


def test_a_step_may_start_only_when_its_dependencies_are_done() -> None:
    defn = definition(A, B, D)
    gwt.given(started("w", defn)).when(step_task("w", "a")).then(submitted(step_task("w", "a"))).then_state(
        lambda s: s.workflows["w"].status == "running" and s.workflows["w"].steps["a"].status == "queued"
    )
    gwt.given(started("w", defn)).when(step_task("w", "d")).rejects(Reason.STEP_NOT_READY, step="d")
    gwt.given(*_running(defn, "a", "b"), e.TaskCompleted(task_id="w.a", agent_id="a1")).when(
        step_task("w", "d")
    ).rejects(Reason.STEP_NOT_READY)
    gwt.given(
        *_running(defn, "a", "b"),
        e.TaskCompleted(task_id="w.a", agent_id="a1"),
        e.TaskCompleted(task_id="w.b", agent_id="a1"),
    ).when(step_task("w", "d")).then(submitted(step_task("w", "d")))


def test_a_step_is_submitted_once_under_its_own_task_id() -> None:
    defn = definition(A, B)
    gwt.given(*_running(defn, "a")).when(
        c.SubmitTask(task_id="w.a2", type="a", data={"workflow_id": "w", "step": "a"})
    ).rejects(Reason.INVALID_COMMAND)
    gwt.given(*_running(defn, "a")).when(step_task("w", "a")).rejects(Reason.TASK_EXISTS)
    gwt.given(started("w", defn)).when(
        c.SubmitTask(task_id="w.zz", type="zz", data={"workflow_id": "w", "step": "zz"})
    ).rejects(Reason.UNKNOWN_STEP)


def test_max_parallel_and_sequential_runs_bound_the_steps_in_flight() -> None:
    c3 = {"name": "c"}
    two = definition(A, B, c3, max_parallel=2)
    gwt.given(*_running(two, "a", "b")).when(step_task("w", "c")).rejects(Reason.STEP_NOT_READY)
    gwt.given(*_running(two, "a", "b"), e.TaskCompleted(task_id="w.a", agent_id="a1")).when(
        step_task("w", "c")
    ).then(submitted(step_task("w", "c")))
    one = definition(A, B, parallel_execution=False)
    gwt.given(*_running(one, "a")).when(step_task("w", "b")).rejects(Reason.STEP_NOT_READY)


def test_a_task_that_only_names_a_workflow_for_its_budget_is_not_a_step() -> None:
    gwt.given(started("w", definition(A))).when(
        c.SubmitTask(task_id="t", type="t", data={"workflow_id": "w"})
    ).then(e.TaskSubmitted(task_id="t", type="t", priority=5, data={"workflow_id": "w"}))


# -- ending: the failure strategies -----------------------------------------------------------------


def test_the_last_step_completing_completes_the_run() -> None:
    defn = definition(A, global_timeout=30)
    given_ = gwt.given(
        AGENT,
        started("w", defn),
        e.TimerScheduled(
            timer_id="workflow:w", kind="workflow_timeout", delay_s=30, generation=1, workflow_id="w"
        ),
        submitted(step_task("w", "a")),
        e.TaskAssigned(task_id="w.a", agent_id="a1", attempt=1),
    )
    given_.when(c.CompleteTask(task_id="w.a", result={"ok": True})).then(
        e.TaskCompleted(task_id="w.a", agent_id="a1", result={"ok": True}),
        e.TimerCancelled(timer_id="workflow:w", generation=1, reason="workflow completed"),
        _ended("completed", completed=1),
    ).then_state(lambda s: s.workflows["w"].status == "completed")


def test_stop_on_first_failure_cancels_running_steps_and_skips_the_rest() -> None:
    defn = definition(A, B, D)
    gwt.given(*_running(defn, "a", "b")).when(c.FailTask(task_id="w.a", error="boom")).then(
        e.TaskFailed(task_id="w.a", agent_id="a1", error="boom", attempt=1),
        e.TaskCancelled(task_id="w.b", agent_id="a1", reason="workflow w: step a failed"),
        e.WorkflowStepSkipped(workflow_id="w", step="d", reason="workflow stopped: step a failed"),
        _ended("failed", "step a failed", failed=1, skipped=1),
    )


def test_continue_on_failure_skips_dependents_and_lets_independent_branches_finish() -> None:
    c_ = {"name": "c"}
    e_ = {"name": "e", "depends_on": ["c"]}
    defn = definition(A, B, D, c_, e_, failure_strategy="continue_on_failure")
    then = [
        e.TaskFailed(task_id="w.a", agent_id="a1", error="boom", attempt=1),
        e.WorkflowStepSkipped(workflow_id="w", step="d", reason="dependency a failed"),
    ]
    when = gwt.given(*_running(defn, "a", "b", "c")).when(c.FailTask(task_id="w.a", error="boom")).then(*then)
    assert when.state.workflows["w"].status == "running"
    assert when.state.tasks["w.b"].status == "assigned"  # the independent branch goes on
    # Then c completes, the reactor runs e, e and b complete: the run fails (a failed).
    loop = loop_after(*_running(defn, "a", "b", "c"), *then)
    for cmd in (c.CompleteTask(task_id="w.c"), c.CompleteTask(task_id="w.e"), c.CompleteTask(task_id="w.b")):
        loop.do(cmd)
    assert loop.log[-1].data == _ended("failed", "step a failed", completed=3, failed=1, skipped=1)


def test_partial_completion_allowed() -> None:
    defn = definition(A, B, D, failure_strategy="partial_completion_allowed")
    when = (
        gwt.given(*_running(defn, "a", "b"), e.TaskCompleted(task_id="w.a", agent_id="a1"))
        .when(c.FailTask(task_id="w.b", error="boom"))
        .then(
            e.TaskFailed(task_id="w.b", agent_id="a1", error="boom", attempt=1),
            e.WorkflowStepSkipped(workflow_id="w", step="d", reason="dependency b failed"),
            _ended("partially_completed", "step b failed", completed=1, failed=1, skipped=1),
        )
    )
    assert when.state.workflows["w"].status == "partially_completed"
    # None completed: failed.
    gwt.given(
        *_running(defn, "a", "b"),
        e.TaskFailed(task_id="w.a", agent_id="a1", error="x", attempt=1),
        e.WorkflowStepSkipped(workflow_id="w", step="d", reason="dependency a failed"),
    ).when(c.FailTask(task_id="w.b", error="boom")).then(
        e.TaskFailed(task_id="w.b", agent_id="a1", error="boom", attempt=1),
        _ended("failed", "step a failed", failed=2, skipped=1),
    )


def test_a_step_allowed_to_fail_neither_fails_the_run_nor_stops_its_dependents() -> None:
    defn = definition(A, {"name": "b", "continue_on_failure": True}, D)
    history = [*_running(defn, "a", "b"), e.TaskCompleted(task_id="w.a", agent_id="a1")]
    failed = e.TaskFailed(task_id="w.b", agent_id="a1", error="flaky", attempt=1)
    when = gwt.given(*history).when(c.FailTask(task_id="w.b", error="flaky")).then(failed)
    assert when.state.workflows["w"].status == "running"
    loop = loop_after(*history, failed)
    loop.do(c.CompleteTask(task_id="w.d"))
    assert loop.state.workflows["w"].status == "completed"


def test_a_retried_step_is_still_running() -> None:
    defn = definition(A)
    retry = c.RetryPolicy(max_attempts=2, strategy="immediate")
    gwt.given(
        AGENT,
        started("w", defn),
        submitted(step_task("w", "a", retry=retry)),
        e.TaskAssigned(task_id="w.a", agent_id="a1", attempt=1),
    ).when(c.FailTask(task_id="w.a", error="once")).then_state(
        lambda s: s.workflows["w"].status == "running" and s.workflows["w"].steps["a"].status == "queued"
    )


def test_an_externally_cancelled_step_counts_as_failed() -> None:
    defn = definition(A, B)
    gwt.given(*_running(defn, "a", "b")).when(c.CancelTask(task_id="w.a", reason="operator")).then(
        e.TaskCancelled(task_id="w.a", agent_id="a1", reason="operator"),
        e.TaskCancelled(task_id="w.b", agent_id="a1", reason="workflow w: step a failed"),
        _ended("failed", "step a failed"),
    )


# -- timeouts, cancel, budget ---------------------------------------------------------------------


def test_the_global_timeout_cancels_running_steps_and_times_the_run_out() -> None:
    defn = definition(A, B, D, global_timeout=60)
    timer = e.TimerScheduled(
        timer_id="workflow:w", kind="workflow_timeout", delay_s=60, generation=1, workflow_id="w"
    )
    gwt.given(*_running(defn, "a"), timer).when(c.FireTimer(timer_id="workflow:w", generation=1)).then(
        e.TimerFired(timer_id="workflow:w", kind="workflow_timeout", generation=1),
        e.TaskCancelled(task_id="w.a", agent_id="a1", reason="workflow w: global timeout of 60.0s reached"),
        e.WorkflowStepSkipped(workflow_id="w", step="b", reason="global timeout of 60.0s reached"),
        e.WorkflowStepSkipped(workflow_id="w", step="d", reason="global timeout of 60.0s reached"),
        _ended("timed_out", "global timeout of 60.0s reached", skipped=2),
    )
    # A run that ended before its timer fired is left alone.
    gwt.given(*_running(defn), timer, _ended("cancelled")).when(
        c.FireTimer(timer_id="workflow:w", generation=1)
    ).then(e.TimerFired(timer_id="workflow:w", kind="workflow_timeout", generation=1))


def test_cancel_stops_a_run_once() -> None:
    defn = definition(A, B)
    then = [
        e.TaskCancelled(task_id="w.a", agent_id="a1", reason="workflow w: no longer needed"),
        e.WorkflowStepSkipped(workflow_id="w", step="b", reason="workflow cancelled: no longer needed"),
        _ended("cancelled", "no longer needed", skipped=1),
    ]
    gwt.given(*_running(defn, "a")).when(c.CancelWorkflow(workflow_id="w", reason="no longer needed")).then(
        *then
    )
    gwt.given().when(c.CancelWorkflow(workflow_id="w")).rejects(Reason.UNKNOWN_WORKFLOW)
    loop = loop_after(*_running(defn, "a"), *then)
    loop.do(c.CancelWorkflow(workflow_id="w"))
    assert loop.rejections()[-1].code == Reason.INVALID_WORKFLOW_STATE
    loop.do(step_task("w", "b"))
    assert loop.rejections()[-1].code == Reason.INVALID_WORKFLOW_STATE


def test_a_spent_workflow_budget_fails_the_run_and_lets_running_work_finish() -> None:
    defn = definition(A, B, {"name": "c", "depends_on": ["a"]}, cost_budget=1.0)
    when = gwt.given(
        *_running(defn, "a", "b"), e.BudgetSet(scope="workflow", scope_id="w", limit_usd=1.0)
    ).when(c.RecordCost(cost_id="k1", agent_id="a1", task_id="w.a", model="m", cost_usd=1.5))
    events = when._decide()
    when._apply(events)
    ended = [x for x in events if isinstance(x, e.WorkflowEnded)]
    assert ended and ended[0].code == "BUDGET_EXCEEDED" and ended[0].status == "failed"
    assert [x.step for x in events if isinstance(x, e.WorkflowStepSkipped)] == ["c"]
    assert not [x for x in events if isinstance(x, e.TaskCancelled)]
    assert when.state.tasks["w.b"].status == "assigned"  # running work goes on (flagged)
    loop = loop_after(
        *_running(defn, "a", "b"), e.BudgetSet(scope="workflow", scope_id="w", limit_usd=1.0), *events
    )
    loop.do(c.CompleteTask(task_id="w.a"))
    loop.do(step_task("w", "c"))
    assert loop.rejections()[-1].code == Reason.BUDGET_EXCEEDED


# -- signals ---------------------------------------------------------------------------------------


SIGNAL = {"name": "approve", "type": "signal", "timeout": 3600}
AFTER = {"name": "publish", "depends_on": ["approve"]}


def test_a_signal_step_waits_then_completes_with_the_signal_data() -> None:
    defn = definition(SIGNAL, AFTER)
    then = [
        e.WorkflowSignalAwaited(workflow_id="w", step="approve", timeout_s=3600),
        e.TimerScheduled(
            timer_id="signal:w.approve",
            kind="signal_timeout",
            delay_s=3600,
            generation=1,
            workflow_id="w",
            step="approve",
        ),
    ]
    gwt.given(started("w", defn)).when(c.AwaitSignal(workflow_id="w", step="approve")).then(*then)
    loop = loop_after(AGENT, started("w", defn), *then)
    n = len(loop.log)
    loop.do(c.SignalWorkflow(workflow_id="w", name="approve", data={"by": "ann"}))
    kinds = [type(env.data).__name__ for env in loop.log[n:]]
    assert kinds[:3] == ["WorkflowSignalled", "TimerCancelled", "WorkflowStepCompleted"]
    assert loop.state.workflows["w"].steps["approve"].status == "completed"
    # The reactor submits the step after it, whose template may read the signal's data.
    assert loop.state.tasks["w.publish"].status in ("queued", "assigned")
    loop.do(c.SignalWorkflow(workflow_id="w", name="approve"))
    assert loop.rejections()[-1].code == Reason.INVALID_WORKFLOW_STATE
    loop.do(c.SignalWorkflow(workflow_id="w", name="publish"))
    assert loop.rejections()[-1].code == Reason.UNKNOWN_STEP


def test_an_early_signal_is_kept_until_the_step_waits() -> None:
    defn = definition(A, {"name": "approve", "type": "signal", "depends_on": ["a"]})
    signalled = e.WorkflowSignalled(workflow_id="w", step="approve", data={"ok": 1})
    gwt.given(*_running(defn, "a")).when(
        c.SignalWorkflow(workflow_id="w", name="approve", data={"ok": 1})
    ).then(signalled)
    loop = loop_after(*_running(defn, "a"), signalled)
    loop.do(c.CompleteTask(task_id="w.a"))  # the reactor then issues AwaitSignal
    kinds = [type(env.data).__name__ for env in loop.log[-4:]]
    assert kinds == ["TaskCompleted", "WorkflowSignalAwaited", "WorkflowStepCompleted", "WorkflowEnded"]
    assert loop.log[-1].data == _ended("completed", completed=2)


def test_a_signal_that_never_comes_fails_its_step() -> None:
    defn = definition(SIGNAL, AFTER)
    gwt.given(
        started("w", defn),
        e.WorkflowSignalAwaited(workflow_id="w", step="approve", timeout_s=3600),
        e.TimerScheduled(
            timer_id="signal:w.approve",
            kind="signal_timeout",
            delay_s=3600,
            generation=1,
            workflow_id="w",
            step="approve",
        ),
    ).when(c.FireTimer(timer_id="signal:w.approve", generation=1)).then(
        e.TimerFired(timer_id="signal:w.approve", kind="signal_timeout", generation=1),
        e.WorkflowStepFailed(
            workflow_id="w", step="approve", error="signal 'approve' not received within 3600.0s"
        ),
        e.WorkflowStepSkipped(
            workflow_id="w", step="publish", reason="workflow stopped: step approve failed"
        ),
        _ended("failed", "step approve failed", failed=1, skipped=1),
    )


# -- definitions and pins --------------------------------------------------------------------------


def test_a_definition_version_never_changes() -> None:
    defn = definition(A)
    when = gwt.given().when(c.RegisterWorkflowDefinition(definition=defn))
    events = when._decide()
    assert [type(x) for x in events] == [e.WorkflowDefinitionRegistered]
    registered = events[0]
    gwt.given(registered).when(c.RegisterWorkflowDefinition(definition=defn)).then()
    gwt.given(registered).when(c.RegisterWorkflowDefinition(definition=definition(A, B))).rejects(
        Reason.DEFINITION_EXISTS
    )
    gwt.given(registered).when(
        c.RegisterWorkflowDefinition(definition=definition(A, B, version="1.1"))
    ).then_state(lambda s: len(s.definitions) == 2)


def test_a_pinned_task_goes_to_its_agent_only() -> None:
    other = e.AgentRegistered(agent_id="a2", name="a2", kind="generic", capabilities=("x",), capacity=10)
    task = e.TaskSubmitted(task_id="t", type="t", priority=5, agent_id="a1")
    gwt.given(AGENT, other, task).when(c.AssignTask(task_id="t", agent_id="a2")).rejects(Reason.WRONG_AGENT)
    gwt.given(AGENT, other, task).when(c.AssignTask(task_id="t", agent_id="a1")).then_state(
        lambda s: s.tasks["t"].agent_id == "a1"
    )


# -- the reactor in the loop ----------------------------------------------------------------------


def _fleet(loop: Loop, capabilities: tuple[str, ...] = ("x",), n: int = 2) -> None:
    for i in range(n):
        loop.do(c.RegisterAgent(agent_id=f"ag{i}", name=f"ag{i}", capabilities=capabilities, capacity=8))


def _work(loop: Loop, outcome: dict[str, bool] | None = None, results: dict[str, Any] | None = None) -> None:
    """Agents finish every assigned task until quiet: ``outcome[step]`` False fails it."""
    while True:
        held = sorted(t.task_id for t in loop.state.tasks.values() if t.status == "assigned")
        if not held:
            return
        for task_id in held:
            step = task_id.split(".", 1)[1]
            if (outcome or {}).get(step, True):
                loop.do(c.CompleteTask(task_id=task_id, result=(results or {}).get(step, {"step": step})))
            else:
                loop.do(c.FailTask(task_id=task_id, error=f"{step} broke"))


def test_the_reactor_runs_a_diamond_and_resolves_templates() -> None:
    defn = definition(
        {"name": "start", "parameters": {"topic": "{{ inputs.topic }}"}},
        {"name": "left", "depends_on": ["start"], "parameters": {"body": "{{ tasks.start.result.body }}"}},
        {"name": "mid", "depends_on": ["start"]},
        {"name": "right", "depends_on": ["start"], "continue_on_failure": True},
        {
            "name": "join",
            "depends_on": ["left", "mid", "right"],
            "parameters": {
                "all": "{{ tasks.left.result }}",
                "err": "{{ tasks.right.error }}",
                "text": "{{ tasks.left.status }}/{{ tasks.right.status }}",
            },
        },
        inputs={"topic": {"type": "string", "required": True}},
    )
    loop = Loop()
    _fleet(loop)
    loop.do(c.StartWorkflow(workflow_id="w", definition=defn, inputs={"topic": "cats"}))
    _work(loop, {"right": False}, {"start": {"body": "B"}, "left": {"n": 1}})
    tasks = {env.data.task_id: env.data for env in loop.log if isinstance(env.data, e.TaskSubmitted)}
    assert tasks["w.start"].data["parameters"] == {"topic": "cats"}
    assert tasks["w.left"].data["parameters"] == {"body": "B"}
    assert tasks["w.join"].data["parameters"] == {
        "all": {"n": 1},
        "err": "right broke",
        "text": "completed/failed",
    }
    assert loop.state.workflows["w"].status == "completed"
    _no_step_before_its_dependencies(loop)


def test_a_template_that_does_not_resolve_fails_its_step() -> None:
    defn = definition(
        A, {"name": "b", "depends_on": ["a"], "parameters": {"x": "{{ tasks.a.result.missing }}"}}
    )
    loop = Loop()
    _fleet(loop)
    loop.do(c.StartWorkflow(workflow_id="w", definition=defn))
    _work(loop, results={"a": {"other": 1}})
    failed = [env.data for env in loop.log if isinstance(env.data, e.WorkflowStepFailed)]
    assert len(failed) == 1 and failed[0].step == "b" and "parameters" in failed[0].error
    assert loop.state.workflows["w"].status == "failed"


def test_steps_and_inputs_named_like_dict_methods_are_read_as_data() -> None:
    defn = definition(
        {"name": "get"},
        {"name": "keys", "depends_on": ["get"]},
        {"name": "update", "depends_on": ["get", "keys"], "parameters": {
            "hello": "{{ tasks.get.result.body.hello }}",
            "items": "{{ tasks.keys.result.items }}",
            "inputs": "{{ inputs.items }}/{{ inputs.values }}",
        }},
        inputs={"items": {"type": "string"}, "values": {"type": "integer"}},
    )
    loop = Loop()
    _fleet(loop)
    loop.do(c.StartWorkflow(workflow_id="w", definition=defn, inputs={"items": "i", "values": 2}))
    _work(loop, results={"get": {"body": {"hello": "hi"}}, "keys": {"items": [1]}})
    tasks = {env.data.task_id: env.data for env in loop.log if isinstance(env.data, e.TaskSubmitted)}
    assert tasks["w.update"].data["parameters"] == {"hello": "hi", "items": [1], "inputs": "i/2"}
    assert loop.state.workflows["w"].status == "completed"


def test_an_input_sent_as_null_gets_its_default() -> None:
    defn = definition(
        {"name": "a", "parameters": {"depth": "{{ inputs.depth * 2 }}", "note": "{{ inputs.note }}"}},
        inputs={"who": {"type": "string", "required": True}, "depth": {"type": "integer", "default": 2},
                "note": {"type": "string"}},
    )
    sent = {"who": "x", "depth": None, "note": None}
    gwt.given().when(c.StartWorkflow(workflow_id="w", definition=defn, inputs=sent)).then(
        started("w", defn, {"who": "x", "depth": 2, "note": None}))
    loop = Loop()
    _fleet(loop)
    loop.do(c.StartWorkflow(workflow_id="w", definition=defn, inputs=sent))
    _work(loop)
    tasks = {env.data.task_id: env.data for env in loop.log if isinstance(env.data, e.TaskSubmitted)}
    assert tasks["w.a"].data["parameters"] == {"depth": 4, "note": None}
    assert loop.state.workflows["w"].status == "completed"


def test_a_refused_submission_fails_the_step_instead_of_leaving_the_run_waiting() -> None:
    defn = definition(A, {"name": "b", "depends_on": ["a"]})
    loop = Loop()
    _fleet(loop)
    loop.do(c.SetBudget(scope="pool", limit_usd=1))
    loop.do(c.StartWorkflow(workflow_id="w", definition=defn))
    held = next(t for t in loop.state.tasks.values() if t.status == "assigned")
    loop.do(
        c.RecordCost(cost_id="k", agent_id=held.agent_id or "", task_id=held.task_id, model="m", cost_usd=2)
    )
    loop.do(c.CompleteTask(task_id="w.a"))
    failed = [env.data for env in loop.log if isinstance(env.data, e.WorkflowStepFailed)]
    assert [f.step for f in failed] == ["b"] and failed[0].error.startswith("BUDGET_EXCEEDED")
    assert loop.state.workflows["w"].status == "failed"


def test_a_pinned_step_runs_on_the_agent_it_names() -> None:
    defn = definition({"name": "a", "agent_name": "special"})
    loop = Loop()
    _fleet(loop, n=3)
    loop.do(c.RegisterAgent(agent_id="sp1", name="special", capabilities=("x",), capacity=1))
    loop.do(c.StartWorkflow(workflow_id="w", definition=defn))
    assert loop.state.tasks["w.a"].pinned == "sp1"


def test_a_rebuilt_reactor_reissues_nothing_the_decider_has_not_seen() -> None:
    defn = definition(A, B, D, {"name": "e", "depends_on": ["d"]})
    loop = Loop()
    _fleet(loop)
    loop.send(c.StartWorkflow(workflow_id="w", definition=defn))
    for _ in range(200):
        if loop.step() is None:
            break
        rebuilt = WorkflowReactor()
        for env in loop.log:
            rebuilt.observe(env)
        queued = {cid for cid, _, _ in loop.queue}
        for a in rebuilt.schedule():
            assert a.command_id in loop.state.seen or a.command_id in queued, a
        held = [t.task_id for t in loop.state.tasks.values() if t.status == "assigned"]
        if not loop.queue and held:
            loop.send(c.CompleteTask(task_id=held[0]))
    assert loop.state.workflows["w"].status == "completed"


def _no_step_before_its_dependencies(loop: Loop) -> None:
    ended: set[tuple[str, str]] = set()
    submissions: Counter[str] = Counter()
    for env in loop.log:
        ev = env.data
        if isinstance(ev, e.WorkflowStarted):
            deps = {s["name"]: s["depends_on"] for s in ev.definition["tasks"]}
        elif isinstance(ev, e.TaskSubmitted) and "step" in ev.data:
            submissions[ev.task_id] += 1
            for d in deps[ev.data["step"]]:
                assert (ev.data["workflow_id"], d) in ended, f"{ev.task_id} before {d} ended"
        elif isinstance(ev, e.TaskCompleted | e.TaskFailed | e.TaskCancelled) and "." in ev.task_id:
            wf, step = ev.task_id.split(".", 1)
            ended.add((wf, step))
        elif isinstance(ev, e.WorkflowStepCompleted | e.WorkflowStepFailed | e.WorkflowStepSkipped):
            ended.add((ev.workflow_id, ev.step))
    assert all(n == 1 for n in submissions.values()), submissions


# -- Hypothesis: random DAGs, random outcomes ---------------------------------------------------------


@st.composite
def dags(draw: st.DrawFn) -> tuple[WorkflowDefinition, dict[str, bool]]:
    n = draw(st.integers(1, 7))
    steps: list[dict[str, Any]] = []
    outcome: dict[str, bool] = {}
    for i in range(n):
        name = f"s{i}"
        deps = sorted(draw(st.sets(st.sampled_from([f"s{j}" for j in range(i)]), max_size=3))) if i else []
        step: dict[str, Any] = {"name": name, "depends_on": deps}
        if draw(st.booleans()) and draw(st.booleans()):
            step["continue_on_failure"] = True
        if draw(st.integers(0, 5)) == 0:
            step.update(type="signal", timeout=10)
        steps.append(step)
        outcome[name] = draw(st.integers(0, 3)) > 0  # mostly successes
    defn = definition(
        *steps,
        failure_strategy=draw(
            st.sampled_from(["stop_on_first_failure", "continue_on_failure", "partial_completion_allowed"])
        ),
        max_parallel=draw(st.integers(1, 4)),
        parallel_execution=draw(st.booleans()),
    )
    return defn, outcome


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=dags(), data=st.data())
def test_random_runs_end_once_in_order_and_replay_the_same(
    case: tuple[WorkflowDefinition, dict[str, bool]], data: st.DataObject
) -> None:
    defn, outcome = case
    loop = Loop()
    _fleet(loop, n=2)
    loop.do(c.StartWorkflow(workflow_id="w", definition=defn))
    cap = defn.max_parallel if defn.parallel_execution else 1
    for _ in range(200):
        run = loop.state.workflows["w"]
        assert run.in_flight <= cap
        if not run.open:
            break
        held = sorted(t.task_id for t in loop.state.tasks.values() if t.status == "assigned")
        waiting = sorted(
            s.name
            for s in run.steps.values()
            if s.status in ("waiting", "pending") and s.kind == "signal" and s.signal is None
        )
        choices = [("task", t) for t in held] + [("signal", s) for s in waiting]
        assert choices, f"a run that is {run.status} has nothing to wait for: {run}"
        kind, what = data.draw(st.sampled_from(choices))
        if kind == "task":
            step = what.split(".", 1)[1]
            loop.do(c.CompleteTask(task_id=what) if outcome[step] else c.FailTask(task_id=what, error="x"))
        elif outcome[what]:
            loop.do(c.SignalWorkflow(workflow_id="w", name=what))
        elif run.steps[what].status == "waiting":
            timer = loop.state.timers[f"signal:w.{what}"]
            loop.do(c.FireTimer(timer_id=timer.timer_id, generation=timer.generation))
    run = loop.state.workflows["w"]
    ends = [env.data for env in loop.log if isinstance(env.data, e.WorkflowEnded)]
    assert len(ends) == 1, ends
    end = ends[0]
    assert run.status == end.status
    assert all(s.status in ("completed", "failed", "cancelled", "skipped") for s in run.steps.values()), run
    failed = [s for s in run.steps.values() if s.status in ("failed", "cancelled") and not s.tolerated]
    completed = [s for s in run.steps.values() if s.status == "completed"]
    if not failed:
        assert end.status == "completed"
    elif defn.failure_strategy == "partial_completion_allowed":
        assert end.status == ("partially_completed" if completed else "failed")
    else:
        assert end.status == "failed"
    # Nothing of the run moves after its end.
    after = loop.log[next(i for i, env in enumerate(loop.log) if isinstance(env.data, e.WorkflowEnded)) + 1 :]
    assert not [env for env in after if isinstance(env.data, e.TaskSubmitted | e.WorkflowSignalAwaited)]
    _no_step_before_its_dependencies(loop)
    # A skipped step had a reason: a failed or skipped dependency, or the run stopped.
    for ev in (env.data for env in loop.log if isinstance(env.data, e.WorkflowStepSkipped)):
        assert ev.reason.startswith(("dependency", "workflow stopped"))
    # Replay rebuilds the same state; a reactor rebuilt from the log has nothing left to issue.
    replayed = PoolState("default")
    for env in loop.log:
        evolve(replayed, env)
    assert replayed == loop.state
    rebuilt = WorkflowReactor()
    for env in loop.log:
        rebuilt.observe(env)
    assert rebuilt.schedule() == [] and rebuilt.runs == {}


def test_the_coordinator_holds_a_pinned_task_for_its_agent() -> None:
    loop = Loop()
    _fleet(loop, n=2)
    loop.do(c.RegisterAgent(agent_id="sp", name="sp", capabilities=("x",), capacity=1))
    loop.do(c.SubmitTask(task_id="t1", type="t", agent_id="sp"))
    loop.do(c.SubmitTask(task_id="t2", type="t", agent_id="sp"))
    assert loop.state.tasks["t1"].agent_id == "sp" and loop.state.tasks["t2"].status == "queued"
    loop.do(c.SubmitTask(task_id="t3", type="t"))  # unpinned work still goes to any agent
    assert loop.state.tasks["t3"].agent_id in ("ag0", "ag1", "sp")
    loop.do(c.CompleteTask(task_id="t1"))
    if loop.state.tasks["t3"].agent_id == "sp":
        loop.do(c.CompleteTask(task_id="t3"))
    assert loop.state.tasks["t2"].agent_id == "sp"
    # Pinned to an agent not registered (yet): marked unassignable until it registers.
    loop.do(c.SubmitTask(task_id="t4", type="t", agent_id="later"))
    assert loop.state.tasks["t4"].unassignable == ("@later",)
    loop.do(c.RegisterAgent(agent_id="later", name="later", capacity=1))
    assert loop.state.tasks["t4"].agent_id == "later"
    assert not [r for r in loop.rejections() if r.code == "WRONG_AGENT"]
