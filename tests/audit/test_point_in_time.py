"""Point-in-time reads: ``?as_of=`` answers what the live endpoint answered at that moment.

The service is driven through a task's life (queued, assigned, completed, with a cost) and a
workflow run; at each moment, once the service is quiet and its read models hold every event,
the live answers are kept with the moment's position and time. Afterwards every ``as_of`` read
(by position and by time) must equal what was kept. The HTTP tests run on each runtime, like the
API's (tests/api): the embedded runner on SQLite files, and the cluster service on Kafka with
PostgreSQL read models (skipped locally without them, failing in CI). ``agentbus replay --until``
is run on the log a real server wrote.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Final

import httpx
import pytest
import pytest_asyncio
from click.testing import CliRunner

import services.audit.as_of
from projections import MAIN_PROJECTOR
from services.cli import main
from services.executors.standins.serving import serving
from services.http.app import create_app
from services.runtime.service import Service
from services.runtime.settings import Settings
from tests.api.conftest import ServiceClient, patience, poll, settle

LOOP: Final = "module"
on_loop = pytest.mark.asyncio(loop_scope=LOOP)
RUNTIMES = [
    pytest.param("embedded", id="embedded"),
    pytest.param("kafka", id="kafka", marks=[pytest.mark.kafka, pytest.mark.postgres]),
]
WAIT = {"wait": "true"}
# The reads compared at each moment, by name: (path, params).
READS = {
    "task": ("/v1/tasks/t1", {}),
    "tasks": ("/v1/tasks", {"page_size": 1}),
    "tasks_page_2": ("/v1/tasks", {"page_size": 1, "page": 2}),
    "agent": ("/v1/agents/a1", {}),
    "agents": ("/v1/agents", {}),
    "costs": ("/v1/costs/summary", {}),
    "budgets": ("/v1/budgets", {}),
}


class Client(ServiceClient):
    """The API client of tests/api, keeping its app (whose state holds the rebuilt models)."""

    def __init__(self, service: Service) -> None:
        self.app = create_app(service=service, settings=service.settings)
        httpx.AsyncClient.__init__(self, transport=httpx.ASGITransport(app=self.app), base_url="http://t")
        self.service = service


@pytest_asyncio.fixture(loop_scope=LOOP)
async def client(service: Service) -> AsyncIterator[Client]:
    async with Client(service) as c:
        yield c


@dataclass
class Moment:
    """A point of the service's life: the last event's position and time, and what the reads said."""

    position: int
    time: datetime
    live: dict[str, Any] = field(default_factory=dict)


async def quiet(client: Client) -> tuple[int, datetime]:
    """Once every command is decided, every reaction made and every event in the read models: the
    position of the pool's last event and the latest time stamped."""
    service = client.service
    await settle(service)
    events: list[dict[str, Any]] = []
    after = -1
    while page := (await client.get("/v1/events", params={"after": after, "limit": 1000})).json()["items"]:
        events += page
        after = page[-1]["position"]
    last = events[-1]["position"]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5 * patience(service)
    partition = service.partition_of("default")
    while await service.store.read_position(MAIN_PROJECTOR, service.topics.events, partition) <= last:
        assert loop.time() < deadline, "the read models did not catch up"
        await asyncio.sleep(0.02)
    return last, max(datetime.fromisoformat(e["time"]) for e in events)


async def capture(client: Client, reads: dict[str, tuple[str, dict[str, Any]]]) -> Moment:
    position, time = await quiet(client)
    moment = Moment(position, time)
    for name, (path, params) in reads.items():
        resp = await client.get(path, params=params)
        moment.live[name] = (resp.status_code, resp.json())
    return moment


async def as_of(client: Client, reads: dict[str, tuple[str, dict[str, Any]]],
                point: str) -> dict[str, Any]:
    out = {}
    for name, (path, params) in reads.items():
        resp = await client.get(path, params={**params, "as_of": point})
        out[name] = (resp.status_code, resp.json())
    return out


