"""The coordinator reactor: keeps its own view of agents and queued tasks, built from events,
and issues ``AssignTask`` commands (capability match, then least loaded) with a selection audit.

The decider has the last word: an assignment that became invalid in flight is rejected, and the
coordinator takes the rejection back into its view. Command ids are derived from the history
(task, assignments so far, rejections so far), so a coordinator rebuilt after a crash re-issues
the same ids and the decider's idempotency drops the repeats.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from contracts import Envelope
from contracts import commands as c
from contracts import events as e

STRATEGY = "capability_match+least_loaded"
AUDIT_TOP = 3  # candidates kept in each assignment's audit (the winner and the runners-up)


@dataclass(slots=True)
class _Agent:
    agent_id: str
    caps: frozenset[str]
    capacity: int
    load: int = 0
    active: bool = True
    version: int = 0


@dataclass(slots=True)
class _Task:
    task_id: str
    req: frozenset[str]
    priority: int
    arrival: int
    correlation: str | None
    workflow: str | None = None
    status: str = "queued"  # queued | held | done
    agent_id: str | None = None  # holder, once assigned
    pending: tuple[str, str] | None = None  # (command id, agent id) of an assignment in flight
    assigned: int = 0
    rejected: int = 0
    qversion: int = 0


@dataclass(slots=True)
class _Group:
    """Agents sharing one capability set; a lazy heap of (load ratio, agent id, version)."""

    caps: frozenset[str]
    heap: list[tuple[float, str, int]] = field(default_factory=list)
    size: int = 0


@dataclass(slots=True)
class _Queue:
    """Queued tasks sharing one required-capability set: (-priority, arrival, id, version)."""

    req: frozenset[str]
    heap: list[tuple[int, int, str, int]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Assignment:
    """A command the coordinator wants appended."""

    pool: str
    command_id: str
    command: c.AssignTask
    correlation: str | None


class PoolView:
    """The coordinator's picture of one pool."""

    def __init__(self, pool: str) -> None:
        self.pool = pool
        self.agents: dict[str, _Agent] = {}
        self.tasks: dict[str, _Task] = {}
        self.groups: dict[frozenset[str], _Group] = {}
        self.queues: dict[frozenset[str], _Queue] = {}
        self._eligible: dict[frozenset[str], list[_Group]] = {}  # required caps -> groups
        self._serves: dict[frozenset[str], list[_Queue]] = {}  # agent caps -> queues
        self._arrivals = 0
        self.work: set[frozenset[str]] = set()  # queues worth trying to drain
        # Budgets, mirrored from events so that no assignment is issued that the decider must
        # reject with BUDGET_EXCEEDED (which would otherwise be retried for ever).
        self.spent: dict[tuple[str, str], float] = {}
        self.limits: dict[tuple[str, str], float] = {}
        self.exhausted: set[tuple[str, str]] = set()
        self.parked: dict[str, list[_Task]] = {}  # workflow -> tasks waiting for its budget

    # -- view maintenance -------------------------------------------------------------------
    def _group(self, caps: frozenset[str]) -> _Group:
        group = self.groups.get(caps)
        if group is None:
            group = self.groups[caps] = _Group(caps)
            self._eligible.clear()
            self._serves.pop(caps, None)
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

    def served_queues(self, caps: frozenset[str]) -> list[_Queue]:
        queues = self._serves.get(caps)
        if queues is None:
            queues = self._serves[caps] = [q for req, q in self.queues.items() if req <= caps]
        return queues

    def _touch(self, agent: _Agent) -> None:
        """Re-index an agent after its load or state changed."""
        agent.version += 1
        if agent.active and agent.load < agent.capacity:
            group = self.groups[agent.caps]
            heapq.heappush(group.heap, (agent.load / agent.capacity, agent.agent_id, agent.version))
            if len(group.heap) > 4 * group.size + 64:
                self._compact(group)
            for q in self.served_queues(agent.caps):
                if q.heap:
                    self.work.add(q.req)

    def _compact(self, group: _Group) -> None:
        group.heap = [
            (a.load / a.capacity, a.agent_id, a.version)
            for a in self.agents.values()
            if a.caps == group.caps and a.active and a.load < a.capacity
        ]
        heapq.heapify(group.heap)

    def _load(self, agent_id: str | None, delta: int) -> None:
        agent = self.agents.get(agent_id) if agent_id is not None else None
        if agent is not None:
            agent.load += delta
            self._touch(agent)

    def _enqueue(self, task: _Task) -> None:
        task.status, task.agent_id = "queued", None
        task.qversion += 1
        queue = self._queue(task.req)
        heapq.heappush(queue.heap, (-task.priority, task.arrival, task.task_id, task.qversion))
        self.work.add(task.req)

    def observe(self, env: Envelope) -> None:
        """Fold one event of this pool into the view."""
        ev = env.data
        match ev:
            case e.TaskSubmitted():
                self._arrivals += 1
                wf = ev.data.get("workflow_id")
                task = _Task(ev.task_id, frozenset(ev.required_capabilities), ev.priority,
                             self._arrivals, env.correlationid, None if wf is None else str(wf))
                self.tasks[ev.task_id] = task
                self._enqueue(task)
            case e.TaskAssigned():
                task = self.tasks[ev.task_id]
                task.assigned = ev.attempt
                counted = task.pending is not None and task.pending[1] == ev.agent_id
                if task.pending is not None and not counted:
                    self._load(task.pending[1], -1)
                task.pending = None
                task.status, task.agent_id = "held", ev.agent_id
                if not counted:
                    self._load(ev.agent_id, +1)
            case e.TaskCompleted() | e.TaskFailed() | e.TaskCancelled():
                task = self.tasks[ev.task_id]
                if task.status == "held":
                    self._load(task.agent_id, -1)
                task.status = "done"
            case e.TaskRequeued():
                task = self.tasks[ev.task_id]
                if task.status == "held":
                    self._load(task.agent_id, -1)
                self._enqueue(task)
            case e.AgentRegistered():
                agent = self.agents.get(ev.agent_id)
                if agent is None:
                    agent = self.agents[ev.agent_id] = _Agent(ev.agent_id, frozenset(ev.capabilities), ev.capacity)
                else:
                    # Re-registration: keep load (assignments may be in flight) and the version
                    # counter, so heap entries from its former life stay invalid.
                    if agent.active:
                        self.groups[agent.caps].size -= 1
                    agent.caps, agent.capacity, agent.active = frozenset(ev.capabilities), ev.capacity, True
                self._group(agent.caps).size += 1
                self._touch(agent)
            case e.AgentDeregistered():
                agent = self.agents[ev.agent_id]
                if agent.active:
                    agent.active = False
                    self.groups[agent.caps].size -= 1
                agent.version += 1
            case e.CostRecorded():
                task = self.tasks.get(ev.task_id) if ev.task_id is not None else None
                keys = [("pool", self.pool), ("agent", ev.agent_id)]
                if task is not None and task.workflow is not None:
                    keys.append(("workflow", task.workflow))
                for key in keys:
                    self.spent[key] = self.spent.get(key, 0.0) + ev.cost_usd
            case e.BudgetExceeded():
                self.exhausted.add((ev.scope, ev.scope_id))
            case e.BudgetSet():
                key = (ev.scope, ev.scope_id)
                self.limits[key] = ev.limit_usd
                if key in self.exhausted and self.spent.get(key, 0.0) < ev.limit_usd:
                    self._budget_restored(key)
            case e.CommandRejected() if ev.command_type == "AssignTask":
                task_id = ev.details.get("task_id") or ev.details.get("subject") or env.subject
                task = self.tasks.get(str(task_id))
                if task is None:
                    return
                task.rejected += 1
                if task.pending is not None and task.pending[0] == env.commandid:
                    self._load(task.pending[1], -1)
                    task.pending = None
                    if task.status == "queued":
                        self._enqueue(task)
            case _:
                pass

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
        best: list[tuple[float, str, int]] = []
        groups = self.eligible_groups(req)
        for group in groups:
            heap, taken = group.heap, []
            while heap and len(taken) < k:
                ratio, agent_id, version = heapq.heappop(heap)
                a = self.agents[agent_id]
                if a.version != version or not a.active or a.load >= a.capacity:
                    continue
                if self.exhausted and ("agent", agent_id) in self.exhausted:
                    continue  # dropped from the heap; re-pushed when its budget is raised
                taken.append((ratio, agent_id, version))
            for item in taken:
                heapq.heappush(heap, item)
            best.extend(taken)
        best.sort()
        return [self.agents[agent_id] for _, agent_id, _ in best[:k]], len(groups)

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

    def schedule(self, clock: Callable[[], float] = time.perf_counter) -> list[Assignment]:
        """Assign as many queued tasks as free capacity allows: priority first, then age."""
        out: list[Assignment] = []
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
            chosen, groups = self.candidates(task.req)
            if not chosen:
                self.work.discard(queue.req)  # nothing free can take these until capacity frees
                continue
            agent = chosen[0]
            audit = c.SelectionAudit(
                strategy=STRATEGY,
                candidates=tuple(
                    c.Candidate(agent_id=a.agent_id, score=round(1 - a.load / a.capacity, 6),
                                load=a.load, capacity=a.capacity)
                    for a in chosen
                ),
                eligible=sum(g.size for g in self.eligible_groups(task.req)),
                considered=groups,
                decision_us=round((clock() - started) * 1e6, 2),
            )
            command_id = f"assign:{self.pool}:{task.task_id}:{task.assigned}:{task.rejected}"
            task.pending = (command_id, agent.agent_id)
            heapq.heappop(queue.heap)
            agent.load += 1
            self._touch(agent)
            out.append(Assignment(self.pool, command_id,
                                  c.AssignTask(task_id=task.task_id, agent_id=agent.agent_id, audit=audit),
                                  task.correlation))
        return out


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
            if v.work:
                out.extend(v.schedule())
        return out
