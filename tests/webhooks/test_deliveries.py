"""Deliveries to ``POST /v1/webhooks/{source}``, signed as real senders sign them: a verified one is
an ``ExternalEventReceived`` on the log; a refused one (signature, timestamp, repeat, source, body)
appends nothing at all. Runs on every runtime (tests/api/conftest.py)."""

from __future__ import annotations

import json
import uuid

import httpx

from services.runtime.service import Service
from tests.api.conftest import settle
from tests.webhooks.conftest import (
    StandardSender,
    ends,
    events_of,
    github_headers,
    minutes_ago,
    new_secret,
    put_source,
)

ORDER = {"type": "order.created", "id": "o-1", "total": 12.5, "items": [{"sku": "book", "qty": 2}]}


async def test_a_signed_delivery_becomes_an_event_with_its_payload(
    client: httpx.AsyncClient, service: Service
) -> None:
    sender = StandardSender(new_secret())
    await put_source(client, "shop", sender.secret)
    resp = await sender.send(client, "shop", ORDER, msg_id="msg_one")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["status"] == "received" and body["event_type"] == "order.created"
    assert body["command_id"] == "webhook:shop:msg_one" and body["pool"] == "default"
    [event] = await events_of(client, "ExternalEventReceived")
    assert event["position"] == body["event_position"]
    assert event["data"]["source"] == "shop" and event["data"]["webhook_id"] == "msg_one"
    assert event["data"]["payload"] == ORDER and event["data"]["event_type"] == "order.created"
    assert event["commandid"] == "webhook:shop:msg_one" and event["actor"] == "webhook:shop"


async def test_a_github_delivery_is_verified_by_x_hub_signature_256(
    client: httpx.AsyncClient, service: Service
) -> None:
    await put_source(client, "gh", "It's a Secret to Everybody", scheme="github")
    body = json.dumps({"ref": "refs/heads/main", "commits": [{"id": "abc"}]}).encode()
    delivery = str(uuid.uuid4())
    resp = await client.post("/v1/webhooks/gh", content=body,
                             headers=github_headers("It's a Secret to Everybody", body, "push", delivery))
    assert resp.status_code == 200, resp.text
    [event] = await events_of(client, "ExternalEventReceived")
    assert event["data"]["event_type"] == "push" and event["data"]["webhook_id"] == delivery
    # Signed with another secret, or with the body changed after signing: 401, nothing appended.
    before = await ends(service)
    right = "It's a Secret to Everybody"
    for headers, content in ((github_headers("another secret", body, "push", "d-2"), body),
                             (github_headers(right, body, "push", "d-3"), body + b" ")):
        refused = await client.post("/v1/webhooks/gh", content=content, headers=headers)
        assert refused.status_code == 401, refused.text
    await settle(service)
    assert await ends(service) == before


async def test_a_bad_or_missing_signature_is_401_and_appends_nothing(
    client: httpx.AsyncClient, service: Service
) -> None:
    sender = StandardSender(new_secret())
    await put_source(client, "shop", sender.secret)
    await settle(service)
    before = await ends(service)
    body = json.dumps(ORDER)
    wrong = sender.headers(body, secret=new_secret())
    tampered = sender.headers(body)
    missing = {k: v for k, v in sender.headers(body).items() if k != "webhook-signature"}
    garbled = {**sender.headers(body), "webhook-signature": "v1,not base64!"}
    for headers, content in ((wrong, body), (tampered, body.replace("12.5", "0.5")), (missing, body),
                             (garbled, body)):
        resp = await client.post("/v1/webhooks/shop", content=content, headers=headers)
        assert resp.status_code == 401, resp.text
        assert sender.secret not in resp.text
    # Without its id or timestamp a request is no Standard Webhooks delivery at all: 400.
    for absent in ("webhook-id", "webhook-timestamp"):
        headers = {k: v for k, v in sender.headers(body).items() if k != absent}
        resp = await client.post("/v1/webhooks/shop", content=body, headers=headers)
        assert resp.status_code == 400 and f"the {absent} header is missing" in resp.text, resp.text
    await settle(service)
    assert await ends(service) == before
    assert await events_of(client, "ExternalEventReceived") == []


