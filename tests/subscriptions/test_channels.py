"""Each subscription receives the events of its channels and nothing else; the system pool's events
(sealed secrets, token hashes) only on a channel that names that pool."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from contracts import REGISTRY
from tests.subscriptions.conftest import WAIT, log_events, running, submit_tasks, subscribe
from tests.subscriptions.receiver import Receiver, until


def _subject(event: dict[str, Any]) -> str | None:
    return REGISTRY[event["type"]].model.subject_field


CHANNELS: dict[str, tuple[list[str], Any]] = {
    # path: (channels, which logged events it must receive)
    "/all": (["events"], lambda e: e["pool"] != "_system"),
    "/type": (["type:TaskCancelled"], lambda e: e["type"] == "TaskCancelled"),
    "/task": (["task:t2"], lambda e: e["pool"] != "_system" and e["data"].get("task_id") == "t2"),
    "/blue": (["pool/blue/tasks"], lambda e: e["pool"] == "blue" and _subject(e) == "task_id"),
    "/agents": (["agents"], lambda e: e["pool"] != "_system" and _subject(e) == "agent_id"),
    "/two": (["type:TaskCancelled", "pool/blue/type:TaskSubmitted"],
             lambda e: e["type"] == "TaskCancelled" or (e["pool"], e["type"]) == ("blue", "TaskSubmitted")),
    "/system": (["pool/_system/type:SubscriptionSet"], lambda e: e["type"] == "SubscriptionSet"),
}


async def test_each_subscription_receives_exactly_the_events_of_its_channels(
        tmp_path: Path, receiver: tuple[Receiver, str]) -> None:
    got, url = receiver
    async with running(tmp_path) as (_, client):
        starts = {}
        for path, (channels, _) in CHANNELS.items():
            made = await subscribe(client, path.strip("/"), f"{url}{path}", channels)
            [starts[path]] = made["subscription"]["start"]  # the end of the log when it was made
        resp = await client.post("/v1/agents", params=WAIT, json={"agent_id": "a1", "name": "one"})
        assert resp.status_code == 201
        await submit_tasks(client, "t1", "t2")
        await submit_tasks(client, "t3", pool="blue")
        assert (await client.post("/v1/tasks/t1/cancel", params=WAIT)).status_code == 200
        await asyncio.sleep(0.3)  # the coordinator's reactions settle
        pools = ("default", "blue", "_system")
        logged = sorted([e for pool in pools for e in await log_events(client, pool=pool)],
                        key=lambda e: e["position"])
        expected = {path: [e["id"] for e in logged if e["position"] >= starts[path] and wants(e)]
                    for path, (_, wants) in CHANNELS.items()}
        await until(lambda: all(len(got.ids(p)) >= len(ids) for p, ids in expected.items()),
                    what="every subscription's events")
        await asyncio.sleep(0.2)
    for path, ids in expected.items():
        assert ids, path  # every case has something to receive
        assert got.ids(path) == ids, path
    assert {e["type"] for e in got.delivered("/all")} >= {"AgentRegistered", "TaskSubmitted", "TaskCancelled"}
