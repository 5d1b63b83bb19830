"""/metrics on the real app over an embedded service: the values move with what is done through
the API, and every scrape parses with prometheus_client's text-format parser."""

from __future__ import annotations

import uuid

import httpx
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families

from tests.metrics.conftest import scrape, until

HTTP = "agentbus_http_request_duration_seconds_count"


async def test_submitted_tasks_count_as_commands_and_as_tasks_by_status(client: httpx.AsyncClient) -> None:
    before = await scrape(client)
    for i in range(3):
        resp = await client.post("/v1/tasks?wait=true", json={"task_id": f"t{i}", "type": "work"})
        assert resp.status_code == 201, resp.text
    after = await until(client, lambda s: s.value("agentbus_tasks", pool="default", status="queued") == 3)
    submitted = dict(type="SubmitTask", outcome="accepted")
    assert after.value("agentbus_commands_total", **submitted) - before.value("agentbus_commands_total",
                                                                              **submitted) == 3
    events = "agentbus_events_total"
    assert after.value(events, type="TaskSubmitted") - before.value(events, type="TaskSubmitted") == 3
    assert after.value("agentbus_queue_depth", pool="default") == 3

    # An agent takes them: the queued series falls to 0 rather than vanishing.
    resp = await client.post("/v1/agents?wait=true", json={"agent_id": "a1", "name": "a1", "capacity": 5})
    assert resp.status_code == 201, resp.text
    moved = await until(client, lambda s: s.value("agentbus_tasks", pool="default", status="assigned") == 3)
    assert moved.has("agentbus_tasks", pool="default", status="queued")
    assert moved.value("agentbus_tasks", pool="default", status="queued") == 0
    assert moved.value("agentbus_queue_depth", pool="default") == 0
    assert moved.value("agentbus_agents", pool="default", status="active") == 1


async def test_a_rejection_counts_by_reason_code(client: httpx.AsyncClient) -> None:
    before = await scrape(client)
    resp = await client.post("/v1/tasks/nobody/start?wait=true", json={"agent_id": "ghost"})
    assert resp.status_code == 404 and resp.json()["code"] == "UNKNOWN_TASK", resp.text
    after = await scrape(client)
    code = dict(type="StartTask", code="UNKNOWN_TASK")
    rejections = "agentbus_command_rejections_total"
    assert after.value(rejections, **code) - before.value(rejections, **code) == 1
    rejected = dict(type="StartTask", outcome="rejected")
    assert (after.value("agentbus_commands_total", **rejected)
            - before.value("agentbus_commands_total", **rejected)) == 1
    assert after.value("agentbus_events_total", type="CommandRejected") > 0


async def test_each_request_is_timed_by_route_template_and_status(client: httpx.AsyncClient) -> None:
    one = dict(method="GET", route="/v1/tasks/{task_id}", status="404")
    unmatched = dict(method="GET", route="unmatched", status="404")
    before = await scrape(client)
    for _ in range(2):
        assert (await client.get(f"/v1/tasks/{uuid.uuid4()}")).status_code == 404
    assert (await client.get("/no/such/path")).status_code == 404
    after = await scrape(client)
    assert after.value(HTTP, **one) - before.value(HTTP, **one) == 2
    assert after.value(HTTP, **unmatched) - before.value(HTTP, **unmatched) == 1
    assert after.value("agentbus_http_request_duration_seconds_sum", **one) > 0
    inf = after.value("agentbus_http_request_duration_seconds_bucket", **one, le="+Inf")
    assert inf == after.value(HTTP, **one)
    # Scrapes are not timed: they would measure themselves.
    assert not any(dict(labels)["route"] == "/metrics" for labels in after.series(HTTP))


async def test_a_recorded_cost_counts_by_pool_and_model(client: httpx.AsyncClient) -> None:
    model = f"model-{uuid.uuid4().hex[:8]}"
    resp = await client.post("/v1/agents?wait=true", json={"agent_id": "a1", "name": "a1"})
    assert resp.status_code == 201, resp.text
    for usd in (0.25, 0.5):
        resp = await client.post("/v1/costs?wait=true", json={
            "agent_id": "a1", "model": model, "input_tokens": 100, "output_tokens": 40, "cost_usd": usd})
        assert resp.status_code == 201, resp.text
    after = await scrape(client)
    assert after.value("agentbus_cost_usd_total", pool="default", model=model) == pytest.approx(0.75)
    assert after.value("agentbus_tokens_total", pool="default", model=model, kind="input") == 200
    assert after.value("agentbus_tokens_total", pool="default", model=model, kind="output") == 80


async def test_lag_is_reported_per_partition_and_is_zero_once_caught_up(client: httpx.AsyncClient) -> None:
    for i in range(5):
        assert (await client.post("/v1/tasks", json={"task_id": f"t{i}", "type": "work"})).status_code == 202
    roles = ("decider", "coordinator", "projector")
    caught_up = await until(client, lambda s: all(
        s.has("agentbus_lag_records", role=r, partition="0") and s.value("agentbus_lag_records", role=r,
                                                                         partition="0") == 0 for r in roles))
    assert caught_up.value("agentbus_log_end_offset", topic="commands", partition="0") >= 5
    assert caught_up.value("agentbus_log_end_offset", topic="events", partition="0") >= 5
    assert caught_up.value("agentbus_scrape_failed", part="lag") == 0
    assert caught_up.value("agentbus_scrape_failed", part="read_models") == 0


async def test_openmetrics_when_asked_for(client: httpx.AsyncClient) -> None:
    resp = await client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("application/openmetrics-text")
    names = {f.name for f in openmetrics_families(resp.text)}  # type: ignore[no-untyped-call]
    assert {"agentbus_commands", "agentbus_lag_records", "process_cpu_seconds"} <= names
