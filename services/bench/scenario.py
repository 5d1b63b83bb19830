"""The fixed benchmark scenario, measured end to end on the configured backend (``agentbus bench``
is its command, in ``services.cli.bench``).

1,000 agents; N tasks through submit -> assign -> complete with a cost each. Reports commands/s
until the read models have caught up, submit-accepted -> TaskAssigned latency (saturated and at
a paced offered rate), replay speed of the decider state, peak RSS, and the HTTP path with
concurrent clients against a real ``agentbus serve`` process. Measures; never asserts.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from contracts import Envelope
from contracts import commands as c
from contracts import event_types as e
from events.cache import tail
from services.runtime.decider import PartitionDecider
from services.runtime.ingest import command_envelope
from services.runtime.outcomes import Outcomes
from services.runtime.service import open_service
from services.runtime.settings import Settings
from services.runtime.topics import Topics

MODEL = "gpt-4o-mini"
T = TypeVar("T")


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) by nearest rank; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _projector_proc(service: Any, name: str) -> str | None:
    """``/proc/<pid>/<name>`` of the embedded runner's projector process while it runs; None when
    there is no such process (or no ``/proc``)."""
    pid = getattr(getattr(service, "projector_process", None), "pid", None)
    if pid is None:
        return None
    try:
        return Path(f"/proc/{pid}/{name}").read_text()
    except OSError:
        return None


def projector_peak_rss_mb(service: Any) -> float:
    """The peak RSS of the embedded runner's projector process, while it runs (0.0: none)."""
    for line in (_projector_proc(service, "status") or "").splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def projector_cpu_s(service: Any) -> float | None:
    """CPU seconds (user and system) the embedded runner's projector process has used so far, read
    while it runs; None when there is no such process (or no ``/proc``)."""
    stat = _projector_proc(service, "stat")
    if stat is None:
        return None
    # After the command's name (in parentheses, itself free to hold spaces): utime and stime are the
    # 12th and 13th fields, in clock ticks.
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_namespace(settings: Settings) -> Settings:
    """The settings of one bench run on Kafka: topics and consumer groups of its own, nested under
    the deployment's topic prefix and app id, so a run never reads or writes a deployment's topics
    (nor another run's) and stays inside whatever the deployment's prefix is allowed on the broker."""
    tag = f"bench-{os.getpid()}-{int(time.time())}"
    return settings.model_copy(update={"topic_prefix": f"{settings.topic_prefix}{tag}.",
                                       "app_id": f"{settings.app_id}-{tag}"})


class UsedLog(ValueError):
    """The log the bench was pointed at holds records already."""


async def refuse_a_used_log(settings: Settings) -> None:
    """The embedded runner has no topic prefix: a log that holds records is a deployment's, and the
    scenario must not write into it."""
    from events import UnknownTopic, open_log

    log = open_log(settings.broker)
    await log.start()
    try:
        for topic in (Topics().commands, Topics().events):
            try:
                count = await log.partitions(topic)
            except UnknownTopic:
                continue
            for p in range(count):
                if await log.end_offset(topic, p) > 0:
                    raise UsedLog(f"{settings.broker} already holds records: the bench writes its "
                                  "scenario into a fresh log (leave --broker out for a temporary one, or "
                                  "name a new file)")
    finally:
        await log.close()


