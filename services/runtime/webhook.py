"""The scaling webhook: POSTs each ``ScalingDecided`` event to an external autoscaler.

A consumer of the events topic with its own committed offset (group ``webhook``), so delivery is
at-least-once: an event's offset is committed only after the receiver answered 2xx, and a crash
or restart re-sends what was not acknowledged. Receivers deduplicate by the CloudEvent ``id``.
Each event goes as a structured-mode CloudEvent (``application/cloudevents+json``), byte for byte
the record on the log. A failing receiver is retried with capped exponential backoff for ever;
it holds back only this consumer, never the deciders, the coordinator or the projector.

On first start (no committed offset) the relay begins at the start of the log: the log is the
source of truth, and a receiver sees every decision once it is configured, the latest last.

This module must never append to the log or decide anything; it only reads events and POSTs.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import httpx

from events import EventLog
from events.cache import EnvelopeCache, tail
from events.codec import encode

log = logging.getLogger("agentbus.webhook")

WEBHOOK_GROUP = "webhook"
CONTENT_TYPE = "application/cloudevents+json"



@dataclass
class WebhookRelay:
    """Delivers the events of ``types`` from every events partition to ``url``."""

    log: EventLog
    url: str
    partitions: int
    topic: str = "events"
    group: str = WEBHOOK_GROUP
    types: frozenset[str] = frozenset({"ScalingDecided"})
    cache: EnvelopeCache = field(default_factory=EnvelopeCache)
    transport: httpx.AsyncBaseTransport | None = None  # tests inject httpx.MockTransport
    timeout_s: float = 10.0
    backoff_s: float = 0.2
    max_backoff_s: float = 30.0
    delivered: int = 0
    failed_attempts: int = 0

    async def run(self) -> None:
        async with httpx.AsyncClient(transport=self.transport, timeout=self.timeout_s) as client:
            await asyncio.gather(*(self._tail(client, p) for p in range(self.partitions)))

    async def _tail(self, client: httpx.AsyncClient, partition: int) -> None:
        start = await self.log.committed(self.group, self.topic, partition)
        async for batch in tail(self.log, self.cache, self.topic, partition, start, limit=500):
            for offset, env in batch:
                if env.type in self.types:
                    await self._deliver(client, encode(env), env.id)
                    # Commit per delivery: a restart re-sends at most the one in flight.
                    await self.log.commit(self.group, self.topic, partition, offset + 1)
            await self.log.commit(self.group, self.topic, partition, batch[-1][0] + 1)

    async def _deliver(self, client: httpx.AsyncClient, body: bytes, event_id: str) -> None:
        """POST until the receiver answers 2xx (retries with capped exponential backoff)."""
        delay = self.backoff_s
        while True:
            try:
                resp = await client.post(self.url, content=body, headers={"content-type": CONTENT_TYPE})
                if resp.is_success:
                    self.delivered += 1
                    return
                problem = f"HTTP {resp.status_code}"
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            self.failed_attempts += 1
            log.warning("scaling webhook %s failed for event %s (%s); retrying in %.1f s",
                        self.url, event_id, problem, delay)
            await asyncio.sleep(delay)
            delay = min(self.max_backoff_s, delay * 2)
