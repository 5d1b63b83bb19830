"""Executors are at least once towards the outside world and exactly once in the log, across
``kill -9`` of the executor process.

``agentbus serve`` runs on a SQLite data directory; ``agentbus executor run`` hosts an http_api
executor on the same log, in a process of its own, against a real local HTTP server that counts
requests per ``Idempotency-Key`` and applies each key once. Tasks whose calls take a while are
submitted; with calls in flight the executor is killed with SIGKILL and started again (before its
heartbeat timeout, so its agent still holds the tasks). Then every task must complete, and:
the server saw a repeat of at least one key (the run the crash interrupted was called again, with
the same key) and applied every key exactly once; the log holds exactly one TaskCompleted per task.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from services.executors.host import idempotency_key
from services.executors.standins.http_target import create_app
from services.executors.standins.serving import serving
from tests.e2e.test_crash import REPO, Server
from tests.e2e.test_workflow_crash import _read

pytestmark = pytest.mark.slow

TASKS = 12
CAPACITY = 4
CALL_S = 1.5
FINISH_TIMEOUT_S = 90.0


def _executor(root: Path, data: Path, config: Path, run: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTBUS_")}
    args = [sys.executable, "-m", "services.cli", "executor", "run", "--config", str(config),
            "--data-dir", str(data)]
    with open(root / f"executor-{run}.log", "wb") as out:
        return subprocess.Popen(args, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


async def _counts(target: httpx.AsyncClient) -> dict[str, dict[str, int]]:
    return (await target.get("/_counts")).json()  # type: ignore[no-any-return]


def _sent(counts: dict[str, dict[str, int]], keys: dict[str, str]) -> int:
    return sum(counts["requests"].get(k, 0) for k in keys.values())


async def _completed(client: httpx.AsyncClient) -> Counter[str]:
    done: Counter[str] = Counter()
    after = -1
    while True:
        page = (await client.get("/v1/events", params={"after": after, "limit": 1000,
                                                        "type": "TaskCompleted"})).json()
        for item in page["items"]:
            done[item["data"]["task_id"]] += 1
        if page["next_after"] == after:
            return done
        after = page["next_after"]


async def test_kill_9_of_the_executor_repeats_calls_with_their_key_and_records_each_result_once(
        tmp_path: Path) -> None:
    server = Server(tmp_path)
    executor: subprocess.Popen[bytes] | None = None
    with serving(create_app()) as target_url:
        config = tmp_path / "executors.yaml"
        config.write_text(
            "agents:\n"
            "  - name: api\n"
            "    type: http_api\n"
            f"    endpoint: {target_url}\n"
            f"    capacity: {CAPACITY}\n"
            "    capabilities: [http]\n"
            "    heartbeat_interval: 5\n")
        try:
            await server.start_healthy()
            executor = _executor(tmp_path, server.data, config, 1)
            async with (httpx.AsyncClient(base_url=server.url, timeout=10.0) as client,
                        httpx.AsyncClient(base_url=target_url, timeout=10.0) as target):
                deadline = time.monotonic() + 60
                while (await client.get("/v1/agents/api")).status_code != 200:
                    assert executor.poll() is None, (tmp_path / "executor-1.log").read_text()
                    assert time.monotonic() < deadline, "the executor never registered"
                    await asyncio.sleep(0.1)
                for i in range(TASKS):
                    resp = await client.post("/v1/tasks", json={
                        "task_id": f"t{i}", "type": "call", "required_capabilities": ["http"],
                        "data": {"action": "POST",
                                 "parameters": {"path": "/slow", "query": {"seconds": str(CALL_S)},
                                                "body": {"n": i}}}})
                    assert resp.status_code == 202, resp.text
                # Kill while calls are in flight: the server has seen some, and not answered them all.
                keys = {f"t{i}": idempotency_key("default", f"t{i}", 1) for i in range(TASKS)}
                while _sent(await _counts(target), keys) < 2:
                    assert time.monotonic() < deadline, "no call reached the server"
                    await asyncio.sleep(0.02)
                os.killpg(executor.pid, signal.SIGKILL)
                executor.wait(timeout=10)
                assert sum((await _completed(client)).values()) < TASKS, "all done before the kill"
                executor = _executor(tmp_path, server.data, config, 2)
                deadline = time.monotonic() + FINISH_TIMEOUT_S
                while sum((await _completed(client)).values()) < TASKS:
                    assert executor.poll() is None, (tmp_path / "executor-2.log").read_text()
                    assert time.monotonic() < deadline, (tmp_path / "executor-2.log").read_text()
                    await asyncio.sleep(0.2)
                counts = await _counts(target)
        finally:
            if executor is not None and executor.poll() is None:
                os.killpg(executor.pid, signal.SIGTERM)
                executor.wait(timeout=30)
            if server.alive():
                await server.stop()
    requests = {t: counts["requests"].get(k, 0) for t, k in keys.items()}
    applied = {t: counts["applied"].get(k, 0) for t, k in keys.items()}
    assert all(n == 1 for n in applied.values()), applied
    assert all(n >= 1 for n in requests.values()), requests
    assert any(n >= 2 for n in requests.values()), f"no call was repeated after the kill: {requests}"
    events = await _read(server.data, "events")
    completed = Counter(x.data.task_id for x in events if x.type == "TaskCompleted")
    assert completed == Counter({t: 1 for t in keys}), completed
    assigned = Counter(x.data.task_id for x in events if x.type == "TaskAssigned")
    assert assigned == Counter({t: 1 for t in keys}), "a task was assigned twice: the crash cost an attempt"
