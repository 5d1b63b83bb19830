"""Webhook sources through ``PUT``, ``GET`` and ``DELETE /v1/webhooks...``: the secret goes in and
never comes out (not in an answer, not in a refusal, not in clear on the log or in the read
models), a source that cannot work is refused before anything is appended, and a source is
replaced or deleted for the very next delivery."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import httpx
import pytest

from services.runtime.sealing import KEY_FILE, new_key
from services.runtime.service import Service
from services.runtime.settings import Settings
from tests.api.conftest import settle
from tests.webhooks.conftest import (
    ORDER_TYPE_RULE,
    StandardSender,
    api,
    ends,
    new_secret,
    put_source,
    running,
)

ORDER = {"type": "order.created", "id": "o-1"}


def _stored_bytes(data_dir: Path) -> bytes:
    """Every byte of the SQLite log and read models, write-ahead logs included."""
    return b"".join(p.read_bytes() for p in sorted(data_dir.iterdir())
                    if p.name.startswith(("log.db", "read.db")))


async def test_the_secret_is_never_answered(client: httpx.AsyncClient, service: Service) -> None:
    secret = new_secret()
    stored = await put_source(client, "shop", secret, mapping={"rules": [ORDER_TYPE_RULE]})
    assert stored["status"] == "applied" and stored["scheme"] == "standard"
    listed = await client.get("/v1/webhooks")
    one = await client.get("/v1/webhooks/shop")
    assert listed.status_code == 200 and one.status_code == 200
    [item] = listed.json()["items"]
    assert item == one.json()
    assert item["source"] == "shop" and item["pool"] == "default" and item["scheme"] == "standard"
    assert item["mapping"]["rules"][0]["command"] == "SubmitTask"
    for resp in (listed, one):
        assert "secret" not in resp.json() and secret not in resp.text and "sealed:" not in resp.text
    assert secret not in str(stored) and "sealed:" not in str(stored)


@pytest.mark.embedded
async def test_the_secret_is_not_in_clear_in_the_log_or_the_read_models(
    client: httpx.AsyncClient, service: Service, tmp_path: Path
) -> None:
    secret = new_secret()
    marker = "marker-" + os.urandom(6).hex()  # beside the secret, in the same command and event
    await put_source(client, "shop", secret, mapping={"rules": [
        {"on": "x", "command": "SubmitTask", "data": {"task_id": marker, "type": "t"}}]})
    github = "gh-" + os.urandom(12).hex()
    await put_source(client, "gh", github, scheme="github")
    await settle(service)
    await service.stop()  # everything on disk, nothing only in a write-ahead buffer
    raw = _stored_bytes(tmp_path)
    assert marker.encode() in raw  # the search finds what is there
    for clear in (secret, secret.removeprefix("whsec_"), github):
        assert clear.encode() not in raw
    # Nor in any record of the log, read back and decompressed as every reader gets it.
    async with running(Settings(data_dir=tmp_path)) as again:
        for topic in (again.topics.commands, again.topics.events):
            records = await again.log.read(topic, 0, 0, 10_000)
            assert records
            assert any(marker.encode() in r.value for r in records)
            for clear in (secret, github):
                assert not any(clear.encode() in r.value for r in records)
    key = tmp_path / KEY_FILE
    assert stat.S_IMODE(key.stat().st_mode) == 0o600


async def test_a_secret_that_cannot_work_is_422_never_echoed_and_appends_nothing(
    client: httpx.AsyncClient, service: Service
) -> None:
    await settle(service)
    before = await ends(service)
    short = "whsec_" + base64.b64encode(b"0123456789").decode()  # 10 bytes: guessable
    for body in ({"secret": "no-prefix-" + os.urandom(8).hex(), "scheme": "standard"},
                 {"secret": "whsec_!!not-base64!!", "scheme": "standard"},
                 {"secret": short, "scheme": "standard"},
                 {"secret": "", "scheme": "github"},
                 {"secret": "s3cret-value", "scheme": "gitlab"},
                 {"secret": "s3cret-value", "scheme": "github", "extra": 1},
                 {"secret": "s3cret-value", "scheme": "github", "pool": "_system"}):
        resp = await client.put("/v1/webhooks/shop", json=body)
        assert resp.status_code == 422, (body, resp.text)
        if body["secret"]:
            assert str(body["secret"]) not in resp.text
    # The clear secret through the generic command endpoint: refused by the contract itself.
    resp = await client.post("/v1/commands", json={"type": "SetWebhookSource", "pool": "_system", "data": {
        "source": "shop", "scheme": "github", "secret": "plain-text-secret"}})
    assert resp.status_code == 422, resp.text
    await settle(service)
    assert await ends(service) == before


async def test_a_mapping_that_cannot_work_is_422(client: httpx.AsyncClient, service: Service) -> None:
    secret = new_secret()
    task = {"on": "x", "command": "SubmitTask"}
    for rule, where in (({"on": "x", "command": "NoSuchCommand"}, "NoSuchCommand"),
                        ({"on": "x", "command": "TaskSubmitted"}, "TaskSubmitted"),
                        ({**task, "data": {"a": {"$jmespath": "a["}}}, "JMESPath"),
                        ({**task, "data": {"a": {"$jmespath": "a", "b": 1}}}, "that one key"),
                        ({**task, "data": {"a": "{{ inputs.x }}"}}, "'inputs'"),
                        ({**task, "data": {"a": "{{ payload. }}"}}, "parse"),
                        ({**task, "when": "a["}, "JMESPath"),
                        ({"on": "x"}, "either command"),
                        ({"on": "x", "command": "ReceiveExternalEvent"}, "ReceiveExternalEvent")):
        resp = await client.put("/v1/webhooks/shop", json={"secret": secret, "scheme": "standard",
                                                           "mapping": {"rules": [rule]}})
        assert resp.status_code == 422, (rule, resp.text)
        assert where in resp.text and secret not in resp.text
    assert (await client.get("/v1/webhooks/shop")).status_code == 404


async def test_a_replaced_secret_verifies_the_next_delivery(client: httpx.AsyncClient,
                                                            service: Service) -> None:
    old, new = StandardSender(new_secret()), StandardSender(new_secret())
    await put_source(client, "shop", old.secret)
    assert (await old.send(client, "shop", ORDER)).status_code == 200
    await put_source(client, "shop", new.secret)
    assert (await old.send(client, "shop", ORDER)).status_code == 401
    assert (await new.send(client, "shop", ORDER)).status_code == 200
    assert len((await client.get("/v1/webhooks")).json()["items"]) == 1


async def test_deleting_an_unknown_source_is_404(client: httpx.AsyncClient, service: Service) -> None:
    resp = await client.delete("/v1/webhooks/nobody")
    assert resp.status_code == 404 and resp.json()["code"] == "UNKNOWN_WEBHOOK_SOURCE"
    await put_source(client, "shop", new_secret())
    deleted = await client.delete("/v1/webhooks/shop")
    assert deleted.status_code == 200 and deleted.json()["status"] == "deleted"
    assert (await client.get("/v1/webhooks/shop")).status_code == 404
    assert (await client.get("/v1/webhooks")).json()["items"] == []


@pytest.mark.embedded
async def test_a_server_with_another_key_says_so(tmp_path: Path) -> None:
    sender = StandardSender(new_secret())
    async with running(Settings(data_dir=tmp_path)) as runner, api(runner) as client:
        await put_source(client, "shop", sender.secret)
        assert (await sender.send(client, "shop", ORDER)).status_code == 200
    async with running(Settings(data_dir=tmp_path, secret_key=new_key())) as runner, api(runner) as client:
        resp = await sender.send(client, "shop", ORDER)
        assert resp.status_code == 503, resp.text
        assert "AGENTBUS_SECRET_KEY" in resp.json()["detail"] and sender.secret not in resp.text
