"""What an executor host knows from the events log: the open tasks, which of them its agents hold,
whether its agents are registered, and where it may resume reading after a restart.

The host feeds every event of the events topic through ``HostView.observe``, which answers what
to do about it (``Run`` a task one of its agents was given, ``Drop`` a run whose task left the
agent, ``Register`` an agent the pool no longer has, ``Host`` the executors a workflow declares).
While catching up after a start it observes without acting, then runs what its agents still hold:
the runs a crash interrupted, repeated with the same attempt (so the same ``Idempotency-Key``).

Where to resume (``resume_offset``): before the submission of every task still open (a task
assigned later needs its action and parameters) and of every running workflow that declared
agents. A task queued for a long time holds the offset back; reading from there is only a replay
without actions, never a repeat of work already reported.

Pure: no I/O, no clock. The host owns the loops.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from contracts import Envelope
from contracts import event_types as e
from contracts.rejections import Reason
from contracts.workflows import step_task_id

# Events after which a task is no longer held by the agent that held it.
_LEAVES = (e.TaskCompleted, e.TaskFailed, e.TaskRetryScheduled, e.TaskCancelled, e.TaskRequeued,
           e.TaskReassigned, e.TaskTimedOut, e.TaskDeferred)
# Events after which a task is over for good.
_ENDS = (e.TaskCompleted, e.TaskFailed, e.TaskCancelled)


@dataclass(slots=True)
class OpenTask:
    """An open task of the pool, with what a run of it needs."""

    pool: str
    task_id: str
    type: str
    action: str | None
    parameters: dict[str, Any]
    timeout_s: float | None
    partition: int
    offset: int  # of its TaskSubmitted: reading from here again finds it
    holder: str | None = None
    attempt: int = 0
    started: bool = False
    cause: str | None = None  # the id of the TaskAssigned event the run answers
    workflow_id: str | None = None  # of the run whose step it is


@dataclass(frozen=True, slots=True)
class Run:
    """An agent of this host was given a task: call the outside world for it."""

    agent_id: str
    task: OpenTask


@dataclass(frozen=True, slots=True)
class Drop:
    """The task left the agent (cancelled, timed out, taken back): stop its run, report nothing."""

    agent_id: str
    pool: str
    task_id: str
    attempt: int


@dataclass(frozen=True, slots=True)
class Register:
    """The agent is not (or no longer) registered in its pool: register it."""

    agent_id: str


@dataclass(frozen=True, slots=True)
class Refused:
    """The pool refused to register the agent (e.g. it has its maximum of agents)."""

    agent_id: str
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class Host:
    """A workflow declared executors of its own (``agents:``): host them, in its pool."""

    workflow_id: str
    pool: str
    configs: tuple[dict[str, Any], ...]


Action = Run | Drop | Register | Refused | Host


def step_of(ev: e.TaskSubmitted) -> str | None:
    """The run a task is a step of, or None (a task may name a workflow only to share its budget)."""
    workflow_id, step = ev.data.get("workflow_id"), ev.data.get("step")
    if not isinstance(workflow_id, str) or not isinstance(step, str):
        return None
    return workflow_id if ev.task_id == step_task_id(workflow_id, step) else None


def task_call(ev: e.TaskSubmitted) -> tuple[str | None, dict[str, Any]]:
    """A task's action and parameters: its own fields, else the ones a workflow step puts in data."""
    action = getattr(ev, "action", None)
    parameters = getattr(ev, "parameters", None)
    data = ev.data
    if action is None and isinstance(data.get("action"), str):
        action = data["action"]
    if not parameters and isinstance(data.get("parameters"), dict):
        parameters = data["parameters"]
    return action, dict(parameters or {})


