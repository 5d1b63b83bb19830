"""The workflow reactor (process manager): submits each step of a run once its dependencies are done.

It folds a partition's events into one ``Run`` per open workflow (the same state machine the
decider keeps, ``machine``) plus what templates read: the run's inputs and each ended step's
status, result and error. After each batch it issues, for the steps that may start:

- a ``SubmitTask`` for a task step, its ``parameters`` resolved against those values
  (``contracts.templates``), with id ``wf:<run>:<step>:<attempt>``: derived, so a reactor rebuilt
  after a crash re-issues exactly what may have been lost and the decider drops what it has seen;
- an ``AwaitSignal`` for a signal step;
- a ``FailWorkflowStep`` when a step cannot start: its templates do not resolve, or the decider
  refused its submission (a spent pool budget, for instance), so that no run waits forever.

Runs that ended are forgotten (their results with them), so memory follows the open runs.
Deterministic and pure: no I/O, no clock; the runtime feeds events in and appends what comes out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from contracts import Command, Envelope
from contracts import commands as c
from contracts import event_types as e
from contracts.templates import TemplateProblem, render
from contracts.workflows import RetryConfig, step_command_id, step_task_id
from services.workflows.machine import Run, new_run, ready, set_status

SOURCE = "urn:agentbus:workflows"

Key = tuple[str, str]  # (pool, workflow id)


@dataclass(frozen=True, slots=True)
class Assignment:
    """A command the reactor wants appended, with its derived id (the coordinator's shape)."""

    pool: str
    command_id: str
    command: Command
    correlation: str | None


@dataclass(slots=True)
class _Open:
    """One open run as the reactor sees it."""

    run: Run
    steps: dict[str, dict[str, Any]]  # step name -> its definition (snapshot dict)
    inputs: dict[str, Any]
    correlation: str | None
    outcomes: dict[str, dict[str, Any]] = field(default_factory=dict)  # templates' ``tasks.<name>``
    issued: set[str] = field(default_factory=set)  # steps whose start is in flight


@dataclass(slots=True)
class _Pool:
    agents: dict[str, str] = field(default_factory=dict)  # active agent id -> name, registration order


class WorkflowReactor:
    """The process manager over every pool of the partitions it reads."""

    def __init__(self) -> None:
        self.runs: dict[Key, _Open] = {}
        self.tasks: dict[tuple[str, str], tuple[Key, str]] = {}  # (pool, task id) -> (run, step)
        self.pools: dict[str, _Pool] = {}
        self.dirty: set[Key] = set()
        self.failing: list[tuple[Key, str, str]] = []  # (run, step, error) to fail

    # -- folding events in -----------------------------------------------------------------------

    def observe(self, env: Envelope) -> None:
        handler = _HANDLERS.get(type(env.data))
        if handler is not None:
            handler(self, env, env.data)

    def _started(self, env: Envelope, ev: e.WorkflowStarted) -> None:
        key = (env.pool, ev.workflow_id)
        steps = {s["name"]: s for s in ev.definition["tasks"]}
        self.runs[key] = _Open(
            new_run(ev.workflow_id, ev.definition), steps, ev.inputs, env.correlationid or ev.workflow_id
        )
        self.dirty.add(key)

    def _step(self, key: Key, name: str, status: str, outcome: dict[str, Any] | None = None) -> None:
        run = self.runs.get(key)
        if run is None or name not in run.run.steps:
            return
        run.issued.discard(name)
        set_status(run.run, run.run.steps[name], status)
        if outcome is not None:
            run.outcomes[name] = {"status": status, **outcome}
            self.dirty.add(key)

    def _task_submitted(self, env: Envelope, ev: e.TaskSubmitted) -> None:
        workflow_id, name = ev.data.get("workflow_id"), ev.data.get("step")
        key = (env.pool, workflow_id)
        if isinstance(workflow_id, str) and isinstance(name, str) and key in self.runs:
            self.tasks[(env.pool, ev.task_id)] = (key, name)
            self._step(key, name, "queued")

    def _task_moved(self, env: Envelope, ev: Any, status: str, outcome: dict[str, Any] | None = None) -> None:
        where = self.tasks.get((env.pool, ev.task_id))
        if where is not None:
            self._step(where[0], where[1], status, outcome)

    def _task_completed(self, env: Envelope, ev: e.TaskCompleted) -> None:
        self._task_moved(env, ev, "completed", {"result": ev.result, "error": None})

    def _task_failed(self, env: Envelope, ev: e.TaskFailed) -> None:
        self._task_moved(env, ev, "failed", {"result": None, "error": ev.error})

    def _task_cancelled(self, env: Envelope, ev: e.TaskCancelled) -> None:
        self._task_moved(env, ev, "cancelled", {"result": None, "error": ev.reason or "cancelled"})

    def _signal_awaited(self, env: Envelope, ev: e.WorkflowSignalAwaited) -> None:
        self._step((env.pool, ev.workflow_id), ev.step, "waiting")

    def _step_completed(self, env: Envelope, ev: e.WorkflowStepCompleted) -> None:
        self._step((env.pool, ev.workflow_id), ev.step, "completed", {"result": ev.result, "error": None})

    def _step_failed(self, env: Envelope, ev: e.WorkflowStepFailed) -> None:
        self._step((env.pool, ev.workflow_id), ev.step, "failed", {"result": None, "error": ev.error})

    def _step_skipped(self, env: Envelope, ev: e.WorkflowStepSkipped) -> None:
        self._step((env.pool, ev.workflow_id), ev.step, "skipped", {"result": None, "error": ev.reason})

    def _ended(self, env: Envelope, ev: e.WorkflowEnded) -> None:
        key = (env.pool, ev.workflow_id)
        run = self.runs.pop(key, None)
        self.dirty.discard(key)
        if run is not None:
            for name in run.steps:
                self.tasks.pop((env.pool, step_task_id(ev.workflow_id, name)), None)

    def _rejected(self, env: Envelope, ev: e.CommandRejected) -> None:
        # A step's start the decider refused: the step fails (unless it moved on meanwhile).
        if ev.command_type not in ("SubmitTask", "AwaitSignal") or not (env.commandid or "").startswith(
            "wf:"
        ):
            return
        head, name, _ = (env.commandid or "").rsplit(":", 2)
        key = (env.pool, head[3:])
        run = self.runs.get(key)
        if run is not None and name in run.run.steps and run.run.steps[name].status == "pending":
            run.issued.discard(name)
            self.failing.append((key, name, f"{ev.code}: {ev.message}"))
            self.dirty.add(key)

    def _agent_registered(self, env: Envelope, ev: e.AgentRegistered) -> None:
        self.pools.setdefault(env.pool, _Pool()).agents[ev.agent_id] = ev.name

    def _agent_deregistered(self, env: Envelope, ev: e.AgentDeregistered) -> None:
        pool = self.pools.get(env.pool)
        if pool is not None:
            pool.agents.pop(ev.agent_id, None)

    # -- what to issue ---------------------------------------------------------------------------

    def schedule(self) -> list[Assignment]:
        """The commands that start every step that may start now (and fail those that cannot)."""
        out: list[Assignment] = []
        for key, name, error in self.failing:
            run = self.runs.get(key)
            if run is not None and run.run.steps[name].status == "pending" and name not in run.issued:
                run.issued.add(name)
                out.append(self._fail(key, run, name, error))
        self.failing.clear()
        for key in sorted(self.dirty):
            run = self.runs.get(key)
            if run is None:
                continue
            for step in ready(run.run, run.issued):
                run.issued.add(step.name)
                out.append(self._start(key, run, step.name))
        self.dirty.clear()
        return out

    def _start(self, key: Key, run: _Open, name: str) -> Assignment:
        pool, workflow_id = key
        spec = run.steps[name]
        command_id = step_command_id(workflow_id, name)
        if spec.get("type", "task") == "signal":
            return Assignment(
                pool, command_id, c.AwaitSignal(workflow_id=workflow_id, step=name), run.correlation
            )
        try:
            parameters = render(spec.get("parameters") or {}, {"inputs": run.inputs, "tasks": run.outcomes})
            retry = spec.get("retry_config")
            cmd = c.SubmitTask(
                task_id=step_task_id(workflow_id, name),
                type=spec.get("action") or name,
                priority=spec.get("priority", 5),
                required_capabilities=tuple(spec.get("required_capabilities") or ()),
                data={
                    "workflow_id": workflow_id,
                    "step": name,
                    "action": spec.get("action"),
                    "parameters": parameters,
                },
                strategy=spec.get("strategy"),
                retry=None if retry is None else RetryConfig.model_validate(retry).policy(),
                timeout_s=spec.get("timeout"),
                agent_id=self._pin(pool, spec.get("agent_name")),
            )
        except TemplateProblem as exc:
            return self._fail(key, run, name, f"parameters: {exc}")
        except ValidationError as exc:
            err = exc.errors(include_url=False)[0]
            where = ".".join(str(p) for p in err["loc"])
            return self._fail(key, run, name, f"the step's task is invalid ({where}: {err['msg']})")
        return Assignment(pool, command_id, cmd, run.correlation)

    def _fail(self, key: Key, run: _Open, name: str, error: str) -> Assignment:
        pool, workflow_id = key
        return Assignment(
            pool,
            step_command_id(workflow_id, name) + ":fail",
            c.FailWorkflowStep(workflow_id=workflow_id, step=name, error=error[:10_000]),
            run.correlation,
        )

    def _pin(self, pool: str, agent_name: str | None) -> str | None:
        """The agent a step names: an agent with that id, else the earliest registered active agent
        with that name, else the name as an id (the task then waits for such an agent)."""
        if agent_name is None:
            return None
        agents = self.pools.get(pool)
        if agents is None or agent_name in agents.agents:
            return agent_name
        return next((a for a, n in agents.agents.items() if n == agent_name), agent_name)


def _moved(status: str) -> Callable[[WorkflowReactor, Envelope, Any], None]:
    def handler(r: WorkflowReactor, env: Envelope, ev: Any) -> None:
        r._task_moved(env, ev, status)

    return handler


_HANDLERS: dict[type[Any], Callable[[WorkflowReactor, Envelope, Any], None]] = {
    e.WorkflowStarted: WorkflowReactor._started,
    e.TaskSubmitted: WorkflowReactor._task_submitted,
    e.TaskAssigned: _moved("assigned"),
    e.TaskStarted: _moved("running"),
    e.TaskRetryScheduled: _moved("retrying"),
    e.TaskRequeued: _moved("queued"),
    e.TaskReassigned: _moved("queued"),
    e.TaskDeferred: _moved("queued"),  # by its agent: in flight still, back in the queue
    e.TaskCompleted: WorkflowReactor._task_completed,
    e.TaskFailed: WorkflowReactor._task_failed,
    e.TaskCancelled: WorkflowReactor._task_cancelled,
    e.WorkflowSignalAwaited: WorkflowReactor._signal_awaited,
    e.WorkflowStepCompleted: WorkflowReactor._step_completed,
    e.WorkflowStepFailed: WorkflowReactor._step_failed,
    e.WorkflowStepSkipped: WorkflowReactor._step_skipped,
    e.WorkflowEnded: WorkflowReactor._ended,
    e.CommandRejected: WorkflowReactor._rejected,
    e.AgentRegistered: WorkflowReactor._agent_registered,
    e.AgentDeregistered: WorkflowReactor._agent_deregistered,
}
