"""What an executor host reads from the log: runs to start, runs to stop, runs to resume after a
crash, registrations to redo, and where it may resume reading without losing a task it needs."""

from __future__ import annotations

from typing import Any

from contracts import Payload, Reason
from contracts import event_types as e
from services.executors.base import Outcome, Usage
from services.executors.host import idempotency_key, report, run_command_id
from services.executors.view import Drop, Host, HostView, Refused, Register, Run
from tests.gwt import wrap


def feed(view: HostView, *events: Payload, start: int = 0, command_id: str = "cmd") -> list[Any]:
    actions: list[Any] = []
    for i, env in enumerate(wrap(list(events), pool="default", start=start, command_id=command_id)):
        actions += view.observe(0, start + i, env)
    return actions


def submitted(task_id: str, **kw: Any) -> e.TaskSubmitted:
    return e.TaskSubmitted(task_id=task_id, type="fetch", priority=5, **kw)


def test_an_assignment_to_a_hosted_agent_is_a_run_with_the_tasks_call() -> None:
    view = HostView(agents={"api": "default"})
    feed(view, submitted("t1", data={"action": "GET", "parameters": {"path": "/x"}}, timeout_s=5.0))
    [run] = feed(view, e.TaskAssigned(task_id="t1", agent_id="api", attempt=1), start=1)
    assert isinstance(run, Run) and run.agent_id == "api"
    assert (run.task.action, run.task.parameters, run.task.timeout_s, run.task.attempt) == (
        "GET", {"path": "/x"}, 5.0, 1)
    assert run.task.cause is not None


def test_an_assignment_to_another_agent_is_not_ours() -> None:
    view = HostView(agents={"api": "default"})
    feed(view, submitted("t1"))
    assert feed(view, e.TaskAssigned(task_id="t1", agent_id="other", attempt=1), start=1) == []
    assert view.held() == []


def test_a_task_that_leaves_the_agent_drops_its_run_and_an_ended_one_is_forgotten() -> None:
    view = HostView(agents={"api": "default"})
    feed(view, submitted("t1"), submitted("t2"))
    feed(view, e.TaskAssigned(task_id="t1", agent_id="api", attempt=1),
         e.TaskAssigned(task_id="t2", agent_id="api", attempt=1), start=2)
    assert feed(view, e.TaskCancelled(task_id="t1", agent_id="api"), start=4) == [
        Drop("api", "default", "t1", 1)]
    assert ("default", "t1") not in view.tasks
    assert feed(view, e.TaskReassigned(task_id="t2", agent_id="api", reason="unhealthy"), start=5) == [
        Drop("api", "default", "t2", 1)]
    assert view.tasks[("default", "t2")].holder is None  # still open: it may come back
    assert view.held() == []


def test_a_coordinator_deferral_of_a_queued_task_drops_nothing() -> None:
    view = HostView(agents={"api": "default"})
    feed(view, submitted("t1"))
    assert feed(view, e.TaskDeferred(task_id="t1", reason="RATE_LIMITED", delay_s=1.0), start=1) == []


def test_after_catching_up_the_runs_still_held_are_resumed_with_their_attempt() -> None:
    view = HostView(agents={"api": "default"})
    feed(view, submitted("done"), submitted("held"), submitted("started"))
    feed(view, e.TaskAssigned(task_id="done", agent_id="api", attempt=1),
         e.TaskAssigned(task_id="held", agent_id="api", attempt=2),
         e.TaskAssigned(task_id="started", agent_id="api", attempt=1),
         e.TaskStarted(task_id="started", agent_id="api"),
         e.TaskCompleted(task_id="done", agent_id="api"), start=3)
    held = {r.task.task_id: (r.task.attempt, r.task.started) for r in view.held()}
    assert held == {"held": (2, False), "started": (1, True)}


def test_the_resume_offset_keeps_every_open_tasks_submission() -> None:
    view = HostView(agents={"api": "default"})
    feed(view, submitted("a"), submitted("b"))
    feed(view, e.TaskCompleted(task_id="a", agent_id="x"), start=2)
    assert view.resume_offset(0) == 1  # b, submitted at offset 1, is still open
    feed(view, e.TaskCancelled(task_id="b"), start=3)
    assert view.resume_offset(0) == 4  # nothing open: after the last event read