class Target:
    """What the scenario drives: the runtime ``open_service`` picks from the settings. On Kafka, the
    cluster service with an in-process Faust worker, or ``workers`` separate ``agentbus worker``
    processes; each run gets its own topic prefix and app id (``run_namespace``), so runs never mix."""

    def __init__(self, settings: Settings, workers: int = 0) -> None:
        self.kafka = settings.kafka
        if self.kafka:
            settings = run_namespace(settings)
        self.settings = settings
        self.app_id = settings.app_id
        self.workers = workers if self.kafka else 0  # the embedded runner is one process
        self.procs: list[subprocess.Popen[bytes]] = []
        self.projector_peak_rss_mb = 0.0  # the embedded projector's own process (read at stop)
        self.service: Any = open_service(settings, worker=self.workers == 0)
        self.topics: Topics = self.service.topics

    async def start(self) -> None:
        if not self.kafka:
            await refuse_a_used_log(self.settings)
        await self.service.start()
        for _ in range(self.workers):
            env = {**os.environ, "AGENTBUS_BROKER": self.settings.broker,
                   "AGENTBUS_DATABASE": self.settings.database,
                   "AGENTBUS_PARTITIONS": str(self.settings.partitions)}
            self.procs.append(subprocess.Popen(  # noqa: ASYNC220 - starting, not waiting
                [sys.executable, "-m", "services.cli", "worker", "--topic-prefix",
                 self.settings.topic_prefix, "--app-id", self.app_id],
                env=env, stdout=subprocess.DEVNULL, stderr=self._worker_log()))
        await self.service.ready()

    def _worker_log(self) -> Any:
        """Where a worker's log goes: AGENTBUS_BENCH_WORKER_LOG (appended), else nowhere."""
        path = os.environ.get("AGENTBUS_BENCH_WORKER_LOG")
        return open(path, "ab") if path else subprocess.DEVNULL

    async def stop(self) -> None:
        self.projector_peak_rss_mb = projector_peak_rss_mb(self.service)
        for proc in self.procs:
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        await self.service.stop()

    @property
    def log(self) -> Any:
        return self.service.log

    @property
    def cache(self) -> Any:
        return self.service.cache

    @property
    def store(self) -> Any:
        return self.service.store

    @property
    def partitions(self) -> int:
        return int(self.service.partitions)

    def partition_of(self, pool: str) -> int:
        return int(self.service.partition_of(pool))

    async def submit_many(self, envs: list[Envelope]) -> None:
        await self.cache.append(self.log, self.topics.commands, envs)


@dataclass
class Fleet:
    """Simulated agents: complete every task assigned to them and record its cost."""

    target: Target
    submitted_at: dict[str, float] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    costs: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)
    expected: int = 0

    async def _batches(self, partition: int, start: int) -> AsyncIterator[list[tuple[int, Envelope]]]:
        t = self.target
        if not t.kafka:
            async for batch in tail(t.log, t.cache, t.topics.events, partition, start, limit=2000):
                yield batch
            return
        # Kafka: a long-polling consumer, like the workers' roles. tail() waits by re-reading
        # the end offset every 100 ms for records another process (a --workers process) wrote.
        decode = t.cache.decode
        async for recs in t.log.subscribe(t.topics.events, partition, start, limit=2000):
            yield [(r.offset, decode(r)) for r in recs]

    async def run(self, partition: int, start: int) -> None:
        t = self.target
        async for batch in self._batches(partition, start):
            now = time.perf_counter()
            out: list[Envelope] = []
            for _, env in batch:
                ev = env.data
                if isinstance(ev, e.TaskAssigned):
                    t0 = self.submitted_at.pop(ev.task_id, None)
                    if t0 is not None:
                        self.latencies_ms.append((now - t0) * 1000)
                    out.append(command_envelope(c.CompleteTask(task_id=ev.task_id, agent_id=ev.agent_id),
                                                pool=env.pool, source="urn:agentbus:bench"))
                    out.append(command_envelope(
                        c.RecordCost(cost_id=f"cost-{ev.task_id}", agent_id=ev.agent_id, task_id=ev.task_id,
                                     model=MODEL, input_tokens=1200, output_tokens=300),
                        pool=env.pool, source="urn:agentbus:bench"))
                elif isinstance(ev, e.CostRecorded):
                    self.costs += 1
                    if self.costs >= self.expected:
                        self.done.set()
            if out:
                await t.submit_many(out)


async def _caught_up(target: Target) -> None:
    """Wait until the read models hold every event appended so far."""
    for p in range(target.partitions):
        last = await _last_record_offset(target, p)
        if last is not None:
            while not await target.store.wait_for_position(target.topics.events, p, last, timeout=30):
                pass


async def _last_record_offset(target: Target, partition: int) -> int | None:
    # Not end - 1: on Kafka the last offset may be a transaction marker, not a record.
    topic = target.topics.events
    end = await target.log.end_offset(topic, partition)
    start = end
    while start > 0:
        start = max(0, start - 16)
        recs = await target.log.read(topic, partition, start, end - start)
        if recs:
            return int(recs[-1].offset)
    return None


