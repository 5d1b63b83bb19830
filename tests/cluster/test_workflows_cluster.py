"""Workflows on Kafka: two ``agentbus worker`` processes, one killed with SIGKILL mid-way.

32 diamond runs (1 -> 3 parallel -> 1) in 8 pools spread over 4 partitions, worked by
``agentbus agent run`` processes over the HTTP API (``serve --no-worker``). Once some runs have
ended, a second wave starts and one worker is killed at once; its partitions move to the
survivor, whose workflow reactor is rebuilt from the events. Read straight from the topics
afterwards: every run ended once, ``completed``; every step was submitted once and completed
once, never before its dependencies; a run of the killed worker's partitions spans the kill; and
the read models in PostgreSQL equal a rebuild from offset 0.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from collections import Counter
from pathlib import Path

import httpx
import orjson
import pytest

from events import open_log, partition_for
from projections import ProjectionStore, rebuild
from projections.queries import dump_tables
from tests.cluster.conftest import free_port, kafka_url, namespace, read_topic, wait_healthy
from tests.cluster.test_faults import _assigned_lines, _owns
from tests.e2e.test_workflow_crash import DEPENDS, DIAMOND
from tests.tables import assert_same_tables

pytestmark = [pytest.mark.slow, pytest.mark.kafka, pytest.mark.postgres]

POOLS = [f"p{i}" for i in range(8)]
PER_POOL = 4


async def _ended(client: httpx.AsyncClient) -> int:
    n = 0
    for pool in POOLS:
        after = -1
        while True:
            page = (await client.get("/v1/events", params={"after": after, "limit": 1000, "pool": pool,
                                                            "type": "WorkflowEnded"})).json()
            n += len(page["items"])
            if page["next_after"] == after:
                break
            after = page["next_after"]
    return n


async def test_kill_9_a_worker_mid_way_through_workflows_loses_and_repeats_nothing(
    tmp_path: Path, logs: Path
) -> None:
    async with namespace(kafka_url(), partitions=4) as cluster:
        assert {partition_for(p, 4) for p in POOLS} == {0, 1, 2, 3}
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        api = cluster.serve(port, logs / "serve.log", "--no-worker")
        w1 = cluster.worker(logs / "worker1.log", AGENTBUS_SESSION_TIMEOUT="6")
        cluster.worker(logs / "worker2.log", AGENTBUS_SESSION_TIMEOUT="6")
        await wait_healthy(base, api, logs / "serve.log")
        deadline = time.monotonic() + 60
        while not (_owns(logs / "worker1.log") and _owns(logs / "worker2.log")):
            assert time.monotonic() < deadline, "the two workers never shared the partitions"
            await asyncio.sleep(0.5)
        for pool in POOLS:
            cluster.spawn(["agent", "run", "--url", base, "--name", f"a-{pool}", "--id", f"a-{pool}",
                           "--pool", pool, "-c", "x", "--capacity", "4", "--work-s", "0.2",
                           "--heartbeat-s", "2"], logs / f"agent-{pool}.log")
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:

            async def start(runs: range) -> None:
                for pool in POOLS:
                    for i in runs:
                        resp = await client.post("/v1/commands", json={
                            "type": "StartWorkflow", "command_id": f"start-{pool}-{i}", "pool": pool,
                            "data": {"workflow_id": f"{pool}-run{i}", "definition": DIAMOND,
                                     "inputs": {"n": i}}})
                        assert resp.status_code == 202, resp.text

            # Two waves: the first shows the workers deciding and assigning; the second starts just
            # before the kill, so runs are mid-way at it however fast the first wave went (checked
            # below from the records' timestamps, not from a poll that a fast cluster outruns).
            await start(range(PER_POOL // 2))
            total = len(POOLS) * PER_POOL
            deadline = time.monotonic() + 120
            while await _ended(client) < 4:
                assert time.monotonic() < deadline, "no run ended before the kill"
                await asyncio.sleep(0.2)
            await start(range(PER_POOL // 2, PER_POOL))
            owned = _assigned_lines(logs / "worker1.log")[-1]
            killed_at_ms = time.time() * 1000
            os.killpg(w1.pid, signal.SIGKILL)
            w1.wait()
            deadline = time.monotonic() + 180
            while (done := await _ended(client)) < total:
                assert time.monotonic() < deadline, f"only {done} of {total} runs ended after the kill"
                await asyncio.sleep(0.5)
        for proc in cluster.procs[3:]:  # the agents: deregister, then the log goes quiet
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)

        log = open_log(cluster.kafka)
        await log.start()
        try:
            # Quiet: the topics' ends stay put over three looks (the agents' deregistrations landed).
            last: list[int] = []
            for _ in range(60):
                topics = (cluster.commands, cluster.events)
                ends = [await log.end_offset(t, p) for t in topics for p in range(4)]
                stable = ends == last
                last = ends
                if stable:
                    break
                await asyncio.sleep(1.5)
            records = await read_topic(log, cluster.events)
            events = [orjson.loads(r.value) for recs in records.values() for r in recs]
            # Mid-way: in a partition the killed worker owned, a run started before the kill and
            # ended after it (record timestamps are the appending producer's clock, this machine's).
            w1_partitions = [int(p) for p in re.findall(r"\d+", owned.rsplit("events", 1)[1])]
            assert w1_partitions, owned
            spans: dict[str, list[float]] = {}
            for p in w1_partitions:
                for r in records[p]:
                    ev = orjson.loads(r.value)
                    if ev["type"] in ("WorkflowStarted", "WorkflowEnded"):
                        spans.setdefault(ev["data"]["workflow_id"], []).append(r.timestamp_ms)
            straddled = [run for run, (started, *ended) in spans.items()
                         if started < killed_at_ms and ended and ended[-1] > killed_at_ms]
            assert straddled, f"no run of the killed worker's partitions {w1_partitions} was mid-way"
            ends = Counter((ev["data"]["workflow_id"], ev["data"]["status"]) for ev in events
                           if ev["type"] == "WorkflowEnded")
            runs = [f"{pool}-run{i}" for pool in POOLS for i in range(PER_POOL)]
            assert ends == Counter({(run, "completed"): 1 for run in runs})
            steps = {f"{run}.{s}" for run in runs for s in DEPENDS}
            submitted = Counter(ev["data"]["task_id"] for ev in events if ev["type"] == "TaskSubmitted")
            completed = Counter(ev["data"]["task_id"] for ev in events if ev["type"] == "TaskCompleted")
            assert submitted == Counter(dict.fromkeys(steps, 1)), "a step was submitted twice or never"
            assert completed == Counter(dict.fromkeys(steps, 1)), "a step completed twice or never"
            done_steps: set[str] = set()
            for ev in events:  # a pool's events are in order within its partition
                if ev["type"] == "TaskCompleted":
                    done_steps.add(ev["data"]["task_id"])
                elif ev["type"] == "TaskSubmitted":
                    run, step = ev["data"]["task_id"].rsplit(".", 1)
                    early = [d for d in DEPENDS[step] if f"{run}.{d}" not in done_steps]
                    assert not early, f"{run}.{step} was submitted before {early} completed"
            # The read models (live, PostgreSQL) equal a rebuild from offset 0.
            live = ProjectionStore(cluster.database)
            fresh = ProjectionStore(cluster.database, schema="rebuilt")
            await live.start()
            await fresh.start()
            try:
                for p, recs in (await read_topic(log, cluster.events)).items():
                    if recs:
                        ok = await live.wait_for_position(cluster.events, p, recs[-1].offset, timeout=60)
                        assert ok, f"projector of partition {p} never reached {recs[-1].offset}"
                await rebuild(log, fresh, cluster.events)
                assert_same_tables(await dump_tables(live), await dump_tables(fresh))
            finally:
                await live.close()
                await fresh.close()
        finally:
            await log.close()
