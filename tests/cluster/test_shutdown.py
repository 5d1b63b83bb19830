"""A bounded, graceful stop, with real processes: ``serve`` and ``worker`` are gone within 30 s of
SIGTERM in every state, and a second signal ends them at once.

* Kafka, starting while the consumer group rebalances: a ``serve`` is killed with SIGKILL, so its
  member stays in the group for the (long) session timeout; a new ``serve`` and a ``worker``
  joining that group get SIGTERM while they wait for it.
* Kafka and SQLite, under load: SIGTERM while HTTP clients write; afterwards every acknowledged
  command has exactly one outcome in the log.
* A second signal while the first stop drains a request that never completes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from events import open_log
from events.log import EventLog
from services.cli.signals import EXIT_WITHIN_S
from tests.cluster.conftest import (
    REPO,
    Cluster,
    free_port,
    outcome_runs,
    read_topic,
    wait_healthy,
)
from tests.cluster.test_faults import Load

pytestmark = [pytest.mark.slow, pytest.mark.kafka, pytest.mark.postgres]

# Long enough that the killed member is still in the group while the new processes start.
SESSION_TIMEOUT_S = "60"


def stop_time(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM,
              limit: float = EXIT_WITHIN_S) -> float:
    """Send ``sig``; the seconds until the process was gone (fails past ``limit``)."""
    started = time.monotonic()
    proc.send_signal(sig)
    try:
        proc.wait(limit)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"still running {limit:.0f} s after {signal.Signals(sig).name}") from None
    return time.monotonic() - started


def wait_for_line(log: Path, text: str, proc: subprocess.Popen[bytes], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text(errors="replace"):
        assert proc.poll() is None, f"exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no {text!r} after {timeout:.0f} s:\n{log.read_text()[-3000:]}"
        time.sleep(0.05)


async def acknowledged_exactly_once(log: EventLog, events_topic: str, acked: dict[str, int]) -> int:
    """Every acknowledged command has one outcome (a contiguous run of events) in the log."""
    runs = outcome_runs(await read_topic(log, events_topic))
    missing = [cid for cid in acked if cid not in runs]
    assert not missing, f"{len(missing)} acknowledged commands have no events, e.g. {missing[:5]}"
    doubled = {cid: r for cid, r in runs.items() if len(r) != 1}
    assert not doubled, f"command ids with more than one outcome: {list(doubled.items())[:5]}"
    return len(acked)


async def sigterm_under_load(base: str, proc: subprocess.Popen[bytes], load_s: float) -> tuple[float, Load]:
    """HTTP clients write for ``load_s`` seconds, then SIGTERM: the seconds the stop took."""
    load = Load(base, ["p0", "p1", "p2", "p3"])
    await load.setup()
    clients = await load.run()
    await asyncio.sleep(load_s)
    # On a busy machine the first acknowledgements can take longer than load_s: the stop must come
    # while the load flows, so wait for it (the sanity check below still fails a load that never ran).
    deadline = time.monotonic() + 60
    while len(load.acked) <= 20 and time.monotonic() < deadline:  # noqa: ASYNC110 (the clients count; no event to wait on)
        await asyncio.sleep(0.1)
    acked_before = len(load.acked)
    seconds = await asyncio.to_thread(stop_time, proc)
    load.stop.set()
    await asyncio.gather(*clients)
    assert acked_before > 20, f"the load never got going: {dict(load.failed)}"
    return seconds, load


async def test_restarted_after_kill_9_serve_and_worker_stop_in_time_while_the_group_rebalances(
        cluster: Cluster, logs: Path) -> None:
    port = free_port()
    first_log = logs / "serve-1.log"
    first = cluster.serve(port, first_log, AGENTBUS_SESSION_TIMEOUT=SESSION_TIMEOUT_S)
    await wait_healthy(f"http://127.0.0.1:{port}", first, first_log)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()

    serve_log, worker_log = logs / "serve-2.log", logs / "worker.log"
    serve = cluster.serve(free_port(), serve_log, AGENTBUS_SESSION_TIMEOUT=SESSION_TIMEOUT_S)
    worker = cluster.worker(worker_log, AGENTBUS_SESSION_TIMEOUT=SESSION_TIMEOUT_S)
    await asyncio.to_thread(wait_for_line, serve_log, "Waiting for application startup", serve)
    await asyncio.to_thread(wait_for_line, worker_log, "Starting...", worker)
    await asyncio.sleep(1)  # joining the group, which waits for the killed member
    assert "Application startup complete" not in serve_log.read_text(), "the group did not wait"
    serve_s, worker_s = await asyncio.gather(asyncio.to_thread(stop_time, serve),
                                             asyncio.to_thread(stop_time, worker))
    print(f"stopped while the group rebalanced: serve in {serve_s:.1f} s, worker in {worker_s:.1f} s")
    assert serve.returncode in (0, -signal.SIGTERM), serve_log.read_text()[-3000:]
    assert worker.returncode == 0, worker_log.read_text()[-3000:]
    assert "stopped before the service was ready" in serve_log.read_text()
    assert "worker stopped before it was running" in worker_log.read_text()


async def test_serve_under_load_on_kafka_stops_in_time_and_keeps_what_it_acknowledged(
        cluster: Cluster, logs: Path) -> None:
    port = free_port()
    serve_log = logs / "serve.log"
    serve = cluster.serve(port, serve_log)
    base = f"http://127.0.0.1:{port}"
    await wait_healthy(base, serve, serve_log)
    seconds, load = await sigterm_under_load(base, serve, load_s=4)
    assert serve.returncode in (0, -signal.SIGTERM), serve_log.read_text()[-3000:]
    log = open_log(cluster.kafka)
    await log.start()
    try:
        acked = await acknowledged_exactly_once(log, cluster.events, load.acked)
    finally:
        await log.close()
    print(f"Kafka: stopped under load in {seconds:.1f} s; {acked} acknowledged commands all in the log")


# --- the embedded runner (SQLite) ----------------------------------------------------------------


def serve_embedded(data: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTBUS_")}
    args = [sys.executable, "-m", "services.cli", "serve", "--data-dir", str(data), "--port", str(port)]
    with log.open("ab") as out:
        return subprocess.Popen(args, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)


@pytest.fixture
def embedded(tmp_path: Path, logs: Path) -> Any:
    procs: list[subprocess.Popen[bytes]] = []

    async def start() -> tuple[str, subprocess.Popen[bytes], Path]:
        port = free_port()
        log = logs / f"serve-{len(procs)}.log"
        proc = serve_embedded(tmp_path / "data", port, log)
        procs.append(proc)
        base = f"http://127.0.0.1:{port}"
        await wait_healthy(base, proc, log)
        return base, proc, log

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_serve_under_load_on_sqlite_stops_in_time_and_keeps_what_it_acknowledged(
        embedded: Any, tmp_path: Path) -> None:
    base, serve, log_path = await embedded()
    seconds, load = await sigterm_under_load(base, serve, load_s=3)
    assert serve.returncode in (0, -signal.SIGTERM), log_path.read_text()[-3000:]
    assert "Application shutdown complete" in log_path.read_text()
    log = open_log(f"sqlite:///{tmp_path}/data/log.db")
    await log.start()
    try:
        acked = await acknowledged_exactly_once(log, "events", load.acked)
    finally:
        await log.close()
    print(f"SQLite: stopped under load in {seconds:.1f} s; {acked} acknowledged commands all in the log")


@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_a_second_signal_ends_a_stop_at_once(embedded: Any, second: signal.Signals) -> None:
    base, serve, log_path = await embedded()
    host, port = base.removeprefix("http://").split(":")
    # A request whose body never comes: the first stop waits for it (drains HTTP) for a while.
    with socket.create_connection((host, int(port))) as stalled:
        stalled.sendall(b"POST /v1/agents HTTP/1.1\r\nHost: agentbus\r\nContent-Type: application/json\r\n"
                        b"Content-Length: 1000\r\n\r\n{")
        await asyncio.sleep(0.5)
        serve.send_signal(signal.SIGTERM)
        await asyncio.to_thread(wait_for_line, log_path, "Waiting for connections to close", serve, 20)
        await asyncio.sleep(0.5)
        assert serve.poll() is None, "the first stop did not wait for the request in flight"
        seconds = await asyncio.to_thread(stop_time, serve, second, 3)
        with contextlib.suppress(OSError):
            stalled.sendall(b"}")
    assert serve.returncode == 128 + second, log_path.read_text()[-3000:]
    assert f"{second.name} again: exiting at once" in log_path.read_text()
    print(f"second signal: gone {seconds:.2f} s after it")