async def test_a_timestamp_outside_five_minutes_is_refused(client: httpx.AsyncClient,
                                                           service: Service) -> None:
    sender = StandardSender(new_secret())
    await put_source(client, "shop", sender.secret)
    await settle(service)
    before = await ends(service)
    for when in (minutes_ago(6), minutes_ago(-6)):
        resp = await sender.send(client, "shop", ORDER, when=when)
        assert resp.status_code == 400, resp.text
        assert "5 minutes" in resp.json()["detail"]
    await settle(service)
    assert await ends(service) == before
    # Within the window it is accepted, signed the same way.
    assert (await sender.send(client, "shop", ORDER, when=minutes_ago(4))).status_code == 200


async def test_a_repeated_webhook_id_is_409_and_its_event_exists_once(
    client: httpx.AsyncClient, service: Service
) -> None:
    sender = StandardSender(new_secret())
    await put_source(client, "shop", sender.secret)
    first = await sender.send(client, "shop", ORDER, msg_id="msg_dup")
    assert first.status_code == 200, first.text
    await settle(service)
    before = await ends(service)
    # The same delivery again, and a new body under the same id (a replay that re-signs): both refused.
    again = await sender.send(client, "shop", ORDER, msg_id="msg_dup")
    other = await sender.send(client, "shop", {**ORDER, "id": "o-2"}, msg_id="msg_dup")
    for resp in (again, other):
        assert resp.status_code == 409, resp.text
        assert resp.json()["command_id"] == "webhook:shop:msg_dup"
    await settle(service)
    [event] = await events_of(client, "ExternalEventReceived")
    assert event["data"]["payload"] == ORDER
    assert await ends(service) == before


async def test_an_unknown_or_deleted_source_is_404(client: httpx.AsyncClient, service: Service) -> None:
    sender = StandardSender(new_secret())
    assert (await sender.send(client, "nobody", ORDER)).status_code == 404
    assert (await sender.send(client, "not a name", ORDER)).status_code == 404
    await put_source(client, "shop", sender.secret)
    assert (await sender.send(client, "shop", ORDER)).status_code == 200
    assert (await client.delete("/v1/webhooks/shop")).status_code == 200
    assert (await sender.send(client, "shop", ORDER)).status_code == 404


async def test_a_body_that_is_not_a_storable_json_object_is_422(
    client: httpx.AsyncClient, service: Service
) -> None:
    sender = StandardSender(new_secret())
    await put_source(client, "shop", sender.secret)
    await settle(service)
    before = await ends(service)
    for body in ("not json", "[1, 2]", '{"type": "x", "n": 123456789012345678901234}',
                 '{"type": "x", "text": "nul \\u0000"}', '{"id": 1}', '{"type": {"nested": 1}}'):
        resp = await client.post("/v1/webhooks/shop", content=body, headers=sender.headers(body))
        assert resp.status_code == 422, (body, resp.text)
        assert isinstance(resp.json()["detail"], list)
    await settle(service)
    assert await ends(service) == before


async def test_the_event_type_is_read_where_the_mapping_says(
    client: httpx.AsyncClient, service: Service
) -> None:
    sender = StandardSender(new_secret())
    await put_source(client, "shop", sender.secret, mapping={"event_type": "meta.kind"})
    resp = await sender.send(client, "shop", {"meta": {"kind": "refund"}, "id": 7})
    assert resp.status_code == 200, resp.text
    [event] = await events_of(client, "ExternalEventReceived")
    assert event["data"]["event_type"] == "refund"


async def test_a_source_can_deliver_into_another_pool(client: httpx.AsyncClient, service: Service) -> None:
    sender = StandardSender(new_secret())
    await put_source(client, "shop", sender.secret, pool="orders")
    resp = await sender.send(client, "shop", ORDER)
    assert resp.status_code == 200 and resp.json()["pool"] == "orders"
    assert len(await events_of(client, "ExternalEventReceived", pool="orders")) == 1
    assert await events_of(client, "ExternalEventReceived") == []
