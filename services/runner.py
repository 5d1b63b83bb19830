"""The embedded runner: deciders, the coordinator, the timer services and the projector as
consumers of one log, in one asyncio process, each resuming from its own committed position (the
timer services from their rebuilt books) after a restart.

Exactly-once: the decider appends a batch's events and commits its commands offset in one
transaction; the coordinator appends its commands and commits its events offset in one; the
projector stores its position with its rows. A restart therefore neither loses nor repeats.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from contracts import REGISTRY, Envelope, Payload, Reason, new_id, utcnow
from contracts import events as e
from events import Commit, EventLog, Record, StoredRecord, open_log, partition_for
from events.cache import EnvelopeCache, tail, tail_raw
from events.codec import DecodeError, decode, from_record, to_record
from projections import ProjectionStore, Projector
from services.config import COMMANDS, EVENTS, Settings
from services.coordinator import Assignment, Coordinator
from services.decider import DeciderConfig, Rejected, decide, evolve
from services.ingest import command_envelope
from services.outcomes import OutcomeRef, Outcomes
from services.state import PoolState
from services.timers import TimerService
from services.webhook import WebhookRelay, url_from_env

log = logging.getLogger("agentbus.runner")

DECIDER_GROUP = "decider"
COORDINATOR_GROUP = "coordinator"
DEAD_LETTERS = f"{COMMANDS}.dlq"
BATCH = 1000
# Headers of a dead letter: why it was refused and where it came from.
DLQ_ERROR = "agentbus_error"
DLQ_TOPIC = "agentbus_source_topic"
DLQ_PARTITION = "agentbus_source_partition"
DLQ_OFFSET = "agentbus_source_offset"


@dataclass(frozen=True, slots=True)
class Topics:
    """The names of the topics one deployment uses (a prefix keeps deployments apart on one broker)."""

    commands: str = COMMANDS
    events: str = EVENTS
    dead_letters: str = DEAD_LETTERS

    @classmethod
    def prefixed(cls, prefix: str) -> Topics:
        return cls(f"{prefix}{COMMANDS}", f"{prefix}{EVENTS}", f"{prefix}{DEAD_LETTERS}")


_FREEZE_AFTER_READY = False


def tune_gc() -> None:
    """Tune the collector for a long-running process that holds large state (call at start-up).

    The deciders' state and the envelope cache are hundreds of thousands of long-lived objects;
    with default thresholds every few thousand allocations trigger collections that walk them
    again (measured: a third of the throughput). Collect less often, and freeze what was built
    at start-up so full collections skip it.
    """
    global _FREEZE_AFTER_READY
    gc.set_threshold(100_000, 50, 1000)
    _FREEZE_AFTER_READY = True


@dataclass
class ReplayStats:
    """How long rebuilding the decider state from the log took."""

    events: int = 0
    seconds: float = 0.0

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


def event_envelopes(cmd: Envelope, events: list[Payload], state: PoolState) -> list[Envelope]:
    """Wrap a decision's events: time from the command, sequence within the pool, causal ids."""
    out = []
    seq = state.sequence
    for ev in events:
        seq += 1
        contract = REGISTRY[type(ev).__name__]
        subject = ev.subject() if not isinstance(ev, e.CommandRejected) else cmd.subject
        out.append(
            Envelope.trusted(
                specversion="1.0",
                id=new_id(),
                source="urn:agentbus:decider",
                type=contract.name,
                time=cmd.time,
                subject=subject,
                datacontenttype="application/json",
                dataschema=contract.dataschema,
                schemaversion=contract.version,
                pool=cmd.pool,
                sequence=seq,
                commandid=cmd.commandid or cmd.id,
                causationid=cmd.id,
                correlationid=cmd.correlationid or cmd.id,
                actor=cmd.actor,
                data=ev,
            )
        )
    return out


def rejection(cmd_type: str, exc: Rejected, subject: str | None) -> e.CommandRejected:
    details = dict(exc.details)
    if subject is not None:
        details.setdefault("subject", subject)
    return e.CommandRejected(command_type=cmd_type, code=exc.code.value, message=exc.message, details=details)


