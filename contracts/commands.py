"""Commands: what clients and reactors ask of a pool. Each is validated before it is appended."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, get_args

from pydantic import Field, model_validator

from contracts.base import Command, Model
from contracts.money import MAX_COST_USD, MAX_LIMIT_USD, MAX_PRICE_PER_1K_USD, MAX_PRICED_MODELS, MAX_TOKENS

# Re-exported: commands name them, and older modules import them from here.
from contracts.scheduling import MAX_SECONDS as MAX_SECONDS
from contracts.scheduling import STRATEGIES as STRATEGIES
from contracts.scheduling import RetryPolicy as RetryPolicy
from contracts.scheduling import RetryStrategy as RetryStrategy
from contracts.scheduling import Strategy as Strategy
from contracts.system_commands import (
    MAX_CHANNEL_LENGTH as MAX_CHANNEL_LENGTH,
)
from contracts.system_commands import (
    MAX_CHANNELS as MAX_CHANNELS,
)
from contracts.system_commands import (
    MAX_DELIVERY_ATTEMPTS as MAX_DELIVERY_ATTEMPTS,
)
from contracts.system_commands import (
    MAX_EVENT_PARTITIONS as MAX_EVENT_PARTITIONS,
)
from contracts.system_commands import (
    ROLES as ROLES,
)
from contracts.system_commands import (
    SEALED_PATTERN as SEALED_PATTERN,
)
from contracts.system_commands import (
    SEALED_PREFIX as SEALED_PREFIX,
)
from contracts.system_commands import (
    SYSTEM_COMMANDS,
)
from contracts.system_commands import (
    AuditHead as AuditHead,
)

# Re-exported: the system pool's commands (contracts.system_commands) are commands like any.
from contracts.system_commands import (
    ChannelText as ChannelText,
)
from contracts.system_commands import (
    DeleteSubscription as DeleteSubscription,
)
from contracts.system_commands import (
    DeleteWebhookSource as DeleteWebhookSource,
)
from contracts.system_commands import (
    IssueApiToken as IssueApiToken,
)
from contracts.system_commands import (
    ReceiveExternalEvent as ReceiveExternalEvent,
)
from contracts.system_commands import (
    RecordAuditCheckpoint as RecordAuditCheckpoint,
)
from contracts.system_commands import (
    RecordDeliveryFailure as RecordDeliveryFailure,
)
from contracts.system_commands import (
    RecordWebhookMappingFailure as RecordWebhookMappingFailure,
)
from contracts.system_commands import (
    RevokeApiToken as RevokeApiToken,
)
from contracts.system_commands import (
    Role as Role,
)
from contracts.system_commands import (
    SealedSecret as SealedSecret,
)
from contracts.system_commands import (
    SetSubscription as SetSubscription,
)
from contracts.system_commands import (
    SetWebhookSource as SetWebhookSource,
)
from contracts.system_commands import (
    SubscriptionGenerated as SubscriptionGenerated,
)
from contracts.values import (
    INT32_MAX,
    INT64_MAX,
    MAX_ID_LENGTH,
    Capabilities,
    Id,
    JSONObject,
    Key,
    Name,
    Text,
)
from contracts.workflows import MAX_WORKFLOW_ID, StepName, WorkflowDefinition

# Ids are client-chosen (or generated UUIDv7s): 1-200 characters a URL path segment carries as
# typed (contracts.values.Id). Every bound below is documented in the field's schema; a value
# outside one is refused before anything is appended.
_ID = Field(min_length=1, max_length=200)
# Bounds shared by several commands. Counts that land in a PostgreSQL ``integer`` column stay
# within INT32_MAX; amounts are finite floats (contracts.base refuses NaN and infinity).
MAX_AGENTS = 1_000_000  # agents in a pool, a fleet or a scaling decision
MAX_CPU_CORES = 1_000_000.0
MAX_MEGABYTES = 1e12  # memory and disk in MB: an exabyte
MAX_NETWORK_MBPS = 1e9  # a petabit per second
MAX_SCORE = 1e9  # a coordinator score, or a part of one
MAX_METRIC = 1e15  # a scaling metric (utilization, queue length, rates)
MAX_TIMER_ID = MAX_ID_LENGTH + 50  # a timer id is a short purpose prefix and an entity id
# Derived from an entity id (``heartbeat:<agent id>``...): the id rules, a few characters longer.
# (Field(max_length=...) on a field typed ``Key`` would not lift Key's own limit: the type's wins.)
TimerId = Annotated[Name, Field(max_length=MAX_TIMER_ID)]
Score = Annotated[float, Field(ge=-MAX_SCORE, le=MAX_SCORE)]
Metric = Annotated[float, Field(ge=-MAX_METRIC, le=MAX_METRIC)]
Count = Annotated[int, Field(ge=0, le=INT32_MAX)]


class RegisterAgent(Command):
    """Add an agent to the pool with what it can do and how many tasks it can hold at once."""

    subject_field = "agent_id"
    agent_id: Id = _ID
    name: Text = Field(min_length=1, max_length=200)
    kind: Name = Field(default="generic", max_length=100)
    capabilities: Capabilities = ()
    capacity: int = Field(default=1, ge=1, le=10_000)
    heartbeat_timeout_s: float = Field(default=30.0, gt=0, le=MAX_SECONDS)
    metadata: JSONObject = Field(default_factory=dict)
    # Share of work under the ``weighted`` strategy (relative to other agents' weights).
    weight: float = Field(default=1.0, gt=0, le=1_000_000)
    # The agent's defaults for the tasks it runs: a task's own retry policy wins over ``retry``;
    # the breaker fields override the pool policy's for this agent alone (None: the pool's).
    retry: RetryPolicy | None = Field(
        default=None, description="Retry policy of a failed run of a task that has none of its own.")
    breaker_threshold: int | None = Field(
        default=None, ge=1, le=1000,
        description="Open this agent's circuit breaker after this many consecutive failed runs "
                    "(None: the pool policy's breaker_threshold).")
    breaker_cooldown_s: float | None = Field(
        default=None, gt=0, le=MAX_SECONDS,
        description="How long this agent's breaker stays open (None: the pool policy's breaker_cooldown_s).")


class AgentHeartbeat(Command):
    """An agent reports it is alive, with optional load figures."""

    subject_field = "agent_id"
    agent_id: Id = _ID
    load: float | None = Field(default=None, ge=0, le=1_000_000,
                               description="A load figure (a ratio or a load average), at most 1,000,000.")
    # Percentages (100: one full core, all memory); several cores may report more than 100.
    cpu: float | None = Field(default=None, ge=0, le=100_000,
                              description="CPU use in percent, at most 100,000.")
    memory: float | None = Field(default=None, ge=0, le=100_000,
                                 description="Memory use in percent, at most 100,000.")
    queue: int | None = Field(default=None, ge=0, le=INT32_MAX,
                              description="Work waiting in the agent, at most 2**31-1.")


class DeregisterAgent(Command):
    """Remove an agent; its unfinished tasks go back to the queue."""

    subject_field = "agent_id"
    agent_id: Id = _ID
    reason: Text | None = Field(default=None, max_length=1000)


class SubmitTask(Command):
    """Queue a task; the coordinator assigns it to a capable agent."""

    subject_field = "task_id"
    task_id: Id = _ID
    type: Text = Field(min_length=1, max_length=200)
    priority: int = Field(default=5, ge=1, le=10)
    required_capabilities: Capabilities = ()
    data: JSONObject = Field(default_factory=dict)
    # Refused at the door when unknown (the 422 lists the names); None: the pool policy's.
    strategy: Strategy | None = None
    retry: RetryPolicy | None = None
    # Seconds an assignment may run before it counts as a failure (then retried per ``retry``).
    timeout_s: float | None = Field(default=None, gt=0, le=7 * 86_400)
    # Pinned: only this agent may take the task (a workflow step's ``agent_name``).
    agent_id: Id | None = Field(default=None, min_length=1, max_length=MAX_ID_LENGTH,
                                description="Pin the task to this agent: no other agent is given it.")
    # Resolved by the decider into the event's ``agent_id`` (the name is kept beside it, as given).
    agent_name: Text | None = Field(
        default=None, min_length=1, max_length=200,
        description="Pin the task to the agent with this id, else to the active agent with this name "
                    "(several: the smallest id); rejected when none has it. With agent_id: both must "
                    "name the same agent.")
    # What the agent is asked to do and with what, as a workflow step's ``action``/``parameters``.
    action: Text | None = Field(default=None, min_length=1, max_length=200,
                                description="What the agent is asked to do (e.g. an executor's call).")
    parameters: JSONObject = Field(default_factory=dict, description="The action's arguments.")


class Candidate(Model):
    """One agent the coordinator considered, with its score (higher is better)."""

    # Strings in an audit are as the coordinator wrote them (events reuse this model, so it stays
    # as lenient as the logs already written); ingest still refuses text no store can hold.
    agent_id: str
    score: float = Field(ge=-MAX_SCORE, le=MAX_SCORE)
    load: int = Field(ge=0, le=INT32_MAX)
    capacity: int = Field(ge=0, le=INT32_MAX)
    capability_match: float = Field(default=1.0, ge=0, le=1)
    # The parts of the score, e.g. capability, performance, specialization, load (strategy-specific).
    components: dict[str, Score] = Field(default_factory=dict, max_length=100)


class SelectionAudit(Model):
    """Why an agent was chosen: the best candidates, the strategy and the time the choice took."""

    strategy: str = Field(max_length=50)
    candidates: tuple[Candidate, ...] = Field(default=(), max_length=1000)
    eligible: int = Field(default=0, ge=0, le=INT32_MAX)
    considered: int = Field(default=0, ge=0, le=INT32_MAX)
    decision_us: float = Field(default=0.0, ge=0, le=1e12)  # at most ~11.6 days
    # Required capabilities the chosen agent lacks (a partial-match fallback), and the ones
    # inferred from the task data that count towards specialization.
    capability_gap: tuple[str, ...] = ()
    preferred: tuple[str, ...] = ()
    # Agents passed over on the way, by reason (rate_limited, ...).
    skipped: dict[str, Count] = Field(default_factory=dict, max_length=100)


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
    result: JSONObject = Field(default_factory=dict)


class FailTask(Command):
    """The task failed: retried per its retry policy when ``retryable``, else failed at once."""

    subject_field = "task_id"
    task_id: Id = _ID
    agent_id: Id | None = None
    error: Text = Field(default="failed", max_length=10_000)
    # False: running it again cannot help (a 404, a refused request): the task fails whatever its
    # retry policy, and the failure does not count against the agent's circuit breaker.
    retryable: bool = Field(default=True, description="Whether running the task again could help; "
                                                       "false fails it at once, whatever its retry policy.")
    error_code: Name | None = Field(default=None, max_length=100,
                                    description="A short code for the failure (http_status:404, timeout).")


class CancelTask(Command):
    """Stop a task that has not ended."""

    subject_field = "task_id"
    task_id: Id = _ID
    reason: Text | None = Field(default=None, max_length=1000)


class SetResourceLimits(Command):
    """Set the pool's total resource limits; allocations may never exceed them."""

    max_cpu_cores: float = Field(ge=0, le=MAX_CPU_CORES)
    max_memory_mb: float = Field(ge=0, le=MAX_MEGABYTES)
    max_disk_mb: float = Field(ge=0, le=MAX_MEGABYTES)
    max_network_mbps: float = Field(ge=0, le=MAX_NETWORK_MBPS)
    max_agents: int | None = Field(default=None, ge=0, le=MAX_AGENTS)


