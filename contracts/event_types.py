"""Events: the facts on the log. Old versions are upcast on read (see ``contracts.registry``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import Field

from contracts.base import Event
from contracts.commands import (
    BudgetScope,
    ModelPrice,
    PoolPolicy,
    RateLimitScope,
    RetryPolicy,
    SelectionAudit,
)
from contracts.money import MAX_COST_USD, MAX_LIMIT_USD, MAX_SPEND_USD
from contracts.system_commands import AuditHead

# Lenient on purpose: every log ever written must read back. What the decider appends now is
# checked by contracts.roundtrip; what a command may carry, by the commands' own types.
from contracts.values import LooseCapabilities as Capabilities
from contracts.values import LooseId as Id


class AgentRegistered(Event):
    subject_field = "agent_id"
    agent_id: Id
    name: str
    kind: str
    capabilities: Capabilities = ()
    capacity: int
    heartbeat_timeout_s: float = 30.0
    metadata: dict[str, Any] = Field(default_factory=dict)
    weight: float = 1.0
    # The agent's defaults for the tasks it runs (None: the task's own policy, the pool's breaker).
    retry: RetryPolicy | None = None
    breaker_threshold: int | None = None
    breaker_cooldown_s: float | None = None


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
    retry: RetryPolicy | None = None
    timeout_s: float | None = None
    # Capabilities the pool's inference rules derived from ``data``: preferred, not required.
    inferred_capabilities: Capabilities = ()
    agent_id: Id | None = None  # pinned: only this agent may take it
    # The name the pin was asked by, as given (the audit's); ``agent_id`` is what it resolved to
    # when decided, so replay never resolves it again.
    agent_name: str | None = None
    action: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)


class TaskAssigned(Event):
    subject_field = "task_id"
    task_id: Id
    agent_id: Id
    attempt: int
    audit: SelectionAudit | None = None
    # Required capabilities the agent lacks (a partial-match fallback assignment).
    capability_gap: Capabilities = ()


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
    """A task failed for good: no attempts left, or a failure running it again cannot help."""

    subject_field = "task_id"
    task_id: Id
    agent_id: Id | None
    error: str
    attempt: int
    error_code: str | None = None
    # False: the failure said running it again cannot help (the retry policy was not consulted).
    retryable: bool = True


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
    max_agents: int | None = None


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
    # Amounts are bounded as in the commands (contracts.money), so every total the decider and the
    # read models keep stays exact and storable; a record outside them is a bad record.
    cost_usd: float = Field(ge=0, le=MAX_COST_USD, allow_inf_nan=False)
    priced_from_table: bool = False


class BudgetSet(Event):
    subject_field = "scope_id"
    scope: BudgetScope
    scope_id: Id
    limit_usd: float = Field(ge=0, le=MAX_LIMIT_USD, allow_inf_nan=False)


class BudgetExceeded(Event):
    subject_field = "scope_id"
    scope: BudgetScope
    scope_id: Id
    limit_usd: float = Field(ge=0, le=MAX_LIMIT_USD, allow_inf_nan=False)
    spent_usd: float = Field(ge=0, le=MAX_SPEND_USD, allow_inf_nan=False)


class CommandRejected(Event):
    """A command broke a rule; carries a stable reason code (``contracts.Reason``)."""

    subject_field = "command_type"
    command_type: str
    code: str
    message: str
    details: dict[str, Any] = Field(default_factory=dict)


class PoolPolicySet(PoolPolicy, Event):
    """The pool's coordination policy from now on (replaces the previous one whole)."""


class TimerScheduled(Event):
    """A durable timer: due at this event's time + ``delay_s``. Scheduling an id that is pending
    replaces it (re-arming); ``generation`` tells armings apart (unique within the pool)."""

    subject_field = "timer_id"
    timer_id: Id
    # task_timeout | retry | heartbeat | agent_dead | circuit | defer | workflow_timeout | signal_timeout
    kind: str
    delay_s: float
    generation: int
    task_id: Id | None = None
    agent_id: Id | None = None
    attempt: int = 0
    workflow_id: Id | None = None  # workflow_timeout and signal timers
    step: str | None = None  # signal timers


class TimerCancelled(Event):
    subject_field = "timer_id"
    timer_id: Id
    generation: int
    reason: str | None = None


class TimerFired(Event):
    """A due timer was fired (its effects follow in the same decision)."""

    subject_field = "timer_id"
    timer_id: Id
    kind: str
    generation: int
    task_id: Id | None = None
    agent_id: Id | None = None


class AgentMarkedUnhealthy(Event):
    subject_field = "agent_id"
    agent_id: Id
    reason: str


class AgentMarkedHealthy(Event):
    subject_field = "agent_id"
    agent_id: Id


class TaskReassigned(Event):
    """A task was taken from an agent (e.g. unhealthy) and queued for another one."""

    subject_field = "task_id"
    task_id: Id
    agent_id: Id
    reason: str


