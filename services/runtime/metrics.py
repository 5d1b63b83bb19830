"""Prometheus metrics of one agentbus process: what it counts while it works, and how it is served.

Counted where the work happens (since this process started; Prometheus' ``rate()`` and
``increase()`` take restarts in their stride):

* decisions, by the deciders: commands by type and outcome, rejections by reason code, events by
  type, cost (USD) and tokens by pool and model. A decider counts a batch in plain dicts
  (``Tally``: one dict update per command, no lock, no label lookup) and merges it into the
  process totals (``DECISIONS``) once the batch's events are durable, so a batch that fails is
  never counted and a retried one is not counted twice;
* executor runs, by the executor host: a histogram of call latency by executor type, name and
  outcome (``executor_run``);
* HTTP requests, by the API's middleware (``services.http.metrics``): a histogram of latency by
  method, route template and status (``HTTP_REQUESTS``).

Read when scraped (``services.runtime.gauges``): consumer lag per partition, tasks, agents and
workflow runs by pool and status, queue depth per pool. Those come from the log and the read
models, which every process of a deployment shares.

One registry per process: ``REGISTRY``, agentbus's own rather than prometheus_client's global
default, so another library's metrics never slip in and creating several apps in one process (the
tests do) never registers anything twice. Each exposition is ``REGISTRY`` plus the scrape-time
values of its own service: ``/metrics`` of an app, ``agentbus worker --metrics-port`` (a
prometheus_client server in a thread, ``serve_metrics``); ``agentbus executor run
--metrics-port`` serves ``REGISTRY`` alone. Several services in one process share the counters.

This module must never do I/O on a hot path nor take a lock there; a scrape may read (never
write) anything.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Iterable, Iterator, Sequence
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder, start_http_server
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from contracts import Envelope
from contracts.event_types import CostRecorded

__all__ = [
    "ACCEPTED",
    "DECISIONS",
    "DUPLICATE",
    "HTTP_REQUESTS",
    "PARTS",
    "REGISTRY",
    "Decisions",
    "MetricsServer",
    "Tally",
    "encode",
    "executor_run",
    "scrape_failed",
    "serve_metrics",
]

log = logging.getLogger("agentbus.metrics")

ACCEPTED, REJECTED, DUPLICATE = "accepted", "rejected", "duplicate"
# What a scrape reads besides the counters: the lag (the log's offsets, the projector's position)
# and the read models' counts. ``agentbus_scrape_failed`` names the one that could not be read.
PARTS = ("lag", "read_models")
# A scrape that hops from the metrics server's thread to the event loop waits at most this long.
SCRAPE_TIMEOUT_S = 10.0

REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)


# --- decisions ----------------------------------------------------------------------------------


class Decisions:
    """The process's totals of what its deciders decided and appended (a collector).

    Plain dicts, merged into once per batch by the event loop; ``collect`` copies them first (a
    dict copy is atomic under the GIL), so a scrape from the worker's metrics thread is safe.
    """

    def __init__(self) -> None:
        # (command type, ACCEPTED | DUPLICATE | reason code) -> commands
        self.commands: dict[tuple[str, str], int] = {}
        self.events: dict[str, int] = {}
        self.cost_usd: dict[tuple[str, str], float] = {}  # (pool, model)
        self.tokens: dict[tuple[str, str, str], int] = {}  # (pool, model, "input" | "output")

    def merge(self, commands: dict[tuple[str, str], int], events: Sequence[Envelope]) -> None:
        """Add one durable batch: its commands by (type, outcome) and its events."""
        totals = self.commands
        for key, n in commands.items():
            totals[key] = totals.get(key, 0) + n
        counted = self.events
        for env in events:
            kind = env.type
            counted[kind] = counted.get(kind, 0) + 1
            data = env.data
            if type(data) is CostRecorded:
                self._cost(env.pool, data)

    def _cost(self, pool: str, cost: CostRecorded) -> None:
        key = (pool, cost.model)
        self.cost_usd[key] = self.cost_usd.get(key, 0.0) + cost.cost_usd
        for kind, n in (("input", cost.input_tokens), ("output", cost.output_tokens)):
            tkey = (pool, cost.model, kind)
            self.tokens[tkey] = self.tokens.get(tkey, 0) + n

    def collect(self) -> Iterator[Metric]:
        commands = CounterMetricFamily("agentbus_commands", "Commands decided, by type and outcome "
                                       "(accepted, rejected, duplicate: an id decided before).",
                                       labels=["type", "outcome"])
        rejections = CounterMetricFamily("agentbus_command_rejections", "Commands rejected, by type "
                                         "and reason code.", labels=["type", "code"])
        by_outcome: dict[tuple[str, str], int] = {}
        for (kind, outcome), n in sorted(self.commands.copy().items()):
            if outcome not in (ACCEPTED, DUPLICATE):
                rejections.add_metric([kind, outcome], n)
                outcome = REJECTED
            by_outcome[kind, outcome] = by_outcome.get((kind, outcome), 0) + n
        for labels, n in by_outcome.items():
            commands.add_metric(list(labels), n)
        events = CounterMetricFamily("agentbus_events", "Events appended by the deciders, by type.",
                                     labels=["type"])
        for kind, n in sorted(self.events.copy().items()):
            events.add_metric([kind], n)
        cost = CounterMetricFamily("agentbus_cost_usd", "Cost recorded (CostRecorded), in USD, by pool "
                                   "and model.", labels=["pool", "model"])
        for (pool, model), usd in sorted(self.cost_usd.copy().items()):
            cost.add_metric([pool, model], usd)
        tokens = CounterMetricFamily("agentbus_tokens", "Model tokens recorded with costs, by pool, "
                                     "model and kind (input, output).", labels=["pool", "model", "kind"])
        for (pool, model, kind), n in sorted(self.tokens.copy().items()):
            tokens.add_metric([pool, model, kind], n)
        yield from (commands, rejections, events, cost, tokens)


DECISIONS = Decisions()
REGISTRY.register(DECISIONS)


class Tally:
    """One decider's counts of the batch it is deciding, merged into ``DECISIONS`` once durable."""

    __slots__ = ("commands",)

    def __init__(self) -> None:
        self.commands: dict[tuple[str, str], int] = {}

    def decided(self, command_type: str, outcome: str) -> None:
        """One command decided: ``outcome`` is ``ACCEPTED``, ``DUPLICATE`` or the reason code."""
        key = (command_type, outcome)
        counts = self.commands
        counts[key] = counts.get(key, 0) + 1

    def durable(self, events: Sequence[Envelope]) -> None:
        """The batch's events (and its commands offset) are appended: count it for good."""
        DECISIONS.merge(self.commands, events)
        self.commands = {}


