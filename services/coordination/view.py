"""The coordinator's view of one pool: agents, queued tasks, budgets and rate limits, from events.

``PoolView.observe`` folds one event in through the table of ``handlers`` (one small function per
event type); ``PoolView.schedule`` asks ``choice`` what to issue. This module keeps the indexes
that make a decision cheap, and keeps them right as agents and tasks change:

- agents sharing a capability set form a group with lazy heaps, one per strategy in use, keyed by
  what only the agent determines (load, last pick, weight, resource use, performance); an agent
  that changed gets a new version and is pushed again, older entries are dropped when popped;
- queued tasks sharing a required-capability set form a queue (priority, then arrival);
- ``work`` names the queues worth trying to drain, so a decision touches only those.

Deterministic: "now" is the latest event time seen, never the wall clock. No I/O.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable

from contracts import Envelope
from contracts import event_types as e
from contracts.commands import PoolPolicy
from projections.performance import PerformanceBook
from services.coordination import choice, strategies
from services.coordination.choice import AUDIT_TOP, Assignment
from services.coordination.handlers import HANDLERS
from services.coordination.ratelimit import RateLimiter
from services.coordination.records import Agent, Group, Queue, Task, Waiting, pin
from services.coordination.scaling import Scaler
from services.domain.capabilities import capability_match

# A heap is rebuilt from its group's members once stale entries outnumber live ones this much:
# rare enough to be amortised away, bounded so that memory stays O(agents).
_SLACK = 8


class PoolView:
    """The coordinator's picture of one pool."""

    def __init__(self, pool: str) -> None:
        self.pool = pool
        self.agents: dict[str, Agent] = {}
        # The tasks not ended, and those ended with a command of ours about them still in flight
        # (``handlers.forget``); of the others only the workflow, for a cost recorded after the end.
        self.tasks: dict[str, Task] = {}
        self.ended_in: dict[str, str] = {}  # ended task id -> its workflow
        self.groups: dict[frozenset[str], Group] = {}
        self.queues: dict[frozenset[str], Queue] = {}
        self._eligible: dict[frozenset[str], list[Group]] = {}  # required caps -> groups
        self._partial: dict[frozenset[str], list[tuple[float, Group]]] = {}  # best match first
        self._serves: dict[frozenset[str], list[Queue]] = {}  # agent caps -> queues
        self.arrivals = 0
        self.registrations = 0
        self.tick = 0  # assignments seen or issued (round robin)
        self.work: set[frozenset[str]] = set()  # queues worth trying to drain
        # Budgets, mirrored from events so that no assignment is issued that the decider must
        # reject with BUDGET_EXCEEDED (which would otherwise be retried for ever).
        # Whole micro-dollars (contracts.money), as the decider keeps them.
        self.spent: dict[tuple[str, str], int] = {}
        self.limits: dict[tuple[str, str], int] = {}
        self.exhausted: set[tuple[str, str]] = set()
        self.parked: dict[str, list[Task]] = {}  # workflow -> tasks waiting for its budget
        self.policy = PoolPolicy()
        self.now = 0.0  # latest event time seen (seconds since the epoch)
        self.performance = PerformanceBook()
        self.limiter = RateLimiter()
        self.limited: list[tuple[float, str, int]] = []  # (free again at, agent id, version)
        self.model_load: dict[str, int] = {}
        self.model_blocked: dict[str, set[str]] = {}
        self.to_mark: list[Task] = []  # tasks to check for "no capable agent registered"
        self.scaler = Scaler(pool)
        self.pinned_to: set[str] = set()  # agents some task is pinned to (they carry ``pin(id)``)

    # -- events in, commands out -------------------------------------------------------------
    def observe(self, env: Envelope) -> None:
        """Fold one event of this pool into the view."""
        ev = env.data
        t = env.time.timestamp()
        if t > self.now:
            self.now = t
        changed = self.performance.observe(env)
        handler = HANDLERS.get(type(ev))
        if handler is not None:
            handler(self, env, ev)
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

    def schedule(self, clock: Callable[[], float] = time.perf_counter) -> list[Assignment]:
        """Assign as many queued tasks as free capacity allows: priority first, then age."""
        return choice.schedule(self, clock)

    def candidates(self, req: frozenset[str], k: int = AUDIT_TOP) -> tuple[list[Agent], int]:
        """The ``k`` least-loaded eligible agents with free capacity, and how many groups looked."""
        return choice.candidates(self, req, k)

    # -- pinned tasks ---------------------------------------------------------------------------
    def caps_of(self, agent_id: str, capabilities: tuple[str, ...]) -> frozenset[str]:
        """An agent's capabilities as the view matches them: its own, and its pin if it has one."""
        caps = frozenset(capabilities)
        return caps | {pin(agent_id)} if agent_id in self.pinned_to else caps

    def pin_target(self, agent_id: str) -> None:
        """A task is pinned to ``agent_id``: from now on the agent carries its pin (moving to the
        capability group of its capabilities plus the pin)."""
        if agent_id in self.pinned_to:
            return
        self.pinned_to.add(agent_id)
        agent = self.agents.get(agent_id)
        if agent is None:
            return  # registers later, with the pin (caps_of)
        if agent.active:
            old = self.groups[agent.caps]
            old.size -= 1
            old.members.discard(agent_id)
        agent.caps = agent.caps | {pin(agent_id)}
        if agent.active:
            group = self.group_for(agent.caps)
            group.size += 1
            group.members.add(agent_id)
            self.touch(agent)  # a new version: its entries in the old group's heaps are stale

    # -- which groups serve which requirements ------------------------------------------------
    def group_for(self, caps: frozenset[str]) -> Group:
        """The group of ``caps``, created (and the match caches dropped) when it is new."""
        group = self.groups.get(caps)
        if group is None:
            group = self.groups[caps] = Group(caps)
            self._eligible.clear()
            self.forget_matches()
        return group

    def forget_matches(self) -> None:
        """Drop the cached partial matches and served queues (they depend on groups and policy)."""
        self._partial.clear()
        self._serves.clear()

    def _queue(self, req: frozenset[str]) -> Queue:
        queue = self.queues.get(req)
        if queue is None:
            queue = self.queues[req] = Queue(req)
            self._serves.clear()
        return queue

    def eligible_groups(self, req: frozenset[str]) -> list[Group]:
        groups = self._eligible.get(req)
        if groups is None:
            groups = self._eligible[req] = [g for caps, g in self.groups.items() if req <= caps]
        return groups

    def partial_groups(self, req: frozenset[str]) -> list[tuple[float, Group]]:
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

    def served_queues(self, caps: frozenset[str]) -> list[Queue]:
        queues = self._serves.get(caps)
        if queues is None:
            threshold = self.policy.min_capability_match
            queues = self._serves[caps] = [
                q for req, q in self.queues.items()
                if req <= caps or (threshold < 1.0 and capability_match(req, caps) >= threshold)
            ]
        return queues

    def covered(self, req: frozenset[str]) -> tuple[bool, float, tuple[str, ...]]:
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

    # -- agents in the heaps -----------------------------------------------------------------
    def touch(self, agent: Agent) -> None:
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

    def strategy_heap(self, group: Group, strategy: str) -> list[tuple[object, str, int]]:
        """The group's heap for ``strategy``, built from its members on first use."""
        heap = group.heaps.get(strategy)
        if heap is None:
            heap = group.heaps[strategy] = self._build(group, strategy)
        return heap

    def _key(self, strategy: str, a: Agent) -> object:
        return strategies.key(strategy, a, self.policy.weights)

    def _members(self, group: Group) -> list[Agent]:
        agents = (self.agents[agent_id] for agent_id in sorted(group.members))
        return [a for a in agents if a.available()]

    def _compact(self, group: Group) -> None:
        group.heap = [(a.load / a.capacity, a.agent_id, a.version) for a in self._members(group)]
        heapq.heapify(group.heap)

    def _build(self, group: Group, strategy: str) -> list[tuple[object, str, int]]:
        heap = [(self._key(strategy, a), a.agent_id, a.version) for a in self._members(group)]
        heapq.heapify(heap)
        return heap

    def add_load(self, agent_id: str | None, delta: int) -> None:
        """One task more (or less) held or in flight on ``agent_id``, and on its model."""
        agent = self.agents.get(agent_id) if agent_id is not None else None
        if agent is not None:
            agent.load += delta
            if agent.model is not None and agent.model in self.model_load:
                self._add_model_load(agent.model, delta)
            self.touch(agent)

    def _add_model_load(self, model: str, delta: int) -> None:
        self.model_load[model] = self.model_load.get(model, 0) + delta
        if delta < 0 and self.model_blocked.get(model):
            limit = self.limiter.concurrency("model", model)
            if limit is None or self.model_load[model] < limit:
                for agent_id in sorted(self.model_blocked.pop(model)):
                    self.touch(self.agents[agent_id])

    def score(self, agent_id: str) -> float:
        """The agent's performance score under the pool's policy, as of the latest event."""
        return self.performance.profile(agent_id).score(self.policy.performance, self.now)

    def _refresh_perf(self, agent_id: str) -> None:
        agent = self.agents.get(agent_id)
        if agent is None:
            return
        perf = self.score(agent_id)
        if perf != agent.perf:
            agent.perf = perf
            if any("performance_weighted" in g.heaps for g in self.groups.values()):
                self.touch(agent)

    # -- tasks in the queues -----------------------------------------------------------------
    def enqueue(self, task: Task) -> None:
        """(Back) into its queue: a new version, so older heap entries of it are stale."""
        task.status, task.agent_id = "queued", None
        task.qversion += 1
        queue = self._queue(task.req)
        heapq.heappush(queue.heap, (-task.priority, task.arrival, task.task_id, task.qversion))
        self.work.add(task.req)
        if task.waiting is not None or queue.waiting is not None:
            queue.fresh.append(task)  # its reason may differ from the queue's: checked next look
        if not task.flagged:
            self.to_mark.append(task)

    def compact(self) -> None:
        """Drop what only a look at the queues would have dropped: heap entries no longer live (the
        task ended, was queued again since, or is held: ``choice._head`` pops such an entry when it
        reaches the top) and ended tasks still listed to check or to note (skipped there). A fold of
        history never looks, so a rebuilt view held an entry and the ``Task`` of every task ever
        queued until its first schedule; compacted, every later decision is the same (the entries
        kept are unique, so the heap pops them in the same order)."""
        tasks = self.tasks
        for queue in self.queues.values():
            live = [entry for entry in queue.heap if choice.live(tasks.get(entry[2]), entry[3])]
            if len(live) < len(queue.heap):
                heapq.heapify(live)
                queue.heap = live
            queue.fresh = [t for t in queue.fresh if tasks.get(t.task_id) is t]
        self.to_mark = [t for t in self.to_mark if tasks.get(t.task_id) is t]

    def waits(self, task: Task, why: Waiting | None, *, look: bool = True) -> None:
        """The log now says why ``task`` waits (None: busy agents): a look at its queue checks that
        still holds, since things may have changed while the event was on its way (soon, or with
        ``look=False`` when something else wakes the queue up, e.g. a deferral's end: looking now
        would only defer it again)."""
        if task.noting:
            return  # a note issued since lands after this event on the log, and replaces it
        task.waiting = why
        queue = self.queues.get(task.req)
        if queue is not None and task.status == "queued":
            queue.fresh.append(task)
            if look:
                self.work.add(task.req)

    def recheck(self, caps: frozenset[str], *, blocked: bool = True) -> None:
        """An agent with ``caps`` changed in a way that may change why the tasks it could serve
        wait: their queues are looked at again. ``blocked``: it can no longer take work (unhealthy,
        breaker open, gone), so any queue may now wait for another reason; else it came (back)
        and only a queue already waiting for something other than busy agents may change."""
        for q in self.served_queues(caps):
            if q.heap and (blocked or q.waiting is not None):
                self.work.add(q.req)

    def coverage_lost(self) -> None:
        """After agents left or the policy changed: queued tasks nobody can serve any more."""
        for req, queue in self.queues.items():
            if self.covered(req)[0]:
                continue
            for _, _, task_id, version in queue.heap:
                task = self.tasks.get(task_id)  # None: it ended, an entry left behind
                if task is not None and task.qversion == version and task.status == "queued" \
                        and not task.flagged:
                    self.to_mark.append(task)
        # Tasks parked under a spent workflow budget left the heaps but are still queued: a
        # coordinator rebuilt from the log would see them in the heaps, so treat them alike.
        for parked in self.parked.values():
            for task in parked:
                if task.status == "queued" and task.pending is None and not task.flagged \
                        and not self.covered(task.req)[0]:
                    self.to_mark.append(task)

    def budget_restored(self, key: tuple[str, str]) -> None:
        """A spent budget was raised above what it has spent: what it held back may go again."""
        self.exhausted.discard(key)
        scope, scope_id = key
        if scope == "workflow":
            for task in self.parked.pop(scope_id, []):
                if task.status == "queued" and task.pending is None:
                    self.enqueue(task)
            # Its tasks still in the queues were passed over while the budget was spent (a queue's
            # new reason is not noted on a parked task): their reason is looked at again.
            for req, queue in self.queues.items():
                for _, _, task_id, version in queue.heap:
                    queued = self.tasks.get(task_id)
                    if queued is not None and queued.workflow == scope_id and queued.qversion == version \
                            and queued.status == "queued":
                        queue.fresh.append(queued)
                        self.work.add(req)
        else:  # agents skipped while a pool or agent budget was spent get back into the heaps
            for agent in self.agents.values():
                self.touch(agent)
            self.work.update(req for req, q in self.queues.items() if q.heap)
