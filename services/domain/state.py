"""The decider's view of one pool: agents, tasks, resources, costs, budgets, timers, policies and
seen commands.

Plain mutable records owned by a single decider loop; built only by ``evolve``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from contracts import event_types as e
from contracts.commands import PoolPolicy, RetryPolicy
from services.domain.prices import BUILTIN, Prices
from services.workflows.machine import Run

DEFAULT_POLICY = PoolPolicy()


@dataclass(slots=True)
class AgentState:
    agent_id: str
    kind: str
    capabilities: frozenset[str]
    capacity: int
    active: bool = True
    tasks: set[str] = field(default_factory=set)  # tasks it holds (assigned or running)
    allocations: set[str] = field(default_factory=set)
    heartbeat_timeout_s: float = 30.0
    weight: float = 1.0
    healthy: bool = True
    breaker: str = "closed"  # closed | open | half_open
    failures: int = 0  # consecutive failed runs (reset by a success)
    name: str = ""  # as registered: a SubmitTask's agent_name may name it
    # Its defaults for the tasks it runs (None: the task's own retry policy, the pool's breaker).
    retry: RetryPolicy | None = None
    breaker_threshold: int | None = None
    breaker_cooldown_s: float | None = None


@dataclass(slots=True)
class TaskState:
    task_id: str
    type: str
    priority: int
    required: frozenset[str]
    # The workflow its data names (``contracts.budgets.workflow_of``): its costs count against that
    # workflow's budget. The data itself, and the action and parameters, stay on the log: state the
    # decider keeps for every task ever submitted must not grow with what a client puts in one.
    workflow: str | None
    status: str = "queued"  # queued|assigned|running|retrying|completed|failed|cancelled
    agent_id: str | None = None
    attempts: int = 0  # assignments so far
    strategy: str | None = None
    retry: RetryPolicy | None = None
    timeout_s: float | None = None
    preferred: frozenset[str] = frozenset()  # inferred from data
    failures: int = 0  # runs that failed (timeouts included)
    unassignable: tuple[str, ...] | None = None  # missing capabilities, while marked
    pinned: str | None = None  # the only agent that may take it
    # (agent, reason) while the agent that held it deferred it: queued, but no agent may take it
    # until its defer timer requeues it.
    deferred: tuple[str, str] | None = None

    @property
    def open(self) -> bool:
        return self.status in ("queued", "assigned", "running", "retrying")

    @property
    def held(self) -> bool:
        return self.status in ("assigned", "running")


@dataclass(slots=True)
class Allocation:
    allocation_id: str
    agent_id: str
    amounts: tuple[float, float, float, float]  # cpu, memory, disk, network


@dataclass(slots=True)
class TimerState:
    """A pending durable timer (``TimerScheduled`` not yet fired or cancelled)."""

    timer_id: str
    kind: str
    generation: int
    task_id: str | None = None
    agent_id: str | None = None
    attempt: int = 0
    workflow_id: str | None = None
    step: str | None = None


RESOURCE_NAMES = ("cpu_cores", "memory_mb", "disk_mb", "network_mbps")


@dataclass(slots=True)
class PoolState:
    pool: str
    sequence: int = 0  # sequence of the last event of this pool
    agents: dict[str, AgentState] = field(default_factory=dict)
    tasks: dict[str, TaskState] = field(default_factory=dict)
    limits: tuple[float, float, float, float] | None = None
    max_agents: int | None = None
    used: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0, 0.0])
    allocations: dict[str, Allocation] = field(default_factory=dict)
    costs: set[str] = field(default_factory=set)
    # Money in whole micro-dollars (contracts.money): sums stay exact and bounded.
    spent: dict[tuple[str, str], int] = field(default_factory=dict)  # (scope, id) -> micros
    budgets: dict[tuple[str, str], int] = field(default_factory=dict)  # (scope, id) -> limit micros
    prices: Prices = BUILTIN
    exceeded: set[tuple[str, str]] = field(default_factory=set)
    seen: set[str] = field(default_factory=set)  # command ids already decided
    policy: PoolPolicy = DEFAULT_POLICY
    timers: dict[str, TimerState] = field(default_factory=dict)
    timer_seq: int = 0  # highest timer generation so far
    scaling: dict[str, e.ScalingPolicySet] = field(default_factory=dict)  # agent kind -> policy
    scaled: dict[str, e.ScalingDecided] = field(default_factory=dict)  # agent kind -> last decision
    workflows: dict[str, Run] = field(default_factory=dict)
    step_of_task: dict[str, tuple[str, str]] = field(default_factory=dict)  # task -> (workflow, step)
    definitions: dict[tuple[str, str], str] = field(default_factory=dict)  # (name, version) -> digest
    api_tokens: dict[str, bool] = field(default_factory=dict)  # _system pool: token id -> revoked
    # _system pool: subscription name -> its settings as last set (the secret sealed)
    subscriptions: dict[str, e.SubscriptionSet] = field(default_factory=dict)
    webhook_sources: set[str] = field(default_factory=set)  # _system pool: the sources that exist

    def budget_exhausted(self, scope: str, scope_id: str | None) -> bool:
        return scope_id is not None and (scope, scope_id) in self.exceeded

    def active_agents(self) -> int:
        return sum(1 for a in self.agents.values() if a.active)


def utilization(state: PoolState) -> dict[str, Any]:
    """Resource, agent and task-slot use of a pool, against its limits (None: unlimited)."""
    active = [a for a in state.agents.values() if a.active]
    slots = sum(a.capacity for a in active)
    held = sum(len(a.tasks) for a in active)
    resources = {}
    for i, name in enumerate(RESOURCE_NAMES):
        limit = None if state.limits is None else state.limits[i]
        used = state.used[i]
        resources[name] = {
            "used": used,
            "limit": limit,
            "utilization": None if not limit else round(used / limit, 6),
        }
    return {
        "resources": resources,
        "agents": {
            "active": len(active),
            "healthy": sum(1 for a in active if a.healthy),
            "max": state.max_agents,
            "utilization": None if not state.max_agents else round(len(active) / state.max_agents, 6),
        },
        "tasks": {
            "held": held,
            "capacity": slots,
            "utilization": None if not slots else round(held / slots, 6),
            "queued": sum(1 for t in state.tasks.values() if t.status == "queued"),
        },
    }
