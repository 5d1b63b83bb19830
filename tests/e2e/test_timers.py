"""Durable timers survive ``kill -9``: real ``agentbus serve`` processes on one data directory.

Agent ``a`` (heartbeat_timeout_s=1) sends one heartbeat and holds task ``ta``; agent ``b`` holds
task ``tb`` (timeout_s=2, two attempts, 3 s constant backoff). The server is killed with SIGKILL
before any timer is due (checked on the files: no FireTimer was appended), restarted, and the
timers fire anyway: ``a`` is marked unhealthy and ``ta`` reassigned, ``tb`` times out and is
scheduled for a retry. The server is killed again during the retry's backoff and restarted: the
retry still happens, the second run times out too and ``tb`` fails for good. A heartbeat then
makes ``a`` healthy again and it gets ``ta`` back.

Checked on the log files: every FireTimer command id is in the commands topic once and has
exactly one outcome (one contiguous run of events, one TimerFired), and each effect happened once.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from events import open_log
from events.codec import from_record
from tests.e2e.test_crash import Server

pytestmark = pytest.mark.slow

TIMEOUT_S = 30.0


async def _events(data: Path) -> list[tuple[int, Any]]:
    """Every (offset, envelope) of events partition 0, read from the files (server stopped or dead)."""
    log = open_log(f"sqlite:///{data}/log.db")
    await log.start()
    try:
        out, offset = [], 0
        while batch := await log.read("events", 0, offset, 1000):
            out += [(r.offset, from_record(r)) for r in batch]
            offset = batch[-1].offset + 1
        return out
    finally:
        await log.close()


async def _commands(data: Path) -> list[Any]:
    log = open_log(f"sqlite:///{data}/log.db")
    await log.start()
    try:
        out, offset = [], 0
        while batch := await log.read("commands", 0, offset, 1000):
            out += [from_record(r) for r in batch]
            offset = batch[-1].offset + 1
        return out
    finally:
        await log.close()


async def _until(client: httpx.AsyncClient, what: str, check: Callable[[list[dict[str, Any]]], bool],
                 server: Server, timeout: float = TIMEOUT_S) -> list[dict[str, Any]]:
    """Poll the pool's events over HTTP until ``check(events)`` holds."""
    deadline = time.monotonic() + timeout
    while True:
        items: list[dict[str, Any]] = []
        after = -1
        while True:
            page = (await client.get("/v1/events", params={"after": after, "limit": 1000})).json()
            items += page["items"]
            if not page["items"]:
                break
            after = page["next_after"]
        if check(items):
            return items
        if time.monotonic() > deadline:
            seen = [(e["type"], e["subject"]) for e in items]
            raise AssertionError(f"timed out waiting for {what}; events: {seen}\n{server.diagnostics()}")
        await asyncio.sleep(0.1)


def _has(events: list[dict[str, Any]], type_: str, subject: str, n: int = 1) -> bool:
    return sum(1 for e in events if e["type"] == type_ and e["subject"] == subject) >= n


async def _kill(server: Server) -> None:
    server.send_kill()
    await server.reap_kill()


