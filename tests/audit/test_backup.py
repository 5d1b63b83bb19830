"""``agentbus backup``: taken from a running service, verified, restored into a working data directory.

The embedded test runs ``agentbus serve`` as a process under a steady stream of submissions and
takes the backup from another process meanwhile. The restored log must hold exactly the records the
manifest names, byte for byte as the source holds them, with a chain that verifies; the restored
read models must never be ahead of it, and once the projector caught up they must equal a rebuild
from the restored log; ``agentbus serve`` then starts on the restored directory. Then what verify
and restore refuse: a flipped byte in any file, a record altered with its checksum and its manifest
entry fixed up (only the chain tells), a non-empty directory, bad and existing names.

The Kafka + PostgreSQL test needs ``AGENTBUS_TEST_KAFKA`` and ``AGENTBUS_TEST_DATABASE`` (skips
locally without them, fails in CI): a cluster deployment's backup restores into an embedded data
directory with the same agents and tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import zlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from events.chain import link, verify_log
from events.log import StoredRecord
from events.sqlite import SqliteLog
from projections import ProjectionStore, rebuild
from projections.queries import dump_tables
from projections.store import MAIN_PROJECTOR
from services.audit.backup import (
    MANIFEST,
    create_backup,
    read_manifest,
    verify_backup,
)
from services.audit.restore import restore_backup
from services.runtime.embedded import Runner
from services.runtime.settings import ENV_PREFIX, Settings
from tests.audit.conftest import rehash, rewrite_manifest
from tests.cli.conftest import invoke, produce
from tests.tables import assert_same_tables

REPO = Path(__file__).resolve().parents[2]
POOLS = ("default", "blue")  # with 2 partitions they land on different ones
START_TIMEOUT_S = 60.0


def _clean(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX) and not name.startswith(f"{ENV_PREFIX}TEST_"):
            monkeypatch.delenv(name)


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's AGENTBUS_* must not reach these deployments (AGENTBUS_TEST_* stays)."""
    _clean(monkeypatch)


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "services.cli", *args]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _spawn(args: list[str], out: Path) -> subprocess.Popen[bytes]:
    with out.open("wb") as sink:
        return subprocess.Popen(args, cwd=REPO, env=_env(), stdout=sink, stderr=subprocess.STDOUT)


async def _run(*args: str) -> tuple[int, str]:
    """Run ``agentbus ARGS`` as a process of its own: (exit code, output)."""
    pipe = asyncio.subprocess
    proc = await asyncio.create_subprocess_exec(*_cli(*args), cwd=REPO, env=_env(), stdout=pipe.PIPE,
                                                stderr=pipe.STDOUT)
    output, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, output.decode()


