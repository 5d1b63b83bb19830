"""The coordinator reactor: keeps its own view of agents and queued tasks, built from events,
and issues ``AssignTask`` commands with a selection audit, chosen by the task's strategy or the
pool's default (``services.coordination.strategies``).

Besides assignments it issues ``MarkTaskUnassignable`` (no registered agent matches enough of a
task's capabilities), ``DeferTask`` (capable agents exist but all are rate limited) and, through the
scaling reactor it hosts (``services.coordination.scaling``), ``DecideScaling``.

The decider has the last word: an assignment that became invalid in flight is rejected, and the
coordinator takes the rejection back into its view. Command ids are derived from the history
(task, assignments so far, rejections so far), so a coordinator rebuilt after a crash re-issues
the same ids and the decider's idempotency drops the repeats.

Deterministic: "now" (rate limits, deferrals, availability) is the latest event time seen, never
the wall clock; the clock is read only to measure ``decision_us``.

Hot path: agents sharing a capability set form a group with lazy heaps, one per strategy in use,
keyed by what only the agent determines (load, last pick, weight, resource use, performance); a
decision pops the best few of each eligible group, so it costs O(groups * log agents), not
O(agents). Rate-limited agents leave the heaps until their bucket refills (a heap by time).
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from contracts import Command, Envelope
from contracts import commands as c
from contracts import event_types as e
from contracts.commands import PoolPolicy
from projections.performance import PerformanceBook
from services.coordination import strategies
from services.coordination.ratelimit import RateLimiter
from services.coordination.scaling import Scaler
from services.domain.capabilities import capability_match, specialization

STRATEGY = "capability_match+least_loaded"  # the audit label of the default strategy
AUDIT_TOP = 3  # candidates kept in each assignment's audit (the winner and the runners-up)
RATE_LIMITED = "RATE_LIMITED"
# A heap is rebuilt from its group's members once stale entries outnumber live ones this much:
# rare enough to be amortised away, bounded so that memory stays O(agents).
_SLACK = 8
_OWN_COMMANDS = ("AssignTask", "MarkTaskUnassignable", "DeferTask")  # whose rejections it follows


@dataclass(slots=True)
class _Agent:
    agent_id: str
    caps: frozenset[str]
    capacity: int
    load: int = 0
    active: bool = True
    version: int = 0
    kind: str = "generic"
    weight: float = 1.0
    model: str | None = None
    healthy: bool = True
    breaker: str = "closed"
    cpu: float | None = None
    memory: float | None = None
    picked: int = 0  # round robin: when it was last given a task
    order: int = 0  # registration order
    perf: float = 1.0  # performance score when last refreshed
    limit: int | None = None  # concurrency limit (rate limits)

    @property
    def room(self) -> int:
        cap = self.capacity if self.limit is None else min(self.capacity, self.limit)
        return cap - self.load

    def available(self) -> bool:
        if not (self.active and self.healthy and self.room > 0):
            return False
        if self.breaker == "closed":
            return True
        return self.breaker == "half_open" and self.load == 0  # one trial task at a time


@dataclass(slots=True)
class _Task:
    task_id: str
    req: frozenset[str]
    priority: int
    arrival: int
    correlation: str | None
    workflow: str | None = None
    status: str = "queued"  # queued | held | waiting (retry backoff) | done
    agent_id: str | None = None  # holder, once assigned
    pending: tuple[str, str] | None = None  # (command id, agent id) of an assignment in flight
    assigned: int = 0
    rejected: int = 0
    qversion: int = 0
    strategy: str | None = None
    preferred: frozenset[str] = frozenset()
    flagged: bool = False  # marked unassignable (until assigned)
    marks: int = 0
    marking: str | None = None  # MarkTaskUnassignable in flight
    deferred: int = 0
    deferring: str | None = None  # DeferTask in flight
    kind: str | None = None  # the agent kind its data names (scaling)


@dataclass(slots=True)
class _Group:
    """Agents sharing one capability set; a lazy heap of (load ratio, agent id, version), and one
    more per other strategy in use: (key, agent id, version)."""

    caps: frozenset[str]
    heap: list[tuple[float, str, int]] = field(default_factory=list)
    size: int = 0
    heaps: dict[str, list[tuple[object, str, int]]] = field(default_factory=dict)
    limited: int = 0  # its agents waiting for a rate limit
    members: set[str] = field(default_factory=set)  # active agents with these capabilities


@dataclass(slots=True)
class _Queue:
    """Queued tasks sharing one required-capability set: (-priority, arrival, id, version)."""

    req: frozenset[str]
    heap: list[tuple[int, int, str, int]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Assignment:
    """A command the coordinator wants appended (an AssignTask, or another coordination command)."""

    pool: str
    command_id: str
    command: Command
    correlation: str | None


@dataclass(slots=True)
class _Pick:
    agent: _Agent
    rank: tuple[Any, ...]
    match: float
    spec: float


class PoolView:
    """The coordinator's picture of one pool."""

    def __init__(self, pool: str) -> None:
        self.pool = pool
        self.agents: dict[str, _Agent] = {}
        self.tasks: dict[str, _Task] = {}
        self.groups: dict[frozenset[str], _Group] = {}
        self.queues: dict[frozenset[str], _Queue] = {}
        self._eligible: dict[frozenset[str], list[_Group]] = {}  # required caps -> groups
        self._partial: dict[frozenset[str], list[tuple[float, _Group]]] = {}  # best match first
        self._serves: dict[frozenset[str], list[_Queue]] = {}  # agent caps -> queues
        self._arrivals = 0
        self._registrations = 0
        self._tick = 0  # assignments seen or issued (round robin)
        self.work: set[frozenset[str]] = set()  # queues worth trying to drain
        # Budgets, mirrored from events so that no assignment is issued that the decider must
        # reject with BUDGET_EXCEEDED (which would otherwise be retried for ever).
        self.spent: dict[tuple[str, str], float] = {}
        self.limits: dict[tuple[str, str], float] = {}
        self.exhausted: set[tuple[str, str]] = set()
        self.parked: dict[str, list[_Task]] = {}  # workflow -> tasks waiting for its budget
        self.policy = PoolPolicy()
        self.now = 0.0  # latest event time seen (seconds since the epoch)
        self.performance = PerformanceBook()
        self.limiter = RateLimiter()
        self.limited: list[tuple[float, str, int]] = []  # (free again at, agent id, version)
        self.model_load: dict[str, int] = {}
        self.model_blocked: dict[str, set[str]] = {}
        self.to_mark: list[_Task] = []  # tasks to check for "no capable agent registered"
        self.scaler = Scaler(pool)

    # -- view maintenance -------------------------------------------------------------------
    def _group(self, caps: frozenset[str]) -> _Group:
        group = self.groups.get(caps)
        if group is None:
            group = self.groups[caps] = _Group(caps)
            self._eligible.clear()
            self._partial.clear()
            self._serves.clear()
        return group

    def _queue(self, req: frozenset[str]) -> _Queue:
        queue = self.queues.get(req)
        if queue is None:
            queue = self.queues[req] = _Queue(req)
            self._serves.clear()
        return queue

    def eligible_groups(self, req: frozenset[str]) -> list[_Group]:
        groups = self._eligible.get(req)
        if groups is None:
            groups = self._eligible[req] = [g for caps, g in self.groups.items() if req <= caps]
        return groups

    def partial_groups(self, req: frozenset[str]) -> list[tuple[float, _Group]]:
        """Groups matching at least the policy's share (but not all) of ``req``, best first."""
        groups = self._partial.get(req)
        if groups is None:
            threshold = self.policy.min_capability_match
            groups = sorted(
                ((m, g) for caps, g in self.groups.items()
                 if threshold < 1.0 and not req <= caps and (m := capability_match(req, caps)) >= threshold),
                key=lambda x: -x[0],
            )
            self._partial[req] = groups
        return groups

    def served_queues(self, caps: frozenset[str]) -> list[_Queue]:
        queues = self._serves.get(caps)
        if queues is None:
            threshold = self.policy.min_capability_match
            queues = self._serves[caps] = [
                q for req, q in self.queues.items()
                if req <= caps or (threshold < 1.0 and capability_match(req, caps) >= threshold)
            ]
        return queues

    def _key(self, strategy: str, a: _Agent) -> object:
        return strategies.key(strategy, a, self.policy.weights)

    def _touch(self, agent: _Agent) -> None:
        """Re-index an agent after its load or state changed."""
        agent.version += 1
        if agent.available():
            group = self.groups[agent.caps]
            heapq.heappush(group.heap, (agent.load / agent.capacity, agent.agent_id, agent.version))
            if len(group.heap) > _SLACK * group.size + 1024:
                self._compact(group)
            for strategy, heap in group.heaps.items():
                heapq.heappush(heap, (self._key(strategy, agent), agent.agent_id, agent.version))
                if len(heap) > _SLACK * group.size + 1024:
                    group.heaps[strategy] = self._build(group, strategy)
            for q in self.served_queues(agent.caps):
                if q.heap:
                    self.work.add(q.req)

    def _members(self, group: _Group) -> list[_Agent]:
        agents = (self.agents[agent_id] for agent_id in sorted(group.members))
        return [a for a in agents if a.available()]

    def _compact(self, group: _Group) -> None:
        group.heap = [(a.load / a.capacity, a.agent_id, a.version) for a in self._members(group)]
        heapq.heapify(group.heap)

    def _build(self, group: _Group, strategy: str) -> list[tuple[object, str, int]]:
        heap = [(self._key(strategy, a), a.agent_id, a.version) for a in self._members(group)]
        heapq.heapify(heap)
        return heap

    def _strategy_heap(self, group: _Group, strategy: str) -> list[tuple[object, str, int]]:
        heap = group.heaps.get(strategy)
        if heap is None:
            heap = group.heaps[strategy] = self._build(group, strategy)
        return heap

    def _load(self, agent_id: str | None, delta: int) -> None:
        agent = self.agents.get(agent_id) if agent_id is not None else None
        if agent is not None:
            agent.load += delta
            if agent.model is not None and agent.model in self.model_load:
                self._model_load(agent.model, delta)
            self._touch(agent)

    def _model_load(self, model: str, delta: int) -> None:
        self.model_load[model] = self.model_load.get(model, 0) + delta
        if delta < 0 and self.model_blocked.get(model):
            limit = self.limiter.concurrency("model", model)
            if limit is None or self.model_load[model] < limit:
                for agent_id in sorted(self.model_blocked.pop(model)):
                    self._touch(self.agents[agent_id])

    def _enqueue(self, task: _Task) -> None:
        task.status, task.agent_id = "queued", None
        task.qversion += 1
        queue = self._queue(task.req)
        heapq.heappush(queue.heap, (-task.priority, task.arrival, task.task_id, task.qversion))
        self.work.add(task.req)
        if not task.flagged:
            self.to_mark.append(task)

    def _score(self, agent_id: str) -> float:
        return self.performance.profile(agent_id).score(self.policy.performance, self.now)

    def _refresh_perf(self, agent_id: str) -> None:
        agent = self.agents.get(agent_id)
        if agent is None:
            return
        perf = self._score(agent_id)
        if perf != agent.perf:
            agent.perf = perf
            if any("performance_weighted" in g.heaps for g in self.groups.values()):
                self._touch(agent)

    def _coverage_lost(self) -> None:
        """After agents left or the policy changed: queued tasks nobody can serve any more."""
        for req, queue in self.queues.items():
            if self._covered(req)[0]:
                continue
            for _, _, task_id, version in queue.heap:
                task = self.tasks[task_id]
                if task.qversion == version and task.status == "queued" and not task.flagged:
                    self.to_mark.append(task)
        # Tasks parked under a spent workflow budget left the heaps but are still queued: a
        # coordinator rebuilt from the log would see them in the heaps, so treat them alike.
        for parked in self.parked.values():
            for task in parked:
                if task.status == "queued" and task.pending is None and not task.flagged \
                        and not self._covered(task.req)[0]:
                    self.to_mark.append(task)

    def _covered(self, req: frozenset[str]) -> tuple[bool, float, tuple[str, ...]]:
        """Whether some registered agent matches enough of ``req``; else the best match and gap."""
        best, gap = 0.0, tuple(sorted(req))
        for caps, g in self.groups.items():
            if g.size <= 0:
                continue
            m = capability_match(req, caps)
            if m >= 1.0 or (self.policy.min_capability_match < 1.0 and m >= self.policy.min_capability_match):
                return True, m, ()
            if m > best:
                best, gap = m, tuple(sorted(req - caps))
        return False, best, gap

    def observe(self, env: Envelope) -> None:
        """Fold one event of this pool into the view."""
        ev = env.data
        t = env.time.timestamp()
        if t > self.now:
            self.now = t
        changed = self.performance.observe(env)
        match ev:
            case e.TaskSubmitted():
                self._arrivals += 1
                wf = ev.data.get("workflow_id")
                named = ev.data.get("agent_kind")
                task = _Task(ev.task_id, frozenset(ev.required_capabilities), ev.priority,
                             self._arrivals, env.correlationid, None if wf is None else str(wf),
                             strategy=ev.strategy, preferred=frozenset(ev.inferred_capabilities),
                             kind=None if named is None else str(named))
                self.tasks[ev.task_id] = task
                self._enqueue(task)
            case e.TaskAssigned():
                task = self.tasks[ev.task_id]
                task.assigned = ev.attempt
                task.flagged = False
                counted = task.pending is not None and task.pending[1] == ev.agent_id
                if task.pending is not None and not counted:
                    self._load(task.pending[1], -1)
                task.pending = None
                task.status, task.agent_id = "held", ev.agent_id
                if not counted:
                    agent = self.agents.get(ev.agent_id)
                    if agent is not None:
                        self._tick += 1
                        agent.picked = self._tick
                        if self.limiter:
                            self.limiter.on_assign(agent.agent_id, agent.model, self.now)
                    self._load(ev.agent_id, +1)
            case e.TaskCompleted() | e.TaskFailed() | e.TaskCancelled():
                task = self.tasks[ev.task_id]
                if task.status == "held":
                    self._load(task.agent_id, -1)
                task.status = "done"
            case e.TaskRetryScheduled():
                task = self.tasks[ev.task_id]
                if task.status == "held":
                    self._load(task.agent_id, -1)
                task.status = "waiting"
            case e.TaskRequeued() | e.TaskReassigned():
                task = self.tasks[ev.task_id]
                if task.status == "held":
                    self._load(task.agent_id, -1)
                self._enqueue(task)
            case e.TaskUnassignable():
                task = self.tasks[ev.task_id]
                task.marks += 1
                task.marking = None
                task.flagged = True
            case e.TaskDeferred():
                task = self.tasks[ev.task_id]
                task.deferred += 1
                task.deferring = None
            case e.AgentRegistered():
                agent = self.agents.get(ev.agent_id)
                lost = False
                if agent is None:
                    self._registrations += 1
                    agent = _Agent(ev.agent_id, frozenset(ev.capabilities), ev.capacity,
                                   order=self._registrations)
                    self.agents[ev.agent_id] = agent
                else:
                    # Re-registration: keep load (assignments may be in flight) and the version
                    # counter, so heap entries from its former life stay invalid.
                    if agent.active:
                        self.groups[agent.caps].size -= 1
                        self.groups[agent.caps].members.discard(agent.agent_id)
                        lost = True
                    if agent.model is not None and agent.model in self.model_load:
                        self.model_load[agent.model] -= agent.load
                    agent.caps, agent.capacity, agent.active = frozenset(ev.capabilities), ev.capacity, True
                    agent.healthy, agent.breaker = True, "closed"
                model = ev.metadata.get("model")
                agent.kind, agent.weight = ev.kind, ev.weight
                agent.model = model if isinstance(model, str) else None
                agent.limit = self.limiter.concurrency("agent", agent.agent_id)
                if agent.model is not None and self.limiter.concurrency("model", agent.model) is not None:
                    self.model_load[agent.model] = self.model_load.get(agent.model, 0) + agent.load
                agent.perf = self._score(agent.agent_id)
                group = self._group(agent.caps)
                group.size += 1
                group.members.add(agent.agent_id)
                self._touch(agent)
                if lost:
                    self._coverage_lost()
            case e.AgentDeregistered():
                agent = self.agents[ev.agent_id]
                if agent.active:
                    agent.active = False
                    self.groups[agent.caps].size -= 1
                    self.groups[agent.caps].members.discard(agent.agent_id)
                agent.version += 1
                self._coverage_lost()
            case e.AgentMarkedUnhealthy():
                agent = self.agents[ev.agent_id]
                agent.healthy = False
                agent.version += 1
            case e.AgentMarkedHealthy():
                agent = self.agents[ev.agent_id]
                agent.healthy = True
                self._touch(agent)
            case e.CircuitOpened():
                agent = self.agents[ev.agent_id]
                agent.breaker = "open"
                agent.version += 1
            case e.CircuitHalfOpened() | e.CircuitClosed():
                agent = self.agents[ev.agent_id]
                agent.breaker = "half_open" if isinstance(ev, e.CircuitHalfOpened) else "closed"
                self._touch(agent)
            case e.AgentHeartbeatReceived():
                agent = self.agents.get(ev.agent_id)
                if agent is not None and (ev.cpu is not None or ev.memory is not None):
                    agent.cpu = ev.cpu if ev.cpu is not None else agent.cpu
                    agent.memory = ev.memory if ev.memory is not None else agent.memory
                    group = self.groups.get(agent.caps)
                    if group is not None and "resource_based" in group.heaps:
                        self._touch(agent)
            case e.PoolPolicySet():
                old = self.policy
                self.policy = PoolPolicy.model_validate(ev.model_dump())
                self._partial.clear()
                self._serves.clear()
                for group in self.groups.values():
                    group.heaps.clear()  # keys may depend on the weights: rebuilt on next use
                if old.performance != self.policy.performance:
                    for agent in self.agents.values():
                        agent.perf = self._score(agent.agent_id)
                self.work.update(req for req, q in self.queues.items() if q.heap)
                if self.policy.min_capability_match > old.min_capability_match:
                    self._coverage_lost()
            case e.RateLimitSet():
                self.limiter.set(ev, self.now)
                parked, self.limited = self.limited, []  # limits changed: everyone parked tries again
                for _, agent_id, version in parked:
                    agent = self.agents[agent_id]
                    self.groups[agent.caps].limited = 0
                    if agent.version == version + 1:
                        self._touch(agent)
                for agent_id in sorted(self.model_blocked.pop(ev.scope_id, ())):
                    self._touch(self.agents[agent_id])
                if ev.scope == "agent":
                    agent = self.agents.get(ev.scope_id)
                    if agent is not None:
                        agent.limit = ev.concurrent
                        self._touch(agent)
                elif ev.concurrent is not None:
                    self.model_load[ev.scope_id] = sum(
                        a.load for a in self.agents.values() if a.model == ev.scope_id
                    )
                self.work.update(req for req, q in self.queues.items() if q.heap)
            case e.CostRecorded():
                task = self.tasks.get(ev.task_id) if ev.task_id is not None else None
                keys = [("pool", self.pool), ("agent", ev.agent_id)]
                if task is not None and task.workflow is not None:
                    keys.append(("workflow", task.workflow))
                for key in keys:
                    self.spent[key] = self.spent.get(key, 0.0) + ev.cost_usd
                if self.limiter:
                    tokens = ev.input_tokens + ev.output_tokens
                    self.limiter.on_tokens(ev.agent_id, ev.model, tokens, self.now)
            case e.BudgetExceeded():
                self.exhausted.add((ev.scope, ev.scope_id))
            case e.BudgetSet():
                key = (ev.scope, ev.scope_id)
                self.limits[key] = ev.limit_usd
                if key in self.exhausted and self.spent.get(key, 0.0) < ev.limit_usd:
                    self._budget_restored(key)
            case e.CommandRejected() if ev.command_type in _OWN_COMMANDS:
                task_id = ev.details.get("task_id") or ev.details.get("subject") or env.subject
                task = self.tasks.get(str(task_id))
                if task is None:
                    pass
                elif ev.command_type == "MarkTaskUnassignable":
                    if task.marking == env.commandid:
                        task.marking = None
                        task.marks += 1
                elif ev.command_type == "DeferTask":
                    if task.deferring == env.commandid:
                        task.deferring = None
                        task.deferred += 1
                else:
                    task.rejected += 1
                    if task.pending is not None and task.pending[0] == env.commandid:
                        agent = self.agents.get(task.pending[1])
                        if agent is not None and self.limiter:
                            self.limiter.on_refund(agent.agent_id, agent.model, self.now)
                        self._load(task.pending[1], -1)
                        task.pending = None
                        if task.status == "queued":
                            self._enqueue(task)
            case _:
                pass
        if changed is not None:
            self._refresh_perf(changed)
        if not self.scaler.policies:
            if not isinstance(ev, e.ScalingPolicySet):
                return
            self.scaler.bootstrap(
                ((a.agent_id, a.kind, a.capacity, a.active, a.caps) for a in self.agents.values()),
                ((t.task_id, t.status, t.req, t.kind, t.agent_id if t.status == "held" else None)
                 for t in self.tasks.values()),
            )
        self.scaler.observe(env)

    def _budget_restored(self, key: tuple[str, str]) -> None:
        self.exhausted.discard(key)
        scope, scope_id = key
        if scope == "workflow":
            for task in self.parked.pop(scope_id, []):
                if task.status == "queued" and task.pending is None:
                    self._enqueue(task)
        else:  # agents skipped while a pool or agent budget was spent get back into the heaps
            for agent in self.agents.values():
                self._touch(agent)
            self.work.update(req for req, q in self.queues.items() if q.heap)

    # -- decisions --------------------------------------------------------------------------
    def candidates(self, req: frozenset[str], k: int = AUDIT_TOP) -> tuple[list[_Agent], int]:
        """The ``k`` least-loaded eligible agents with free capacity, and how many groups looked."""
        groups = self.eligible_groups(req)
        skipped: dict[str, int] = {}
        picks = self._pick(strategies.DEFAULT, req, frozenset(), [(1.0, g) for g in groups], k, skipped)
        return [p.agent for p in picks], len(groups)

    def _usable(self, a: _Agent, skipped: dict[str, int]) -> bool | None:
        """True: may take a task now; False: drop its heap entry; None: rate limited (parked)."""
        if self.exhausted and ("agent", a.agent_id) in self.exhausted:
            return False  # dropped from the heap; re-pushed when its budget is raised
        if a.model is not None and a.model in self.model_load:
            limit = self.limiter.concurrency("model", a.model)
            if limit is not None and self.model_load[a.model] >= limit:
                self.model_blocked.setdefault(a.model, set()).add(a.agent_id)
                skipped["model_concurrency"] = skipped.get("model_concurrency", 0) + 1
                return False
        if self.limiter:
            at = self.limiter.ready_at(a.agent_id, a.model, self.now)
            if at > self.now:
                heapq.heappush(self.limited, (at, a.agent_id, a.version))
                self.groups[a.caps].limited += 1
                a.version += 1  # out of every heap until it is free again
                skipped[RATE_LIMITED.lower()] = skipped.get(RATE_LIMITED.lower(), 0) + 1
                return None
        return True

    def _pick(self, strategy: str, req: frozenset[str], preferred: frozenset[str],
              groups: list[tuple[float, _Group]], k: int, skipped: dict[str, int]) -> list[_Pick]:
        """The best ``k`` usable agents of ``groups`` under ``strategy``."""
        weights = self.policy.weights
        best: list[_Pick] = []
        own_heap = strategy not in strategies.USES_LOAD_HEAP
        for match, group in groups:
            if group.size <= 0:
                continue
            heap: list[tuple[Any, str, int]] = (
                self._strategy_heap(group, strategy) if own_heap else group.heap
            )
            spec = specialization(req, preferred, group.caps)
            part = strategies.group_part(strategy, match, spec, weights)
            taken: list[tuple[Any, str, int]] = []
            while heap and len(taken) < k:
                entry = heapq.heappop(heap)
                a = self.agents[entry[1]]
                if a.version != entry[2] or not a.available():
                    continue
                if not self._usable(a, skipped):
                    continue
                taken.append(entry)
            for entry in taken:
                heapq.heappush(heap, entry)
                a = self.agents[entry[1]]
                if strategy == "performance_weighted":
                    rank: tuple[Any, ...] = (-(part - entry[0]), entry[1])
                elif strategy == "capability_based":
                    rank = (-part, entry[0], entry[1])
                else:
                    rank = (entry[0], entry[1])
                best.append(_Pick(a, rank, match, spec))
        best.sort(key=lambda p: p.rank)
        return best[:k]

    def _head(self, queue: _Queue) -> _Task | None:
        """The best schedulable task of ``queue``, dropping stale entries on the way."""
        heap = queue.heap
        while heap:
            _, _, task_id, version = heap[0]
            task = self.tasks[task_id]
            if task.qversion != version or task.status != "queued" or task.pending is not None:
                heapq.heappop(heap)
                continue
            if task.workflow is not None and ("workflow", task.workflow) in self.exhausted:
                heapq.heappop(heap)  # waits, parked, until the workflow's budget is raised
                self.parked.setdefault(task.workflow, []).append(task)
                continue
            return task
        return None

    def _release_limited(self) -> None:
        while self.limited and self.limited[0][0] <= self.now:
            _, agent_id, version = heapq.heappop(self.limited)
            agent = self.agents[agent_id]
            self.groups[agent.caps].limited = max(0, self.groups[agent.caps].limited - 1)
            if agent.version == version + 1:  # still parked by us, nothing else changed
                self._touch(agent)

    def _marks(self) -> list[Assignment]:
        out: list[Assignment] = []
        cache: dict[frozenset[str], tuple[bool, float, tuple[str, ...]]] = {}
        for task in self.to_mark:
            if task.status != "queued" or task.pending is not None or task.flagged:
                continue
            if task.marking is not None:
                continue
            cover = cache.get(task.req)
            if cover is None:
                cover = cache[task.req] = self._covered(task.req)
            covered, best, gap = cover
            if covered:
                continue
            command_id = f"unassignable:{self.pool}:{task.task_id}:{task.assigned}:{task.marks}"
            task.marking = command_id
            out.append(Assignment(self.pool, command_id, c.MarkTaskUnassignable(
                task_id=task.task_id, missing=gap, best_match=round(best, 6),
                threshold=self.policy.min_capability_match), task.correlation))
        self.to_mark.clear()
        return out

    def schedule(self, clock: Callable[[], float] = time.perf_counter) -> list[Assignment]:
        """Assign as many queued tasks as free capacity allows: priority first, then age."""
        out: list[Assignment] = []
        if self.limited:
            self._release_limited()
        if self.to_mark:
            out += self._marks()
        out += self.scaler.take()  # type: ignore[arg-type]
        if ("pool", self.pool) in self.exhausted:
            return out  # nothing new starts until the pool's budget is raised
        while self.work:
            best: tuple[tuple[int, int], _Queue, _Task] | None = None
            for req in list(self.work):
                queue = self.queues[req]
                head = self._head(queue)
                if head is None:
                    self.work.discard(req)
                elif best is None or (-head.priority, head.arrival) < best[0]:
                    best = ((-head.priority, head.arrival), queue, head)
            if best is None:
                break
            _, queue, task = best
            started = clock()
            strategy = task.strategy or self.policy.default_strategy
            skipped: dict[str, int] = {}
            groups = self.eligible_groups(task.req)
            considered = len(groups)
            full = [(1.0, g) for g in groups]
            picks = self._pick(strategy, task.req, task.preferred, full, AUDIT_TOP, skipped)
            eligible = sum(g.size for g in groups)
            partial = False
            if not picks and self.policy.min_capability_match < 1.0:
                levels = self.partial_groups(task.req)
                considered += len(levels)
                eligible += sum(g.size for _, g in levels)
                i = 0
                while i < len(levels) and not picks:  # the best match level that has a free agent
                    j = i
                    while j < len(levels) and levels[j][0] == levels[i][0]:
                        j += 1
                    picks = self._pick(strategy, task.req, task.preferred, levels[i:j], AUDIT_TOP, skipped)
                    i = j
                partial = bool(picks)
            if not picks:
                self.work.discard(queue.req)  # nothing free can take these until capacity frees
                if skipped.get("rate_limited") or any(g.limited for g in groups):
                    out += self._defer(task)
                continue
            agent = picks[0].agent
            weights = self.policy.weights
            # Built without validation (model_construct): every value is typed here, and the audit
            # is a large share of a decision's cost at 10k agents.
            audit = c.SelectionAudit.model_construct(
                strategy=STRATEGY if strategy == strategies.DEFAULT else strategy,
                candidates=tuple(
                    c.Candidate.model_construct(agent_id=p.agent.agent_id,
                                score=round(strategies.score(strategy, p.agent, p.match, p.spec, weights), 6),
                                load=p.agent.load, capacity=p.agent.capacity,
                                capability_match=round(p.match, 6),
                                components={"capability": round(p.match, 6),
                                            "performance": round(p.agent.perf, 6),
                                            "specialization": round(p.spec, 6),
                                            "load": round(p.agent.load / p.agent.capacity, 6)})
                    for p in picks
                ),
                eligible=eligible,
                considered=considered,
                decision_us=round((clock() - started) * 1e6, 2),
                capability_gap=tuple(sorted(task.req - agent.caps)),
                preferred=tuple(sorted(task.preferred)),
                skipped=skipped,
            )
            command_id = f"assign:{self.pool}:{task.task_id}:{task.assigned}:{task.rejected}"
            task.pending = (command_id, agent.agent_id)
            heapq.heappop(queue.heap)
            self._tick += 1
            agent.picked = self._tick
            if self.limiter:
                self.limiter.on_assign(agent.agent_id, agent.model, self.now)
            self._load(agent.agent_id, +1)
            out.append(Assignment(self.pool, command_id,
                                  c.AssignTask(task_id=task.task_id, agent_id=agent.agent_id, audit=audit,
                                               allow_partial=partial),
                                  task.correlation))
        return out

    def _defer(self, task: _Task) -> list[Assignment]:
        """Every capable free agent is rate limited: tell the log, and wake up when one is free."""
        if task.deferring is not None or not self.limited:
            return []
        delay = max(0.001, round(self.limited[0][0] - self.now, 3))
        command_id = f"defer:{self.pool}:{task.task_id}:{task.assigned}:{task.deferred}"
        task.deferring = command_id
        cmd = c.DeferTask(task_id=task.task_id, reason=RATE_LIMITED, delay_s=delay)
        return [Assignment(self.pool, command_id, cmd, task.correlation)]


class Coordinator:
    """The reactor over all pools of the partitions it reads."""

    def __init__(self) -> None:
        self.views: dict[str, PoolView] = {}

    def view(self, pool: str) -> PoolView:
        v = self.views.get(pool)
        if v is None:
            v = self.views[pool] = PoolView(pool)
        return v

    def observe(self, env: Envelope) -> None:
        self.view(env.pool).observe(env)

    def schedule(self) -> list[Assignment]:
        out: list[Assignment] = []
        for v in self.views.values():
            if v.work or v.to_mark or v.limited or v.scaler.out:
                out.extend(v.schedule())
        return out
