"""Where delivery starts and how it resumes: a new subscription from the end of the log or from its
start, a position kept durably across restarts (at least once, in log order, nothing lost), and
changes that take effect while the service runs."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

from tests.subscriptions.conftest import caught_up, log_events, running, submit_tasks, subscribe
from tests.subscriptions.receiver import Receiver, until


def task_ids(events: list[dict[str, object]]) -> list[str]:
    return [str(e["data"]["task_id"]) for e in events]  # type: ignore[index]


async def test_latest_starts_after_the_put_and_earliest_at_the_start_of_the_log(
        tmp_path: Path, receiver: tuple[Receiver, str]) -> None:
    got, url = receiver
    async with running(tmp_path) as (_, client):
        await submit_tasks(client, "before-1", "before-2")
        latest = await subscribe(client, "latest", f"{url}/latest", ["type:TaskSubmitted"])
        await subscribe(client, "earliest", f"{url}/earliest", ["type:TaskSubmitted"], **{"from": "earliest"})
        await submit_tasks(client, "after")
        await until(lambda: len(got.delivered("/earliest")) == 3 and got.delivered("/latest"))
        await asyncio.sleep(0.2)  # nothing else is on its way
        logged = await log_events(client, type="TaskSubmitted")
        [after] = [e for e in logged if e["data"]["task_id"] == "after"]
    # "latest" is where the log ended when the PUT was answered: before the event that followed it.
    [start] = latest["subscription"]["start"]
    assert latest["subscription"]["incarnation"] >= 1 and start <= after["position"]
    assert task_ids(got.delivered("/latest")) == ["after"]
    assert task_ids(got.delivered("/earliest")) == ["before-1", "before-2", "after"]


async def test_at_least_once_in_log_order_across_restarts(tmp_path: Path,
                                                          receiver: tuple[Receiver, str]) -> None:
    got, url = receiver
    got.answer = lambda event: 503  # the receiver is down while the first service runs
    async with running(tmp_path) as (_, client):
        await subscribe(client, "s", f"{url}/hook", ["type:TaskSubmitted"], max_attempts=100)
        await submit_tasks(client, "t1", "t2", "t3", "t4")
        await until(lambda: len(got.calls) >= 3, what="three refused tries")
    assert got.delivered() == []
    got.answer = lambda event: 204
    async with running(tmp_path) as (_, client):
        await until(lambda: len(got.delivered()) == 4, what="everything delivered after the restart")
        logged = await log_events(client, type="TaskSubmitted")
        await caught_up(client, "s")  # and the position says so once it moved past the rest
    assert got.ids() == [e["id"] for e in logged]  # each once, in log order, none lost
    # Acknowledged means committed: a restart sends nothing again, and goes on with what is new.
    async with running(tmp_path) as (_, client):
        await asyncio.sleep(0.3)
        assert len(got.delivered()) == 4
        await submit_tasks(client, "t5")
        await until(lambda: len(got.delivered()) == 5, what="the new one")
    assert task_ids(got.delivered()) == ["t1", "t2", "t3", "t4", "t5"]


async def test_a_stop_while_an_event_is_in_flight_sends_that_event_again_and_only_that_one(
        tmp_path: Path, receiver: tuple[Receiver, str]) -> None:
    got, url = receiver
    stopped = threading.Event()

    def answer(event: dict[str, object]) -> int:
        # The receiver takes its time with t2: the service stops before it has the answer.
        if event["data"]["task_id"] == "t2" and not stopped.is_set():  # type: ignore[index]
            time.sleep(0.5)
        return 204

    got.answer = answer
    async with running(tmp_path) as (_, client):
        await subscribe(client, "s", f"{url}/hook", ["type:TaskSubmitted"])
        await submit_tasks(client, "t1", "t2", "t3")
        await until(lambda: len(got.delivered()) == 1, what="t1 delivered")
        await asyncio.sleep(0.1)  # t2 is in flight now
    stopped.set()
    async with running(tmp_path):
        await until(lambda: len(got.delivered()) == 4, what="t2 again, then t3")
    assert task_ids(got.delivered()) == ["t1", "t2", "t2", "t3"]
    assert len({c.webhook_id for c in got.calls if c.event and c.event["data"]["task_id"] == "t2"}) == 1


async def test_changes_take_effect_while_running_and_keep_the_position(
        tmp_path: Path, receiver: tuple[Receiver, str]) -> None:
    got, url = receiver
    async with running(tmp_path) as (_, client):
        made = await subscribe(client, "s", f"{url}/one", ["type:TaskSubmitted"])
        await submit_tasks(client, "t1")
        await until(lambda: len(got.delivered("/one")) == 1)
        changed = await subscribe(client, "s", f"{url}/two", ["type:TaskSubmitted", "type:TaskCancelled"])
        assert changed["subscription"]["incarnation"] == made["subscription"]["incarnation"]
        await submit_tasks(client, "t2")
        assert (await client.post("/v1/tasks/t2/cancel", params={"wait": "true"})).status_code == 200
        await until(lambda: len(got.delivered("/two")) == 2)
        await asyncio.sleep(0.2)
    assert task_ids(got.delivered("/one")) == ["t1"]
    assert [(e["type"], e["data"]["task_id"]) for e in got.delivered("/two")] == [
        ("TaskSubmitted", "t2"), ("TaskCancelled", "t2")]