async def _register(target: Target, agents: int, pool: str, prefix: str) -> None:
    envs = [
        command_envelope(c.RegisterAgent(agent_id=f"{prefix}{i}", name=f"agent {i}", kind="llm",
                                         capabilities=("text", "code") if i % 2 else ("text",),
                                         capacity=4,
                                         # The fleet never heartbeats: a run longer than the default
                                         # 30 s would otherwise mark every agent unhealthy and stall.
                                         heartbeat_timeout_s=3600),
                         pool=pool, source="urn:agentbus:bench")
        for i in range(agents)
    ]
    for i in range(0, len(envs), 1000):
        await target.submit_many(envs[i:i + 1000])


def _task(i: int, prefix: str) -> c.SubmitTask:
    return c.SubmitTask(task_id=f"{prefix}{i}", type="summarize", priority=1 + i % 10,
                        required_capabilities=("code",) if i % 3 == 0 else ("text",),
                        data={"doc": i})


async def bench_inprocess(settings: Settings, agents: int, tasks: int, rate: float,
                          paced_seconds: float, workers: int = 0) -> dict[str, Any]:
    """Throughput at saturation, then latency at a paced offered rate, then replay."""
    target = Target(settings, workers)
    # On Kafka the read models may be a shared PostgreSQL database that earlier runs wrote to:
    # this run's pool and ids must not collide with theirs (the projector refuses an agent
    # registered twice, and the run would wait forever for its read models).
    tag = f"{target.app_id}-" if target.kafka else ""
    pool = f"{tag}bench"
    await target.start()
    try:
        result = await _scenario(target, settings, pool, tag, agents, tasks, rate, paced_seconds)
    finally:  # a failed run too: its connections' threads would keep the process from exiting
        await target.stop()
    return {**result, "workers": workers, "projector_peak_rss_mb": target.projector_peak_rss_mb}


