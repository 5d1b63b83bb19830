"""The executor benchmark (``agentbus bench --executor http``): tasks through the http_api executor
against a local HTTP server, beside raw calls to the same server (with the executor's client, and
with httpx) in the same run.

The target is the stand-in HTTP server (``services.executors.standins``) in a process of its own,
so it never shares this process's interpreter with what is measured. Reported:

- raw: ``N`` calls (``capacity`` at once) to ``GET /echo/bench``: calls/s; and at the offered
  rate (default 200/s), the call latency p50/p99. With the executor's own client (httpx2:
  ``raw_calls_per_s``, the like-for-like baseline) and with httpx (``raw_httpx_calls_per_s``);
- agentbus: ``N`` tasks submitted at once to the embedded runtime (log, decider, coordinator,
  projector) with an in-process executor host of one http_api executor of the same ``capacity``:
  tasks/s until every task completed; the ratio to each raw rate. Twice, on a fresh log each: the executor
  making its calls in the host's process, then in ``processes`` worker processes
  (``services.executors.processes``);
- added latency at the offered rate: per task, (TaskCompleted seen - SubmitTask appended) minus
  the time its call took, p50/p99: what agentbus adds to a call;
- a saturated slot's cycle, p50 of each step: AssignTask -> TaskAssigned (decided), -> the call
  begins (the host saw it), the call, -> CompleteTask (reported), -> TaskCompleted (decided), and
  a TaskCompleted -> the coordinator's next AssignTask: where the time between two calls goes.

Measures; never asserts.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import httpx2

from contracts import commands as c
from contracts import event_types as e
from contracts.executors import ExecutorConfig, ExecutorsFile
from events.cache import tail
from services.bench.scenario import Target, peak_rss_mb, percentile
from services.executors.base import Call, Executor, Outcome
from services.executors.factory import build_executor
from services.executors.host import ExecutorHost
from services.executors.standins.serving import free_port
from services.runtime.ingest import command_envelope
from services.runtime.settings import Settings

SOURCE = "urn:agentbus:bench"
PATH = "/echo/bench"


@contextlib.contextmanager
def target_process() -> Iterator[str]:
    """The stand-in HTTP server in a process of its own; yields its base URL."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "services.executors.standins", "--http", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{url}/_counts", timeout=1.0)
                break
            except httpx.TransportError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the stand-in HTTP server did not start") from None
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


async def _paced(rate: float, count: int) -> AsyncIterator[int]:
    """``0..count-1`` at ``rate`` per second (late ones at once, never bunched beyond that)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    for i in range(count):
        delay = start + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        yield i


async def raw_calls(url: str, calls: int, capacity: int, rate: float, paced: int,
                    client_module: Any = httpx2) -> dict[str, Any]:
    """The HTTP client alone (``client_module``: httpx2, the executor's, or httpx, which has the same
    API): ``calls`` at ``capacity`` at once (calls/s), then ``paced`` at ``rate`` (latency)."""
    limits = client_module.Limits(max_connections=capacity, max_keepalive_connections=capacity)
    async with client_module.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
        queue = iter(range(calls))

        async def worker() -> None:
            for i in queue:
                (await client.get(PATH, headers={"Idempotency-Key": f"raw-{i}"})).raise_for_status()

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(capacity)))
        seconds = time.perf_counter() - began
        latencies: list[float] = []

        async def one(i: int) -> None:
            t0 = time.perf_counter()
            (await client.get(PATH, headers={"Idempotency-Key": f"raw-paced-{i}"})).raise_for_status()
            latencies.append((time.perf_counter() - t0) * 1000)

        pending = [asyncio.create_task(one(i)) async for i in _paced(rate, paced)]
        await asyncio.gather(*pending)
    return {"raw_calls_per_s": round(calls / seconds, 1), "raw_p50_ms": round(percentile(latencies, 50), 2),
            "raw_p99_ms": round(percentile(latencies, 99), 2)}


@dataclass
class _Timed:
    """The executor, with when each task's call began and ended."""

    inner: Executor
    name: str = ""
    called: dict[str, float] = field(default_factory=dict)
    answered: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.name = self.inner.name

    async def start(self) -> None:
        await self.inner.start()

    async def call(self, call: Call) -> Outcome:
        self.called[call.task_id] = time.perf_counter()
        try:
            return await self.inner.call(call)
        finally:
            self.answered[call.task_id] = time.perf_counter()

    async def close(self) -> None:
        await self.inner.close()


