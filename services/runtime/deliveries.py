"""Outbound subscriptions: the events of each subscription's channels POSTed to its URL, signed.

``SubscriptionBook`` (``services.runtime.subscription_book``) follows the subscriptions, decided by
``services.domain.subscriptions``, so one added, changed or deleted takes effect without a
restart. ``Deliveries`` runs one delivery loop per subscription and events partition it owns
(every partition in the embedded runner; the partitions Faust assigns to a Kafka worker), each a
consumer of that partition with its own durable position (consumer group
``[<app id>-]subscription:<name>:<incarnation>``):

* A new subscription starts where its ``SubscriptionSet`` says: the end of each partition when it
  was created (read by the API before appending the command, so nothing appended after the PUT
  is missed), or the start for ``from: earliest``.
* Matching events (``services.runtime.channels``; the system pool's own events only on a channel
  naming that pool) go one at a time, in log order per partition (a pool's events are in one
  partition, so per pool, task, agent and workflow the order is the log's), as structured-mode
  CloudEvents (``application/cloudevents+json``: the record's JSON, byte for byte) signed in the
  Standard Webhooks scheme (``webhook-id`` = the event id, ``webhook-timestamp``,
  ``webhook-signature``, by the ``standardwebhooks`` package).
* At least once: the position is committed after the receiver answered 2xx, so a crash or restart
  sends again at most what was in flight. Receivers deduplicate by ``webhook-id``.
* Not 2xx (or no answer): tried again after a capped exponential backoff with jitter (longer when
  a 429 or 503 says ``Retry-After``); after ``max_attempts`` tries the event becomes a dead letter
  (a ``RecordDeliveryFailure`` command, decided into ``SubscriptionDeliveryFailed``) and delivery
  moves on. Attempts are counted in memory: a restart gives the event in flight its tries anew.
* A secret that does not open (another process's key) is never a dead letter: the loop logs it
  and waits, so fixing ``AGENTBUS_SECRET_KEY`` resumes delivery where it stopped.
* A dead letter is an event like any other, which a subscription to the system pool's channels
  may receive. A dead letter about one of them (a ``SubscriptionDeliveryFailed`` whose failed event
  was itself a ``SubscriptionDeliveryFailed``) is recorded and readable as every other, but never
  delivered: otherwise a subscription to dead letters whose receiver is down would fail on its own
  dead letters, one after another, and grow the log for as long as it stayed down.

A slow or failing receiver holds back only its own subscription, never the deciders, the
coordinator, the projector or other subscriptions. This module never decides anything: it reads
events, POSTs, commits its own positions and appends only ``RecordDeliveryFailure`` commands.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import cast

import httpx
from standardwebhooks import Webhook

from contracts import SYSTEM_POOL, Envelope
from contracts import commands as c
from contracts.event_types import SubscriptionDeliveryFailed
from events import EventLog, StoredRecord
from events.cache import EnvelopeCache
from services.runtime.ingest import command_envelope
from services.runtime.sealing import Sealer, SealError
from services.runtime.settings import Settings
from services.runtime.subscription_book import BATCH, Subscription, SubscriptionBook

__all__ = ["CONTENT_TYPE", "Deliveries", "Subscription", "SubscriptionBook", "group_of", "group_prefix",
           "secret_context"]

log = logging.getLogger("agentbus.deliveries")

CONTENT_TYPE = "application/cloudevents+json"
SOURCE = "urn:agentbus:deliveries"
TIMEOUT_S = 10.0
BACKOFF_S = 0.5
MAX_BACKOFF_S = 60.0
# A partition's position moves at least this often while nothing matches (each delivery commits).
COMMIT_EVERY_S = 1.0


def secret_context(name: str) -> str:
    """What a subscription's secret is sealed for: its name (a sealed secret opens for no other)."""
    return f"subscription:{name}"


