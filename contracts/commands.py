"""Commands: what clients and reactors ask of a pool. Each is validated before it is appended."""

from __future__ import annotations

from typing import Any, Literal, get_args

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
    # Share of work under the ``weighted`` strategy (relative to other agents' weights).
    weight: float = Field(default=1.0, gt=0, le=1_000_000)


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


# Selection strategies the coordinator knows. ``least_loaded`` (capability match, then the lowest
# load ratio) is the default when neither the task nor the pool policy names one.
Strategy = Literal[
    "least_loaded",
    "round_robin",
    "least_connections",
    "resource_based",
    "capability_based",
    "weighted",
    "performance_weighted",
]
STRATEGIES: tuple[str, ...] = get_args(Strategy)
RetryStrategy = Literal["exponential", "linear", "constant", "immediate"]


class RetryPolicy(Model):
    """How often and how soon a failed task runs again. ``max_attempts`` counts the first run."""

    max_attempts: int = Field(default=1, ge=1, le=100)
    strategy: RetryStrategy = "exponential"
    base_delay_s: float = Field(default=1.0, ge=0, le=86_400)
    max_delay_s: float = Field(default=300.0, ge=0, le=86_400)
    # Fraction of the delay spread either way, derived from (task id, attempt): replay-stable.
    jitter: float = Field(default=0.0, ge=0, le=1)


class SubmitTask(Command):
    """Queue a task; the coordinator assigns it to a capable agent."""

    subject_field = "task_id"
    task_id: Id = _ID
    type: str = Field(min_length=1, max_length=200)
    priority: int = Field(default=5, ge=1, le=10)
    required_capabilities: Capabilities = ()
    data: dict[str, Any] = Field(default_factory=dict)
    strategy: str | None = Field(default=None, max_length=50)
    retry: RetryPolicy | None = None
    # Seconds an assignment may run before it counts as a failure (then retried per ``retry``).
    timeout_s: float | None = Field(default=None, gt=0, le=7 * 86_400)


class Candidate(Model):
    """One agent the coordinator considered, with its score (higher is better)."""

    agent_id: Id
    score: float
    load: int
    capacity: int
    capability_match: float = 1.0
    # The parts of the score, e.g. capability, performance, specialization, load (strategy-specific).
    components: dict[str, float] = Field(default_factory=dict)


class SelectionAudit(Model):
    """Why an agent was chosen: the best candidates, the strategy and the time the choice took."""

    strategy: str
    candidates: tuple[Candidate, ...] = ()
    eligible: int = 0
    considered: int = 0
    decision_us: float = 0.0
    # Required capabilities the chosen agent lacks (a partial-match fallback), and the ones
    # inferred from the task data that count towards specialization.
    capability_gap: tuple[str, ...] = ()
    preferred: tuple[str, ...] = ()
    # Agents passed over on the way, by reason (rate_limited, ...).
    skipped: dict[str, int] = Field(default_factory=dict)


class AssignTask(Command):
    """Give a queued task to an agent (issued by the coordinator, checked by the decider)."""

    subject_field = "task_id"
    task_id: Id = _ID
    agent_id: Id = _ID
    audit: SelectionAudit | None = None
    # An agent lacking some required capabilities may take the task only when this is set and the
    # match reaches the pool policy's ``min_capability_match`` (the coordinator's fallback).
    allow_partial: bool = False


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
    max_agents: int | None = Field(default=None, ge=0)


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


# -- coordination policy ---------------------------------------------------------------------------


class ScoreWeights(Model):
    """performance_weighted: score = capability*c + performance*p + specialization*s + (1-load)*l."""

    capability: float = Field(default=0.4, ge=0, le=1000)
    performance: float = Field(default=0.3, ge=0, le=1000)
    specialization: float = Field(default=0.2, ge=0, le=1000)
    load: float = Field(default=0.1, ge=0, le=1000)


class PerformanceWeights(Model):
    """An agent's performance = success*s + speed*t + availability*a + (1-error rate)*e."""

    success: float = Field(default=0.4, ge=0, le=1000)
    time: float = Field(default=0.3, ge=0, le=1000)
    availability: float = Field(default=0.2, ge=0, le=1000)
    errors: float = Field(default=0.1, ge=0, le=1000)
    # Speed score = reference / (reference + mean duration): 0.5 at the reference duration.
    reference_duration_s: float = Field(default=60.0, gt=0, le=86_400)


