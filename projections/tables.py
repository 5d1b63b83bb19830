"""The read-model schema: SQLAlchemy Core tables answering status queries and keeping the audit trail.

Every table is keyed by pool first, because many pools share one database. The tables are
derived data: they can always be dropped and rebuilt from the event log (``projections.rebuild``),
so this module must never hold anything the log does not (no user input, no clocks, no counters
that do not come from events).

Types are portable between SQLite and PostgreSQL. Times are the envelope ``time`` of the event
that set them, always stored and returned as UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

metadata = sa.MetaData()

# Ids are TEXT, not VARCHAR(200): the contracts cap client ids at 200 characters, but ids derived
# from them (timer ids such as "heartbeat:<agent id>", reactors' command ids) are longer, and
# PostgreSQL refuses a value longer than a VARCHAR's length: one such row would stop the projector.
_ID = sa.Text()


class UTCDateTime(sa.TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend.

    PostgreSQL stores ``timestamptz``. SQLite has no datetime type: values are stored as UTC text
    in SQLAlchemy's own SQLite format ("2025-01-01 12:00:00.000000", sortable, readable by any
    tool), converted here in one step per value because the projector writes hundreds of
    thousands of them per second. Either way values come back aware, so rows read back compare
    equal to rows built from events.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(sa.String(26))
        return dialect.type_descriptor(sa.DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        elif value.tzinfo is not UTC:
            value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None).isoformat(" ", "microseconds")
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# none_as_null: a Python None is SQL NULL (not the JSON text 'null'), so "no heartbeat yet" and
# "no result" read back as None on both backends.
def _json() -> sa.JSON:
    return sa.JSON(none_as_null=True)


agents = sa.Table(
    "agents",
    metadata,
    sa.Column("pool", _ID, primary_key=True),
    sa.Column("agent_id", _ID, primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("capabilities", _json(), nullable=False),
    sa.Column("capacity", sa.Integer, nullable=False),
    # Number of tasks the agent holds (assigned or running). Maintained from task transitions;
    # the check turns a bookkeeping bug into a failed batch instead of a silently wrong model.
    sa.Column("load", sa.Integer, nullable=False),
    # 'active' | 'unhealthy' (registered, missed its heartbeat) | 'deregistered'
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("registered_at", UTCDateTime, nullable=False),
    sa.Column("last_heartbeat_at", UTCDateTime),
    sa.Column("heartbeat", _json()),  # last reported {load, cpu, memory, queue}
    sa.Column("deregistered_at", UTCDateTime),
    sa.Column("tasks_completed", sa.Integer, nullable=False),
    sa.Column("tasks_failed", sa.Integer, nullable=False),
    sa.Column("weight", sa.Float, nullable=False),
    sa.Column("heartbeat_timeout_s", sa.Float, nullable=False),
    # Health as the decider sees it (kept through deregistration, reset by registering again).
    sa.Column("healthy", sa.Boolean, nullable=False),
    sa.Column("unhealthy_reason", sa.Text),
    sa.Column("health_changed_at", UTCDateTime),
    # Circuit breaker: 'closed' | 'open' | 'half_open'; open until circuit_until (then half-open
    # when its timer fires). consecutive_failures = failed runs since the last success or close.
    sa.Column("circuit", sa.String(20), nullable=False),
    sa.Column("circuit_changed_at", UTCDateTime),
    sa.Column("circuit_until", UTCDateTime),
    sa.Column("consecutive_failures", sa.Integer, nullable=False),
    sa.CheckConstraint("load >= 0", name="ck_agents_load_nonnegative"),
    sa.Index("ix_agents_pool_status", "pool", "status"),
)

tasks = sa.Table(
    "tasks",
    metadata,
    sa.Column("pool", _ID, primary_key=True),
    sa.Column("task_id", _ID, primary_key=True),
    sa.Column("type", sa.String(200), nullable=False),
    sa.Column("priority", sa.Integer, nullable=False),
    sa.Column("required_capabilities", _json(), nullable=False),
    sa.Column("data", _json(), nullable=False),
    sa.Column("strategy", sa.Text),
    # Preferred capabilities the pool's inference rules derived from ``data``.
    sa.Column("inferred_capabilities", _json(), nullable=False),
    sa.Column("retry", _json()),  # the task's retry policy, if any
    sa.Column("timeout_s", sa.Float),
    # What the agent is asked to do, and with what (SubmitTask.action/parameters).
    sa.Column("action", sa.Text),
    sa.Column("parameters", _json(), nullable=False),
    # The only agent that may take it (SubmitTask.agent_id, or its agent_name resolved).
    sa.Column("pinned_agent_id", _ID),
    # 'queued' | 'assigned' | 'running' | 'retrying' | 'completed' | 'failed' | 'cancelled'
    # ('retrying': a run failed with attempts left; queued again at next_attempt_at.)
    sa.Column("status", sa.String(20), nullable=False),
    # The agent holding the task while assigned or running; the agent of the last run once it
    # completed, failed or waits for a retry; None while queued.
    sa.Column("agent_id", _ID),
    sa.Column("attempts", sa.Integer, nullable=False),  # assignments so far
    sa.Column("failures", sa.Integer, nullable=False),  # runs that failed (timeouts included)
    sa.Column("timeouts", sa.Integer, nullable=False),  # runs that timed out
    sa.Column("reassignments", sa.Integer, nullable=False),  # taken from an unhealthy agent
    sa.Column("requeue_reason", sa.Text),  # why it last went back to the queue
    sa.Column("next_attempt_at", UTCDateTime),  # while 'retrying'
    # Required capabilities the assigned agent lacks (a partial-match fallback assignment).
    sa.Column("capability_gap", _json(), nullable=False),
    # {"missing", "best_match", "threshold"} while no agent matches enough (cleared on assignment).
    sa.Column("unassignable", _json()),
    sa.Column("unassignable_at", UTCDateTime),
    # The last deferral (e.g. RATE_LIMITED), until when, and by which agent (None: the coordinator,
    # for rate limits; else the agent that held the task and gave it back); cleared on assignment.
    sa.Column("deferred_reason", sa.String(100)),
    sa.Column("deferred_until", UTCDateTime),
    sa.Column("deferred_by", _ID),
    # Why it waits while queued or retrying (None otherwise): {"code", "since", and per code
    # "until", "scope", "scope_id", "agents", "missing", "agent_id", "delay_s", ...}; codes:
    # contracts.commands.WaitingCode. "all_capable_agents_busy" is the default the projection gives
    # a task back in the queue; the others come from TaskUnassignable, TaskDeferred (the
    # coordinator's: rate_limited; its agent's: deferred_by_agent), TaskRetryScheduled and TaskWaiting.
    sa.Column("waiting_reason", _json()),
    # {"scope", "scope_id"} of a spent budget covering the task while it ran.
    sa.Column("budget_flag", _json()),
    sa.Column("budget_flagged_at", UTCDateTime),
    sa.Column("submitted_at", UTCDateTime, nullable=False),
    sa.Column("assigned_at", UTCDateTime),
    sa.Column("started_at", UTCDateTime),
    sa.Column("finished_at", UTCDateTime),
    sa.Column("error", sa.Text),  # last failure message, or the cancellation reason
    # The last failure's code (FailTask.error_code: "http_status:404", "timeout"...) and whether
    # it could be retried (False: it failed the task at once); None before any failure, and
    # after a cancellation with a reason (which ``error`` then holds).
    sa.Column("error_code", sa.Text),
    sa.Column("retryable", sa.Boolean),
    sa.Column("result", _json()),
    sa.Column("last_seq", sa.BigInteger),  # envelope.sequence of the last event changing the task
    sa.Index("ix_tasks_pool_status", "pool", "status"),
    sa.Index("ix_tasks_pool_agent", "pool", "agent_id"),
    sa.Index("ix_tasks_pool_type", "pool", "type"),
)

resource_limits = sa.Table(
    "resource_limits",
    metadata,
    sa.Column("pool", _ID, primary_key=True),
    sa.Column("max_cpu_cores", sa.Float, nullable=False),
    sa.Column("max_memory_mb", sa.Float, nullable=False),
    sa.Column("max_disk_mb", sa.Float, nullable=False),
    sa.Column("max_network_mbps", sa.Float, nullable=False),
    sa.Column("max_agents", sa.Integer),  # None: unlimited
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

allocations = sa.Table(
    "allocations",
    metadata,
    sa.Column("pool", _ID, primary_key=True),
    sa.Column("allocation_id", _ID, primary_key=True),
    sa.Column("agent_id", _ID, nullable=False),
    sa.Column("cpu_cores", sa.Float, nullable=False),
    sa.Column("memory_mb", sa.Float, nullable=False),
    sa.Column("disk_mb", sa.Float, nullable=False),
    sa.Column("network_mbps", sa.Float, nullable=False),
    sa.Column("status", sa.String(20), nullable=False),  # 'active' | 'released'
    sa.Column("allocated_at", UTCDateTime, nullable=False),
    sa.Column("released_at", UTCDateTime),
    sa.Index("ix_allocations_pool_status", "pool", "status"),
)

costs = sa.Table(
    "costs",
    metadata,
    sa.Column("pool", _ID, primary_key=True),
    sa.Column("cost_id", _ID, primary_key=True),
    sa.Column("agent_id", _ID, nullable=False),
    sa.Column("task_id", _ID),
    # The task's data["workflow_id"] when the cost was recorded (None without a known task or
    # workflow). Kept on the row so workflow budgets can be summed without reading JSON.
    sa.Column("workflow_id", _ID),
    sa.Column("model", sa.String(200), nullable=False),
    sa.Column("input_tokens", sa.BigInteger, nullable=False),
    sa.Column("output_tokens", sa.BigInteger, nullable=False),
    # Money in whole micro-dollars (contracts.money): sums are exact and fit 64 bits.
    sa.Column("cost_micros", sa.BigInteger, nullable=False),
    sa.Column("priced_from_table", sa.Boolean, nullable=False),
    sa.Column("recorded_at", UTCDateTime, nullable=False),
    sa.Index("ix_costs_pool_agent", "pool", "agent_id"),
    sa.Index("ix_costs_pool_task", "pool", "task_id"),
    sa.Index("ix_costs_pool_workflow", "pool", "workflow_id"),
)

budgets = sa.Table(
    "budgets",
    metadata,
    sa.Column("pool", _ID, primary_key=True),
    sa.Column("scope", sa.String(20), primary_key=True),  # 'pool' | 'agent' | 'workflow'
    sa.Column("scope_id", _ID, primary_key=True),
    sa.Column("limit_micros", sa.BigInteger, nullable=False),
    sa.Column("spent_micros", sa.BigInteger, nullable=False),
    sa.Column("exceeded", sa.Boolean, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

# A pool's own prices (its last PricesSet): the models it prices over the built-in table, in USD
# per 1K input and output tokens, its default price (None: the built-in one) and strictness. The
# built-in table is code, not data: the read adds it.
prices = sa.Table(
    "prices",
    metadata,
    sa.Column("pool", _ID, primary_key=True),
    sa.Column("models", _json(), nullable=False),
    sa.Column("default_price", _json()),
    sa.Column("strict", sa.Boolean, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

# The audit trail of every accepted assignment with the coordinator's reasoning.
# position = the offset of the TaskAssigned event in its log partition (a pool lives in one
# partition, so it is unique per pool and orders the pool's history).
assignments = sa.Table(
    "assignments",
    metadata,
    sa.Column("pool", _ID, primary_key=True),
    sa.Column("position", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("task_id", _ID, nullable=False),
    sa.Column("agent_id", _ID, nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("strategy", sa.Text),
    sa.Column("candidates", _json(), nullable=False),
    sa.Column("eligible", sa.Integer),
    sa.Column("considered", sa.Integer),
    sa.Column("decision_us", sa.Float),
    sa.Column("capability_gap", _json(), nullable=False),
    sa.Column("preferred", _json(), nullable=False),  # inferred capabilities that counted
    sa.Column("skipped", _json(), nullable=False),  # agents passed over, by reason
    sa.Column("assigned_at", UTCDateTime, nullable=False),
    sa.Column("event_id", sa.String(200), nullable=False),
    sa.Index("ix_assignments_pool_task", "pool", "task_id"),
    sa.Index("ix_assignments_pool_agent", "pool", "agent_id"),
)

# Every rejected command (position as in ``assignments``), for audit and for answering a repeated
# command_id with the original outcome.
rejections = sa.Table(
    "rejections",
    metadata,
    sa.Column("pool", _ID, primary_key=True),
    sa.Column("position", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("command_id", _ID),
    sa.Column("command_type", sa.String(200), nullable=False),
    sa.Column("code", sa.String(100), nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("details", _json(), nullable=False),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("event_id", sa.String(200), nullable=False),
    sa.Index("ix_rejections_pool_command", "pool", "command_id"),
)

# One row per pool: where its history is (the latest event time is the read model's "now", as
# the coordinator's) and its coordination policy (None until the first PoolPolicySet: defaults).
pools = sa.Table(
    "pools",
    metadata,
    sa.Column("pool", _ID, primary_key=True),
    sa.Column("events", sa.BigInteger, nullable=False),
    sa.Column("last_sequence", sa.BigInteger),
    sa.Column("last_event_at", UTCDateTime, nullable=False),  # the latest event time seen
    sa.Column("policy", _json()),  # contracts.commands.PoolPolicy, every field
    sa.Column("policy_set_at", UTCDateTime),
)

# Per-agent performance profiles: the fields of projections.performance.Profile, folded by the
# same PerformanceBook the coordinator uses. ``since`` is seconds since the epoch, as Profile
# keeps it, so a stored profile is exactly the folded one.
agent_performance = sa.Table(
    "agent_performance",
    metadata,
    sa.Column("pool", _ID, primary_key=True),
    sa.Column("agent_id", _ID, primary_key=True),
    sa.Column("completed", sa.Integer, nullable=False),
    sa.Column("failed", sa.Integer, nullable=False),
    sa.Column("timeouts", sa.Integer, nullable=False),
    sa.Column("lost", sa.Integer, nullable=False),
    sa.Column("success_rate", sa.Float, nullable=False),
    sa.Column("error_rate", sa.Float, nullable=False),
    sa.Column("mean_duration_s", sa.Float),
    sa.Column("up_s", sa.Float, nullable=False),
    sa.Column("down_s", sa.Float, nullable=False),
    sa.Column("healthy", sa.Boolean, nullable=False),
    sa.Column("active", sa.Boolean, nullable=False),
    sa.Column("since", sa.Float),
)

# Durable timers, one row per timer id holding its latest arming: 'pending' until fired or
# cancelled (a firing or cancellation of an older arming changes nothing, as in the decider).
timers = sa.Table(
    "timers",
    metadata,
    sa.Column("pool", _ID, primary_key=True),
    sa.Column("timer_id", _ID, primary_key=True),
    sa.Column("kind", sa.String(50), nullable=False),
    sa.Column("generation", sa.BigInteger, nullable=False),
    sa.Column("status", sa.String(20), nullable=False),  # 'pending' | 'fired' | 'cancelled'
    sa.Column("task_id", _ID),
    sa.Column("agent_id", _ID),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("delay_s", sa.Float, nullable=False),
    sa.Column("scheduled_at", UTCDateTime, nullable=False),
    sa.Column("due_at", UTCDateTime, nullable=False),
    sa.Column("ended_at", UTCDateTime),
    sa.Column("cancel_reason", sa.Text),
    sa.Index("ix_timers_pool_status_due", "pool", "status", "due_at"),
)

rate_limits = sa.Table(
    "rate_limits",
    metadata,
    sa.Column("pool", _ID, primary_key=True),
    sa.Column("scope", sa.String(20), primary_key=True),  # 'agent' | 'model'
    sa.Column("scope_id", _ID, primary_key=True),
    sa.Column("requests_per_min", sa.Float),  # None: unlimited
    sa.Column("tokens_per_min", sa.Float),
    sa.Column("concurrent", sa.Integer),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

scaling_policies = sa.Table(
    "scaling_policies",
    metadata,
    sa.Column("pool", _ID, primary_key=True),
    sa.Column("agent_kind", sa.String(100), primary_key=True),
    sa.Column("min_agents", sa.Integer, nullable=False),
    sa.Column("max_agents", sa.Integer, nullable=False),
    sa.Column("target_utilization", sa.Float, nullable=False),
    sa.Column("queue_threshold", sa.Integer, nullable=False),
    sa.Column("cooldown_s", sa.Float, nullable=False),
    sa.Column("stability_window_s", sa.Float, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

# Every scaling decision (append-only; position as in ``assignments``).
scaling_decisions = sa.Table(
    "scaling_decisions",
    metadata,
    sa.Column("pool", _ID, primary_key=True),
    sa.Column("position", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("agent_kind", sa.String(100), nullable=False),
    sa.Column("from_agents", sa.Integer, nullable=False),
    sa.Column("to_agents", sa.Integer, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("metrics", _json(), nullable=False),
    sa.Column("decided_at", UTCDateTime, nullable=False),
    sa.Column("event_id", sa.String(200), nullable=False),
    sa.Index("ix_scaling_decisions_pool_kind", "pool", "agent_kind"),
)

# Workflow runs: the definition snapshot and inputs a run started with, its status (queued ->
# running at its first step -> a final status at WorkflowEnded) and its step counts. position =
# the offset of its WorkflowStarted (as in ``assignments``): lists come in log order.
workflows = sa.Table(
    "workflows",
    metadata,
    sa.Column("pool", _ID, primary_key=True),
    sa.Column("workflow_id", _ID, primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("version", sa.Text, nullable=False),
    # 'queued' | 'running' | 'completed' | 'partially_completed' | 'failed' | 'cancelled' | 'timed_out'
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("started_at", UTCDateTime),  # its first step was submitted (or began to wait)
    sa.Column("ended_at", UTCDateTime),
    sa.Column("total_tasks", sa.Integer, nullable=False),
    # Steps completed, failed (a failure the run does not tolerate) and skipped: the decider's
    # own counts (WorkflowEnded agrees with them when it ends the run).
    sa.Column("completed_tasks", sa.Integer, nullable=False),
    sa.Column("failed_tasks", sa.Integer, nullable=False),
    sa.Column("skipped_tasks", sa.Integer, nullable=False),
    sa.Column("cost_micros", sa.BigInteger, nullable=False),  # the sum of its steps' costs
    sa.Column("reason", sa.Text),  # why it ended as it did
    sa.Column("code", sa.String(100)),  # the rule that ended it (e.g. BUDGET_EXCEEDED)
    sa.Column("definition", _json(), nullable=False),
    sa.Column("inputs", _json(), nullable=False),
    sa.Column("position", sa.BigInteger, nullable=False),
    sa.Column("last_seq", sa.BigInteger),  # envelope.sequence of the last event changing the run
    sa.Index("ix_workflows_pool_status", "pool", "status"),
    sa.Index("ix_workflows_pool_name", "pool", "name"),
    sa.Index("ix_workflows_pool_position", "pool", "position"),
)

# The steps of each run, one row per step from the run's start. A task step follows its task
# (task_id = "<workflow id>.<step>", set when it is submitted; the assignment audit of that task
# id is the step's); a signal step waits and completes with its signal's data.
workflow_steps = sa.Table(
    "workflow_steps",
    metadata,
    sa.Column("pool", _ID, primary_key=True),
    sa.Column("workflow_id", _ID, primary_key=True),
    sa.Column("step", _ID, primary_key=True),
    sa.Column("position", sa.Integer, nullable=False),  # its index in the definition
    sa.Column("kind", sa.String(20), nullable=False),  # 'task' | 'signal'
    sa.Column("depends_on", _json(), nullable=False),
    sa.Column("continue_on_failure", sa.Boolean, nullable=False),
    # 'pending' | 'queued' | 'assigned' | 'running' | 'retrying' | 'waiting' | 'completed' |
    # 'failed' | 'cancelled' | 'skipped'
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("task_id", _ID),
    sa.Column("agent_id", _ID),  # the agent of its task's latest assignment
    sa.Column("attempts", sa.Integer, nullable=False),  # its task's assignments so far
    sa.Column("submitted_at", UTCDateTime),  # its task was submitted, or it began to wait
    sa.Column("started_at", UTCDateTime),  # its task first started, or it began to wait
    sa.Column("ended_at", UTCDateTime),
    sa.Column("result", _json()),
    sa.Column("error", sa.Text),  # last failure message, or the cancellation reason
    sa.Column("reason", sa.Text),  # why it was skipped
    sa.Column("cost_micros", sa.BigInteger, nullable=False),
    sa.Column("last_seq", sa.BigInteger),
    sa.Index("ix_workflow_steps_pool_task", "pool", "task_id"),
)

# Named workflow definitions, one row per version (a version never changes). position = the
# offset of its WorkflowDefinitionRegistered: the latest version of a name is the last registered.
workflow_definitions = sa.Table(
    "workflow_definitions",
    metadata,
    sa.Column("pool", _ID, primary_key=True),
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("version", sa.Text, primary_key=True),
    sa.Column("definition", _json(), nullable=False),
    sa.Column("digest", sa.String(64), nullable=False),
    sa.Column("registered_at", UTCDateTime, nullable=False),
    sa.Column("position", sa.BigInteger, nullable=False),
)

# API tokens (pool _system): what a request's bearer token is checked against. The secret's
# SHA-256 only, never the secret; revoked_at is set once, for good.
api_tokens = sa.Table(
    "api_tokens",
    metadata,
    sa.Column("pool", _ID, primary_key=True),
    sa.Column("token_id", _ID, primary_key=True),
    sa.Column("role", sa.String(20), nullable=False),
    sa.Column("agent_id", _ID),
    sa.Column("name", sa.Text),
    sa.Column("secret_hash", sa.String(64), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("revoked_at", UTCDateTime),
)

# Outbound subscriptions (pool _system), one row per name as its last SubscriptionSet or
# SubscriptionDeleted left it (a deleted one is a tombstone: status 'deleted', nothing else kept).
# Never the secret, not even sealed. start: the first position per events partition ([]: from 0).
subscriptions = sa.Table(
    "subscriptions",
    metadata,
    sa.Column("pool", _ID, primary_key=True),
    sa.Column("name", _ID, primary_key=True),
    sa.Column("incarnation", sa.BigInteger, nullable=False),
    sa.Column("status", sa.String(20), nullable=False),  # 'active' | 'deleted'
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("channels", _json(), nullable=False),
    sa.Column("max_attempts", sa.Integer, nullable=False),
    sa.Column("start", _json(), nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

# Dead letters of the subscriptions (append-only; position = the offset of the
# SubscriptionDeliveryFailed, as in ``assignments``); event_partition/event_position: the event not
# delivered.
subscription_failures = sa.Table(
    "subscription_failures",
    metadata,
    sa.Column("pool", _ID, primary_key=True),
    sa.Column("position", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("name", _ID, nullable=False),
    sa.Column("incarnation", sa.BigInteger, nullable=False),
    sa.Column("event_id", sa.String(200), nullable=False),
    sa.Column("event_type", sa.String(200), nullable=False),
    sa.Column("event_partition", sa.Integer, nullable=False),
    sa.Column("event_position", sa.BigInteger, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("last_error", sa.Text, nullable=False),
    sa.Column("last_status", sa.Integer),
    sa.Column("failed_at", UTCDateTime, nullable=False),
    sa.Index("ix_subscription_failures_name", "pool", "name", "incarnation", "position"),
)

# Inbound webhook sources (pool _system), one row per source as its last WebhookSourceSet or
# WebhookSourceDeleted left it (a deleted one is a tombstone: deleted_at set, nothing else kept).
# The secret only sealed (services.runtime.sealing), for the API to verify deliveries; never shown.
# position: the offset of the event that wrote the row.
webhook_sources = sa.Table(
    "webhook_sources",
    metadata,
    sa.Column("pool", _ID, primary_key=True),
    sa.Column("source", _ID, primary_key=True),
    sa.Column("scheme", sa.String(20), nullable=False),
    sa.Column("secret", sa.Text, nullable=False),
    sa.Column("target_pool", _ID, nullable=False),
    sa.Column("mapping", _json(), nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("deleted_at", UTCDateTime),
    sa.Column("position", sa.BigInteger, nullable=False),
)

# Where each projector is in each log partition: the next offset it will apply. Written in the
# same transaction as the rows an apply changed.
positions = sa.Table(
    "positions",
    metadata,
    sa.Column("projector", sa.String(100), primary_key=True),
    sa.Column("topic", sa.String(200), primary_key=True),
    sa.Column("partition", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("next_offset", sa.BigInteger, nullable=False),
)

# The read-model tables proper (everything a rebuild must reproduce), in dependency-free order.
READ_MODELS: tuple[sa.Table, ...] = (
    agents,
    tasks,
    resource_limits,
    allocations,
    costs,
    budgets,
    prices,
    assignments,
    rejections,
    pools,
    agent_performance,
    timers,
    rate_limits,
    scaling_policies,
    scaling_decisions,
    workflows,
    workflow_steps,
    workflow_definitions,
    api_tokens,
    subscriptions,
    subscription_failures,
    webhook_sources,
)

__all__ = [
    "READ_MODELS",
    "UTCDateTime",
    "agent_performance",
    "agents",
    "allocations",
    "api_tokens",
    "assignments",
    "budgets",
    "costs",
    "metadata",
    "pools",
    "positions",
    "prices",
    "rate_limits",
    "rejections",
    "resource_limits",
    "scaling_decisions",
    "scaling_policies",
    "subscription_failures",
    "subscriptions",
    "tasks",
    "timers",
    "webhook_sources",
    "workflow_definitions",
    "workflow_steps",
    "workflows",
]
