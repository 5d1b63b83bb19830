"""Event histories for the projection tests: a builder of envelopes and a realistic pool history.

The histories are what the decider would emit (consistent: tasks are submitted before they are
assigned, loads never go negative), because the projector trusts the decider. ``Decided`` goes
further and makes them with the decider itself, so the read model can be checked against the
decider's own state (``services.domain.decider.evolve``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from contracts import SYSTEM_POOL, Envelope, Payload, new_id
from contracts import commands as c
from contracts import event_types as ev
from contracts.commands import Candidate, SelectionAudit
from contracts.scheduling import RetryPolicy
from contracts.workflows import WorkflowDefinition
from services.domain.decider import Rejected, decide, evolve
from services.domain.state import PoolState

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


class Story:
    """Builds envelopes in log order, stamping time, per-pool sequence and a command id."""

    def __init__(self, pool: str = "default") -> None:
        self.pool = pool
        self.envelopes: list[Envelope] = []
        self._sequence: dict[str, int] = defaultdict(int)

    def add(
        self,
        data: Payload | dict[str, Any],
        *,
        pool: str | None = None,
        type: str | None = None,  # shadows the builtin on purpose: the envelope's field name
        commandid: str | None = None,
    ) -> Envelope:
        pool = pool or self.pool
        self._sequence[pool] += 1
        env = Envelope(
            id=new_id(),
            type=type or data.__class__.__name__,
            time=T0 + timedelta(milliseconds=sum(self._sequence.values())),
            pool=pool,
            sequence=self._sequence[pool],
            commandid=commandid or new_id(),
            data=data,
        )
        self.envelopes.append(env)
        return env

    def items(self, start: int = 0) -> list[tuple[int, Envelope]]:
        """(offset, envelope) pairs as a single-partition log would number them."""
        return list(enumerate(self.envelopes))[start:]

    # Shorthands for the common facts.

    def register(self, agent_id: str, capacity: int = 2, *caps: str, pool: str | None = None) -> None:
        self.add(
            ev.AgentRegistered(
                agent_id=agent_id, name=f"agent {agent_id}", kind="llm", capabilities=caps,
                capacity=capacity,
            ),
            pool=pool,
        )

    def submit(self, task_id: str, *, pool: str | None = None, **data: Any) -> None:
        self.add(
            ev.TaskSubmitted(task_id=task_id, type="summarize", priority=5, data=data),
            pool=pool,
        )

    def assign(self, task_id: str, agent_id: str, attempt: int = 1, pool: str | None = None) -> None:
        audit = SelectionAudit(
            strategy="least_loaded",
            candidates=(Candidate(agent_id=agent_id, score=0.9, load=0, capacity=2,
                                  components={"capability": 1.0, "load": 0.5}),),
            eligible=3,
            considered=3,
            decision_us=12.5,
            preferred=("low_latency",),
            skipped={"rate_limited": 1},
        )
        self.add(
            ev.TaskAssigned(task_id=task_id, agent_id=agent_id, attempt=attempt, audit=audit),
            pool=pool,
        )

    def complete(self, task_id: str, agent_id: str, pool: str | None = None) -> None:
        self.add(ev.TaskStarted(task_id=task_id, agent_id=agent_id), pool=pool)
        self.add(
            ev.TaskCompleted(task_id=task_id, agent_id=agent_id, result={"ok": True}), pool=pool
        )

    def cost(
        self, cost_id: str, agent_id: str, usd: float, task_id: str | None = None,
        model: str = "gpt-4o", pool: str | None = None,
    ) -> None:
        self.add(
            ev.CostRecorded(
                cost_id=cost_id, agent_id=agent_id, task_id=task_id, model=model,
                input_tokens=1000, output_tokens=200, cost_usd=usd,
            ),
            pool=pool,
        )


class Decided(Story):
    """A story whose events come from the real decider: ``do(command)`` decides and evolves."""

    def __init__(self, pool: str = "default", into: Story | None = None) -> None:
        super().__init__(pool)
        self.state = PoolState(pool)
        # Appending into another story's log (several pools sharing one partition).
        self._into = into

    def add(self, data: Payload | dict[str, Any], **kwargs: Any) -> Envelope:
        env = (self._into or super()).add(data, pool=self.pool, **kwargs)
        if self._into is not None:
            self.envelopes.append(env)
        return env

    def do(self, cmd: Payload) -> list[Payload]:
        """Decide ``cmd``, append its events (or its rejection) and evolve the state."""
        try:
            events = decide(self.state, cmd)
        except Rejected as exc:
            events = [ev.CommandRejected(command_type=type(cmd).__name__, code=exc.code.value,
                                         message=exc.message, details=dict(exc.details))]
        commandid = new_id()
        for data in events:
            evolve(self.state, self.add(data, commandid=commandid))
        return events

    def fire(self, timer_id: str) -> list[Payload]:
        """Fire a pending timer, as the timer service would when it is due."""
        timer = self.state.timers[timer_id]
        return self.do(c.FireTimer(timer_id=timer_id, generation=timer.generation))


def audit(strategy: str, *agents: tuple[str, float]) -> SelectionAudit:
    """A selection audit listing ``agents`` with their scores and score components."""
    return SelectionAudit(
        strategy=strategy,
        candidates=tuple(
            Candidate(agent_id=a, score=score, load=0, capacity=2,
                      components={"capability": 1.0, "performance": score, "load": 1.0})
            for a, score in agents
        ),
        eligible=len(agents),
        considered=len(agents),
        decision_us=3.5,
    )


def coordination_history(into: Story | None = None, pool: str = "ops") -> Decided:
    """Health, retries, timeouts, breakers, fallbacks, deferrals, budgets and scaling, decided."""
    d = Decided(pool, into)
    d.do(c.SetPoolPolicy(default_strategy="performance_weighted", min_capability_match=0.5,
                         breaker_threshold=2, breaker_cooldown_s=10, dead_after_timeouts=2))
    d.do(c.SetResourceLimits(max_cpu_cores=10, max_memory_mb=10_000, max_disk_mb=1000,
                             max_network_mbps=100, max_agents=4))
    d.do(c.RegisterAgent(agent_id="a1", name="one", kind="llm", capabilities=("python", "sql"),
                         capacity=2, heartbeat_timeout_s=5, weight=2.0))
    d.do(c.RegisterAgent(agent_id="a2", name="two", kind="llm", capabilities=("python",),
                         capacity=1, heartbeat_timeout_s=5))
    d.do(c.RegisterAgent(agent_id="a3", name="three", kind="gpu", capabilities=("gpu",),
                         capacity=2))
    d.do(c.AgentHeartbeat(agent_id="a1", load=0.1, cpu=0.5, memory=100, queue=0))
    d.do(c.AgentHeartbeat(agent_id="a2", load=0.2))
    d.do(c.AllocateResources(allocation_id="r1", agent_id="a1", cpu_cores=9, memory_mb=1000))
    d.do(c.SetRateLimit(scope="agent", scope_id="a2", requests_per_min=60, concurrent=1))
    d.do(c.SetRateLimit(scope="model", scope_id="gpt-4o", tokens_per_min=10_000))
    d.do(c.SetScalingPolicy(agent_kind="llm", min_agents=1, max_agents=5, queue_threshold=2))
    d.do(c.SetScalingPolicy(agent_kind="gpu", min_agents=0, max_agents=2))
    retry = c.RetryPolicy(max_attempts=3, strategy="exponential", base_delay_s=2)
    d.do(c.SubmitTask(task_id="t1", type="etl", required_capabilities=("python",), retry=retry,
                      timeout_s=30))
    d.do(c.SubmitTask(task_id="t2", type="etl", required_capabilities=("python",)))
    d.do(c.SubmitTask(task_id="t3", type="query", required_capabilities=("python", "gpu"),
                      data={"data_source": "postgresql", "real_time": True}))
    d.do(c.SubmitTask(task_id="t4", type="build", required_capabilities=("rust",)))
    d.do(c.SubmitTask(task_id="t5", type="etl", required_capabilities=("python",)))
    d.do(c.AssignTask(task_id="t1", agent_id="a1", audit=audit("performance_weighted",
                                                               ("a1", 0.9), ("a2", 0.7))))
    d.do(c.AssignTask(task_id="t2", agent_id="a2", audit=audit("least_loaded", ("a2", 0.5))))
    # A partial match (python of python+gpu = 0.5) is a fallback with a capability gap.
    d.do(c.AssignTask(task_id="t3", agent_id="a1", allow_partial=True))
    d.do(c.FailTask(task_id="t1", error="flaky"))  # retry 1 of 3 after 2 s
    d.fire("retry:t1")
    d.do(c.AssignTask(task_id="t1", agent_id="a3"))  # a3 lacks python: rejected
    d.do(c.AssignTask(task_id="t1", agent_id="a1", audit=audit("round_robin", ("a1", 1.0))))
    d.do(c.StartTask(task_id="t1"))
    d.fire("timeout:t1")  # second failure of a1 in a row: its breaker opens
    d.do(c.MarkTaskUnassignable(task_id="t4", missing=("rust",), best_match=0.0, threshold=0.5))
    d.do(c.DeferTask(task_id="t5", reason="RATE_LIMITED", delay_s=2.5))
    d.fire("heartbeat:a2")  # a2 missed its heartbeat: t2 is reassigned
    d.do(c.AgentHeartbeat(agent_id="a2", load=0.0))  # healthy again
    d.do(c.AssignTask(task_id="t2", agent_id="a2"))
    d.fire("circuit:a1")  # half-open: one trial
    d.do(c.StartTask(task_id="t3"))
    d.do(c.CompleteTask(task_id="t3", result={"rows": 3}))  # the trial succeeded: closed
    d.do(c.SetBudget(scope="agent", scope_id="a2", limit_usd=0.5))
    d.do(c.RecordCost(cost_id="k1", agent_id="a2", task_id="t2", model="gpt-4o", cost_usd=0.75))
    d.do(c.DecideScaling(agent_kind="llm", from_agents=2, to_agents=3, reason="queue above 2",
                         metrics={"queue": 3.0, "utilization": 0.9}))
    d.do(c.DecideScaling(agent_kind="gpu", from_agents=1, to_agents=0, reason="idle",
                         metrics={"queue": 0.0, "utilization": 0.0}))
    d.do(c.DecideScaling(agent_kind="gpu", from_agents=1, to_agents=9, reason="too many"))
    d.fire("retry:t1")
    d.do(c.AssignTask(task_id="t1", agent_id="a1"))
    d.fire("heartbeat:a1")  # a1 goes silent: t1 is reassigned, then a1 is declared dead
    d.fire("dead:a1")
    d.do(c.AssignTask(task_id="t5", agent_id="a3", allow_partial=True))  # a3 lacks python
    d.do(c.CompleteTask(task_id="t2", agent_id="a2"))
    return d


def _definition(name: str, *steps: dict[str, Any], version: str = "1.0.0",
                **fields: Any) -> WorkflowDefinition:
    return WorkflowDefinition.model_validate({"name": name, "version": version, "tasks": steps, **fields})


def step_submission(workflow_id: str, step: str, **fields: Any) -> c.SubmitTask:
    """A step's task as the workflow reactor submits it."""
    return c.SubmitTask(task_id=f"{workflow_id}.{step}", type=step,
                        data={"workflow_id": workflow_id, "step": step}, **fields)


