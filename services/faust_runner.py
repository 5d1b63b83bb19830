"""The Faust runner: the embedded runner's deciders, coordinator and projector on a Kafka cluster.

faust-streaming does membership, partition assignment and rebalancing (one consumer group, the
app id); the work is done by the same code as the embedded runner (``PartitionDecider``,
``PartitionCoordinator``, ``Projector``). Per partition, the state of each role is built when
Faust assigns the partition and dropped when it is revoked:

* decider (commands partition p): claims p's transactional writer (fencing the previous owner),
  rebuilds its pools from events partition p, then decides commands from its own committed offset
  (group ``<app id>-decider``). A batch's events, dead letters, forwarded commands and the commands
  offset go into ONE Kafka transaction.
* coordinator (events partition p): claims, rebuilds its view from events below its committed
  offset, re-issues assignments lost in flight, then reacts: commands out and events offset in
  one transaction.
* projector (events partition p): rows and position in one PostgreSQL transaction.

Faust is used for what it does well (group membership, assignment, delivery) and nothing else:
its offsets (group ``<app id>``) only say where delivery resumes. Exactly-once effect comes from
our own offsets, committed in our transactions: a record below our offset is skipped, records
Faust will not deliver again (its offset went past ours) are read from the log, and the decider
also drops a command id it has already decided.

Workarounds for faust-streaming 0.15.3, each as narrow as it can be (README, "Run on a cluster"):

* With ``processing_guarantee="at_least_once"`` Faust's consumer reads ``read_uncommitted``, so
  it would deliver records of aborted transactions (a fenced zombie's events). Its consumer is
  switched to ``read_committed`` (``_ReadCommittedTransport``), nothing else changes.
* ``exactly_once`` is not used: Faust's transactional producers duplicate output around
  rebalances; our own transactions per partition writer replace them.
* No Faust tables (no changelog recovery): the event log itself is the state's changelog.

This module must never decide, react or project itself: it only feeds records to those steps.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import faust
import sqlalchemy as sa
from faust.transport.drivers import aiokafka as faust_aiokafka

from contracts import Envelope
from events import EventLog, LogError, StoredRecord, open_log, partition_for
from events.cache import EnvelopeCache
from events.codec import to_record
from events.kafka import Fenced, KafkaLog
from projections import ProjectionStore, Projector
from services.config import Settings
from services.outcomes import OutcomeRef, Outcomes
from services.runner import BATCH, PartitionCoordinator, PartitionDecider, Topics
from services.tracker import OutcomeTracker

log = logging.getLogger("agentbus.faust")

DEFAULT_APP_ID = "agentbus"
# Seconds before the group gives a silent (e.g. killed) worker's partitions to the others.
SESSION_TIMEOUT_S = 10.0
HEARTBEAT_S = 1.0
# How long Faust buffers records for one batch before handing them over.
TAKE_WITHIN_S = 0.01
RETRY_MAX_S = 5.0


# --- Faust's consumer, read_committed -----------------------------------------------------------


class _ReadCommittedThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # Faust reads read_committed only with exactly_once; aborted records must never reach us.
        consumer._isolation_level = "read_committed"
        return consumer


class _ReadCommittedConsumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> Any:
        return _ReadCommittedThread(self, loop=self.loop, beacon=self.beacon)


class _ReadCommittedTransport(faust_aiokafka.Transport):
    Consumer = _ReadCommittedConsumer


# --- one role on one partition ------------------------------------------------------------------


def _record(message: Any) -> StoredRecord:
    """A Faust message as the log's StoredRecord (a missing key or value stays visible)."""
    key = message.key
    headers = tuple((name, bytes(value)) for name, value in (message.headers or ()))
    rid = next((v.decode(errors="replace") for n, v in headers if n == "ce_id"), None)
    ts = message.timestamp
    return StoredRecord(
        message.topic, message.partition, message.offset,
        key.decode(errors="replace") if isinstance(key, bytes | bytearray) else "",
        bytes(message.value) if message.value is not None else b"",
        rid, headers, int(ts * 1000) if ts is not None else 0,
    )


