"""The API's fixtures: the HTTP tests are written once and run on every runtime.

``service`` is parameterised over the runtimes, like the log over its backends
(tests/contract) and the read models over theirs (tests/projections):

* ``embedded``: the ``Runner`` on temporary SQLite files;
* ``kafka``: the ``ClusterService`` with an in-process Faust worker, on the test broker
  (``AGENTBUS_TEST_KAFKA``) with read models in PostgreSQL (``AGENTBUS_TEST_DATABASE``). Each
  test gets its own topic prefix, app id and database (tests/cluster's ``namespace``). Without
  them these cases skip locally, saying how to start them, and fail in CI (``CI=true``).

The API tests share one event loop (the package's), so that a cluster service can be started
while the test before it runs (``tests.api.runtimes``).

Every test that takes ``client`` or ``service`` is part of the Service contract and runs on
both, unless marked:

* ``embedded``: about the embedded runner itself (it constructs or restarts a ``Runner``, relies
  on the SQLite log refusing a repeated command id, or on its positions having no gaps). Such a
  test may take ``runner``, the ``Runner`` behind ``client``.
* ``http_layer``: answered by the HTTP layer alone (input refused before a command exists, the
  OpenAPI document), so no runtime can change the outcome. Run once, on the embedded runtime: a
  Kafka case costs a cluster namespace and a Faust worker for nothing the runtime decides.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final

import httpx
import pytest
import pytest_asyncio

from services.http.app import create_app
from services.runtime.embedded import Runner
from services.runtime.service import Service
from services.runtime.topics import COORDINATOR_GROUP, DECIDER_GROUP
from tests.api.runtimes import ClusterServices, embedded

HERE = Path(__file__).parent
LOOP: Final = "package"

RUNTIMES = [
    pytest.param("embedded", id="embedded"),
    pytest.param("kafka", id="kafka", marks=[pytest.mark.kafka, pytest.mark.postgres]),
]
# The markers of tests that run on the embedded runtime only (see the module docstring).
ONE_RUNTIME = ("embedded", "http_layer")
# Waits for asynchronous work (the coordinator's assignments, settling) take longer on Kafka:
# every hop is a transaction on the broker and a long poll on the other side.
KAFKA_PATIENCE = 6.0


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "embedded: about the embedded runner itself; not part of the Service contract, "
                   "runs on the embedded runtime only")
    config.addinivalue_line(
        "markers", "http_layer: answered by the HTTP layer before any command reaches a service; "
                   "runs on the embedded runtime only")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every API test runs in the package's event loop (see the module docstring)."""
    for item in items:
        if item.path.is_relative_to(HERE) and item.get_closest_marker("asyncio") is not None:
            item.add_marker(pytest.mark.asyncio(loop_scope=LOOP), append=False)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test using ``service`` (``client`` does) runs on each runtime, unless marked for one."""
    if "service" not in metafunc.fixturenames:
        return
    one = any(metafunc.definition.get_closest_marker(name) for name in ONE_RUNTIME)
    metafunc.parametrize("service", RUNTIMES[:1] if one else RUNTIMES, indirect=True)


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings read AGENTBUS_* variables; a developer's shell must not leak into the tests."""
    for name in list(os.environ):
        if name.startswith("AGENTBUS_") and not name.startswith("AGENTBUS_TEST_"):
            monkeypatch.delenv(name)


@pytest_asyncio.fixture(scope="package", loop_scope=LOOP)
async def cluster_services(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ClusterServices]:
    """Where the kafka cases get their cluster services (each test its own)."""
    services = ClusterServices(tmp_path_factory.mktemp("cluster"))
    try:
        yield services
    finally:
        await services.close()


@pytest_asyncio.fixture(loop_scope=LOOP)
async def service(request: pytest.FixtureRequest, tmp_path: Path,
                  cluster_services: ClusterServices) -> AsyncIterator[Service]:
    """A started service of the runtime under test, ready (its deciders and coordinator rebuilt)."""
    opened = embedded(tmp_path) if request.param == "embedded" else cluster_services.take()
    async with opened as runtime:
        yield runtime


@pytest.fixture
def runner(service: Service) -> Runner:
    """The embedded runner behind ``client`` (tests marked ``embedded`` only)."""
    assert isinstance(service, Runner), "a test about the embedded runner must be marked embedded"
    return service


