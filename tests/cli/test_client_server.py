"""The client commands find the server ``serve`` was told about, and every flag reaches its command.

One real ``agentbus serve`` listens on the port ``AGENTBUS_PORT`` names; the commands run with that
variable alone (no ``--url``) and every field each write takes is read back from the log over HTTP.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from services.cli import main
from tests.e2e.test_crash import REPO, Server

pytestmark = pytest.mark.slow


class PortFromEnvironment(Server):
    """``agentbus serve`` told its port by ``AGENTBUS_PORT`` only."""

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.runs += 1
        env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTBUS_")}
        env.update(AGENTBUS_DATA=str(self.data), AGENTBUS_PORT=str(self.port))
        with open(self._log(self.runs, "out"), "wb") as out, open(self._log(self.runs, "err"), "wb") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "services.cli", "serve"], cwd=REPO, env=env,
                                         stdout=out, stderr=err)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    server = PortFromEnvironment(tmp_path)
    try:
        asyncio.run(server.start_healthy())
        yield server
        asyncio.run(server.stop())
    finally:
        server.cleanup()


def cli(server: Server, *args: str) -> Any:
    """Run a command with nothing but ``AGENTBUS_PORT`` saying where the server is."""
    result = CliRunner().invoke(main, list(args), env={"AGENTBUS_PORT": str(server.port)},
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def events_of(server: Server, subject: str) -> list[dict[str, Any]]:
    """The subject's events, read back over HTTP."""
    resp = httpx.get(f"{server.url}/v1/events", params={"subject": subject, "limit": 1000}, timeout=10)
    assert resp.status_code == 200, resp.text
    return list(resp.json()["items"])


def one(server: Server, subject: str, type_: str) -> dict[str, Any]:
    [event] = [e for e in events_of(server, subject) if e["type"] == type_]
    return event


def wait_assigned(server: Server, task_id: str) -> None:
    deadline = time.monotonic() + 30
    while not any(e["type"] == "TaskAssigned" for e in events_of(server, task_id)):
        assert time.monotonic() < deadline, f"{task_id} was never assigned"
        time.sleep(0.05)


def test_the_port_setting_alone_points_the_client_at_the_server(server: Server) -> None:
    listed = cli(server, "agent", "list")
    assert '"items"' in listed.output


def test_every_field_of_the_agent_and_task_commands_reaches_the_log(server: Server) -> None:
    cli(server, "agent", "register", "bot", "-c", "text", "-c", "code", "--capacity", "3", "--kind", "llm",
        "--id", "a1", "--heartbeat-timeout", "45", "--weight", "2.5", "--metadata", '{"zone": "eu"}',
        "--retry", '{"max_attempts": 3}', "--breaker-threshold", "4", "--breaker-cooldown", "12",
        "--command-id", "reg-1")
    registered = one(server, "a1", "AgentRegistered")
    assert registered["commandid"] == "reg-1"
    assert registered["data"] == {
        "agent_id": "a1", "name": "bot", "kind": "llm", "capabilities": ["text", "code"], "capacity": 3,
        "heartbeat_timeout_s": 45.0, "metadata": {"zone": "eu"}, "weight": 2.5,
        "retry": {"max_attempts": 3, "strategy": "exponential", "base_delay_s": 1.0, "max_delay_s": 300.0,
                  "multiplier": 2.0, "jitter": 0.0},
        "breaker_threshold": 4, "breaker_cooldown_s": 12.0}

    cli(server, "agent", "heartbeat", "a1", "--load", "0.5", "--cpu", "1.5", "--memory", "256",
        "--queue", "2", "--command-id", "hb-1")
    beat = one(server, "a1", "AgentHeartbeatReceived")
    assert beat["commandid"] == "hb-1"
    assert beat["data"] == {"agent_id": "a1", "load": 0.5, "cpu": 1.5, "memory": 256.0, "queue": 2}

    # --retry gives the policy as JSON; the single-field flags override its fields.
    cli(server, "task", "submit", "summarize", "--id", "t1", "--priority", "7", "-r", "text",
        "--data", '{"doc": 1}', "--strategy", "weighted", "--timeout", "120",
        "--retry", '{"max_attempts": 2, "base_delay_s": 5}', "--max-attempts", "4",
        "--retry-strategy", "linear", "--retry-max-delay", "60", "--retry-jitter", "0.25",
        "--action", "GET", "--parameters", '{"path": "/x"}', "--agent", "bot", "--command-id", "sub-1")
    submitted = one(server, "t1", "TaskSubmitted")
    assert submitted["commandid"] == "sub-1"
    data = submitted["data"]
    assert (data["type"], data["priority"], data["required_capabilities"], data["data"]) == (
        "summarize", 7, ["text"], {"doc": 1})
    assert (data["strategy"], data["timeout_s"]) == ("weighted", 120.0)
    assert data["retry"] == {"max_attempts": 4, "strategy": "linear", "base_delay_s": 5.0,
                             "max_delay_s": 60.0, "multiplier": 2.0, "jitter": 0.25}
    # Pinned by name: the event holds the agent's id.
    assert (data["action"], data["parameters"], data["agent_id"]) == ("GET", {"path": "/x"}, "a1")
    cli(server, "task", "submit", "x", "--id", "t2", "-r", "nobody", "--retry-base-delay", "3")
    assert one(server, "t2", "TaskSubmitted")["data"]["retry"]["base_delay_s"] == 3.0

    wait_assigned(server, "t1")
    cli(server, "task", "start", "t1", "--agent", "a1", "--command-id", "start-1")
    assert one(server, "t1", "TaskStarted")["commandid"] == "start-1"
    cli(server, "task", "complete", "t1", "--agent", "a1", "--result", '{"ok": true}',
        "--command-id", "done-1")
    completed = one(server, "t1", "TaskCompleted")
    assert completed["commandid"] == "done-1" and completed["data"]["result"] == {"ok": True}
    cli(server, "task", "cancel", "t2", "--reason", "no agent", "--command-id", "cancel-2")
    cancelled = one(server, "t2", "TaskCancelled")
    assert cancelled["commandid"] == "cancel-2" and cancelled["data"]["reason"] == "no agent"

    cli(server, "task", "submit", "x", "--id", "t3", "-r", "code")
    wait_assigned(server, "t3")
    cli(server, "task", "fail", "t3", "--agent", "a1", "--error", "boom", "--error-code", "http_status:404",
        "--not-retryable", "--command-id", "fail-3")
    failed = one(server, "t3", "TaskFailed")
    assert failed["commandid"] == "fail-3" and failed["data"]["error"] == "boom"
    assert (failed["data"]["error_code"], failed["data"]["retryable"]) == ("http_status:404", False)

    cli(server, "cost", "record", "--agent", "a1", "--model", "gpt-4o", "--input-tokens", "10",
        "--output-tokens", "5", "--cost-usd", "0.5", "--task", "t1", "--id", "c1", "--command-id", "cost-1")
    cost = one(server, "c1", "CostRecorded")
    assert cost["commandid"] == "cost-1"
    fields = ("agent_id", "task_id", "model", "input_tokens", "output_tokens")
    assert {k: cost["data"][k] for k in fields} == {
        "agent_id": "a1", "task_id": "t1", "model": "gpt-4o", "input_tokens": 10, "output_tokens": 5}
    assert cost["data"]["cost_usd"] == pytest.approx(0.5)

    cli(server, "agent", "remove", "a1", "--reason", "done", "--command-id", "leave-1")
    left = one(server, "a1", "AgentDeregistered")
    assert left["commandid"] == "leave-1" and left["data"]["reason"] == "done"
