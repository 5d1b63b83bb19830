"""``agentbus bench --subscribers N``: fan-out of the live streams to N WebSocket subscribers.

The service, its hub and its HTTP API run in this process on a fresh log (uvicorn on a local port,
on the same event loop, as ``agentbus serve`` runs them); the task scenario's load (submit, assign,
complete, record a cost: 4 commands per task) is offered at a steady rate; N ``websockets``
clients, spread over a few processes of their own, subscribe to ``events`` before the load starts
and parse every message they get. Reported: events/s delivered per subscriber and overall, the
latency from an event's append (its record's timestamp, in milliseconds) to a subscriber receiving
it (p50, p99, max), the same from its command's append (the time its events carry), how many
subscribers received every event, and how many were lagged. Measures; never asserts.

The clients are ``services.bench.fanout_client`` processes.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import os
import resource
import subprocess
import sys
import time
from typing import Any

from services.bench.scenario import (
    Fleet,
    Target,
    _register,
    _task,
    peak_rss_mb,
    percentile,
    projector_cpu_s,
    projector_peak_rss_mb,
)
from services.runtime.ingest import command_envelope
from services.runtime.settings import Settings

__all__ = ["bench_subscribers"]

# How long the load's last tasks may take to be completed once it was offered (a saturated
# service falls behind the offered rate; what it did do is reported).
FLEET_TIMEOUT_S = 300.0



# --- the run ----------------------------------------------------------------------------------------


def _spawn(url: str, counts: list[int], batch: bool, compression: str,
           parser: str) -> list[subprocess.Popen[str]]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    args = [sys.executable, "-m", "services.bench.fanout_client", url]
    options = ["--parser", parser, "--compression", compression, *(["--batch"] if batch else [])]
    return [subprocess.Popen([*args, str(n), *options], env=env, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True) for n in counts if n]


async def _serve(app: Any) -> tuple[Any, asyncio.Task[None], int]:
    import uvicorn

    from services.executors.standins.serving import free_port

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Any:  # the bench process keeps its own signals
            yield

    port = free_port()
    server = Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on",
                                   access_log=False, ws_per_message_deflate=False))  # as `agentbus serve`
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("the bench's server did not start")
        await asyncio.sleep(0.01)
    return server, task, port


async def bench_subscribers(settings: Settings, subscribers: int, *, rate: float, seconds: float,
                            processes: int, batch: bool = True, compression: str = "lz4",
                            parser: str = "simdjson", agents: int = 100) -> dict[str, Any]:
    """N subscribers on ``events`` while ``rate`` commands/s of the task scenario run for ``seconds``."""
    from services.http.app import create_app

    target = Target(settings)
    await target.start()
    app = create_app(service=target.service)
    server, serving, port = await _serve(app)
    procs: list[subprocess.Popen[str]] = []
    try:
        pool = "bench"
        await _register(target, agents, pool, "a")
        per = [subscribers // processes + (1 if i < subscribers % processes else 0) for i in range(processes)]
        procs = _spawn(f"ws://127.0.0.1:{port}/ws/v1/events", per, batch, compression, parser)
        for proc in procs:
            assert proc.stdout is not None
            line = await asyncio.to_thread(proc.stdout.readline)
            if line.strip() != "ready":
                raise RuntimeError(f"a subscriber process did not start: {line!r}")
        fleet = Fleet(target, expected=max(1, int(rate / 4 * seconds)))
        part = target.partition_of(pool)
        start = await target.log.end_offset(target.topics.events, part)
        fleet_task = asyncio.create_task(fleet.run(part, start))
        started_wall, started, cpu = time.time(), time.perf_counter(), _cpu()
        projector_cpu = projector_cpu_s(target.service)
        n, tick, interval = 0, started, 4 / rate * 10  # 10 tasks (40 commands) per tick
        submits: set[asyncio.Task[None]] = set()
        while n < fleet.expected:
            envs = [command_envelope(_task(j, "t"), pool=pool, source="urn:agentbus:bench")
                    for j in range(n, min(fleet.expected, n + 10))]
            submits.add(asyncio.create_task(target.submit_many(envs)))
            n += len(envs)
            tick += interval
            await asyncio.sleep(max(0.0, tick - time.perf_counter()))
        await asyncio.gather(*submits)
        offered_s = time.perf_counter() - started
        with contextlib.suppress(TimeoutError):  # a saturated service: report what it did do
            await asyncio.wait_for(fleet.done.wait(), timeout=FLEET_TIMEOUT_S)
        fleet_task.cancel()
        run_s = time.perf_counter() - started
        ends = await _ends(target)
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(json.dumps(ends) + "\n")
            proc.stdin.flush()
        reports = [json.loads((await asyncio.to_thread(p.communicate))[0].splitlines()[-1]) for p in procs]
        server_cpu = _cpu() - cpu
        projector_now = projector_cpu_s(target.service)
        clients_cpu = _cpu(resource.RUSAGE_CHILDREN)  # the client processes, reaped just now
        result = await _summary(target, reports, started_wall, offered_s, subscribers, processes, rate, fleet)
        frames = app.state.frames
        return {**result, "batch": batch, "compression": compression, "parser": parser,
                "frames_built": frames.built, "frames_reused": frames.reused, "tasks_completed": fleet.costs,
                "run_seconds": round(run_s, 3), "server_cpu_s": round(server_cpu, 2),
                "projector_cpu_s": (round(projector_now - projector_cpu, 2)
                                    if projector_now is not None and projector_cpu is not None else None),
                "clients_cpu_s": round(clients_cpu, 2),
                "clients_cpu_us_per_event": round(clients_cpu / max(result["delivered"], 1) * 1e6, 3),
                "cpus": os.cpu_count()}
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        server.should_exit = True
        await serving
        await target.stop()


def _cpu(who: int = resource.RUSAGE_SELF) -> float:
    """CPU seconds (user and system) used so far by this process, or by its reaped children."""
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


async def _ends(target: Target) -> dict[int, int]:
    """The last record's offset of every partition that has one."""
    ends = {}
    for p in range(target.partitions):
        end = await target.log.end_offset(target.topics.events, p)
        back = await target.log.read(target.topics.events, p, max(0, end - 16), 16) if end else []
        if back:
            ends[p] = back[-1].offset
    return ends