class AllocateResources(Command):
    """Reserve resources for an agent within the pool's limits."""

    subject_field = "allocation_id"
    allocation_id: Id = _ID
    agent_id: Id = _ID
    cpu_cores: float = Field(default=0, ge=0, le=MAX_CPU_CORES)
    memory_mb: float = Field(default=0, ge=0, le=MAX_MEGABYTES)
    disk_mb: float = Field(default=0, ge=0, le=MAX_MEGABYTES)
    network_mbps: float = Field(default=0, ge=0, le=MAX_NETWORK_MBPS)


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
    # Bounds: contracts.money (a finite cost of at most 1,000,000 USD; at most 10**9 tokens each way).
    input_tokens: int = Field(default=0, ge=0, le=MAX_TOKENS)
    output_tokens: int = Field(default=0, ge=0, le=MAX_TOKENS)
    cost_usd: float | None = Field(default=None, ge=0, le=MAX_COST_USD, allow_inf_nan=False)


BudgetScope = Literal["pool", "agent", "workflow"]


class SetBudget(Command):
    """Cap spending in a scope; once spent, new work in that scope is rejected."""

    subject_field = "scope_id"
    scope: BudgetScope = "pool"
    scope_id: Id | None = None
    limit_usd: float = Field(ge=0, le=MAX_LIMIT_USD, allow_inf_nan=False)

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
    reference_duration_s: float = Field(default=60.0, gt=0, le=MAX_SECONDS)


