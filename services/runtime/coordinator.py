"""The coordinator driver: the coordinator reactor fed from an events topic, its commands appended
to the commands topic with its events offset in one transaction.

One driver for both runtimes, told its topics, consumer group and the events partitions it covers:
the embedded runner runs one over every partition (``run``: rebuild, then tail each partition);
the Faust worker makes one per assigned partition and drives it itself (``rebuild``, ``react``).
On a SQLite log in this process the embedded driver also reacts inside the transaction that
appends its events (``_react_inline``): a command, its events, the assignments they lead to and
those assignments' decisions then commit together, with one fsync.
Each partition has its own ``Coordinator``: a pool lives in one partition, so no decision needs
another's state, and a partition is rebuilt on its own when it changes owner.

The choice itself is ``services.coordination``; this module only reads, feeds and appends.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from contracts import Envelope
from events import Commit, EventLog
from events.cache import EnvelopeCache, tail
from events.chain import chain_at
from events.codec import from_value, to_record
from events.log import Appended
from events.readahead import read_values_ahead
from events.sqlite import Reaction, SqliteLog
from services.coordination.coordinator import Assignment, Coordinator
from services.runtime.coordinator_snapshots import (
    CODE,
    CoordinatorSnapshots,
    Views,
    encode,
    fresh_views,
    make,
)
from services.runtime.ingest import command_envelope
from services.runtime.memory import give_back
from services.runtime.snapshot_copy import finish as finish_copy
from services.runtime.snapshot_copy import start as start_copy
from services.runtime.topics import BATCH, COORDINATOR_GROUP, Topics
from services.runtime.uncommitted import Uncommitted
from services.webhooks.reactor import ACTOR as WEBHOOKS_ACTOR
from services.webhooks.reactor import SOURCE as WEBHOOKS_SOURCE
from services.webhooks.reactor import WebhookReactor
from services.workflows.reactor import SOURCE as WORKFLOWS_SOURCE
from services.workflows.reactor import Assignment as StepCommand
from services.workflows.reactor import WorkflowReactor

log = logging.getLogger("agentbus.coordinator")

# Events read at a time while rebuilding a partition's views.
HISTORY_BATCH = 5000
# Reacting in the appender's transaction: how long the offset of events the tail folded in without
# anything to append may wait for a transaction to ride on before it is committed alone.
OWED_COMMIT_S = 0.05
# A start with at least this many events after a partition's newest coordinator snapshot has the
# snapshot process fold them in, at normal priority, on the other CPU while this loop rebuilds the
# deciders, and loads the views it stores. Fewer are folded in here: the process's own start
# (about a second of imports) would cost more than they do (about 30,000 events a second).
FOLD_ELSEWHERE_FROM = 10_000


@dataclass
class CoordinatorDriver:
    """The coordinator reactor over the events partitions in ``partitions``.

    A partition's view is rebuilt from its events below the group's committed offset; from there
    on it reacts to each batch, appending its commands to the same partition of the commands topic
    (a pool maps to the same partition in both) with the batch's events offset.
    """

    log: EventLog
    partitions: tuple[int, ...]
    topics: Topics = field(default_factory=Topics)
    group: str = COORDINATOR_GROUP
    cache: EnvelopeCache = field(default_factory=EnvelopeCache)
    # Kafka cluster: even a bare offset commit goes through the partition's fenced writer, so a
    # worker that lost the partition can no longer move it.
    fenced: bool = False
    coordinators: dict[int, Coordinator] = field(default_factory=dict)
    # The workflow reactor rides along: same events, same commands topic, same committed offset.
    workflows: dict[int, WorkflowReactor] = field(default_factory=dict)
    # So does the webhook reactor (deliveries -> their mapped commands and triggered workflows).
    webhooks: dict[int, WebhookReactor] = field(default_factory=dict)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    # Coordinator snapshots (embedded): where they are kept, every how many events folded in a new
    # one is made, and the log and read-model URLs the process that makes it opens.
    snapshots: CoordinatorSnapshots | None = None
    snapshot_every: int = 0
    snapshot_urls: tuple[str, str] | None = None
    # Per partition, the position its views were rebuilt from (0: from the start of the log).
    rebuilt_from: dict[int, int] = field(default_factory=dict)
    snapshots_written: int = 0
    _unsaved: dict[int, int] = field(default_factory=dict)
    _snapshotting: dict[int, asyncio.Task[None]] = field(default_factory=dict)
    # Per partition, the next events offset the views have folded in (the tail skips what is below
    # it when reacting). Reacting in the appender's transaction (``_react_inline``; embedded, on a
    # SqliteLog): whether it may; per partition, whether a tail batch's commands are being
    # appended (no reaction meanwhile); and the reactions waiting for their COMMIT
    # (``services.runtime.uncommitted``; one rolled back leaves the views ahead of the log: the
    # driver stops, a restart rebuilds them).
    _reacting: bool = field(default=False, init=False, repr=False)
    _next: dict[int, int] = field(default_factory=dict, init=False, repr=False)
    _busy: set[int] = field(default_factory=set, init=False, repr=False)
    _uncommitted: Uncommitted = field(default_factory=Uncommitted, init=False, repr=False)
    # Per partition, an events offset folded in by the tail, with nothing to append, and not yet
    # committed (the next reaction's commit covers it; else ``_commit_owed`` after OWED_COMMIT_S).
    _owed: dict[int, int] = field(default_factory=dict, init=False, repr=False)
    _owed_timer: dict[int, asyncio.TimerHandle] = field(default_factory=dict, init=False, repr=False)
    _owed_commits: set[asyncio.Task[None]] = field(default_factory=set, init=False, repr=False)

    async def run(self) -> None:
        """Rebuild every partition, then react to each one's new events until cancelled."""
        sqlite = self.log if isinstance(self.log, SqliteLog) and not self.fenced else None
        try:
            starts = await self.rebuild()
            if sqlite is not None:
                self._reacting = True
                for p in starts:
                    sqlite.react(self.topics.events, p, functools.partial(self._react_inline, p))
            await asyncio.gather(*(self._tail(p, start) for p, start in starts.items()))
        finally:
            if sqlite is not None:
                self._reacting = False
                for p in self.partitions:
                    sqlite.react(self.topics.events, p, None)
            for timer in self._owed_timer.values():
                timer.cancel()
            running = [*self._snapshotting.values(), *self._owed_commits]
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)

    async def _snapshot(self, partition: int, position: int) -> None:
        """Have the snapshot process make a snapshot of ``partition`` at ``position`` and store it
        (``coordinator_snapshots.make``); a failure is logged, never raised: snapshots are a cache."""
        assert self.snapshots is not None and self.snapshot_urls is not None
        try:
            await make(self.snapshots, self.snapshot_urls, self.topics.events, partition, position)
            self.snapshots_written += 1
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("the coordinator snapshot of partition %d at %d failed: %s", partition, position, exc)
        finally:
            self._snapshotting.pop(partition, None)

    def _store_rebuilt(self, partition: int, position: int, views: Views) -> None:
        """Store the views a start has just folded in, many events of them, as the partition's
        snapshot at ``position``, so the next start need not fold them in again: copied in a forked
        child (``snapshot_copy``; the views are exactly what a rebuild makes, nothing having
        changed them yet) and saved once the service runs. A failure is logged, never raised."""
        assert self.snapshots is not None
        snapshots = self.snapshots
        try:
            started = start_copy(lambda: views, encode=encode)
        except Exception as exc:
            log.warning("no coordinator snapshot of partition %d at %d: %s", partition, position, exc)
            return

        async def save() -> None:
            try:
                copy = await finish_copy(started)
                chain = await chain_at(self.log, self.topics.events, partition, position)
                await snapshots.save(self.topics.events, partition, position, chain, copy.body)
                self.snapshots_written += 1
                log.info("coordinator snapshot of partition %d at %d stored as the start made it (%d bytes, "
                         "copied in %.3f s, the loop held %.3f s)", partition, position, len(copy.body),
                         copy.work_s, copy.held_s)
                del copy
                await asyncio.to_thread(give_back)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("the coordinator snapshot of partition %d at %d failed: %s", partition, position,
                            exc)
            finally:
                self._snapshotting.pop(partition, None)

        self._snapshotting[partition] = asyncio.create_task(save(), name=f"coordinator snapshot[{partition}]")

    async def rebuild(self) -> dict[int, int]:
        """Rebuild each partition's view and re-issue assignments lost in flight; returns, per
        partition, the offset to go on from."""
        starts = {}
        ends = {p: await self.log.committed(self.group, self.topics.events, p) for p in self.partitions}
        await self._fold_elsewhere(ends)
        for p in self.partitions:
            end = ends[p]
            found = None
            if self.snapshots is not None:
                found = await self.snapshots.newest(self.log, self.topics.events, p, end)
            start, views = found if found is not None else (0, fresh_views())
            hooks = views[2]
            self.coordinators[p], self.workflows[p], self.webhooks[p] = views
            await _observe_history(self.log, views, self.topics.events, p, end, start=start)
            self.rebuilt_from[p] = start
            if self.snapshot_every > 0 and end - start >= self.snapshot_every:
                self._store_rebuilt(p, end, views)  # before anything changes them
            # Deliveries below ``end`` were mapped with the commit of ``end``: only new ones are.
            hooks.live = True
            # Same ids as the lost ones (derived from history), so the decider drops any repeats.
            await self._emit(p, Commit(self.group, self.topics.events, p, end))
            starts[p] = self._next[p] = end
        self.ready.set()
        return starts

    async def react(self, partition: int, batch: list[tuple[int, Envelope]]) -> None:
        """Fold one batch of ``partition``'s events (offset, envelope) in, then append what follows."""
        if self._reacting:
            await self._uncommitted.settle(partition, f"coordinator[{partition}]")  # reactions committing
            if batch and batch[0][0] < self._next[partition]:
                nxt = self._next[partition]
                batch = [item for item in batch if item[0] >= nxt]  # folded in as they were appended
            if not batch:
                return
        end = batch[-1][0] + 1
        self._next[partition] = end
        self._observe(partition, [env for _, env in batch])
        if self._reacting:
            envs = self._scheduled(partition)
            if envs:
                # No reaction until these are appended: theirs would be numbered ahead of them.
                self._busy.add(partition)
                try:
                    await self.cache.append(self.log, self.topics.commands, envs, partition=partition,
                                            commit=Commit(self.group, self.topics.events, partition, end))
                finally:
                    self._busy.discard(partition)
                self._paid(partition, end)
            else:
                # Nothing to append: no commit of its own now (it would hold reactions back while
                # it waits for its transaction, and they would come back here): owed instead.
                self._owe(partition, end)
        else:
            await self._emit(partition, Commit(self.group, self.topics.events, partition, end))
        self._folded(partition, len(batch), end)

    def _owe(self, partition: int, end: int) -> None:
        self._owed[partition] = end
        if partition not in self._owed_timer:
            self._owed_timer[partition] = asyncio.get_running_loop().call_later(
                OWED_COMMIT_S, self._commit_owed, partition)

    def _paid(self, partition: int, end: int) -> None:
        """The offset ``end`` is committed: what was owed up to it is paid."""
        if self._owed.get(partition, end + 1) <= end:
            del self._owed[partition]

    def _commit_owed(self, partition: int) -> None:
        """Commit the owed offset alone (no reaction paid it meanwhile), once nothing of this
        partition waits for its transaction; no reaction until it is written."""
        self._owed_timer.pop(partition, None)
        owed = self._owed.get(partition)
        if owed is None or self._uncommitted.broken is not None:
            return
        if partition in self._busy or self._uncommitted(partition):
            self._owe(partition, owed)
            return
        self._busy.add(partition)

        async def commit() -> None:
            try:
                await self.log.commit(self.group, self.topics.events, partition, owed)
            except Exception as exc:  # the log stopped: a restart folds those events in again
                log.warning("committing the coordinator's offset %d of partition %d failed: %s",
                            owed, partition, exc)
                return
            finally:
                self._busy.discard(partition)
            self._paid(partition, owed)

        task = asyncio.create_task(commit(), name=f"coordinator owed commit[{partition}]")
        self._owed_commits.add(task)
        task.add_done_callback(self._owed_commits.discard)

    async def _fold_elsewhere(self, ends: dict[int, int]) -> None:
        """Have the snapshot process fold in every partition with ``FOLD_ELSEWHERE_FROM`` events or
        more between its newest snapshot and ``ends`` (its committed position), each in a process of
        its own, and store the views at that position, where the rebuild then starts. The loop is
        free meanwhile (the deciders rebuild). A failure is logged: the rebuild folds them in here."""
        if self.snapshots is None or self.snapshot_urls is None or self.snapshot_every <= 0:
            return
        snapshots, urls, topic = self.snapshots, self.snapshot_urls, self.topics.events

        async def fold(partition: int, end: int) -> None:
            try:
                made = await make(snapshots, urls, topic, partition, end, urgent=True)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("the snapshot process did not fold in partition %d up to %d (%s): folded in "
                            "here", partition, end, exc)
                return
            self.snapshots_written += 1
            log.info("coordinator snapshot of partition %d at %d made by the snapshot process for the start "
                     "(from %d, %d bytes)", partition, end, made.start, made.size)

        due = []
        for p, end in ends.items():
            rows = await snapshots.rows(topic, p)
            newest = max((r.position for r in rows if r.position <= end and r.code == CODE), default=0)
            if end - newest >= FOLD_ELSEWHERE_FROM:
                due.append(fold(p, end))
        await asyncio.gather(*due)

    def _observe(self, partition: int, envs: Sequence[Envelope]) -> None:
        coordinator, reactor = self.coordinators[partition], self.workflows[partition]
        hooks = self.webhooks[partition]
        for env in envs:
            coordinator.observe(env)
            reactor.observe(env)
            hooks.observe(env)

    def _folded(self, partition: int, n: int, position: int) -> None:
        """``n`` more events folded in, up to ``position`` (its offset committed, or owed to the next
        commit): a snapshot when due."""
        if self.snapshot_every > 0:
            self._unsaved[partition] = self._unsaved.get(partition, 0) + n
            if self._unsaved[partition] >= self.snapshot_every and partition not in self._snapshotting:
                self._unsaved[partition] = 0
                self._snapshotting[partition] = asyncio.create_task(
                    self._snapshot(partition, position), name=f"coordinator snapshot[{partition}]")

    def _react_inline(self, partition: int, out: list[Appended], envs: Sequence[Any],
                      token: object) -> Reaction | None:
        """``events.sqlite.Reactor``: fold events of ``partition`` in inside the transaction that
        appends them (the decider's, deciding a command appended in this process), when every
        event before them is folded in and no tail batch is being appended; the commands that
        follow and this group's offset then commit with them (and the decider of the commands
        partition decides those in turn). None (they are read from the log as usual) otherwise."""
        if not self._uncommitted.admits(partition, token, partition in self._busy):
            return None
        first = self._next[partition]
        if any(a.duplicate or a.offset != first + i or not isinstance(env, Envelope)
               for i, (a, env) in enumerate(zip(out, envs, strict=True))):
            return None
        try:
            self._observe(partition, envs)
            commands = self._scheduled(partition)
            records = [to_record(x) for x in commands]
        except BaseException as exc:
            self._uncommitted.fail(exc)  # folded in part: the views are neither before nor after
            raise
        end = out[-1].offset + 1
        self._next[partition] = end
        self._uncommitted.add(partition, token)
        commit = Commit(self.group, self.topics.events, partition, end)
        return Reaction(self.topics.commands, partition, records, commit,
                        functools.partial(self._reacted, partition, commands, len(out), end),
                        envelopes=commands or None)

    def _reacted(self, partition: int, commands: list[Envelope], n: int, end: int,
                 result: list[Appended] | BaseException) -> None:
        """The transaction holding a reaction ``_react_inline`` made committed (``result``: its
        commands' positions) or was rolled back."""
        if isinstance(result, BaseException):
            self._uncommitted.fail(result)
            return
        self._uncommitted.committed(partition)
        if commands:
            self.cache.put(self.topics.commands, result, commands)
        self._paid(partition, end)
        self._folded(partition, n, end)

    async def _tail(self, partition: int, start: int) -> None:
        batches = tail(self.log, self.cache, self.topics.events, partition, start, limit=BATCH)
        async with contextlib.aclosing(batches):
            async for batch in batches:
                await self.react(partition, batch)

    def _scheduled(self, partition: int) -> list[Envelope]:
        """The commands the partition's coordinator, workflow and webhook reactors want now."""
        assignments = self.coordinators[partition].schedule()
        steps = self.workflows[partition].schedule()
        mapped = self.webhooks[partition].schedule()
        envs = [_assignment_envelope(a) for a in assignments]
        envs += [_assignment_envelope(a, WORKFLOWS_SOURCE, "workflows") for a in steps]
        envs += [_assignment_envelope(a, WEBHOOKS_SOURCE, WEBHOOKS_ACTOR) for a in mapped]
        return envs

    async def _emit(self, partition: int, commit: Commit) -> None:
        """Append the commands the partition's coordinator wants now, with ``commit`` in the same
        transaction."""
        envs = self._scheduled(partition)
        if envs:
            await self.cache.append(self.log, self.topics.commands, envs, partition=partition, commit=commit)
        elif self.fenced:
            await self.log.append(self.topics.commands, [], partition=partition, commit=commit)
        else:
            await self.log.commit(commit.group, commit.topic, commit.partition, commit.offset)


async def _observe_history(log: EventLog, reactors: tuple[Coordinator, WorkflowReactor, WebhookReactor],
                           topic: str, partition: int, end: int, *, start: int = 0) -> None:
    """Fold events [start, end) of one partition into the reactors' views, without acting on them.

    Reads (offset, value) only, as the decider's replay does, and reads the next batch while this
    one is folded in (SQLite steps on its own thread meanwhile)."""
    coordinator, workflows, hooks = reactors
    batches = read_values_ahead(log, topic, partition, start, end, HISTORY_BATCH)
    async with contextlib.aclosing(batches):
        async for batch in batches:
            for at, value in batch:
                env = from_value(topic, partition, at, value)
                coordinator.observe(env)
                workflows.observe(env)
                hooks.observe(env)
    coordinator.compact()  # what the first schedule would drop, before a snapshot copies it


def _assignment_envelope(a: Assignment | StepCommand, source: str = "urn:agentbus:coordinator",
                         actor: str = "coordinator") -> Envelope:
    return command_envelope(a.command, pool=a.pool, command_id=a.command_id, source=source, actor=actor,
                            correlation_id=a.correlation)