@dataclass
class HostView:
    """The host's view of the log, for the agents it runs (``agents``: agent id -> pool)."""

    agents: dict[str, str] = field(default_factory=dict)
    tasks: dict[tuple[str, str], OpenTask] = field(default_factory=dict)
    registered: set[str] = field(default_factory=set)
    # Registration commands in flight: command id -> agent id.
    pending: dict[str, str] = field(default_factory=dict)
    # Running workflows that declared agents: workflow id -> (partition, offset, what to host).
    workflows: dict[str, tuple[int, int, Host]] = field(default_factory=dict)
    # Runs the host is cancelling, as (pool, workflow id), until they end: a step of one given to
    # an agent of this host is not run (see ``refuse``).
    refused: set[tuple[str, str]] = field(default_factory=set)
    # Next offset to read, per partition.
    positions: dict[int, int] = field(default_factory=dict)

    def refuse(self, pool: str, workflow_id: str) -> None:
        """The host is cancelling this run (an executor of its own cannot be hosted): none of its
        steps runs here, even one the coordinator gives a hosted agent before the cancel lands.
        Its step would otherwise run on whatever agent offers the capability, such as another's
        executor of the same name, with the run's parameters."""
        self.refused.add((pool, workflow_id))

    def _runs(self, task: OpenTask) -> bool:
        return (task.holder is not None and task.holder in self.agents
                and (task.pool, task.workflow_id) not in self.refused)

    def observe(self, partition: int, offset: int, env: Envelope) -> list[Action]:
        """Fold one event in; what the host should do about it."""
        self.positions[partition] = offset + 1
        ev = env.data
        if isinstance(ev, e.TaskSubmitted):
            action, parameters = task_call(ev)
            self.tasks[(env.pool, ev.task_id)] = OpenTask(
                env.pool, ev.task_id, ev.type, action, parameters, ev.timeout_s, partition, offset,
                workflow_id=step_of(ev))
            return []
        if isinstance(ev, e.TaskAssigned):
            task = self.tasks.get((env.pool, ev.task_id))
            if task is None:
                return []
            task.holder, task.attempt, task.started, task.cause = ev.agent_id, ev.attempt, False, env.id
            if self._runs(task):
                return [Run(ev.agent_id, task)]
            return []
        if isinstance(ev, e.TaskStarted):
            task = self.tasks.get((env.pool, ev.task_id))
            if task is not None:
                task.started = True
            return []
        if isinstance(ev, _LEAVES):
            return self._left(env.pool, ev)
        return self._agents_and_workflows(partition, offset, env)

    def _left(self, pool: str, ev: Any) -> list[Action]:
        key = (pool, ev.task_id)
        task = self.tasks.get(key)
        if task is None:
            return []
        holder, attempt = task.holder, task.attempt
        if isinstance(ev, e.TaskDeferred) and getattr(ev, "agent_id", None) is None:
            return []  # the coordinator put a queued task aside: nobody held it
        if isinstance(ev, _ENDS):
            del self.tasks[key]
        else:
            task.holder, task.started = None, False
        if holder is not None and holder in self.agents:
            return [Drop(holder, pool, ev.task_id, attempt)]
        return []

    def _agents_and_workflows(self, partition: int, offset: int, env: Envelope) -> list[Action]:
        ev = env.data
        if isinstance(ev, e.AgentRegistered):
            if ev.agent_id in self.agents and self.agents[ev.agent_id] == env.pool:
                self.registered.add(ev.agent_id)
        elif isinstance(ev, e.AgentDeregistered):
            if ev.agent_id in self.agents and self.agents[ev.agent_id] == env.pool:
                self.registered.discard(ev.agent_id)
                return [Register(ev.agent_id)]
        elif isinstance(ev, e.CommandRejected):
            agent_id = self.pending.pop(env.commandid or "", None)
            if agent_id is not None:
                if ev.code == Reason.AGENT_EXISTS:
                    self.registered.add(agent_id)  # still registered from before a restart
                else:
                    return [Refused(agent_id, ev.code, ev.message)]
        elif isinstance(ev, e.WorkflowStarted):
            agents = ev.definition.get("agents")
            if isinstance(agents, list) and agents:
                host = Host(ev.workflow_id, env.pool, tuple(a for a in agents if isinstance(a, dict)))
                self.workflows[ev.workflow_id] = (partition, offset, host)
                return [host]
        elif isinstance(ev, e.WorkflowEnded):
            self.workflows.pop(ev.workflow_id, None)
            self.refused.discard((env.pool, ev.workflow_id))
        return []

    def held(self) -> list[Run]:
        """The runs this host's agents hold now (after catching up: the ones to resume)."""
        return [Run(t.holder, t) for t in self.tasks.values() if t.holder is not None and self._runs(t)]

    def resume_offset(self, partition: int) -> int:
        """Where reading ``partition`` again after a restart loses nothing this view needs."""
        at = self.positions.get(partition, 0)
        for t in self.tasks.values():
            if t.partition == partition and t.offset < at:
                at = t.offset
        for p, offset, _ in self.workflows.values():
            if p == partition and offset < at:
                at = offset
        return at