async def a_task_s_life(client: Client) -> list[Moment]:
    """t1 queued with no agent, assigned once a1 registers, then completed with a cost recorded."""
    moments = []
    resp = await client.post("/v1/tasks", params=WAIT, json={"task_id": "t1", "type": "summarize"})
    assert resp.status_code == 201, resp.text
    resp = await client.post("/v1/tasks", params=WAIT, json={"task_id": "t2", "type": "other",
                                                              "required_capabilities": ["gpu"]})
    assert resp.status_code == 201, resp.text
    moments.append(await capture(client, READS))

    resp = await client.post("/v1/agents", params=WAIT, json={"agent_id": "a1", "name": "one", "capacity": 1})
    assert resp.status_code == 201, resp.text
    await poll(client, "/v1/tasks/t1", lambda t: t["status"] == "assigned")
    resp = await client.put("/v1/budgets", params=WAIT, json={"scope": "agent", "scope_id": "a1",
                                                             "limit_usd": 1.0})
    assert resp.status_code == 200, resp.text
    moments.append(await capture(client, READS))

    for path, body in (("/v1/tasks/t1/start", {"agent_id": "a1"}),
                       ("/v1/costs", {"cost_id": "c1", "agent_id": "a1", "task_id": "t1", "model": "gpt-4o",
                                      "input_tokens": 100, "cost_usd": 0.25}),
                       ("/v1/tasks/t1/complete", {"agent_id": "a1", "result": {"summary": "short"}})):
        resp = await client.post(path, params=WAIT, json=body)
        assert resp.status_code in (200, 201), resp.text
    moments.append(await capture(client, READS))
    return moments


@on_loop
@pytest.mark.parametrize("service", RUNTIMES, indirect=True)
async def test_reads_as_of_a_position_or_a_time_are_what_the_live_reads_said(client: Client) -> None:
    moments = await a_task_s_life(client)
    statuses = [m.live["task"][1]["status"] for m in moments]
    assert statuses == ["queued", "assigned", "completed"]
    assert moments[0].live["agent"][0] == 404 and moments[0].live["costs"][1]["total_usd"] == 0
    assert moments[2].live["costs"][1]["by_task"] == {"t1": 0.25}
    for moment in moments:
        assert await as_of(client, READS, str(moment.position)) == moment.live, moment.position
        assert await as_of(client, READS, moment.time.isoformat()) == moment.live, moment.time
    # Before the first event the pool held nothing; with a position that names the partition.
    before = await as_of(client, READS, "-1")
    assert before["task"][0] == 404 and before["tasks"][1]["total"] == 0
    assert await as_of(client, READS, f"0:{moments[1].position}") == moments[1].live
    # A time between two moments reads as the earlier one; times in another offset are the same time.
    assert moments[0].time < moments[1].time
    local = moments[0].time.astimezone(timezone(timedelta(hours=-3, minutes=-30))).isoformat()
    assert await as_of(client, {"task": READS["task"]}, local) == {"task": moments[0].live["task"]}


@on_loop
@pytest.mark.parametrize("service", RUNTIMES, indirect=True)
async def test_a_workflow_run_as_of_a_moment(client: Client) -> None:
    reads: dict[str, tuple[str, dict[str, Any]]] = {"run": ("/v1/workflows/w1", {})}
    resp = await client.post("/v1/agents", params=WAIT, json={"agent_id": "a1", "name": "one",
                                                              "capabilities": ["fetch"], "capacity": 2})
    assert resp.status_code == 201, resp.text
    definition = {"name": "one-step", "version": "1.0.0", "tasks": [
        {"name": "only", "required_capabilities": ["fetch"]}]}
    resp = await client.post("/v1/commands", params=WAIT, json={
        "type": "StartWorkflow", "data": {"workflow_id": "w1", "definition": definition, "inputs": {}}})
    assert resp.status_code in (200, 201), resp.text
    await poll(client, "/v1/tasks/w1.only", lambda t: t["status"] == "assigned")
    running = await capture(client, reads)
    resp = await client.post("/v1/tasks/w1.only/complete", params=WAIT, json={"result": {"rows": 3}})
    assert resp.status_code == 200, resp.text
    await poll(client, "/v1/workflows/w1", lambda r: r["status"] == "completed")
    ended = await capture(client, reads)

    status, then = (await as_of(client, reads, str(running.position)))["run"]
    assert status == 200 and then["status"] == running.live["run"][1]["status"] == "running"
    # A running run counts its time up to the moment read (here: its latest event), not to now.
    live = dict(running.live["run"][1])
    assert then.pop("execution_time") <= live.pop("execution_time")
    assert then == live
    assert await as_of(client, reads, str(ended.position)) == ended.live
    assert await as_of(client, reads, ended.time.isoformat()) == ended.live
    assert ended.live["run"][1]["steps"][0]["result"] == {"rows": 3}


