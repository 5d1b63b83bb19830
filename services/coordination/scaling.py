"""The scaling reactor: per agent kind, from queue depth and utilization, decides how many agents
the fleet should have, and asks the decider to record it (``DecideScaling`` -> ``ScalingDecided``).

Policies come from ``ScalingPolicySet`` events. Evaluation happens on every event of the pool, at
that event's time (never the wall clock), so the same events always give the same decisions,
however they are batched. Rules, per kind with a policy:

- below ``min_agents`` or above ``max_agents``: go to the bound;
- otherwise desired = ceil(agents * utilization / target_utilization) (as Kubernetes' HPA), raised
  to cover the queue beyond ``queue_threshold`` at the kind's mean capacity, within the bounds;
- scale up at once; scale down only after it was recommended for ``stability_window_s`` without a
  break, to the highest count recommended in that window; a scale-up to fewer agents than the
  previous decision asked for (still on their way) lowers the target too, so it also waits;
- never within ``cooldown_s`` of the previous decision for the kind, never one in flight, and never
  the same target twice in a row (the fleet has been told; external autoscalers act on it).

Utilization is held tasks / capacity of the kind's active agents. Queue depth counts queued tasks
whose required capabilities agents of the kind can cover (the union of capabilities ever registered
for the kind), or whose ``data.agent_kind`` names it. Pure: no I/O.

Until a pool has a scaling policy the reactor folds nothing (it costs nothing per event); the
first policy bootstraps it from the state the coordinator already keeps (``bootstrap``), at the
same event live and on replay.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from contracts import Envelope, derived_id
from contracts import commands as c
from contracts import event_types as e
from services.domain.capabilities import capability_set


@dataclass(slots=True)
class _Kind:
    active: int = 0
    capacity: int = 0
    held: int = 0
    caps: frozenset[str] = frozenset()  # union of capabilities ever registered for the kind
    decided: int = 0
    rejected: int = 0
    pending: str | None = None
    last_at: float | None = None
    last: tuple[int, int] | None = None  # (from, to) of the last decision
    low_since: float | None = None
    window: deque[tuple[float, int]] = field(default_factory=deque)


@dataclass(frozen=True, slots=True)
class ScalingCommand:
    """A command the scaler wants appended (same shape as the coordinator's Assignment)."""

    pool: str
    command_id: str
    command: c.DecideScaling
    correlation: str | None


class Scaler:
    """The scaling reactor of one pool."""

    def __init__(self, pool: str) -> None:
        self.pool = pool
        self.policies: dict[str, e.ScalingPolicySet] = {}
        self.kinds: dict[str, _Kind] = {}
        self.agents: dict[str, tuple[str, int, bool]] = {}  # id -> (kind, capacity, active)
        self.tasks: dict[
            str, tuple[str, frozenset[str], str | None, str | None]
        ] = {}  # status, req, kind, agent
        self.queued: Counter[frozenset[str]] = Counter()
        self.queued_for: Counter[str] = Counter()  # tasks naming their agent kind
        self.out: list[ScalingCommand] = []

    def kind(self, name: str) -> _Kind:
        k = self.kinds.get(name)
        if k is None:
            k = self.kinds[name] = _Kind()
        return k

    # -- the fold ----------------------------------------------------------------------------------
    def _set_task(self, task_id: str, status: str, agent_id: str | None = None) -> None:
        old = self.tasks.get(task_id)
        if old is None:
            return
        before, req, named, holder = old
        if before == "queued":
            if named is None:
                self.queued[req] -= 1
                if not self.queued[req]:
                    del self.queued[req]
            else:
                self.queued_for[named] -= 1
        elif before == "held" and holder is not None and holder in self.agents:
            self.kind(self.agents[holder][0]).held -= 1
        if status == "queued":
            if named is None:
                self.queued[req] += 1
            else:
                self.queued_for[named] += 1
        elif status == "held" and agent_id is not None and agent_id in self.agents:
            self.kind(self.agents[agent_id][0]).held += 1
        if status == "done":
            del self.tasks[task_id]  # nothing follows a task's end
        else:
            self.tasks[task_id] = (status, req, named, agent_id if status == "held" else None)

    def bootstrap(
        self,
        agents: Iterable[tuple[str, str, int, bool, frozenset[str]]],
        tasks: Iterable[tuple[str, str, frozenset[str], str | None, str | None]],
    ) -> None:
        """Start from the pool as it is: agents (id, kind, capacity, active, capabilities) and
        tasks (id, status queued|held|waiting|done, required, named kind, holder)."""
        for agent_id, kind, capacity, active, caps in agents:
            k = self.kind(kind)
            k.caps = k.caps | caps
            if active:
                k.active += 1
                k.capacity += capacity
            self.agents[agent_id] = (kind, capacity, active)
        for task_id, status, req, named, holder in tasks:
            self.tasks[task_id] = ("new", req, named, None)
            self._set_task(task_id, status, holder)

    def observe(self, env: Envelope) -> None:
        ev = env.data
        if not self.policies and not isinstance(ev, e.ScalingPolicySet):
            return  # nothing to scale: see ``bootstrap``
        match ev:
            case e.ScalingPolicySet():
                self.policies[ev.agent_kind] = ev
            case e.ScalingDecided():
                k = self.kind(ev.agent_kind)
                k.decided += 1
                k.pending = None
                k.last_at, k.last = env.time.timestamp(), (ev.from_agents, ev.to_agents)
                k.window.clear()
                k.low_since = None
            case e.CommandRejected() if ev.command_type == "DecideScaling":
                name = str(ev.details.get("agent_kind") or ev.details.get("subject") or env.subject or "")
                asked = self.kinds.get(name)
                if asked is not None and asked.pending == env.commandid:
                    asked.pending = None
                    asked.rejected += 1
            case e.AgentRegistered():
                old = self.agents.get(ev.agent_id)
                if old is not None and old[2]:
                    ko = self.kind(old[0])
                    ko.active -= 1
                    ko.capacity -= old[1]
                k = self.kind(ev.kind)
                k.active += 1
                k.capacity += ev.capacity
                k.caps = k.caps | frozenset(ev.capabilities)
                self.agents[ev.agent_id] = (ev.kind, ev.capacity, True)
            case e.AgentDeregistered():
                old = self.agents.get(ev.agent_id)
                if old is not None and old[2]:
                    k = self.kind(old[0])
                    k.active -= 1
                    k.capacity -= old[1]
                    self.agents[ev.agent_id] = (old[0], old[1], False)
            case e.TaskSubmitted():
                named = ev.data.get("agent_kind")
                self.tasks[ev.task_id] = (
                    "new",
                    capability_set(ev.required_capabilities),
                    None if named is None else str(named),
                    None,
                )
                self._set_task(ev.task_id, "queued")
            case e.TaskAssigned():
                self._set_task(ev.task_id, "held", ev.agent_id)
            case e.TaskRequeued() | e.TaskReassigned():
                self._set_task(ev.task_id, "queued")
            case e.TaskRetryScheduled():
                self._set_task(ev.task_id, "waiting")
            case e.TaskCompleted() | e.TaskFailed() | e.TaskCancelled():
                self._set_task(ev.task_id, "done")
            case _:
                pass
        if self.policies:
            now = env.time.timestamp()
            for name in self.policies:
                self._evaluate(name, now)

    # -- decisions ---------------------------------------------------------------------------------
    def metrics(self, name: str) -> dict[str, float]:
        k = self.kind(name)
        depth = self.queued_for.get(name, 0) + sum(n for req, n in self.queued.items() if req <= k.caps)
        util = k.held / k.capacity if k.capacity else (1.0 if depth else 0.0)
        return {
            "agents": float(k.active),
            "capacity": float(k.capacity),
            "held": float(k.held),
            "utilization": round(util, 6),
            "queue_depth": float(depth),
        }

    def _evaluate(self, name: str, now: float) -> None:
        p = self.policies[name]
        k = self.kind(name)
        m = self.metrics(name)
        cur, util, depth = k.active, m["utilization"], int(m["queue_depth"])
        target: int | None = None
        reason = ""
        if cur < p.min_agents:
            target, reason = p.min_agents, f"{cur} agents is below min_agents {p.min_agents}"
        elif cur > p.max_agents:
            target, reason = p.max_agents, f"{cur} agents is above max_agents {p.max_agents}"
        else:
            desired = math.ceil(cur * util / p.target_utilization - 1e-9) if cur else (1 if depth else 0)
            if depth > p.queue_threshold:
                per = k.capacity / cur if cur else 1.0
                desired = max(desired, cur + math.ceil((depth - p.queue_threshold) / max(per, 1.0)))
            desired = min(max(desired, p.min_agents), p.max_agents)
            k.window.append((now, desired))
            while k.window and k.window[0][0] < now - p.stability_window_s:
                k.window.popleft()
            m["desired"] = float(desired)
            if desired > cur:
                k.low_since = None
                target = desired
                if depth > p.queue_threshold:
                    reason = f"queue depth {depth} above threshold {p.queue_threshold}"
                else:
                    reason = f"utilization {util:.2f} above target {p.target_utilization:.2f}"
            elif desired < cur:
                if k.low_since is None:
                    k.low_since = now
                if now - k.low_since >= p.stability_window_s:
                    target = max(d for _, d in k.window)
                    reason = (
                        f"utilization {util:.2f} below target {p.target_utilization:.2f} "
                        f"for {p.stability_window_s:g}s"
                    )
            else:
                k.low_since = None
        if target is None or target == cur or k.pending is not None:
            return
        if k.last_at is not None and now - k.last_at < p.cooldown_s:
            return
        if k.last is not None and k.last[1] == target:
            return  # already asked for: the fleet is on its way (or an operator holds it back)
        if (k.last is not None and k.last_at is not None and p.min_agents <= cur < target < k.last[1]
                and now - k.last_at < p.stability_window_s):
            # More were asked for and are still on their way (an autoscaler takes a while to start
            # them): a smaller ask now would lower the fleet's target, a scale-down, so it waits
            # out the stability window like any other (HPA's scale-down stabilization). Below
            # min_agents the bound applies at once.
            return
        command_id = derived_id("scale", self.pool, name, k.decided, k.rejected)
        k.pending = command_id
        self.out.append(
            ScalingCommand(
                self.pool,
                command_id,
                c.DecideScaling(agent_kind=name, from_agents=cur, to_agents=target, reason=reason, metrics=m),
                None,
            )
        )

    def take(self) -> list[ScalingCommand]:
        """The decisions made since the last call that are still in flight (a view rebuilt from
        history has seen most of its own decisions recorded already: those are not sent again)."""
        out, self.out = self.out, []
        return [x for x in out if self.kind(x.command.agent_kind).pending == x.command_id]
