"""One client process of ``agentbus bench --subscribers``: ``python -m services.bench.fanout_client
URL COUNT [batch]`` opens COUNT ``websockets`` connections to URL, subscribes each to ``events``
(asking for batched frames with ``batch``), prints
``ready``, then parses every message it gets. It reads the last position of the run (a JSON object,
partition -> offset) from its standard input and, once every connection got there (or was lagged),
prints its figures as one JSON line: per connection its start, count, lagged flag and times, and a
uniform sample of the events received: (partition, position, received at, its command's time).

Kept apart from the bench so that a client process imports only what a client needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import sys
import time
from datetime import datetime
from typing import Any

import orjson
import websockets

SAMPLES_PER_PROCESS = 50_000  # latencies each client process reports (a uniform sample)
DRAIN_TIMEOUT_S = 60.0
_TIME = datetime.fromisoformat


class _Sample:
    """A uniform sample of at most ``size`` of the values offered (reservoir sampling)."""

    def __init__(self, size: int) -> None:
        self.size, self.seen = size, 0
        self.values: list[tuple[int, int, float, float]] = []

    def offer(self, partition: int, position: int, at: float, event: dict[str, Any]) -> None:
        """Keep the delivery of ``event`` (its time is parsed only when the sample keeps it)."""
        self.seen += 1
        if len(self.values) < self.size:
            j = len(self.values)
            self.values.append((0, 0, 0.0, 0.0))
        else:
            j = random.randrange(self.seen)
            if j >= self.size:
                return
        self.values[j] = (partition, position, at, _TIME(event["time"]).timestamp())


class _Conn:
    """One subscriber: what it got, and whether it reached the run's end."""

    def __init__(self, url: str, batch: bool, latencies: _Sample) -> None:
        self.url, self.batch, self.latencies = url, batch, latencies
        self.start: Any = None
        self.last: dict[int, int] = {}
        self.end: dict[int, int] | None = None
        self.count = 0
        self.lagged = False
        self.first_at = self.last_at = 0.0
        self.ready = asyncio.Event()
        self.finished = asyncio.Event()  # reached ``end``, lagged or closed

    def reached(self) -> bool:
        end = self.end
        return end is not None and all(self.last.get(p, -1) >= o for p, o in end.items())

    async def follow(self) -> None:
        try:
            async with websockets.connect(self.url, max_size=None, ping_interval=None, open_timeout=60) as ws:
                await ws.send(json.dumps({"type": "subscribe", "channels": ["events"], "batch": self.batch}))
                self.start = orjson.loads(await ws.recv())["after"]
                self.ready.set()
                await self._read(ws)
        finally:
            self.ready.set()
            self.finished.set()

    async def _read(self, ws: Any) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for raw in ws:
                m = orjson.loads(raw)
                at = time.time()
                for one in m["messages"] if m["type"] == "batch" else (m,):
                    if not self._take(one, at):
                        return

    def _take(self, m: dict[str, Any], at: float) -> bool:
        kind = m["type"]
        if kind == "event":
            self.count += 1
            p, position = m["partition"], m["position"]
            self.last[p] = position
            self.first_at = self.first_at or at
            self.last_at = at
            self.latencies.offer(p, position, at, m["event"])
            if self.end is not None and self.reached():
                self.finished.set()
        elif kind == "lagged":
            self.lagged = True
            return False
        return True

    def report(self) -> dict[str, Any]:
        return {"start": self.start, "count": self.count, "lagged": self.lagged, "last": self.last,
                "first_at": self.first_at, "last_at": self.last_at}


async def _client(url: str, count: int, batch: bool) -> None:
    latencies = _Sample(SAMPLES_PER_PROCESS)
    conns = [_Conn(url, batch, latencies) for _ in range(count)]
    tasks = [asyncio.create_task(c.follow()) for c in conns]
    for c in conns:
        await c.ready.wait()
    print("ready", flush=True)
    end = {int(p): o for p, o in json.loads(await asyncio.to_thread(sys.stdin.readline)).items()}
    for c in conns:
        c.end = end
        if c.reached():
            c.finished.set()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(DRAIN_TIMEOUT_S):
            for c in conns:
                await c.finished.wait()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    print(json.dumps({"connections": [c.report() for c in conns], "samples": latencies.values}), flush=True)


if __name__ == "__main__":
    asyncio.run(_client(sys.argv[1], int(sys.argv[2]), sys.argv[3:] == ["batch"]))
