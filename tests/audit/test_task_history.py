"""A task's history: every event about it in log order, each with the command, the coordinator's
decision and the timer that caused it.

The task is driven through real causes: a client submits it, the coordinator assigns it, its
timeout fires, a retry timer queues it again, the coordinator assigns it again and it times out
for good; an agent's late report is rejected and a cost is recorded against it. The expected
events are picked from ``GET /v1/events`` independently. Runs on each runtime like the API tests
(tests/api); the CLI and the permissions are checked on a real server with authentication on.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final

import httpx
import pytest
import pytest_asyncio
from click.testing import CliRunner

import services.audit.history
from services.cli import main
from services.runtime.service import Service
from services.runtime.settings import ENV_PREFIX
from tests.api.conftest import ServiceClient, poll, settle
from tests.auth.conftest import deployment

LOOP: Final = "module"
on_loop = pytest.mark.asyncio(loop_scope=LOOP)
RUNTIMES = [
    pytest.param("embedded", id="embedded"),
    pytest.param("kafka", id="kafka", marks=[pytest.mark.kafka, pytest.mark.postgres]),
]
WAIT = {"wait": "true"}


@pytest_asyncio.fixture(loop_scope=LOOP)
async def client(service: Service) -> AsyncIterator[ServiceClient]:
    async with ServiceClient(service) as c:
        yield c


def as_actor(name: str) -> dict[str, str]:
    return {"X-Agentbus-Actor": name}


async def a_task_that_times_out_twice(client: ServiceClient) -> int:
    """t1's life; returns the commands position its submission answered."""
    resp = await client.post("/v1/agents", params=WAIT, headers=as_actor("ops"),
                             json={"agent_id": "a1", "name": "one", "capacity": 1})
    assert resp.status_code == 201, resp.text
    submitted = await client.post("/v1/tasks", params=WAIT, headers=as_actor("auditor"), json={
        "task_id": "t1", "type": "summarize", "timeout_s": 0.3,
        "retry": {"max_attempts": 2, "base_delay_s": 0.1, "jitter": 0}})
    assert submitted.status_code == 201, submitted.text
    await poll(client, "/v1/tasks/t1", lambda t: t["status"] == "failed", timeout=10)
    late = await client.post("/v1/tasks/t1/complete", params=WAIT, headers=as_actor("late-agent"),
                             json={"agent_id": "a1"})
    assert late.status_code == 409, late.text
    cost = await client.post("/v1/costs", params=WAIT, headers=as_actor("meter"), json={
        "cost_id": "c1", "agent_id": "a1", "task_id": "t1", "model": "gpt-4o", "cost_usd": 0.1})
    assert cost.status_code == 201, cost.text
    await settle(client.service)
    return int(submitted.json()["position"])


def who(event: dict[str, Any]) -> tuple[str, str]:
    """The type and actor of the command that caused ``event``."""
    command = event["cause"]["command"]
    return command["type"], command["actor"]


async def events_about(client: httpx.AsyncClient, task_id: str) -> list[dict[str, Any]]:
    """The pool's events naming the task, or rejecting a command about it, from GET /v1/events."""
    out, after = [], -1
    while page := (await client.get("/v1/events", params={"after": after, "limit": 1000})).json()["items"]:
        out += [e for e in page if e["data"].get("task_id") == task_id
                or (e["type"] == "CommandRejected" and e.get("subject") == task_id)]
        after = page[-1]["position"]
    return out


