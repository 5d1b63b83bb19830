"""Commands: what clients and reactors ask of a pool. Each is validated before it is appended."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from contracts.base import Command, Model

Id = str  # ids are client-chosen strings (or generated UUIDv7s); 1-200 chars
_ID = Field(min_length=1, max_length=200)
Capabilities = tuple[str, ...]


class RegisterAgent(Command):
    """Add an agent to the pool with what it can do and how many tasks it can hold at once."""

    subject_field = "agent_id"
    agent_id: Id = _ID
    name: str = Field(min_length=1, max_length=200)
    kind: str = Field(default="generic", min_length=1, max_length=100)
    capabilities: Capabilities = ()
    capacity: int = Field(default=1, ge=1, le=10_000)
    heartbeat_timeout_s: float = Field(default=30.0, gt=0, le=86_400)
    metadata: dict[str, Any] = Field(default_factory=dict)


class AgentHeartbeat(Command):
    """An agent reports it is alive, with optional load figures."""

    subject_field = "agent_id"
    agent_id: Id = _ID
    load: float | None = Field(default=None, ge=0)
    cpu: float | None = Field(default=None, ge=0)
    memory: float | None = Field(default=None, ge=0)
    queue: int | None = Field(default=None, ge=0)


class DeregisterAgent(Command):
    """Remove an agent; its unfinished tasks go back to the queue."""

    subject_field = "agent_id"
    agent_id: Id = _ID
    reason: str | None = Field(default=None, max_length=1000)


class SubmitTask(Command):
    """Queue a task; the coordinator assigns it to a capable agent."""

    subject_field = "task_id"
    task_id: Id = _ID
    type: str = Field(min_length=1, max_length=200)
    priority: int = Field(default=5, ge=1, le=10)
    required_capabilities: Capabilities = ()
    data: dict[str, Any] = Field(default_factory=dict)
    strategy: str | None = Field(default=None, max_length=50)


class Candidate(Model):
    """One agent the coordinator considered, with its score (higher is better)."""

    agent_id: Id
    score: float
    load: int
    capacity: int
    capability_match: float = 1.0


class SelectionAudit(Model):
    """Why an agent was chosen: the best candidates, the strategy and the time the choice took."""

    strategy: str
    candidates: tuple[Candidate, ...] = ()
    eligible: int = 0
    considered: int = 0
    decision_us: float = 0.0


class AssignTask(Command):
    """Give a queued task to an agent (issued by the coordinator, checked by the decider)."""

    subject_field = "task_id"
    task_id: Id = _ID
    agent_id: Id = _ID
    audit: SelectionAudit | None = None


class StartTask(Command):
    """The assigned agent begins work."""

    subject_field = "task_id"
    task_id: Id = _ID
    agent_id: Id | None = None


class CompleteTask(Command):
    """The task finished successfully."""

    subject_field = "task_id"
    task_id: Id = _ID
    agent_id: Id | None = None
    result: dict[str, Any] = Field(default_factory=dict)


class FailTask(Command):
    """The task failed."""

    subject_field = "task_id"
    task_id: Id = _ID
    agent_id: Id | None = None
    error: str = Field(default="failed", max_length=10_000)


class CancelTask(Command):
    """Stop a task that has not ended."""

    subject_field = "task_id"
    task_id: Id = _ID
    reason: str | None = Field(default=None, max_length=1000)


class SetResourceLimits(Command):
    """Set the pool's total resource limits; allocations may never exceed them."""

    max_cpu_cores: float = Field(ge=0)
    max_memory_mb: float = Field(ge=0)
    max_disk_mb: float = Field(ge=0)
    max_network_mbps: float = Field(ge=0)


class AllocateResources(Command):
    """Reserve resources for an agent within the pool's limits."""

    subject_field = "allocation_id"
    allocation_id: Id = _ID
    agent_id: Id = _ID
    cpu_cores: float = Field(default=0, ge=0)
    memory_mb: float = Field(default=0, ge=0)
    disk_mb: float = Field(default=0, ge=0)
    network_mbps: float = Field(default=0, ge=0)


class ReleaseResources(Command):
    """Give back an allocation."""

    subject_field = "allocation_id"
    allocation_id: Id = _ID


class RecordCost(Command):
    """Record what a model call cost; priced from the model price table when cost_usd is absent."""

    subject_field = "cost_id"
    cost_id: Id = _ID
    agent_id: Id = _ID
    task_id: Id | None = None
    model: str = Field(min_length=1, max_length=200)
    input_tokens: int = Field(default=0, ge=0)
    output_tokens: int = Field(default=0, ge=0)
    cost_usd: float | None = Field(default=None, ge=0)


BudgetScope = Literal["pool", "agent", "workflow"]


class SetBudget(Command):
    """Cap spending in a scope; once spent, new work in that scope is rejected."""

    subject_field = "scope_id"
    scope: BudgetScope = "pool"
    scope_id: Id | None = None
    limit_usd: float = Field(ge=0)

    @model_validator(mode="after")
    def _scope_id_required(self) -> SetBudget:
        if self.scope != "pool" and not self.scope_id:
            raise ValueError(f"scope_id is required for scope {self.scope!r}")
        return self


ALL: tuple[type[Command], ...] = (
    RegisterAgent,
    AgentHeartbeat,
    DeregisterAgent,
    SubmitTask,
    AssignTask,
    StartTask,
    CompleteTask,
    FailTask,
    CancelTask,
    SetResourceLimits,
    AllocateResources,
    ReleaseResources,
    RecordCost,
    SetBudget,
)