class InferenceRule(Model):
    """When ``data[key]`` equals ``equals`` (strings compared case-insensitively), the task prefers
    agents with ``capability``. ``key`` may be dotted to reach into nested objects."""

    key: str = Field(min_length=1, max_length=200)
    # Events reuse this model: free-form but storable JSON, checked again at ingest.
    equals: Any = None
    capability: str = Field(min_length=1, max_length=200)


class PoolPolicy(Model):
    """How a pool coordinates: the whole policy is replaced by each SetPoolPolicy."""

    default_strategy: Strategy = "least_loaded"
    weights: ScoreWeights = Field(default_factory=ScoreWeights)
    performance: PerformanceWeights = Field(default_factory=PerformanceWeights)
    # None: the built-in rules (services.inference.DEFAULT_RULES); () turns inference off.
    inference_rules: tuple[InferenceRule, ...] | None = Field(default=None, max_length=1000)
    # Lowest share of required capabilities an agent may have and still be given a task when no
    # full match is free (the fallback). 1.0: full matches only. Below it for every agent, the
    # task is marked unassignable.
    min_capability_match: float = Field(default=1.0, ge=0, le=1)
    # Circuit breaker: open after this many consecutive failures (None: off), for cooldown_s.
    breaker_threshold: int | None = Field(default=None, ge=1, le=1000)
    breaker_cooldown_s: float = Field(default=30.0, gt=0, le=MAX_SECONDS)
    # An unhealthy agent is declared dead (deregistered, allocations released) after this many
    # further heartbeat timeouts without a heartbeat.
    dead_after_timeouts: float = Field(default=3.0, gt=0, le=1000)


