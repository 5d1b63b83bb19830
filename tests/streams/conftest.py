"""The live streams' fixtures: an embedded service, and the agentbus app on it served by a real
uvicorn on a local port, in the test's own event loop (the service's log and the hub are bound
to the loop that opened them), with the hub's bounds and ping interval the test chooses.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from contracts import commands as c
from services.executors.standins.serving import free_port
from services.http.app import create_app
from services.runtime.hub import Hub
from services.runtime.ingest import command_envelope
from services.runtime.service import Service
from tests.api.runtimes import embedded


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Any:  # the test runner keeps its signals
        yield


@contextlib.asynccontextmanager
async def live(service: Service, *, ws_ping_interval: float | None = 20.0,
               **hub: Any) -> AsyncIterator[tuple[str, Hub]]:
    """Serve the app on ``service`` until the block ends; yields its base URL and its hub."""
    app = create_app(service=service)
    app.state.hub_options = hub
    port = free_port()
    server = _Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on",
                                    ws_ping_interval=ws_ping_interval, timeout_graceful_shutdown=1))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("the server did not start")
        await asyncio.sleep(0.01)
    try:
        running: Hub = app.state.hub
        yield f"127.0.0.1:{port}", running
    finally:
        server.should_exit = True
        await task


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[Service]:
    async with embedded(tmp_path) as svc:
        yield svc


async def submit(service: Service, *commands: Any, pool: str = "default") -> None:
    """Append commands and wait until each is decided and its events are on the log."""
    last: dict[int, int] = {}
    envs = [command_envelope(cmd, pool=pool) for cmd in commands]
    # One transaction for them all where the runtime can (the embedded runner's submit_many): a
    # commit per command would make each test wait on the disk.
    many = getattr(service, "submit_many", None)
    appended = await many(envs) if many is not None else [await service.submit(env) for env in envs]
    for partition, position, _ in appended:
        last[partition] = position
    for partition, position in last.items():  # a partition's commands are decided in order
        assert await service.wait_decided(partition, position, 10.0) is not None


async def settled(service: Service, quiet_s: float = 0.3) -> None:
    """Wait until nothing has been appended to the events topic for ``quiet_s`` seconds (the
    coordinator has assigned what it could)."""
    topic = service.topics.events
    ends: list[int] = []
    async with asyncio.timeout(30):
        while True:
            now = [await service.log.end_offset(topic, p) for p in range(await service.log.partitions(topic))]
            if now == ends:
                return
            ends = now
            await asyncio.sleep(quiet_s)


def register(agent_id: str, capacity: int = 100) -> c.RegisterAgent:
    return c.RegisterAgent(agent_id=agent_id, name=agent_id, capabilities=("text",), capacity=capacity)


def task(task_id: str, **fields: Any) -> c.SubmitTask:
    return c.SubmitTask(task_id=task_id, type="summarize", required_capabilities=("text",), **fields)


async def log_events(service: Service) -> list[tuple[int, int, dict[str, Any]]]:
    """Every event on the log: (partition, position, CloudEvent as stored)."""
    out = []
    topic = service.topics.events
    for p in range(await service.log.partitions(topic)):
        offset = 0
        while batch := await service.log.read(topic, p, offset, 1000):
            out += [(p, r.offset, json.loads(r.value)) for r in batch]
            offset = batch[-1].offset + 1
    return out


async def http(base: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=f"http://{base}", timeout=10)
