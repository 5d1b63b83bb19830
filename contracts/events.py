"""Events: the facts on the log. Old versions are upcast on read (see ``contracts.registry``)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from contracts.base import Event
from contracts.commands import BudgetScope, Capabilities, Id, SelectionAudit


class AgentRegistered(Event):
    subject_field = "agent_id"
    agent_id: Id
    name: str
    kind: str
    capabilities: Capabilities = ()
    capacity: int
    heartbeat_timeout_s: float = 30.0
    metadata: dict[str, Any] = Field(default_factory=dict)


class AgentHeartbeatReceived(Event):
    subject_field = "agent_id"
    agent_id: Id
    load: float | None = None
    cpu: float | None = None
    memory: float | None = None
    queue: int | None = None


class AgentDeregistered(Event):
    subject_field = "agent_id"
    agent_id: Id
    reason: str | None = None


class TaskSubmitted(Event):
    subject_field = "task_id"
    task_id: Id
    type: str
    priority: int
    required_capabilities: Capabilities = ()
    data: dict[str, Any] = Field(default_factory=dict)
    strategy: str | None = None


class TaskAssigned(Event):
    subject_field = "task_id"
    task_id: Id
    agent_id: Id
    attempt: int
    audit: SelectionAudit | None = None


class TaskStarted(Event):
    subject_field = "task_id"
    task_id: Id
    agent_id: Id


class TaskCompleted(Event):
    subject_field = "task_id"
    task_id: Id
    agent_id: Id
    result: dict[str, Any] = Field(default_factory=dict)


class TaskFailed(Event):
    subject_field = "task_id"
    task_id: Id
    agent_id: Id | None
    error: str
    attempt: int


class TaskCancelled(Event):
    subject_field = "task_id"
    task_id: Id
    agent_id: Id | None = None
    reason: str | None = None


class TaskRequeued(Event):
    """A task went back to the queue, e.g. because its agent left."""

    subject_field = "task_id"
    task_id: Id
    agent_id: Id
    reason: str


class ResourceLimitsSet(Event):
    max_cpu_cores: float
    max_memory_mb: float
    max_disk_mb: float
    max_network_mbps: float


class ResourcesAllocated(Event):
    subject_field = "allocation_id"
    allocation_id: Id
    agent_id: Id
    cpu_cores: float
    memory_mb: float
    disk_mb: float
    network_mbps: float


class ResourcesReleased(Event):
    subject_field = "allocation_id"
    allocation_id: Id
    agent_id: Id
    cpu_cores: float
    memory_mb: float
    disk_mb: float
    network_mbps: float
    reason: str | None = None


class CostRecorded(Event):
    """Schema version 2: v1 named the token counts ``tokens_in``/``tokens_out``."""

    subject_field = "cost_id"
    cost_id: Id
    agent_id: Id
    task_id: Id | None = None
    model: str
    input_tokens: int
    output_tokens: int
    cost_usd: float
    priced_from_table: bool = False


class BudgetSet(Event):
    subject_field = "scope_id"
    scope: BudgetScope
    scope_id: Id
    limit_usd: float


class BudgetExceeded(Event):
    subject_field = "scope_id"
    scope: BudgetScope
    scope_id: Id
    limit_usd: float
    spent_usd: float


class CommandRejected(Event):
    """A command broke a rule; carries a stable reason code (``contracts.Reason``)."""

    subject_field = "command_type"
    command_type: str
    code: str
    message: str
    details: dict[str, Any] = Field(default_factory=dict)


ALL: tuple[type[Event], ...] = (
    AgentRegistered,
    AgentHeartbeatReceived,
    AgentDeregistered,
    TaskSubmitted,
    TaskAssigned,
    TaskStarted,
    TaskCompleted,
    TaskFailed,
    TaskCancelled,
    TaskRequeued,
    ResourceLimitsSet,
    ResourcesAllocated,
    ResourcesReleased,
    CostRecorded,
    BudgetSet,
    BudgetExceeded,
    CommandRejected,
)
