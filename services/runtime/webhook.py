"""The scaling webhook (``--scaling-webhook URL``): the outbound subscription ``scaling-webhook`` to
the channel ``type:ScalingDecided`` (``services.runtime.deliveries`` delivers it).

At start the embedded runner makes sure that subscription exists with the configured URL
(``ensure_scaling_webhook``): created with a secret of its own when absent, its URL and channel
set again when they differ (its secret and position kept). Once it exists, it is a subscription
like any other: listed, changed and deleted through ``/v1/subscriptions``.

Compatibility with the relay this replaces (consumer group ``webhook``, unsigned, retried for
ever, and which sent the whole history of ScalingDecided on its first start):

* A new scaling webhook starts at the end of the log, like any new subscription. A deployment
  whose relay had delivered something starts where the relay had got to, so an upgrade neither
  sends again what was acknowledged nor loses what was not.
* Deliveries are signed (Standard Webhooks). To verify them, give the subscription a secret you
  know: ``PUT /v1/subscriptions/scaling-webhook`` with ``secret`` (later starts keep it).
* An event gets ``SCALING_ATTEMPTS`` tries (about 90 minutes at the 60 s backoff cap) before it
  becomes a dead letter (``GET /v1/subscriptions/scaling-webhook/failures``).

This module must never decide anything: it only asks, with a ``SetSubscription`` command.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from contracts import SYSTEM_POOL, Envelope, new_id
from contracts import commands as c
from events import EventLog
from services.runtime.channels import parse_channel
from services.runtime.deliveries import secret_context
from services.runtime.ingest import command_envelope
from services.runtime.sealing import Sealer
from services.runtime.subscription_book import SubscriptionBook

__all__ = [
    "LEGACY_GROUP",
    "SCALING_CHANNELS",
    "SCALING_SUBSCRIPTION",
    "ensure_scaling_webhook",
    "new_secret",
    "start_positions",
]

SCALING_SUBSCRIPTION = "scaling-webhook"
SCALING_CHANNELS = ("type:ScalingDecided",)
SCALING_ATTEMPTS = c.MAX_DELIVERY_ATTEMPTS
# The consumer group of the relay this replaces: where it had got to is where the subscription starts.
LEGACY_GROUP = "webhook"


def new_secret() -> str:
    """A new Standard Webhooks signing secret: ``whsec_`` and 32 random bytes in base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


async def start_positions(log: EventLog, topic: str, partitions: int,
                          legacy_group: str | None = None) -> tuple[int, ...]:
    """The end of each events partition: where a subscription created now starts (or, when
    ``legacy_group`` committed anything, where that group had got to)."""
    if legacy_group is not None:
        legacy = tuple([await log.committed(legacy_group, topic, p) for p in range(partitions)])
        if any(legacy):
            return legacy
    return tuple([await log.end_offset(topic, p) for p in range(partitions)])


async def ensure_scaling_webhook(url: str, *, book: SubscriptionBook, log: EventLog, topic: str,
                                 partitions: int, sealer: Callable[[], Sealer],
                                 submit: Callable[[Envelope], Awaitable[Any]]) -> bool:
    """Ask for subscription ``scaling-webhook`` to ``url`` unless the book (ready) has it so
    already; True when a command was appended."""
    found = book.current.get(SCALING_SUBSCRIPTION)
    wanted = (url, frozenset(parse_channel(text) for text in SCALING_CHANNELS), SCALING_ATTEMPTS)
    if found is not None and (found.url, found.channels, found.max_attempts) == wanted:
        return False
    generated = c.SubscriptionGenerated()
    if found is None:
        generated = c.SubscriptionGenerated(
            positions=await start_positions(log, topic, partitions, LEGACY_GROUP),
            secret=sealer().seal(new_secret(), context=secret_context(SCALING_SUBSCRIPTION)))
    cmd = c.SetSubscription(name=SCALING_SUBSCRIPTION, url=url, channels=SCALING_CHANNELS,
                            max_attempts=SCALING_ATTEMPTS, generated=generated)
    await submit(command_envelope(cmd, pool=SYSTEM_POOL, command_id=new_id(), source="urn:agentbus:serve"))
    return True