class TaskTimedOut(Event):
    subject_field = "task_id"
    task_id: Id
    agent_id: Id
    attempt: int
    timeout_s: float


class TaskRetryScheduled(Event):
    """A run failed with attempts left: the task waits ``delay_s``, then is queued again."""

    subject_field = "task_id"
    task_id: Id
    agent_id: Id | None
    error: str
    attempt: int  # the run that failed (1 = the first)
    delay_s: float
    error_code: str | None = None


class CircuitOpened(Event):
    subject_field = "agent_id"
    agent_id: Id
    failures: int
    cooldown_s: float


class CircuitHalfOpened(Event):
    subject_field = "agent_id"
    agent_id: Id


class CircuitClosed(Event):
    subject_field = "agent_id"
    agent_id: Id


class TaskUnassignable(Event):
    """No registered agent matches enough of the task's capabilities; it stays queued."""

    subject_field = "task_id"
    task_id: Id
    missing: Capabilities = ()
    best_match: float = 0.0
    threshold: float = 1.0


class TaskDeferred(Event):
    """A task put aside for ``delay_s``: by the coordinator (``agent_id`` None: it stays queued), or
    by the agent holding it (its slot freed, no failure counted; queued again after the delay)."""

    subject_field = "task_id"
    task_id: Id
    reason: str
    delay_s: float
    agent_id: Id | None = None


class RateLimitSet(Event):
    subject_field = "scope_id"
    scope: RateLimitScope
    scope_id: Id
    requests_per_min: float | None = None
    tokens_per_min: float | None = None
    concurrent: int | None = None


class TaskBudgetFlagged(Event):
    """A budget covering this running task is spent: the agent should wrap up."""

    subject_field = "task_id"
    task_id: Id
    agent_id: Id | None
    scope: BudgetScope
    scope_id: Id


class ScalingPolicySet(Event):
    subject_field = "agent_kind"
    agent_kind: str
    min_agents: int
    max_agents: int
    target_utilization: float
    queue_threshold: int
    cooldown_s: float
    stability_window_s: float


class ScalingDecided(Event):
    """The fleet of ``agent_kind`` should go from ``from_agents`` to ``to_agents``."""

    subject_field = "agent_kind"
    agent_kind: str
    from_agents: int
    to_agents: int
    reason: str
    metrics: dict[str, float] = Field(default_factory=dict)


class PricesSet(Event):
    """The pool's prices from now on, replacing the previous ones whole: the models it prices over
    the built-in table (names in lower case), the price of a model found in no table (None: the
    built-in default), and whether such a model is rejected instead."""

    models: dict[str, ModelPrice] = Field(default_factory=dict)
    default: ModelPrice | None = None
    strict: bool = False


class TaskWaiting(Event):
    """Why a queued task waits changed (``NoteTaskWaiting``); the coordinator's other reasons are
    ``TaskUnassignable``, ``TaskDeferred`` and ``TaskRetryScheduled``."""

    subject_field = "task_id"
    task_id: Id
    code: str
    scope: str | None = None
    scope_id: Id | None = None
    agents: tuple[Id, ...] = ()
    until: datetime | None = None


# -- workflows ---------------------------------------------------------------------------------------


class WorkflowStarted(Event):
    """A run of a workflow: the definition as it was (a snapshot) and its inputs, defaults filled in."""

    subject_field = "workflow_id"
    workflow_id: Id
    name: str
    version: str
    definition: dict[str, Any]
    inputs: dict[str, Any] = Field(default_factory=dict)
    total_tasks: int


class WorkflowStepSkipped(Event):
    """A step that will never run, and why (a dependency failed, the run stopped or ended)."""

    subject_field = "workflow_id"
    workflow_id: Id
    step: str
    reason: str


class WorkflowSignalAwaited(Event):
    """A signal step's dependencies are done: it waits for its signal (``timeout_s``: None, forever)."""

    subject_field = "workflow_id"
    workflow_id: Id
    step: str
    timeout_s: float | None = None


class WorkflowSignalled(Event):
    """Signal ``step`` arrived with its data (the step's result); it completes the step once the
    step waits for it (at once if it already does)."""

    subject_field = "workflow_id"
    workflow_id: Id
    step: str
    data: dict[str, Any] = Field(default_factory=dict)


class WorkflowStepCompleted(Event):
    """A signal step completed with its signal's data."""

    subject_field = "workflow_id"
    workflow_id: Id
    step: str
    result: dict[str, Any] = Field(default_factory=dict)


class WorkflowStepFailed(Event):
    """A step failed without a task failing: its signal did not come in time, or it could not be
    submitted (its submission was refused, its templates did not resolve)."""

    subject_field = "workflow_id"
    workflow_id: Id
    step: str
    error: str


