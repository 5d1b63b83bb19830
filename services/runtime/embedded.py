"""The embedded runner: deciders, the coordinator, the timer services and the projector as
consumers of one log, in one asyncio process (the projector, on a machine with a second CPU, in a
process of its own: ``services.runtime.projector_process``), each resuming from its own committed
position (the timer services from their rebuilt books) after a restart.

Exactly-once: the decider appends a batch's events and commits its commands offset in one
transaction; the coordinator appends its commands and commits its events offset in one; the
projector stores its position with its rows. A restart therefore neither loses nor repeats, and a
stop may cancel a loop anywhere (``stop()`` is bounded: ``services.runtime.service.StopDeadline``).
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import httpx

from contracts import Envelope
from events import EventLog, open_log, partition_for
from events.cache import EnvelopeCache
from events.sqlite import SqliteLog
from projections import ProjectionStore, Projector
from services.runtime.coordinator import CoordinatorDriver
from services.runtime.coordinator_snapshots import CoordinatorSnapshots
from services.runtime.decider import PartitionDecider
from services.runtime.deliveries import Deliveries
from services.runtime.memory import GC_THRESHOLDS, keep_large_blocks_apart
from services.runtime.outcomes import OutcomeRef, Outcomes
from services.runtime.projector import ProjectorLoop
from services.runtime.projector_process import ProjectorProcess
from services.runtime.sealing import Sealer, sealer_of
from services.runtime.service import Starting, StopDeadline, ended, wait_committed
from services.runtime.settings import Settings
from services.runtime.snapshots import SnapshotStore
from services.runtime.timers import TimerService, run_timers
from services.runtime.topics import COMMANDS, DECIDER_GROUP, EVENTS, Topics
from services.runtime.webhook import ensure_scaling_webhook

if TYPE_CHECKING:
    from services.audit.checkpoints import CheckpointLoop

log = logging.getLogger("agentbus.runner")


_FREEZE_AFTER_READY = False


def tune_gc() -> None:
    """Tune the collector for a long-running process that holds large state (call at start-up).

    The deciders' state and the envelope cache are hundreds of thousands of long-lived objects;
    with default thresholds every few thousand allocations trigger collections that walk them
    again (measured: a third of the throughput). Collect less often, and freeze what was built
    at start-up so full collections skip it.
    """
    global _FREEZE_AFTER_READY
    gc.set_threshold(*GC_THRESHOLDS)
    _FREEZE_AFTER_READY = True


class Runner:
    """All of agentbus in one process on the configured log and read-model database.

    The outbound subscriptions are delivered from every partition (``services.runtime.deliveries``).
    ``scaling_webhook`` (default: the ``scaling_webhook`` setting) makes sure the subscription
    ``scaling-webhook`` delivers each ScalingDecided event there (``services.runtime.webhook``);
    ``webhook_transport`` replaces the network of every delivery in tests.
    """

    def __init__(self, settings: Settings, *, deciders: bool = True, coordinator: bool = True,
                 projector: bool = True, scaling_webhook: str | None = None,
                 webhook_transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.settings = settings
        self.log: EventLog = open_log(settings.broker)
        self.store = ProjectionStore(settings.database)
        # The deciders' snapshots live in the read-model database (0: none written or read).
        self.snapshots = SnapshotStore(self.store) if settings.snapshot_every > 0 else None
        self.outcomes = Outcomes()
        self.cache = EnvelopeCache()
        self.partitions = settings.partitions
        # The loops below use the plain names, on any log; the topic prefix is a cluster setting.
        self.topics = Topics()
        self.deciders: list[PartitionDecider] = []
        self.coordinator: CoordinatorDriver | None = None
        self.timers: list[TimerService] = []
        self.webhook_url = scaling_webhook or settings.scaling_webhook
        self.deliveries: Deliveries | None = None
        # The projector's own process (``projector_process`` setting), when it runs in one.
        self.projector_process: ProjectorProcess | None = None
        self._webhook_transport = webhook_transport
        self._want = (deciders, coordinator, projector)
        self._tasks: list[asyncio.Task[None]] = []
        self.failure: BaseException | None = None
        self.failed = asyncio.Event()
        self.on_failure: Callable[[BaseException], Awaitable[None] | None] | None = None
        self._starting = Starting()

    async def start(self) -> None:
        with self._starting.running():
            await self._start()

    def cancel_start(self) -> None:
        self._starting.cancel()

    async def _start(self) -> None:
        checkpoints = self._checkpoints()  # a bad audit key fails the start before anything runs
        keep_large_blocks_apart()  # services.runtime.memory
        if self.settings.broker.startswith("sqlite:"):
            self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        await self.log.start()
        await self.log.ensure_topic(COMMANDS, self.partitions)
        await self.log.ensure_topic(EVENTS, self.partitions, retention_ms=-1)
        self.partitions = await self.log.partitions(EVENTS)
        await self.store.start()
        want_deciders, want_coordinator, want_projector = self._want
        if want_deciders:
            if self.snapshots is not None:
                await self.snapshots.start()
            for p in range(self.partitions):
                d = PartitionDecider(self.log, p, self.outcomes, self.settings.decider, self.cache,
                                     snapshots=self.snapshots, snapshot_every=self.settings.snapshot_every)
                self.deciders.append(d)
                self._spawn(d.run(), f"decider[{p}]")
                # Durable timers: the wall clock decides when FireTimer commands go out; the
                # decider still takes their time from the envelope (stamped here).
                t = TimerService(self.log, p, cache=self.cache)
                self.timers.append(t)
                self._spawn(run_timers(d, t), f"timers[{p}]")
        if want_coordinator:
            self.coordinator = CoordinatorDriver(self.log, tuple(range(self.partitions)), self.topics,
                                                 cache=self.cache)
            every = self.settings.coordinator_snapshot_every
            if self.snapshots is not None and every > 0 and isinstance(self.log, SqliteLog):
                await self.snapshots.start()
                self.coordinator.snapshots = CoordinatorSnapshots(self.snapshots)
                self.coordinator.snapshot_every = every
                self.coordinator.snapshot_urls = (self.settings.broker, self.settings.database)
            self._spawn(self.coordinator.run(), "coordinator")
        if want_projector and self.settings.projector_own_process and isinstance(self.log, SqliteLog):
            self.projector_process = ProjectorProcess(self.log, self.store, self.settings.broker,
                                                      self.settings.database, self.partitions,
                                                      self.settings.projector_linger_ms)
            self._spawn(self.projector_process.run(), "projector process")
        elif want_projector:
            self._spawn(ProjectorLoop(self.log, Projector(self.store), self.partitions, self.cache,
                                      linger_s=self.settings.projector_linger_ms / 1000).run(),
                        "projector")
        self.deliveries = Deliveries(self.log, self.sealer, partitions=self.partitions, topic=EVENTS,
                                     commands=COMMANDS, cache=self.cache, transport=self._webhook_transport)
        self._spawn(self.deliveries.run(), "deliveries")
        if checkpoints is not None:
            self._spawn(checkpoints.run(), "audit checkpoints")

    def _checkpoints(self) -> CheckpointLoop | None:
        """The periodic audit checkpoints, when a key and a period are set."""
        if self.settings.audit_key is None or self.settings.audit_checkpoint_every_s <= 0:
            return None
        # Imported when used: the services.audit package builds on this runtime (its other modules
        # import the runtime), so importing it at the top would make a cycle.
        from services.audit.checkpoints import CheckpointLoop, load_private_key

        key = load_private_key(self.settings.audit_key.get_secret_value(), "AGENTBUS_AUDIT_KEY")
        return CheckpointLoop(self.log, EVENTS, key, self.settings.audit_checkpoint_every_s, self.submit)

    def sealer(self) -> Sealer:
        """Seals and opens the secrets the log keeps (``services.runtime.sealing``)."""
        return sealer_of(self.settings)

    @property
    def webhook(self) -> Deliveries | None:
        """The deliveries, when a scaling webhook is configured (the name of the relay they replace)."""
        return self.deliveries if self.webhook_url else None

    def _spawn(self, coro: Awaitable[None], name: str) -> None:
        async def guarded() -> None:
            try:
                await coro
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # a worker that dies must take the service down loudly
                log.error("%s failed: %s", name, exc, exc_info=exc)
                self.failure = self.failure or exc
                self.failed.set()
                if self.on_failure is not None:
                    res = self.on_failure(exc)
                    if res is not None:
                        await res

        self._tasks.append(asyncio.create_task(guarded(), name=name))

    async def ready(self, timeout: float = 60.0) -> None:
        """Wait until deciders and the coordinator have rebuilt their state (and the projector's
        process, when it runs in one, follows the log)."""
        with self._starting.running():
            await self._ready(timeout)

    async def _ready(self, timeout: float) -> None:
        events = [d.ready for d in self.deciders]
        if self.coordinator is not None:
            events.append(self.coordinator.ready)
        if self.deliveries is not None:
            events.append(self.deliveries.book.ready)
        if self.projector_process is not None:
            events.append(self.projector_process.ready)
        waits = [asyncio.create_task(ev.wait()) for ev in events]
        fail = asyncio.create_task(self.failed.wait())
        try:
            either: list[asyncio.Future[Any]] = [asyncio.gather(*waits), fail]
            done, _ = await asyncio.wait(either, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            fail.cancel()
        if self.failure is not None:
            raise RuntimeError(f"agentbus failed to start: {self.failure}") from self.failure
        if not done:
            raise TimeoutError("agentbus did not become ready in time")
        if self.webhook_url and self.deliveries is not None:
            await ensure_scaling_webhook(self.webhook_url, book=self.deliveries.book, log=self.log,
                                         topic=EVENTS, partitions=self.partitions, sealer=self.sealer,
                                         submit=self.submit)
        if _FREEZE_AFTER_READY:
            gc.freeze()

    async def stop(self) -> None:
        """Cancel the loops, then close the log and the read models, within ``STOP_TIMEOUT_S``."""
        deadline = StopDeadline()
        tasks, self._tasks = self._tasks, []
        for t in tasks:
            t.cancel()
        if tasks:
            await deadline.step("the loops", ended(tasks))
        if self.snapshots is not None and self.deciders:
            await deadline.step("the deciders' last snapshots",
                                asyncio.gather(*(d.close() for d in self.deciders)))
            await deadline.step("the snapshots being written", self.snapshots.drain())
        await deadline.step("the log", self.log.close())
        await deadline.step("the read models", self.store.close())

    def partition_of(self, pool: str) -> int:
        return partition_for(pool, self.partitions)

    def readiness(self) -> dict[str, Any]:
        """What the health endpoint reports about the workers."""
        return {
            "deciders_ready": bool(self.deciders) and all(d.ready.is_set() for d in self.deciders),
            "coordinator_ready": self.coordinator is not None and self.coordinator.ready.is_set(),
        }

    async def submit(self, env: Envelope) -> tuple[int, int, bool]:
        """Append a command durably: (partition, offset, duplicate)."""
        [appended] = await self.cache.append(self.log, COMMANDS, [env])
        return appended.partition, appended.offset, appended.duplicate

    async def submit_many(self, envs: list[Envelope]) -> list[tuple[int, int, bool]]:
        res = await self.cache.append(self.log, COMMANDS, envs)
        return [(a.partition, a.offset, a.duplicate) for a in res]

    async def outcome_events(self, ref: OutcomeRef) -> list[tuple[int, Envelope]]:
        recs = await self.log.read(EVENTS, ref.partition, ref.offset, ref.count)
        return [(r.offset, self.cache.decode(r)) for r in recs]

    async def wait_decided(self, partition: int, position: int, timeout: float) -> int | None:
        """See ``Service.wait_decided``: woken by this process's decider (the log is polled when
        this runner runs none). Its events and offset commit in one transaction, so the events
        end read just after is exact."""
        if self.deciders:
            decided = await self.deciders[partition].wait_decided(position, timeout)
        else:
            decided = await wait_committed(self.log, DECIDER_GROUP, COMMANDS, partition, position, timeout)
        if not decided:
            return None
        return await self.log.end_offset(EVENTS, partition) - 1

    async def decided_position(self, partition: int) -> int:
        if self.deciders:
            return self.deciders[partition].decided - 1
        return await self.log.committed(DECIDER_GROUP, COMMANDS, partition) - 1

    async def __aenter__(self) -> Runner:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