class SetPoolPolicy(PoolPolicy, Command):
    """Replace the pool's coordination policy (fields left out take their defaults)."""


class FireTimer(Command):
    """Issued by the timer service when a durable timer is due (one id per arming: idempotent)."""

    subject_field = "timer_id"
    timer_id: TimerId
    generation: int = Field(ge=0, le=INT64_MAX)


class MarkTaskUnassignable(Command):
    """Issued by the coordinator: no registered agent matches enough of the task's capabilities."""

    subject_field = "task_id"
    task_id: Id = _ID
    missing: Capabilities = ()
    best_match: float = Field(default=0.0, ge=0, le=1)
    threshold: float = Field(default=1.0, ge=0, le=1)


class DeferTask(Command):
    """Put a task aside for ``delay_s``. Without ``agent_id``, the coordinator's: capable agents
    exist but none may take the queued task yet. With it, the agent holding the task gives it back
    without spending an attempt (its target said "later": a 429 or 503 with Retry-After, an
    overload); the task is queued again once the delay is over, and no agent is given it before."""

    subject_field = "task_id"
    task_id: Id = _ID
    reason: Name = Field(default="RATE_LIMITED", max_length=100)
    delay_s: float = Field(default=1.0, ge=0, le=MAX_SECONDS)
    agent_id: Id | None = Field(default=None, description="The agent holding the task, deferring it.")


RateLimitScope = Literal["agent", "model"]


class SetRateLimit(Command):
    """Token buckets for an agent or a model; None leaves that dimension unlimited."""

    subject_field = "scope_id"
    scope: RateLimitScope = "agent"
    # An agent id, or a model name, which may contain '/' ("meta-llama/Llama-3.1-70B").
    scope_id: Key = _ID
    requests_per_min: float | None = Field(default=None, gt=0, le=1e9)
    tokens_per_min: float | None = Field(default=None, gt=0, le=1e12)
    concurrent: int | None = Field(default=None, ge=0, le=1_000_000)


class SetScalingPolicy(Command):
    """How many agents of a kind the fleet should have, evaluated by the scaling reactor."""

    subject_field = "agent_kind"
    agent_kind: Name = Field(max_length=100)
    min_agents: int = Field(default=0, ge=0, le=100_000)
    max_agents: int = Field(default=10, ge=0, le=100_000)
    target_utilization: float = Field(default=0.75, gt=0, le=1)
    # Queued tasks per agent that call for one more agent.
    queue_threshold: int = Field(default=10, ge=0, le=1_000_000)
    cooldown_s: float = Field(default=60.0, ge=0, le=MAX_SECONDS)
    # A scale-down must be recommended for this long before it is decided.
    stability_window_s: float = Field(default=120.0, ge=0, le=MAX_SECONDS)

    @model_validator(mode="after")
    def _bounds(self) -> SetScalingPolicy:
        if self.min_agents > self.max_agents:
            raise ValueError("min_agents must not exceed max_agents")
        return self


class DecideScaling(Command):
    """Issued by the scaling reactor; the decider checks it against the policy and records it."""

    subject_field = "agent_kind"
    agent_kind: Name = Field(max_length=100)
    from_agents: int = Field(ge=0, le=MAX_AGENTS)
    to_agents: int = Field(ge=0, le=MAX_AGENTS)
    reason: Text = Field(max_length=1000)
    metrics: dict[Text, Metric] = Field(default_factory=dict, max_length=100)


