"""Exactly-once effect under faults, with real processes on a real broker (issue 3, item 4).

* Two ``agentbus worker`` processes share 4 partitions under HTTP load (``agentbus serve
  --no-worker``); one is killed with SIGKILL mid-load. Its partitions move to the survivor.
* A broker of its own (not the shared one) is stopped and restarted under load; clients retry
  with the same Idempotency-Key until they are acknowledged.

Afterwards, read straight from the topics and the database: every acknowledged (2xx, or a
decided 404/409) command has its events exactly once (one contiguous run per command id, and no
command id has two), sequences per pool are 1..N without gaps or repeats, and the read models in
PostgreSQL equal a rebuild from offset 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from events import open_log, partition_for
from events.log import EventLog
from projections import MAIN_PROJECTOR, ProjectionStore, rebuild
from projections.queries import dump_tables
from tests.cluster.conftest import (
    REPO,
    Cluster,
    free_port,
    kafka_url,
    namespace,
    outcome_runs,
    read_topic,
    wait_healthy,
)
from tests.tables import assert_same_tables

pytestmark = [pytest.mark.slow, pytest.mark.kafka, pytest.mark.postgres]

CLIENTS = 12


@dataclass
class Load:
    """HTTP clients sending a mix of commands, each with its own Idempotency-Key."""

    base: str
    pools: list[str]
    retry: bool = False
    acked: dict[str, int] = field(default_factory=dict)  # command id -> HTTP status
    decided: int = 0  # acknowledged with their outcome (not 202: appended, still pending)
    failed: Counter[str] = field(default_factory=Counter)
    submitted: dict[str, list[str]] = field(default_factory=dict)  # pool -> task ids
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    rng: random.Random = field(default_factory=lambda: random.Random(7))

    async def setup(self) -> None:
        async with httpx.AsyncClient(base_url=self.base, timeout=60) as c:
            for pool in self.pools:
                for i in range(3):
                    cid = f"reg-{pool}-{i}"
                    r = await c.post("/v1/agents?wait=true&timeout=30", headers={"Idempotency-Key": cid},
                                     json={"agent_id": f"{pool}-a{i}", "name": "a", "capabilities": ["c"],
                                           "capacity": 3, "pool": pool,
                                           # No heartbeat timer may fire (and write AgentUnhealthy)
                                           # while the read models are compared with a rebuild.
                                           "heartbeat_timeout_s": 3600})
                    assert r.status_code == 201, r.text
                    self.acked[cid] = r.status_code

    def _next(self, client: int, n: int) -> tuple[str, str, dict[str, Any]]:
        pool = self.pools[(client + n) % len(self.pools)]
        roll = self.rng.random()
        tasks = self.submitted.setdefault(pool, [])
        if roll < 0.55 or not tasks:
            tid = f"t{client}-{n}"
            tasks.append(tid)
            return pool, "/v1/tasks", {"task_id": tid, "type": "x", "required_capabilities": ["c"],
                                       "pool": pool}
        if roll < 0.85:
            tid = tasks.pop(self.rng.randrange(len(tasks)))
            return pool, f"/v1/tasks/{tid}/complete", {"pool": pool}
        return pool, "/v1/costs", {"agent_id": f"{pool}-a0", "model": "gpt-4o-mini", "input_tokens": 100,
                                   "output_tokens": 10, "pool": pool}

    async def client(self, i: int) -> None:
        async with httpx.AsyncClient(base_url=self.base, timeout=15) as c:
            n = 0
            while not self.stop.is_set():
                n += 1
                cid = f"c{i}-{n}"
                _, path, body = self._next(i, n)
                while True:
                    try:
                        r = await c.post(f"{path}?wait=true&timeout=10", json=body,
                                         headers={"Idempotency-Key": cid})
                    except httpx.HTTPError as exc:
                        self.failed[type(exc).__name__] += 1
                        r = None
                    if r is not None and (r.is_success or r.status_code in (404, 409)):
                        self.acked[cid] = r.status_code
                        self.decided += r.status_code != 202
                        break
                    if r is not None:
                        assert r.status_code in (503, 504), r.text  # never a 422/500: a test or server bug
                        self.failed[str(r.status_code)] += 1
                    if not self.retry or self.stop.is_set():
                        break
                    await asyncio.sleep(0.5)  # the same key again: the decider drops a double
                await asyncio.sleep(0.02)

    async def run(self) -> list[asyncio.Task[None]]:
        return [asyncio.create_task(self.client(i)) for i in range(CLIENTS)]


async def settle(log: EventLog, cluster: Cluster, acked: dict[str, int],
                 timeout: float = 150) -> dict[str, Any]:
    """Wait until every acknowledged command has an outcome and the log stops growing."""
    deadline = time.monotonic() + timeout
    last: tuple[int, ...] = ()
    stable = 0
    missing: list[str] = []
    while time.monotonic() < deadline:
        ends = tuple([await log.end_offset(cluster.events, p) for p in range(cluster.partitions)]
                     + [await log.end_offset(cluster.commands, p) for p in range(cluster.partitions)])
        stable = stable + 1 if ends == last else 0
        last = ends
        if stable >= 3:
            events = await read_topic(log, cluster.events)
            runs = outcome_runs(events)
            missing = [cid for cid in acked if cid not in runs]
            if not missing:
                return {"events": events, "runs": runs}
        await asyncio.sleep(1.5)
    raise AssertionError(f"no quiet log with every acknowledged outcome after {timeout}s; "
                         f"{len(missing)} missing, e.g. {missing[:5]}")


async def check(cluster: Cluster, log: EventLog, acked: dict[str, int]) -> dict[str, Any]:
    """The exactly-once checks; returns figures for the test to report."""
    got = await settle(log, cluster, acked)
    events, runs = got["events"], got["runs"]
    doubled = {cid: r for cid, r in runs.items() if len(r) != 1}
    assert not doubled, f"command ids with more than one outcome: {list(doubled.items())[:5]}"
    assert all(cid in runs for cid in acked)
    sequences: dict[str, list[int]] = {}
    for p, recs in events.items():
        for r in recs:
            obj = orjson.loads(r.value)
            assert partition_for(obj["pool"], cluster.partitions) == p
            sequences.setdefault(obj["pool"], []).append(obj["sequence"])
    for pool, seqs in sequences.items():
        assert seqs == list(range(1, len(seqs) + 1)), f"pool {pool}: sequence gaps or repeats"
    # The read models (live, PostgreSQL) equal a rebuild from offset 0.
    live = ProjectionStore(cluster.database)
    fresh = ProjectionStore(cluster.database, schema="rebuilt")
    await live.start()
    await fresh.start()
    try:
        for p, recs in events.items():
            if recs:
                ok = await live.wait_for_position(cluster.events, p, recs[-1].offset, timeout=60)
                assert ok, f"projector of partition {p} never reached {recs[-1].offset}"
        ends = [await log.end_offset(cluster.events, p) for p in range(cluster.partitions)]
        await rebuild(log, fresh, cluster.events)
        live_tables, fresh_tables = await dump_tables(live), await dump_tables(fresh)
        moved = [await log.end_offset(cluster.events, p) for p in range(cluster.partitions)]
        assert moved == ends, f"the log moved while the read models were compared: {ends} -> {moved}"
        assert_same_tables(live_tables, fresh_tables)
        assert MAIN_PROJECTOR
    finally:
        await live.close()
        await fresh.close()
    return {"events": sum(len(r) for r in events.values()), "commands": len(runs)}


def _assigned_lines(path: Path) -> list[str]:
    return [line for line in path.read_text(errors="replace").splitlines() if "assigned: commands" in line]


async def test_kill_9_a_worker_under_load_moves_its_partitions_and_loses_nothing(
    tmp_path: Path, logs: Path
) -> None:
    async with namespace(kafka_url(), partitions=4) as cluster:
        port = free_port()
        api_log, w1_log, w2_log = logs / "serve.log", logs / "worker1.log", logs / "worker2.log"
        api = cluster.serve(port, api_log, "--no-worker")
        w1 = cluster.worker(w1_log, AGENTBUS_SESSION_TIMEOUT="6")
        w2 = cluster.worker(w2_log, AGENTBUS_SESSION_TIMEOUT="6")
        base = f"http://127.0.0.1:{port}"
        await wait_healthy(base, api, api_log)
        pools = [f"p{i}" for i in range(8)]
        assert {partition_for(p, 4) for p in pools} == {0, 1, 2, 3}
        load = Load(base, pools)
        await load.setup()
        # Both workers own partitions before the kill.
        deadline = time.monotonic() + 60
        while not (_owns(w1_log) and _owns(w2_log)) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.5)
        assert _owns(w1_log) and _owns(w2_log), "the two workers never shared the partitions"
        clients = await load.run()
        await asyncio.sleep(6)
        before = len(load.acked)
        os.killpg(w1.pid, signal.SIGKILL)
        w1.wait()
        await asyncio.sleep(14)  # the session times out, the survivor takes over, load goes on
        load.stop.set()
        await asyncio.gather(*clients)
        after = len(load.acked) - before
        assert w2.poll() is None, w2_log.read_text()[-3000:]
        assert _assigned_lines(w2_log)[-1].endswith("commands [0, 1, 2, 3], events [0, 1, 2, 3]")
        log = open_log(cluster.kafka)
        await log.start()
        try:
            figures = await check(cluster, log, load.acked)
        finally:
            await log.close()
        print(f"kill -9: {before} acked before, {after} after; {figures}; failures {dict(load.failed)}")
        assert after > 50, "the load did not go on after the kill"


def _owns(path: Path) -> bool:
    lines = _assigned_lines(path)
    return bool(lines) and not lines[-1].endswith("commands [], events []")


@contextlib.asynccontextmanager
async def private_broker(tmp_path: Path) -> Any:
    """A Kafka broker of this test's own (ports and data dir), so stopping it hurts nobody else."""
    env = {**os.environ, "AGENTBUS_KAFKA_PORT": str(free_port()),
           "AGENTBUS_KAFKA_CONTROLLER_PORT": str(free_port()),
           "AGENTBUS_KAFKA_DATA": str(tmp_path / "kafka"), "KAFKA_HEAP_OPTS": "-Xmx512m -Xms256m"}

    def script(name: str) -> str:
        done = subprocess.run(["bash", str(REPO / "deploy" / "kafka" / name)], env=env, capture_output=True,
                              text=True, timeout=180)
        assert done.returncode == 0, f"{name} failed:\n{done.stderr[-3000:]}"
        return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""

    url = await asyncio.to_thread(script, "up.sh")
    try:
        yield url, lambda name: asyncio.to_thread(script, name)
    finally:
        await asyncio.to_thread(script, "down.sh")