def workflow_history(into: Story | None = None, pool: str = "flows") -> Decided:
    """Workflow runs, decided: definitions, a run that completes (retries, a requeue, costs, a
    signal that came early), one stopped by a failure, one partly completed, one cancelled, one
    timed out, one whose budget is spent, a signal that times out, a step that could not start."""
    d = Decided(pool, into)
    d.do(c.RegisterAgent(agent_id="w1", name="worker-one", capabilities=("fetch",), capacity=4))
    d.do(c.RegisterAgent(agent_id="w2", name="worker-two", capabilities=("fetch",), capacity=4))
    etl = _definition("etl", {"name": "fetch_a"}, {"name": "fetch_b"},
                      {"name": "approve", "type": "signal", "depends_on": ["fetch_a"]},
                      {"name": "merge", "depends_on": ["fetch_a", "fetch_b", "approve"]},
                      inputs={"day": {"type": "string", "required": True}})
    d.do(c.RegisterWorkflowDefinition(definition=etl))
    d.do(c.RegisterWorkflowDefinition(definition=etl))  # the same content again: no event
    d.do(c.RegisterWorkflowDefinition(definition=etl.model_copy(update={"version": "0.9.0"})))
    d.do(c.RegisterWorkflowDefinition(definition=etl.model_copy(update={"description": "other"})))  # refused
    # A run that completes.
    d.do(c.StartWorkflow(workflow_id="run1", definition=etl, inputs={"day": "monday"}))
    d.do(step_submission("run1", "merge"))  # refused: its dependencies are not done
    d.do(step_submission("run1", "fetch_a", retry=RetryPolicy(max_attempts=2, base_delay_s=1)))
    d.do(step_submission("run1", "fetch_b"))
    d.do(c.SignalWorkflow(workflow_id="run1", name="approve", data={"by": "ann"}))  # early
    d.do(c.AssignTask(task_id="run1.fetch_a", agent_id="w1", audit=audit("least_loaded", ("w1", 0.8))))
    d.do(c.AssignTask(task_id="run1.fetch_b", agent_id="w2"))
    d.do(c.StartTask(task_id="run1.fetch_a"))
    d.do(c.FailTask(task_id="run1.fetch_a", error="flaky"))  # retried
    d.fire("retry:run1.fetch_a")
    d.do(c.AssignTask(task_id="run1.fetch_a", agent_id="w2"))
    d.do(c.StartTask(task_id="run1.fetch_a"))
    d.do(c.RecordCost(cost_id="rc1", agent_id="w2", task_id="run1.fetch_a", model="gpt-4o", cost_usd=0.25))
    d.do(c.CompleteTask(task_id="run1.fetch_a", result={"rows": 10}))
    d.do(c.AwaitSignal(workflow_id="run1", step="approve"))  # completes at once with the early signal
    d.do(c.StartTask(task_id="run1.fetch_b"))
    d.do(c.CompleteTask(task_id="run1.fetch_b", result={"rows": 5}))
    d.do(c.RecordCost(cost_id="rc2", agent_id="w2", task_id="run1.fetch_b", model="gpt-4o", cost_usd=0.125))
    d.do(step_submission("run1", "merge"))
    d.do(c.AssignTask(task_id="run1.merge", agent_id="w1"))
    d.do(c.CompleteTask(task_id="run1.merge", result={"rows": 15}))
    # A task naming a run only to share its budget is no step, nor is a claim on an unknown run.
    d.do(c.SubmitTask(task_id="side", type="x", data={"workflow_id": "run1"}))
    d.do(c.SubmitTask(task_id="ghost.fetch_a", type="x", data={"workflow_id": "ghost", "step": "fetch_a"}))
    d.do(c.RecordCost(cost_id="rc3", agent_id="w1", task_id="side", model="gpt-4o", cost_usd=1.0))
    # Stopped by its first failure: the open step is cancelled, the rest skipped.
    d.do(c.StartWorkflow(workflow_id="run2", definition=etl.model_copy(update={"version": "0.9.0"}),
                         inputs={"day": "tuesday"}))
    d.do(step_submission("run2", "fetch_a"))
    d.do(step_submission("run2", "fetch_b"))
    d.do(c.AssignTask(task_id="run2.fetch_a", agent_id="w1"))
    d.do(c.AssignTask(task_id="run2.fetch_b", agent_id="w2"))
    d.fire("heartbeat:w2")  # w2 went silent: its task goes back to the queue
    d.do(c.AgentHeartbeat(agent_id="w2"))
    d.do(c.RecordCost(cost_id="rc4", agent_id="w1", task_id="run2.fetch_a", model="gpt-4o", cost_usd=0.5))
    d.do(c.FailTask(task_id="run2.fetch_a", error="source down"))
    # Partly completed: a failed branch skips its dependents, the other goes on.
    partial = _definition("fanout", {"name": "left"}, {"name": "right"},
                          {"name": "after_left", "depends_on": ["left"]},
                          {"name": "optional", "continue_on_failure": True},
                          failure_strategy="partial_completion_allowed")
    d.do(c.RegisterWorkflowDefinition(definition=partial))
    d.do(c.StartWorkflow(workflow_id="run3", definition=partial))
    for step in ("left", "right", "optional"):
        d.do(step_submission("run3", step))
    d.do(c.FailWorkflowStep(workflow_id="run3", step="after_left", error="no agent named"))  # could not start
    d.do(c.AssignTask(task_id="run3.left", agent_id="w1"))
    d.do(c.FailTask(task_id="run3.left", error="bad input"))
    d.do(c.AssignTask(task_id="run3.optional", agent_id="w1"))
    d.do(c.FailTask(task_id="run3.optional", error="tolerated"))
    d.do(c.AssignTask(task_id="run3.right", agent_id="w2"))
    d.do(c.CompleteTask(task_id="run3.right", result={}))
    # Cancelled while a step runs and a signal waits.
    waits = _definition("waits", {"name": "work"}, {"name": "gate", "type": "signal", "timeout": 60},
                        {"name": "late", "depends_on": ["gate"]})
    d.do(c.StartWorkflow(workflow_id="run4", definition=waits))
    d.do(step_submission("run4", "work"))
    d.do(c.AwaitSignal(workflow_id="run4", step="gate"))
    d.do(c.CancelWorkflow(workflow_id="run4", reason="not needed"))
    d.do(c.CancelWorkflow(workflow_id="run4"))  # refused: it ended
    # A signal that never comes, and a step that could not be submitted.
    d.do(c.StartWorkflow(workflow_id="run5", definition=waits.model_copy(
        update={"failure_strategy": "continue_on_failure"})))
    d.do(c.AwaitSignal(workflow_id="run5", step="gate"))
    d.do(c.FailWorkflowStep(workflow_id="run5", step="work", error="template did not resolve"))
    d.fire("signal:run5.gate")
    # Timed out, and a spent budget.
    d.do(c.StartWorkflow(workflow_id="run6", definition=waits.model_copy(update={"global_timeout": 30.0})))
    d.do(step_submission("run6", "work"))
    d.fire("workflow:run6")
    d.do(c.StartWorkflow(workflow_id="run7", definition=partial.model_copy(update={"cost_budget": 0.1})))
    d.do(step_submission("run7", "left"))
    d.do(c.AssignTask(task_id="run7.left", agent_id="w1"))
    d.do(c.RecordCost(cost_id="rc5", agent_id="w1", task_id="run7.left", model="gpt-4o", cost_usd=0.2))
    d.do(c.CompleteTask(task_id="run7.left", result={"late": True}))
    # Still queued: nothing submitted yet.
    d.do(c.StartWorkflow(workflow_id="run8", definition=partial))
    return d


