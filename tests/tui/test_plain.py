"""``agentbus top`` without a terminal: plain text tables once (``--once``) or again and again into a
pipe; and the clear one-line failures for a server that is down and for a token it refuses, in
plain mode, at the start of the terminal UI, and in the running UI."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from textual.widgets import Static

from services.cli import main
from services.executors.standins.serving import free_port
from services.tui import ApiError, run_terminal
from services.tui.app import TopApp
from tests.auth.conftest import deployment
from tests.tui.conftest import register, status_text, submit, until, wait_status, write

REPO = Path(__file__).resolve().parents[2]
ENV_CLEAN = {name: None for name in os.environ if name.startswith("AGENTBUS_")}


def top(*args: str, **env: str) -> Result:
    return CliRunner().invoke(main, ["top", *args], env={**ENV_CLEAN, **env}, catch_exceptions=False)


def section(output: str, title: str) -> list[list[str]]:
    """The rows (split on whitespace) of the table whose title starts with ``title``, header first."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    out = []
    for line in lines[start + 1:]:
        if not line.strip():
            break
        out.append(line.split())
    return out


def test_once_prints_the_agents_the_queue_and_the_workflows(url: str) -> None:
    register(url, "po-1", 1, "plain")
    submit(url, "po-held", "plain")
    submit(url, "po-waiting", "plain")
    wait_status(url, "po-held", "assigned")
    result = top("--once", "--url", url)
    assert result.exit_code == 0, result.output
    out = result.output
    assert out.startswith(f"agentbus top  {url}  pool default  ")
    agents = section(out, "AGENTS (")
    assert agents[0] == ["agent", "name", "kind", "status", "load/slots", "circuit", "capabilities",
                         "heartbeat"]
    [agent] = [r for r in agents if r[0] == "po-1"]
    assert agent[1:6] == ["po-1-name", "generic", "active", "1/1", "closed"]
    queue = section(out, "QUEUE: open (")
    assert queue[0][:3] == ["task", "type", "status"]
    assert [r[:3] for r in queue if r[0].startswith("po-")] == [
        ["po-waiting", "summarize", "queued"], ["po-held", "summarize", "assigned"]]
    assert section(out, "WORKFLOWS (")[1] == ["(none)"]
    assert "\x1b[" not in out and all(line == line.rstrip() for line in out.splitlines())

    # The status filter and the text filter narrow the tables, and the titles say so.
    narrowed = top("--once", "--url", url, "--status", "assigned", "--filter", "po-")
    assert narrowed.exit_code == 0, narrowed.output
    queue = section(narrowed.output, "QUEUE: assigned (")
    assert [r[0] for r in queue[1:]] == ["po-held"]
    assert "filter 'po-'" in narrowed.output and [r[0] for r in section(narrowed.output, "AGENTS (")[1:]] == [
        "po-1"]


def test_without_a_terminal_the_tables_are_printed_again_and_again(url: str) -> None:
    register(url, "pp-1", 1, "piped")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTBUS_")}
    with subprocess.Popen([sys.executable, "-m", "services.cli", "top", "--url", url, "--interval", "0.5"],
                          cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          stdin=subprocess.DEVNULL, text=True) as proc:
        try:
            assert proc.stdout is not None
            headers, agent_rows, deadline = 0, 0, time.monotonic() + 30
            while headers < 3:
                line = proc.stdout.readline()
                assert line and time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
                headers += line.startswith("agentbus top  ")
                agent_rows += line.startswith("pp-1 ")
            assert agent_rows >= 2 and proc.poll() is None  # still running: it refreshes until stopped
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def test_a_server_that_is_down_is_one_clear_line() -> None:
    down = f"http://127.0.0.1:{free_port()}"
    result = top("--once", "--url", down)
    assert result.exit_code == 1
    assert result.output.startswith(f"agentbus: cannot reach agentbus at {down}: ")
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    # The terminal UI says the same before it draws anything.
    with pytest.raises(ApiError, match=f"^{re.escape(f'cannot reach agentbus at {down}: ')}"):
        run_terminal(down, "default", {}, interval=5, status_filter="open", filter_text="", limit=10)


def test_a_token_the_server_refuses_is_one_clear_line(tmp_path: Path) -> None:
    with deployment(tmp_path) as dep:
        missing = top("--once", "--url", dep.url)
        assert missing.exit_code == 1 and "Traceback" not in missing.output
        assert missing.output.startswith("agentbus: HTTP 401: a bearer token is required")
        assert "set AGENTBUS_TOKEN (or --token)" in missing.output

        wrong = top("--once", "--url", dep.url, "--token", "abt_nosuchtoken_secret")
        assert wrong.exit_code == 1 and "Traceback" not in wrong.output
        assert wrong.output.startswith("agentbus: HTTP 401: unknown API token 'nosuchtoken'")
        with pytest.raises(ApiError, match=r"^HTTP 401: unknown API token") as refused:
            run_terminal(dep.url, "default", {"Authorization": "Bearer abt_nosuchtoken_secret"}, interval=5,
                         status_filter="open", filter_text="", limit=10)
        assert refused.value.auth

        # A reader's token, from the environment as every client command takes it, may watch.
        reader = dep.token("reader")
        allowed = top("--once", "--url", dep.url, AGENTBUS_TOKEN=reader)
        assert allowed.exit_code == 0, allowed.output
        assert "AGENTS (" in allowed.output and "QUEUE: open (" in allowed.output

        # A running UI whose token stops being accepted says so on its status line.
        asyncio.run(_ui_refused(dep.url))


async def _ui_refused(url: str) -> None:
    app = TopApp(url=url, pool="default", headers={"Authorization": "Bearer abt_nosuchtoken_secret"},
                 interval=60)
    async with app.run_test(size=(200, 40)) as pilot:
        status = app.query_one("#status", Static)

        def said() -> Any:
            text = status_text(status)
            return ("panes not refreshed: HTTP 401: unknown API token" in text
                    and "disconnected: HTTP 401" in text)

        await until(pilot, said, what="both 401s on the status line")
        assert "AGENTBUS_TOKEN" in status_text(status)


def test_terminal_escapes_in_names_and_types_are_printed_as_text(url: str) -> None:
    """Names and types come from whoever writes to the bus: no escape sequence reaches the terminal
    (no colour, no window title, no cleared screen), and a newline does not split a row."""
    pool = "plain-hostile"
    write(url, "/v1/agents", {"agent_id": "ph-1", "name": "\x1b[31mRED\x1b[0m\x1b]0;pwned-title\x07",
                              "capabilities": ["hostile"], "heartbeat_timeout_s": 600}, pool=pool)
    for task_id, type_ in (("ph-clear", "\x1b[2J\x1b[Hcleared"), ("ph-split", "first\nsecond"),
                           ("ph-c1", "\x9b31mcsi\x85next\u2028line\x7f")):
        write(url, "/v1/tasks", {"task_id": task_id, "type": type_, "required_capabilities": ["nobody"]},
              pool=pool)
    result = top("--once", "--url", url, "--pool", pool)
    assert result.exit_code == 0, result.output
    out = result.output
    assert re.search("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029]", out) is None
    [agent] = section(out, "AGENTS (")[1:]
    assert agent[:2] == ["ph-1", "\\x1b[31mRED\\x1b[0m\\x1b]0;pwned-title\\x07"]
    types = {row[0]: row[1] for row in section(out, "QUEUE: open (")[1:]}
    assert types == {"ph-clear": "\\x1b[2J\\x1b[Hcleared", "ph-split": "first\\nsecond",
                     "ph-c1": "\\x9b31mcsi\\x85next\\u2028line\\x7f"}