@dataclass
class PartitionDecider:
    """The single writer of one partition: replays its events, then decides its commands."""

    log: EventLog
    partition: int
    outcomes: Outcomes
    config: DeciderConfig
    cache: EnvelopeCache = field(default_factory=EnvelopeCache)
    states: dict[str, PoolState] = field(default_factory=dict)
    replay: ReplayStats = field(default_factory=ReplayStats)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    topics: Topics = field(default_factory=Topics)
    group: str = DECIDER_GROUP
    # Kafka: records nobody can decide (malformed, unknown type) also go to the dead-letter topic,
    # and a command on a partition its pool does not map to (a foreign producer's partitioner)
    # is forwarded to the right one instead of being decided here. Both in the batch's transaction.
    dead_letters: bool = False
    partitions: int | None = None

    def state(self, pool: str) -> PoolState:
        st = self.states.get(pool)
        if st is None:
            st = self.states[pool] = PoolState(pool)
        return st

    async def rebuild(self) -> None:
        """Rebuild every pool's state and the outcome index from this partition's events."""
        started = time.perf_counter()
        offset, count = 0, 0
        last_cmd: str | None = None
        first = 0
        n_of_cmd = 0
        while True:
            batch = await self.log.read(self.topics.events, self.partition, offset, 5000)
            if not batch:
                break
            for rec in batch:
                env = from_record(rec)
                evolve(self.state(env.pool), env)
                cid = env.commandid
                if cid != last_cmd:
                    if last_cmd is not None:
                        self.outcomes.record(last_cmd, OutcomeRef(self.partition, first, n_of_cmd))
                    last_cmd, first, n_of_cmd = cid, rec.offset, 0
                n_of_cmd += 1
            count += len(batch)
            offset = batch[-1].offset + 1
        if last_cmd is not None:
            self.outcomes.record(last_cmd, OutcomeRef(self.partition, first, n_of_cmd))
        self.replay = ReplayStats(count, time.perf_counter() - started)

    def decide_one(self, item: StoredRecord | Envelope) -> tuple[str, list[Envelope]]:
        """Decide one command; malformed command records become INVALID_COMMAND rejections.

        An Envelope is a command this process validated at ingest; a record is checked in full.
        """
        cid, envs, _ = self._decide_item(item)
        return cid, envs

    def _decide_item(self, item: StoredRecord | Envelope) -> tuple[str, list[Envelope], str | None]:
        """(command id, events, why it is a dead letter or None)."""
        if isinstance(item, Envelope):
            return self._decide(item)
        rec = item
        try:
            cmd = decode(rec.value)
        except DecodeError as exc:
            cid = rec.id or f"{self.topics.commands}:{rec.partition}:{rec.offset}"
            bad = Envelope.trusted(
                id=cid, type="invalid", time=utcnow(), pool=rec.key or "default", commandid=cid,
                correlationid=cid, causationid=None, actor=None, subject=None, data={},
            )
            err = Rejected(Reason.INVALID_COMMAND, str(exc), topic=rec.topic, partition=rec.partition,
                           offset=rec.offset)
            state = self.state(bad.pool)
            wrapped = event_envelopes(bad, [rejection("invalid", err, None)], state)
            for env in wrapped:  # advances the pool's sequence like any other decision
                evolve(state, env)
            return cid, wrapped, f"{Reason.INVALID_COMMAND.value}: {exc}"
        return self._decide(cmd)

    def _decide(self, cmd: Envelope) -> tuple[str, list[Envelope], str | None]:
        cid = cmd.commandid or cmd.id
        state = self.state(cmd.pool)
        if cid in state.seen:
            return cid, [], None  # a repeat: the first outcome stands, nothing new is appended
        dead: str | None = None
        try:
            payload = cmd.data
            if not isinstance(payload, Payload) or REGISTRY[cmd.type].kind != "command":
                raise Rejected(Reason.UNKNOWN_COMMAND, f"unknown command type {cmd.type!r}")
            events = decide(state, payload, self.config)
        except Rejected as exc:
            events = [rejection(cmd.type, exc, cmd.subject)]
            if exc.code is Reason.UNKNOWN_COMMAND:
                dead = f"{exc.code.value}: {exc.message}"
        wrapped = event_envelopes(cmd, events, state)
        for env in wrapped:
            evolve(state, env)
        return cid, wrapped, dead

    def _misrouted(self, item: StoredRecord | Envelope) -> Record | None:
        """A foreign command whose pool lives on another partition: the record to forward there."""
        if self.partitions is None or isinstance(item, Envelope):
            return None
        try:
            pool = orjson.loads(item.value).get("pool") or "default"
        except (orjson.JSONDecodeError, AttributeError):
            return None  # malformed: decided (rejected) here, where it landed
        if not isinstance(pool, str) or partition_for(pool, self.partitions) == self.partition:
            return None
        return Record(key=pool, value=item.value, id=item.id, headers=item.headers)

    async def run(self) -> None:
        await self.rebuild()
        self.ready.set()
        start = await self.log.committed(self.group, self.topics.commands, self.partition)
        async for batch in tail_raw(self.log, self.cache, self.topics.commands, self.partition, start,
                                    limit=BATCH):
            await self.process(batch)

    async def process(self, batch: list[tuple[int, StoredRecord | Envelope]]) -> None:
        """Decide a batch of commands; append its events and commit its offset atomically."""
        out: list[Envelope] = []
        decided: list[tuple[str, int]] = []
        dead: list[Record] = []
        forward: list[Record] = []
        for _, item in batch:
            moved = self._misrouted(item)
            if moved is not None:
                forward.append(moved)
                continue
            cid, envs, error = self._decide_item(item)
            if error is not None and self.dead_letters and isinstance(item, StoredRecord):
                dead.append(dead_letter(item, error))
            if envs:
                decided.append((cid, len(envs)))
                out.extend(envs)
        commit = Commit(self.group, self.topics.commands, self.partition, batch[-1][0] + 1)
        extra: list[tuple[str, int | None, list[Record]]] = []
        if dead:
            extra.append((self.topics.dead_letters, self.partition, dead))
        if forward:
            extra.append((self.topics.commands, None, forward))
        if out or extra or self.dead_letters:
            # On Kafka even a bare offset goes through the partition's fenced transactional writer.
            kwargs: dict[str, Any] = {"extra": extra} if extra else {}
            appended = await self.log.append(self.topics.events, [to_record(x) for x in out],
                                             partition=self.partition, commit=commit, **kwargs)
            self.cache.put(self.topics.events, appended, out)
        else:
            appended = []
            await self.log.commit(commit.group, commit.topic, commit.partition, commit.offset)
        i = 0
        for cid, n in decided:
            self.outcomes.record(cid, OutcomeRef(self.partition, appended[i].offset, n))
            i += n


