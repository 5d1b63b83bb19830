"""The decider loop: the single writer of one commands partition.

It rebuilds every pool's state from its events partition, then decides commands in batches and
appends a batch's events with its commands offset in one transaction, so a crash neither loses
nor repeats a decision. Malformed and unknown commands are rejected (and, on a ``TransactionalLog``
such as Kafka, dead-lettered in the same transaction). It never decides anything itself:
``services.domain`` does.

With a ``SnapshotStore`` the rebuild starts from the newest valid snapshot and replays only the
events after it, and every ``snapshot_every`` events appended the loop writes a new one: the state
is copied to JSON between two batches (where it is consistent and durable), then compressed in a
thread and stored in the background, so deciding waits only for the copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from contracts import REGISTRY, Envelope, Payload, Reason, utcnow
from contracts.values import text_problem
from events import Commit, EventLog, Extra, Record, StoredRecord, TransactionalLog, partition_for
from events.cache import EnvelopeCache, tail_raw
from events.chain import chain_at
from events.codec import DecodeError, decode, from_record, to_record
from events.log import Appended
from events.readahead import read_values_ahead
from events.sqlite import Reaction, SqliteLog
from services.domain.decider import DeciderConfig, Rejected, decide, evolve
from services.domain.envelopes import event_envelopes, rejection
from services.domain.replay import replay_record
from services.domain.snapshot import DeciderSnapshot, OpenCommand, OutcomeColumns, SnapshotError
from services.domain.state import PoolState
from services.runtime.memory import give_back
from services.runtime.metrics import ACCEPTED, DUPLICATE, Tally
from services.runtime.outcomes import OutcomeRef, Outcomes
from services.runtime.snapshot_copy import CAN_FORK, Started
from services.runtime.snapshot_copy import finish as finish_copy
from services.runtime.snapshot_copy import start as start_copy
from services.runtime.snapshots import SnapshotInfo, SnapshotStore, newest_valid
from services.runtime.topics import (
    BATCH,
    DECIDER_GROUP,
    DLQ_ERROR,
    DLQ_OFFSET,
    DLQ_PARTITION,
    DLQ_TOPIC,
    Topics,
)
from services.runtime.uncommitted import Uncommitted

log = logging.getLogger("agentbus.decider")

# Copying the state takes about 2-4 us per event of history (0.09 s at 44,000 events; 0.14 s at
# 35,000 events of workflows): periodic snapshots are spaced so that it takes at most this share of
# the time (of the loop's, where there is no fork; of a CPU's, in the forked child).
SNAPSHOT_SHARE = 0.02
# Events a rebuild reads at once; the next batch is read while this one is applied.
REPLAY_BATCH = 5000


@dataclass
class ReplayStats:
    """How long rebuilding the decider state took, and where it started.

    ``events`` were replayed from the log, from ``start``: the position of ``snapshot`` when the
    state was loaded from one (its load included in ``seconds``: ``snapshot_seconds`` of them to
    find, check, decode and restore it), else 0.
    """

    events: int = 0
    seconds: float = 0.0
    snapshot: SnapshotInfo | None = None
    start: int = 0
    snapshot_seconds: float = 0.0

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
    # Where snapshots are loaded from and written to (None: replay from 0, write none), and how
    # many events appended between two of them (0: none written).
    snapshots: SnapshotStore | None = None
    snapshot_every: int = 0
    # The next events offset the state covers (every event below it is in ``states``).
    position: int = field(default=0, init=False)
    # Copy the state for a snapshot in a forked child (``services.runtime.snapshot_copy``), else on
    # the loop.
    fork_snapshots: bool = CAN_FORK
    # Seconds the last snapshot held the loop (the fork, or the whole copy without one); None before
    # the first.
    snapshot_dump_s: float | None = field(default=None, init=False)
    _unsaved: int = field(default=0, init=False, repr=False)  # events appended since the last snapshot
    _not_before: float = field(default=0.0, init=False, repr=False)  # monotonic time of the next one
    _writing: asyncio.Task[None] | None = field(default=None, init=False, repr=False)
    # Set while the state is not the log's up to ``position`` (a batch or a replay under way, or one
    # that failed): no snapshot may be taken then.
    _in_batch: bool = field(default=False, init=False, repr=False)
    _open: OpenCommand = field(default_factory=OpenCommand, init=False, repr=False)
    # The next commands offset to decide (everything below is decided, its events durable), for
    # readers in this process waiting to read their writes (``wait_decided``).
    decided: int = field(default=0, init=False)
    # The batch's decisions by command type and outcome, counted once its events are durable.
    tally: Tally = field(default_factory=Tally, init=False, repr=False)
    _advanced: asyncio.Event = field(default_factory=asyncio.Event, init=False, repr=False)
    # Deciding in the appender's transaction (``_react``, on a SqliteLog in this process): whether it
    # may, the next commands offset after the decisions made in the transaction being written, and
    # the decisions waiting for their COMMIT (``services.runtime.uncommitted``).
    _reacting: bool = field(default=False, init=False, repr=False)
    _react_next: int = field(default=0, init=False, repr=False)
    _uncommitted: Uncommitted = field(default_factory=Uncommitted, init=False, repr=False)

    def state(self, pool: str) -> PoolState:
        st = self.states.get(pool)
        if st is None:
            st = self.states[pool] = PoolState(pool)
        return st

    async def rebuild(self, *, until: int | None = None) -> None:
        """Rebuild every pool's state and the outcome index from this partition's events: from the
        newest valid snapshot when there is a store, then the events after it.

        ``until``: only the events below that position (a state as of then; no snapshot is written,
        and the outcome of the command whose events reach ``until`` is left out of the index, since
        more of its events may follow).
        """
        started = time.perf_counter()
        self._in_batch = True
        offset, count = 0, 0
        last_cmd: str | None = None
        first = 0
        n_of_cmd = 0
        digest: str | None = None
        used: SnapshotInfo | None = None
        if self.snapshots is not None:
            found = await newest_valid(self.snapshots, self.log, self.topics.events, self.partition,
                                       until=until)
            if found is not None:
                used, snap = found
                self._restore(snap)
                offset = snap.position
                last_cmd, first, n_of_cmd, digest = (snap.open.command_id, snap.open.first, snap.open.events,
                                                     snap.open.digest)
        loaded = time.perf_counter() - started if used is not None else 0.0
        start = offset
        # The next batch is read (on the log's thread, or by its client) while this one is applied.
        batches = read_values_ahead(self.log, self.topics.events, self.partition, offset, until, REPLAY_BATCH)
        async with contextlib.aclosing(batches):
            async for batch in batches:
                opened = self._replay_batch(batch, last_cmd, first, n_of_cmd, digest)
                last_cmd, first, n_of_cmd, digest = opened
                count += len(batch)
                offset = batch[-1][0] + 1
        self.position = offset
        if until is None or last_cmd is None:
            # The log's end is a command's end: a decision's events are appended together.
            if last_cmd is not None:
                self.outcomes.record(last_cmd, OutcomeRef(self.partition, first, n_of_cmd, digest))
            self._open = OpenCommand()
        else:
            # Stopped at ``until``: the last command's events may go on after it, so its outcome
            # is left open (a snapshot of this state carries it; see ``snapshot``).
            self._open = OpenCommand(last_cmd, first, n_of_cmd, digest)
        self.replay = ReplayStats(count, time.perf_counter() - started, used, start, loaded)
        self._in_batch = until is not None  # a state as of ``until`` is not the log's
        if until is None:
            log.info("decider[%d]: state rebuilt in %.3f s: %s, then %d events", self.partition,
                     self.replay.seconds, "from offset 0" if used is None
                     else f"{used.describe()} (loaded in {loaded:.3f} s)", count)
            self._unsaved = count
            self._maybe_snapshot()  # a long replay is worth keeping at once

    def _replay_batch(self, batch: list[tuple[int, bytes]], last_cmd: str | None, first: int, n_of_cmd: int,
                      digest: str | None) -> tuple[str | None, int, int, str | None]:
        """Evolve the state by one batch of the replay; the command it ends in (id, first position,
        events so far, digest), whose outcome is recorded once its last event is known. The
        outcomes of the commands the batch ends are recorded together, by column, at its end (as a
        snapshot's are restored): one call per command cost about a seventh of the replay."""
        ids: list[str] = []
        offsets: list[int] = []
        counts: list[int] = []
        digests: list[str | None] = []
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
                    ids.append(last_cmd)
                    offsets.append(first)
                    counts.append(n_of_cmd)
                    digests.append(digest)
                last_cmd, first, n_of_cmd, digest = cid, at, 0, cdigest
            n_of_cmd += 1
        if ids:
            self.outcomes.restore(self.partition, ids, offsets, counts, digests)
        return last_cmd, first, n_of_cmd, digest

    def snapshot(self) -> DeciderSnapshot:
        """The state as it is now, covering every event below ``position`` (between batches only)."""
        outcomes = OutcomeColumns.of((cid, (ref.offset, ref.count, ref.digest))
                                     for cid, ref in self.outcomes.of_partition(self.partition))
        return DeciderSnapshot(self.partition, self.position, self.states, outcomes, self._open)

    def _restore(self, snap: DeciderSnapshot) -> None:
        """Take the state and this partition's outcome index from a snapshot."""
        self.states.update(snap.states)
        cols = snap.outcomes
        self.outcomes.restore(self.partition, cols.ids, cols.offsets, cols.counts, cols.digests)

    def _maybe_snapshot(self) -> None:
        """Start a snapshot if ``snapshot_every`` events were appended since the last one and none is
        being written.

        Only where the state is exactly the log's up to ``position``: not during a batch or a replay,
        nor while decisions made in an appender's transaction wait for its COMMIT. The
        copy is made in a forked child (``services.runtime.snapshot_copy``), which holds the loop
        for the fork (``snapshot_dump_s``); the next periodic one waits until the copy's own time
        (``Copy.work_s``) is at most ``SNAPSHOT_SHARE`` of the time since. Storing happens in
        the background.
        """
        if self.snapshots is None or self._unsaved <= 0:
            return
        if self._in_batch or not self._uncommitted.idle(self.partition):
            # Decisions made in a transaction not yet committed are in the state and not below
            # ``position``: ``_reacted`` tries again once the last of them commits.
            return
        if (self.snapshot_every <= 0 or self._unsaved < self.snapshot_every
                or time.monotonic() < self._not_before):
            return
        if self._writing is not None and not self._writing.done():
            return  # tried again when that write ends (``_after_write``) and at the next batch
        try:
            started = start_copy(self.snapshot, fork=self.fork_snapshots)
        except SnapshotError as exc:
            log.warning("decider[%d]: no snapshot at position %d: %s", self.partition, self.position, exc)
            self._unsaved = 0
            return
        self.snapshot_dump_s = started.held_s
        self._unsaved = 0
        self._writing = asyncio.create_task(self._write_snapshot(self.snapshots, self.position, started),
                                            name=f"snapshot[{self.partition}]")
        self._writing.add_done_callback(self._after_write)
        self.snapshots.track(self._writing)

    def _after_write(self, task: asyncio.Task[None]) -> None:
        """A snapshot that came due while ``task`` was writing the last one starts now if the state is
        the log's: otherwise a service that went idle meanwhile would keep the older one until its next
        batch (and a stop would leave up to twice ``snapshot_every`` events to replay)."""
        if not task.cancelled():
            self._maybe_snapshot()

    async def _write_snapshot(self, store: SnapshotStore, position: int, started: Started) -> None:
        """Finish the copy and store it; a failure is logged, never raised (the log is the truth)."""
        try:
            try:
                copy = await finish_copy(started)
            except SnapshotError as exc:
                log.warning("decider[%d]: no snapshot at position %d: %s", self.partition, position, exc)
                return
            self._not_before = time.monotonic() + copy.work_s / SNAPSHOT_SHARE
            chain = await chain_at(self.log, self.topics.events, self.partition, position)
            info = await store.save(self.topics.events, self.partition, position, chain, copy.body)
            log.info("decider[%d]: %s written (%d bytes; state copied in %.3f s, the loop held %.3f s, "
                     "the copying child's own memory %.1f MB)", self.partition, info.describe(), info.size,
                     copy.work_s, copy.held_s, copy.child_mb)
            del copy
            await asyncio.to_thread(give_back)  # the body's MB, and the copies made to store it
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("decider[%d]: the snapshot at position %d was not written: %r", self.partition,
                        position, exc)

    async def close(self) -> None:
        """At a clean stop: wait for the snapshot being written, if any.

        No last snapshot is started here: the tail since the newest periodic one is under
        ``snapshot_every`` events, cheap to replay, while a write started at a stop raced the
        database's close (a connection left to the garbage collector, the file's write lock held).
        """
        if self.snapshots is None:
            return
        await self._written()

    async def _written(self) -> None:
        """Wait for the snapshot being written, if any, and for one started when it ended (its failure
        was logged where it happened)."""
        while self._writing is not None and not self._writing.done():
            await asyncio.wait([self._writing])

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
        # Decide in the appender's transaction on a SQLite log (Kafka's dead letters and forwarding
        # need a batch of their own).
        sqlite = self.log if isinstance(self.log, SqliteLog) and not self.dead_letters \
            and self.partitions is None else None
        if sqlite is not None:
            self._reacting = True
            sqlite.react(self.topics.commands, self.partition, self._react)
        batches = tail_raw(self.log, self.cache, self.topics.commands, self.partition, start, limit=BATCH)
        try:
            async with contextlib.aclosing(batches):  # a stop lets go of the cache's entries at once
                async for batch in batches:
                    await self.process(batch)
                    # What the batch's commit woke (the live streams' hub, the coordinator) runs
                    # before the next batch is decided: deciding one is tens of milliseconds on a
                    # busy loop, and the batch's events would reach their subscribers that late.
                    await asyncio.sleep(0)
        finally:
            if sqlite is not None:
                self._reacting = False
                sqlite.react(self.topics.commands, self.partition, None)

    def _react(self, out: list[Appended], envs: Sequence[Any], token: object) -> Reaction | None:
        """``events.sqlite.Reactor``: decide commands of this partition inside the transaction that
        appends them, when every command before them is decided and no batch is under way; their
        events and this decider's offset then commit with them. None (they are read and decided as
        usual) otherwise. The state changes at once, as in a batch; ``_reacted`` hears whether the
        transaction committed."""
        waiting = self._uncommitted(self.partition)
        if not self._uncommitted.admits(self.partition, token, self._in_batch):
            return None
        first = self._react_next if waiting else self.decided
        todo = [(a, env) for a, env in zip(out, envs, strict=True) if not a.duplicate]
        if not todo or any(a.offset != first + i or not isinstance(env, Envelope)
                           for i, (a, env) in enumerate(todo)):
            return None
        events: list[Envelope] = []
        decided: list[tuple[str, int, str | None]] = []
        try:
            for _, env in todo:
                cid, envs_out, _ = self._decide(env)
                if envs_out:
                    decided.append((cid, len(envs_out), envs_out[0].commanddigest))
                    events.extend(envs_out)
            records = [to_record(x) for x in events]
        except BaseException as exc:
            self._uncommitted.fail(exc)  # decided in part: the state is neither before nor after
            raise
        end = todo[-1][0].offset + 1
        self._react_next = end
        self._uncommitted.add(self.partition, token)
        commit = Commit(self.group, self.topics.commands, self.partition, end)
        # The events go on to the reactor of their partition (the coordinator's, in this process).
        return Reaction(self.topics.events, self.partition, records, commit,
                        functools.partial(self._reacted, events, records, decided, end),
                        envelopes=events)

    def _reacted(self, events: list[Envelope], records: list[Record],
                 decided: list[tuple[str, int, str | None]], end: int,
                 result: list[Appended] | BaseException) -> None:
        """The transaction holding decisions ``_react`` made committed (``result``: their events'
        positions) or was rolled back."""
        if isinstance(result, BaseException):
            self._uncommitted.fail(result)
            return
        idle = self._uncommitted.committed(self.partition)
        self.cache.put(self.topics.events, result, events, records)
        self._settle(events, result, decided, end)
        if idle:
            asyncio.get_running_loop().call_soon(self._maybe_snapshot)

    async def process(self, batch: list[tuple[int, StoredRecord | Envelope]]) -> None:
        """Decide a batch of commands; append its events and commit its offset atomically."""
        # Decisions made in a transaction now committing: their COMMIT first.
        await self._uncommitted.settle(self.partition, f"decider[{self.partition}]")
        if self._reacting and batch and batch[0][0] < self.decided:
            batch = [item for item in batch if item[0] >= self.decided]  # decided as they were appended
            if not batch:
                return
        self._in_batch = True  # stays set if the batch fails or is cancelled: the state is not the log's
        await self._process(batch)
        self._in_batch = False
        self._maybe_snapshot()

    async def _process(self, batch: list[tuple[int, StoredRecord | Envelope]]) -> None:
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
            self.cache.put(self.topics.events, appended, out, records)
        else:
            appended = []
            await self.log.commit(commit.group, commit.topic, commit.partition, commit.offset)
        self._settle(out, appended, decided, commit.offset)

    def _settle(self, out: list[Envelope], appended: list[Appended],
                decided: list[tuple[str, int, str | None]], end: int) -> None:
        """The decisions up to commands offset ``end`` are durable: count them, say so, index them."""
        self.tally.durable(out)
        # Decided before the outcomes are known: whoever sees an outcome may take it as decided.
        self._decided(end)
        i = 0
        for cid, n, digest in decided:
            self.outcomes.record(cid, OutcomeRef(self.partition, appended[i].offset, n, digest))
            i += n
        if appended:
            self.position = appended[-1].offset + 1
            self._unsaved += len(appended)

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