async def _scenario(target: Target, settings: Settings, pool: str, tag: str, agents: int, tasks: int,
                    rate: float, paced_seconds: float) -> dict[str, Any]:
    part = target.partition_of(pool)
    fleet = Fleet(target, expected=tasks)
    fleet_task = asyncio.create_task(fleet.run(part, await target.log.end_offset(target.topics.events, part)))
    try:
        t0 = time.perf_counter()
        await _register(target, agents, pool, f"{tag}a")
        batch = 500
        for i in range(0, tasks, batch):
            envs = [command_envelope(_task(j, f"{tag}t"), pool=pool, source="urn:agentbus:bench")
                    for j in range(i, min(tasks, i + batch))]
            await target.submit_many(envs)
            now = time.perf_counter()
            for env in envs:
                fleet.submitted_at[env.subject or ""] = now
            await asyncio.sleep(0)
        await fleet.done.wait()
        await _caught_up(target)
        elapsed = time.perf_counter() - t0
        commands = agents + tasks * 4  # register; submit, assign, complete, cost
        saturated = list(fleet.latencies_ms)

        # Paced phase: a steady offered load (4 commands per task) to measure latency, not queueing.
        fleet.latencies_ms.clear()
        fleet.costs, fleet.expected = 0, max(1, int(rate / 4 * paced_seconds))
        fleet.done.clear()
        interval = 4 / rate * 10  # submit 10 tasks per tick
        n = 0
        tick = time.perf_counter()
        while n < fleet.expected:
            envs = [command_envelope(_task(j, f"{tag}p"), pool=pool, source="urn:agentbus:bench")
                    for j in range(n, min(fleet.expected, n + 10))]
            await target.submit_many(envs)
            now = time.perf_counter()
            for env in envs:
                fleet.submitted_at[env.subject or ""] = now
            n += len(envs)
            tick += interval
            await asyncio.sleep(max(0.0, tick - time.perf_counter()))
        await asyncio.wait_for(fleet.done.wait(), timeout=120)
        paced = list(fleet.latencies_ms)
    finally:
        fleet_task.cancel()
        await asyncio.gather(fleet_task, return_exceptions=True)

    # The service's peak, before the replay below builds a second decider state beside its own
    # in this process (a restart replays in a process of its own).
    service_peak = peak_rss_mb()
    replay_events, replay_s = 0, 0.0
    for p in range(target.partitions):
        d = PartitionDecider(target.log, p, Outcomes(), settings.decider, topics=target.topics)
        await d.rebuild()
        replay_events += d.replay.events
        replay_s += d.replay.seconds
    return {
        **({"topic_prefix": target.settings.topic_prefix, "app_id": target.app_id} if target.kafka else {}),
        "agents": agents,
        "tasks": tasks,
        "commands": commands,
        "seconds": round(elapsed, 3),
        "commands_per_s": round(commands / elapsed, 1),
        "saturated_p50_ms": round(percentile(saturated, 50), 3),
        "saturated_p99_ms": round(percentile(saturated, 99), 3),
        "offered_commands_per_s": rate,
        "p50_ms": round(percentile(paced, 50), 3),
        "p99_ms": round(percentile(paced, 99), 3),
        "replay_events": replay_events,
        "replay_events_per_s": round(replay_events / replay_s, 1) if replay_s else 0.0,
        "peak_rss_mb": round(service_peak, 1),
        "peak_rss_with_replay_mb": round(peak_rss_mb(), 1),
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def bench_http(data_dir: Path, requests: int, clients: int, agents: int) -> dict[str, Any]:
    """Concurrent HTTP clients submitting tasks to a real ``agentbus serve`` subprocess."""
    import httpx

    port = _free_port()
    env = {**os.environ, "AGENTBUS_DATA": str(data_dir), "AGENTBUS_PORT": str(port)}
    for key in ("AGENTBUS_BROKER", "AGENTBUS_DATABASE"):
        env.pop(key, None)
    proc = subprocess.Popen([sys.executable, "-m", "services.cli", "serve", "--port", str(port)], env=env,  # noqa: ASYNC220
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=30,
                                     limits=httpx.Limits(max_connections=clients)) as client:
            for _ in range(300):
                try:
                    if (await client.get("/v1/health")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
            else:
                raise RuntimeError("agentbus serve did not start")
            for i in range(agents):
                await client.post("/v1/agents", json={"agent_id": f"h{i}", "name": f"h{i}",
                                                      "capabilities": ["text"], "capacity": 1000})
            latencies: list[float] = []
            errors = 0
            counter = iter(range(requests))

            async def worker() -> None:
                nonlocal errors
                for i in counter:
                    t = time.perf_counter()
                    r = await client.post("/v1/tasks", json={"task_id": f"ht{i}", "type": "x",
                                                             "required_capabilities": ["text"]})
                    latencies.append((time.perf_counter() - t) * 1000)
                    if r.status_code != 202:
                        errors += 1

            t0 = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(clients)))
            elapsed = time.perf_counter() - t0
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    return {
        "http_requests": requests,
        "http_clients": clients,
        "http_commands_per_s": round(requests / elapsed, 1),
        "http_p50_ms": round(percentile(latencies, 50), 3),
        "http_p99_ms": round(percentile(latencies, 99), 3),
        "http_errors": errors,
    }


async def restart_seconds(settings: Settings, timeout: float = 600) -> float:
    """Seconds from starting ``agentbus serve`` on the scenario's log and read models (embedded,
    the bench's own service stopped) until ``/v1/health`` answers 200: imports, every component's
    rebuild from the log, the projector's catch-up, the HTTP server."""
    import httpx

    port = _free_port()
    env = {**os.environ, "AGENTBUS_BROKER": settings.broker, "AGENTBUS_DATABASE": settings.database,
           "AGENTBUS_DATA": str(settings.data_dir)}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "services.cli", "serve", "--port", str(port),  # noqa: ASYNC220
                             "--auth", "off"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            while time.perf_counter() - t0 < timeout:
                if proc.poll() is not None:
                    raise RuntimeError(f"agentbus serve exited with {proc.returncode} while starting")
                try:
                    if (await client.get("/v1/health")).status_code == 200:
                        return time.perf_counter() - t0
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.02)
            raise RuntimeError(f"agentbus serve was not serving after {timeout} s")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


LOOPS = ("served", "asyncio")