@dataclass
class _Part:
    """One role (decider, coordinator or projector) on one partition, while it is assigned here.

    ``next`` is the role's own committed position: records below it were applied already.
    After a build (or any failure, which rebuilds) records up to what Faust delivered are read
    from the log itself, so nothing Faust acked but we never applied is skipped.
    """

    role: str
    topic: str
    partition: int
    build: Callable[[], Awaitable[int]]
    step: Callable[[list[StoredRecord]], Awaitable[None]]
    log: EventLog
    next: int = 0
    dirty: bool = True
    catching_up: bool = True
    closed: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def prepare(self) -> None:
        """Build the state now (on assignment), so the first records find it ready."""
        async with self.lock:
            await self._retrying(None)

    async def handle(self, delivered: list[StoredRecord]) -> None:
        async with self.lock:
            await self._retrying(delivered)

    async def _retrying(self, delivered: list[StoredRecord] | None) -> None:
        delay = 0.2
        while not self.closed:
            try:
                await self._once(delivered)
                return
            except asyncio.CancelledError:
                raise
            except Fenced as exc:
                # Another worker owns this partition now; Faust will revoke it from us shortly.
                log.warning("%s[%d] fenced, dropping its state: %s", self.role, self.partition, exc)
                self.closed = True
                return
            except Exception as exc:  # broker away, a timeout: rebuild from the log and retry
                log.warning("%s[%d] failed (%r); rebuilding and retrying in %.1f s",
                            self.role, self.partition, exc, delay)
                self.dirty = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)

    async def _once(self, delivered: list[StoredRecord] | None) -> None:
        if self.dirty:
            self.next = await self.build()
            self.dirty, self.catching_up = False, True
        if not delivered:
            return
        end = delivered[-1].offset + 1
        if self.catching_up:
            while self.next < end:
                recs = await self.log.read(self.topic, self.partition, self.next, min(BATCH, end - self.next))
                if not recs:
                    break
                await self._apply(recs)
            self.catching_up = self.next < end
            return
        recs = [r for r in delivered if r.offset >= self.next]  # re-deliveries are skipped
        if recs:
            await self._apply(recs)

    async def _apply(self, recs: list[StoredRecord]) -> None:
        try:
            await self.step(recs)
        except BaseException:
            self.dirty = True  # the state may hold half of this batch: rebuild before going on
            raise
        self.next = recs[-1].offset + 1


# --- the worker ---------------------------------------------------------------------------------


