"""What deliveries do: a source's mapping turns them into commands (a task, a run of a stored
definition), a stored definition with a ``trigger`` starts on its event, a rule that cannot apply
says why on the log, and a restart never maps a delivery twice."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from events.codec import from_record
from services.runtime.service import Service
from services.runtime.settings import Settings
from services.webhooks.mapping import digest
from services.webhooks.reactor import ACTOR
from tests.api.conftest import poll, settle
from tests.webhooks.conftest import (
    ORDER_TYPE_RULE,
    StandardSender,
    api,
    events_of,
    github_headers,
    new_secret,
    put_source,
    running,
)

SHIP = {"on": "order.created", "command": "SubmitTask", "data": {
    "task_id": "ship-{{ payload.id }}", "type": "ship", "priority": {"$jmespath": "priority"},
    "required_capabilities": ["shipping"],
    "parameters": {"skus": {"$jmespath": "items[*].sku"}, "to": "{{ payload.customer.name | upper }}",
                   "source": "{{ event.source }}/{{ event.id }}"}}}
ORDER = {"type": "order.created", "id": "o-7", "priority": 8, "customer": {"name": "ada"},
         "items": [{"sku": "book"}, {"sku": "pen"}]}
# A definition a GitHub push starts: the payload is its input ``event``.
DEPLOY: dict[str, Any] = {
    "name": "deploy", "version": "1.0.0", "trigger": {"webhook": "gh", "event": "push"},
    "inputs": {"event": {"type": "object", "required": True}},
    "tasks": [{"name": "build", "action": "build", "required_capabilities": ["builder"],
               "parameters": {"ref": "{{ inputs.event.ref }}", "sha": "{{ inputs.event.after }}"}}],
}
PUSH = {"ref": "refs/heads/main", "after": "5f2c0e", "commits": [{"id": "5f2c0e"}]}


async def test_a_rule_turns_a_delivery_into_a_task(client: httpx.AsyncClient, service: Service) -> None:
    sender = StandardSender(new_secret())
    await put_source(client, "shop", sender.secret, mapping={"rules": [SHIP]})
    resp = await sender.send(client, "shop", ORDER, msg_id="msg_7")
    assert resp.status_code == 200 and resp.json()["rules"] == 1, resp.text
    task = await poll(client, "/v1/tasks/ship-o-7", lambda t: t["status"] in ("queued", "unassignable"))
    assert task["type"] == "ship" and task["priority"] == 8 and task["required_capabilities"] == ["shipping"]
    assert task["parameters"] == {"skus": ["book", "pen"], "to": "ADA", "source": "shop/msg_7"}
    [submitted] = await events_of(client, "TaskSubmitted")
    assert submitted["commandid"] == "webhook.rule:shop:msg_7:0"
    assert submitted["correlationid"] == "webhook:shop:msg_7"


async def test_rules_apply_to_their_event_type_and_when(client: httpx.AsyncClient, service: Service) -> None:
    sender = StandardSender(new_secret())
    big_only = {**ORDER_TYPE_RULE, "when": "total > `100`"}
    await put_source(client, "shop", sender.secret, mapping={"rules": [big_only]})
    for payload in ({"type": "order.created", "id": "small", "total": 5},
                    {"type": "order.paid", "id": "paid", "total": 500},
                    {"type": "order.created", "id": "big", "total": 500}):
        assert (await sender.send(client, "shop", payload)).status_code == 200
    await settle(service)
    assert [e["data"]["task_id"] for e in await events_of(client, "TaskSubmitted")] == ["big"]


async def test_a_rule_that_cannot_apply_is_recorded_with_why(client: httpx.AsyncClient,
                                                             service: Service) -> None:
    sender = StandardSender(new_secret())
    needs_id = {"on": "*", "command": "SubmitTask", "data": {"task_id": "{{ payload.id }}", "type": "t"}}
    bad_priority = {"on": "*", "command": "SubmitTask", "data": {"task_id": "p", "type": "t", "priority": 99}}
    no_workflow = {"on": "*", "workflow": "missing"}
    await put_source(client, "shop", sender.secret, mapping={"rules": [needs_id, bad_priority, no_workflow]})
    resp = await sender.send(client, "shop", {"type": "ping"}, msg_id="msg_p")
    assert resp.status_code == 200 and resp.json()["rules"] == 3
    await settle(service)
    failed = {e["data"]["rule"]: e for e in await events_of(client, "WebhookMappingFailed")}
    assert sorted(failed) == [0, 1, 2]
    assert "id" in failed[0]["data"]["error"] and "priority" in failed[1]["data"]["error"]
    assert "no workflow definition 'missing'" in failed[2]["data"]["error"]
    assert failed[2]["data"]["workflow"] == "missing"
    assert all(e["correlationid"] == "webhook:shop:msg_p" for e in failed.values())
    assert await events_of(client, "TaskSubmitted") == []


async def test_a_stored_definition_starts_on_its_trigger(client: httpx.AsyncClient, service: Service) -> None:
    secret = "gh-hook-secret"
    await put_source(client, "gh", secret, scheme="github")
    stored = await client.put("/v1/workflow-definitions/deploy", json=DEPLOY)
    assert stored.status_code == 201, stored.text
    assert stored.json()["events"][0]["data"]["definition"]["trigger"] == DEPLOY["trigger"]
    for event, delivery in (("ping", "d-ping"), ("push", "d-push")):
        body = json.dumps({"zen": "hi"} if event == "ping" else PUSH).encode()
        resp = await client.post("/v1/webhooks/gh", content=body,
                                 headers=github_headers(secret, body, event, delivery))
        assert resp.status_code == 200, resp.text
    run_id = f"deploy-{digest('gh', 'd-push')}"
    run = await poll(client, f"/v1/workflows/{run_id}", lambda r: r["status"] in ("queued", "running"))
    assert run["name"] == "deploy"
    task = await poll(client, f"/v1/tasks/{run_id}.build", lambda t: True)
    assert task["data"]["parameters"] == {"ref": "refs/heads/main", "sha": "5f2c0e"}
    await settle(service)
    assert len(await events_of(client, "WorkflowStarted")) == 1  # the ping started nothing


async def test_a_rule_starts_a_stored_definition_with_inputs(client: httpx.AsyncClient,
                                                             service: Service) -> None:
    definition = {"name": "refund", "inputs": {"order": {"type": "string", "required": True}},
                  "tasks": [{"name": "pay_back", "required_capabilities": ["payments"],
                             "parameters": {"order": "{{ inputs.order }}"}}]}
    assert (await client.put("/v1/workflow-definitions/refund", json=definition)).status_code == 201
    sender = StandardSender(new_secret())
    rule = {"on": "order.refunded", "workflow": "refund", "inputs": {"order": {"$jmespath": "id"}}}
    await put_source(client, "shop", sender.secret, mapping={"rules": [rule]})
    resp = await sender.send(client, "shop", {"type": "order.refunded", "id": "o-9"}, msg_id="msg_r")
    assert resp.status_code == 200
    run_id = f"refund-{digest('shop', 'msg_r')}-0"
    await poll(client, f"/v1/workflows/{run_id}", lambda r: r["status"] in ("queued", "running"))
    task = await poll(client, f"/v1/tasks/{run_id}.pay_back", lambda t: True)
    assert task["data"]["parameters"] == {"order": "o-9"}


async def test_a_definition_with_a_trigger_must_take_the_payload(client: httpx.AsyncClient,
                                                                 service: Service) -> None:
    for inputs in ({"event": {"type": "string"}}, {"event": {"type": "object"}, "who": {"required": True}}):
        resp = await client.put("/v1/workflow-definitions/deploy", json={**DEPLOY, "inputs": inputs})
        assert resp.status_code == 422, resp.text
        assert "trigger" in resp.text


def _mapped(records: list[Any]) -> list[str | None]:
    """The ids of the commands the webhook reactor issued, in log order."""
    return [env.commandid for env in map(from_record, records) if env.actor == ACTOR]


@pytest.mark.embedded
async def test_a_restart_never_maps_a_delivery_twice(tmp_path: Path) -> None:
    sender = StandardSender(new_secret())
    settings = Settings(data_dir=tmp_path)
    tasks = sorted([f"o-{n}" for n in range(3)] + [f"ship-o-{n}" for n in range(3)])
    async with running(settings) as runner, api(runner) as client:
        await put_source(client, "shop", sender.secret, mapping={"rules": [SHIP, ORDER_TYPE_RULE]})
        for n in range(3):
            resp = await sender.send(client, "shop", {**ORDER, "id": f"o-{n}"}, msg_id=f"msg_{n}")
            assert resp.status_code == 200
        await settle(runner)
        mapped = _mapped(await runner.log.read(runner.topics.commands, 0, 0, 10_000))
        assert len(mapped) == len(set(mapped)) == 6
    async with running(settings) as runner, api(runner) as client:
        await settle(runner)
        assert _mapped(await runner.log.read(runner.topics.commands, 0, 0, 10_000)) == mapped
        assert sorted(e["data"]["task_id"] for e in await events_of(client, "TaskSubmitted")) == tasks
        # A delivery after the restart is mapped, once.
        late_order = {**ORDER, "id": "late"}
        assert (await sender.send(client, "shop", late_order, msg_id="msg_late")).status_code == 200
        await settle(runner)
        late = _mapped(await runner.log.read(runner.topics.commands, 0, 0, 10_000))
        assert late[:6] == mapped
        assert sorted(map(str, late[6:])) == ["webhook.rule:shop:msg_late:0", "webhook.rule:shop:msg_late:1"]
    async with running(settings) as runner, api(runner) as client:  # the rebuild folds all of it in
        await settle(runner)
        assert _mapped(await runner.log.read(runner.topics.commands, 0, 0, 10_000)) == late
        assert len(await events_of(client, "TaskSubmitted")) == 8