class ModelPrice(Model):
    """What a model costs: USD per 1,000 input and output tokens (kept to the nano-dollar)."""

    input_per_1k: float = Field(ge=0, le=MAX_PRICE_PER_1K_USD, allow_inf_nan=False)
    output_per_1k: float = Field(ge=0, le=MAX_PRICE_PER_1K_USD, allow_inf_nan=False)


class SetPrices(Command):
    """Change the pool's model prices. ``models`` is merged into the pool's current prices (a model
    set to null goes back to its built-in price); ``default`` prices a model found in no table and
    ``strict`` rejects such a model instead (null or absent: unchanged); ``reset`` first forgets
    every earlier change (the built-in table, default and strictness again)."""

    models: dict[str, ModelPrice | None] = Field(default_factory=dict, max_length=MAX_PRICED_MODELS)
    default: ModelPrice | None = None
    strict: bool | None = None
    reset: bool = False

    @model_validator(mode="after")
    def _model_names(self) -> SetPrices:
        for name in self.models:
            if not name.strip() or len(name) > 200:
                raise ValueError(f"model names are 1-200 characters, not blank: {name[:50]!r}")
        return self


# The reasons the coordinator may note (NoteTaskWaiting).
NotedWaitingCode = Literal[
    "no_capable_agent",
    "all_capable_agents_busy",
    "rate_limited",
    "budget_exceeded",
    "circuit_open",
    "agents_unhealthy",
    "retry_backoff",
]
# Why a queued (or retrying) task waits: ``waiting_reason.code`` of a task read. Besides the noted
# ones, ``deferred_by_agent``: the agent that held it deferred it (DeferTask with ``agent_id``).
WaitingCode = Literal[NotedWaitingCode, "deferred_by_agent"]
WAITING_CODES: tuple[str, ...] = get_args(WaitingCode)
MAX_WAITING_AGENTS = 10  # capable agents named in a NoteTaskWaiting


class NoteTaskWaiting(Command):
    """Issued by the coordinator when why a queued task waits changes: the budget of its pool, its
    workflow or every capable agent is spent, every capable agent's circuit is open or it is
    unhealthy, or (back to the ordinary case) all capable agents are busy."""

    subject_field = "task_id"
    task_id: Id = _ID
    code: NotedWaitingCode
    # budget_exceeded: the spent budget's scope and id (a pool's name, or ids as already logged).
    scope: BudgetScope | None = None
    scope_id: Key | None = Field(default=None, max_length=MAX_ID_LENGTH)
    # The capable agents it waits for (ids as they were registered).
    agents: tuple[Key, ...] = Field(default=(), max_length=MAX_WAITING_AGENTS)
    until: datetime | None = None  # circuit_open: when the first of their breakers half-opens


# -- workflows ---------------------------------------------------------------------------------------


class StartWorkflow(Command):
    """Run a workflow: its definition snapshot and inputs become one ``WorkflowStarted``."""

    subject_field = "workflow_id"
    workflow_id: Id = Field(min_length=1, max_length=MAX_WORKFLOW_ID)
    definition: WorkflowDefinition
    inputs: JSONObject = Field(default_factory=dict)


class CancelWorkflow(Command):
    """Stop a workflow that has not ended: its open steps are cancelled, the rest skipped."""

    subject_field = "workflow_id"
    workflow_id: Id = _ID
    reason: Text | None = Field(default=None, max_length=1000)


class SignalWorkflow(Command):
    """Deliver signal ``name`` (a signal step of the workflow) with its data, the step's result."""

    subject_field = "workflow_id"
    workflow_id: Id = _ID
    name: StepName
    data: JSONObject = Field(default_factory=dict)


class AwaitSignal(Command):
    """Issued by the workflow reactor: a signal step's dependencies are done, it starts waiting."""

    subject_field = "workflow_id"
    workflow_id: Id = _ID
    step: StepName


class FailWorkflowStep(Command):
    """Issued by the workflow reactor: a step that could not start fails (why, in ``error``)."""

    subject_field = "workflow_id"
    workflow_id: Id = _ID
    step: StepName
    error: Text = Field(min_length=1, max_length=10_000)


class RegisterWorkflowDefinition(Command):
    """Store a named, versioned definition; a version, once stored, never changes."""

    subject_field = "name"
    definition: WorkflowDefinition

    @property
    def name(self) -> str:
        return self.definition.name


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
    SetPrices,
    NoteTaskWaiting,
    StartWorkflow,
    CancelWorkflow,
    SignalWorkflow,
    AwaitSignal,
    FailWorkflowStep,
    RegisterWorkflowDefinition,
)

ALL = (*ALL, *SYSTEM_COMMANDS)
