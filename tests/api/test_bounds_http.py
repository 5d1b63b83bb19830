"""Values no store could read back are refused at the door (422 naming the field), and the service
goes on serving and restarting after each: nothing bad was appended.

The regression: ``PUT /v1/scaling/policies {"queue_threshold": 2**63}`` was accepted, and the
projector then failed on the record at every start (no SQL integer column holds 2**63).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from events import open_log
from projections import ProjectionStore, rebuild
from services.http.app import create_app
from services.runtime.embedded import Runner
from services.runtime.service import topics_of
from services.runtime.settings import Settings
from tests.api.conftest import poll

pytestmark = pytest.mark.embedded
WAIT = {"wait": "true"}

REFUSED: list[tuple[str, str, dict[str, Any], list[str], str]] = [
    # (method, path, body, the location of the error, words its message has)
    ("PUT", "/v1/scaling/policies", {"agent_kind": "gpu", "queue_threshold": 2**63},
     ["body", "queue_threshold"], "less than or equal to 1000000"),
    ("POST", "/v1/commands",
     {"type": "SetScalingPolicy", "data": {"agent_kind": "gpu", "queue_threshold": 2**63}},
     ["body", "data", "queue_threshold"], "less than or equal to 1000000"),
    ("POST", "/v1/tasks", {"task_id": "t", "type": "x", "data": {"n": 2**70}},
     ["body", "data"], "64-bit"),
    ("POST", "/v1/tasks", {"task_id": "t", "type": "x", "data": {"deep": [{"n": -(2**63) - 1}]}},
     ["body", "data"], "at deep[0].n"),
    ("POST", "/v1/tasks", {"task_id": "t", "type": "a\u0000b"}, ["body", "type"], "NUL"),
    ("POST", "/v1/tasks", {"task_id": "t", "type": "x", "data": {"k": "a\u0000"}}, ["body", "data"], "NUL"),
    ("POST", "/v1/tasks", {"task_id": "a/1", "type": "x"}, ["body", "task_id"], "'/'"),
    ("POST", "/v1/tasks", {"task_id": " t", "type": "x"}, ["body", "task_id"], "whitespace"),
    ("POST", "/v1/agents", {"agent_id": "a\u0007", "name": "n"}, ["body", "agent_id"], "control character"),
    ("POST", "/v1/agents", {"agent_id": "a", "name": "n", "capabilities": "text"},
     ["body", "capabilities"], 'capabilities must be a list of strings, e.g. ["text"]'),
    ("POST", "/v1/tasks", {"task_id": "t", "type": "x", "required_capabilities": "gpu"},
     ["body", "required_capabilities"], 'required_capabilities must be a list of strings, e.g. ["gpu"]'),
    ("POST", "/v1/agents", {"agent_id": "a", "name": "n", "capabilities": [" text"]},
     ["body", "capabilities"], "whitespace"),
    ("POST", "/v1/tasks", {"task_id": "t", "type": "x", "strategy": "fastest"},
     ["body", "strategy"], "'least_loaded', 'round_robin'"),
    ("POST", "/v1/agents/a1/heartbeat", {"cpu": 1e308}, ["body", "cpu"], "less than or equal to 100000"),
    ("PUT", "/v1/resources/limits", {"max_cpu_cores": 1, "max_memory_mb": 1e300, "max_disk_mb": 1,
                                     "max_network_mbps": 1}, ["body", "max_memory_mb"], "less than or equal"),
    ("DELETE", "/v1/agents/a%01", None, ["path", "agent_id"], "control character"),
    # The pool lands in every read model's text columns: PostgreSQL refuses a NUL there.
    ("POST", "/v1/tasks", {"task_id": "t", "type": "x", "pool": "p\u0000"}, ["body", "pool"], "NUL"),
    ("POST", "/v1/tasks?pool=p%00", {"task_id": "t", "type": "x"}, ["query", "pool"], "NUL"),
    ("GET", "/v1/tasks?pool=p%00", None, ["query", "pool"], "NUL"),
    # A lenient nested field (an audit, which events reuse) still cannot smuggle in a NUL: ingest
    # checks the whole command.
    ("POST", "/v1/commands", {"type": "AssignTask", "data": {"task_id": "t1", "agent_id": "a1",
                                                             "audit": {"strategy": "x\u0000"}}},
     ["body", "audit", "strategy"], "NUL"),
]


def _id(case: tuple[Any, ...]) -> str:
    return f"{case[0]} {case[1]} {case[3][-1]}"


async def _client_call(c: httpx.AsyncClient, method: str, path: str, body: Any) -> httpx.Response:
    # A query in ``path`` goes with wait=true (httpx's params= would replace it).
    path, _, query = path.partition("?")
    params = {**WAIT, **dict(p.split("=", 1) for p in query.split("&") if p)}
    return await c.request(method, path, params={k: v.replace("%00", "\x00") for k, v in params.items()},
                           json=body)


async def _rebuild(settings: Settings) -> int:
    """``agentbus projections rebuild``: the read models again from offset 0 of the log (into a
    database of their own, so no connection the service left behind can lock them)."""
    store = ProjectionStore(f"sqlite+aiosqlite:///{settings.data_dir}/rebuilt.db")
    await store.start()
    log = open_log(settings.broker)
    await log.start()
    try:
        return await rebuild(log, store, topics_of(settings).events)
    finally:
        await log.close()
        await store.close()


@pytest.mark.parametrize("case", REFUSED, ids=map(_id, REFUSED))
async def test_refused_with_the_field_named_and_the_service_keeps_working(
    tmp_path: Path, case: tuple[str, str, dict[str, Any], list[str], str]
) -> None:
    method, path, body, loc, words = case
    settings = Settings(data_dir=tmp_path)
    for start in range(2):  # the second start replays everything the first one appended
        async with Runner(settings) as runner:
            await runner.ready()
            transport = httpx.ASGITransport(app=create_app(service=runner))
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                if start == 0:
                    ok = await c.post("/v1/agents", params=WAIT, json={"agent_id": "a1", "name": "one"})
                    assert ok.status_code == 201, ok.text
                    ok = await c.post("/v1/tasks", params=WAIT, json={"task_id": "t1", "type": "x"})
                    assert ok.status_code == 201, ok.text
                    resp = await _client_call(c, method, path, body)
                    assert resp.status_code == 422, resp.text
                    items = resp.json()["detail"]
                    assert any(item["loc"] == loc and words in item["msg"] for item in items), items
                # Reads still answer, from read models that hold only what was accepted.
                await poll(c, "/v1/agents/a1", lambda j: j["agent_id"] == "a1")
                tasks = await poll(c, "/v1/tasks", lambda j: len(j["items"]) > 0)
                assert [t["task_id"] for t in tasks["items"]] == ["t1"]
                scaling = await c.get("/v1/scaling/policies")
                assert scaling.status_code == 200 and scaling.json()["items"] == []
    assert await _rebuild(settings) > 0


async def test_values_at_the_bounds_are_accepted_and_read_back(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    data = {"max": 2**63 - 1, "min": -(2**63), "tiny": 5e-324, "huge": 1.7976931348623157e308,
            "s": "\U0001f600"}
    async with Runner(settings) as runner:
        await runner.ready()
        transport = httpx.ASGITransport(app=create_app(service=runner))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            resp = await c.put("/v1/scaling/policies", params=WAIT,
                               json={"agent_kind": "gpu", "queue_threshold": 1_000_000})
            assert resp.status_code == 200, resp.text
            resp = await c.post("/v1/tasks", params=WAIT,
                                json={"task_id": "x" * 200, "type": "t", "data": data})
            assert resp.status_code == 201, resp.text
            position = resp.json()["events"][-1]["position"]
            task = await c.get(f"/v1/tasks/{'x' * 200}", params={"min_position": position})
            assert task.status_code == 200 and task.json()["data"] == data
    assert await _rebuild(settings) >= 2
