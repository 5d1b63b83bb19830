"""The comparisons of ``agentbus bench --compare``: the eventsourcing peer does the scenario's work
(every task assigned by the least-loaded rule, completed once, its cost recorded; a replay that
reads every stored event), and the bare endpoint validates as agentbus does. Counts, never speed."""

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from services.bench.peer import (
    Bus,
    Coordinator,
    Cost,
    Pool,
    Task,
    agent_specs,
    environment,
    replay,
    run_lifecycle,
    stored_notifications,
    task_spec,
)
from services.executors.standins.serving import free_port

AGENTS, TASKS = 5, 40  # 20 slots for 40 tasks: some wait in the pool's queue for a slot


def _coordinator_events(directory: Path) -> list[Any]:
    app = Coordinator(env=environment(directory))
    try:
        return [app.mapper.to_domain_event(n) for n in stored_notifications(app)]
    finally:
        app.close()


def test_peer_lifecycle_assigns_completes_and_replays_every_event(tmp_path):
    result = run_lifecycle(tmp_path, AGENTS, TASKS)
    assert result["commands"] == AGENTS + 4 * TASKS

    aggregates, replayed = replay(tmp_path)
    # Replay read every row the library stored, in both applications' files.
    stored = 0
    for name in ("bus.sqlite", "coordinator.sqlite"):
        with sqlite3.connect(tmp_path / name) as db:
            stored += db.execute("SELECT COUNT(*) FROM stored_events").fetchone()[0]
    assert replayed == stored

    tasks = {a.task_id: a for a in aggregates.values() if isinstance(a, Task)}
    assert sorted(tasks) == sorted(task_spec(i)[0] for i in range(TASKS))
    costs = [a for a in aggregates.values() if isinstance(a, Cost)]
    assert sorted(c.task_id for c in costs) == sorted(tasks)
    assert all(t.completed_by is not None and t.version == 2 for t in tasks.values())  # completed once
    assert all(c.agent_id == tasks[c.task_id].completed_by for c in costs)

    # The coordinator's decisions, in order, against loads kept here from its own events.
    caps = {agent: set(c) for agent, c, _ in agent_specs(AGENTS)}
    capacity = {agent: cap for agent, _, cap in agent_specs(AGENTS)}
    load = dict.fromkeys(caps, 0)
    waiting: dict[str, tuple[int, int]] = {}  # task -> (-priority, arrival)
    assigned: dict[str, str] = {}
    queued = 0
    for ev in _coordinator_events(tmp_path):
        if isinstance(ev, Pool.TaskQueued):
            queued += 1
            waiting[ev.task_id] = (-ev.priority, queued)
            free = [a for a in caps if set(ev.required) <= caps[a] and load[a] < capacity[a]]
            assert not free, f"{ev.task_id} queued while {free} had room"
        elif isinstance(ev, Pool.TaskAssigned):
            required = set(tasks[ev.task_id].required)
            assert required <= caps[ev.agent_id], f"{ev.task_id} given to an incapable agent"
            free = [a for a in caps if required <= caps[a] and load[a] < capacity[a]]
            assert ev.agent_id in free
            assert load[ev.agent_id] == min(load[a] for a in free), "not the least-loaded capable agent"
            if ev.task_id in waiting:  # from the queue: the best waiting task the agent could take
                mine = waiting.pop(ev.task_id)
                rivals = [w for t, w in waiting.items() if set(tasks[t].required) <= caps[ev.agent_id]]
                assert all(mine < w for w in rivals)
            assert ev.task_id not in assigned, f"{ev.task_id} assigned twice"
            assigned[ev.task_id] = ev.agent_id
            load[ev.agent_id] += 1
        elif isinstance(ev, Pool.TaskReleased):
            assert assigned[ev.task_id] == ev.agent_id
            load[ev.agent_id] -= 1
    assert queued > 0  # the queue was used, so the release path was exercised
    assert not waiting
    assert assigned == {t: task.completed_by for t, task in tasks.items()}
    assert set(load.values()) == {0}

    # The rebuilt pool agrees with the history: every agent idle, nothing waiting.
    pool = next(a for a in aggregates.values() if isinstance(a, Pool))
    assert pool.load == load
    assert not any(pool.queues.values())


def test_peer_replay_on_a_fresh_store_counts_nothing(tmp_path):
    for cls in (Bus, Coordinator):  # creates the (empty) tables
        cls(env=environment(tmp_path)).close()
    aggregates, replayed = replay(tmp_path)
    assert (aggregates, replayed) == ({}, 0)


def test_bare_endpoint_answers_202_to_a_valid_body_422_to_an_invalid_one_and_reads_its_task(tmp_path):
    port = free_port()
    task = {"task_id": "known", "status": "assigned", "data": {"doc": 1},
            "submitted_at": "2026-12-05T00:00:00Z"}
    task_file = tmp_path / "task.json"
    task_file.write_text(json.dumps(task))
    proc = subprocess.Popen([sys.executable, "-m", "services.bench.bare_http", "--port", str(port),
                             "--task-file", str(task_file)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}/v1/tasks"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            try:
                httpx.get(url, timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the bare endpoint did not start"
                time.sleep(0.1)
        ok = httpx.post(url, json={"task_id": "t1", "type": "summarize", "required_capabilities": ["text"]})
        assert ok.status_code == 202
        assert ok.json()["task_id"] == "t1"
        generated = httpx.post(url, content=b'{"type": "summarize"}')  # no Content-Type, no id
        assert generated.status_code == 202
        assert generated.json()["task_id"]
        for bad in ({"type": 5}, {"task_id": "t2"}, {"type": "x", "priority": "high"},
                    {"type": "x", "task_id": "a/b"}):
            assert httpx.post(url, json=bad).status_code == 422, bad
        # The read answers the document it was given, and nothing else.
        read = httpx.get(f"{url}/known")
        assert read.status_code == 200
        assert read.json() == task
        assert httpx.get(f"{url}/t1").status_code == 404
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stderr is not None:
            proc.stderr.close()
