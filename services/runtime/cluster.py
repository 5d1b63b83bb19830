"""The Faust runner: the embedded runner's deciders, coordinator and projector on a Kafka cluster.

faust-streaming does membership, partition assignment and rebalancing (one consumer group, the
app id); the work is done by the same code as the embedded runner (``PartitionDecider``,
``CoordinatorDriver``, ``Projector``). Per partition, the state of each role is built when
Faust assigns the partition and dropped when it is revoked:

* decider (commands partition p): claims p's transactional writer (fencing the previous owner),
  rebuilds its pools from events partition p, then decides commands from its own committed offset
  (group ``<app id>-decider``). A batch's events, dead letters, forwarded commands and the commands
  offset go into ONE Kafka transaction.
* coordinator (events partition p): claims, rebuilds its view from events below its committed
  offset, re-issues assignments lost in flight, then reacts: commands out and events offset in
  one transaction.
* projector (events partition p): rows and position in one PostgreSQL transaction.
* deliveries (events partition p): each outbound subscription's events of p, from its own
  committed position (``services.runtime.deliveries``). Every worker follows the subscriptions
  themselves; the delivering moves with the partition, so a rebalance may send again what was in
  flight (at least once, as on any restart).

Faust is used for what it does well (group membership, assignment, rebalancing) and nothing
else. It does not deliver records: each role on each assigned partition tails it itself from its
own committed offset (``services.runtime.partition_role``, which also rebuilds a role that
stalls), and records this process wrote are not decoded again (``EnvelopeCache``). Measured on a 2-core
machine, Faust's per-message path (consumer thread hop, events, channels, acks, ``take_events``)
topped out near 6,000 records/s, and with commands and events fetched by one aiokafka consumer
(one fetch in flight per broker, Faust's fetch wait hard-coded to 1.5 s) every hand-off waited
~1 s for the other topic's long poll. So Faust's consumer pauses every partition it is assigned;
its offsets (group ``<app id>``) are never used. Exactly-once effect comes from our own offsets,
committed in our transactions; the decider also drops a command id it has already decided.
The three roles run as separate tasks, so the read models never hold up the coordinator.

Workarounds for faust-streaming 0.15.3, each as narrow as it can be (README, "Run on a cluster"):

* With ``processing_guarantee="at_least_once"`` Faust's consumer reads ``read_uncommitted``, so
  it would deliver records of aborted transactions (a fenced zombie's events). Its consumer is
  switched to ``read_committed`` (``_ReadCommittedTransport``); it delivers nothing now (see
  above), which keeps that true should a partition ever be resumed.
* ``exactly_once`` is not used: Faust's transactional producers duplicate output around
  rebalances; our own transactions per partition writer replace them.
* No Faust tables (no changelog recovery): the event log itself is the state's changelog.

This module must never decide, react or project itself: it only feeds records to those steps.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
from collections.abc import Awaitable, Callable
from typing import Any

import faust
import sqlalchemy as sa
from aiokafka.structs import TopicPartition  # type: ignore[import-untyped]
from faust.transport.drivers import aiokafka as faust_aiokafka

from contracts import Envelope
from events import EventLog, LogError, StoredRecord, TransactionalLog, open_log, partition_for
from events.cache import EnvelopeCache
from events.kafka import KafkaLog
from projections import ProjectionStore, Projector
from services.runtime.coordinator import CoordinatorDriver
from services.runtime.decider import PartitionDecider
from services.runtime.deliveries import Deliveries, group_prefix
from services.runtime.outcomes import OutcomeRef, Outcomes
from services.runtime.partition_role import RETRY_MAX_S, PartitionRole
from services.runtime.sealing import Sealer, sealer_of
from services.runtime.service import Starting, StopDeadline, ended, wait_committed
from services.runtime.settings import Settings
from services.runtime.snapshots import SnapshotStore
from services.runtime.timers import TimerService
from services.runtime.topics import Topics
from services.runtime.tracker import OutcomeTracker

log = logging.getLogger("agentbus.faust")

HEARTBEAT_S = 1.0
# The read models take bigger batches: one database transaction per batch.
PROJECTOR_BATCH = 5000
UNSTARTED_APP_STOP_S = 3.0


# --- Faust's consumer, read_committed -----------------------------------------------------------


class _ReadCommittedThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # Faust reads read_committed only with exactly_once; aborted records must never reach us.
        consumer._isolation_level = "read_committed"
        return consumer

    async def on_partitions_assigned(self, assigned: set[Any], generation_id: int = 0) -> None:
        # Faust delivers nothing: its per-message path (thread hop, events, channels, acks) tops
        # out at ~6,000 records/s here, and aiokafka's one fetch in flight per broker made each
        # topic wait for the other's long poll (~1 s per hop). The roles tail their partitions
        # themselves (PartitionRole.run); pausing stops this consumer fetching what nobody reads.
        consumer = self._ensure_consumer()
        consumer.pause(*[TopicPartition(tp.topic, tp.partition) for tp in assigned])
        await super().on_partitions_assigned(assigned, generation_id)


class _ReadCommittedConsumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> Any:
        return _ReadCommittedThread(self, loop=self.loop, beacon=self.beacon)


class _ReadCommittedTransport(faust_aiokafka.Transport):
    Consumer = _ReadCommittedConsumer


# --- the worker ---------------------------------------------------------------------------------


class FaustWorker:
    """A Faust app running the deciders, coordinator and projector for the partitions it is given."""

    def __init__(self, settings: Settings, *, topics: Topics | None = None, app_id: str | None = None,
                 log: EventLog | None = None, store: ProjectionStore | None = None,
                 outcomes: Outcomes | None = None, cache: EnvelopeCache | None = None,
                 session_timeout: float | None = None) -> None:
        """``topics``, ``app_id`` and ``session_timeout`` default to the settings' own."""
        if not settings.kafka:
            raise ValueError(f"the Faust runner needs a kafka:// broker, not {settings.broker!r}")
        self.settings = settings
        self.topics = topics or settings.topics
        self.app_id = app_id or settings.app_id
        self._own_log = log is None
        log = log or open_log(settings.broker)
        if not isinstance(log, TransactionalLog):  # claims partition writers, dead-letters in one transaction
            raise ValueError(f"the Faust runner needs a transactional log (kafka://), not {log.url!r}")
        self.log: TransactionalLog = log
        self.store = store or ProjectionStore(settings.database)
        self._own_store = store is None
        # The deciders' snapshots, in the read-model database (0: none written or read).
        self.snapshots = SnapshotStore(self.store) if settings.snapshot_every > 0 else None
        self.outcomes = outcomes if outcomes is not None else Outcomes()
        self.cache = cache if cache is not None else EnvelopeCache()
        # Seconds before the group gives a silent (e.g. killed) worker's partitions to the others.
        self.session_timeout = session_timeout or settings.session_timeout
        self.partitions = settings.partitions
        self.decider_group = f"{self.app_id}-decider"
        self.coordinator_group = f"{self.app_id}-coordinator"
        self.projector = Projector(self.store)
        self.deciders: dict[int, PartitionRole] = {}
        self.coordinators: dict[int, PartitionRole] = {}
        self.projectors: dict[int, PartitionRole] = {}
        # Durable timers: one service per commands partition this worker owns. A brief overlap
        # with the previous owner is harmless: FireTimer ids are deterministic, repeats dropped.
        self.timers: dict[int, asyncio.Task[None]] = {}
        self.deliveries: Deliveries | None = None  # outbound subscriptions of the events partitions owned
        self._delivering: asyncio.Task[None] | None = None
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
        if self.snapshots is not None:
            await self.snapshots.start()
        self.deliveries = Deliveries(self.log, self.sealer, partitions=self.partitions,
                                     topic=self.topics.events, commands=self.topics.commands,
                                     cache=self.cache, group_prefix=group_prefix(self.settings), owned=())
        self._delivering = asyncio.ensure_future(self._guard(self.deliveries.run()))
        self.app = self._app()
        await self.app.start()
        self.started.set()

    async def stop(self, deadline: StopDeadline | None = None) -> None:
        """Stop the roles (each after its batch), leave the group, close what is ours; within
        ``deadline`` (default: a ``STOP_TIMEOUT_S`` of its own), abandoning what has not finished."""
        deadline = deadline or StopDeadline()
        app, self.app = self.app, None
        background = [*self._preparing, *self.timers.values(), *filter(None, [self._delivering])]
        for task in background:
            task.cancel()
        self.timers.clear()
        parts = [p for ps in (self.deciders, self.coordinators, self.projectors) for p in ps.values()]
        running = [p.task for p in parts if p.task is not None]
        for part in parts:
            part.closed = True
        for ps in (self.deciders, self.coordinators, self.projectors):
            ps.clear()
        if background:
            await deadline.step("the timers", ended(background))
        # A role building its state holds its lock (claiming a writer, reading the log) for as
        # long as that takes: past the deadline it is cancelled where it stands. Its transaction,
        # if one is open, is never committed: the broker aborts it.
        stopped = await deadline.step("the partition roles", asyncio.gather(*(p.stop() for p in parts)))
        if not stopped:
            for task in running:
                task.cancel()
        if app is not None:
            # Leaving the group hands our partitions over at once instead of after the session
            # timeout. A start cut short left nothing to hand over, and Faust may then wait for
            # parts of it that never started: a few seconds, not the whole budget.
            await deadline.step("leaving the consumer group", app.stop(),
                                at_most=None if self.started.is_set() else UNSTARTED_APP_STOP_S)
        if self.snapshots is not None:
            # A partition's decider may be writing a snapshot: it must not outlive the database.
            await deadline.step("the snapshots being written", self.snapshots.drain())
        if self._own_log:
            await deadline.step("the log", self.log.close())
        if self._own_store:
            await deadline.step("the read models", self.store.close())
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

        async def assigned_only(stream: Any) -> None:
            # Subscribes the group to the topic; the partitions are paused (_ReadCommittedThread),
            # so nothing arrives here: each role tails its partitions itself (PartitionRole.run).
            async for _ in stream:
                pass

        app.agent(commands, name=f"{self.app_id}.decider", concurrency=1)(assigned_only)
        app.agent(events, name=f"{self.app_id}.reactor", concurrency=1)(assigned_only)
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
        """Faust's new assignment: stop what moved away, start what arrived (in the background)."""
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
                self._background(self._release(part, group, topic, p))
        for parts, topic, make in (
            (self.deciders, self.topics.commands, self._decider),
            (self.coordinators, self.topics.events, self._coordinator),
            (self.projectors, self.topics.events, self._projector),
        ):
            for p in want[topic] - set(parts):
                part = parts[p] = make(p)
                part.task = asyncio.ensure_future(self._guard(part.run()))
        if self.deliveries is not None:
            self.deliveries.own(want[self.topics.events])
        for p in [p for p in self.timers if p not in want[self.topics.commands]]:
            self.timers.pop(p).cancel()
        for p in want[self.topics.commands] - set(self.timers):
            self.timers[p] = asyncio.ensure_future(self._guard(self._run_timers(p)))

    def sealer(self) -> Sealer:
        """Opens the subscriptions' secrets: every worker needs the deployment's AGENTBUS_SECRET_KEY."""
        return sealer_of(self.settings)

    async def _run_timers(self, p: int) -> None:
        """Fire partition p's durable timers; after a broker hiccup rebuild the book and go on."""
        delay = 0.2
        while True:
            timers = TimerService(self.log, p, commands=self.topics.commands, events=self.topics.events)
            try:
                await timers.run()
            except Exception as exc:  # like the other roles: retried, never fatal
                log.warning("timers[%d] failed (%r); rebuilding and retrying in %.1f s", p, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)

    async def _release(self, part: PartitionRole, group: str | None, topic: str, partition: int) -> None:
        await part.stop()  # after its last batch
        if group is not None:
            await self.log.release(group, topic, partition)

    def _background(self, work: Awaitable[None]) -> None:
        async def run() -> None:
            await self._guard(work)

        task = asyncio.ensure_future(run())
        self._preparing.add(task)
        task.add_done_callback(self._preparing.discard)

    # -- the three roles ------------------------------------------------------------------------

    def _decider(self, p: int) -> PartitionRole:
        holder: dict[str, PartitionDecider] = {}

        async def build() -> int:
            self.log.chain(self.topics.events)  # this partition's decider is its events' only writer
            await self.log.claim(self.decider_group, self.topics.commands, p)  # fence, THEN read
            d = PartitionDecider(self.log, p, self.outcomes, self.settings.decider, self.cache,
                                 topics=self.topics, group=self.decider_group, dead_letters=True,
                                 partitions=self.partitions, snapshots=self.snapshots,
                                 snapshot_every=self.settings.snapshot_every)
            await d.rebuild()
            d.ready.set()
            holder["d"] = d
            return await self.log.committed(self.decider_group, self.topics.commands, p)

        async def step(recs: list[StoredRecord]) -> None:
            get = self.cache.get
            await holder["d"].process([(r.offset, get(r) or r) for r in recs])

        return PartitionRole("decider", self.topics.commands, p, build, step, self.log)

    def _coordinator(self, p: int) -> PartitionRole:
        holder: dict[str, CoordinatorDriver] = {}

        async def build() -> int:
            await self.log.claim(self.coordinator_group, self.topics.events, p)
            c = CoordinatorDriver(self.log, (p,), self.topics, self.coordinator_group, self.cache,
                                  fenced=True)
            holder["c"] = c
            return (await c.rebuild())[p]

        async def step(recs: list[StoredRecord]) -> None:
            decode = self.cache.decode
            await holder["c"].react(p, [(r.offset, decode(r)) for r in recs])

        return PartitionRole("coordinator", self.topics.events, p, build, step, self.log)

    def _projector(self, p: int) -> PartitionRole:
        async def build() -> int:
            return await self.projector.position(self.topics.events, p)

        async def step(recs: list[StoredRecord]) -> None:
            decode = self.cache.decode
            await self.projector.apply(self.topics.events, p, [(r.offset, decode(r)) for r in recs])

        return PartitionRole("projector", self.topics.events, p, build, step, self.log, limit=PROJECTOR_BATCH)


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
    ``agentbus worker``). ``topics``, ``app_id`` and ``session_timeout`` default to the settings' own.
    """

    def __init__(self, settings: Settings, *, worker: bool = True, topics: Topics | None = None,
                 app_id: str | None = None, session_timeout: float | None = None) -> None:
        self.settings = settings
        self.topics = topics or settings.topics
        self.log: EventLog = open_log(settings.broker)
        self.store = ProjectionStore(settings.database)
        self.outcomes = Outcomes()
        self.cache = EnvelopeCache()
        self.partitions = settings.partitions
        self.worker = (FaustWorker(settings, topics=self.topics, app_id=app_id, log=self.log,
                                   store=self.store, cache=self.cache, session_timeout=session_timeout)
                       if worker else None)
        # The deciders' consumer group, wherever they run (read-your-writes waits on its offsets).
        self.decider_group = f"{app_id or settings.app_id}-decider"
        self.tracker: OutcomeTracker | None = None
        self.on_failure: Callable[[BaseException], Awaitable[None] | None] | None = None
        self._watch: asyncio.Task[None] | None = None
        self._starting = Starting()

    @property
    def failure(self) -> BaseException | None:
        if self.worker is not None and self.worker.failure is not None:
            return self.worker.failure
        if self.tracker is not None:
            return self.tracker.failure
        return None

    async def start(self) -> None:
        with self._starting.running():
            await self._start()

    def cancel_start(self) -> None:
        self._starting.cancel()

    async def _start(self) -> None:
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
        with self._starting.running():
            async with asyncio.timeout(timeout):
                await self.tracker.caught_up.wait()

    async def stop(self) -> None:
        """Stop the worker, the tracker, the log and the store within ``STOP_TIMEOUT_S``."""
        deadline = StopDeadline()
        if self._watch is not None:
            self._watch.cancel()
        if self.worker is not None:
            await self.worker.stop(deadline)
        if self.tracker is not None:
            await deadline.step("the outcome tracker", self.tracker.stop())
        await deadline.step("the log", self.log.close())
        await deadline.step("the read models", self.store.close())

    def partition_of(self, pool: str) -> int:
        return partition_for(pool, self.partitions)

    async def submit(self, env: Envelope) -> tuple[int, int, bool]:
        """Append a command durably: (partition, offset, duplicate).

        Kafka cannot refuse a repeated id, so a repeat is appended again and the decider drops it
        (same outcome, no new events); ``duplicate`` says the outcome was already known here.
        """
        known = self.outcomes.get(env.commandid or env.id) is not None
        [appended] = await self.cache.append(self.log, self.topics.commands, [env])
        return appended.partition, appended.offset, known

    async def outcome_events(self, ref: OutcomeRef) -> list[tuple[int, Envelope]]:
        recs = await self.log.read(self.topics.events, ref.partition, ref.offset, ref.count)
        return [(r.offset, self.cache.decode(r)) for r in recs]

    async def wait_decided(self, partition: int, position: int, timeout: float) -> int | None:
        """See ``Service.wait_decided``. The decider commits its commands offset in the transaction
        of the events it appended, so once the offset is past ``position`` those events are
        committed and below the events partition's stable end; the tracker, which has read that
        far, names the last record there (a transaction marker takes the offset after it).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if not await wait_committed(self.log, self.decider_group, self.topics.commands, partition, position,
                                    timeout, sparse=True):
            return None
        assert self.tracker is not None
        end = await self.log.end_offset(self.topics.events, partition)
        return await self.tracker.reached(partition, end, max(deadline - loop.time(), 0.0))

    async def decided_position(self, partition: int) -> int:
        return await self.log.committed(self.decider_group, self.topics.commands, partition) - 1

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
