"""Workflows survive ``kill -9`` of ``agentbus serve``: 50 diamond runs, killed mid-way, restarted.

Four ``agentbus agent run`` processes work the steps over HTTP. 50 runs of a diamond (1 -> 3
parallel -> 1, parameters read upstream results) start; once some have finished and others are
mid-way, the server is killed with SIGKILL and restarted on the same data directory. Then every
run must finish, and the log files (read directly, server stopped) must show: each run ended once,
``completed``; each step was submitted once (one TaskSubmitted, its derived command id once in
the commands topic) and completed once; no step was submitted before its dependencies completed;
its templates saw its upstream's result; and the read models equal a rebuild from offset 0.
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
from typing import Any

import httpx
import pytest

from events import open_log
from events.codec import from_record
from projections import ProjectionStore, rebuild
from projections.queries import dump_tables
from tests.e2e.test_crash import REPO, Server, _lagging, _positions

pytestmark = pytest.mark.slow

RUNS = 50
# Each step's work: long enough that the 50 runs' last steps (16 agent slots) end over several polls
# of the test, not all between two of them (with 20 ms they could, and the kill found none mid-way).
WORK_S = "0.1"
FINISH_TIMEOUT_S = 120.0
DIAMOND = {
    "name": "diamond",
    "max_parallel": 3,
    "tasks": [
        {"name": "start", "required_capabilities": ["x"], "parameters": {"n": "{{ inputs.n }}"}},
        {"name": "left", "required_capabilities": ["x"], "depends_on": ["start"],
         "parameters": {"from": "{{ tasks.start.status }}"}},
        {"name": "middle", "required_capabilities": ["x"], "depends_on": ["start"]},
        {"name": "right", "required_capabilities": ["x"], "depends_on": ["start"]},
        {"name": "join", "required_capabilities": ["x"], "depends_on": ["left", "middle", "right"],
         "parameters": {"seen": "{{ tasks.left.status }}/{{ tasks.middle.status }}/"
                                "{{ tasks.right.status }}"}},
    ],
    "inputs": {"n": {"type": "integer", "required": True}},
}
DEPENDS = {s["name"]: s.get("depends_on", []) for s in DIAMOND["tasks"]}  # type: ignore[index,union-attr]


def _agents(url: str, root: Path) -> list[subprocess.Popen[bytes]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTBUS_")}
    procs = []
    for i in range(4):
        args = [sys.executable, "-m", "services.cli", "agent", "run", "--url", url, "--name", f"w{i}",
                "--id", f"w{i}", "-c", "x", "--capacity", "4", "--work-s", WORK_S, "--heartbeat-s", "1"]
        with open(root / f"agent-{i}.log", "wb") as out:
            procs.append(subprocess.Popen(args, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                          start_new_session=True))
    return procs


def _stop(agents: list[subprocess.Popen[bytes]]) -> None:
    for proc in agents:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in agents:
        proc.wait(timeout=30)


async def _statuses(client: httpx.AsyncClient) -> Counter[str]:
    """How many runs are in each final status, from the events (over HTTP)."""
    ended: Counter[str] = Counter()
    after = -1
    while True:
        page = (await client.get("/v1/events", params={"after": after, "limit": 1000,
                                                        "type": "WorkflowEnded"})).json()
        for item in page["items"]:
            ended[item["data"]["status"]] += 1
        if page["next_after"] == after:
            return ended
        after = page["next_after"]


async def _read(data: Path, topic: str) -> list[Any]:
    log = open_log(f"sqlite:///{data}/log.db")
    await log.start()
    try:
        out = []
        for p in range(await log.partitions(topic)):
            offset = 0
            while batch := await log.read(topic, p, offset, 1000):
                out += [from_record(r) for r in batch]
                offset = batch[-1].offset + 1
        return out
    finally:
        await log.close()


async def test_kill_9_mid_way_through_50_workflows_loses_and_repeats_nothing(tmp_path: Path) -> None:
    server = Server(tmp_path)
    agents: list[subprocess.Popen[bytes]] = []
    try:
        await server.start_healthy()
        agents = _agents(server.url, tmp_path)
        async with httpx.AsyncClient(base_url=server.url, timeout=10.0) as client:
            for i in range(RUNS):
                resp = await client.post("/v1/commands", json={
                    "type": "StartWorkflow", "command_id": f"start-{i}",
                    "data": {"workflow_id": f"run{i}", "definition": DIAMOND, "inputs": {"n": i}}})
                assert resp.status_code == 202, resp.text
            # Kill as soon as some runs are done: others are mid-way then.
            deadline = time.monotonic() + FINISH_TIMEOUT_S
            while not (done_before := sum((await _statuses(client)).values())):
                assert time.monotonic() < deadline, f"no run finished\n{server.diagnostics()}"
                await asyncio.sleep(0.05)
        server.send_kill()
        await server.reap_kill()
        assert done_before < RUNS, "every run finished before the kill: nothing was mid-way"
        await server.start_healthy()
        async with httpx.AsyncClient(base_url=server.url, timeout=10.0) as client:
            deadline = time.monotonic() + FINISH_TIMEOUT_S
            while sum((ended := await _statuses(client)).values()) < RUNS:
                assert time.monotonic() < deadline, f"only {dict(ended)} ended\n{server.diagnostics()}"
                await asyncio.sleep(0.2)
        _stop(agents)
        # Quiet: decider, coordinator and projector at the ends of the log (the check rebuilds).
        deadline = time.monotonic() + 60
        previous = None
        while (lagging := _lagging(snap := await asyncio.to_thread(_positions, server.data))) \
                or snap != previous:
            assert time.monotonic() < deadline, f"not quiet: {lagging}\n{server.diagnostics()}"
            previous = snap
            await asyncio.sleep(0.25)
    finally:
        _stop(agents)
        await server.stop()

    events = await _read(server.data, "events")
    commands = await _read(server.data, "commands")
    ends = Counter((env.data.workflow_id, env.data.status) for env in events if env.type == "WorkflowEnded")
    assert ends == Counter({(f"run{i}", "completed"): 1 for i in range(RUNS)})
    submitted = Counter(env.data.task_id for env in events if env.type == "TaskSubmitted")
    completed = Counter(env.data.task_id for env in events if env.type == "TaskCompleted")
    steps = {f"run{i}.{s}" for i in range(RUNS) for s in DEPENDS}
    assert submitted == Counter(dict.fromkeys(steps, 1)), "a step was submitted twice or never"
    assert completed == Counter(dict.fromkeys(steps, 1)), "a step completed twice or never"
    # Every step's derived command is in the commands topic (a reactor rebuilt after the kill may
    # append one again if it was lost in flight: the decider decides each id once, as checked above).
    step_commands = {env.commandid for env in commands if (env.commandid or "").startswith("wf:")}
    assert step_commands == {f"wf:run{i}:{s}:1" for i in range(RUNS) for s in DEPENDS}
    done: set[str] = set()
    for env in events:
        if env.type == "TaskCompleted":
            done.add(env.data.task_id)
        elif env.type == "TaskSubmitted":
            run, step = env.data.task_id.split(".", 1)
            early = [d for d in DEPENDS[step] if f"{run}.{d}" not in done]
            assert not early, f"{env.data.task_id} was submitted before {early} completed"
            if step == "join":
                assert env.data.data["parameters"] == {"seen": "completed/completed/completed"}
            if step == "start":
                assert env.data.data["parameters"] == {"n": int(run[3:])}
    # The read models equal a rebuild from offset 0.
    live = ProjectionStore(f"sqlite+aiosqlite:///{server.data}/read.db")
    fresh = ProjectionStore(f"sqlite+aiosqlite:///{tmp_path}/rebuilt.db")
    log = open_log(f"sqlite:///{server.data}/log.db")
    await log.start()
    try:
        await live.start()
        await fresh.start()
        await rebuild(log, fresh)
        assert await dump_tables(fresh) == await dump_tables(live)
    finally:
        await live.close()
        await fresh.close()
        await log.close()
