"""Selection strategies: how the coordinator ranks agents that may take a task.

Each strategy orders the free agents of one capability group by a key that depends only on the
agent (so it can live in a lazy heap per group and be found in O(log n)); a per-group part that
depends on the task (capability match, specialization) is added when groups are compared. Lower
keys come first. Scores in the audit are "higher is better". Pure functions, no I/O, no clock.

- ``least_loaded`` (the default): lowest load ratio (held / capacity), then agent id.
- ``least_connections``: fewest tasks held (absolute), then agent id.
- ``round_robin``: least recently given a task (a rotating cursor kept as a heap of last picks),
  then registration order.
- ``weighted``: weighted least connections, (held + 1) / weight: work spreads in proportion to
  the agents' weights (RegisterAgent.weight).
- ``resource_based``: lowest reported resource use (mean of the last heartbeat's cpu and memory,
  in percent), then load ratio; agents that never reported count their load ratio.
- ``capability_based``: the most specialised capability group first (see ``inference``), then
  the lowest load ratio in it.
- ``performance_weighted``: highest ``capability*w_c + performance*w_p + specialization*w_s +
  (1 - load ratio)*w_l`` (weights from the pool policy; performance from ``performance``).
"""

from __future__ import annotations

from typing import Any, Protocol

from contracts.commands import STRATEGIES, ScoreWeights

DEFAULT = "least_loaded"
# Strategies ordered by the group's least-loaded heap (no heap of their own).
USES_LOAD_HEAP = frozenset({"least_loaded", "capability_based"})
KNOWN = frozenset(STRATEGIES)


class AgentLike(Protocol):
    agent_id: str
    load: int
    capacity: int
    weight: float
    cpu: float | None
    memory: float | None
    picked: int
    order: int
    perf: float


def ratio(a: AgentLike) -> float:
    return a.load / a.capacity


def resource_use(a: AgentLike) -> float:
    """Share of the agent's machine in use, 0..1, from its last heartbeat (percentages)."""
    known = [min(max(x / 100.0, 0.0), 1.0) for x in (a.cpu, a.memory) if x is not None]
    if not known:
        return ratio(a)
    return sum(known) / len(known)


def key(strategy: str, a: AgentLike, weights: ScoreWeights) -> Any:
    """The heap key of an agent under ``strategy`` (lower is better)."""
    match strategy:
        case "least_connections":
            return a.load
        case "round_robin":
            return (a.picked, a.order)
        case "weighted":
            return (a.load + 1) / a.weight
        case "resource_based":
            return (resource_use(a), ratio(a))
        case "performance_weighted":
            return -(weights.performance * a.perf + weights.load * (1.0 - ratio(a)))
        case _:
            return ratio(a)


def group_part(strategy: str, match: float, spec: float, weights: ScoreWeights) -> float:
    """The task-dependent part of a group's score (added to the agent part for ranking)."""
    if strategy == "performance_weighted":
        return weights.capability * match + weights.specialization * spec
    if strategy == "capability_based":
        return spec
    return 0.0


def score(strategy: str, a: AgentLike, match: float, spec: float, weights: ScoreWeights) -> float:
    """The audit score (higher is better) of an agent for a task under ``strategy``."""
    match strategy:
        case "least_connections":
            return 1.0 / (1 + a.load)
        case "weighted":
            return a.weight / (a.load + 1)
        case "resource_based":
            return 1.0 - resource_use(a)
        case "capability_based":
            return spec
        case "performance_weighted":
            return (
                weights.capability * match
                + weights.performance * a.perf
                + weights.specialization * spec
                + weights.load * (1.0 - ratio(a))
            )
        case _:
            return 1.0 - ratio(a)