class ServiceClient(httpx.AsyncClient):
    """An httpx client bound to the app on ``service`` over ASGI (no sockets)."""

    def __init__(self, service: Service) -> None:
        app = create_app(service=service, settings=service.settings)
        super().__init__(transport=httpx.ASGITransport(app=app), base_url="http://t")
        self.service = service


@pytest_asyncio.fixture(loop_scope=LOOP)
async def client(service: Service) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client on the API of the service under test."""
    async with ServiceClient(service) as c:
        yield c


def patience(of: httpx.AsyncClient | Service) -> float:
    """How many times longer than on the embedded runtime asynchronous work may take."""
    service = of.service if isinstance(of, ServiceClient) else of
    settings = getattr(service, "settings", None)  # None: a client the test built itself
    return KAFKA_PATIENCE if settings is not None and settings.kafka else 1.0


async def last_position(resp: httpx.Response) -> int:
    """The read-your-writes token of a write (202 or wait=true): its ``position``."""
    return int(resp.json()["position"])


async def poll(
    client: httpx.AsyncClient, path: str, until: Any, *, timeout: float = 5.0, **params: Any
) -> dict[str, Any]:
    """GET ``path`` until ``until(json)`` is true (the coordinator works asynchronously)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout * patience(client)
    while True:
        resp = await client.get(path, params=params)
        if resp.status_code == 200 and until(resp.json()):
            return dict(resp.json())
        if loop.time() > deadline:
            raise AssertionError(
                f"{path} never satisfied the condition; last: {resp.status_code} {resp.text}"
            )
        await asyncio.sleep(0.02)


async def event_count(client: httpx.AsyncClient, pool: str = "default") -> int:
    """How many events the pool has on the log (through the API)."""
    resp = await client.get("/v1/events", params={"pool": pool, "limit": 1000})
    assert resp.status_code == 200
    return len(resp.json()["items"])


async def end_offsets(service: Service) -> tuple[int, int]:
    """(commands end, events end) of partition 0: proves a bad request appended nothing."""
    log, topics = service.log, service.topics
    return (await log.end_offset(topics.commands, 0), await log.end_offset(topics.events, 0))


async def _ends(service: Service) -> list[tuple[int, int]]:
    log, topics = service.log, service.topics
    return [(await log.end_offset(topics.commands, p), await log.end_offset(topics.events, p))
            for p in range(service.partitions)]


async def _projected(service: Service, timeout: float) -> None:
    """Until the read models hold every event of the log (the projector may be another process)."""
    topic = service.topics.events
    for p in range(service.partitions):
        end = start = await service.log.end_offset(topic, p)
        last = None
        while start > 0 and last is None:  # the last record: on Kafka the end may be a marker
            start = max(0, start - 16)
            recs = await service.log.read(topic, p, start, end - start)
            last = recs[-1].offset if recs else None
        if last is not None and not await service.store.wait_for_position(topic, p, last, timeout):
            raise AssertionError(f"the read models did not reach {topic}[{p}]@{last}")


def _groups(service: Service) -> tuple[str, str]:
    """The consumer groups of the deciders and of the coordinator."""
    worker = getattr(service, "worker", None)  # the cluster's groups are named after its app id
    if worker is not None:
        return worker.decider_group, worker.coordinator_group
    return DECIDER_GROUP, COORDINATOR_GROUP


async def _behind(service: Service, group: str, topic: str, partition: int) -> bool:
    """Whether ``group`` has a record of ``topic`` left to process. Asked by reading rather than by
    comparing offsets: on Kafka a transaction's marker takes an offset no consumer is given."""
    committed = await service.log.committed(group, topic, partition)
    return bool(await service.log.read(topic, partition, committed, 1))


async def settle(service: Service, timeout: float = 5.0) -> None:
    """Wait until the deciders have decided every command and the coordinator has reacted to every
    event (its own reactions included): the log's ends stop moving on their own; then until the
    read models hold every event."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout * patience(service)
    deciders, coordinator = _groups(service)
    topics = service.topics
    while True:
        ends = await _ends(service)
        quiet = True
        for p in range(service.partitions):
            if (await _behind(service, deciders, topics.commands, p)
                    or await _behind(service, coordinator, topics.events, p)):
                quiet = False
        if quiet:
            await asyncio.sleep(0.05)  # a reaction appended just as we looked is seen next round
            if await _ends(service) == ends:
                await _projected(service, max(0.1, deadline - loop.time()))
                return
        if loop.time() > deadline:
            raise AssertionError("the service did not settle")
        await asyncio.sleep(0.02)