# --- executor runs ------------------------------------------------------------------------------


EXECUTOR_RUNS = Histogram(
    "agentbus_executor_call_seconds",
    "Calls executors made to the outside world (HTTP APIs, models, MCP servers), by executor type, "
    "name and outcome (completed, deferred, failed) and, when failed, the error class (timeout, "
    "connection_error, http_status, ...); the count is the number of calls.",
    ["executor", "name", "outcome", "error"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0),
    registry=REGISTRY,
)


class RunOutcome(Protocol):
    """What the histogram reads of an executor's outcome (``services.executors.base.Outcome``)."""

    @property
    def ok(self) -> bool: ...

    @property
    def error_code(self) -> str | None: ...

    @property
    def retry_after_s(self) -> float | None: ...


def executor_run(executor: str, name: str, outcome: RunOutcome, seconds: float) -> None:
    """Count one executor call that took ``seconds`` and ended with ``outcome``."""
    if outcome.ok:
        labels = (executor, name, "completed", "")
    elif outcome.retry_after_s is not None:
        labels = (executor, name, "deferred", "")
    else:
        # The class only: a target's own code after the colon (http_status:404) would make the
        # series unbounded.
        error = (outcome.error_code or "unknown").split(":", 1)[0]
        labels = (executor, name, "failed", error)
    EXECUTOR_RUNS.labels(*labels).observe(seconds)


# --- HTTP requests ------------------------------------------------------------------------------


HTTP_REQUESTS = Histogram(
    "agentbus_http_request_duration_seconds",
    "HTTP requests the API answered (/metrics excluded), until the response was sent in full, by "
    "method, route template and status; the count is the number of requests.",
    ["method", "route", "status"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
    registry=REGISTRY,
)


# --- exposition ---------------------------------------------------------------------------------


def scrape_failed(parts: dict[str, bool]) -> GaugeMetricFamily:
    """``agentbus_scrape_failed{part}``: 1 for each part the scrape could not read."""
    family = GaugeMetricFamily("agentbus_scrape_failed", "1 when this scrape could not read a part of "
                               "its values (lag, read_models); they are missing from it.", labels=["part"])
    for part, failed in parts.items():
        family.add_metric([part], 1.0 if failed else 0.0)
    return family


class _Families:
    """A collector of the process's metrics and metric families read for one scrape."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()
        yield from self.families


def encode(families: Iterable[Metric], accept: str | None) -> tuple[bytes, str]:
    """The body and content type of a scrape: the process's metrics and ``families``, in the
    format the ``Accept`` header asks for (Prometheus text, or OpenMetrics)."""
    encoder, content_type = choose_encoder(accept or "")
    return encoder(_Families(families)), content_type


Read = Callable[[], Coroutine[Any, Any, list[Metric]]]


class _ThreadedScrape:
    """The collector of a metrics server that runs in a thread of its own: the scrape-time values
    are read on the process's event loop, where the log and the read models live."""

    def __init__(self, loop: asyncio.AbstractEventLoop, read: Read | None) -> None:
        self.loop = loop
        self.read = read

    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()
        if self.read is None:
            return
        coro = self.read()
        try:
            future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        except RuntimeError:  # the loop is closed: the process is stopping
            coro.close()
            yield scrape_failed(dict.fromkeys(PARTS, True))
            return
        try:
            families = future.result(SCRAPE_TIMEOUT_S)
        except Exception as exc:  # the loop is too busy: the counters still answer
            future.cancel()
            log.warning("metrics: the scrape-time values could not be read: %r", exc)
            families = [scrape_failed(dict.fromkeys(PARTS, True))]
        yield from families


class MetricsServer:
    """prometheus_client's HTTP server in a thread, answering every path with the metrics."""

    def __init__(self, server: Any, thread: Any) -> None:
        self._server = server
        self._thread = thread

    @property
    def port(self) -> int:
        return int(self._server.server_port)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(SCRAPE_TIMEOUT_S)


def serve_metrics(host: str, port: int, read: Read | None = None) -> MetricsServer:
    """Serve this process's metrics, and what ``read`` returns at each scrape, on ``host``:``port``
    (0: any free port, see ``MetricsServer.port``). Call from the event loop ``read`` runs on."""
    collector = _ThreadedScrape(asyncio.get_running_loop(), read)
    server, thread = start_http_server(port, host, registry=collector)
    return MetricsServer(server, thread)
