"""A real embedded Runner on temporary SQLite files, and an HTTP client talking to the app in-process."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.http.app import create_app
from services.runtime.embedded import Runner
from services.runtime.settings import Settings


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings read AGENTBUS_* variables; a developer's shell must not leak into the tests."""
    for name in (
        "AGENTBUS_BROKER",
        "AGENTBUS_DATABASE",
        "AGENTBUS_DATA",
        "AGENTBUS_PRICES",
        "AGENTBUS_PARTITIONS",
        "AGENTBUS_SCALING_WEBHOOK",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
async def runner(tmp_path: Path) -> AsyncIterator[Runner]:
    """A started runner (deciders, coordinator, projector) that has rebuilt its state."""
    r = Runner(Settings(data_dir=tmp_path))
    await r.start()
    try:
        await r.ready()
        yield r
    finally:
        await r.stop()


@pytest.fixture
async def client(runner: Runner) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client bound to the app over ASGI (no sockets)."""
    transport = httpx.ASGITransport(app=create_app(service=runner))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        yield c


async def last_position(resp: httpx.Response) -> int:
    """The position of the last event of an applied (wait=true) write."""
    return int(resp.json()["events"][-1]["position"])


async def poll(
    client: httpx.AsyncClient, path: str, until: Any, *, timeout: float = 5.0, **params: Any
) -> dict[str, Any]:
    """GET ``path`` until ``until(json)`` is true (the coordinator works asynchronously)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        resp = await client.get(path, params=params)
        if resp.status_code == 200 and until(resp.json()):
            return dict(resp.json())
        if loop.time() > deadline:
            raise AssertionError(
                f"{path} never satisfied the condition; last: {resp.status_code} {resp.text}"
            )
        await asyncio.sleep(0.02)


async def event_count(client: httpx.AsyncClient, pool: str = "default") -> int:
    """How many events the pool has on the log (through the API)."""
    resp = await client.get("/v1/events", params={"pool": pool, "limit": 1000})
    assert resp.status_code == 200
    return len(resp.json()["items"])


async def end_offsets(runner: Runner) -> tuple[int, int]:
    """(commands end, events end) of partition 0: proves a bad request appended nothing."""
    return (await runner.log.end_offset("commands", 0), await runner.log.end_offset("events", 0))


async def _ends(runner: Runner) -> list[tuple[int, int]]:
    return [(await runner.log.end_offset("commands", p), await runner.log.end_offset("events", p))
            for p in range(runner.partitions)]


async def settle(runner: Runner, timeout: float = 5.0) -> None:
    """Wait until the deciders have decided every command and the coordinator has reacted to every
    event (its own reactions included): the log's ends stop moving on their own."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        ends = await _ends(runner)
        quiet = True
        for p, (commands, events) in enumerate(ends):
            if (await runner.log.committed("decider", "commands", p) < commands
                    or await runner.log.committed("coordinator", "events", p) < events):
                quiet = False
        if quiet:
            await asyncio.sleep(0.05)  # a reaction appended just as we looked is seen next round
            if await _ends(runner) == ends:
                return
        if loop.time() > deadline:
            raise AssertionError("the runner did not settle")
        await asyncio.sleep(0.02)