class FaustWorker:
    """A Faust app running the deciders, coordinator and projector for the partitions it is given."""

    def __init__(self, settings: Settings, *, topics: Topics | None = None, app_id: str = DEFAULT_APP_ID,
                 log: EventLog | None = None, store: ProjectionStore | None = None,
                 outcomes: Outcomes | None = None, cache: EnvelopeCache | None = None,
                 session_timeout: float = SESSION_TIMEOUT_S) -> None:
        if not settings.broker.startswith("kafka:"):
            raise ValueError(f"the Faust runner needs a kafka:// broker, not {settings.broker!r}")
        self.settings = settings
        self.topics = topics or Topics()
        self.app_id = app_id
        self.log: EventLog = log or open_log(settings.broker)
        self._own_log = log is None
        self.store = store or ProjectionStore(settings.database)
        self._own_store = store is None
        self.outcomes = outcomes or Outcomes()
        self.cache = cache or EnvelopeCache()
        self.session_timeout = session_timeout
        self.partitions = settings.partitions
        self.decider_group = f"{app_id}-decider"
        self.coordinator_group = f"{app_id}-coordinator"
        self.projector = Projector(self.store)
        self.deciders: dict[int, _Part] = {}
        self.coordinators: dict[int, _Part] = {}
        self.projectors: dict[int, _Part] = {}
        self._preparing: set[asyncio.Task[None]] = set()
        self.app: faust.App | None = None
        self.failure: BaseException | None = None
        self.failed = asyncio.Event()
        self.started = asyncio.Event()
        self._datadir = tempfile.TemporaryDirectory(prefix="agentbus-faust-")

    async def provision(self) -> None:
        """Create the topics (explicit partitions; events kept forever); check they agree."""
        await provision(self.log, self.topics, self.partitions)
        self.partitions = await self.log.partitions(self.topics.events)

    async def start(self) -> None:
        if self._own_log:
            await self.log.start()
        await self.provision()
        if self._own_store:
            await start_store(self.store)
        self.app = self._app()
        await self.app.start()
        self.started.set()

    async def stop(self) -> None:
        app, self.app = self.app, None
        for task in list(self._preparing):
            task.cancel()
        if app is not None:
            with contextlib.suppress(Exception):
                await app.stop()
        for parts in (self.deciders, self.coordinators, self.projectors):
            for part in parts.values():
                part.closed = True
            parts.clear()
        if self._own_log:
            await self.log.close()
        if self._own_store:
            await self.store.close()
        self._datadir.cleanup()

    # -- the Faust app --------------------------------------------------------------------------

    def _app(self) -> faust.App:
        assert isinstance(self.log, KafkaLog)
        brokers = [f"kafka://{host}" for host in self.log.settings.bootstrap]
        app = faust.App(
            self.app_id,
            broker=brokers,
            value_serializer="raw",
            key_serializer="raw",
            store="memory://",
            web_enabled=False,
            topic_partitions=self.partitions,
            consumer_auto_offset_reset="earliest",
            processing_guarantee="at_least_once",
            broker_session_timeout=self.session_timeout,
            broker_heartbeat_interval=HEARTBEAT_S,
            broker_commit_interval=1.0,
            stream_wait_empty=True,
            autodiscover=False,
            datadir=self._datadir.name,
            loghandlers=[],
        )
        # Faust's consumer reads read_committed (see the module docstring).
        app.transport = _ReadCommittedTransport(app.conf.broker_consumer, app,
                                                loop=asyncio.get_running_loop())
        commands = app.topic(self.topics.commands, partitions=self.partitions,
                             key_serializer="raw", value_serializer="raw")
        events = app.topic(self.topics.events, partitions=self.partitions,
                           key_serializer="raw", value_serializer="raw")

        async def decide(stream: Any) -> None:
            async for batch in stream.take_events(BATCH, within=TAKE_WITHIN_S):
                await self._guard(self._on_commands(batch))

        async def react(stream: Any) -> None:
            async for batch in stream.take_events(BATCH, within=TAKE_WITHIN_S):
                await self._guard(self._on_events(batch))

        app.agent(commands, name=f"{self.app_id}.decider", concurrency=1)(decide)
        app.agent(events, name=f"{self.app_id}.reactor", concurrency=1)(react)
        app.on_partitions_assigned.connect(self._assigned)  # type: ignore[arg-type]
        return app

    async def _guard(self, work: Awaitable[None]) -> None:
        try:
            await work
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # a bug, not a broker hiccup (those are retried per part)
            log.error("the Faust worker failed: %r", exc, exc_info=exc)
            self.failure = self.failure or exc
            self.failed.set()
            raise

    async def _assigned(self, sender: Any, assigned: set[Any], **_: Any) -> None:
        """Faust's new assignment: drop what moved away, build what arrived (in the background)."""
        want = {
            self.topics.commands: {tp.partition for tp in assigned if tp.topic == self.topics.commands},
            self.topics.events: {tp.partition for tp in assigned if tp.topic == self.topics.events},
        }
        log.info("assigned: commands %s, events %s", sorted(want[self.topics.commands]),
                 sorted(want[self.topics.events]))
        for parts, topic, group in (
            (self.deciders, self.topics.commands, self.decider_group),
            (self.coordinators, self.topics.events, self.coordinator_group),
            (self.projectors, self.topics.events, None),
        ):
            for p in [p for p in parts if p not in want[topic]]:
                part = parts.pop(p)
                part.closed = True
                if group is not None:
                    self._background(self._release(part, group, topic, p))
        for p in want[self.topics.commands] - set(self.deciders):
            self.deciders[p] = self._decider(p)
            self._background(self.deciders[p].prepare())
        for p in want[self.topics.events] - set(self.coordinators):
            self.coordinators[p] = self._coordinator(p)
            self._background(self.coordinators[p].prepare())
        for p in want[self.topics.events] - set(self.projectors):
            self.projectors[p] = self._projector(p)
            self._background(self.projectors[p].prepare())

    async def _release(self, part: _Part, group: str, topic: str, partition: int) -> None:
        async with part.lock:  # after its last batch
            if isinstance(self.log, KafkaLog):
                await self.log.release(group, topic, partition)

    def _background(self, work: Awaitable[None]) -> None:
        async def run() -> None:
            await self._guard(work)

        task = asyncio.ensure_future(run())
        self._preparing.add(task)
        task.add_done_callback(self._preparing.discard)

    # -- the three roles ------------------------------------------------------------------------

    def _decider(self, p: int) -> _Part:
        holder: dict[str, PartitionDecider] = {}

        async def build() -> int:
            assert isinstance(self.log, KafkaLog)
            await self.log.claim(self.decider_group, self.topics.commands, p)  # fence, THEN read
            d = PartitionDecider(self.log, p, self.outcomes, self.settings.decider, self.cache,
                                 topics=self.topics, group=self.decider_group, dead_letters=True,
                                 partitions=self.partitions)
            await d.rebuild()
            d.ready.set()
            holder["d"] = d
            return await self.log.committed(self.decider_group, self.topics.commands, p)

        async def step(recs: list[StoredRecord]) -> None:
            get = self.cache.get
            await holder["d"].process([(r.offset, get(r) or r) for r in recs])

        return _Part("decider", self.topics.commands, p, build, step, self.log)

    def _coordinator(self, p: int) -> _Part:
        holder: dict[str, PartitionCoordinator] = {}

        async def build() -> int:
            assert isinstance(self.log, KafkaLog)
            await self.log.claim(self.coordinator_group, self.topics.events, p)
            c = PartitionCoordinator(self.log, p, self.topics, self.coordinator_group, self.cache)
            holder["c"] = c
            return await c.rebuild()

        async def step(recs: list[StoredRecord]) -> None:
            decode = self.cache.decode
            await holder["c"].react([(r.offset, decode(r)) for r in recs])

        return _Part("coordinator", self.topics.events, p, build, step, self.log)

    def _projector(self, p: int) -> _Part:
        async def build() -> int:
            return await self.projector.position(self.topics.events, p)

        async def step(recs: list[StoredRecord]) -> None:
            decode = self.cache.decode
            await self.projector.apply(self.topics.events, p, [(r.offset, decode(r)) for r in recs])

        return _Part("projector", self.topics.events, p, build, step, self.log)

    # -- feeding them ---------------------------------------------------------------------------

    async def _on_commands(self, batch: Sequence[Any]) -> None:
        by_partition = _by_partition(batch)
        await asyncio.gather(*(self._feed(self.deciders, p, recs) for p, recs in by_partition.items()))

    async def _on_events(self, batch: Sequence[Any]) -> None:
        by_partition = _by_partition(batch)
        await asyncio.gather(*(
            self._feed(parts, p, recs)
            for p, recs in by_partition.items()
            for parts in (self.coordinators, self.projectors)
        ))

    async def _feed(self, parts: dict[int, _Part], p: int, recs: list[StoredRecord]) -> None:
        part = parts.get(p)
        if part is None or part.closed:
            return  # revoked meanwhile: its next owner reads these from our committed offset on
        await part.handle(recs)


