"""The ``Service`` protocol, and ``open_service``: the one place that picks the runtime.

Two runtimes implement it: the embedded ``Runner`` (one process, any log) and ``ClusterService``
(Kafka, with workers in this process or elsewhere). The log URL in the settings chooses; ``serve``
and the bench open their service here and nowhere else, so they cannot disagree about it.

How a service stops is part of the protocol, so a process can promise to exit in bounded time:
``stop()`` returns within ``STOP_TIMEOUT_S`` whatever state the service is in (starting,
rebalancing, under load). Each of its steps gets what is left of one ``StopDeadline``; a step that
has not finished by then is abandoned, which is safe: a Kafka transaction not committed is never
seen (the broker aborts it, at once when the partition's next owner claims it), and a SQLite
transaction is all or nothing. ``cancel_start()`` cancels a ``start()`` or ``ready()`` still in
progress, so a stop asked for while starting does not wait for the start to finish.

This module must never start anything: ``open_service`` creates, the caller starts and stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any, Protocol

from contracts import Envelope
from events import EventLog
from projections import ProjectionStore
from services.runtime.outcomes import OutcomeRef, Outcomes
from services.runtime.settings import Settings
from services.runtime.topics import Topics

log = logging.getLogger("agentbus.stop")

# A service's stop() returns within this many seconds, in any state. ``serve`` and ``worker``
# add the HTTP drain and the interpreter's exit and promise to be gone 30 s after SIGTERM.
STOP_TIMEOUT_S = 15.0
# Even a step that starts after the deadline gets this long (to close a socket, say).
_LAST_CHANCE_S = 0.2


class StopDeadline:
    """One time budget shared by the steps of a stop: each step gets what is left, then is abandoned."""

    def __init__(self, seconds: float | None = None) -> None:
        # The module global, read on each call, so a test can shorten it.
        self.until = time.monotonic() + (STOP_TIMEOUT_S if seconds is None else seconds)

    def left(self) -> float:
        return max(self.until - time.monotonic(), _LAST_CHANCE_S)

    async def step(self, what: str, work: Awaitable[Any], *, at_most: float | None = None) -> bool:
        """Await ``work`` within what is left (and ``at_most`` seconds); False (logged, never
        raised) when it failed or was abandoned, so the steps after it still run."""
        budget = self.left() if at_most is None else min(self.left(), at_most)
        try:
            async with asyncio.timeout(budget) as timeout:
                await work
        except TimeoutError:
            log.warning("stopping: %s did not finish in %.1f s; abandoned", what, budget)
            return False
        except Exception as exc:
            log.warning("stopping: %s failed: %r", what, exc)
            return False
        if timeout.expired():  # the work swallowed the cancellation and returned
            log.warning("stopping: %s did not finish in %.1f s; cut short", what, budget)
            return False
        return True


async def ended(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Wait until ``tasks`` (cancelled by the caller) have ended.

    Unlike ``await task`` under ``suppress(CancelledError)``, a cancellation of the caller itself
    comes through, so a ``StopDeadline`` can abandon the wait. Failures are taken out of the tasks
    (they were reported where they happened), so none is logged again as never retrieved.
    """
    pending = list(tasks)
    if not pending:
        return
    await asyncio.wait(pending)
    for task in pending:
        if not task.cancelled():
            task.exception()


class StartCancelled(RuntimeError):
    """A stop was asked for while the service was starting: it stopped before it was ready."""


class Starting:
    """Which task is starting a service right now, so that ``cancel()`` can interrupt it.

    Used around ``start()`` and ``ready()``: a cancellation asked for here comes out of them as
    ``StartCancelled``; any other cancellation passes unchanged. Once cancelled, a later start
    is refused at once.
    """

    def __init__(self) -> None:
        self._task: asyncio.Task[Any] | None = None
        self.cancelled = False

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        if self.cancelled:
            raise StartCancelled("a stop was asked for before the service started")
        task = asyncio.current_task()
        self._task = task
        try:
            yield
        except asyncio.CancelledError:
            if self.cancelled and task is not None and task.uncancel() == 0:
                raise StartCancelled("a stop was asked for while the service was starting") from None
            raise
        finally:
            self._task = None

    def cancel(self) -> None:
        self.cancelled = True
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()


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

    async def stop(self) -> None:
        """Stop everything, within ``STOP_TIMEOUT_S`` whatever the state (see the module docstring)."""

    def cancel_start(self) -> None:
        """Interrupt a ``start()`` or ``ready()`` in progress: it raises ``StartCancelled``."""

    def partition_of(self, pool: str) -> int: ...

    async def submit(self, env: Envelope) -> tuple[int, int, bool]: ...

    async def outcome_events(self, ref: OutcomeRef) -> list[tuple[int, Envelope]]: ...

    async def wait_decided(self, partition: int, position: int, timeout: float) -> int | None:
        """Wait until the command at ``position`` of the commands partition is decided and the
        events appended until then are readable here; the offset of the last of those events on
        the events partition (-1: none), or None after ``timeout`` seconds."""

    async def decided_position(self, partition: int) -> int:
        """The position of a command of the commands partition that is decided, with every one
        before it (-1: none yet): a read-your-writes token for outcomes already known."""

    def readiness(self) -> dict[str, Any]: ...


async def wait_committed(log: EventLog, group: str, topic: str, partition: int, position: int,
                         timeout: float, *, sparse: bool = False) -> bool:
    """True once ``group`` has processed every record of the partition up to ``position`` (which
    must be below the partition's end); False after ``timeout``.

    ``sparse``: offsets may hold no record (Kafka's transaction markers), so a committed offset
    at or below ``position`` still covers it when no record lies between the two.
    Polls: a group in another process says nothing when it commits. The first polls are quick
    (a read-your-writes wait is usually over in milliseconds), later ones back off.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    delay = 0.001
    while True:
        committed = await log.committed(group, topic, partition)
        if committed > position:
            return True
        if sparse:
            left = await log.read(topic, partition, committed, 1)
            if not left or left[0].offset > position:
                return True
        remaining = deadline - loop.time()
        if remaining <= 0:
            return False
        await asyncio.sleep(min(delay, remaining))
        delay = min(delay * 2, 0.02)


class SettingsError(ValueError):
    """Settings that no runtime can run with (checked before anything is opened)."""


def check_service(settings: Settings, *, worker: bool = True) -> None:
    """Refuse settings the runtime they choose cannot honour, naming the setting."""
    if settings.kafka and settings.scaling_webhook:
        raise SettingsError("the scaling webhook (--scaling-webhook, AGENTBUS_SCALING_WEBHOOK) runs with the "
                            "embedded runner only; on Kafka, subscribe to it: PUT /v1/subscriptions/{name} "
                            'with {"url": ..., "channels": ["type:ScalingDecided"]}')
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