def dead_letter(rec: StoredRecord, error: str) -> Record:
    """The dead-letter record of ``rec``: its bytes unchanged, the error and its origin in headers."""
    headers = (
        *rec.headers,
        (DLQ_ERROR, error.encode()[:4000]),
        (DLQ_TOPIC, rec.topic.encode()),
        (DLQ_PARTITION, str(rec.partition).encode()),
        (DLQ_OFFSET, str(rec.offset).encode()),
    )
    return Record(key=rec.key, value=rec.value, headers=headers)


async def observe_history(log: EventLog, coordinator: Coordinator, topic: str, partition: int,
                          end: int) -> None:
    """Fold events [0, end) of one partition into the coordinator's view, without acting on them."""
    offset = 0
    while offset < end:
        batch = await log.read(topic, partition, offset, min(5000, end - offset))
        if not batch:
            break
        for rec in batch:
            coordinator.observe(from_record(rec))
        offset = batch[-1].offset + 1


async def emit_assignments(log: EventLog, cache: EnvelopeCache, coordinator: Coordinator, topic: str,
                           commit: Commit | None, partition: int | None = None) -> None:
    """Append the assignments the coordinator wants now, with ``commit`` in the same transaction."""
    assignments = coordinator.schedule()
    if assignments:
        envs = [_assignment_envelope(a) for a in assignments]
        appended = await log.append(topic, [to_record(x) for x in envs], partition=partition, commit=commit)
        cache.put(topic, appended, envs)
    elif commit is not None:
        if partition is not None:  # through the partition's (fenced) writer
            await log.append(topic, [], partition=partition, commit=commit)
        else:
            await log.commit(commit.group, commit.topic, commit.partition, commit.offset)