def _by_partition(batch: Sequence[Any]) -> dict[int, list[StoredRecord]]:
    out: dict[int, list[StoredRecord]] = {}
    for event in batch:
        rec = _record(event.message)
        out.setdefault(rec.partition, []).append(rec)
    return out


async def start_store(store: ProjectionStore, attempts: int = 5) -> None:
    """Start the read-model store; workers starting together race to create the tables.

    PostgreSQL's CREATE TABLE is not safe against a concurrent one (the loser fails on a catalog
    unique index); the winner created them, so trying again finds them.
    """
    for attempt in range(attempts):
        try:
            await store.start()
            return
        except sa.exc.DBAPIError:
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(0.2 * (attempt + 1))


async def provision(log: EventLog, topics: Topics, partitions: int) -> None:
    """Create commands, events (retention forever) and dead letters with explicit partitions."""
    await log.ensure_topic(topics.commands, partitions)
    await log.ensure_topic(topics.events, partitions, retention_ms=-1)
    await log.ensure_topic(topics.dead_letters, partitions)
    counts = {t: await log.partitions(t) for t in (topics.commands, topics.events)}
    if len(set(counts.values())) != 1:
        # A pool must map to the same partition of both, or a decider would own half a pool.
        raise LogError(f"commands and events must have the same number of partitions, found {counts}")


