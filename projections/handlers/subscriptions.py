"""Outbound subscriptions: one row per name of the _system pool, and their dead letters.

A row holds what ``GET /v1/subscriptions`` shows (URL, channels, attempts, where delivery
started), never the secret, sealed or not. Each ``SubscriptionSet`` carries the whole
subscription, so its row is written without being read; a deletion leaves a tombstone.
Dead letters are a trail, one row per ``SubscriptionDeliveryFailed``.
"""

from __future__ import annotations

from contracts import Envelope
from contracts import event_types as ev
from projections.batch import Batch
from projections.handlers.registry import Registry

handlers = Registry()


@handlers.on(ev.SubscriptionSet)
def _set(b: Batch, env: Envelope, d: ev.SubscriptionSet) -> None:
    b.subscriptions.put((env.pool, d.name), {
        "pool": env.pool,
        "name": d.name,
        "incarnation": d.incarnation,
        "status": "active",
        "url": d.url,
        "channels": list(d.channels),
        "max_attempts": d.max_attempts,
        "start": list(d.start),
        "updated_at": env.time,
    })


@handlers.on(ev.SubscriptionDeleted)
def _deleted(b: Batch, env: Envelope, d: ev.SubscriptionDeleted) -> None:
    b.subscriptions.put((env.pool, d.name), {
        "pool": env.pool,
        "name": d.name,
        "incarnation": d.incarnation,
        "status": "deleted",
        "url": "",
        "channels": [],
        "max_attempts": 0,
        "start": [],
        "updated_at": env.time,
    })


@handlers.on(ev.SubscriptionDeliveryFailed)
def _failed(b: Batch, env: Envelope, d: ev.SubscriptionDeliveryFailed) -> None:
    b.subscription_failures.append({
        "pool": env.pool,
        "position": b.offset,
        "name": d.name,
        "incarnation": d.incarnation,
        "event_id": d.event_id,
        "event_type": d.event_type,
        "event_partition": d.partition,
        "event_position": d.position,
        "attempts": d.attempts,
        "last_error": d.last_error,
        "last_status": d.last_status,
        "failed_at": env.time,
    })