def subscription_history(into: Story | None = None) -> Decided:
    """The system pool's outbound subscriptions: made, changed, a dead letter, deleted, made anew."""
    d = Decided(SYSTEM_POOL, into=into)
    sealed = "sealed:v1:0123abcd:c2VhbGVk"
    d.do(c.SetSubscription(name="hooks", url="https://receiver.example/a", channels=("tasks",), secret=sealed,
                           start="earliest"))
    d.do(c.SetSubscription(name="scaling", url="https://receiver.example/s",
                           channels=("type:ScalingDecided",), secret=sealed,
                           generated=c.SubscriptionGenerated(positions=(40, 2, 7))))
    d.do(c.SetSubscription(name="hooks", url="https://receiver.example/b", channels=("tasks", "agents")))
    d.do(c.RecordDeliveryFailure(name="hooks", incarnation=1, event_id="e-1", event_type="TaskSubmitted",
                                 partition=0, position=3, attempts=8, last_error="HTTP 500", last_status=500))
    d.do(c.DeleteSubscription(name="scaling"))
    d.do(c.SetSubscription(name="scaling", url="https://receiver.example/s2", channels=("events",),
                           secret=sealed, start="earliest"))
    return d


def access_history(into: Story | None = None) -> Decided:
    """The system pool's API tokens: issued, one revoked, a second revocation refused."""
    d = Decided(SYSTEM_POOL, into=into)
    d.do(c.IssueApiToken(token_id="tok-admin", role="admin", name="bootstrap", secret_hash="a" * 64))
    d.do(c.IssueApiToken(token_id="tok-agent", role="agent", agent_id="w1", secret_hash="b" * 64))
    d.do(c.RevokeApiToken(token_id="tok-agent"))
    d.do(c.RevokeApiToken(token_id="tok-agent"))  # rejected: revoked already
    return d


