"""The coordinator's choice: which agent takes which queued task, and what else to ask the decider.

``schedule`` drains the view's queues worth trying, best task first (priority, then age); for
each it pops the best few agents of every eligible group under the task's strategy (or the
pool's default, ``strategies``), so a decision costs O(groups * log agents), not O(agents). It
issues ``AssignTask`` with its selection audit, ``MarkTaskUnassignable`` (no registered agent
matches enough of a task's capabilities), ``DeferTask`` (capable agents exist but all are rate
limited), ``NoteTaskWaiting`` (why queued tasks wait changed: budgets spent, breakers open, agents
unhealthy, or back to busy agents; never one per task for busy agents, the read model's default)
and, from the scaling reactor, ``DecideScaling``. Every strategy ranks the agents covering more of
a task's inferred capabilities first, then by its own order.

Command ids are derived from the history (task, assignments so far, rejections so far), so a
coordinator rebuilt after a crash re-issues the same ids and the decider's idempotency drops the
repeats. An ``AssignTask`` holds its request and its model call's token estimate in the rate
limits until its ``TaskAssigned`` takes them (``ratelimit``), so the choices in between count them.
The clock is read only to measure the audit's ``decision_us``; "now" for rate limits is the view's
latest event time. No I/O.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeGuard

from contracts import Command, derived_id
from contracts import commands as c
from services.coordination import strategies
from services.coordination.records import Agent, Group, Queue, Task, Waiting
from services.domain.capabilities import specialization

if TYPE_CHECKING:
    from services.coordination.view import PoolView

STRATEGY = "capability_match+least_loaded"  # the audit label of the default strategy
AUDIT_TOP = 3  # candidates kept in each assignment's audit (the winner and the runners-up)
RATE_LIMITED = "RATE_LIMITED"
BUSY = "all_capable_agents_busy"  # the default reason: never noted but to replace another
# No capable agent is registered: MarkTaskUnassignable says so (TaskUnassignable).
_NO_CAPABLE = Waiting("no_capable_agent")
# Why capable agents may not take a task, in the order that breaks a tie between equal counts.
_BLOCKED = ("budget_exceeded", "circuit_open", "agents_unhealthy")


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
    if v.limiter.freed:
        _wake(v)
    if v.to_mark:
        out += _marks(v)
    out += v.scaler.take()  # type: ignore[arg-type]
    if ("pool", v.pool) in v.exhausted:
        # Nothing new starts until the pool's budget is raised; its queued tasks say so.
        spent = Waiting("budget_exceeded", "pool", v.pool)
        for req in sorted(v.work, key=sorted):
            out += reconcile(v, v.queues[req], spent)
        v.work.clear()  # back when the budget is raised (PoolView.budget_restored)
        return out
    while v.work:
        best: tuple[tuple[int, int], Queue, Task] | None = None
        for req in list(v.work):
            queue = v.queues[req]
            head = _head(v, queue, out)
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
        picks = _pick(v, strategy, task.req, task.preferred, full, AUDIT_TOP, skipped, task)
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
                picks = _pick(v, strategy, task.req, task.preferred, levels[i:j], AUDIT_TOP, skipped,
                              task)
                i = j
            partial = bool(picks)
        if not picks:
            v.work.discard(queue.req)  # nothing free can take these until capacity frees
            if skipped.get("rate_limited") or any(g.limited for g in groups):
                out += _defer(v, task)
            else:
                out += reconcile(v, queue, _why(v, task.req, groups))
            continue
        agent = picks[0].agent
        weights = v.policy.weights
        inferred = bool(task.preferred)
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
                                        "load": round(p.agent.load / p.agent.capacity, 6),
                                        # The share of the inferred capabilities it covers, which
                                        # every strategy ranks by first.
                                        **({"preferred": round(p.spec, 6)} if inferred else {})})
                for p in picks
            ),
            eligible=eligible,
            considered=considered,
            decision_us=round((clock() - started) * 1e6, 2),
            capability_gap=tuple(sorted(task.req - agent.caps)),
            preferred=tuple(sorted(task.preferred)),
            skipped=skipped,
        )
        command_id = derived_id("assign", v.pool, task.task_id, task.assigned, task.rejected)
        task.pending = (command_id, agent.agent_id)
        heapq.heappop(queue.heap)
        v.tick += 1
        agent.picked = v.tick
        if v.limiter:  # taken when TaskAssigned is seen; held until then
            v.limiter.hold(task.task_id, agent.agent_id, agent.model, task.tokens(agent.max_tokens))
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


def _usable(v: PoolView, a: Agent, skipped: dict[str, int], task: Task | None) -> bool | None:
    """True: may take ``task`` now; False: drop its heap entry; None: rate limited (parked).

    Rate limited includes a token bucket that cannot hold the task's estimate: the agent is
    parked until it can, so smaller tasks behind this one do not overtake it on that agent (a
    large prompt is not starved by a stream of small ones)."""
    if v.exhausted and ("agent", a.agent_id) in v.exhausted:
        return False  # dropped from the heap; re-pushed when its budget is raised
    if a.model is not None and a.model in v.model_load:
        limit = v.limiter.concurrency("model", a.model)
        if limit is not None and v.model_load[a.model] >= limit:
            v.model_blocked.setdefault(a.model, set()).add(a.agent_id)
            skipped["model_concurrency"] = skipped.get("model_concurrency", 0) + 1
            return False
    if v.limiter:
        tokens = 0 if task is None or a.max_tokens is None else task.tokens(a.max_tokens)
        at = v.limiter.ready_at(a.agent_id, a.model, v.now, tokens)
        if at > v.now:
            heapq.heappush(v.limited, (at, a.agent_id, a.version))
            v.groups[a.caps].limited += 1
            a.version += 1  # out of every heap until it is free again
            skipped[RATE_LIMITED.lower()] = skipped.get(RATE_LIMITED.lower(), 0) + 1
            return None
    return True


def _pick(v: PoolView, strategy: str, req: frozenset[str], preferred: frozenset[str],
          groups: list[tuple[float, Group]], k: int, skipped: dict[str, int],
          task: Task | None = None) -> list[_Pick]:
    """The best ``k`` usable agents of ``groups`` under ``strategy`` (for ``task``'s estimate)."""
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
        # Every strategy first prefers the groups covering more of the capabilities inferred from
        # the task's data (a specialist over a generalist), then applies its own order.
        tier = -spec if preferred else 0.0
        taken: list[tuple[Any, str, int]] = []
        while heap and len(taken) < k:
            entry = heapq.heappop(heap)
            a = agents[entry[1]]
            if a.version != entry[2] or not a.available():
                continue
            if not _usable(v, a, skipped, task):
                continue
            taken.append(entry)
        for entry in taken:
            heapq.heappush(heap, entry)
            a = agents[entry[1]]
            if strategy == "performance_weighted":
                rank: tuple[Any, ...] = (tier, -(part - entry[0]), entry[1])
            elif strategy == "capability_based":
                rank = (-part, entry[0], entry[1])
            else:
                rank = (tier, entry[0], entry[1])
            best.append(_Pick(a, rank, match, spec))
    best.sort(key=lambda p: p.rank)
    return best[:k]


def live(task: Task | None, version: int) -> TypeGuard[Task]:
    """Whether a heap entry of ``task`` (None: it ended, ``handlers.forget``) at ``version`` may
    still be scheduled; a stale one is popped when it reaches the top."""
    return task is not None and task.qversion == version and task.status == "queued" and task.pending is None


def _head(v: PoolView, queue: Queue, out: list[Assignment]) -> Task | None:
    """The best schedulable task of ``queue``, dropping stale entries on the way (and parking the
    tasks of a workflow whose budget is spent, noting why they wait)."""
    heap = queue.heap
    while heap:
        _, _, task_id, version = heap[0]
        task = v.tasks.get(task_id)
        if not live(task, version):
            heapq.heappop(heap)
            continue
        if task.workflow is not None and ("workflow", task.workflow) in v.exhausted:
            heapq.heappop(heap)  # waits, parked, until the workflow's budget is raised
            v.parked.setdefault(task.workflow, []).append(task)
            spent = Waiting("budget_exceeded", "workflow", task.workflow)
            if task.waiting != spent and not task.flagged:  # no capable agent says more
                out.append(_note(v, task, spent))
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


def _wake(v: PoolView) -> None:
    """Rate limits got units back (a reservation settled for less or given back, an assignment
    rejected): the agents parked waiting for them go back into the heaps now, not when due."""
    freed, v.limiter.freed = v.limiter.freed, set()
    if not v.limited:
        return
    kept: list[tuple[float, str, int]] = []
    for entry in v.limited:
        agent = v.agents[entry[1]]
        by_model = agent.model is not None and ("model", agent.model) in freed
        if by_model or ("agent", agent.agent_id) in freed:
            group = v.groups[agent.caps]
            group.limited = max(0, group.limited - 1)
            if agent.version == entry[2] + 1:  # still parked by us, nothing else changed
                v.touch(agent)
        else:
            kept.append(entry)
    if len(kept) < len(v.limited):
        heapq.heapify(kept)
        v.limited = kept


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
        command_id = derived_id("unassignable", v.pool, task.task_id, task.assigned, task.marks)
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
    # Rounded up to the millisecond: a wake-up a hair before the agent is free would find it still
    # parked, and nothing else would look at the task again.
    delay = max(0.001, math.ceil((v.limited[0][0] - v.now) * 1000) / 1000)
    command_id = derived_id("defer", v.pool, task.task_id, task.assigned, task.deferred)
    task.deferring = command_id
    cmd = c.DeferTask(task_id=task.task_id, reason=RATE_LIMITED, delay_s=delay)
    return [Assignment(v.pool, command_id, cmd, task.correlation)]


def _why(v: PoolView, req: frozenset[str], groups: list[Group]) -> Waiting | None:
    """Why no capable agent took a task of ``req`` just now: None when one of them is busy (it
    will free up: the ordinary case, found at the first such agent), else what holds them all."""
    blocked: dict[str, list[Agent]] = {}
    levels = [g for _, g in v.partial_groups(req)] if v.policy.min_capability_match < 1.0 else []
    for group in (*groups, *levels):
        for agent_id in group.members:
            a = v.agents[agent_id]
            if not a.healthy:
                blocked.setdefault("agents_unhealthy", []).append(a)
            elif a.breaker == "open":
                blocked.setdefault("circuit_open", []).append(a)
            elif v.exhausted and ("agent", agent_id) in v.exhausted:
                blocked.setdefault("budget_exceeded", []).append(a)
            else:
                return None  # full, running its half-open trial, or at a concurrency limit
    if not blocked:
        return _NO_CAPABLE
    code = max(_BLOCKED, key=lambda k: (len(blocked.get(k, ())), -_BLOCKED.index(k)))
    agents = sorted(blocked[code], key=lambda a: a.agent_id)
    names = tuple(a.agent_id for a in agents[:c.MAX_WAITING_AGENTS])
    if code == "budget_exceeded":
        return Waiting(code, "agent", names[0] if len(agents) == 1 else None, names)
    if code == "circuit_open":
        return Waiting(code, agents=names, until=min(a.reopen_at for a in agents))
    return Waiting(code, agents=names)


def reconcile(v: PoolView, queue: Queue, why: Waiting | None) -> list[Assignment]:
    """Put on the log why the queued tasks of ``queue`` wait, for those whose reason changed.

    All of them when the queue's reason changed (a budget spent or raised, circuits opening or
    closing: rare), else only those queued or given another reason since the last look. The
    ordinary reason, every capable agent busy, is the read model's default: a queue of busy agents
    costs no events at all, however many tasks wait in it.
    """
    if why != queue.waiting:
        queue.waiting = why
        queue.fresh.clear()
        live = ((v.tasks.get(task_id), version) for _, _, task_id, version in queue.heap)
        tasks: Iterable[Task] = (t for t, version in live if t is not None and t.qversion == version)
    elif queue.fresh:
        tasks, queue.fresh = queue.fresh, []
    else:
        return []
    # No capable agent: MarkTaskUnassignable tells each task first (TaskUnassignable); a note
    # only gives that reason back to a marked task that has since been given another.
    marked = why == _NO_CAPABLE
    waiting = [t for t in tasks if t.status == "queued" and t.pending is None and t.waiting != why
               and (t.flagged or not marked) and not _parked(v, t)]
    waiting.sort(key=lambda t: (-t.priority, t.arrival))
    out: list[Assignment] = []
    for task in waiting:
        if task.waiting != why:  # a task may be listed twice
            out.append(_note(v, task, why))
    return out


def _parked(v: PoolView, task: Task) -> bool:
    """Held back by its workflow's spent budget (``_head`` noted that reason when parking it)."""
    return task.workflow is not None and bool(v.exhausted) and ("workflow", task.workflow) in v.exhausted


def _note(v: PoolView, task: Task, why: Waiting | None) -> Assignment:
    """NoteTaskWaiting: ``why`` (None: all capable agents busy) is now the task's reason."""
    command_id = derived_id("waiting", v.pool, task.task_id, task.assigned, task.notes + task.noting)
    task.noting += 1
    task.waiting = why
    if why is None:
        cmd = c.NoteTaskWaiting(task_id=task.task_id, code=BUSY)
    else:
        cmd = c.NoteTaskWaiting(
            task_id=task.task_id, code=why.code, scope=why.scope, scope_id=why.scope_id,
            agents=why.agents, until=None if why.until is None else datetime.fromtimestamp(why.until, UTC))
    return Assignment(v.pool, command_id, cmd, task.correlation)
