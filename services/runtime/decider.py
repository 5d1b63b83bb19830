"""The decider loop: the single writer of one commands partition.

It rebuilds every pool's state from its events partition, then decides commands in batches and
appends a batch's events with its commands offset in one transaction, so a crash neither loses
nor repeats a decision. Malformed and unknown commands are rejected (and, on a ``TransactionalLog``
such as Kafka, dead-lettered in the same transaction). It never decides anything itself:
``services.domain`` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

import orjson

from contracts import REGISTRY, Envelope, Payload, Reason, utcnow
from contracts.values import text_problem
from events import Commit, EventLog, Extra, Record, StoredRecord, TransactionalLog, partition_for
from events.cache import EnvelopeCache, tail_raw
from events.codec import DecodeError, decode, from_record, to_record
from services.domain.decider import DeciderConfig, Rejected, decide, evolve
from services.domain.envelopes import event_envelopes, rejection
from services.domain.replay import replay_record
from services.domain.state import PoolState
from services.runtime.metrics import ACCEPTED, DUPLICATE, Tally
from services.runtime.outcomes import OutcomeRef, Outcomes
from services.runtime.topics import (
    BATCH,
    DECIDER_GROUP,
    DLQ_ERROR,
    DLQ_OFFSET,
    DLQ_PARTITION,
    DLQ_TOPIC,
    Topics,
)


@dataclass
class ReplayStats:
    """How long rebuilding the decider state from the log took."""

    events: int = 0
    seconds: float = 0.0

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


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
    # Records nobody can decide (malformed, unknown type) also go to the dead-letter topic, and a
    # command on a partition its pool does not map to (a foreign producer's partitioner) is
    # forwarded to the right one instead of being decided here. Both in the batch's transaction,
    # so both need a TransactionalLog (the Faust runner on Kafka sets them).
    dead_letters: bool = False
    partitions: int | None = None
    # The next commands offset to decide (everything below is decided, its events durable), for
    # readers in this process waiting to read their writes (``wait_decided``).
    decided: int = field(default=0, init=False)
    # The batch's decisions by command type and outcome, counted once its events are durable.
    tally: Tally = field(default_factory=Tally, init=False, repr=False)
    _advanced: asyncio.Event = field(default_factory=asyncio.Event, init=False, repr=False)

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
        digest: str | None = None
        while True:
            batch = await self.log.read_values(self.topics.events, self.partition, offset, 5000)
            if not batch:
                break
            for at, value in batch:
                # Most events evolve straight from their JSON (services.domain.replay); the rest
                # are decoded in full, and from_record names the position of a corrupt one.
                try:
                    obj = orjson.loads(value)
                except orjson.JSONDecodeError:
                    obj = None
                if type(obj) is dict and replay_record(self.state, obj):
                    cid, cdigest = obj.get("commandid"), obj.get("commanddigest")
                else:
                    rec = StoredRecord(self.topics.events, self.partition, at, "", value, None, (), 0)
                    env = from_record(rec)
                    evolve(self.state(env.pool), env)
                    cid, cdigest = env.commandid, env.commanddigest
                if cid != last_cmd:
                    if last_cmd is not None:
                        self.outcomes.record(last_cmd, OutcomeRef(self.partition, first, n_of_cmd, digest))
                    last_cmd, first, n_of_cmd, digest = cid, at, 0, cdigest
                n_of_cmd += 1
            count += len(batch)
            offset = batch[-1][0] + 1
        if last_cmd is not None:
            self.outcomes.record(last_cmd, OutcomeRef(self.partition, first, n_of_cmd, digest))
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
            cid = _storable_id(rec.id) or f"{self.topics.commands}:{rec.partition}:{rec.offset}"
            bad = Envelope.trusted(
                id=cid, type="invalid", time=utcnow(), pool=_storable_pool(rec.key), commandid=cid,
                correlationid=cid, causationid=None, actor=None, subject=None, data={},
            )
            err = Rejected(Reason.INVALID_COMMAND, str(exc), topic=rec.topic, partition=rec.partition,
                           offset=rec.offset)
            state = self.state(bad.pool)
            wrapped = event_envelopes(bad, [rejection("invalid", err, None)], state)
            for env in wrapped:  # advances the pool's sequence like any other decision
                evolve(state, env)
            self.tally.decided("invalid", Reason.INVALID_COMMAND.value)
            return cid, wrapped, f"{Reason.INVALID_COMMAND.value}: {exc}"
        return self._decide(cmd)

    def _decide(self, cmd: Envelope) -> tuple[str, list[Envelope], str | None]:
        cid = cmd.commandid or cmd.id
        state = self.state(cmd.pool)
        if cid in state.seen:
            self.tally.decided(cmd.type, DUPLICATE)
            return cid, [], None  # a repeat: the first outcome stands, nothing new is appended
        dead: str | None = None
        try:
            payload = cmd.data
            if not isinstance(payload, Payload) or REGISTRY[cmd.type].kind != "command":
                raise Rejected(Reason.UNKNOWN_COMMAND, f"unknown command type {cmd.type!r}")
            events = decide(state, payload, self.config)
            self.tally.decided(cmd.type, ACCEPTED)
        except Rejected as exc:
            events = [rejection(cmd.type, exc, cmd.subject)]
            self.tally.decided(cmd.type, exc.code.value)
            if exc.code is Reason.UNKNOWN_COMMAND:
                dead = f"{exc.code.value}: {exc.message}"
        wrapped = event_envelopes(cmd, events, state)
        if cmd.commanddigest is not None and wrapped:
            # On the outcome's first event only: that is where every reader of outcomes looks.
            wrapped[0] = wrapped[0].replaced(commanddigest=cmd.commanddigest)
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
        self._decided(start)
        async for batch in tail_raw(self.log, self.cache, self.topics.commands, self.partition, start,
                                    limit=BATCH):
            await self.process(batch)

    async def process(self, batch: list[tuple[int, StoredRecord | Envelope]]) -> None:
        """Decide a batch of commands; append its events and commit its offset atomically."""
        out: list[Envelope] = []
        decided: list[tuple[str, int, str | None]] = []
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
                decided.append((cid, len(envs), envs[0].commanddigest))
                out.extend(envs)
        commit = Commit(self.group, self.topics.commands, self.partition, batch[-1][0] + 1)
        extra: list[Extra] = []
        if dead:
            extra.append(Extra(self.topics.dead_letters, self.partition, dead))
        if forward:
            extra.append(Extra(self.topics.commands, None, forward))
        if out or extra or self.dead_letters:
            # On Kafka even a bare offset goes through the partition's fenced transactional writer.
            records = [to_record(x) for x in out]
            if extra:
                appended = await self._transactional().append(
                    self.topics.events, records, partition=self.partition, commit=commit, extra=extra)
            else:
                appended = await self.log.append(self.topics.events, records, partition=self.partition,
                                                 commit=commit)
            self.cache.put(self.topics.events, appended, out)
        else:
            appended = []
            await self.log.commit(commit.group, commit.topic, commit.partition, commit.offset)
        self.tally.durable(out)
        # Decided before the outcomes are known: whoever sees an outcome may take it as decided.
        self._decided(commit.offset)
        i = 0
        for cid, n, digest in decided:
            self.outcomes.record(cid, OutcomeRef(self.partition, appended[i].offset, n, digest))
            i += n

    def _decided(self, offset: int) -> None:
        self.decided = offset
        woken, self._advanced = self._advanced, asyncio.Event()
        woken.set()

    async def wait_decided(self, position: int, timeout: float) -> bool:
        """True once the command at ``position`` of this commands partition is decided (its events,
        and every earlier command's, appended durably); False after ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.decided <= position:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._advanced.wait(), remaining)
        return True

    def _transactional(self) -> TransactionalLog:
        """The log, for a batch whose transaction also carries dead letters or forwarded commands."""
        if isinstance(self.log, TransactionalLog):
            return self.log
        raise TypeError(f"dead letters and forwarded commands need a TransactionalLog, not {self.log.url}")


def _storable_id(value: str | None) -> str | None:
    """``value`` if every store can hold it as an id (a foreign record's key or id may hold a NUL)."""
    if not value or len(value) > 200 or text_problem(value) is not None:
        return None
    return value


def _storable_pool(key: str | None) -> str:
    """The pool a malformed command is rejected in: its record key, unless no store could hold it."""
    return _storable_id(key) or "default"


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
