"""The live streams' hub: one per server process, it follows every partition of the events topic once
and hands each event to the subscribers whose channels it is on (``services.runtime.channels``).
Ephemeral progress of a task (``publish_progress``: LLM token deltas, status lines) goes to the same
subscribers and never to the log.

Each subscriber has a bounded queue: at most ``bound`` messages (``DEFAULT_BOUND``, 10,000) waiting
to be sent. One that falls further behind is marked lagged: its queue is dropped, and its connection
tells the client the last position it was sent and closes (``services.runtime.feed``), so a slow
client is never silently skipped past events; it reconnects from that position and the log replays
them. The hub itself never waits for a subscriber.

This module must never append to the log, and never store progress: it reads and hands on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections import deque
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from contracts import DEFAULT_POOL, SYSTEM_POOL, Envelope, utcnow
from events import EventLog
from events.cache import EnvelopeCache, tail_raw
from events.codec import encode, from_record
from events.log import StoredRecord
from services.runtime.channels import Channel, Cursor, event_keys, progress_keys, workflow_of_task
from services.runtime.service import Service, ended

__all__ = ["DEFAULT_BOUND", "PING_INTERVAL_S", "Hub", "Message", "Subscriber", "event_message",
           "publish_progress"]

log = logging.getLogger("agentbus.streams")

# Messages a subscriber may have waiting before it is lagged and closed: a few seconds of a busy
# deployment's events, a few megabytes per connection.
DEFAULT_BOUND = 10_000
# An idle connection gets a ping (WebSocket) or a keepalive comment (SSE) this often.
PING_INTERVAL_S = 20.0
# Records per read of the log; never more than a subscriber's bound, so that one batch alone cannot
# lag a subscriber that keeps up.
READ_LIMIT = 1000

Item = tuple[int, Envelope | StoredRecord]


@dataclass(frozen=True, slots=True)
class Message:
    """One message as sent (JSON text); events carry their partition and position, others -1.

    ``keys``: the channels it is on (empty when nobody needed them); ``cursor``: on a
    ``subscribed`` reply, the position the stream starts after (an SSE id).
    """

    text: str
    partition: int = -1
    position: int = -1
    keys: frozenset[Channel] = frozenset()
    cursor: Cursor | None = None
    # An event of the system pool (token hashes, sealed secrets): never to "everything" (``events``
    # in every pool), only to channels that name the pool. Known without decoding the record.
    system: bool = False


def reply(body: dict[str, Any], cursor: Cursor | None = None) -> Message:
    """A message that is not an event (a reply, an error, a ping)."""
    return Message(orjson.dumps(body).decode(), cursor=cursor)


def event_message(partition: int, offset: int, item: Envelope | StoredRecord,
                  decode: Callable[[StoredRecord], Envelope] | None, stored: bytes | None = None) -> Message:
    """The message of one event: the record's CloudEvent as stored, with its position.

    ``decode`` given: the channels it is on are worked out too (decoding the record if need be).
    ``stored``: for an envelope, its record's bytes when at hand (else it is encoded again).
    """
    if isinstance(item, Envelope):
        value, env, pool = stored if stored is not None else encode(item), item, item.pool
    else:
        value, env, pool = item.value, None, item.key  # a record's key is its pool
    keys: frozenset[Channel] = frozenset()
    if decode is not None:
        keys = event_keys(env if env is not None else decode(item))  # type: ignore[arg-type]
    text = f'{{"type":"event","partition":{partition},"position":{offset},"event":{value.decode()}}}'
    return Message(text, partition, offset, keys, system=pool == SYSTEM_POOL)


class Subscriber:
    """One connection's place on the hub: its channels and its bounded queue.

    ``direct``: set by a connection that is waiting for messages and can send them at once (see
    ``offer``); None otherwise.
    """

    def __init__(self, bound: int) -> None:
        self.bound = bound
        self.channels: frozenset[Channel] = frozenset()
        self.everything = False
        self.lagged = False
        self.closed: str | None = None  # why the hub closed it
        self.pending = 0
        self._items: deque[list[Message] | object] = deque()
        self._wake = asyncio.Event()
        self.direct: Callable[[list[Message]], None] | None = None

    def set_channels(self, channels: frozenset[Channel]) -> None:
        self.channels = channels
        # Every event but the system pool's, taken without working out each one's channels; with a
        # channel of the system pool as well, each event's channels decide.
        self.everything = (None, "events") in channels and not any(p == SYSTEM_POOL for p, _ in channels)

    def wants(self, message: Message) -> bool:
        return not message.system if self.everything else not self.channels.isdisjoint(message.keys)

    def offer(self, messages: list[Message]) -> bool:
        """Queue ``messages``; past the bound, drop the queue and mark the subscriber lagged.

        With nothing queued and ``direct`` set, they go to ``direct`` instead, in this call: the
        connection sends them at once rather than on a later pass of the event loop (tens of
        milliseconds on a busy one), in order, since nothing was waiting before them.
        """
        if self.lagged or self.closed is not None or not messages:
            return False
        direct = self.direct
        if direct is not None and not self._items:
            direct(messages)
            return True
        if self.pending + len(messages) > self.bound:
            self.lagged = True
            self._items.clear()
            self.pending = 0
            self._wake.set()
            return False
        self._items.append(messages)
        self.pending += len(messages)
        self._wake.set()
        return True

    def put(self, item: object) -> None:
        """Queue a control item (a reply, a replay marker) in order with the events."""
        if isinstance(item, Message):
            self.offer([item])
            return
        self._items.append(item)
        self._wake.set()

    def drop_events(self) -> None:
        """Forget the events and markers queued; replies and progress stay, in order."""
        kept = [x for x in self._items if isinstance(x, list) and all(m.partition < 0 for m in x)]
        self._items = deque(kept)
        self.pending = sum(len(x) for x in kept)

    def wake(self) -> None:
        """Wake the connection waiting in ``take`` (it gets [] if nothing is queued)."""
        self._wake.set()

    def close(self, reason: str) -> None:
        self.closed = reason
        self._items.clear()
        self.pending = 0
        self._wake.set()

    async def take(self, timeout: float, stop: Callable[[object], bool]) -> list[object]:
        """What is queued, up to and including the first item ``stop`` accepts; [] when nothing
        came within ``timeout`` seconds or the subscriber was lagged or closed meanwhile."""
        if not self._items and not self.lagged and self.closed is None:
            self._wake.clear()
            try:
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            except TimeoutError:
                return []
        out: list[object] = []
        while self._items:
            item = self._items.popleft()
            self.pending -= len(item) if isinstance(item, list) else 0
            out.append(item)
            if stop(item):
                break
        return out


# The hub of each service in this process (one per server process), for in-process publishers.
_HUBS: weakref.WeakKeyDictionary[Any, Hub] = weakref.WeakKeyDictionary()


def publish_progress(service: Service, task_id: str, **progress: Any) -> int:
    """Hand a task's progress to the live subscribers of ``service``'s hub in this process (as
    ``Hub.publish_progress``), for code that runs beside the service, such as hosted executors.
    Returns how many subscribers got it: 0 when no hub runs here (no HTTP API in this process)."""
    hub = _HUBS.get(service)
    return hub.publish_progress(task_id, **progress) if hub is not None and hub.partitions else 0


@dataclass
class Hub:
    """Follows ``topic`` of ``log`` (every partition) and fans its events out to subscribers.

    ``long_poll``: follow with the log's own long-polling subscription (Kafka), rather than by
    waiting for appends and reading through ``cache`` (the embedded log, woken by its writers).
    """

    log: EventLog
    topic: str
    cache: EnvelopeCache | None = None
    long_poll: bool = False
    bound: int = DEFAULT_BOUND
    ping_interval: float = PING_INTERVAL_S
    partitions: int = 0
    # Per partition, the position of the last event handed out (or the end when the hub started):
    # a subscriber added now receives every later event live and none before it.
    last: Cursor = field(default_factory=dict)
    failure: BaseException | None = None
    _subscribers: set[Subscriber] = field(default_factory=set)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @classmethod
    def for_service(cls, service: Service, **options: Any) -> Hub:
        """The hub of ``service``'s events topic, sharing its envelope cache; ``publish_progress``
        of the service reaches it."""
        hub = cls(service.log, service.topics.events, getattr(service, "cache", None),
                  long_poll=service.settings.kafka, **options)
        _HUBS[service] = hub
        return hub

    async def start(self) -> None:
        """Start following every partition from its end."""
        self.partitions = await self.log.partitions(self.topic)
        if self.cache is not None and not self.long_poll:
            self.cache.keep_values(self.topic)  # its events go out as stored, not encoded again
        for p in range(self.partitions):
            self.last[p] = await self.log.end_offset(self.topic, p) - 1
        self._tasks = [asyncio.create_task(self._follow(p), name=f"hub[{p}]") for p in range(self.partitions)]

    async def stop(self) -> None:
        """Stop following and close every subscriber."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await ended(tasks)
        for sub in self._subscribers:
            sub.close("the server is stopping")
        self._subscribers.clear()

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def subscriber(self, bound: int | None = None) -> Subscriber:
        """A new subscriber (no channels yet), at most ``bound`` messages behind (default the hub's)."""
        sub = Subscriber(self.bound if bound is None else bound)
        if self.failure is not None:
            sub.close(f"the event stream failed: {self.failure}")
        self._subscribers.add(sub)
        return sub

    def remove(self, sub: Subscriber) -> None:
        self._subscribers.discard(sub)

    def decoder(self) -> Callable[[StoredRecord], Envelope]:
        return self.cache.decode if self.cache is not None else from_record

    def publish_progress(self, task_id: str, *, pool: str | None = None, message: str | None = None,
                         delta: str | None = None, data: dict[str, Any] | None = None,
                         workflow_id: str | None = None) -> int:
        """Hand a task's progress to the subscribers of ``task:<id>`` and ``workflow:<run>`` (the run
        is ``workflow_id``, else read from a step task's id); never stored. Returns how many got it."""
        run = workflow_id or workflow_of_task(task_id)
        body: dict[str, Any] = {"type": "progress", "pool": pool or DEFAULT_POOL, "task_id": task_id}
        optional = {"workflow_id": run, "message": message, "delta": delta, "data": data}
        body.update({k: v for k, v in optional.items() if v is not None})
        body["time"] = utcnow().isoformat()
        keys = progress_keys(pool, task_id, run)
        msg = Message(orjson.dumps(body).decode(), keys=keys)
        # Not "everything": progress is on the task's and the run's channels only, never on "events".
        subs = [s for s in self._subscribers if not s.channels.isdisjoint(keys)]
        return sum(1 for sub in subs if sub.offer([msg]))

    async def _follow(self, partition: int) -> None:
        try:
            async with contextlib.aclosing(self._batches(partition, self.last[partition] + 1)) as batches:
                async for batch in batches:
                    self._fan_out(partition, batch)
                    await asyncio.sleep(0)  # let the connections take what was just queued
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the streams stop; the service itself goes on
            log.error("the event stream of %s[%d] failed: %s", self.topic, partition, exc, exc_info=exc)
            self.failure = exc
            for sub in self._subscribers:
                sub.close(f"the event stream failed: {exc}")

    async def _batches(self, partition: int, start: int) -> AsyncGenerator[list[Item], None]:
        limit = max(1, min(READ_LIMIT, self.bound))
        if self.long_poll:
            async for recs in self.log.subscribe(self.topic, partition, start, limit=limit):
                yield [(r.offset, r) for r in recs]
            return
        cache = self.cache if self.cache is not None else EnvelopeCache(capacity=0)
        batches = tail_raw(self.log, cache, self.topic, partition, start, limit=limit)
        async with contextlib.aclosing(batches):
            async for batch in batches:
                yield batch

    def _fan_out(self, partition: int, batch: list[Item]) -> None:
        self.last[partition] = batch[-1][0]
        # The records' bytes the cache kept for the hub, taken (and so let go) with or without
        # subscribers to send them to.
        stored = (self.cache.take_values(self.topic, partition, [offset for offset, _ in batch])
                  if self.cache is not None else [None] * len(batch))
        subs = [s for s in self._subscribers if s.channels and not s.lagged and s.closed is None]
        if not subs:
            return
        decode = None if all(s.everything for s in subs) else self.decoder()
        messages = [event_message(partition, offset, item, decode, value)
                    for (offset, item), value in zip(batch, stored, strict=True)]
        public = [m for m in messages if not m.system] if any(m.system for m in messages) else messages
        for sub in subs:
            sub.offer(public if sub.everything else [m for m in messages if sub.wants(m)])