def group_prefix(settings: Settings) -> str:
    """What the subscriptions' consumer groups of a deployment start with: on Kafka its app id,
    so deployments sharing a broker keep their positions apart."""
    return f"{settings.app_id}-" if settings.kafka else ""


def group_of(prefix: str, name: str, incarnation: int) -> str:
    """The consumer group holding a subscription's delivery position in each events partition."""
    return f"{prefix}subscription:{name}:{incarnation}"


def _about_a_dead_letter(env: Envelope) -> bool:
    """Whether ``env`` is a dead letter of a dead letter: recorded, never delivered (see above)."""
    data = env.data
    return type(data) is SubscriptionDeliveryFailed and data.event_type == SubscriptionDeliveryFailed.__name__


class _Position:
    """A delivery loop's place in one partition: committed after each delivery; past events it did
    not want, at most every ``every_s`` seconds and when no event came for that long."""

    def __init__(self, log: EventLog, group: str, topic: str, partition: int, start: int,
                 every_s: float) -> None:
        self.log, self.group, self.topic, self.partition = log, group, topic, partition
        self.committed = self.seen = start
        self.every_s, self.at = every_s, time.monotonic()

    async def delivered(self, offset: int) -> None:
        self.seen = max(self.seen, offset + 1)
        await self._commit()

    async def passed(self, end: int) -> None:
        self.seen = max(self.seen, end)
        if time.monotonic() - self.at >= self.every_s:
            await self.flush()

    async def flush(self) -> None:
        if self.seen > self.committed:
            await self._commit()

    async def _commit(self) -> None:
        self.committed, self.at = self.seen, time.monotonic()
        await self.log.commit(self.group, self.topic, self.partition, self.committed)


async def _idling(stream: AsyncGenerator[list[StoredRecord], None], idle: Callable[[], Awaitable[None]],
                  idle_s: float) -> AsyncGenerator[list[StoredRecord], None]:
    """``stream``'s batches; ``idle()`` is awaited whenever none came for ``idle_s`` seconds."""
    pending: asyncio.Future[list[StoredRecord]] | None = None
    try:
        while True:
            pending = asyncio.ensure_future(anext(stream))
            while not (await asyncio.wait({pending}, timeout=idle_s))[0]:
                await idle()
            yield pending.result()
    finally:
        if pending is not None and not pending.done():
            pending.cancel()
            await asyncio.wait({pending})
        await stream.aclose()