def run_on(loop: str, main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` on an event loop: "served" is the one `agentbus serve` runs on (uvloop where it
    is installed: uvicorn's "auto", a dependency), "asyncio" the standard library's."""
    factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop
    if loop == "served":
        with contextlib.suppress(ImportError):
            from uvloop import new_event_loop as factory
    elif loop != "asyncio":
        raise ValueError(f"unknown event loop {loop!r}: one of {', '.join(LOOPS)}")
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


def loop_name(loop: str) -> str:
    """What ``run_on(loop, ...)`` runs on, as reported."""
    if loop == "served":
        try:
            return f"uvloop {importlib.metadata.version('uvloop')}"
        except importlib.metadata.PackageNotFoundError:
            return "asyncio"
    return "asyncio"


def measure(settings: Settings, scratch: Path, *, agents: int, tasks: int, rate: float, paced_seconds: float,
            workers: int = 0, http: bool = True, http_requests: int = 20_000, http_clients: int = 64,
            raw_records: int = 200_000, coordinator_agents: int = 0, loop: str = "served") -> dict[str, Any]:
    """Every measurement the settings' backend allows; ``scratch`` holds the HTTP server's data.

    Raises ``UsedLog`` when an embedded log already holds records.
    """
    result = run_on(loop, bench_inprocess(settings, agents, tasks, rate, paced_seconds, workers))
    result["loop"] = loop_name(loop)
    result["broker"] = settings.broker.split("?")[0]
    result["database"] = settings.database.split("://")[0]
    if settings.kafka:
        # The raw baseline moves as many records as the scenario wrote: commands + events.
        raw = asyncio.run(raw_kafka_rate(settings.broker, raw_records, topic=f"{result['topic_prefix']}raw"))
        result.update(raw)
        result["records_per_command"] = 2
        result["ratio_to_raw"] = round(result["commands_per_s"] * 2 / raw["raw_records_per_s"], 3)
    else:
        # The same log and read models, now held by nobody: how long a restart takes to serve.
        # The first start also builds what the scenario's service did not run (the executor host
        # reads the whole log once); the second is a restart as a deployment sees it.
        result["first_start_s"] = round(asyncio.run(restart_seconds(settings)), 2)
        result["restart_s"] = round(asyncio.run(restart_seconds(settings)), 2)
        if http:
            result.update(asyncio.run(bench_http(scratch / "http", http_requests, http_clients, 100)))
    if coordinator_agents > 0:
        from services.bench.coordinator import run_all

        result["coordinator"] = run_all(agents=coordinator_agents)
    return result


async def raw_kafka_rate(url: str, records: int = 200_000, value_bytes: int = 400, *,
                         topic: str | None = None) -> dict[str, Any]:
    """The client's limit on this broker: a plain aiokafka producer -> consumer moving the same
    number of records of the same size, with the same settings (idempotent, acks=all, lz4), through
    ``topic`` (created and deleted here; default a name of its own)."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # type: ignore[import-untyped]
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # type: ignore[import-untyped]

    bootstrap = url.split("://", 1)[1].split("?", 1)[0]
    topic = topic or f"agentbus-bench-raw-{os.getpid()}-{int(time.time())}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 1, 1)])
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, acks="all",
                                    compression_type="lz4", linger_ms=5, max_batch_size=256 * 1024)
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                    enable_auto_commit=False, group_id=None)
        await producer.start()
        await consumer.start()
        value = b'{"type":"TaskSubmitted","data":{"x":"' + b"y" * max(0, value_bytes - 40) + b'"}}'
        t0 = time.perf_counter()

        async def produce() -> None:
            pending = []
            for _ in range(records):
                pending.append(await producer.send(topic, value, key=b"bench"))
                if len(pending) >= 5000:
                    await asyncio.gather(*pending)
                    pending.clear()
            await asyncio.gather(*pending)

        async def consume() -> None:
            seen = 0
            while seen < records:
                batches = await consumer.getmany(timeout_ms=1000, max_records=10_000)
                seen += sum(len(v) for v in batches.values())

        await asyncio.gather(produce(), consume())
        elapsed = time.perf_counter() - t0
        await producer.stop()
        await consumer.stop()
        await admin.delete_topics([topic])
    finally:
        await admin.close()
    return {"raw_records": records, "raw_records_per_s": round(records / elapsed, 1)}
