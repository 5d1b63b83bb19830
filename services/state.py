"""The decider's view of one pool: agents, tasks, resources, costs, budgets, seen commands.

Plain mutable records owned by a single decider loop; built only by ``evolve``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class AgentState:
    agent_id: str
    kind: str
    capabilities: frozenset[str]
    capacity: int
    active: bool = True
    tasks: set[str] = field(default_factory=set)  # tasks it holds (assigned or running)
    allocations: set[str] = field(default_factory=set)


@dataclass(slots=True)
class TaskState:
    task_id: str
    type: str
    priority: int
    required: frozenset[str]
    data: dict[str, Any]
    status: str = "queued"  # queued|assigned|running|completed|failed|cancelled
    agent_id: str | None = None
    attempts: int = 0

    @property
    def open(self) -> bool:
        return self.status in ("queued", "assigned", "running")

    @property
    def held(self) -> bool:
        return self.status in ("assigned", "running")


@dataclass(slots=True)
class Allocation:
    allocation_id: str
    agent_id: str
    amounts: tuple[float, float, float, float]  # cpu, memory, disk, network


RESOURCE_NAMES = ("cpu_cores", "memory_mb", "disk_mb", "network_mbps")


@dataclass(slots=True)
class PoolState:
    pool: str
    sequence: int = 0  # sequence of the last event of this pool
    agents: dict[str, AgentState] = field(default_factory=dict)
    tasks: dict[str, TaskState] = field(default_factory=dict)
    limits: tuple[float, float, float, float] | None = None
    used: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0, 0.0])
    allocations: dict[str, Allocation] = field(default_factory=dict)
    costs: set[str] = field(default_factory=set)
    spent: dict[tuple[str, str], float] = field(default_factory=dict)  # (scope, id) -> usd
    budgets: dict[tuple[str, str], float] = field(default_factory=dict)  # (scope, id) -> limit
    exceeded: set[tuple[str, str]] = field(default_factory=set)
    seen: set[str] = field(default_factory=set)  # command ids already decided

    def budget_exhausted(self, scope: str, scope_id: str | None) -> bool:
        return scope_id is not None and (scope, scope_id) in self.exceeded
