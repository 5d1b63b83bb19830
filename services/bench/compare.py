"""``agentbus bench --compare``: agentbus measured beside two comparisons in the same run, and the ratios.

- The lifecycle: agentbus's scenario (``services.bench.scenario.measure``, the HTTP part left
  out) and the same scenario on the ``eventsourcing`` library (``services.bench.peer``), with the
  same agents and tasks: commands/s end to end, and replay events/s of what each stored.
- The HTTP write path: one load generator, ``wrk`` with a Lua script posting unique task ids, run
  with the same options against a real ``agentbus serve`` (fresh data, agents registered) and
  against a bare FastAPI + uvicorn endpoint validating the same body
  (``services.bench.bare_http``): requests/s and latency p50/p99 of each. Skipped, saying how to
  install it, where ``wrk`` is not on PATH.
- The HTTP read path, after the writes: ``GET /v1/tasks/{id}`` of one of the tasks posted, from
  agentbus's read models, and from the bare endpoint answering the same document from memory.

Ratios are agentbus / the other (above 1: agentbus is faster). Measures; never asserts.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from services.bench.peer import bench_peer
from services.executors.standins.serving import free_port
from services.runtime.settings import Settings

WRK_OPTIONS = "-t2 -c64 -d10s"
WRK_MISSING = "wrk is not on PATH: install it (Debian/Ubuntu: apt-get install wrk) to compare the HTTP path"
HTTP_AGENTS = 100  # registered before the load, as the scenario's HTTP phase does

# done() reports wrk's own figures as one JSON line (latency in microseconds), so nothing is read
# back from its human-readable table.
WRK_DONE = """
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_RESULT {"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"max_us":%d,'
    .. '"connect_errors":%d,"read_errors":%d,"write_errors":%d,"status_errors":%d,"timeouts":%d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.max,
    e.connect, e.read, e.write, e.status, e.timeout))
end
"""

# Each wrk thread has a Lua state of its own: setup() numbers them so that every request, in every
# thread, posts a task id of its own.
WRK_SCRIPT = """
local threads = 0

function setup(thread)
  thread:set("tid", threads)
  threads = threads + 1
end

function init(args)
  prefix = (args[1] or "wrk") .. "-" .. tid .. "-"
  n = 0
end

function request()
  n = n + 1
  local body = '{"task_id":"' .. prefix .. n .. '","type":"summarize","priority":1,'
    .. '"required_capabilities":["text"],"data":{"doc":' .. n .. '}}'
  return wrk.format("POST", "/v1/tasks", {["Content-Type"] = "application/json"}, body)
end
""" + WRK_DONE


def parse_wrk(output: str) -> dict[str, Any]:
    """The figures of one wrk run from its output (the ``done`` line of ``WRK_SCRIPT``)."""
    for line in output.splitlines():
        if line.startswith("WRK_RESULT "):
            raw = json.loads(line.removeprefix("WRK_RESULT "))
            seconds = raw["duration_us"] / 1e6
            return {
                "requests": raw["requests"],
                "seconds": round(seconds, 3),
                "requests_per_s": round(raw["requests"] / seconds, 1) if seconds else 0.0,
                "p50_ms": round(raw["p50_us"] / 1000, 3),
                "p99_ms": round(raw["p99_us"] / 1000, 3),
                "max_ms": round(raw["max_us"] / 1000, 3),
                # status: answers other than 2xx/3xx; the rest are socket errors.
                "errors": sum(raw[k] for k in ("connect_errors", "read_errors", "write_errors", "timeouts")),
                "non_2xx": raw["status_errors"],
            }
    raise RuntimeError(f"wrk printed no result:\n{output[-2000:]}")


def run_wrk(wrk: str, url: str, options: str, tag: str, read: str | None = None) -> dict[str, Any]:
    """One wrk run of ``options`` against ``url`` (the base URL) posting tasks ``tag-*``, or
    getting the path ``read``."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(WRK_SCRIPT if read is None else WRK_DONE)
        script = f.name
    try:
        target = f"{url}/v1/tasks" if read is None else f"{url}{read}"
        cmd = [wrk, *shlex.split(options), "-s", script, target, "--", tag]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_wrk_timeout(options), check=False)
    finally:
        os.unlink(script)
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} exited with {proc.returncode}: {proc.stderr.strip()}")
    return parse_wrk(proc.stdout)


def _wrk_timeout(options: str) -> float:
    """How long a wrk run of ``options`` may take: its -d/--duration (wrk's default 10 s) and 60 s."""
    args = shlex.split(options)
    duration = "10s"
    for i, arg in enumerate(args):
        if arg in ("-d", "--duration") and i + 1 < len(args):
            duration = args[i + 1]
        elif arg.startswith("-d") and len(arg) > 2:
            duration = arg[2:]
        elif arg.startswith("--duration="):
            duration = arg.split("=", 1)[1]
    units = {"s": 1, "m": 60, "h": 3600}
    unit = duration[-1] if duration[-1] in units else "s"
    return float(duration.rstrip("smh") or 10) * units[unit] + 60


