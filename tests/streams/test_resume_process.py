"""Resuming a live stream across a real server restart and a ``kill -9``: ``agentbus serve`` runs
as a process (tests/e2e's ``Server``), tasks are written all along over HTTP, and a ``websockets``
client that reconnects with the last position it received gets every event of the log exactly
once, in order: none lost at a restart or a kill, none repeated after one."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from events import open_log
from tests.e2e.test_crash import Server

pytestmark = pytest.mark.slow


class Client:
    """Follows ``events`` from the start cursor it was given, reconnecting with its position."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.after: Any = None
        self.start: Any = None  # where the first subscribe began: the stream is everything after it
        self.got: list[tuple[int, int, str]] = []  # (partition, position, event id)
        self.connections = 0

    async def follow(self) -> None:
        while True:
            try:
                url = self.server.url.replace("http://", "ws://") + "/ws/v1/events"
                async with websockets.connect(url, open_timeout=2) as ws:
                    self.connections += 1
                    await ws.send(json.dumps({"type": "subscribe", "channels": ["events"],
                                              "after": self.after}))
                    async for raw in ws:
                        m = json.loads(raw)
                        if m["type"] == "subscribed" and self.after is None:
                            self.after = self.start = m["after"]
                        elif m["type"] == "event":
                            self.got.append((m["partition"], m["position"], m["event"]["id"]))
                            self.after = m["position"]
            except (OSError, websockets.ConnectionClosed, websockets.InvalidHandshake, TimeoutError):
                await asyncio.sleep(0.1)  # the server is restarting: come back with the position


async def _write(server: Server, prefix: str, stop: asyncio.Event) -> int:
    """Submit tasks until ``stop``, riding out the server's absences; the count acknowledged."""
    done = 0
    async with httpx.AsyncClient(timeout=5) as client:
        while not stop.is_set():
            try:
                resp = await client.post(f"{server.url}/v1/tasks", json={
                    "task_id": f"{prefix}-{done}", "type": "x", "required_capabilities": ["text"]})
                if resp.status_code == 202:
                    done += 1
            except httpx.TransportError:
                await asyncio.sleep(0.05)
    return done


async def _events_on_log(data: Path) -> list[tuple[int, int, str]]:
    log = open_log(f"sqlite:///{data}/log.db")
    await log.start()
    try:
        out = []
        offset = 0
        while batch := await log.read("events", 0, offset, 1000):
            out += [(0, r.offset, r.id or "") for r in batch]
            offset = batch[-1].offset + 1
        return out
    finally:
        await log.close()


async def test_a_reconnecting_client_gets_every_event_once_across_restart_and_kill(tmp_path: Path) -> None:
    server = Server(tmp_path)
    client = Client(server)
    try:
        await server.start_healthy()
        async with httpx.AsyncClient(base_url=server.url, timeout=5) as http:
            resp = await http.post("/v1/agents", json={"agent_id": "a1", "name": "a1",
                                                       "capabilities": ["text"], "capacity": 5})
            assert resp.status_code == 202
        follower = asyncio.create_task(client.follow())
        async with asyncio.timeout(10):
            while client.after is None:  # noqa: ASYNC110 - its first subscribe is answered
                await asyncio.sleep(0.02)
        stop = asyncio.Event()
        writers = [asyncio.create_task(_write(server, f"w{i}", stop)) for i in range(3)]
        await asyncio.sleep(1.0)
        await server.stop()  # SIGTERM: a clean stop, the connection closes with 1012
        await server.start_healthy()
        await asyncio.sleep(1.0)
        server.send_kill()  # SIGKILL: nothing runs, whatever was in flight is cut off
        await server.reap_kill()
        await server.start_healthy()
        await asyncio.sleep(1.0)
        stop.set()
        written = sum(await asyncio.gather(*writers))
        assert written > 0
        # Quiet: the client has caught up with the end of the log.
        async with asyncio.timeout(15):
            while True:
                await asyncio.sleep(0.5)
                end = len(await _events_on_log(server.data))
                if client.got and client.got[-1][1] == end - 1:
                    break
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower
        await server.stop()
        on_log = [x for x in await _events_on_log(server.data) if x[1] > client.start]
        assert client.got == on_log, "an event was lost or repeated"
        assert client.connections >= 3
    finally:
        server.cleanup()