class InferenceRule(Model):
    """When ``data[key]`` equals ``equals`` (strings compared case-insensitively), the task prefers
    agents with ``capability``. ``key`` may be dotted to reach into nested objects."""

    key: str = Field(min_length=1, max_length=200)
    equals: Any = None
    capability: str = Field(min_length=1, max_length=200)


class PoolPolicy(Model):
    """How a pool coordinates: the whole policy is replaced by each SetPoolPolicy."""

    default_strategy: Strategy = "least_loaded"
    weights: ScoreWeights = Field(default_factory=ScoreWeights)
    performance: PerformanceWeights = Field(default_factory=PerformanceWeights)
    # None: the built-in rules (services.inference.DEFAULT_RULES); () turns inference off.
    inference_rules: tuple[InferenceRule, ...] | None = None
    # Lowest share of required capabilities an agent may have and still be given a task when no
    # full match is free (the fallback). 1.0: full matches only. Below it for every agent, the
    # task is marked unassignable.
    min_capability_match: float = Field(default=1.0, ge=0, le=1)
    # Circuit breaker: open after this many consecutive failures (None: off), for cooldown_s.
    breaker_threshold: int | None = Field(default=None, ge=1, le=1000)
    breaker_cooldown_s: float = Field(default=30.0, gt=0, le=86_400)
    # An unhealthy agent is declared dead (deregistered, allocations released) after this many
    # further heartbeat timeouts without a heartbeat.
    dead_after_timeouts: float = Field(default=3.0, gt=0, le=1000)


class SetPoolPolicy(PoolPolicy, Command):
    """Replace the pool's coordination policy (fields left out take their defaults)."""


class FireTimer(Command):
    """Issued by the timer service when a durable timer is due (one id per arming: idempotent)."""

    subject_field = "timer_id"
    timer_id: Id = _ID
    generation: int = Field(ge=0)


class MarkTaskUnassignable(Command):
    """Issued by the coordinator: no registered agent matches enough of the task's capabilities."""

    subject_field = "task_id"
    task_id: Id = _ID
    missing: Capabilities = ()
    best_match: float = Field(default=0.0, ge=0, le=1)
    threshold: float = Field(default=1.0, ge=0, le=1)


class DeferTask(Command):
    """Issued by the coordinator: capable agents exist but none may take the task yet."""

    subject_field = "task_id"
    task_id: Id = _ID
    reason: str = Field(default="RATE_LIMITED", min_length=1, max_length=100)
    delay_s: float = Field(default=1.0, ge=0, le=86_400)


RateLimitScope = Literal["agent", "model"]


class SetRateLimit(Command):
    """Token buckets for an agent or a model; None leaves that dimension unlimited."""

    subject_field = "scope_id"
    scope: RateLimitScope = "agent"
    scope_id: Id = _ID
    requests_per_min: float | None = Field(default=None, gt=0)
    tokens_per_min: float | None = Field(default=None, gt=0)
    concurrent: int | None = Field(default=None, ge=0)


class SetScalingPolicy(Command):
    """How many agents of a kind the fleet should have, evaluated by the scaling reactor."""

    subject_field = "agent_kind"
    agent_kind: str = Field(min_length=1, max_length=100)
    min_agents: int = Field(default=0, ge=0, le=100_000)
    max_agents: int = Field(default=10, ge=0, le=100_000)
    target_utilization: float = Field(default=0.75, gt=0, le=1)
    queue_threshold: int = Field(default=10, ge=0)
    cooldown_s: float = Field(default=60.0, ge=0, le=86_400)
    # A scale-down must be recommended for this long before it is decided.
    stability_window_s: float = Field(default=120.0, ge=0, le=86_400)

    @model_validator(mode="after")
    def _bounds(self) -> SetScalingPolicy:
        if self.min_agents > self.max_agents:
            raise ValueError("min_agents must not exceed max_agents")
        return self


class DecideScaling(Command):
    """Issued by the scaling reactor; the decider checks it against the policy and records it."""

    subject_field = "agent_kind"
    agent_kind: str = Field(min_length=1, max_length=100)
    from_agents: int = Field(ge=0)
    to_agents: int = Field(ge=0)
    reason: str = Field(max_length=1000)
    metrics: dict[str, float] = Field(default_factory=dict)


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
    SetPoolPolicy,
    FireTimer,
    MarkTaskUnassignable,
    DeferTask,
    SetRateLimit,
    SetScalingPolicy,
    DecideScaling,
)