async def test_the_broker_stopped_and_restarted_under_load_loses_nothing_acknowledged(
    tmp_path: Path, logs: Path
) -> None:
    kafka_url()  # skips (fails in CI) without the test setup
    async with private_broker(tmp_path) as (url, run), namespace(url, partitions=2) as cluster:
        port = free_port()
        api_log = logs / "serve.log"
        api = cluster.serve(port, api_log)  # with its in-process worker
        base = f"http://127.0.0.1:{port}"
        await wait_healthy(base, api, api_log, timeout=120)
        load = Load(base, ["p0", "p1", "p2", "p3"], retry=True)
        await load.setup()
        clients = await load.run()
        await asyncio.sleep(5)
        await run("down.sh")
        down_at, decided_at = len(load.acked), load.decided
        await asyncio.sleep(3)
        await run("up.sh")
        # The broker is back; its transaction and group coordinators load their state first, which
        # takes seconds more on a busy machine: the load must recover, within a bound. Recovered
        # means decided again: a 202 (appended, not decided within the wait) does not count.
        deadline = time.monotonic() + 120
        while load.decided <= decided_at + 50 and time.monotonic() < deadline:  # noqa: ASYNC110 (the clients count; no event to wait on)
            await asyncio.sleep(0.5)
        await asyncio.sleep(3)
        load.stop.set()
        await asyncio.wait_for(asyncio.gather(*clients), 120)
        assert api.poll() is None, api_log.read_text()[-3000:]
        assert load.decided > decided_at + 50, f"the deciders did not recover: {dict(load.failed)}"
        log = open_log(cluster.kafka)
        await log.start()
        try:
            figures = await check(cluster, log, load.acked)
        finally:
            await log.close()
        print(f"broker restart: {down_at} acked before the stop, {len(load.acked)} in all; {figures}; "
              f"failures {dict(load.failed)}")