class Deliveries:
    """Delivers every subscription's events from the events partitions this process owns.

    ``owned`` None: every partition (the embedded runner); a Kafka worker sets the partitions Faust
    assigned it with ``own``. ``group_prefix`` keeps one deployment's positions apart from
    another's on a shared broker. ``sealer`` is called once, when a secret is first needed.
    """

    def __init__(self, log: EventLog, sealer: Callable[[], Sealer], *, partitions: int, topic: str,
                 commands: str, cache: EnvelopeCache | None = None, group_prefix: str = "",
                 owned: Iterable[int] | None = None,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.log, self.topic, self.commands = log, topic, commands
        self.partitions = partitions
        self.cache = cache if cache is not None else EnvelopeCache()
        self.group_prefix = group_prefix
        self.owned = set(range(partitions)) if owned is None else set(owned)
        self.transport = transport  # tests may inject one; the network otherwise
        self.timeout_s, self.backoff_s, self.max_backoff_s = TIMEOUT_S, BACKOFF_S, MAX_BACKOFF_S
        self.commit_every_s = COMMIT_EVERY_S
        self.book = SubscriptionBook(log, self.cache, topic, partitions, self._reconcile)
        self.delivered = self.failed_attempts = self.dead_letters = 0
        self._make_sealer = sealer
        self._sealer: Sealer | None = None
        self._signers: dict[tuple[str, str], Webhook] = {}
        self._loops: dict[tuple[str, int, int], asyncio.Task[None]] = {}
        self._client: httpx.AsyncClient | None = None
        self._running = False  # ``run`` under way: delivery loops may be started

    async def run(self) -> None:
        """Follow the subscriptions and deliver until cancelled; after a failure of the log the
        book is read again (the delivery loops go on meanwhile)."""
        self._running = True
        delay = self.backoff_s
        try:
            while True:
                try:
                    await self.book.run()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning("following the subscriptions failed (%r); again in %.1f s", exc, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.max_backoff_s)
        finally:
            self._running = False
            loops, self._loops = list(self._loops.values()), {}
            for task in loops:
                task.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
            client, self._client = self._client, None
            if client is not None:
                await client.aclose()

    def _http(self) -> httpx.AsyncClient:
        """The client deliveries post with, made for the first delivery: making one builds its TLS
        context (0.14-0.25 s of the event loop, measured at a start), which a start should not wait
        for and a service with no subscription never needs."""
        if self._client is None:
            self._client = httpx.AsyncClient(transport=self.transport, timeout=self.timeout_s)
        return self._client

    def own(self, partitions: Iterable[int]) -> None:
        """Deliver from these partitions from now on (a Kafka worker's assignment changed)."""
        self.owned = set(partitions)
        self._reconcile()

    def group(self, sub: Subscription) -> str:
        return group_of(self.group_prefix, sub.name, sub.incarnation)

    def _reconcile(self) -> None:
        if not self.book.ready.is_set() or not self._running:
            return
        want = {(s.name, s.incarnation, p) for s in self.book.current.values() for p in self.owned}
        for key in [k for k in self._loops if k not in want]:
            self._loops.pop(key).cancel()
        for key in sorted(want - self._loops.keys()):
            name, incarnation, p = key
            self._loops[key] = asyncio.create_task(self._partition(name, incarnation, p),
                                                   name=f"deliveries[{name}:{p}]")

    def _current(self, name: str, incarnation: int) -> Subscription | None:
        sub = self.book.current.get(name)
        return sub if sub is not None and sub.incarnation == incarnation else None

    async def _partition(self, name: str, incarnation: int, partition: int) -> None:
        """One subscription's deliveries from one partition; a failure of the log starts it again
        from the committed position."""
        delay = self.backoff_s
        while self._current(name, incarnation) is not None:
            try:
                await self._follow(name, incarnation, partition)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("deliveries of %r from partition %d failed (%r); resuming in %.1f s",
                            name, partition, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_backoff_s)

    async def _follow(self, name: str, incarnation: int, partition: int) -> None:
        sub = self._current(name, incarnation)
        if sub is None:
            return
        group = self.group(sub)
        start = max(await self.log.committed(group, self.topic, partition), sub.first(partition))
        position = _Position(self.log, group, self.topic, partition, start, self.commit_every_s)
        stream = cast(AsyncGenerator[list[StoredRecord], None],
                      self.log.subscribe(self.topic, partition, start, limit=BATCH))
        # A follower of the cache: the envelopes this process wrote stay until this loop read them.
        follower = self.cache.follow(self.topic, partition, start)
        try:
            async with contextlib.aclosing(_idling(stream, position.flush, self.commit_every_s)) as batches:
                async for recs in batches:
                    for rec in recs:
                        if rec.key == SYSTEM_POOL and not any(ch[0] == SYSTEM_POOL for ch in sub.channels):
                            continue  # not decoded: nothing of this pool goes to this subscription
                        env = self.cache.decode(rec)
                        if sub.wants(env) and not _about_a_dead_letter(env):
                            if not await self._deliver(name, incarnation, partition, rec, env):
                                return  # deleted meanwhile
                            await position.delivered(rec.offset)
                        sub = self._current(name, incarnation) or sub
                    await position.passed(recs[-1].offset + 1)
                    self.cache.advance(follower, recs[-1].offset + 1)
        finally:
            self.cache.unfollow(follower)

    async def _deliver(self, name: str, incarnation: int, partition: int, rec: StoredRecord,
                       env: Envelope) -> bool:
        """POST the event until acknowledged or dead-lettered (True), or the subscription is gone."""
        attempts, status, error = 0, None, ""
        while True:
            sub = self._current(name, incarnation)  # a new URL or secret applies from the next try
            if sub is None:
                return False
            try:
                signer = self._signer(sub)
            except SealError as exc:
                log.error("subscription %r: cannot open its secret (%s); waiting %.0f s", name, exc,
                          self.max_backoff_s)
                await asyncio.sleep(self.max_backoff_s)
                continue
            attempts += 1
            status, error, retry_after = await self._post(sub, signer, env.id, rec.value)
            if status is not None and 200 <= status < 300:
                self.delivered += 1
                return True
            self.failed_attempts += 1
            if attempts >= sub.max_attempts:
                await self._dead_letter(sub, partition, rec, env, attempts, status, error)
                return True
            delay = min(self.max_backoff_s, self.backoff_s * 2 ** (attempts - 1))
            delay = max(delay * random.uniform(0.5, 1.0), min(retry_after, self.max_backoff_s))
            log.warning("subscription %r: event %s not delivered (%s, try %d of %d); again in %.2f s",
                        name, env.id, error, attempts, sub.max_attempts, delay)
            await asyncio.sleep(delay)

    def _signer(self, sub: Subscription) -> Webhook:
        key = (sub.name, sub.secret)
        signer = self._signers.get(key)
        if signer is None:
            if self._sealer is None:
                self._sealer = self._make_sealer()
            secret = self._sealer.open(sub.secret, context=secret_context(sub.name))
            signer = self._signers[key] = Webhook(secret)
        return signer

    async def _post(self, sub: Subscription, signer: Webhook, event_id: str,
                    body: bytes) -> tuple[int | None, str, float]:
        """(status or None, what went wrong, Retry-After seconds or 0)."""
        client = self._http()
        now = int(time.time())
        headers = {
            "content-type": CONTENT_TYPE,
            "webhook-id": event_id,
            "webhook-timestamp": str(now),
            "webhook-signature": signer.sign(event_id, datetime.fromtimestamp(now, UTC), body.decode()),
        }
        try:
            resp = await client.post(sub.url, content=body, headers=headers)
        except Exception as exc:  # no answer, whatever the reason: a failed try like any other
            return None, f"{type(exc).__name__}: {exc}"[:2000], 0.0
        retry_after = 0.0
        if resp.status_code in (429, 503):
            with contextlib.suppress(ValueError):
                retry_after = max(float(resp.headers.get("retry-after", "0")), 0.0)
        return resp.status_code, f"HTTP {resp.status_code}", retry_after

    async def _dead_letter(self, sub: Subscription, partition: int, rec: StoredRecord, env: Envelope,
                           attempts: int, status: int | None, error: str) -> None:
        """Append the dead letter; its command id is the event's for this subscription, so a repeat
        (a restart before the commit) is decided once."""
        cmd = c.RecordDeliveryFailure(
            name=sub.name, incarnation=sub.incarnation, event_id=env.id, event_type=env.type,
            partition=partition, position=rec.offset, attempts=attempts, last_error=error,
            last_status=status if status is not None and 100 <= status <= 599 else None)
        digest = hashlib.sha256(f"{sub.name}\0{sub.incarnation}\0{partition}\0{rec.offset}".encode())
        cmd_env = command_envelope(cmd, pool=SYSTEM_POOL, command_id=f"dead-letter:{digest.hexdigest()[:40]}",
                                   source=SOURCE)
        await self.cache.append(self.log, self.commands, [cmd_env])
        self.dead_letters += 1
        log.error("subscription %r: event %s at %s[%d]@%d is a dead letter after %d tries (%s)",
                  sub.name, env.id, self.topic, partition, rec.offset, attempts, error)
