"""Outbound subscriptions deliver signed CloudEvents to a real local receiver that verifies each one
with the Standard Webhooks reference code: what, in which order, with which retries, and what is
left as a dead letter."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.subscriptions.conftest import SECRET, log_events, running, submit_tasks, subscribe
from tests.subscriptions.receiver import Receiver, receiving, until


async def test_matching_events_arrive_signed_as_the_logs_cloudevents_in_order(
        tmp_path: Path, receiver: tuple[Receiver, str]) -> None:
    got, url = receiver
    async with running(tmp_path) as (_, client):
        answer = await subscribe(client, "tasks", f"{url}/hook", ["type:TaskSubmitted"])
        assert answer["status"] == "applied" and answer["subscription"]["channels"] == ["type:TaskSubmitted"]
        assert "secret" not in answer  # given by the client: never echoed
        await submit_tasks(client, "t1", "t2", "t3")
        await until(lambda: len(got.delivered()) == 3, what="three deliveries")
        logged = [e for e in await log_events(client) if e["type"] == "TaskSubmitted"]
    assert [c.event for c in got.calls] == got.delivered()  # each verified and acknowledged at once
    assert [e["data"]["task_id"] for e in got.delivered()] == ["t1", "t2", "t3"]
    for call, event in zip(got.calls, logged, strict=True):
        assert call.content_type == "application/cloudevents+json"
        assert call.webhook_id == event["id"] and call.event is not None
        assert call.event == {k: v for k, v in event.items() if k not in ("position", "partition")}
    assert SECRET  # the receiver verified with it: a wrong secret would have answered 401


async def test_a_failing_receiver_is_retried_until_it_answers_and_holds_back_what_follows(
        tmp_path: Path, receiver: tuple[Receiver, str]) -> None:
    got, url = receiver
    refused: list[str] = []

    def answer(event: dict[str, object]) -> int:
        data = event["data"]
        assert isinstance(data, dict)
        if data["task_id"] == "t1" and len(refused) < 3:
            refused.append(str(event["id"]))
            return 500
        return 204

    got.answer = answer
    async with running(tmp_path) as (service, client):
        made = await subscribe(client, "s", f"{url}/hook", ["type:TaskSubmitted"])
        await submit_tasks(client, "t1", "t2")
        await until(lambda: len(got.delivered()) == 2, what="both delivered")
        seen = {"min_position": made["position"]}
        failures = (await client.get("/v1/subscriptions/s/failures", params=seen)).json()["items"]
        assert service.deliveries is not None and service.deliveries.failed_attempts == 3
    # t1 four times (three 500s, then 204), all signed alike; t2 only once t1 was through.
    assert [(c.event["data"]["task_id"], c.status) for c in got.calls if c.event] == [
        ("t1", 500), ("t1", 500), ("t1", 500), ("t1", 204), ("t2", 204)]
    assert len({c.webhook_id for c in got.calls[:4]}) == 1
    assert failures == []


async def test_after_max_attempts_an_event_is_a_dead_letter_and_delivery_moves_on(
        tmp_path: Path, receiver: tuple[Receiver, str]) -> None:
    got, url = receiver
    got.answer = lambda event: 500 if event["data"]["task_id"] == "bad" else 204
    with receiving() as (_, unused):
        nowhere = unused  # a server that is gone by the time anything is sent to it
    async with running(tmp_path) as (_, client):
        await subscribe(client, "s", f"{url}/hook", ["type:TaskSubmitted"], max_attempts=3)
        await subscribe(client, "gone", f"{nowhere}/hook", ["type:TaskSubmitted"], max_attempts=2)
        await submit_tasks(client, "good-1", "bad", "good-2")
        await until(lambda: len(got.delivered()) == 2, what="the good ones delivered")
        [bad] = [e for e in await log_events(client, type="TaskSubmitted") if e["data"]["task_id"] == "bad"]

        async def dead_letters(name: str) -> list[dict[str, object]]:
            resp = await client.get(f"/v1/subscriptions/{name}/failures")
            if resp.status_code == 404:  # the read models have not reached the subscription yet
                return []
            assert resp.status_code == 200, resp.text
            items: list[dict[str, object]] = resp.json()["items"]
            return items

        failures: list[dict[str, object]] = []
        gone: list[dict[str, object]] = []
        for _ in range(200):
            failures, gone = await dead_letters("s"), await dead_letters("gone")
            if failures and len(gone) == 3:
                break
            await asyncio.sleep(0.05)
    assert [e["data"]["task_id"] for e in got.delivered()] == ["good-1", "good-2"]
    assert [c.status for c in got.calls if c.event and c.event["data"]["task_id"] == "bad"] == [500] * 3
    [failure] = failures
    expected = {"name": "s", "event_id": bad["id"], "event_type": "TaskSubmitted",
                "event_partition": bad["partition"], "event_position": bad["position"], "attempts": 3,
                "last_status": 500, "last_error": "HTTP 500"}
    assert {k: failure[k] for k in expected} == expected
    # No answer at all: no status, and the error says what happened.
    assert [f["attempts"] for f in gone] == [2, 2, 2]
    assert all(f["last_status"] is None and "ConnectError" in str(f["last_error"]) for f in gone)


async def test_a_subscription_to_dead_letters_whose_receiver_is_down_does_not_feed_on_its_own(
        tmp_path: Path, receiver: tuple[Receiver, str]) -> None:
    """Its own dead letter is delivered (and fails) once; the dead letter about that one is
    recorded but never delivered, so the log stops growing."""
    got, url = receiver
    got.answer = lambda event: 500
    async with running(tmp_path) as (service, client):
        await subscribe(client, "tasks", f"{url}/tasks", ["type:TaskSubmitted"], max_attempts=1)
        await subscribe(client, "alerts", f"{url}/alerts",
                        ["pool/_system/type:SubscriptionDeliveryFailed"], max_attempts=1)
        await submit_tasks(client, "t1")

        async def dead() -> list[dict[str, object]]:
            return [e["data"] for e in await log_events(client, type="SubscriptionDeliveryFailed",
                                                        pool="_system")]

        for _ in range(200):
            if len(await dead()) >= 2:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.5)  # long enough for many more rounds, were there any
        failed = await dead()
        assert service.deliveries is not None
        posts = len(got.calls)
    assert [(d["name"], d["event_type"]) for d in failed] == [
        ("tasks", "TaskSubmitted"), ("alerts", "SubscriptionDeliveryFailed")]
    # TaskSubmitted once to /tasks, the first dead letter once to /alerts; the second never.
    assert posts == 2


async def test_a_retry_after_answer_is_waited_for(tmp_path: Path, receiver: tuple[Receiver, str]) -> None:
    got, url = receiver
    got.answer = lambda event: (429, {"retry-after": "1"}) if len(got.calls) == 0 else 204
    async with running(tmp_path, max_backoff_s=5.0) as (_, client):
        await subscribe(client, "s", f"{url}/hook", ["type:TaskSubmitted"])
        await submit_tasks(client, "t1")
        await until(lambda: len(got.delivered()) == 1)
    first, second = got.calls
    assert (first.status, second.status) == (429, 204)
    assert second.at - first.at >= 0.9  # not the 10 ms backoff: the second the receiver asked for


async def test_the_http_client_is_made_for_the_first_delivery_and_closed_at_the_stop(
        tmp_path: Path, receiver: tuple[Receiver, str]) -> None:
    """A start does not build the client deliveries post with (its TLS context held the event loop
    0.14-0.25 s of every start); the first delivery makes it, and the stop closes it."""
    got, url = receiver
    async with running(tmp_path) as (service, client):
        deliveries = service.deliveries
        assert deliveries is not None and deliveries._client is None
        await submit_tasks(client, "before")
        assert deliveries._client is None  # events, but no subscription: nothing posted
        await subscribe(client, "s", f"{url}/hook", ["type:TaskSubmitted"])
        await submit_tasks(client, "t1")
        await until(lambda: len(got.delivered()) == 1, what="one delivery")
        made = deliveries._client
        assert made is not None and not made.is_closed
    assert made.is_closed and deliveries._client is None
    assert [e["data"]["task_id"] for e in got.delivered()] == ["t1"]