@on_loop
@pytest.mark.parametrize("service", RUNTIMES, indirect=True)
async def test_history_names_each_event_s_command_decision_and_timer(client: ServiceClient) -> None:
    assert (await client.get("/v1/tasks/nope/history")).status_code == 404
    submit_position = await a_task_that_times_out_twice(client)
    resp = await client.get("/v1/tasks/t1/history")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert (body["task_id"], body["pool"], body["partition"], body["complete"]) == ("t1", "default", 0, True)
    events = body["events"]
    expected = await events_about(client, "t1")
    assert [(e["position"], e["id"]) for e in events] == [(e["position"], e["id"]) for e in expected]
    assert body["next_after"] >= events[-1]["position"]
    for event in events:
        assert {"position", "time", "type", "commandid", "causationid", "correlationid"} <= set(event)
        assert event["cause"]["command"]["id"] == event["causationid"]
    by_type: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        by_type.setdefault(event["type"], []).append(event)
    assert [e["type"] for e in events][:2] == ["TaskSubmitted", "TaskAssigned"]

    # The client's command, found on the commands topic where its write said.
    command = by_type["TaskSubmitted"][0]["cause"]["command"]
    assert (command["type"], command["actor"]) == ("SubmitTask", "auditor")
    assert command["position"] == submit_position
    assert by_type["TaskSubmitted"][0]["cause"]["decision"] is None

    # The coordinator's decisions: each assignment with the candidates it weighed.
    assignments = by_type["TaskAssigned"]
    assert [a["data"]["attempt"] for a in assignments] == [1, 2]
    for a in assignments:
        decision = a["cause"]["decision"]
        assert decision["position"] == a["position"] and decision["audit"] == a["data"]["audit"]
        assert decision["audit"]["strategy"] and decision["audit"]["candidates"][0]["agent_id"] == "a1"
        assert "score" in decision["audit"]["candidates"][0]
        assert who(a) == ("AssignTask", "coordinator")
        assert a["cause"]["timer"] is None

    # The timeouts: armed by the assignment's decision, fired by the timer service.
    armed = [e for e in by_type["TimerScheduled"] if e["data"]["kind"] == "task_timeout"]
    assert [e["cause"]["decision"]["position"] for e in armed] == [a["position"] for a in assignments]
    timed_out = by_type["TaskTimedOut"]
    assert len(timed_out) == 2
    for armed_by, event in zip(armed, timed_out, strict=True):
        timer = event["cause"]["timer"]
        assert (timer["kind"], timer["task_id"]) == ("task_timeout", "t1")
        assert timer["timer_id"] == armed_by["data"]["timer_id"]
        assert timer["generation"] == armed_by["data"]["generation"]
        assert timer["scheduled"]["position"] == armed_by["position"]
        assert timer["scheduled"]["delay_s"] == 0.3 and timer["position"] < event["position"]
        assert who(event) == ("FireTimer", "timers")
    # The retry: a timer of its own queued the task again; the second timeout failed it for good.
    [requeued] = by_type["TaskRequeued"]
    assert requeued["cause"]["timer"]["kind"] == "retry"
    retry_armed = requeued["cause"]["timer"]["scheduled"]["position"]
    assert retry_armed == by_type["TaskRetryScheduled"][0]["position"] + 1
    [failed] = by_type["TaskFailed"]
    assert failed["cause"]["timer"]["timer_id"] == timed_out[1]["cause"]["timer"]["timer_id"]

    # A late report, rejected; and a cost recorded against the task.
    [rejected] = by_type["CommandRejected"]
    assert who(rejected) == ("CompleteTask", "late-agent")
    [cost] = by_type["CostRecorded"]
    assert who(cost) == ("RecordCost", "meter")

    # Continuing after a position gives the rest.
    after = assignments[0]["position"]
    rest = (await client.get("/v1/tasks/t1/history", params={"after": after})).json()
    assert [e["position"] for e in rest["events"]] == [e["position"] for e in events if e["position"] > after]


@on_loop
@pytest.mark.parametrize("service", ["embedded"], indirect=True)
async def test_a_long_history_is_read_in_bounded_pieces(client: ServiceClient,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    resp = await client.post("/v1/tasks", params=WAIT, json={"task_id": "t1", "type": "x"})
    assert resp.status_code == 201
    for i in range(6):  # other tasks' events between t1's
        other = await client.post("/v1/tasks", params=WAIT, json={"task_id": f"o{i}", "type": "x"})
        assert other.status_code == 201
        assert (await client.post("/v1/tasks/t1/start", params=WAIT)).status_code == 409  # no agent holds it
    await settle(client.service)
    whole = (await client.get("/v1/tasks/t1/history")).json()
    assert whole["complete"] and len(whole["events"]) == 1 + 1 + 6  # submitted, unassignable, rejections

    monkeypatch.setattr(services.audit.history, "SCAN_LIMIT", 5)
    pieces: list[dict[str, Any]] = []
    params: dict[str, int] = {}
    while True:
        piece = (await client.get("/v1/tasks/t1/history", params=params)).json()
        pieces += piece["events"]
        if piece["complete"]:
            break
        assert piece["next_after"] >= max([e["position"] for e in pieces], default=-1)
        params = {"after": piece["next_after"]}
    assert [e["position"] for e in pieces] == [e["position"] for e in whole["events"]]
    assert len({json.dumps(p["cause"]["command"]) for p in pieces}) == len(pieces)  # a command each


def test_the_cli_and_the_permissions_of_audit_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX) and not name.startswith(f"{ENV_PREFIX}TEST_"):
            monkeypatch.delenv(name)
    with deployment(tmp_path) as dep:
        operator, reader = dep.token("operator"), dep.token("reader")
        with dep.client(operator) as http:
            submitted = http.post("/v1/tasks", params=WAIT, json={"task_id": "t1", "type": "x"})
            assert submitted.status_code == 201, submitted.text
            first = submitted.json()["events"][0]["position"]
        with dep.client() as anonymous:
            assert anonymous.get("/v1/tasks/t1/history").status_code == 401
            assert anonymous.get("/v1/tasks/t1", params={"as_of": first}).status_code == 401
        with dep.client(reader) as http:
            assert http.get("/v1/tasks/t1", params={"as_of": first}).json()["status"] == "queued"
            assert http.get("/v1/tasks/t1/history").status_code == 200

        env = {"AGENTBUS_URL": dep.url, "AGENTBUS_TOKEN": reader}
        shown = CliRunner().invoke(main, ["task", "show", "t1", "--as-of", str(first)], env=env)
        assert shown.exit_code == 0, shown.output
        assert json.loads(shown.output)["status"] == "queued"
        history = CliRunner().invoke(main, ["task", "history", "t1"], env=env)
        assert history.exit_code == 0, history.output
        events = json.loads(history.output)["events"]
        assert events[0]["type"] == "TaskSubmitted"
        assert events[0]["cause"]["command"]["actor"].startswith("token:")
        past = CliRunner().invoke(main, ["task", "show", "t1", "--as-of", "999999"], env=env)
        assert past.exit_code == 1 and "HTTP 409" in past.output