@on_loop
@pytest.mark.parametrize("service", RUNTIMES, indirect=True)
async def test_points_past_the_end_or_malformed_are_refused_clearly(client: Client) -> None:
    resp = await client.post("/v1/tasks", params=WAIT, json={"task_id": "t1", "type": "x"})
    assert resp.status_code == 201
    position, _ = await quiet(client)
    end = await client.service.log.end_offset(client.service.topics.events, 0)

    past = await client.get("/v1/tasks/t1", params={"as_of": end})
    assert past.status_code == 409, past.text
    assert past.json() | {"detail": ""} == {"detail": "", "position": end, "partition": 0, "end": end}
    assert f"partition 0 ends at {end}" in past.json()["detail"]
    future = await client.get("/v1/tasks", params={"as_of": "2999-01-01T00:00:00Z"})
    assert future.status_code == 409 and "later than now" in future.json()["detail"]

    for bad, says in (("yesterday", "neither a log position"), ("2025-05-01T12:00:00", "UTC offset"),
                      ("3:1", "partitions 0 to 0"), ("1.5", "neither a log position")):
        resp = await client.get("/v1/tasks/t1", params={"as_of": bad})
        assert resp.status_code == 422, (bad, resp.text)
        [err] = resp.json()["detail"]
        assert err["loc"] == ["query", "as_of"] and err["input"] == bad and says in err["msg"], err

    # Too far into the log to rebuild on request: named, with the way to do it offline.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(services.audit.as_of, "MAX_EVENTS", position)
        far = await client.get("/v1/tasks/t1", params={"as_of": position})
        assert far.status_code == 422, far.text
        [err] = far.json()["detail"]
        assert err["type"] == "as_of_too_far" and "agentbus replay --until" in err["msg"]
        assert (await client.get("/v1/tasks/t1", params={"as_of": position - 1})).status_code in (200, 404)


@on_loop
@pytest.mark.parametrize("service", ["embedded"], indirect=True)
async def test_a_moment_is_rebuilt_once_and_paged_through(client: Client) -> None:
    for i in range(5):
        resp = await client.post("/v1/tasks", params=WAIT, json={"task_id": f"t{i}", "type": "x"})
        assert resp.status_code == 201
    position, _ = await quiet(client)
    pages = [(await client.get("/v1/tasks", params={"as_of": position, "page_size": 2, "page": page})).json()
             for page in (1, 2, 3)]
    assert [t["task_id"] for p in pages for t in p["items"]] == [f"t{i}" for i in range(5)]
    assert (await client.get("/v1/tasks/t4", params={"as_of": position})).status_code == 200
    app_state = client.app.state
    assert app_state.point_in_time.builds == 1
    # Another moment is another rebuild; the first is still kept.
    assert (await client.get("/v1/tasks/t4", params={"as_of": position - 1})).status_code == 200
    assert (await client.get("/v1/tasks/t0", params={"as_of": position})).status_code == 200
    assert app_state.point_in_time.builds == 2


def test_replay_until_reports_the_state_then(tmp_path: Path) -> None:
    data = tmp_path / "data"
    points: dict[str, int] = {}
    with serving(create_app(settings=Settings(data_dir=data))) as url, httpx.Client(base_url=url) as http:
        def last() -> int:
            items = http.get("/v1/events", params={"limit": 1000}).json()["items"]
            return int(items[-1]["position"])

        assert http.post("/v1/tasks", params=WAIT, json={"task_id": "t1", "type": "x"}).status_code == 201
        points["queued"] = last()
        registered = http.post("/v1/agents", params=WAIT, json={"agent_id": "a1", "name": "a"})
        assert registered.status_code == 201
        for _ in range(500):  # the assignment follows the registration: read models at it, or later
            read = http.get("/v1/tasks/t1", params={"min_position": registered.json()["position"]})
            assert read.status_code == 200, read.text
            if read.json()["status"] == "assigned":
                break
            time.sleep(0.01)
        points["assigned"] = last()
        done = http.post("/v1/tasks/t1/complete", params=WAIT, json={"agent_id": "a1"})
        assert done.status_code == 200, done.text
        points["completed"] = last()
        queued_at = http.get("/v1/events", params={"limit": 1}).json()["items"][0]["time"]

        # Read-only: safe beside the running server.
        for status, position in points.items():
            result = CliRunner().invoke(main, ["replay", "--data-dir", str(data), "--json", "--until",
                                               str(position)])
            assert result.exit_code == 0, result.output
            report = json.loads(result.output)
            assert report["pools"]["default"]["tasks"] == {status: 1}, (status, report)
            assert report["until"] == {"0": position} and report["events"] == position + 1
        by_time = CliRunner().invoke(main, ["replay", "--data-dir", str(data), "--until", queued_at])
        assert by_time.exit_code == 0, by_time.output
        assert "tasks: queued 1" in by_time.output and "as of position 0:" in by_time.output
        now = CliRunner().invoke(main, ["replay", "--data-dir", str(data), "--json"])
        assert json.loads(now.output)["pools"]["default"]["tasks"] == {"completed": 1}
        past = CliRunner().invoke(main, ["replay", "--data-dir", str(data), "--until", "100000"])
        assert past.exit_code == 1 and "--until: as_of 100000 is beyond the end" in past.output
