"""Managing subscriptions: a generated secret answered once, secrets never answered by a read nor in
clear on disk, deletion, and what a PUT refuses before anything is appended."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

from services.runtime.sealing import KEY_FILE
from tests.subscriptions.conftest import SECRET, log_events, running, submit_tasks, subscribe
from tests.subscriptions.receiver import Receiver, until


async def test_a_generated_secret_is_answered_once_signs_deliveries_and_is_kept_by_later_puts(
        tmp_path: Path, receiver: tuple[Receiver, str]) -> None:
    got, url = receiver
    got.secret = None  # not known yet
    async with running(tmp_path) as (_, client):
        body = {"url": f"{url}/hook", "channels": ["type:TaskSubmitted"]}
        first = await client.put("/v1/subscriptions/s", json=body, headers={"Idempotency-Key": "put-1"})
        assert first.status_code == 201
        secret = first.json()["secret"]
        assert secret.startswith("whsec_") and len(base64.b64decode(secret.removeprefix("whsec_"))) == 32
        # A retry of that very request answers the same secret (from the log), and appends nothing.
        retry = await client.put("/v1/subscriptions/s", json=body, headers={"Idempotency-Key": "put-1"})
        assert retry.status_code == 201 and retry.json()["secret"] == secret and retry.json()["duplicate"]
        # A change without a secret keeps it, and answers none.
        changed = await client.put("/v1/subscriptions/s", json={**body, "max_attempts": 3})
        assert changed.status_code == 200 and "secret" not in changed.json()
        got.secret = secret
        await submit_tasks(client, "t1")
        await until(lambda: len(got.delivered()) == 1)
        # A new secret given by the client signs from then on.
        await subscribe(client, "s", f"{url}/hook", ["type:TaskSubmitted"], secret=SECRET)
        got.secret = SECRET
        await submit_tasks(client, "t2")
        await until(lambda: len(got.delivered()) == 2)
    assert [c.status for c in got.calls] == [204, 204]  # every delivery verified with the secret in force


def _files(data_dir: Path) -> dict[str, bytes]:
    """Every file of the data directory but the key, as bytes."""
    return {p.name: p.read_bytes() for p in data_dir.iterdir() if p.is_file() and p.name != KEY_FILE}


async def test_no_read_answers_a_secret_and_none_is_in_clear_on_disk(
        tmp_path: Path, receiver: tuple[Receiver, str]) -> None:
    _, url = receiver
    async with running(tmp_path) as (_, client):
        await subscribe(client, "given", f"{url}/a", ["events"])
        made = (await client.put("/v1/subscriptions/generated", json={
            "url": f"{url}/b", "channels": ["tasks"]})).json()
        generated = made["secret"]
        await submit_tasks(client, "t1")
        seen = {"min_position": made["position"]}  # both decided and projected
        listed = await client.get("/v1/subscriptions", params=seen)
        one = await client.get("/v1/subscriptions/generated", params=seen)
        system = await client.get("/v1/events", params={"pool": "_system", "limit": 1000})
    assert [s["name"] for s in listed.json()["items"]] == ["generated", "given"]
    assert set(one.json()) == {"name", "incarnation", "url", "channels", "max_attempts", "start",
                               "updated_at", "delivery"}
    for secret in (SECRET, generated):
        raw = secret.removeprefix("whsec_")
        for text in (listed.text, one.text, system.text):
            assert raw not in text
        # The log (with its write-ahead log) and the read models, byte for byte.
        for name, data in _files(tmp_path).items():
            assert raw.encode() not in data and base64.b64decode(raw) not in data, name
    # What the log holds instead: the sealed secret, readable with the key only.
    sealed = [e["data"]["secret"] for e in system.json()["items"] if e["type"] == "SubscriptionSet"]
    assert len(sealed) == 2 and all(s.startswith("sealed:v1:") for s in sealed)


async def test_delete_stops_deliveries_and_a_new_subscription_of_that_name_starts_afresh(
        tmp_path: Path, receiver: tuple[Receiver, str]) -> None:
    got, url = receiver
    got.answer = lambda event: 500 if event["data"]["task_id"] == "bad" else 204
    async with running(tmp_path) as (_, client):
        made = await subscribe(client, "s", f"{url}/hook", ["type:TaskSubmitted"], max_attempts=1)
        await submit_tasks(client, "bad", "t1")
        await until(lambda: len(got.delivered()) == 1)
        made_seen = {"min_position": made["position"]}
        for _ in range(250):  # the dead letter is a command: decided, then projected
            if (await client.get("/v1/subscriptions/s/failures", params=made_seen)).json()["items"]:
                break
            await asyncio.sleep(0.02)
        assert len((await client.get("/v1/subscriptions/s/failures", params=made_seen)).json()["items"]) == 1
        deleted = await client.delete("/v1/subscriptions/s")
        assert deleted.status_code == 200 and deleted.json()["events"][0]["type"] == "SubscriptionDeleted"
        await submit_tasks(client, "t2")
        await asyncio.sleep(0.3)
        assert [e["data"]["task_id"] for e in got.delivered()] == ["t1"]
        seen = {"min_position": deleted.json()["position"]}
        assert (await client.get("/v1/subscriptions/s", params=seen)).status_code == 404
        assert (await client.get("/v1/subscriptions/s/failures", params=seen)).status_code == 404
        assert (await client.get("/v1/subscriptions", params=seen)).json()["items"] == []
        assert (await client.delete("/v1/subscriptions/s")).status_code == 404
        again = await subscribe(client, "s", f"{url}/hook", ["type:TaskSubmitted"])
        assert again["subscription"]["incarnation"] > made["subscription"]["incarnation"]
        await submit_tasks(client, "t3")
        await until(lambda: len(got.delivered()) == 2)
        # Deliveries follow the log, the read model follows the decision: read at least that far.
        read = await client.get("/v1/subscriptions/s/failures", params={"min_position": again["position"]})
        failures = read.json()["items"]
    # From the end of the log at its creation: not t2 (sent while there was none), no old dead letter.
    assert [e["data"]["task_id"] for e in got.delivered()] == ["t1", "t3"]
    assert failures == []


async def test_a_put_that_is_not_right_is_refused_naming_the_field_and_appends_nothing(
        tmp_path: Path) -> None:
    async with running(tmp_path) as (_, client):
        before = await log_events(client, pool="_system")
        cases = {
            "url": {"url": "ftp://receiver.example/x", "channels": ["events"]},
            "channels": {"url": "http://receiver.example/x", "channels": ["everything"]},
            "secret": {"url": "http://receiver.example/x", "channels": ["events"],
                       "secret": "whsec_not-base64-at-all!"},
            "from": {"url": "http://receiver.example/x", "channels": ["events"], "from": "yesterday"},
        }
        answers = {field: await client.put("/v1/subscriptions/s", json=body) for field, body in cases.items()}
        short = await client.put("/v1/subscriptions/s", json={
            "url": "http://r.example/x", "channels": ["events"], "secret": "whsec_c2hvcnQ="})
        long = await client.put("/v1/subscriptions/s", json={
            "url": "http://r.example/x", "channels": ["events"], "secret": "whsec_" + "QUJD" * 100})
        after = await log_events(client, pool="_system")
    for field, resp in answers.items():
        assert resp.status_code == 422, (field, resp.text)
        assert field in resp.json()["detail"][0]["loc"], resp.json()
    assert short.status_code == 422 and "c2hvcnQ" not in short.text  # a secret is never echoed
    assert long.status_code == 422 and "QUJD" not in long.text
    assert answers["channels"].json()["detail"][0]["loc"] == ["body", "channels", 0]
    assert after == before
