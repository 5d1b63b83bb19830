"""Scale-out on one machine with real processes: ``agentbus serve --scaling-webhook`` and
``agentbus agent run`` agents that register, heartbeat, work tasks and leave on a signal.

The test plays the external autoscaler: it reads ScalingDecided from the event stream and starts
as many ``agent run`` processes as decided, while the webhook delivers the same decision to a
real local HTTP endpoint.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.test_crash import REPO, Server

pytestmark = pytest.mark.slow

TASKS = 24


class Hook(BaseHTTPRequestHandler):
    """The autoscaler's webhook endpoint: records every POST."""

    received: list[tuple[str, dict[str, Any]]] = []

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length", "0"))
        Hook.received.append((self.headers.get("content-type", ""), json.loads(self.rfile.read(length))))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def hook() -> Iterator[str]:
    Hook.received = []
    httpd = HTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/scale"
    finally:
        httpd.shutdown()
        httpd.server_close()


class WebhookServer(Server):
    """``agentbus serve --scaling-webhook URL``."""

    def __init__(self, root: Path, hook: str) -> None:
        super().__init__(root)
        self.hook = hook

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.runs += 1
        args = [sys.executable, "-m", "services.cli", "serve", "--data-dir", str(self.data),
                "--port", str(self.port), "--scaling-webhook", self.hook]
        env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTBUS_")}
        with open(self._log(self.runs, "out"), "wb") as out, open(self._log(self.runs, "err"), "wb") as err:
            self.proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=out, stderr=err)


class Agent:
    """One ``agentbus agent run`` process."""

    def __init__(self, root: Path, url: str, n: int, *extra: str, work_s: float = 0.2) -> None:
        self.err_path = root / f"agent-{n}.err"
        env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTBUS_")}
        with open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "services.cli", "agent", "run", "--url", url, "--name", f"worker-{n}",
                 "--capability", "text", "--capacity", "2", "--kind", "llm", "--heartbeat-s", "0.5",
                 "--work-s", str(work_s), "--seed", str(n), *extra],
                cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=err)
        assert self.proc.stdout is not None
        self.id = self.proc.stdout.readline().decode().strip()  # the first line: its id
        assert self.id, self.stderr()

    def stderr(self) -> str:
        return self.err_path.read_bytes().decode(errors="replace")[-3000:]

    def stop(self, sig: signal.Signals) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(30)

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


async def _poll(client: httpx.AsyncClient, path: str, until: Any, what: str, timeout: float = 60.0,
                **params: Any) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        body = (await client.get(path, params=params)).json()
        if until(body):
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last: {str(body)[:2000]}")
        await asyncio.sleep(0.1)


async def test_agents_scale_out_on_decisions_and_work_every_task(tmp_path: Path, hook: str) -> None:
    server = WebhookServer(tmp_path, hook)
    agents: list[Agent] = []
    try:
        await server.start_healthy()
        async with httpx.AsyncClient(base_url=server.url, timeout=30.0) as client:
            policy = await client.put("/v1/scaling/policies", params={"wait": "true"}, json={
                "agent_kind": "llm", "min_agents": 1, "max_agents": 3, "queue_threshold": 4, "cooldown_s": 0,
                "target_utilization": 0.8})
            assert policy.status_code == 200, policy.text
            # min_agents 1 with none running: the first decision is 0 -> 1.
            await _poll(client, "/v1/events", lambda b: len(b["items"]) == 1, "the first decision",
                        type="ScalingDecided")
            # Slow enough that the first cannot finish the queue alone before the others start
            # (a new agent process takes a second or more to register on a busy machine).
            agents.append(Agent(tmp_path, server.url, 1, work_s=1.0))
            retry = {"max_attempts": 20, "strategy": "immediate"}
            for i in range(TASKS):
                resp = await client.post("/v1/tasks", json={
                    "task_id": f"t{i}", "type": "summarize", "required_capabilities": ["text"],
                    "retry": retry})
                assert resp.status_code == 202, resp.text
            # One agent of capacity 2 and a queue over the threshold: the scaler asks for more.
            # The autoscaler's job, done by hand: follow the decisions up to max_agents.
            deadline = time.monotonic() + 60
            while len(agents) < 3:
                decided = await _poll(client, "/v1/events", lambda b: any(
                    e["data"]["to_agents"] > len(agents) for e in b["items"]), "a scale-out decision",
                    type="ScalingDecided")
                target = max(e["data"]["to_agents"] for e in decided["items"])
                while len(agents) < target:
                    agents.append(Agent(tmp_path, server.url, len(agents) + 1, "--fail-rate", "0.2"))
                assert time.monotonic() < deadline, "no decision reached max_agents"

            done = await _poll(client, "/v1/tasks", lambda b: b["total"] == TASKS, "every task completed",
                               status="completed", page_size=500)
            workers = {t["agent_id"] for t in done["items"]}
            assert workers <= {a.id for a in agents} and len(workers) >= 2, workers
            costs = (await client.get("/v1/costs/summary")).json()
            assert workers <= set(costs["by_agent"]) and costs["total_usd"] > 0
            assert set(costs["by_task"]) == {f"t{i}" for i in range(TASKS)}  # a cost per task run
            # The agents' first heartbeats are written by other processes: this client holds no
            # position to read them with, so it waits for the read model to show them.
            health = (await _poll(client, "/v1/agents", lambda b: len(b["items"]) == len(agents) and all(
                a["last_heartbeat_at"] for a in b["items"]), "a heartbeat from every agent",
                status="active"))["items"]
            assert {a["agent_id"] for a in health} == {a.id for a in agents}

            # SIGTERM / SIGINT: deregister and exit 0.
            for agent, sig in zip(agents, (signal.SIGTERM, signal.SIGINT, signal.SIGTERM), strict=False):
                assert agent.stop(sig) == 0, agent.stderr()
                assert "deregistered after" in agent.stderr()
            await _poll(client, "/v1/agents", lambda b: b["items"] == [], "every agent gone", status="active")
            # None left, below min_agents: back to 1.
            stream = (await _poll(client, "/v1/events", lambda b: b["items"][-1]["data"]["from_agents"] == 0
                                  and len(b["items"]) > 1, "the decision after they left",
                                  type="ScalingDecided"))["items"]
            for _ in range(300):  # the webhook delivers them too, shortly
                if len(Hook.received) >= len(stream):
                    break
                await asyncio.sleep(0.1)
        await server.stop()
    finally:
        for agent in agents:
            agent.cleanup()
        server.cleanup()

    # The webhook got the same decisions as CloudEvents, in order, each once.
    cloud = [body for kind, body in Hook.received]
    assert {kind for kind, _ in Hook.received} == {"application/cloudevents+json"}
    expected = [(e["id"], e["type"], e["data"]) for e in stream]
    assert [(b["id"], b["type"], b["data"]) for b in cloud] == expected
    targets = [b["data"]["to_agents"] for b in cloud]
    assert targets[0] == 1 and targets[-1] == 1 and max(targets) == 3
    assert targets[:-1] == sorted(targets[:-1])  # out while the queue was long, then back to min
