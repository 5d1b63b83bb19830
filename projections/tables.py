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

_ID = sa.String(200)  # contracts cap ids at 200 characters


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
    sa.Column("status", sa.String(20), nullable=False),  # 'active' | 'deregistered'
    sa.Column("registered_at", UTCDateTime, nullable=False),
    sa.Column("last_heartbeat_at", UTCDateTime),
    sa.Column("heartbeat", _json()),  # last reported {load, cpu, memory, queue}
    sa.Column("deregistered_at", UTCDateTime),
    sa.Column("tasks_completed", sa.Integer, nullable=False),
    sa.Column("tasks_failed", sa.Integer, nullable=False),
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
    sa.Column("strategy", sa.String(50)),
    # 'queued' | 'assigned' | 'running' | 'completed' | 'failed' | 'cancelled'
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("agent_id", _ID),  # the agent holding the task while assigned or running
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("submitted_at", UTCDateTime, nullable=False),
    sa.Column("assigned_at", UTCDateTime),
    sa.Column("started_at", UTCDateTime),
    sa.Column("finished_at", UTCDateTime),
    sa.Column("error", sa.Text),  # last failure message, or the cancellation reason
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
    sa.Column("cost_usd", sa.Float, nullable=False),
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
    sa.Column("limit_usd", sa.Float, nullable=False),
    sa.Column("spent_usd", sa.Float, nullable=False),
    sa.Column("exceeded", sa.Boolean, nullable=False),
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
    sa.Column("strategy", sa.String(50)),
    sa.Column("candidates", _json(), nullable=False),
    sa.Column("eligible", sa.Integer),
    sa.Column("considered", sa.Integer),
    sa.Column("decision_us", sa.Float),
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
    sa.Column("command_id", sa.String(200)),
    sa.Column("command_type", sa.String(200), nullable=False),
    sa.Column("code", sa.String(100), nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("details", _json(), nullable=False),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("event_id", sa.String(200), nullable=False),
    sa.Index("ix_rejections_pool_command", "pool", "command_id"),
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
    assignments,
    rejections,
)

__all__ = [
    "READ_MODELS",
    "UTCDateTime",
    "agents",
    "allocations",
    "assignments",
    "budgets",
    "costs",
    "metadata",
    "positions",
    "rejections",
    "resource_limits",
    "tasks",
]