@dataclass
class PartitionCoordinator:
    """The coordinator reactor over ONE events partition (the Faust runner: one per assignment).

    Its view is rebuilt from the partition's events below its committed offset; then it reacts to
    the events from there on, appending its commands to the same partition of the commands topic
    (a pool maps to the same partition in both) with its events offset in one transaction.
    """

    log: EventLog
    partition: int
    topics: Topics = field(default_factory=Topics)
    group: str = COORDINATOR_GROUP
    cache: EnvelopeCache = field(default_factory=EnvelopeCache)
    coordinator: Coordinator = field(default_factory=Coordinator)

    async def rebuild(self) -> int:
        """Rebuild the view; re-issue assignments lost in flight; returns the offset to go on from."""
        end = await self.log.committed(self.group, self.topics.events, self.partition)
        await observe_history(self.log, self.coordinator, self.topics.events, self.partition, end)
        # Same ids as the lost ones (derived from history), so the decider drops any repeats.
        await emit_assignments(self.log, self.cache, self.coordinator, self.topics.commands,
                               Commit(self.group, self.topics.events, self.partition, end), self.partition)
        return end

    async def react(self, batch: list[tuple[int, Envelope]]) -> None:
        for _, env in batch:
            self.coordinator.observe(env)
        await emit_assignments(self.log, self.cache, self.coordinator, self.topics.commands,
                               Commit(self.group, self.topics.events, self.partition, batch[-1][0] + 1),
                               self.partition)


@dataclass
class CoordinatorLoop:
    """Runs the coordinator reactor over every events partition."""

    log: EventLog
    partitions: int
    cache: EnvelopeCache = field(default_factory=EnvelopeCache)
    coordinator: Coordinator = field(default_factory=Coordinator)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def run(self) -> None:
        starts = []
        for p in range(self.partitions):
            end = await self.log.committed(COORDINATOR_GROUP, EVENTS, p)
            await observe_history(self.log, self.coordinator, EVENTS, p, end)
            starts.append(end)
        await self._emit(None)  # queued tasks whose assignment was lost in flight
        self.ready.set()
        await asyncio.gather(*(self._tail(p, starts[p]) for p in range(self.partitions)))

    async def _tail(self, partition: int, start: int) -> None:
        async for batch in tail(self.log, self.cache, EVENTS, partition, start, limit=BATCH):
            async with self._lock:
                for _, env in batch:
                    self.coordinator.observe(env)
                await self._emit(Commit(COORDINATOR_GROUP, EVENTS, partition, batch[-1][0] + 1))

    async def _emit(self, commit: Commit | None) -> None:
        await emit_assignments(self.log, self.cache, self.coordinator, COMMANDS, commit)


def _assignment_envelope(a: Assignment) -> Envelope:
    return command_envelope(a.command, pool=a.pool, command_id=a.command_id,
                            source="urn:agentbus:coordinator", actor="coordinator",
                            correlation_id=a.correlation)


@dataclass
class ProjectorLoop:
    """Feeds every events partition into the read models."""

    log: EventLog
    projector: Projector
    partitions: int
    cache: EnvelopeCache = field(default_factory=EnvelopeCache)

    async def run(self) -> None:
        await asyncio.gather(*(self._tail(p) for p in range(self.partitions)))

    async def _tail(self, partition: int) -> None:
        start = await self.projector.position(EVENTS, partition)
        async for batch in tail(self.log, self.cache, EVENTS, partition, start, limit=2000):
            await self.projector.apply(EVENTS, partition, batch)


async def run_timers(decider: PartitionDecider, timers: TimerService) -> None:
    """A partition's timer service, started once its decider has rebuilt its state: the book is
    rebuilt from the same events, and what fell due while the process was down fires at once."""
    await decider.ready.wait()
    await timers.run()