@contextmanager
def _process(cmd: list[str], env: dict[str, str], ready: str, what: str,
             timeout: float = 60) -> Iterator[subprocess.Popen[bytes]]:
    """``cmd`` running until the block ends (SIGTERM, then kill); ``ready`` is polled until it answers
    200 or 202 first."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                raise RuntimeError(f"{what} exited with {proc.returncode}: {err[-2000:]}")
            try:
                if ready.startswith("POST "):
                    r = httpx.post(ready[5:], json={"type": "ready"}, timeout=2)
                else:
                    r = httpx.get(ready, timeout=2)
                if r.status_code in (200, 202):
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not answer in {timeout} s")
            time.sleep(0.1)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


def _embedded_env(data_dir: Path, port: int) -> dict[str, str]:
    """``agentbus serve``'s environment: fresh data in ``data_dir``, the embedded log and SQLite."""
    env = {**os.environ, "AGENTBUS_DATA": str(data_dir), "AGENTBUS_PORT": str(port)}
    for key in ("AGENTBUS_BROKER", "AGENTBUS_DATABASE"):
        env.pop(key, None)
    return env


def bench_http_pair(scratch: Path, wrk: str, options: str = WRK_OPTIONS) -> dict[str, Any]:
    """The same wrk command against ``agentbus serve`` and against the bare endpoint."""
    tag = f"wrk{os.getpid()}"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with _process([sys.executable, "-m", "services.cli", "serve", "--port", str(port)],
                  _embedded_env(scratch / "serve", port), f"{base}/v1/health", "agentbus serve"):
        with httpx.Client(base_url=base, timeout=30) as client:
            for i in range(HTTP_AGENTS):
                r = client.post("/v1/agents", json={"agent_id": f"h{i}", "name": f"h{i}",
                                                    "capabilities": ["text"], "capacity": 1000})
                r.raise_for_status()
        agentbus = run_wrk(wrk, base, options, tag)
        # The read: the first task wrk posted, once the read models hold everything written.
        with httpx.Client(base_url=base, timeout=30) as client:
            last = client.post("/v1/tasks", json={"type": "summarize", "required_capabilities": ["text"]})
            last.raise_for_status()
            first = client.get("/v1/tasks", params={"page_size": 1, "min_position": last.json()["position"]})
            first.raise_for_status()
            read = f"/v1/tasks/{first.json()['items'][0]['task_id']}"
            r = client.get(read)
            r.raise_for_status()
        task_file = scratch / "task.json"
        task_file.write_bytes(r.content)
        agentbus_read = run_wrk(wrk, base, options, tag, read=read)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with _process([sys.executable, "-m", "services.bench.bare_http", "--port", str(port), "--task-file",
                   str(task_file)], dict(os.environ), f"POST {base}/v1/tasks", "the bare endpoint"):
        bare = run_wrk(wrk, base, options, tag)
        bare_read = run_wrk(wrk, base, options, tag, read=read)
    return {"wrk_options": options, "agentbus": agentbus, "bare": bare,
            "http_ratio": _ratio(agentbus["requests_per_s"], bare["requests_per_s"]),
            "read_path": read, "agentbus_read": agentbus_read, "bare_read": bare_read,
            "read_ratio": _ratio(agentbus_read["requests_per_s"], bare_read["requests_per_s"])}


def _ratio(ours: float, theirs: float) -> float | None:
    return round(ours / theirs, 3) if theirs else None


def compare(settings: Settings, scratch: Path, *, agents: int, tasks: int, rate: float, paced_seconds: float,
            wrk_options: str = WRK_OPTIONS, loop: str = "served") -> dict[str, Any]:
    """agentbus's scenario, the peer's, the HTTP pair; each figure, and agentbus / the other."""
    from services.bench.scenario import measure

    load = [round(x, 2) for x in os.getloadavg()]  # others' work on the machine as the run starts
    ours = measure(settings, scratch, agents=agents, tasks=tasks, rate=rate, paced_seconds=paced_seconds,
                   http=False, loop=loop)
    peer_dir = scratch / "peer"
    peer_dir.mkdir(parents=True, exist_ok=True)
    peer = bench_peer(peer_dir, agents, tasks)
    result: dict[str, Any] = {
        "agents": agents,
        "tasks": tasks,
        "agentbus": ours,
        "peer": {"library": _eventsourcing_version(), **peer},
        "end_to_end_ratio": _ratio(ours["commands_per_s"], peer["commands_per_s"]),
        "replay_ratio": _ratio(ours["replay_events_per_s"], peer["replay_events_per_s"]),
        "cpus": os.cpu_count(),
        "load_average_at_start": load,
    }
    wrk = shutil.which("wrk")
    if wrk is None:
        result["http"] = {"skipped": WRK_MISSING}
        result["http_ratio"] = None
    else:
        result["http"] = bench_http_pair(scratch, wrk, wrk_options)
        result["http_ratio"] = result["http"]["http_ratio"]
    return result


def _eventsourcing_version() -> str:
    from importlib.metadata import version

    return f"eventsourcing {version('eventsourcing')}"
