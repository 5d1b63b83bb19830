"""Fixtures for the cluster tests: a real Kafka broker, a real PostgreSQL, real processes.

The broker comes from ``AGENTBUS_TEST_KAFKA`` (``deploy/kafka/up.sh``), PostgreSQL from
``AGENTBUS_TEST_DATABASE`` (``deploy/postgres/up.sh``). Without them these tests skip locally,
saying how to start them, and fail in CI (``CI=true``). Every test gets its own topic prefix,
Faust app id (consumer groups) and database, so tests never see each other's records or rows and
can share the broker with other engineers' runs. ``running_service`` runs the cluster service in
this process, in such a namespace (here and as the API suite's kafka runtime, tests/api).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import httpx
import pytest
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource
from sqlalchemy.engine import make_url

from services.runtime.service import Service, open_service
from services.runtime.settings import Settings

REPO = Path(__file__).resolve().parents[2]
KAFKA_ENV = "AGENTBUS_TEST_KAFKA"
PG_ENV = "AGENTBUS_TEST_DATABASE"
HINT = ("start Kafka and PostgreSQL with deploy/kafka/up.sh and deploy/postgres/up.sh, then set "
        f"{KAFKA_ENV}=kafka://127.0.0.1:9092 and "
        f"{PG_ENV}=postgresql+asyncpg://agentbus@127.0.0.1:5433/agentbus_test")

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]


def unavailable(why: str) -> NoReturn:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{why}: CI never skips the cluster tests ({HINT})", pytrace=False)
    pytest.skip(f"{why}: {HINT}")


def kafka_url() -> str:
    url = os.environ.get(KAFKA_ENV, "").strip()
    if not url:
        unavailable(f"{KAFKA_ENV} is not set")
    return url


def bootstrap_of(url: str) -> str:
    return url.split("://", 1)[1].split("?", 1)[0]


async def _pg_admin(url: str) -> Any:
    import asyncpg

    u = make_url(url)
    return await asyncpg.connect(host=u.host, port=u.port or 5432, user=u.username, password=u.password,
                                 database=u.database, timeout=10)


@dataclass
class Cluster:
    """One test's private namespace on the shared broker and database server."""

    kafka: str
    database: str
    prefix: str
    app_id: str
    partitions: int = 2
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def bootstrap(self) -> str:
        return bootstrap_of(self.kafka)

    @property
    def commands(self) -> str:
        return f"{self.prefix}commands"

    @property
    def events(self) -> str:
        return f"{self.prefix}events"

    @property
    def dead_letters(self) -> str:
        return f"{self.prefix}commands.dlq"

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTBUS_")}
        env.update({
            "AGENTBUS_BROKER": self.kafka, "AGENTBUS_DATABASE": self.database,
            "AGENTBUS_TOPIC_PREFIX": self.prefix, "AGENTBUS_APP_ID": self.app_id,
            "AGENTBUS_PARTITIONS": str(self.partitions), "PYTHONUNBUFFERED": "1",
        })
        env.update(extra)
        return env

    def spawn(self, args: list[str], log: Path, **extra: str) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:  # the child keeps its own copy of the descriptor
            proc = subprocess.Popen([sys.executable, "-m", "services.cli", *args], cwd=REPO,
                                    env=self.env(**extra), stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.procs.append(proc)
        return proc

    def serve(self, port: int, log: Path, *extra_args: str, **env: str) -> subprocess.Popen[bytes]:
        return self.spawn(["serve", "--port", str(port), *extra_args], log, **env)

    def worker(self, log: Path, **env: str) -> subprocess.Popen[bytes]:
        return self.spawn(["worker"], log, **env)

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


async def drop_topics(bootstrap: str, *prefixes: str) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        await admin.start()
        names = [t for t in await admin.list_topics() if t.startswith(prefixes)]
        if names:
            await admin.delete_topics(names)
    except Exception:  # cleanup must never hide the test's own result
        pass
    finally:
        with contextlib.suppress(Exception):
            await admin.close()


@contextlib.asynccontextmanager
async def namespace(kafka: str, partitions: int = 2) -> AsyncIterator[Cluster]:
    """A Cluster with a fresh database; its topics and database are dropped afterwards."""
    pg = os.environ.get(PG_ENV, "").strip()
    if not pg:
        unavailable(f"{PG_ENV} is not set")
    try:
        admin = await _pg_admin(pg)
    except Exception as exc:
        unavailable(f"cannot connect to {pg}: {exc!r}")
    tag = uuid.uuid4().hex[:10]
    dbname = f"cl_{tag}"
    await admin.execute(f'CREATE DATABASE "{dbname}"')
    url = make_url(pg).set(database=dbname).render_as_string(hide_password=False)
    cluster = Cluster(kafka, url, f"cl-{tag}-", f"cl-{tag}", partitions)
    try:
        yield cluster
    finally:
        cluster.stop_all()
        await drop_topics(cluster.bootstrap, cluster.prefix, cluster.app_id)
        with contextlib.suppress(Exception):
            await admin.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        await admin.close()


# The broker is asked once per session whether it answers: each check is a client connecting and
# closing, and later tests skip (fail in CI) at once rather than wait for a broker known missing.
_broker_checked = False
_broker_down: str | None = None


async def _broker_answers(bootstrap: str) -> None:
    global _broker_checked, _broker_down
    from aiokafka.admin import AIOKafkaAdminClient

    if _broker_down is not None:
        unavailable(_broker_down)
    if _broker_checked:
        return
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    try:
        await asyncio.wait_for(admin.start(), 15)
    except Exception as exc:
        _broker_down = f"Kafka at {bootstrap} does not answer: {exc!r}"
        unavailable(_broker_down)
    finally:
        with contextlib.suppress(Exception):
            await admin.close()
    _broker_checked = True


@contextlib.asynccontextmanager
async def private_namespace(partitions: int = 2) -> AsyncIterator[Cluster]:
    """A private namespace on the test broker and PostgreSQL; skips (fails in CI) without them."""
    url = kafka_url()
    await _broker_answers(bootstrap_of(url))
    async with namespace(url, partitions) as c:
        yield c


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    """A private namespace (topics, app id, database) on the shared test broker and PostgreSQL."""
    async with private_namespace() as c:
        yield c


class _Given(Settings):
    """Settings from the arguments and defaults alone: the shell running the tests never reaches a
    service started in this process (a variable a developer exported, or one a test sets)."""

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def service_settings(cluster: Cluster, data_dir: Path) -> Settings:
    """The settings of a deployment in ``cluster``'s namespace: its topics, app id and database."""
    return _Given(data_dir=data_dir, broker=cluster.kafka, database=cluster.database,
                  partitions=cluster.partitions, topic_prefix=cluster.prefix, app_id=cluster.app_id)


async def owns_every_partition(service: Service, timeout: float = 60) -> None:
    """Until the in-process worker was given every partition and rebuilt its deciders and coordinators
    there: the moment the embedded runner's ``ready()`` stands for."""
    deadline = time.monotonic() + timeout
    every = list(range(service.partitions))
    while True:
        state = service.readiness()
        assigned = state.get("assigned") or {}
        if (assigned.get("commands") == every and assigned.get("events") == every
                and state["deciders_ready"] and state["coordinator_ready"]):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"the worker did not take every partition in {timeout}s: {state}")
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def running_service(cluster: Cluster, data_dir: Path) -> AsyncIterator[Service]:
    """The cluster service (with an in-process Faust worker) of ``cluster``, started, ready, and
    owning every partition; stopped afterwards."""
    service = open_service(service_settings(cluster, data_dir))
    await service.start()
    try:
        await service.ready()
        await owns_every_partition(service)
        yield service
    finally:
        await service.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_healthy(base: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 90) -> None:
    """Until GET /v1/health answers 200 (the process must stay alive meanwhile)."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=base, timeout=5) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = log.read_text()[-4000:]  # noqa: ASYNC240 (a failing test's diagnostics)
                raise AssertionError(f"process exited with {proc.returncode}:\n{tail}")
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get("/v1/health")).status_code == 200:
                    return
            await asyncio.sleep(0.3)
    tail = log.read_text()[-4000:]  # noqa: ASYNC240
    raise AssertionError(f"{base} not healthy after {timeout}s:\n{tail}")


# Lines of each process's log a failing test prints, access-log lines left out.
FAILURE_LOG_LINES = 120


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call":
        item.stash[_CALL_FAILED] = report.failed
    return report


_CALL_FAILED = pytest.StashKey[bool]()


@pytest.fixture
def logs(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    """A directory for the test's process logs; a failing test prints their tails (CI keeps no files)."""
    d = tmp_path / "logs"
    d.mkdir()
    yield d
    if request.node.stash.get(_CALL_FAILED, False):
        for path in sorted(d.glob("*.log")):
            lines = [line for line in path.read_text(errors="replace").splitlines()
                     if '"GET /' not in line and '"POST /' not in line]
            print(f"\n--- {path.name}: last {FAILURE_LOG_LINES} of {len(lines)} lines (access log left out)")
            print("\n".join(lines[-FAILURE_LOG_LINES:]))


async def read_topic(log: Any, topic: str) -> dict[int, list[Any]]:
    """Every committed record of every partition of ``topic``."""
    out: dict[int, list[Any]] = {}
    for p in range(await log.partitions(topic)):
        recs: list[Any] = []
        offset = 0
        while batch := await log.read(topic, p, offset, 5000):
            recs.extend(batch)
            offset = batch[-1].offset + 1
        out[p] = recs
    return out


def outcome_runs(events: dict[int, list[Any]]) -> dict[str, list[tuple[int, int, int]]]:
    """command id -> its runs (partition, first offset, count) of contiguous events in the log."""
    import orjson

    runs: dict[str, list[tuple[int, int, int]]] = {}
    for p, recs in events.items():
        prev: tuple[str, int, int] | None = None  # (cid, first, count)
        for r in recs:
            cid = orjson.loads(r.value)["commandid"]
            if prev is not None and prev[0] == cid:
                prev = (cid, prev[1], prev[2] + 1)
                continue
            if prev is not None:
                runs.setdefault(prev[0], []).append((p, prev[1], prev[2]))
            prev = (cid, r.offset, 1)
        if prev is not None:
            runs.setdefault(prev[0], []).append((p, prev[1], prev[2]))
    return runs
