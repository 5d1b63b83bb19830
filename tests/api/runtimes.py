"""How the API tests get a service of each runtime.

The embedded runner starts in a fraction of a second, so each test opens its own. A cluster
service does not: a namespace (topics and a PostgreSQL database), a Faust worker joining its
group and taking its partitions, then stopping it and dropping the namespace, take seconds each.
So ``ClusterServices`` starts the next tests' services while the current test runs, and stops a
finished one in the background. Every test still gets a service of its own, in a namespace of
its own; only the waiting overlaps.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path

from services.runtime.service import Service, open_service
from services.runtime.settings import Settings

# Services started ahead of the tests that will take them. A start takes longer than most tests
# on Kafka: measured on 2 busy cores, a test waited 1.7 s for its service on average with one
# started ahead, 0.4 s with two.
AHEAD = 2
# A service is never stopped sooner than this after it was ready: a consumer being started when
# its task is cancelled is left open (events/kafka/reader.py, ``_start_consumer``), and the
# roles start theirs just after the worker reports them ready.
MIN_LIFE_S = 1.0


@contextlib.asynccontextmanager
async def embedded(data_dir: Path) -> AsyncIterator[Service]:
    """An embedded runner on SQLite files in ``data_dir``, started and ready."""
    service = open_service(Settings(data_dir=data_dir))
    try:
        await service.start()  # inside: a start that fails closes what it opened, as serve does
        await service.ready()
        yield service
    finally:
        await service.stop()


class _Lifetime:
    """One cluster service: started in a task of its own, which stops it once released."""

    def __init__(self, data_dir: Path) -> None:
        self.ready: asyncio.Future[Service] = asyncio.get_running_loop().create_future()
        self._released = asyncio.Event()
        self.task = asyncio.create_task(self._live(data_dir), name=f"cluster service {data_dir.name}")

    async def _live(self, data_dir: Path) -> None:
        # Imported here: the cluster's fixtures pull in Faust and aiokafka.
        from tests.cluster.conftest import private_namespace, running_service

        try:
            async with (private_namespace(partitions=1) as cluster,
                        running_service(cluster, data_dir) as service):
                self.ready.set_result(service)
                loop = asyncio.get_running_loop()
                earliest = loop.time() + MIN_LIFE_S
                await self._released.wait()
                await asyncio.sleep(earliest - loop.time())
        except BaseException as exc:
            if self.ready.done():
                raise
            # The test waiting for it reports it: a skip or failure without a broker included.
            self.ready.set_exception(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise

    def release(self) -> None:
        self._released.set()


class ClusterServices:
    """Cluster services for consecutive tests, each started while the tests before it run."""

    def __init__(self, data_dir: Path) -> None:
        self._data_dir = data_dir
        self._ahead: deque[_Lifetime] = deque()
        self._lifetimes: list[_Lifetime] = []
        self._started = 0

    def _start(self) -> _Lifetime:
        # Forget the services that stopped cleanly; keep the others until close() reports them.
        self._lifetimes = [x for x in self._lifetimes if not x.task.done() or _failure(x) is not None]
        self._started += 1
        data_dir = self._data_dir / f"service-{self._started}"
        data_dir.mkdir()
        lifetime = _Lifetime(data_dir)
        self._lifetimes.append(lifetime)
        return lifetime

    @contextlib.asynccontextmanager
    async def take(self) -> AsyncIterator[Service]:
        """A started service of its own for one test; the next ones start meanwhile."""
        lifetime = self._ahead.popleft() if self._ahead else self._start()
        try:
            service = await lifetime.ready
        except BaseException:
            lifetime.release()
            raise
        while len(self._ahead) < AHEAD:
            self._ahead.append(self._start())
        try:
            yield service
        finally:
            lifetime.release()

    async def close(self) -> None:
        """Stop every service, those started for tests that never came included."""
        for lifetime in self._lifetimes:
            lifetime.release()
        await asyncio.gather(*(x.task for x in self._lifetimes), return_exceptions=True)
        errors = [e for e in map(_failure, self._lifetimes) if e is not None]
        if errors:
            raise errors[0]


def _failure(lifetime: _Lifetime) -> BaseException | None:
    """Why a finished service failed to stop, if it did. A failed start is its test's to report."""
    if lifetime.ready.done() and not lifetime.ready.cancelled():
        lifetime.ready.exception()  # seen: a start nobody took must not be logged as unretrieved
    task = lifetime.task
    return asyncio.CancelledError() if task.cancelled() else task.exception()
