"""The ``Service`` protocol, and ``open_service``: the one place that picks the runtime.

Two runtimes implement it: the embedded ``Runner`` (one process, any log) and ``ClusterService``
(Kafka, with workers in this process or elsewhere). The log URL in the settings chooses; ``serve``
and the bench open their service here and nowhere else, so they cannot disagree about it.

This module must never start anything: ``open_service`` creates, the caller starts and stops.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from contracts import Envelope
from events import EventLog
from projections import ProjectionStore
from services.runtime.outcomes import OutcomeRef, Outcomes
from services.runtime.settings import Settings
from services.runtime.topics import Topics


class Service(Protocol):
    """What the API runs on: the embedded ``Runner``, or ``ClusterService`` on Kafka."""

    settings: Settings
    log: EventLog
    store: ProjectionStore
    outcomes: Outcomes
    partitions: int
    topics: Topics
    on_failure: Callable[[BaseException], Awaitable[None] | None] | None

    @property
    def failure(self) -> BaseException | None: ...

    async def start(self) -> None: ...

    async def ready(self, timeout: float = 60.0) -> None: ...

    async def stop(self) -> None: ...

    def partition_of(self, pool: str) -> int: ...

    async def submit(self, env: Envelope) -> tuple[int, int, bool]: ...

    async def outcome_events(self, ref: OutcomeRef) -> list[tuple[int, Envelope]]: ...

    def readiness(self) -> dict[str, Any]: ...


class SettingsError(ValueError):
    """Settings that no runtime can run with (checked before anything is opened)."""


def check_service(settings: Settings, *, worker: bool = True) -> None:
    """Refuse settings the runtime they choose cannot honour, naming the setting."""
    if settings.kafka and settings.scaling_webhook:
        raise SettingsError("the scaling webhook (--scaling-webhook, AGENTBUS_SCALING_WEBHOOK) runs with the "
                            "embedded runner only; on Kafka, consume ScalingDecided from the events topic")
    if not settings.kafka and not worker:
        raise SettingsError("running without a worker (--no-worker) needs a kafka:// broker "
                            "(the embedded runner is one process)")


def topics_of(settings: Settings) -> Topics:
    """The topics the runtime these settings open reads and writes.

    On Kafka, the prefixed names (several deployments share a broker). The embedded runner's loops
    use the plain names, so commands pointed at an embedded log must read those too.
    """
    return settings.topics if settings.kafka else Topics()


def open_service(settings: Settings, *, worker: bool = True) -> Service:
    """The runtime the log URL asks for, created but not started.

    ``kafka://`` -> ``ClusterService`` (with an in-process Faust worker unless ``worker=False``, when
    ``agentbus worker`` processes run the deciders); any other log -> the embedded ``Runner``.
    """
    check_service(settings, worker=worker)
    # Imported here: each runtime pulls in its own stack (Faust and aiokafka for the cluster).
    if settings.kafka:
        from services.runtime.cluster import ClusterService

        return ClusterService(settings, worker=worker)
    from services.runtime.embedded import Runner

    return Runner(settings)
