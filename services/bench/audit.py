"""``agentbus bench --audit``: what the hash chain costs on append, and how fast a log verifies.

Appends the same records (the task lifecycle's events, as the decider writes them: one append per
batch of ``BATCH`` records to one partition) to two fresh SQLite logs, one chained as every log is
and one with the chain switched off (``SqliteLog.chained = False``, which exists for this
comparison only), in alternating rounds so both see the same machine; reports appends/s of each,
the ratio, and latency per append. Twice: durable (``synchronous=FULL``, the default: each append
waits for its fsync, which dominates) and without the fsync (``synchronous=normal``), where the
chain's CPU cost shows. Then verifies the chained log (``events.chain.verify_log``) and
an lz4 export of it (``verify_export``), in events/s. Measures; never asserts.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from contracts import Envelope, new_id, utcnow
from contracts.event_types import TaskAssigned, TaskCompleted, TaskSubmitted
from events import Record
from events.chain import verify_export, verify_log
from events.chain_parallel import workers
from events.codec import to_record
from events.export import export_log
from events.sqlite import SqliteLog
from services.bench.scenario import peak_rss_mb, percentile

__all__ = ["bench_audit"]

TOPIC = "events"
# Records per append: the decider appends one batch of decided commands' events at a time.
BATCH = 500
ROUNDS = 6
# Verification runs per variant; the best of each is reported (the machine's noise only slows).
VERIFY_ROUNDS = 3


def _records(n: int) -> list[Record]:
    """``n`` events of the task lifecycle (submitted, assigned with its audit, completed)."""
    out: list[Record] = []
    now = utcnow()
    agent = new_id()
    for i in range(n):
        task = f"task-{i // 3}"
        kind = i % 3
        if kind == 0:
            data: Any = TaskSubmitted(task_id=task, type="summarise", priority=5,
                                      required_capabilities=["llm"], data={"doc": f"doc-{i}"})
        elif kind == 1:
            data = TaskAssigned(task_id=task, agent_id=agent, attempt=1)
        else:
            data = TaskCompleted(task_id=task, agent_id=agent, result={"summary": "ok", "tokens": 812})
        env = Envelope(id=new_id(), type=type(data).__name__, time=now, pool="default", sequence=i + 1,
                       commandid=new_id(), data=data)
        out.append(to_record(env))
    return out


async def _append_round(log: SqliteLog, records: list[Record]) -> tuple[float, list[float]]:
    latencies: list[float] = []
    started = time.perf_counter()
    for i in range(0, len(records), BATCH):
        t = time.perf_counter()
        await log.append(TOPIC, records[i:i + BATCH], partition=0)
        latencies.append((time.perf_counter() - t) * 1000)
    return time.perf_counter() - started, latencies


async def _appends(scratch: Path, events: list[Record], mode: str) -> tuple[dict[str, Any], SqliteLog]:
    """Append ``events`` to a chained and an unchained log in ``mode``; the chained log, open."""
    per_round = max(BATCH, len(events) // ROUNDS)
    logs: dict[str, SqliteLog] = {}
    for name, chained in (("chained", True), ("unchained", False)):
        log = SqliteLog(f"sqlite:///{scratch / f'{name}-{mode}.db'}?synchronous={mode}")
        log.chained = chained
        await log.start()
        await log.ensure_topic(TOPIC, 1)
        logs[name] = log
    seconds = {"chained": 0.0, "unchained": 0.0}
    latencies: dict[str, list[float]] = {"chained": [], "unchained": []}
    try:
        for start in range(0, len(events), per_round):
            chunk = events[start:start + per_round]
            # Alternate which goes first, so neither always meets a warmer cache.
            order = ("chained", "unchained") if (start // per_round) % 2 == 0 else ("unchained", "chained")
            for name in order:
                took, lat = await _append_round(logs[name], chunk)
                seconds[name] += took
                latencies[name] += lat
    finally:
        await logs["unchained"].close()
    out: dict[str, Any] = {}
    for name in ("chained", "unchained"):
        out[f"{name}_appends_per_s"] = round(len(events) / seconds[name], 1)
        out[f"{name}_p50_ms"] = round(percentile(latencies[name], 50), 3)
        out[f"{name}_p99_ms"] = round(percentile(latencies[name], 99), 3)
    out["chain_cost"] = round(1 - out["chained_appends_per_s"] / out["unchained_appends_per_s"], 4)
    return out, logs["chained"]


async def _run(scratch: Path, records: int) -> dict[str, Any]:
    events = _records(records)
    out: dict[str, Any] = {"records": len(events), "batch": BATCH}
    durable, log = await _appends(scratch, events, "full")
    await log.close()
    fast, log = await _appends(scratch, events, "normal")
    out["durable"], out["no_fsync"] = durable, fast
    try:
        export = scratch / "events.ndjson.lz4"
        await export_log(log, TOPIC, export)
        out["verify"] = await _verify_rounds(log, export)
    finally:
        await log.close()
    out["peak_rss_mb"] = peak_rss_mb()
    return out


async def _verify_rounds(log: SqliteLog, export: Path) -> dict[str, Any]:
    """Verify the log and its export with one process and with one per core, alternating."""
    best: dict[str, float] = {}
    ok = True
    processes = workers()
    for round_ in range(VERIFY_ROUNDS):
        order = (1, processes) if round_ % 2 == 0 else (processes, 1)
        for n in order:
            report = await verify_log(log, TOPIC, processes=n)
            started = time.perf_counter()
            file_report = await asyncio.to_thread(verify_export, export, TOPIC, processes=n)
            file_seconds = time.perf_counter() - started
            ok = ok and report.ok and file_report.ok
            for name, rate in ((f"log_{n}", report.records / report.seconds),
                               (f"export_{n}", file_report.records / file_seconds)):
                best[name] = max(best.get(name, 0.0), rate)
    out: dict[str, Any] = {"ok": ok, "processes": processes, "rounds": VERIFY_ROUNDS}
    for what in ("log", "export"):
        one, many = best[f"{what}_1"], best[f"{what}_{processes}"]
        out[f"{what}_one_process_events_per_s"] = round(one, 1)
        out[f"{what}_events_per_s"] = round(many, 1)
        out[f"{what}_speedup"] = round(many / one, 2)
    return out


def bench_audit(scratch: Path, records: int) -> dict[str, Any]:
    """Run the audit benchmark in ``scratch`` (a fresh directory)."""
    return asyncio.run(_run(scratch, records))