def test_registration_outcomes() -> None:
    view = HostView(agents={"api": "default"})
    view.pending["reg-1"] = "api"
    envs = wrap([e.CommandRejected(command_type="RegisterAgent", code=Reason.AGENT_EXISTS, message="exists")],
                pool="default", start=0, command_id="reg-1")
    assert view.observe(0, 0, envs[0]) == []
    assert "api" in view.registered  # still registered from before a restart
    assert feed(view, e.AgentDeregistered(agent_id="api", reason="dead"), start=1) == [Register("api")]
    assert "api" not in view.registered
    view.pending["reg-2"] = "api"
    envs = wrap([e.CommandRejected(command_type="RegisterAgent", code="RESOURCE_LIMIT_EXCEEDED",
                                   message="full")], pool="default", start=2, command_id="reg-2")
    assert view.observe(0, 2, envs[0]) == [Refused("api", "RESOURCE_LIMIT_EXCEEDED", "full")]


def test_a_workflow_that_declares_agents_asks_to_host_them_until_it_ends() -> None:
    view = HostView()
    agents = [{"name": "wf_api", "type": "http_api", "endpoint": "http://127.0.0.1:1"}]
    [host] = feed(view, e.WorkflowStarted(workflow_id="w1", name="n", version="1", total_tasks=1,
                                          definition={"name": "n", "agents": agents, "tasks": []}))
    assert host == Host("w1", "default", tuple(agents))
    feed(view, submitted("later"), start=1)
    assert view.resume_offset(0) == 0
    feed(view, e.WorkflowEnded(workflow_id="w1", status="completed"), e.TaskCancelled(task_id="later"),
         start=2)
    assert view.resume_offset(0) == 4


def test_a_step_of_a_run_the_host_is_cancelling_never_runs_here() -> None:
    """The coordinator may give the step to a hosted agent offering its capability (another's
    executor of the same name) before the cancel lands: no run, now or when resuming."""
    view = HostView(agents={"webfetch": "default"})
    view.refuse("default", "wb")
    step = {"workflow_id": "wb", "step": "get", "action": "GET", "parameters": {"path": "/x"}}
    feed(view, submitted("wb.get", data=step), submitted("budget", data={"workflow_id": "wb"}))
    assert feed(view, e.TaskAssigned(task_id="wb.get", agent_id="webfetch", attempt=1), start=2) == []
    # A task that names the run only to share its budget is no step of it: it runs.
    [run] = feed(view, e.TaskAssigned(task_id="budget", agent_id="webfetch", attempt=1), start=3)
    assert run.task.task_id == "budget"
    assert [r.task.task_id for r in view.held()] == ["budget"]
    feed(view, e.WorkflowEnded(workflow_id="wb", status="cancelled"), start=4)
    assert view.refused == set()


def test_keys_and_command_ids_are_fixed_by_the_attempt() -> None:
    assert idempotency_key("p", "t", 1) == idempotency_key("p", "t", 1)
    assert idempotency_key("p", "t", 1) != idempotency_key("p", "t", 2)
    assert idempotency_key("p", "tâche ü", 1).isascii()
    assert run_command_id("a", "p", "t", 1, "complete") != run_command_id("a", "p", "t", 1, "fail")


def test_a_report_records_the_cost_before_the_end() -> None:
    ok = Outcome.success({"content": "hi"}, Usage("gpt-4o-mini", 10, 5))
    [(what1, cost), (what2, _)] = report("w", "p", "t", 1, ok)
    assert (what1, what2) == ("cost", "complete")
    assert (cost.input_tokens, cost.output_tokens, cost.task_id) == (10, 5, "t")  # type: ignore[attr-defined]
    assert report("w", "p", "t", 1, ok)[0][1] == cost  # the same cost id on a repeat
    [(what, defer)] = report("w", "p", "t", 1, Outcome.later(2.5, "busy", "http_status:429"))
    assert what == "defer" and defer.delay_s == 2.5  # type: ignore[attr-defined]


def test_a_deferral_waits_at_least_a_floor_that_doubles_with_the_attempts() -> None:
    """A target answering Retry-After: 0 (or less) every time is not called in a loop."""
    def delay(attempt: int, retry_after_s: float) -> float:
        later = Outcome.later(retry_after_s, "busy", "http_status:503")
        [(what, defer)] = report("w", "p", "t", attempt, later)
        assert what == "defer"
        return float(defer.delay_s)  # type: ignore[attr-defined]

    assert [delay(n, 0.0) for n in (1, 2, 3, 4, 7, 8, 50)] == [1.0, 2.0, 4.0, 8.0, 60.0, 60.0, 60.0]
    assert delay(1, -5.0) == 1.0
    assert delay(3, 30.0) == 30.0  # a longer Retry-After wins
    assert delay(1, 10**9) == 86_400.0  # up to a day


def test_a_report_fails_a_run_that_failed() -> None:
    [(what, fail)] = report("w", "p", "t", 1, Outcome.failure("nope", "http_status:404", retryable=False))
    assert what == "fail" and fail.retryable is False  # type: ignore[attr-defined]