# --- the service behind the HTTP API on Kafka ---------------------------------------------------


class ClusterService:
    """What the HTTP API needs, on Kafka: commands out, outcomes from the events stream, reads.

    Runs an in-process ``FaustWorker`` unless ``worker=False`` (then other processes run
    ``agentbus worker``).
    """

    def __init__(self, settings: Settings, *, worker: bool = True, topics: Topics | None = None,
                 app_id: str = DEFAULT_APP_ID, session_timeout: float = SESSION_TIMEOUT_S) -> None:
        self.settings = settings
        self.topics = topics or Topics()
        self.log: EventLog = open_log(settings.broker)
        self.store = ProjectionStore(settings.database)
        self.outcomes = Outcomes()
        self.cache = EnvelopeCache()
        self.partitions = settings.partitions
        self.worker = (FaustWorker(settings, topics=self.topics, app_id=app_id, log=self.log,
                                   store=self.store, cache=self.cache, session_timeout=session_timeout)
                       if worker else None)
        self.tracker: OutcomeTracker | None = None
        self.on_failure: Callable[[BaseException], Awaitable[None] | None] | None = None
        self._watch: asyncio.Task[None] | None = None

    @property
    def failure(self) -> BaseException | None:
        if self.worker is not None and self.worker.failure is not None:
            return self.worker.failure
        if self.tracker is not None:
            return self.tracker.failure
        return None

    async def start(self) -> None:
        await self.log.start()
        await provision(self.log, self.topics, self.partitions)
        self.partitions = await self.log.partitions(self.topics.events)
        await start_store(self.store)
        assert isinstance(self.log, KafkaLog)
        self.tracker = OutcomeTracker(self.log.bootstrap, self.topics.events, self.partitions, self.outcomes)
        await self.tracker.start()
        if self.worker is not None:
            await self.worker.start()
            self._watch = asyncio.create_task(self._watch_worker(self.worker))

    async def _watch_worker(self, worker: FaustWorker) -> None:
        await worker.failed.wait()
        if self.on_failure is not None and worker.failure is not None:
            res = self.on_failure(worker.failure)
            if res is not None:
                await res

    async def ready(self, timeout: float = 60.0) -> None:
        """Wait until the outcome tracker has read the events that existed at start."""
        assert self.tracker is not None
        async with asyncio.timeout(timeout):
            await self.tracker.caught_up.wait()

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
        if self.worker is not None:
            await self.worker.stop()
        if self.tracker is not None:
            await self.tracker.stop()
        await self.log.close()
        await self.store.close()

    def partition_of(self, pool: str) -> int:
        return partition_for(pool, self.partitions)

    async def submit(self, env: Envelope) -> tuple[int, int, bool]:
        """Append a command durably: (partition, offset, duplicate).

        Kafka cannot refuse a repeated id, so a repeat is appended again and the decider drops it
        (same outcome, no new events); ``duplicate`` says the outcome was already known here.
        """
        known = self.outcomes.get(env.commandid or env.id) is not None
        [appended] = await self.log.append(self.topics.commands, [to_record(env)])
        self.cache.put(self.topics.commands, [appended], [env])
        return appended.partition, appended.offset, known

    async def outcome_events(self, ref: OutcomeRef) -> list[tuple[int, Envelope]]:
        recs = await self.log.read(self.topics.events, ref.partition, ref.offset, ref.count)
        return [(r.offset, self.cache.decode(r)) for r in recs]

    def readiness(self) -> dict[str, Any]:
        w = self.worker
        return {
            "worker": w is not None,
            "deciders_ready": w is not None and all(not p.dirty for p in w.deciders.values()),
            "coordinator_ready": w is not None and all(not p.dirty for p in w.coordinators.values()),
            "assigned": None if w is None else {"commands": sorted(w.deciders),
                                                "events": sorted(w.coordinators)},
            "tracker_caught_up": self.tracker is not None and self.tracker.caught_up.is_set(),
        }
