"""Coordination rows: pool policies, rate limits, scaling, durable timers and rejected commands.

Policies and limits are upserted whole (the latest event wins); scaling decisions and rejections
are append-only trails keyed by their log position; a timer row holds its latest arming.
"""

from __future__ import annotations

from contracts import Envelope
from contracts import event_types as ev
from projections.batch import Batch, after
from projections.handlers.registry import Registry
from projections.loading import TIMER

handlers = Registry()


# --- policies ---


@handlers.on(ev.PoolPolicySet)
def _pool_policy_set(b: Batch, env: Envelope, d: ev.PoolPolicySet) -> None:
    row = b.pools.rows[(env.pool,)]  # b.saw created it
    row.update(policy=d.model_dump(mode="json"), policy_set_at=env.time)


@handlers.on(ev.RateLimitSet)
def _rate_limit_set(b: Batch, env: Envelope, d: ev.RateLimitSet) -> None:
    b.rate_limits.put(
        (env.pool, d.scope, d.scope_id),
        {
            "pool": env.pool,
            "scope": d.scope,
            "scope_id": d.scope_id,
            "requests_per_min": d.requests_per_min,
            "tokens_per_min": d.tokens_per_min,
            "concurrent": d.concurrent,
            "updated_at": env.time,
        },
    )


@handlers.on(ev.ScalingPolicySet)
def _scaling_policy_set(b: Batch, env: Envelope, d: ev.ScalingPolicySet) -> None:
    b.scaling_policies.put(
        (env.pool, d.agent_kind),
        {
            "pool": env.pool,
            "agent_kind": d.agent_kind,
            "min_agents": d.min_agents,
            "max_agents": d.max_agents,
            "target_utilization": d.target_utilization,
            "queue_threshold": d.queue_threshold,
            "cooldown_s": d.cooldown_s,
            "stability_window_s": d.stability_window_s,
            "updated_at": env.time,
        },
    )


@handlers.on(ev.ScalingDecided)
def _scaling_decided(b: Batch, env: Envelope, d: ev.ScalingDecided) -> None:
    b.scaling_decisions.append(
        {
            "pool": env.pool,
            "position": b.offset,
            "agent_kind": d.agent_kind,
            "from_agents": d.from_agents,
            "to_agents": d.to_agents,
            "reason": d.reason,
            "metrics": dict(d.metrics),
            "decided_at": env.time,
            "event_id": env.id,
        }
    )


# --- timers ---


@handlers.on(ev.TimerScheduled, reads=(TIMER,))
def _timer_scheduled(b: Batch, env: Envelope, d: ev.TimerScheduled) -> None:
    # Scheduling a pending id re-arms it: the row holds the latest arming.
    b.timers.put(
        (env.pool, d.timer_id),
        {
            "pool": env.pool,
            "timer_id": d.timer_id,
            "kind": d.kind,
            "generation": d.generation,
            "status": "pending",
            "task_id": d.task_id,
            "agent_id": d.agent_id,
            "attempt": d.attempt,
            "delay_s": d.delay_s,
            "scheduled_at": env.time,
            "due_at": after(env.time, d.delay_s),
            "ended_at": None,
            "cancel_reason": None,
        },
    )


@handlers.on(ev.TimerCancelled, ev.TimerFired, reads=(TIMER,))
def _timer_ended(b: Batch, env: Envelope, d: ev.TimerCancelled | ev.TimerFired) -> None:
    key = (env.pool, d.timer_id)
    row = b.timers.rows.get(key)
    # As in the decider: only the pending arming of that generation ends; others are stale.
    if row is None or row["status"] != "pending" or row["generation"] != d.generation:
        return
    if isinstance(d, ev.TimerCancelled):
        row.update(status="cancelled", ended_at=env.time, cancel_reason=d.reason)
    else:
        row.update(status="fired", ended_at=env.time)
    b.timers.touch(key)


# --- the rejection trail ---


@handlers.on(ev.CommandRejected)
def _command_rejected(b: Batch, env: Envelope, d: ev.CommandRejected) -> None:
    b.rejections.append(
        {
            "pool": env.pool,
            "position": b.offset,
            "command_id": env.commandid,
            "command_type": d.command_type,
            "code": d.code,
            "message": d.message,
            "details": d.details,
            "at": env.time,
            "event_id": env.id,
        }
    )
