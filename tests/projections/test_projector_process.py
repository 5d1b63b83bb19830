"""The embedded projector in a process of its own (``services.runtime.projector_process``).

Real processes: the runner's child is a separate interpreter on the same SQLite files. It must keep
the read models following the log with its position reported back (readers wake without polling),
end with the runner (a stop, and ``kill -9`` of ``agentbus serve``), and take the runner down
loudly when it dies, as an in-process projector's failure does.
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

import httpx
import pytest

from contracts import commands as c
from events import sqlite as sqlite_module
from events.codec import to_record
from events.sqlite import SqliteLog
from projections.queries import dump_tables
from services.runtime.embedded import Runner
from services.runtime.ingest import command_envelope
from services.runtime.projector_process import NUDGE_GAP_S, ProjectorProcess, ProjectorProcessFailed
from services.runtime.settings import Settings
from tests.waiting import until

REPO = Path(__file__).resolve().parents[2]


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped, counts as ended)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _projector_children(parent: int) -> list[int]:
    """The projector processes whose parent is ``parent``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
            if ppid == parent and b"services.runtime.projector_process" in cmdline:
                found.append(int(entry.name))
    return found


async def _registered(runner: Runner, ids: list[str]) -> int:
    """Register agents ``ids`` and wait until the read models hold them; the events offset of the
    last one's outcome."""
    for agent_id in ids:
        await runner.submit(command_envelope(c.RegisterAgent(agent_id=agent_id, name=agent_id,
                                                             capabilities=("x",), capacity=1)))
    last = await runner.wait_decided(0, await runner.log.end_offset("commands", 0) - 1, timeout=10)
    assert last is not None
    assert await runner.store.wait_for_position("events", 0, last, timeout=20)
    return last


async def _agents(runner: Runner) -> list[str]:
    return sorted(a["agent_id"] for a in (await dump_tables(runner.store))["agents"])


async def test_the_projector_runs_in_a_child_process_and_readers_wake_on_its_positions(
        tmp_path: Path) -> None:
    runner = Runner(Settings(data_dir=tmp_path, projector_process=True))
    async with runner:
        await runner.ready()
        process = runner.projector_process
        assert process is not None and process.pid is not None
        pid = process.pid
        last = await _registered(runner, [f"a{i}" for i in range(30)])
        assert pid != os.getpid() and _alive(pid)
        assert await _agents(runner) == sorted(f"a{i}" for i in range(30))
        # Once the position is known, a reader waiting for it returns without asking the database:
        # the child reported it (an in-process waiter is woken by that report, not by polling).
        assert runner.store._known[("read_models", "events", 0)] > last
    with contextlib.suppress(AssertionError):
        until(lambda: not _alive(pid), timeout=10, interval=0.05)
    assert not _alive(pid), "the projector process outlived the runner's stop"


async def test_a_restart_resumes_the_child_projector_where_it_stopped(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, projector_process=True)
    async with Runner(settings) as first:
        await first.ready()
        await _registered(first, [f"a{i}" for i in range(10)])
    async with Runner(settings) as second:
        await second.ready()
        await _registered(second, ["late"])
        assert await _agents(second) == sorted([f"a{i}" for i in range(10)] + ["late"])


async def test_a_child_that_dies_takes_the_runner_down_loudly(tmp_path: Path) -> None:
    runner = Runner(Settings(data_dir=tmp_path, projector_process=True))
    async with runner:
        await runner.ready()
        process = runner.projector_process
        assert process is not None and process.pid is not None
        await _registered(runner, ["a", "b"])
        os.kill(process.pid, signal.SIGKILL)
        await asyncio.wait_for(runner.failed.wait(), 10)
    assert isinstance(runner.failure, ProjectorProcessFailed)
    assert f"pid {process.pid}) exited with code -9" in str(runner.failure)


async def test_the_projector_stays_in_the_runner_when_asked_or_when_the_read_models_are_in_memory(
        tmp_path: Path) -> None:
    async with Runner(Settings(data_dir=tmp_path, projector_process=False)) as runner:
        await runner.ready()
        assert runner.projector_process is None
        await _registered(runner, ["a", "b", "c"])
        assert await _agents(runner) == ["a", "b", "c"]
    memory = Settings(data_dir=tmp_path, database="sqlite+aiosqlite:///:memory:")
    assert memory.projector_own_process is False
    with pytest.raises(ValueError, match="another process can open"):
        _ = Settings(data_dir=tmp_path, database="sqlite+aiosqlite://", projector_process=True) \
            .projector_own_process