class WorkflowEnded(Event):
    """A run reached its final status (completed, partially_completed, failed, cancelled,
    timed_out); ``code`` names a rule that ended it (e.g. BUDGET_EXCEEDED)."""

    subject_field = "workflow_id"
    workflow_id: Id
    status: str
    reason: str | None = None
    code: str | None = None
    completed_tasks: int = 0
    failed_tasks: int = 0
    skipped_tasks: int = 0


class WorkflowDefinitionRegistered(Event):
    """A named definition at one version (immutable once stored)."""

    subject_field = "name"
    name: str
    version: str
    definition: dict[str, Any]
    digest: str


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
    PoolPolicySet,
    TimerScheduled,
    TimerCancelled,
    TimerFired,
    AgentMarkedUnhealthy,
    AgentMarkedHealthy,
    TaskReassigned,
    TaskTimedOut,
    TaskRetryScheduled,
    CircuitOpened,
    CircuitHalfOpened,
    CircuitClosed,
    TaskUnassignable,
    TaskDeferred,
    RateLimitSet,
    TaskBudgetFlagged,
    ScalingPolicySet,
    ScalingDecided,
    PricesSet,
    TaskWaiting,
    WorkflowStarted,
    WorkflowStepSkipped,
    WorkflowSignalAwaited,
    WorkflowSignalled,
    WorkflowStepCompleted,
    WorkflowStepFailed,
    WorkflowEnded,
    WorkflowDefinitionRegistered,
)


# -- access: API tokens, in the pool contracts.SYSTEM_POOL -------------------------------------------


class ApiTokenIssued(Event):
    """An API token exists: its role, the agent it acts as (agent role) and its secret's SHA-256."""

    subject_field = "token_id"
    token_id: Id
    role: str
    agent_id: Id | None = None
    name: str | None = None
    secret_hash: str


class ApiTokenRevoked(Event):
    """An API token is refused from now on."""

    subject_field = "token_id"
    token_id: Id


ALL = (*ALL, ApiTokenIssued, ApiTokenRevoked)


# -- outbound subscriptions, in the pool contracts.SYSTEM_POOL ---------------------------------------


class SubscriptionSet(Event):
    """Subscription ``name`` as it is from now on. ``secret`` is sealed (never in clear);
    ``incarnation`` (the sequence of the event that created it) tells it from an earlier subscription
    of the same name; ``start`` is the first position per events partition (none: from 0)."""

    subject_field = "name"
    name: Id
    url: str
    channels: tuple[str, ...]
    secret: str
    start: tuple[int, ...] = ()
    max_attempts: int
    incarnation: int
    created: bool
    secret_changed: bool


class SubscriptionDeleted(Event):
    subject_field = "name"
    name: Id
    incarnation: int


class SubscriptionDeliveryFailed(Event):
    """A dead letter: the event at ``partition``/``position`` was not delivered in ``attempts`` tries."""

    subject_field = "name"
    name: Id
    incarnation: int
    event_id: str
    event_type: str
    partition: int
    position: int
    attempts: int
    last_error: str
    last_status: int | None = None


ALL = (*ALL, SubscriptionSet, SubscriptionDeleted, SubscriptionDeliveryFailed)


# -- inbound webhooks (contracts.webhooks) -----------------------------------------------------------


class WebhookSourceSet(Event):
    """A webhook source was created or replaced (pool ``_system``); ``secret`` is sealed with the
    server's key, never the secret itself."""

    subject_field = "source"
    source: str
    scheme: str
    secret: str
    pool: str
    mapping: dict[str, Any] = Field(default_factory=dict)


class WebhookSourceDeleted(Event):
    subject_field = "source"
    source: str


class ExternalEventReceived(Event):
    """A verified delivery of a webhook source, with the mapping rules that apply to it."""

    subject_field = "source"
    source: str
    webhook_id: str
    event_type: str
    payload: dict[str, Any] = Field(default_factory=dict)
    received_at: datetime
    rules: tuple[dict[str, Any], ...] = ()


class WebhookMappingFailed(Event):
    """A rule (``rule``, its index) or a workflow trigger (``workflow``) of a delivery could not be
    turned into a command."""

    subject_field = "source"
    source: str
    webhook_id: str
    rule: int | None = None
    workflow: str | None = None
    error: str


ALL = (*ALL, WebhookSourceSet, WebhookSourceDeleted, ExternalEventReceived, WebhookMappingFailed)


# -- audit: signed checkpoints (pool contracts.SYSTEM_POOL) ------------------------------------------


class AuditCheckpointRecorded(Event):
    """The events topic's chain heads as signed by ``key_id`` (``RecordAuditCheckpoint``): every
    partition's position and chain value, and the Ed25519 signature over them."""

    subject_field = "key_id"
    topic: str
    heads: dict[str, AuditHead]
    key_id: str
    algorithm: str
    signature: str


ALL = (*ALL, AuditCheckpointRecorded)