@contextlib.asynccontextmanager
async def _serving(data: Path, logs: Path, *extra: str) -> AsyncIterator[str]:
    """``agentbus serve`` on ``data`` as a process, healthy (deciders and coordinator ready); its URL.
    Stopped with SIGTERM afterwards (it must stop cleanly)."""
    port = _free_port()
    out = logs / f"serve-{port}.log"
    proc = _spawn(_cli("serve", "--data-dir", str(data), "--port", str(port), *extra), out)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        async with httpx.AsyncClient(base_url=url, timeout=5) as client:
            while True:
                assert proc.poll() is None, f"serve exited with {proc.returncode}:\n{out.read_text()[-3000:]}"
                with contextlib.suppress(httpx.TransportError):
                    resp = await client.get("/v1/health")
                    body = resp.json() if resp.status_code == 200 else {}
                    if body.get("deciders_ready") and body.get("coordinator_ready"):
                        break
                assert time.monotonic() < deadline, f"serve not healthy:\n{out.read_text()[-3000:]}"
                await asyncio.sleep(0.2)
        yield url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.to_thread(proc.wait, 30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
    # uvicorn re-raises SIGTERM once it stopped cleanly: -15 is a clean exit too.
    assert code in (0, -signal.SIGTERM), f"serve exited with {code}:\n{out.read_text()[-3000:]}"


class Load:
    """Clients submitting tasks to a server without pause, in every pool, until stopped."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.acknowledged = 0
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, workers: int = 6) -> None:
        async with httpx.AsyncClient(base_url=self.url, timeout=30) as client:
            for pool in POOLS:
                for n in range(3):
                    body = {"agent_id": f"{pool}-a{n}", "name": f"a{n}", "capabilities": ["text"],
                            "capacity": 2, "pool": pool}
                    assert (await client.post("/v1/agents", json=body)).status_code == 202
        self._tasks = [asyncio.create_task(self._worker(w)) for w in range(workers)]

    async def _worker(self, w: int) -> None:
        pool = POOLS[w % len(POOLS)]
        async with httpx.AsyncClient(base_url=self.url, timeout=30) as client:
            for i in itertools.count():
                if self._stop.is_set():
                    return
                body = {"task_id": f"{pool}-t-{w}-{i}", "type": "x", "required_capabilities": ["text"],
                        "pool": pool}
                resp = await client.post("/v1/tasks", json=body)
                assert resp.status_code == 202, resp.text
                self.acknowledged += 1

    async def until(self, acknowledged: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.acknowledged < acknowledged:
            for t in self._tasks:
                if t.done():
                    t.result()  # a failed client fails the test here
            assert time.monotonic() < deadline, f"only {self.acknowledged} submissions acknowledged"
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)


async def _records(path: Path, topic: str, partition: int) -> list[StoredRecord]:
    log = SqliteLog(f"sqlite:///{path}")
    await log.start()
    try:
        out: list[StoredRecord] = []
        while batch := await log.read(topic, partition, len(out), 1000):
            out.extend(batch)
        return out
    finally:
        await log.close()


def _positions(read_db: Path) -> dict[tuple[str, int], int]:
    with contextlib.closing(sqlite3.connect(read_db)) as conn:
        rows = conn.execute("SELECT topic, partition, next_offset FROM positions WHERE projector = ?",
                            (MAIN_PROJECTOR,)).fetchall()
    return {(t, p): n for t, p, n in rows}


async def _caught_up(data: Path, ends: dict[int, int]) -> dict[str, list[dict[str, Any]]]:
    """The read models of ``data`` once its projector (alone: nothing decides) applied the log."""
    runner = Runner(Settings(data_dir=data), deciders=False, coordinator=False)
    await runner.start()
    try:
        await runner.ready()
        for p, end in ends.items():
            if end:
                assert await runner.store.wait_for_position("events", p, end - 1, timeout=30)
        return await dump_tables(runner.store)
    finally:
        await runner.stop()


async def _rebuilt(log_db: Path, read_db: Path) -> dict[str, list[dict[str, Any]]]:
    log = SqliteLog(f"sqlite:///{log_db}")
    store = ProjectionStore(f"sqlite+aiosqlite:///{read_db}")
    await log.start()
    await store.start()
    try:
        await rebuild(log, store, "events")
        return await dump_tables(store)
    finally:
        await store.close()
        await log.close()


async def test_a_backup_of_a_serving_deployment_restores_its_history(tmp_path: Path) -> None:
    data, restored, logs = tmp_path / "data", tmp_path / "restored", tmp_path / "logs"
    logs.mkdir()
    async with _serving(data, logs, "--partitions", "2") as url:
        load = Load(url)
        await load.start()
        await load.until(150)
        # The backup is taken by another process while the clients keep submitting.
        before = load.acknowledged
        code, output = await _run("backup", "create", "during-load", "--data-dir", str(data))
        assert code == 0, output
        assert load.acknowledged > before, "the service accepted nothing while the backup ran"
        await load.until(load.acknowledged + 100)
        await load.stop()
    path = data / "backups" / "during-load"
    manifest = read_manifest(path)
    assert f"backup during-load created at {path}" in output
    assert {f.name for f in manifest.files} == {"log.db", "read.db"}
    assert manifest.source.log == "sqlite" and manifest.format_version == 1
    ends: dict[tuple[str, int], int] = {(p.topic, p.partition): p.end_offset for p in manifest.partitions}
    assert set(ends) == {("commands", 0), ("commands", 1), ("events", 0), ("events", 1)}
    # Writes went on after the copy: the source is longer than the backup in every partition.
    for (topic, p), end in ends.items():
        assert 0 < end < len(await _records(data / "log.db", topic, p)), (topic, p)

    # Restore, in a process of its own, as an operator would.
    code, output = await _run("backup", "restore", "during-load", "--data-dir", str(restored),
                              "--from", str(data / "backups"))
    assert code == 0, output
    assert f"agentbus serve --data-dir {restored}" in output

    # The restored log is the source log up to the recorded ends, record for record, byte for byte.
    for (topic, p), end in ends.items():
        source = await _records(data / "log.db", topic, p)
        copy = await _records(restored / "log.db", topic, p)
        assert len(copy) == end
        assert copy == source[:end], f"{topic}[{p}] differs from the source"
        assert all(r.chain is not None for r in copy)
    log = SqliteLog(f"sqlite:///{restored / 'log.db'}")
    await log.start()
    try:
        for topic in ("commands", "events"):
            report = await verify_log(log, topic)
            assert report.ok, report.to_json()
            heads = {p.partition: p.chain_head for p in manifest.partitions if p.topic == topic}
            assert report.heads == heads
    finally:
        await log.close()

    # The read models were copied first: never ahead of the log copy.
    positions = _positions(restored / "read.db")
    assert positions == {(q.topic, q.partition): q.next_offset for q in manifest.positions}
    assert positions and all(n <= ends[key] for key, n in positions.items())
    # Once the projector resumed and caught up, they equal a rebuild from the restored log.
    event_ends = {p: end for (topic, p), end in ends.items() if topic == "events"}
    live = await _caught_up(restored, event_ends)
    assert_same_tables(live, await _rebuilt(restored / "log.db", tmp_path / "rebuilt.db"),
                       ("restored and caught up", "rebuilt from the restored log"))
    assert live["tasks"], "the restored read models hold no tasks"

    # The service starts on the restored directory and answers from it.
    async with _serving(restored, logs) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        resp = await client.get("/v1/agents", params={"pool": "blue"})
        assert resp.status_code == 200
        assert {a["agent_id"] for a in resp.json()["items"]} == {"blue-a0", "blue-a1", "blue-a2"}


# --- what verify and restore refuse ---------------------------------------------------------------


@pytest.fixture
def backed_up(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A data directory written by a real Runner and a backup of it: (data dir, backup dir)."""
    data = tmp_path / "data"
    asyncio.run(produce(data))
    result = invoke("backup", "create", "b1", "--data-dir", str(data))
    assert result.exit_code == 0, result.output
    yield data, data / "backups" / "b1"


def _flip(path: Path, at: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[at] ^= 0x01
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("name", ["log.db", "read.db"])
def test_verify_names_a_file_with_a_flipped_byte(backed_up: tuple[Path, Path], name: str) -> None:
    data, path = backed_up
    ok = invoke("backup", "verify", "b1", "--data-dir", str(data))
    assert ok.exit_code == 0, ok.output
    assert "backup b1 verifies" in ok.output and "chain of events" in ok.output
    _flip(path / name, (path / name).stat().st_size // 2)
    bad = invoke("backup", "verify", "b1", "--data-dir", str(data))
    assert bad.exit_code == 1
    assert f"FAIL  file {name}: sha256" in bad.output
    assert f"backup b1 does not verify: file {name}" in bad.output
    as_json = invoke("backup", "verify", "b1", "--data-dir", str(data), "--json")
    checks = orjson.loads(as_json.output.splitlines()[0])["checks"]
    assert [c["subject"] for c in checks if not c["ok"]] == [f"file {name}"]




def test_verify_finds_an_altered_record_whose_file_hash_was_fixed_up(backed_up: tuple[Path, Path]) -> None:
    """Only the chain can tell: the record's value and checksum are changed, and the manifest rehashed."""
    data, path = backed_up
    with contextlib.closing(sqlite3.connect(path / "log.db")) as conn:
        value, codec = conn.execute("SELECT value, codec FROM records WHERE topic = 'events' AND "
                                    "\"partition\" = 0 AND \"offset\" = 3").fetchone()
        assert codec == 0  # stored raw: small
        altered = bytes(value).replace(b'"specversion":"1.0"', b'"specversion":"1.1"')
        assert altered != value
        conn.execute("UPDATE records SET value = ?, crc = ? WHERE topic = 'events' AND \"partition\" = 0 "
                     "AND \"offset\" = 3", (altered, zlib.crc32(altered)))
        conn.commit()
    rehash(path, "log.db")
    result = invoke("backup", "verify", "b1", "--data-dir", str(data))
    assert result.exit_code == 1
    assert "ok    file log.db" in result.output
    assert "FAIL  chain of events: events[0]@3" in result.output


def test_verify_compares_the_chain_heads_with_the_manifest(backed_up: tuple[Path, Path]) -> None:
    data, path = backed_up
    manifest = read_manifest(path)
    head = manifest.of("events")[0].chain_head
    assert head is not None

    def other_head(raw: dict[str, Any]) -> None:
        for p in raw["partitions"]:
            if p["topic"] == "events":
                p["chain_head"] = link(bytes.fromhex(head), b"x").hex()

    rewrite_manifest(path, other_head)
    result = invoke("backup", "verify", "b1", "--data-dir", str(data))
    assert result.exit_code == 1
    assert f"FAIL  chain of events: partition 0: head {head}" in result.output


def test_restore_refuses_a_non_empty_directory_and_a_damaged_backup(backed_up: tuple[Path, Path],
                                                                    tmp_path: Path) -> None:
    _, path = backed_up
    target = tmp_path / "target"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    refused = invoke("backup", "restore", "b1", "--data-dir", str(target), "--from", str(path.parent))
    assert refused.exit_code == 1 and "is not empty" in refused.output
    assert [p.name for p in target.iterdir()] == ["keep.txt"]

    _flip(path / "log.db", 100)
    fresh = tmp_path / "fresh"
    damaged = invoke("backup", "restore", "b1", "--data-dir", str(fresh), "--from", str(path.parent))
    assert damaged.exit_code == 1
    assert "does not verify, nothing restored: file log.db" in damaged.output
    assert not fresh.exists()


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory written by a real Runner, shared by tests that never change it."""
    data = tmp_path_factory.mktemp("deployment") / "data"
    with pytest.MonkeyPatch.context() as monkeypatch:
        _clean(monkeypatch)
        asyncio.run(produce(data))
    return data


@pytest.mark.parametrize("name", ["", "a/b", "../up", "..", ".hidden", "_x", "a b", "a\\b", "x" * 101, "é"])
def test_bad_names_are_refused(deployment: Path, name: str) -> None:
    data = deployment
    result = invoke("backup", "create", name, "--data-dir", str(data))
    assert result.exit_code == 1 and "bad backup name" in result.output
    assert not (data / "backups").exists() or not any((data / "backups").iterdir())
    assert invoke("backup", "verify", name, "--data-dir", str(data)).exit_code == 1


def test_an_existing_name_is_refused_and_list_shows_the_backups(backed_up: tuple[Path, Path],
                                                                tmp_path: Path) -> None:
    data, path = backed_up
    before = (path / MANIFEST).read_bytes()
    again = invoke("backup", "create", "b1", "--data-dir", str(data))
    assert again.exit_code == 1 and "already exists" in again.output
    assert (path / MANIFEST).read_bytes() == before
    elsewhere = tmp_path / "elsewhere"
    assert invoke("backup", "create", "b2", "--data-dir", str(data), "--to", str(elsewhere)).exit_code == 0
    assert (elsewhere / "b2" / MANIFEST).is_file()

    listed = invoke("backup", "list", "--data-dir", str(data))
    assert listed.exit_code == 0
    header, row = listed.output.splitlines()
    assert header.split() == ["NAME", "CREATED", "SIZE", "EVENTS", "LOCATION"]
    manifest = read_manifest(path)
    assert row.split()[0] == "b1" and str(manifest.events) in row.split() and row.endswith(str(path))
    found = orjson.loads(invoke("backup", "list", "--from", str(elsewhere), "--json").output)
    assert [(b["name"], b["events"], b["location"]) for b in found] == [
        ("b2", manifest.events, str(elsewhere / "b2"))]


# --- Kafka + PostgreSQL ---------------------------------------------------------------------------


@pytest.mark.kafka
@pytest.mark.postgres
async def test_a_kafka_deployment_restores_as_an_embedded_one(tmp_path: Path) -> None:
    from services.http.app import create_app
    from tests.cluster.conftest import private_namespace, running_service, service_settings

    async with private_namespace() as cluster:
        settings = service_settings(cluster, tmp_path / "data")
        async with running_service(cluster, tmp_path / "data") as service:
            app = create_app(service=service, settings=service.settings)
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://agentbus",
                                         timeout=60) as client:
                for pool in POOLS:
                    for n in range(2):
                        body = {"agent_id": f"{pool}-a{n}", "name": f"a{n}", "capabilities": ["text"],
                                "capacity": 2, "pool": pool}
                        resp = await client.post("/v1/agents?wait=true", json=body)
                        assert resp.is_success, resp.text
                    for i in range(6):
                        body = {"task_id": f"{pool}-t{i}", "type": "x", "required_capabilities": ["text"],
                                "pool": pool}
                        resp = await client.post("/v1/tasks?wait=true", json=body)
                        assert resp.is_success, resp.text
                    resp = await client.post(f"/v1/tasks/{pool}-t0/complete?wait=true",
                                             json={"pool": pool, "result": {"ok": True}})
                    # Assigned by the coordinator meanwhile, or not yet: either way decided.
                    assert resp.status_code in (200, 409), resp.text
                live = await _quiet_tables(ProjectionStore(cluster.database))
            created = await create_backup(settings, "kafka-1")
        manifest = created.manifest
        assert manifest.source.log == "kafka" and manifest.source.topic_prefix == cluster.prefix
        assert {f.name for f in manifest.files} == {"read.db", "commands.ndjson.lz4", "events.ndjson.lz4"}
        assert manifest.events > 0
        verified = await verify_backup(created.path)
        assert verified.ok, verified.to_json()

        restored = await restore_backup(created.path, tmp_path / "restored")
    assert restored.rebuilt and restored.events == manifest.events
    assert any("not reused" in note for note in restored.notes)
    copy = ProjectionStore(f"sqlite+aiosqlite:///{tmp_path / 'restored' / 'read.db'}")
    await copy.start()
    try:
        tables = await dump_tables(copy)
    finally:
        await copy.close()
    for name in ("agents", "tasks"):
        assert_same_tables({name: live[name]}, {name: tables[name]}, ("kafka + postgres", "restored"))
    assert {t["task_id"] for t in tables["tasks"]} == {f"{p}-t{i}" for p in POOLS for i in range(6)}
    # The restored deployment runs as it was: deciders, coordinator and projector change nothing.
    runner = Runner(Settings(data_dir=tmp_path / "restored"))
    await runner.start()
    try:
        await runner.ready()
        await asyncio.sleep(1.0)
        running = await dump_tables(runner.store)
        events = sum([await runner.log.end_offset("events", p) for p in range(runner.partitions)])
    finally:
        await runner.stop()
    assert events == manifest.events, "the restored deployment decided something again"
    for name in ("agents", "tasks"):
        assert_same_tables({name: live[name]}, {name: running[name]}, ("kafka", "restored, running"))
    # The backup's own copy of the read-model tables holds them too.
    scratch = tmp_path / "read-copy.db"
    shutil.copyfile(created.path / "read.db", scratch)
    backup_copy = ProjectionStore(f"sqlite+aiosqlite:///{scratch}")
    await backup_copy.start()
    try:
        copied = await dump_tables(backup_copy)
    finally:
        await backup_copy.close()
    for name in ("agents", "tasks"):
        assert_same_tables({name: live[name]}, {name: copied[name]}, ("kafka + postgres", "backup's copy"))


async def _quiet_tables(store: ProjectionStore) -> dict[str, list[dict[str, Any]]]:
    """The read models once they stopped changing (the coordinator and projector went quiet)."""
    await store.start()
    try:
        last: dict[str, list[dict[str, Any]]] | None = None
        stable = 0
        deadline = time.monotonic() + 60
        while stable < 5:
            now = await dump_tables(store)
            stable = stable + 1 if now == last else 0
            last = now
            assert time.monotonic() < deadline, "the read models never went quiet"
            await asyncio.sleep(0.2)
        return now
    finally:
        await store.close()