async def test_a_nudge_wakes_a_waiter_on_another_processes_append_before_its_poll(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_module, "POLL_INTERVAL_S", 30.0)
    url = f"sqlite:///{tmp_path / 'log.db'}"
    writer, reader = SqliteLog(url), SqliteLog(url)  # two handles on one file: two "processes"
    await writer.start()
    await reader.start()
    try:
        await writer.ensure_topic("events", 1)
        waiting = asyncio.create_task(reader.wait("events", 0, 0, timeout=25))
        await asyncio.sleep(0.2)
        assert not waiting.done()
        await writer.append("events", [to_record(command_envelope(
            c.RegisterAgent(agent_id="a", name="a", capabilities=("x",), capacity=1)))])
        await asyncio.sleep(0.2)
        assert not waiting.done(), "the reader saw another handle's append without a nudge"
        started = time.monotonic()
        reader.nudge("events", 0)
        assert await asyncio.wait_for(waiting, 5) is True
        assert time.monotonic() - started < 5
    finally:
        await reader.close()
        await writer.close()


class _Pipe:
    """The child's input, as ``_nudge`` writes it: when each line was written, and how far the
    log's partition 0 of events was committed then."""

    def __init__(self, log: SqliteLog) -> None:
        self.log = log
        self.written: list[float] = []
        self.ends: list[int] = []

    def write(self, line: bytes) -> None:
        assert line == b"0\n"
        self.written.append(time.monotonic())
        self.ends.append(self.log.committed_end("events", 0))

    async def drain(self) -> None:
        pass


@pytest.mark.parametrize("linger_ms", [30, 0])
async def test_commits_close_together_share_a_nudge_and_the_last_one_always_gets_one(
        tmp_path: Path, linger_ms: int) -> None:
    # No fsync per commit: the 100 commits must come closer together than the gap, even on a
    # loaded machine (with one fsync each they took over 2.5 ms apiece in a full suite run).
    log = SqliteLog(f"sqlite:///{tmp_path / 'log.db'}?synchronous=normal")
    await log.start()
    await log.ensure_topic("events", 1)
    relay = ProjectorProcess(log, None, "", "", 1, linger_ms)  # type: ignore[arg-type]
    pipe = _Pipe(log)
    nudging = asyncio.create_task(relay._nudge(pipe, 0))  # type: ignore[arg-type]
    try:
        await asyncio.sleep(0.05)
        commits = 100
        for i in range(commits):
            await log.append("events", [to_record(command_envelope(
                c.RegisterAgent(agent_id=f"a{i}", name="a", capabilities=("x",), capacity=1)))])
        last_commit = time.monotonic()
        await asyncio.sleep(0.2)
        # The last nudge went out once the last commit was there (``last_commit`` is read after the
        # append returned, so that nudge may come a few microseconds before it).
        assert pipe.ends and pipe.ends[-1] == commits, "the last commit was never nudged"
        if linger_ms:
            assert len(pipe.written) < commits / 2, f"{len(pipe.written)} nudges for {commits} commits"
            gaps = [b - a for a, b in zip(pipe.written, pipe.written[1:], strict=False)]
            assert min(gaps, default=1.0) >= NUDGE_GAP_S * 0.9
            assert pipe.written[-1] - last_commit < NUDGE_GAP_S + 0.1
        else:  # no linger: the child may wait at once, so every commit is nudged as before
            assert len(pipe.written) == commits
    finally:
        nudging.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await nudging
        await log.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(tmp_path: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    """``agentbus serve`` on ``tmp_path/data``, healthy; its process and URL."""
    port = _free_port()
    err_path = tmp_path / f"serve-{port}.err"
    with open(err_path, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "services.cli", "serve", "--data-dir",
                                 str(tmp_path / "data"), "--port", str(port)],
                                cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=err)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        assert proc.poll() is None, err_path.read_text()
        with contextlib.suppress(httpx.TransportError):
            return httpx.get(f"{url}/v1/health", timeout=5).status_code == 200
        return False

    try:
        until(healthy, timeout=60, interval=0.1)
    except BaseException:
        proc.kill()
        proc.wait(30)
        raise
    return proc, url


def _add_agent(url: str, agent_id: str) -> int:
    body = {"agent_id": agent_id, "name": agent_id, "capabilities": ["x"]}
    resp = httpx.post(f"{url}/v1/agents", json=body, timeout=10)
    assert resp.status_code == 202, resp.text
    return int(resp.json()["position"])


@pytest.mark.slow
def test_kill_9_of_serve_ends_its_projector_process_and_a_restart_serves(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTBUS_")}
    env["AGENTBUS_PROJECTOR_PROCESS"] = "true"
    proc, url = _serve(tmp_path, env)
    try:
        children = until(lambda: _projector_children(proc.pid), timeout=30, interval=0.1)
        assert len(children) == 1, children
        _add_agent(url, "before")
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        with contextlib.suppress(AssertionError):
            until(lambda: not _alive(children[0]), timeout=15, interval=0.05)
        assert not _alive(children[0]), "the projector process outlived agentbus serve's kill -9"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    proc, url = _serve(tmp_path, env)
    try:
        position = _add_agent(url, "after")
        listed = httpx.get(f"{url}/v1/agents", params={"min_position": position}, timeout=10)
        assert listed.status_code == 200, listed.text
        assert {"before", "after"} <= {a["agent_id"] for a in listed.json()["items"]}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
