"""Metrics read when scraped: consumer lag per partition, and the read models' counts by status.

Lag is read from the log: each partition's end offsets against the deciders' and the
coordinator's committed offsets and the projector's stored position, the same values in every
process of a deployment (take ``max by (role, partition)`` over several). Counts are one GROUP
BY per read-model table (``projections.counts``). A part that cannot be read (the log or the
database away) is left out of that scrape and flagged in ``agentbus_scrape_failed``; the rest
still answers.

This module must never write anything. The only thing it keeps between scrapes is which
(pool, status) series it has shown, so that a count that fell to zero reads 0 instead of
vanishing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client.core import GaugeMetricFamily, Metric

from events import EventLog
from projections import ProjectionStore
from projections.counts import WAITING_TASKS, Counts, StatusCounts, status_counts
from projections.store import MAIN_PROJECTOR
from services.runtime.metrics import MetricsServer, scrape_failed, serve_metrics
from services.runtime.service import Service
from services.runtime.settings import server_url
from services.runtime.topics import COORDINATOR_GROUP, DECIDER_GROUP, Topics

if TYPE_CHECKING:
    from services.runtime.cluster import FaustWorker

__all__ = ["Gauges", "Sources", "serve_worker_metrics", "service_sources", "worker_sources"]

log = logging.getLogger("agentbus.metrics")

# On Kafka a transaction ends with a marker that takes an offset and holds no record, so a
# consumer past the last record of the last transaction still sees this many offsets left.
_MARKER_SLACK = 2


@dataclass(frozen=True)
class Sources:
    """Where one deployment's positions are: its log, topics, consumer groups and read models."""

    log: EventLog
    store: ProjectionStore
    topics: Topics
    partitions: int
    decider_group: str
    coordinator_group: str
    # Kafka: offsets may hold transaction markers rather than records.
    sparse: bool


def service_sources(service: Service) -> Sources:
    """The sources of the service an app runs on (the embedded runner or the cluster service)."""
    # The cluster service's groups derive from its app id ("<app id>-decider"); the embedded
    # runner's are the plain names. The coordinator's group is named like the deciders'.
    decider: str = getattr(service, "decider_group", DECIDER_GROUP)
    coordinator = decider.removesuffix(DECIDER_GROUP) + COORDINATOR_GROUP
    return Sources(service.log, service.store, service.topics, service.partitions, decider, coordinator,
                   service.settings.kafka)


def worker_sources(worker: FaustWorker) -> Sources:
    """The sources of an ``agentbus worker``."""
    return Sources(worker.log, worker.store, worker.topics, worker.partitions, worker.decider_group,
                   worker.coordinator_group, sparse=True)


@dataclass
class Gauges:
    """Reads the scrape-time metric families of one service (keep one per app or worker)."""

    seen: dict[str, set[tuple[str, str]]] = field(default_factory=dict)

    async def read(self, sources: Sources) -> list[Metric]:
        """This scrape's lag and read-model counts, and which of them could not be read."""
        families: list[Metric] = []
        failed: dict[str, bool] = {}
        try:
            families += await _lag(sources)
            failed["lag"] = False
        except Exception as exc:
            log.warning("metrics: the positions could not be read: %r", exc)
            failed["lag"] = True
        try:
            families += self._counts(await status_counts(sources.store))
            failed["read_models"] = False
        except Exception as exc:
            log.warning("metrics: the read models could not be read: %r", exc)
            failed["read_models"] = True
        families.append(scrape_failed(failed))
        return families

    def _counts(self, counts: StatusCounts) -> list[Metric]:
        tasks = self._filled("tasks", counts.tasks)
        queue = GaugeMetricFamily("agentbus_queue_depth", "Tasks waiting for an agent (queued or "
                                  "retrying), by pool.", labels=["pool"])
        waiting: dict[str, int] = {}
        for (pool, status), n in tasks.items():
            waiting[pool] = waiting.get(pool, 0) + (n if status in WAITING_TASKS else 0)
        for pool, n in sorted(waiting.items()):
            queue.add_metric([pool], n)
        return [
            _family("agentbus_tasks", "Tasks by pool and status (read models).", tasks),
            queue,
            _family("agentbus_agents", "Agents by pool and status (read models).",
                    self._filled("agents", counts.agents)),
            _family("agentbus_workflows", "Workflow runs by pool and status (read models).",
                    self._filled("workflows", counts.workflows)),
        ]

    def _filled(self, what: str, counts: Counts) -> Counts:
        """``counts`` with a 0 for every (pool, status) shown before and absent now."""
        seen = self.seen.setdefault(what, set())
        seen.update(counts)
        return {key: counts.get(key, 0) for key in seen}


def _family(name: str, documentation: str, counts: Counts) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=["pool", "status"])
    for (pool, status), n in sorted(counts.items()):
        family.add_metric([pool, status], n)
    return family


async def _lag(s: Sources) -> list[Metric]:
    lag = GaugeMetricFamily("agentbus_lag_records", "Records a consumer has yet to process, by role "
                            "(decider: commands; coordinator, projector: events) and partition.",
                            labels=["role", "partition"])
    ends = GaugeMetricFamily("agentbus_log_end_offset", "The offset the next record of the partition "
                             "will take, by topic (commands, events) and partition.",
                             labels=["topic", "partition"])
    commands, events = s.topics.commands, s.topics.events
    for p in range(s.partitions):
        label = str(p)
        commands_end = await s.log.end_offset(commands, p)
        events_end = await s.log.end_offset(events, p)
        ends.add_metric(["commands", label], commands_end)
        ends.add_metric(["events", label], events_end)
        positions = (
            ("decider", commands, commands_end, await s.log.committed(s.decider_group, commands, p)),
            ("coordinator", events, events_end, await s.log.committed(s.coordinator_group, events, p)),
            ("projector", events, events_end, await s.store.read_position(MAIN_PROJECTOR, events, p)),
        )
        for role, topic, end, position in positions:
            lag.add_metric([role, label], await _behind(s, topic, p, position, end))
    return [lag, ends]


async def _behind(s: Sources, topic: str, partition: int, position: int, end: int) -> int:
    behind = max(end - position, 0)
    if s.sparse and 0 < behind <= _MARKER_SLACK and not await s.log.read(topic, partition, position, 1):
        return 0  # only transaction markers are left
    return behind


def serve_worker_metrics(worker: FaustWorker, host: str, port: int | None) -> MetricsServer | None:
    """``agentbus worker --metrics-port``: the process's metrics and the deployment's scrape-time
    values on ``host``:``port`` (None: no server). Call from the worker's event loop."""
    if port is None:
        return None
    gauges = Gauges()

    async def read() -> list[Metric]:
        return await gauges.read(worker_sources(worker))

    server = serve_metrics(host, port, read)
    log.info("metrics on %s/metrics", server_url(host, server.port))
    return server