class Runner:
    """All of agentbus in one process on the configured log and read-model database.

    ``scaling_webhook`` (default: ``AGENTBUS_SCALING_WEBHOOK``) POSTs each ScalingDecided event
    there (``services.webhook``); ``webhook_transport`` replaces the network in tests.
    """

    def __init__(self, settings: Settings, *, deciders: bool = True, coordinator: bool = True,
                 projector: bool = True, scaling_webhook: str | None = None,
                 webhook_transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.settings = settings
        self.log: EventLog = open_log(settings.broker)
        self.store = ProjectionStore(settings.database)
        self.outcomes = Outcomes()
        self.cache = EnvelopeCache()
        self.partitions = settings.partitions
        self.topics = Topics()
        self.deciders: list[PartitionDecider] = []
        self.coordinator: CoordinatorLoop | None = None
        self.timers: list[TimerService] = []
        self.webhook_url = scaling_webhook or url_from_env()
        self.webhook: WebhookRelay | None = None
        self._webhook_transport = webhook_transport
        self._want = (deciders, coordinator, projector)
        self._tasks: list[asyncio.Task[None]] = []
        self.failure: BaseException | None = None
        self.failed = asyncio.Event()
        self.on_failure: Callable[[BaseException], Awaitable[None] | None] | None = None

    async def start(self) -> None:
        if self.settings.broker.startswith("sqlite:"):
            self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        await self.log.start()
        await self.log.ensure_topic(COMMANDS, self.partitions)
        await self.log.ensure_topic(EVENTS, self.partitions, retention_ms=-1)
        self.partitions = await self.log.partitions(EVENTS)
        await self.store.start()
        want_deciders, want_coordinator, want_projector = self._want
        if want_deciders:
            for p in range(self.partitions):
                d = PartitionDecider(self.log, p, self.outcomes, self.settings.decider, self.cache)
                self.deciders.append(d)
                self._spawn(d.run(), f"decider[{p}]")
                # Durable timers: the wall clock decides when FireTimer commands go out; the
                # decider still takes their time from the envelope (stamped here).
                t = TimerService(self.log, p)
                self.timers.append(t)
                self._spawn(run_timers(d, t), f"timers[{p}]")
        if want_coordinator:
            self.coordinator = CoordinatorLoop(self.log, self.partitions, self.cache)
            self._spawn(self.coordinator.run(), "coordinator")
        if want_projector:
            self._spawn(ProjectorLoop(self.log, Projector(self.store), self.partitions, self.cache).run(),
                        "projector")
        if self.webhook_url:
            self.webhook = WebhookRelay(self.log, self.webhook_url, self.partitions, topic=EVENTS,
                                        cache=self.cache, transport=self._webhook_transport)
            self._spawn(self.webhook.run(), "webhook")

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
        """Wait until deciders and the coordinator have rebuilt their state."""
        events = [d.ready for d in self.deciders]
        if self.coordinator is not None:
            events.append(self.coordinator.ready)
        waits = [asyncio.create_task(ev.wait()) for ev in events]
        fail = asyncio.create_task(self.failed.wait())
        try:
            done, _ = await asyncio.wait([asyncio.gather(*waits), fail], timeout=timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            fail.cancel()
        if self.failure is not None:
            raise RuntimeError(f"agentbus failed to start: {self.failure}") from self.failure
        if not done:
            raise TimeoutError("agentbus did not become ready in time")
        if _FREEZE_AFTER_READY:
            gc.freeze()

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks.clear()
        await self.log.close()
        await self.store.close()

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
        [appended] = await self.log.append(COMMANDS, [to_record(env)])
        self.cache.put(COMMANDS, [appended], [env])
        return appended.partition, appended.offset, appended.duplicate

    async def submit_many(self, envs: list[Envelope]) -> list[tuple[int, int, bool]]:
        res = await self.log.append(COMMANDS, [to_record(x) for x in envs])
        self.cache.put(COMMANDS, res, envs)
        return [(a.partition, a.offset, a.duplicate) for a in res]

    async def outcome_events(self, ref: OutcomeRef) -> list[tuple[int, Envelope]]:
        recs = await self.log.read(EVENTS, ref.partition, ref.offset, ref.count)
        return [(r.offset, self.cache.decode(r)) for r in recs]

    async def __aenter__(self) -> Runner:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