async def test_timers_fire_exactly_once_across_kill_9(tmp_path: Path) -> None:
    server = Server(tmp_path)
    try:
        await server.start_healthy()
        async with httpx.AsyncClient(base_url=server.url, timeout=10.0) as client:
            wait = {"wait": "true"}
            # Declared dead only long after this test is over: the heartbeat at the end revives it.
            policy = await client.put("/v1/pools/policy", params=wait, json={"dead_after_timeouts": 100})
            assert policy.status_code == 200, policy.text
            # b's liveness is watched from registration too: a timeout longer than the test.
            for agent_id, cap, hb in (("a", "cap-a", 1), ("b", "cap-b", 600)):
                resp = await client.post("/v1/agents", params=wait, json={
                    "agent_id": agent_id, "name": agent_id, "capabilities": [cap], "heartbeat_timeout_s": hb})
                assert resp.status_code == 201, resp.text
            resp = await client.post("/v1/tasks", params=wait, json={
                "task_id": "ta", "type": "t", "required_capabilities": ["cap-a"]})
            assert resp.status_code == 201, resp.text
            resp = await client.post("/v1/tasks", params=wait, json={
                "task_id": "tb", "type": "t", "required_capabilities": ["cap-b"], "timeout_s": 2,
                "retry": {"max_attempts": 2, "strategy": "constant", "base_delay_s": 3}})
            assert resp.status_code == 201, resp.text
            await _until(client, "both assignments", lambda ev: _has(ev, "TaskAssigned", "ta")
                         and _has(ev, "TaskAssigned", "tb"), server, timeout=5)
            beat = await client.post("/v1/agents/a/heartbeat", params=wait, json={"load": 0.5})
            assert beat.status_code == 200, beat.text
        await _kill(server)  # well within the 1 s heartbeat timeout and the 2 s task timeout

        # Nothing was due yet: the timers can only fire after the restart.
        assert not [c for c in await _commands(server.data) if c.type == "FireTimer"]
        pending = {e.data.timer_id for _, e in await _events(server.data) if e.type == "TimerScheduled"}
        assert pending == {"heartbeat:a", "heartbeat:b", "timeout:tb"}

        await server.start_healthy()
        async with httpx.AsyncClient(base_url=server.url, timeout=10.0) as client:
            await _until(client, "the heartbeat and task timeouts after the restart",
                         lambda ev: _has(ev, "AgentMarkedUnhealthy", "a") and _has(ev, "TaskReassigned", "ta")
                         and _has(ev, "TaskRetryScheduled", "tb"), server)
        await _kill(server)  # during tb's 3 s retry backoff
        fired = [e for _, e in await _events(server.data) if e.type == "TimerFired"]
        assert not [e for e in fired if e.data.timer_id == "retry:tb"], "the retry fired before the kill"

        await server.start_healthy()
        async with httpx.AsyncClient(base_url=server.url, timeout=10.0) as client:
            await _until(client, "the retry, its timeout and tb's final failure",
                         lambda ev: _has(ev, "TaskFailed", "tb"), server)
            beat = await client.post("/v1/agents/a/heartbeat", params=wait, json={})
            assert beat.status_code == 200, beat.text
            assert "AgentMarkedHealthy" in [e["type"] for e in beat.json()["events"]]
            await _until(client, "ta back with a", lambda ev: _has(ev, "TaskAssigned", "ta", 2), server)
            agent = (await client.get("/v1/agents/a", params={"min_position": -1})).json()
            assert agent["agent_id"] == "a"
        await server.stop()
    finally:
        server.cleanup()

    events = await _events(server.data)
    commands = await _commands(server.data)
    fire_ids = [c.id for c in commands if c.type == "FireTimer"]
    assert len(fire_ids) == len(set(fire_ids)), Counter(fire_ids).most_common(3)
    # One outcome per FireTimer command: its events form one contiguous run with one TimerFired.
    runs: dict[str, list[int]] = defaultdict(list)
    for offset, env in events:
        runs[env.commandid].append(offset)
    for cid in fire_ids:
        offsets = runs.get(cid, [])
        assert offsets == list(range(offsets[0], offsets[0] + len(offsets))) if offsets else True, cid
        outcome = [events[o][1].type for o in offsets]
        assert outcome.count("TimerFired") == 1, (cid, outcome)
    by = Counter((env.type, env.subject) for _, env in events)
    # The last heartbeat re-arms a's 1 s timer, which may fire again before the server stops.
    healthy_at = next(o for o, env in events if env.type == "AgentMarkedHealthy")
    assert sum(1 for o, env in events if env.type == "AgentMarkedUnhealthy" and o < healthy_at) == 1
    assert by[("AgentMarkedHealthy", "a")] == 1
    assert by[("TaskReassigned", "ta")] == 1
    assert by[("TaskTimedOut", "tb")] == 2  # the first run and the retry
    assert by[("TaskRetryScheduled", "tb")] == 1
    assert by[("TaskRequeued", "tb")] == 1  # the retry timer's effect
    assert by[("TaskFailed", "tb")] == 1
    assert by[("TaskAssigned", "tb")] == 2 and by[("TaskAssigned", "ta")] == 2
    fired = Counter(env.data.timer_id for o, env in events if env.type == "TimerFired" and o < healthy_at)
    assert fired == {"heartbeat:a": 1, "timeout:tb": 2, "retry:tb": 1}, fired
    timed_out = [env.data.attempt for _, env in events if env.type == "TaskTimedOut"]
    assert timed_out == [1, 2]
