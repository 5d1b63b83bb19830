"""One client process of ``agentbus bench --subscribers``: ``python -m services.bench.fanout_client
URL COUNT [--batch] [--compression lz4] [--parser simdjson|orjson]`` opens COUNT ``websockets``
connections to URL, subscribes each to ``events`` (asking for batched frames with ``--batch``, and
for lz4-compressed binary frames with ``--compression lz4``), prints ``ready``, then
reads every message it gets. It reads the last position of the run (a JSON object, partition ->
offset) from its standard input and, once every connection got there (or was lagged), prints its
figures as one JSON line: per connection its start, count, frames, lagged flag and times, and a
uniform sample of the events received: (partition, position, received at, its command's time).

How a frame is read (``--parser``):
- ``simdjson`` (the default): the frame is parsed and validated whole by simdjson (pysimdjson), and
  each message's ``type``, ``partition`` and ``position`` are read from it, so every event is
  counted and placed; the rest of an event is read only when the sample keeps it. This is what a
  consumer that routes or counts events does, at about a quarter of the CPU of building every
  event as Python objects; on one machine the clients' CPU is taken from the service's.
- ``orjson``: every message is built as Python objects (``orjson.loads``), as a consumer that uses
  whole events does.

Kept apart from the bench so that a client process imports only what a client needs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import math
import random
import sys
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import lz4.frame
import orjson
import websockets
from websockets.asyncio.client import connect

from services.runtime.memory import GC_THRESHOLDS

SAMPLES_PER_PROCESS = 50_000  # latencies each client process reports (a uniform sample)
DRAIN_TIMEOUT_S = 60.0
PARSERS = ("simdjson", "orjson")
_TIME = datetime.fromisoformat


class _Sample:
    """A uniform sample of at most ``size`` of the deliveries offered: reservoir sampling with
    skips (Li's algorithm L), so that once the reservoir is full an event costs a decrement, not a
    random number."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.values: list[tuple[int, int, float, str]] = []  # its time as sent: parsed in ``report``
        self._w = math.exp(math.log(random.random()) / size)
        self.skip = 0  # deliveries to pass over before the next one kept

    def offer(self, partition: int, position: int, at: float, event: Any) -> None:
        """Keep the delivery of ``event`` (its time is read only when the sample keeps it): call
        only when ``skip`` is 0; the caller counts ``skip`` down otherwise."""
        kept = (partition, position, at, str(event["time"]))
        if len(self.values) < self.size:
            self.values.append(kept)
            if len(self.values) == self.size:
                self._next_skip()
            return
        self.values[random.randrange(self.size)] = kept
        self._w *= math.exp(math.log(random.random()) / self.size)
        self._next_skip()

    def _next_skip(self) -> None:
        self.skip = int(math.log(random.random()) / math.log(1.0 - self._w))

    def report(self) -> list[tuple[int, int, float, float]]:
        """The sample, each event's time as seconds since the epoch."""
        return [(p, o, at, _TIME(sent).timestamp()) for p, o, at, sent in self.values]


class _Conn:
    """One subscriber: what it got, and whether it reached the run's end."""

    def __init__(self, url: str, batch: bool, compression: str, parser: str, latencies: _Sample) -> None:
        self.url, self.batch, self.compression = url, batch, compression
        self.parser, self.latencies = parser, latencies
        self.start: Any = None
        self.last: dict[int, int] = {}
        self.end: dict[int, int] | None = None
        self.count = 0
        self.frames = 0
        self.lagged = False
        self.first_at = self.last_at = 0.0
        self.ready = asyncio.Event()
        self.finished = asyncio.Event()  # reached ``end``, lagged or closed

    def reached(self) -> bool:
        end = self.end
        return end is not None and all(self.last.get(p, -1) >= o for p, o in end.items())

    async def follow(self) -> None:
        try:
            async with connect(self.url, max_size=None, ping_interval=None, open_timeout=60) as ws:
                await ws.send(json.dumps({"type": "subscribe", "channels": ["events"], "batch": self.batch,
                                          "compression": self.compression}))
                self.start = orjson.loads(await ws.recv())["after"]
                self.ready.set()
                await self._read(ws)
        finally:
            self.ready.set()
            self.finished.set()

    async def _read(self, ws: Any) -> None:
        parse = _parse(self.parser)
        with contextlib.suppress(websockets.ConnectionClosed):
            while True:
                # The frame's bytes, parsed as they came; a binary frame is lz4 (compression "lz4").
                raw = await ws.recv(decode=False)
                at = time.time()
                self.frames += 1
                doc = parse(raw if raw[:1] == b"{" else lz4.frame.decompress(raw))
                more = self._take(doc["messages"] if doc["type"] == "batch" else (doc,), at)
                del doc  # simdjson: a parser's document is released before its next parse
                if not more:
                    return

    def _take(self, messages: Any, at: float) -> bool:
        """Count and place every event of one frame; False once the connection was lagged."""
        sample, last = self.latencies, self.last
        count, more = 0, True
        for m in messages:
            kind = m["type"]
            if kind == "event":
                count += 1
                p, position = m["partition"], m["position"]
                last[p] = position
                if sample.skip:
                    sample.skip -= 1
                else:
                    sample.offer(p, position, at, m["event"])
            elif kind == "lagged":
                self.lagged, more = True, False
                break
        if count:
            self.count += count
            self.first_at = self.first_at or at
            self.last_at = at
            if self.end is not None and self.reached():
                self.finished.set()
        return more

    def report(self) -> dict[str, Any]:
        return {"start": self.start, "count": self.count, "frames": self.frames, "lagged": self.lagged,
                "last": self.last, "first_at": self.first_at, "last_at": self.last_at}


def _parse(parser: str) -> Callable[[bytes], Any]:
    if parser == "orjson":
        return orjson.loads
    global _SIMDJSON
    if _SIMDJSON is None:
        import simdjson  # pysimdjson

        # One parser for the process's connections: a parser holds one document at a time, and each
        # frame's is let go before the next is parsed; one parser's buffers stay in the CPU's caches
        # (50 parsers: 0.84 us an event, parsing and reading it; one: 0.55-0.68 us).
        _SIMDJSON = simdjson.Parser()
    return _SIMDJSON.parse  # type: ignore[no-any-return]


_SIMDJSON: Any = None


async def _client(url: str, count: int, batch: bool, compression: str, parser: str) -> None:
    latencies = _Sample(SAMPLES_PER_PROCESS)
    conns = [_Conn(url, batch, compression, parser, latencies) for _ in range(count)]
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
    print(json.dumps({"connections": [c.report() for c in conns], "samples": latencies.report()}), flush=True)


def main(argv: list[str] | None = None) -> None:
    args = argparse.ArgumentParser(prog="python -m services.bench.fanout_client")
    args.add_argument("url")
    args.add_argument("count", type=int)
    args.add_argument("--batch", action="store_true", help="ask for batched frames")
    args.add_argument("--compression", choices=("none", "lz4"), default="none",
                      help="ask for the frames that carry events lz4-compressed")
    args.add_argument("--parser", choices=PARSERS, default=PARSERS[0])
    ns = args.parse_args(argv)
    # As agentbus's own processes: the collector seldom runs, and never over what was built before
    # the run. A full collection walks the sample (up to 50,000 deliveries kept) in 14-46 ms, and
    # each of the process's connections waits that long: the measured latency would be the
    # client's own pause.
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    asyncio.run(_client(ns.url, ns.count, ns.batch, ns.compression, ns.parser))


if __name__ == "__main__":
    main()
