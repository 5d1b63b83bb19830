"""``agentbus serve`` as a real process, driven by the entity commands over HTTP."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
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

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(data: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTBUS_")}
    return {**env, "AGENTBUS_DATA": str(data)}


def _serve(data: Path, port: int, *flags: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "services.cli", "serve", "--port", str(port), *flags],
        env=_env(data),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _ready(proc: subprocess.Popen[bytes], url: str) -> None:
    """Until ``agentbus serve`` answers its health check (AssertionError with its stderr if not)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{url}/v1/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            _, err = _stop(proc)
            raise AssertionError(f"agentbus serve did not start: {err.decode()[-2000:]}")
        time.sleep(0.1)


def _stop(proc: subprocess.Popen[bytes]) -> tuple[bytes, bytes]:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    """The URL of a running ``agentbus serve`` on a fresh data directory."""
    port = _free_port()
    proc = _serve(tmp_path / "data", port)
    url = f"http://127.0.0.1:{port}"
    try:
        _ready(proc, url)
        yield url
    finally:
        _out, err = _stop(proc)
        # uvicorn shuts down gracefully, then re-raises SIGTERM so the exit status says why.
        assert proc.returncode in (0, -signal.SIGTERM), err.decode()[-2000:]
        assert b"Application shutdown complete" in err


def cli(url: str, *args: str, code: int = 0) -> Any:
    result = CliRunner().invoke(main, [*args, "--url", url], catch_exceptions=False)
    assert result.exit_code == code, result.output
    return result


def body(result: Any) -> Any:
    """The JSON the command printed (an error line may follow it)."""
    text = result.output
    return json.loads(text[: text.rindex("}") + 1])


def test_entity_commands_against_a_running_server(server: str) -> None:
    reg = body(
        cli(
            server,
            "agent",
            "register",
            "worker",
            "--capability",
            "text",
            "-c",
            "code",
            "--capacity",
            "2",
            "--kind",
            "llm",
            "--id",
            "a1",
        )
    )
    assert reg["status"] == "applied" and reg["events"][0]["type"] == "AgentRegistered"
    beat = body(cli(server, "agent", "heartbeat", "a1", "--load", "0.3"))
    assert beat["status"] == "applied"
    # A read names the write it must reflect: the read models follow the log a moment later.
    listed = body(cli(server, "agent", "list", "--min-position", str(beat["position"])))
    assert [a["agent_id"] for a in listed["items"]] == ["a1"]

    sub = body(
        cli(
            server,
            "task",
            "submit",
            "summarize",
            "--priority",
            "8",
            "--require",
            "text",
            "--data",
            '{"doc": 1}',
            "--id",
            "t1",
        )
    )
    assert sub["events"][0]["data"]["priority"] == 8 and sub["events"][0]["data"]["data"] == {"doc": 1}
    deadline = time.monotonic() + 10
    while body(cli(server, "task", "show", "t1"))["status"] != "assigned":
        assert time.monotonic() < deadline, "the coordinator never assigned t1"
        time.sleep(0.05)
    assert body(cli(server, "task", "start", "t1", "--agent", "a1"))["events"][0]["type"] == "TaskStarted"
    done = body(cli(server, "task", "complete", "t1", "--result", '{"summary": "ok"}'))
    assert done["events"][0]["data"]["result"] == {"summary": "ok"}

    body(cli(server, "task", "submit", "x", "--id", "t2", "--require", "nobody"))
    cancelled = body(cli(server, "task", "cancel", "t2", "--reason", "no"))
    assert cancelled["events"][0]["type"] == "TaskCancelled"
    listed = body(cli(server, "task", "list", "--status", "completed",
                      "--min-position", str(cancelled["position"])))
    assert [t["task_id"] for t in listed["items"]] == ["t1"]

    cost = body(cli(server, "cost", "record", "--agent", "a1", "--model", "gpt-4o", "--input-tokens", "1000"))
    assert cost["events"][0]["data"]["cost_usd"] == pytest.approx(0.0025)
    sent = body(cli(server, "send", "SetBudget", '{"scope": "agent", "scope_id": "a1", "limit_usd": 1}'))
    assert sent["events"][0]["type"] == "BudgetSet"
    assert body(cli(server, "agent", "remove", "a1", "--reason", "done"))["status"] == "applied"

    # Errors exit 1 with the server's answer and a one-line reason.
    missing = cli(server, "task", "fail", "ghost", code=1)
    assert body(missing)["code"] == "UNKNOWN_TASK" and "HTTP 404: UNKNOWN_TASK" in missing.output
    bad = cli(server, "send", "LaunchRocket", "{}", code=1)
    assert "HTTP 422" in bad.output and "LaunchRocket" in bad.output
    cli(server, "task", "show", "ghost", code=1)


def test_unreachable_server_is_a_clean_error() -> None:
    result = CliRunner().invoke(main, ["agent", "list", "--url", f"http://127.0.0.1:{_free_port()}"])
    assert result.exit_code == 1 and "cannot reach agentbus" in result.output


def test_serve_exits_1_naming_a_corrupt_record(tmp_path: Path) -> None:
    data = tmp_path / "data"
    port = _free_port()
    proc = _serve(data, port)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                r = httpx.post(f"http://127.0.0.1:{port}/v1/agents?wait=true", json={"name": "n"}, timeout=5)
                if r.status_code == 201:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.1)
    finally:
        _stop(proc)
    with sqlite3.connect(data / "log.db") as db:
        db.execute("""UPDATE records SET crc = crc + 1 WHERE topic = 'events' AND "offset" = 0""")
    proc = _serve(data, _free_port())
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        _stop(proc)
        raise
    assert proc.returncode == 1
    assert "agentbus: the service stopped: " in err.decode()
    assert "corrupt record at events[0]@0" in err.decode()


def test_serve_exits_1_when_a_worker_fails_while_serving(tmp_path: Path) -> None:
    import asyncio

    from events import Record, open_log

    data = tmp_path / "data"
    port = _free_port()
    proc = _serve(data, port)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v1/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.1)

        async def append_garbage() -> None:
            # Another process writing a record that is not an event: the projector must not skip it.
            log = open_log(f"sqlite:///{data}/log.db")
            await log.start()
            try:
                await log.append("events", [Record(key="default", value=b"not json")])
            finally:
                await log.close()

        asyncio.run(append_garbage())
        _, err = proc.communicate(timeout=30)
    finally:
        _stop(proc)
    assert proc.returncode == 1, err.decode()[-2000:]
    assert "corrupt record at events[0]@0" in err.decode()


def test_serve_lets_the_origins_it_is_given_write_from_a_browser(tmp_path: Path) -> None:
    port = _free_port()
    proc = _serve(tmp_path / "data", port, "--allow-origins", "https://ops.example.com")
    url = f"http://127.0.0.1:{port}"
    try:
        _ready(proc, url)
        task = {"task_id": "t1", "type": "x"}
        for origin, status in (("https://ops.example.com", 202), (url, 202), ("https://evil.example", 403)):
            resp = httpx.post(f"{url}/v1/tasks", json={**task, "task_id": f"t{status}{len(origin)}"},
                              headers={"origin": origin})
            assert resp.status_code == status, (origin, resp.text)
    finally:
        _stop(proc)


def test_serve_refuses_an_allowed_origin_that_is_not_one(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["serve", "--allow-origins", "ops.example.com"], env=_env(tmp_path))
    assert result.exit_code == 1, result.output  # as any invalid setting
    assert "'ops.example.com' is not an origin" in result.output