@dataclass
class _Watch:
    """Notes when each task completed (seen on the events topic), and when each of its assignment
    and report was seen on the commands topic and decided on the events topic (a slot's cycle)."""

    done_at: dict[str, float] = field(default_factory=dict)
    failed: int = 0
    expected: set[str] = field(default_factory=set)
    left: set[str] = field(default_factory=set)  # expected, not ended yet
    all_done: asyncio.Event = field(default_factory=asyncio.Event)
    assign: dict[str, float] = field(default_factory=dict)  # AssignTask seen
    assigned: dict[str, float] = field(default_factory=dict)  # TaskAssigned seen
    report: dict[str, float] = field(default_factory=dict)  # CompleteTask seen

    async def follow(self, target: Target) -> None:
        async for batch in tail(target.log, target.cache, target.topics.events, 0, 0):
            self.saw([env.data for _, env in batch], time.perf_counter())

    def saw(self, events: list[Any], now: float) -> None:
        """Events seen at ``now``: every task's end is noted, expected yet or not (the first tasks
        may end before the last is submitted and ``until`` says which it waits for)."""
        for ev in events:
            if isinstance(ev, e.TaskAssigned):
                self.assigned.setdefault(ev.task_id, now)
            elif isinstance(ev, e.TaskCompleted | e.TaskFailed) and ev.task_id not in self.done_at:
                self.done_at[ev.task_id] = now
                self.failed += isinstance(ev, e.TaskFailed)
                self.left.discard(ev.task_id)
        # What is left, not a comparison of every expected id per batch: this runs in the process
        # whose cost is measured.
        if self.expected and not self.left:
            self.all_done.set()

    async def follow_commands(self, target: Target) -> None:
        async for batch in tail(target.log, target.cache, target.topics.commands, 0, 0):
            now = time.perf_counter()
            for _, env in batch:
                cmd = env.data
                if isinstance(cmd, c.AssignTask):
                    self.assign.setdefault(cmd.task_id, now)
                elif isinstance(cmd, c.CompleteTask):
                    self.report.setdefault(cmd.task_id, now)

    def cycle(self, ids: list[str], timed: _Timed) -> dict[str, float]:
        """A saturated slot's cycle, p50 of each step in ms, over the middle 80% of ``ids`` (the
        steady state): the assignment decided, seen by the host and called, the call, its report
        appended, decided, and the coordinator's next assignment after a completion."""
        steady = ids[len(ids) // 10: len(ids) - len(ids) // 10]

        def p50(a: dict[str, float], b: dict[str, float]) -> float:
            spans = [(b[t] - a[t]) * 1000 for t in steady if t in a and t in b]
            return round(percentile(spans, 50), 2) if spans else 0.0

        completions = sorted(self.done_at[t] for t in ids if t in self.done_at)
        reacted = []
        for t in steady:
            if t in self.assign:
                k = bisect.bisect_right(completions, self.assign[t]) - 1
                if k >= 0:
                    reacted.append((self.assign[t] - completions[k]) * 1000)
        return {"assignment_decided_ms": p50(self.assign, self.assigned),
                "seen_and_called_ms": p50(self.assigned, timed.called),
                "call_ms": p50(timed.called, timed.answered),
                "reported_ms": p50(timed.answered, self.report),
                "report_decided_ms": p50(self.report, self.done_at),
                "next_assignment_ms": round(percentile(reacted, 50), 2) if reacted else 0.0,
                "cycle_ms": p50(self.assign, self.done_at)}

    def expect(self, ids: list[str]) -> None:
        """The tasks ``until`` waits for (ends already seen count)."""
        self.expected = set(ids)
        self.left = self.expected - self.done_at.keys()

    async def until(self, ids: list[str], timeout: float = 300.0) -> None:
        self.expect(ids)
        self.all_done.clear()
        if not self.left:
            return
        await asyncio.wait_for(self.all_done.wait(), timeout)


def _submit(i: str) -> c.SubmitTask:
    return c.SubmitTask(task_id=i, type="call", required_capabilities=("http",),
                        data={"action": "GET", "parameters": {"path": PATH}})


async def executor_tasks(settings: Settings, url: str, tasks: int, capacity: int, rate: float,
                         paced: int, processes: int = 0) -> dict[str, Any]:
    """The same calls as tasks through the embedded runtime and an in-process executor host (its
    executor calling from ``processes`` worker processes, or from this one)."""
    config: ExecutorConfig = ExecutorsFile.model_validate({"agents": [{
        "name": "bench_http", "type": "http_api", "endpoint": url, "capabilities": ["http"],
        "capacity": capacity, "timeout": 30, "processes": processes}]}).agents[0]
    timed: list[_Timed] = []

    def build(cfg: ExecutorConfig) -> Executor:
        t = _Timed(build_executor(cfg))
        timed.append(t)
        return t

    target = Target(settings)
    await target.start()
    watch = _Watch()
    follower = asyncio.create_task(watch.follow(target))
    commands = asyncio.create_task(watch.follow_commands(target))
    host = ExecutorHost(target.log, [config], topics=target.topics, cache=target.cache, build=build)
    hosting = asyncio.create_task(host.run())
    try:
        await asyncio.wait_for(host.ready.wait(), 60)
        while "bench_http" not in host.view.registered:  # noqa: ASYNC110 - the view has no event to wait on
            await asyncio.sleep(0.01)
        # Saturated: every task submitted at once.
        ids = [f"sat-{i}" for i in range(tasks)]
        began = time.perf_counter()
        envs = [command_envelope(_submit(i), source=SOURCE) for i in ids]
        for k in range(0, len(envs), 1000):
            await target.submit_many(envs[k:k + 1000])
        await watch.until(ids)
        seconds = time.perf_counter() - began
        cycle = watch.cycle(ids, timed[0])
        # Paced: the added latency without queueing.
        submitted: dict[str, float] = {}
        paced_ids = [f"paced-{i}" for i in range(paced)]
        watch.expect(paced_ids)
        async for i in _paced(rate, paced):
            tid = paced_ids[i]
            submitted[tid] = time.perf_counter()
            await target.submit_many([command_envelope(_submit(tid), source=SOURCE)])
        await watch.until(paced_ids)
        called, answered = timed[0].called, timed[0].answered
        call_s = {t: answered[t] - called[t] for t in paced_ids if t in answered}
        added = [(watch.done_at[t] - submitted[t] - call_s.get(t, 0.0)) * 1000 for t in paced_ids]
        total = [(watch.done_at[t] - submitted[t]) * 1000 for t in paced_ids]
    finally:
        hosting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await hosting
        for watching in (follower, commands):
            watching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watching
        await target.stop()
    return {"processes": processes, "tasks_per_s": round(tasks / seconds, 1), "seconds": round(seconds, 2),
            "failed": watch.failed,
            "projector_peak_rss_mb": target.projector_peak_rss_mb,
            "task_p50_ms": round(percentile(total, 50), 2), "task_p99_ms": round(percentile(total, 99), 2),
            "added_p50_ms": round(percentile(added, 50), 2), "added_p99_ms": round(percentile(added, 99), 2),
            "cycle": cycle}


async def bench_executor(settings: Settings, tasks: int, *, capacity: int = 8, rate: float = 200.0,
                         paced_seconds: float = 5.0, processes: int = 1) -> dict[str, Any]:
    """Raw calls (httpx2, the executor's client, and httpx) and the http_api executor against the
    same stand-in server, in one run: the executor calling from the host's process, then from
    ``processes`` worker processes."""
    paced = max(1, int(rate * paced_seconds))
    runs = []
    with target_process() as url:
        raw = await raw_calls(url, tasks, capacity, rate, paced)
        named = await raw_calls(url, tasks, capacity, rate, paced, httpx)
        raw.update({k.replace("raw_", "raw_httpx_", 1): v for k, v in named.items()})
        for n in (0, processes):
            run_settings = settings if n == 0 else _fresh(settings, f"processes{n}")
            ours = await executor_tasks(run_settings, url, tasks, capacity, rate, paced, processes=n)
            ours["ratio_to_raw"] = round(ours["tasks_per_s"] / raw["raw_calls_per_s"], 3)
            ours["ratio_to_raw_httpx"] = round(ours["tasks_per_s"] / raw["raw_httpx_calls_per_s"], 3)
            ours["offered_load"] = round(rate / ours["tasks_per_s"], 3)
            runs.append(ours)
    return {"executor": "http", "tasks": tasks, "capacity": capacity, "rate": rate, **raw, "runs": runs,
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "projector_peak_rss_mb": max(r["projector_peak_rss_mb"] or 0.0 for r in runs)}


def _beside(url: str, tag: str) -> str:
    """A SQLite URL's file with ``tag`` added to its name (``log.db`` -> ``log-tag.db``)."""
    base, sep, options = url.partition("?")
    base = f"{base[:-3]}-{tag}.db" if base.endswith(".db") else f"{base}-{tag}"
    return base + sep + options


def _fresh(settings: Settings, tag: str) -> Settings:
    """The settings of another run on fresh SQLite files beside the first run's (the executor
    benchmark runs on the embedded log only)."""
    update = {"broker": _beside(settings.broker, tag)}
    if settings.database.startswith("sqlite"):
        update["database"] = _beside(settings.database, tag)
    return settings.model_copy(update=update)


# Offered at this share of the saturated rate or more, paced tasks wait for one another.
QUEUEING_LOAD = 0.8


def queueing_note(offered_load: float) -> str | None:
    """What to tell the reader when the paced rate is close to (or above) what the executor
    completes saturated: its latency is then mostly queueing, not what agentbus adds to a call."""
    if offered_load < QUEUEING_LOAD:
        return None
    return (f"the offered rate is {offered_load:.0%} of this run's saturated rate: the paced tasks queue, "
            f"so the added latency above is mostly waiting, not what a call costs")