async def _positions(target: Target) -> tuple[dict[int, list[int]], dict[tuple[int, int], int]]:
    """Every event's offset per partition, and when each was appended (ms since the epoch)."""
    out: dict[int, list[int]] = {}
    appended: dict[tuple[int, int], int] = {}
    for p in range(target.partitions):
        offsets: list[int] = []
        offset = 0
        while batch := await target.log.read(target.topics.events, p, offset, 5000):
            offsets += [r.offset for r in batch]
            appended.update(((p, r.offset), r.timestamp_ms) for r in batch)
            offset = batch[-1].offset + 1
        out[p] = offsets
    return out, appended


def _after(positions: dict[int, list[int]], cursor: Any) -> int:
    """How many events lie after ``cursor`` (a stream's JSON cursor)."""
    start = cursor if isinstance(cursor, dict) else {"0": cursor}
    return sum(len(offs) - bisect.bisect_right(offs, int(start.get(str(p), -1)))
               for p, offs in positions.items())


async def _summary(target: Target, reports: list[dict[str, Any]], started_wall: float, offered_s: float,
                   subscribers: int, processes: int, rate: float, fleet: Fleet) -> dict[str, Any]:
    positions, appended = await _positions(target)
    conns = [c for r in reports for c in r["connections"]]
    complete = sum(1 for c in conns if not c["lagged"] and c["count"] == _after(positions, c["start"]))
    rates = [c["count"] / (c["last_at"] - started_wall) for c in conns
             if c["count"] and c["last_at"] > started_wall]
    events = _after(positions, conns[0]["start"]) if conns else 0
    samples = [x for r in reports for x in r["samples"]]
    # From the event's append (the record's timestamp: milliseconds) to its delivery.
    latencies = [(at - appended[(p, o)] / 1000) * 1000 for p, o, at, _ in samples if (p, o) in appended]
    # From the command's append (its envelope time, which its events carry) to the event's delivery.
    end_to_end = [(at - command_at) * 1000 for _, _, at, command_at in samples]
    last_at = max((c["last_at"] for c in conns), default=started_wall)
    delivered = sum(c["count"] for c in conns)
    frames = sum(c["frames"] for c in conns)
    return {
        "broker": target.settings.broker.split("?")[0],
        "subscribers": subscribers,
        "subscriber_processes": processes,
        "offered_commands_per_s": rate,
        "commands": fleet.expected * 4,
        "load_seconds": round(offered_s, 3),
        "events": events,
        "events_appended_per_s": round(events / max(offered_s, 1e-9), 1),
        "delivered_per_subscriber_per_s": round(sum(rates) / len(rates), 1) if rates else 0.0,
        "delivered_per_subscriber_min_per_s": round(min(rates), 1) if rates else 0.0,
        "delivered_per_s": round(delivered / max(last_at - started_wall, 1e-9), 1),
        "delivered": delivered,
        "frames_per_subscriber_per_s": round(frames / max(len(conns), 1) / max(last_at - started_wall, 1e-9),
                                             1),
        "events_per_frame": round(delivered / max(frames, 1), 1),
        "complete_subscribers": complete,
        "lagged": sum(1 for c in conns if c["lagged"]),
        "latency_p50_ms": round(percentile(latencies, 50), 3),
        "latency_p99_ms": round(percentile(latencies, 99), 3),
        "latency_max_ms": round(max(latencies, default=0.0), 3),
        "command_to_delivery_p50_ms": round(percentile(end_to_end, 50), 3),
        "command_to_delivery_p99_ms": round(percentile(end_to_end, 99), 3),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "projector_peak_rss_mb": projector_peak_rss_mb(target.service),  # read before the stop
    }