def webhook_history(into: Story | None = None) -> Decided:
    """The system pool's inbound webhook sources: set, changed, one deleted."""
    d = Decided(SYSTEM_POOL, into=into)
    sealed = "sealed:v1:0123abcd:c2VhbGVk"
    d.do(c.SetWebhookSource(source="shop", scheme="standard", secret=sealed))
    d.do(c.SetWebhookSource(source="github", scheme="github", secret=sealed, pool="flows"))
    d.do(c.SetWebhookSource(source="shop", scheme="standard", secret=sealed, pool="ops"))
    d.do(c.DeleteWebhookSource(source="github"))
    return d


def realistic_history() -> list[Envelope]:
    """Pools with agents, every task outcome, resources, costs, budgets, rejections and workflows."""
    s = Story()
    s.add(ev.ResourceLimitsSet(
        max_cpu_cores=16, max_memory_mb=32_000, max_disk_mb=100_000, max_network_mbps=1000
    ))
    s.register("a1", 2, "python", "gpu")
    s.register("a2", 1, "python")
    s.register("a3", 3)
    s.add(ev.AgentHeartbeatReceived(agent_id="a2", load=0.5, cpu=0.25, memory=512, queue=1))
    s.submit("t1", workflow_id="wf1")
    s.submit("t2", workflow_id="wf1")
    s.submit("t3", workflow_id="wf2")
    for t in ("t4", "t5", "t6"):
        s.submit(t)
    s.cost("c0", "a1", 0.1)  # before any budget: still counts toward the pool and agent budgets
    s.add(ev.BudgetSet(scope="pool", scope_id="default", limit_usd=10.0))
    s.add(ev.BudgetSet(scope="agent", scope_id="a1", limit_usd=5.0))
    s.add(ev.BudgetSet(scope="workflow", scope_id="wf1", limit_usd=0.3))
    s.assign("t1", "a1")
    s.cost("c1", "a1", 0.125, task_id="t1")
    s.complete("t1", "a1")
    s.assign("t2", "a2")
    s.add(ev.TaskFailed(task_id="t2", agent_id="a2", error="timeout", attempt=1))
    s.cost("c2", "a2", 0.2, task_id="t2", model="claude-sonnet-4")
    s.add(ev.BudgetExceeded(scope="workflow", scope_id="wf1", limit_usd=0.3, spent_usd=0.325))
    s.add(ev.CommandRejected(command_type="SubmitTask", code="BUDGET_EXCEEDED",
                             message="workflow budget 'wf1' is spent",
                             details={"scope": "workflow", "scope_id": "wf1"}),
          commandid="cmd-rejected-1")
    s.add(ev.BudgetSet(scope="workflow", scope_id="wf1", limit_usd=1.0))  # lifts "exceeded"
    s.assign("t3", "a1")
    s.add(ev.ResourcesAllocated(allocation_id="al1", agent_id="a1", cpu_cores=4, memory_mb=8000,
                                disk_mb=1000, network_mbps=100))
    s.add(ev.ResourcesAllocated(allocation_id="al2", agent_id="a2", cpu_cores=2, memory_mb=2000,
                                disk_mb=500, network_mbps=50))
    # a1 leaves: its task goes back to the queue, its allocation is released.
    s.add(ev.TaskRequeued(task_id="t3", agent_id="a1", reason="agent deregistered"))
    s.add(ev.ResourcesReleased(allocation_id="al1", agent_id="a1", cpu_cores=4, memory_mb=8000,
                               disk_mb=1000, network_mbps=100, reason="agent deregistered"))
    s.add(ev.AgentDeregistered(agent_id="a1", reason="maintenance"))
    s.add({"anything": [1, 2, 3]}, type="SomethingFromTheFuture")  # unknown: passes through
    s.register("a1", 2, "python", "gpu")  # back again
    s.assign("t3", "a1", attempt=2)
    s.complete("t3", "a1")
    s.cost("c3", "a1", 0.05, task_id="t3", model="gpt-4o-mini")
    s.add(ev.TaskCancelled(task_id="t4", reason="not needed"))  # queued: holds no agent
    s.assign("t5", "a3")
    s.add(ev.TaskCancelled(task_id="t5", agent_id="a3", reason="user"))
    s.assign("t6", "a3")
    s.add(ev.TaskStarted(task_id="t6", agent_id="a3"))
    s.add(ev.CommandRejected(command_type="AssignTask", code="AGENT_OVER_CAPACITY",
                             message="agent 'a2' holds 1 of 1 tasks", details={"agent_id": "a2"}),
          commandid="cmd-rejected-2")
    # A second pool sharing the partition and the database, with the same ids.
    s.register("a1", 1, pool="blue")
    s.submit("t1", pool="blue")
    s.assign("t1", "a1", pool="blue")
    s.cost("c1", "a1", 1.5, task_id="t1", pool="blue")
    s.add(ev.BudgetSet(scope="pool", scope_id="ignored-for-pool-scope", limit_usd=1.0), pool="blue")
    s.add(ev.BudgetExceeded(scope="pool", scope_id="blue", limit_usd=1.0, spent_usd=1.5),
          pool="blue")
    s.add(ev.PricesSet(models={"house": c.ModelPrice(input_per_1k=0.5, output_per_1k=1.0)}, strict=True),
          pool="blue")
    s.add(ev.PricesSet(default=c.ModelPrice(input_per_1k=0.001, output_per_1k=0.002)), pool="blue")
    # A third pool, made by the decider: health, retries, breakers, timers, policies, scaling.
    coordination_history(into=s)
    # A fourth, decided too: workflow runs and definitions.
    workflow_history(into=s)
    subscription_history(into=s)
    access_history(into=s)
    webhook_history(into=s)
    return s.envelopes


def throughput_mix(n_tasks: int, agents: int = 50, pool: str = "default") -> Iterator[Envelope]:
    """The service's typical stream: per task a submit, assign, complete and cost (4 events)."""
    s = Story(pool)
    for a in range(agents):
        s.register(f"agent-{a}", capacity=1000)
    for i in range(n_tasks):
        task, agent = f"task-{i}", f"agent-{i % agents}"
        s.submit(task, workflow_id=f"wf-{i % 100}")
        s.assign(task, agent)
        s.add(ev.TaskCompleted(task_id=task, agent_id=agent, result={"tokens": 1200}))
        s.cost(f"cost-{i}", agent, 0.0125, task_id=task)
        yield from s.envelopes
        s.envelopes.clear()
