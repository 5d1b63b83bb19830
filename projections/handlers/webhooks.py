"""Inbound webhook sources: one row per source of the _system pool.

A row holds what the API needs to verify a delivery (scheme, sealed secret, target pool, mapping)
and what ``GET /v1/webhooks`` shows (all of it but the secret). Each ``WebhookSourceSet`` carries
the whole source, so its row is written without being read; a deletion leaves a tombstone
without the secret. Deliveries (``ExternalEventReceived``) are events of ordinary pools and have
no table of their own: the log is where they are read.
"""

from __future__ import annotations

from contracts import Envelope
from contracts import event_types as ev
from projections.batch import Batch
from projections.handlers.registry import Registry

handlers = Registry()


@handlers.on(ev.WebhookSourceSet)
def _set(b: Batch, env: Envelope, d: ev.WebhookSourceSet) -> None:
    b.webhook_sources.put((env.pool, d.source), {
        "pool": env.pool,
        "source": d.source,
        "scheme": d.scheme,
        "secret": d.secret,
        "target_pool": d.pool,
        "mapping": d.mapping,
        "updated_at": env.time,
        "deleted_at": None,
        "position": b.offset,
    })


@handlers.on(ev.WebhookSourceDeleted)
def _deleted(b: Batch, env: Envelope, d: ev.WebhookSourceDeleted) -> None:
    b.webhook_sources.put((env.pool, d.source), {
        "pool": env.pool,
        "source": d.source,
        "scheme": "",
        "secret": "",
        "target_pool": "",
        "mapping": {},
        "updated_at": env.time,
        "deleted_at": env.time,
        "position": b.offset,
    })
