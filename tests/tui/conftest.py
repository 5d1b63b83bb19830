"""``agentbus top`` against real servers: the app served by uvicorn on a free local port (in a thread
of its own), its embedded runner on SQLite files, written to over HTTP as any client would.

The Textual app runs headless in the test's event loop (``App.run_test``); the server runs in its own
loop, so stopping and restarting it under a running app is what a user's network does to it.
"""

from __future__ import annotations

import contextlib
import gc
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from textual.pilot import Pilot
from textual.widgets import DataTable, RichLog, Static

from services.executors.standins.serving import serving
from services.http.app import create_app
from services.runtime.settings import ENV_PREFIX, Settings
from tests.waiting import ready


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings and the CLI read AGENTBUS_*; a developer's shell must not leak into the tests."""
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX) and not name.startswith(f"{ENV_PREFIX}TEST_"):
            monkeypatch.delenv(name)


@contextlib.contextmanager
def server(data: Path, port: int | None = None, **settings: Any) -> Iterator[str]:
    """Serve the API on ``data`` (SQLite log and read models) until the block ends; its base URL."""
    app = create_app(settings=Settings(data_dir=data, **settings))
    with serving(app, port=port) as url:
        ready(url)
        yield url




@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One open server for a module's tests (each test names its own agents and tasks)."""
    with server(tmp_path_factory.mktemp("top") / "data") as base:
        yield base


def write(base: str, path: str, body: dict[str, Any], token: str | None = None,
          pool: str = "default") -> dict[str, Any]:
    """POST a write and wait for its outcome; it must be accepted."""
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    resp = httpx.post(f"{base}{path}", params={"wait": "true", "pool": pool}, json=body, headers=headers,
                      timeout=30)
    assert resp.status_code < 300, resp.text
    answer: dict[str, Any] = resp.json()
    return answer


def register(base: str, agent_id: str, capacity: int = 1, capability: str = "text") -> None:
    # A long heartbeat timeout: the agent stays healthy however slow the machine is.
    write(base, "/v1/agents", {"agent_id": agent_id, "name": f"{agent_id}-name", "capabilities": [capability],
                               "capacity": capacity, "heartbeat_timeout_s": 600})


def submit(base: str, task_id: str, capability: str = "text", type_: str = "summarize") -> None:
    write(base, "/v1/tasks", {"task_id": task_id, "type": type_, "required_capabilities": [capability]})


def wait_status(base: str, task_id: str, status: str, timeout: float = 10.0) -> None:
    """Until the task's read model says ``status`` (the coordinator assigns a moment after a submit)."""
    deadline = time.monotonic() + timeout
    while httpx.get(f"{base}/v1/tasks/{task_id}", timeout=10).json().get("status") != status:
        assert time.monotonic() < deadline, f"{task_id} never became {status}"
        time.sleep(0.05)


async def until(pilot: Pilot[Any], check: Callable[[], Any], timeout: float = 10.0, what: str = "") -> Any:
    """Let the app run until ``check()`` is true; its value. Fails naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"never happened: {what or check}"
        await pilot.pause(0.05)


def rows(table: DataTable[Any]) -> list[list[str]]:
    """The rows a table shows, as text."""
    return [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)]


def keys(table: DataTable[Any]) -> list[str]:
    """The first cell (the id) of every row a table shows."""
    return [r[0] for r in rows(table)]


def tail_text(log: RichLog) -> str:
    """What the event tail shows."""
    return "\n".join(strip.text for strip in log.lines)


def status_text(status: Static) -> str:
    return str(status.content)



@pytest.fixture(autouse=True)
def _collect_garbage() -> Iterator[None]:
    """Collect after each test, so a socket or transport left open is reported against the test (the
    app's, when it quits) that left it, not whichever test the collector happens to run in."""
    yield
    gc.collect()
