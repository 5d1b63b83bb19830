"""The ``Service`` protocol: what the HTTP API, the CLI and the bench run on.

Two runtimes implement it: the embedded ``Runner`` (one process, any log) and ``ClusterService``
(Kafka, with workers in this process or elsewhere).
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
