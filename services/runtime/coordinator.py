"""The coordinator loops: the coordinator reactor fed from the events topic, its commands appended
to the commands topic with its events offset in one transaction.

``PartitionCoordinator`` runs over ONE events partition (the cluster: one per assigned
partition); ``CoordinatorLoop`` over every partition of the embedded log. The choice itself is
``services.coordination``; this module only reads, feeds and appends.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from contracts import Envelope
from events import Commit, EventLog
from events.cache import EnvelopeCache, tail
from events.codec import from_record, to_record
from services.coordination.coordinator import Assignment, Coordinator
from services.runtime.ingest import command_envelope
from services.runtime.topics import BATCH, COMMANDS, COORDINATOR_GROUP, EVENTS, Topics


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
