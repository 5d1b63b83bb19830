"""The coordinator's choice: which agent takes which queued task, and what else to ask the decider.

``schedule`` drains the view's queues worth trying, best task first (priority, then age); for
each it pops the best few agents of every eligible group under the task's strategy (or the
pool's default, ``strategies``), so a decision costs O(groups * log agents), not O(agents). It
issues ``AssignTask`` with its selection audit, ``MarkTaskUnassignable`` (no registered agent
matches enough of a task's capabilities), ``DeferTask`` (capable agents exist but all are rate
limited) and, from the scaling reactor, ``DecideScaling``.

Command ids are derived from the history (task, assignments so far, rejections so far), so a
coordinator rebuilt after a crash re-issues the same ids and the decider's idempotency drops the
repeats. The clock is read only to measure the audit's ``decision_us``; "now" for rate limits is
the view's latest event time. No I/O.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from contracts import Command
from contracts import commands as c
from services.coordination import strategies
from services.coordination.records import Agent, Group, Queue, Task
from services.domain.capabilities import specialization

if TYPE_CHECKING:
    from services.coordination.view import PoolView

STRATEGY = "capability_match+least_loaded"  # the audit label of the default strategy
AUDIT_TOP = 3  # candidates kept in each assignment's audit (the winner and the runners-up)
RATE_LIMITED = "RATE_LIMITED"


@dataclass(frozen=True, slots=True)
class Assignment:
    """A command the coordinator wants appended (an AssignTask, or another coordination command)."""

    pool: str
    command_id: str
    command: Command
    correlation: str | None


@dataclass(slots=True)
class _Pick:
    agent: Agent
    rank: tuple[Any, ...]
    match: float
    spec: float


def schedule(v: PoolView, clock: Callable[[], float] = time.perf_counter) -> list[Assignment]:
    """Assign as many queued tasks as free capacity allows: priority first, then age."""
    out: list[Assignment] = []
    if v.limited:
        _release_limited(v)
    if v.to_mark:
        out += _marks(v)
    out += v.scaler.take()  # type: ignore[arg-type]
    if ("pool", v.pool) in v.exhausted:
        return out  # nothing new starts until the pool's budget is raised
    while v.work:
        best: tuple[tuple[int, int], Queue, Task] | None = None
        for req in list(v.work):
            queue = v.queues[req]
            head = _head(v, queue)
            if head is None:
                v.work.discard(req)
            elif best is None or (-head.priority, head.arrival) < best[0]:
                best = ((-head.priority, head.arrival), queue, head)
        if best is None:
            break
        _, queue, task = best
        started = clock()
        strategy = task.strategy or v.policy.default_strategy
        skipped: dict[str, int] = {}
        groups = v.eligible_groups(task.req)
        considered = len(groups)
        full = [(1.0, g) for g in groups]
        picks = _pick(v, strategy, task.req, task.preferred, full, AUDIT_TOP, skipped)
        eligible = sum(g.size for g in groups)
        partial = False
        if not picks and v.policy.min_capability_match < 1.0:
            levels = v.partial_groups(task.req)
            considered += len(levels)
            eligible += sum(g.size for _, g in levels)
            i = 0
            while i < len(levels) and not picks:  # the best match level that has a free agent
                j = i
                while j < len(levels) and levels[j][0] == levels[i][0]:
                    j += 1
                picks = _pick(v, strategy, task.req, task.preferred, levels[i:j], AUDIT_TOP, skipped)
                i = j
            partial = bool(picks)
        if not picks:
            v.work.discard(queue.req)  # nothing free can take these until capacity frees
            if skipped.get("rate_limited") or any(g.limited for g in groups):
                out += _defer(v, task)
            continue
        agent = picks[0].agent
        weights = v.policy.weights
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
        command_id = f"assign:{v.pool}:{task.task_id}:{task.assigned}:{task.rejected}"
        task.pending = (command_id, agent.agent_id)
        heapq.heappop(queue.heap)
        v.tick += 1
        agent.picked = v.tick
        if v.limiter:
            v.limiter.on_assign(agent.agent_id, agent.model, v.now)
        v.add_load(agent.agent_id, +1)
        out.append(Assignment(v.pool, command_id,
                              c.AssignTask(task_id=task.task_id, agent_id=agent.agent_id, audit=audit,
                                           allow_partial=partial),
                              task.correlation))
    return out


def candidates(v: PoolView, req: frozenset[str], k: int = AUDIT_TOP) -> tuple[list[Agent], int]:
    """The ``k`` least-loaded eligible agents with free capacity, and how many groups looked."""
    groups = v.eligible_groups(req)
    skipped: dict[str, int] = {}
    picks = _pick(v, strategies.DEFAULT, req, frozenset(), [(1.0, g) for g in groups], k, skipped)
    return [p.agent for p in picks], len(groups)


def _usable(v: PoolView, a: Agent, skipped: dict[str, int]) -> bool | None:
    """True: may take a task now; False: drop its heap entry; None: rate limited (parked)."""
    if v.exhausted and ("agent", a.agent_id) in v.exhausted:
        return False  # dropped from the heap; re-pushed when its budget is raised
    if a.model is not None and a.model in v.model_load:
        limit = v.limiter.concurrency("model", a.model)
        if limit is not None and v.model_load[a.model] >= limit:
            v.model_blocked.setdefault(a.model, set()).add(a.agent_id)
            skipped["model_concurrency"] = skipped.get("model_concurrency", 0) + 1
            return False
    if v.limiter:
        at = v.limiter.ready_at(a.agent_id, a.model, v.now)
        if at > v.now:
            heapq.heappush(v.limited, (at, a.agent_id, a.version))
            v.groups[a.caps].limited += 1
            a.version += 1  # out of every heap until it is free again
            skipped[RATE_LIMITED.lower()] = skipped.get(RATE_LIMITED.lower(), 0) + 1
            return None
    return True


def _pick(v: PoolView, strategy: str, req: frozenset[str], preferred: frozenset[str],
          groups: list[tuple[float, Group]], k: int, skipped: dict[str, int]) -> list[_Pick]:
    """The best ``k`` usable agents of ``groups`` under ``strategy``."""
    weights = v.policy.weights
    agents = v.agents
    best: list[_Pick] = []
    own_heap = strategy not in strategies.USES_LOAD_HEAP
    for match, group in groups:
        if group.size <= 0:
            continue
        heap: list[tuple[Any, str, int]] = v.strategy_heap(group, strategy) if own_heap else group.heap
        spec = specialization(req, preferred, group.caps)
        part = strategies.group_part(strategy, match, spec, weights)
        taken: list[tuple[Any, str, int]] = []
        while heap and len(taken) < k:
            entry = heapq.heappop(heap)
            a = agents[entry[1]]
            if a.version != entry[2] or not a.available():
                continue
            if not _usable(v, a, skipped):
                continue
            taken.append(entry)
        for entry in taken:
            heapq.heappush(heap, entry)
            a = agents[entry[1]]
            if strategy == "performance_weighted":
                rank: tuple[Any, ...] = (-(part - entry[0]), entry[1])
            elif strategy == "capability_based":
                rank = (-part, entry[0], entry[1])
            else:
                rank = (entry[0], entry[1])
            best.append(_Pick(a, rank, match, spec))
    best.sort(key=lambda p: p.rank)
    return best[:k]


def _head(v: PoolView, queue: Queue) -> Task | None:
    """The best schedulable task of ``queue``, dropping stale entries on the way."""
    heap = queue.heap
    while heap:
        _, _, task_id, version = heap[0]
        task = v.tasks[task_id]
        if task.qversion != version or task.status != "queued" or task.pending is not None:
            heapq.heappop(heap)
            continue
        if task.workflow is not None and ("workflow", task.workflow) in v.exhausted:
            heapq.heappop(heap)  # waits, parked, until the workflow's budget is raised
            v.parked.setdefault(task.workflow, []).append(task)
            continue
        return task
    return None


def _release_limited(v: PoolView) -> None:
    """Agents whose rate limit refilled by now go back into the heaps."""
    while v.limited and v.limited[0][0] <= v.now:
        _, agent_id, version = heapq.heappop(v.limited)
        agent = v.agents[agent_id]
        v.groups[agent.caps].limited = max(0, v.groups[agent.caps].limited - 1)
        if agent.version == version + 1:  # still parked by us, nothing else changed
            v.touch(agent)


def _marks(v: PoolView) -> list[Assignment]:
    """MarkTaskUnassignable for the tasks to check that no registered agent can serve."""
    out: list[Assignment] = []
    cache: dict[frozenset[str], tuple[bool, float, tuple[str, ...]]] = {}
    for task in v.to_mark:
        if task.status != "queued" or task.pending is not None or task.flagged:
            continue
        if task.marking is not None:
            continue
        cover = cache.get(task.req)
        if cover is None:
            cover = cache[task.req] = v.covered(task.req)
        covered, best, gap = cover
        if covered:
            continue
        command_id = f"unassignable:{v.pool}:{task.task_id}:{task.assigned}:{task.marks}"
        task.marking = command_id
        out.append(Assignment(v.pool, command_id, c.MarkTaskUnassignable(
            task_id=task.task_id, missing=gap, best_match=round(best, 6),
            threshold=v.policy.min_capability_match), task.correlation))
    v.to_mark.clear()
    return out


def _defer(v: PoolView, task: Task) -> list[Assignment]:
    """Every capable free agent is rate limited: tell the log, and wake up when one is free."""
    if task.deferring is not None or not v.limited:
        return []
    delay = max(0.001, round(v.limited[0][0] - v.now, 3))
    command_id = f"defer:{v.pool}:{task.task_id}:{task.assigned}:{task.deferred}"
    task.deferring = command_id
    cmd = c.DeferTask(task_id=task.task_id, reason=RATE_LIMITED, delay_s=delay)
    return [Assignment(v.pool, command_id, cmd, task.correlation)]
