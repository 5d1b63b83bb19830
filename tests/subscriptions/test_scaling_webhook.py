"""``--scaling-webhook URL`` is the subscription ``scaling-webhook`` to ``type:ScalingDecided``:
signed like any other, starting at the end of the log (no history sent on its first start), or
where the relay it replaces had got to."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx

from services.http.app import create_app
from services.runtime.deliveries import secret_context
from services.runtime.embedded import Runner
from services.runtime.settings import Settings
from services.runtime.webhook import LEGACY_GROUP, SCALING_SUBSCRIPTION
from tests.subscriptions.conftest import SECRET, WAIT, caught_up, log_events, subscribe
from tests.subscriptions.receiver import receiving, until


@contextlib.asynccontextmanager
async def serving(data_dir: Path, hook: str | None = None) -> AsyncIterator[tuple[Runner, httpx.AsyncClient]]:
    r = Runner(Settings(data_dir=data_dir), scaling_webhook=hook)
    await r.start()
    try:
        await r.ready()
        assert r.deliveries is not None
        r.deliveries.backoff_s, r.deliveries.max_backoff_s = 0.01, 0.05
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(service=r)),
                                     base_url="http://agentbus") as client:
            yield r, client
    finally:
        await r.stop()


async def decide_scaling(client: httpx.AsyncClient, kind: str, agents: int) -> None:
    """A scaling policy whose minimum the fleet (no agents) is below, and the ScalingDecided the
    scaler follows it with."""
    policy = {"agent_kind": kind, "min_agents": agents, "max_agents": 10, "cooldown_s": 0}
    resp = await client.put("/v1/scaling/policies", params=WAIT, json=policy)
    assert resp.status_code == 200, resp.text
    for _ in range(250):
        if any(e["data"]["agent_kind"] == kind for e in await log_events(client, type="ScalingDecided")):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"no ScalingDecided for {kind!r}")


async def generated_secret(r: Runner) -> str:
    """The secret the scaling webhook was given, opened with the deployment's key as the deliveries
    open it (what an operator learns by giving it a secret of their own instead)."""
    assert r.deliveries is not None
    book = r.deliveries.book
    await until(lambda: SCALING_SUBSCRIPTION in book.current, what="the scaling webhook's subscription")
    sealed = book.current[SCALING_SUBSCRIPTION].secret
    return r.sealer().open(sealed, context=secret_context(SCALING_SUBSCRIPTION))


async def test_the_scaling_webhook_is_a_subscription_like_any_other(tmp_path: Path) -> None:
    with receiving() as (got, url):
        async with serving(tmp_path, f"{url}/scale") as (r, client):
            got.secret = await generated_secret(r)
            listed = (await client.get("/v1/subscriptions", params={"min_position": 0})).json()["items"]
            await decide_scaling(client, "llm", 2)
            await until(lambda: len(got.delivered()) == 1, what="the decision")
            # An operator who wants to verify gives it a secret of their own; it signs from then on.
            await subscribe(client, SCALING_SUBSCRIPTION, f"{url}/scale", ["type:ScalingDecided"],
                            max_attempts=100)
            got.secret = SECRET
            await decide_scaling(client, "gpu", 1)
            await until(lambda: len(got.delivered()) == 2, what="the second decision")
            await caught_up(client, SCALING_SUBSCRIPTION)  # acknowledged, so the restart sends nothing
            decided = await log_events(client, type="ScalingDecided")
        # A restart with the same URL keeps the operator's secret.
        async with serving(tmp_path, f"{url}/scale") as (r, client):
            assert await generated_secret(r) == SECRET
    [sub] = listed
    assert (sub["name"], sub["url"], sub["channels"], sub["max_attempts"]) == (
        SCALING_SUBSCRIPTION, f"{url}/scale", ["type:ScalingDecided"], 100)
    assert [c.status for c in got.calls] == [204, 204]  # both verified
    assert got.ids() == [e["id"] for e in decided]


async def test_its_first_start_sends_no_history_only_what_is_decided_from_then_on(tmp_path: Path) -> None:
    async with serving(tmp_path) as (_, client):
        await decide_scaling(client, "old", 1)
    with receiving() as (got, url):
        async with serving(tmp_path, f"{url}/scale") as (r, client):
            got.secret = await generated_secret(r)
            await asyncio.sleep(0.3)
            assert got.calls == []
            await decide_scaling(client, "new", 1)
            await until(lambda: len(got.delivered()) == 1)
    assert [e["data"]["agent_kind"] for e in got.delivered()] == ["new"]


async def test_an_upgrade_goes_on_where_the_relay_it_replaces_had_got_to(tmp_path: Path) -> None:
    # The relay (consumer group "webhook") had acknowledged the first decision, not the second.
    async with serving(tmp_path) as (r, client):
        await decide_scaling(client, "first", 1)
        [first] = await log_events(client, type="ScalingDecided")
        await r.log.commit(LEGACY_GROUP, "events", first["partition"], first["position"] + 1)
        await decide_scaling(client, "second", 1)
    with receiving() as (got, url):
        async with serving(tmp_path, f"{url}/scale") as (r, client):
            got.secret = await generated_secret(r)
            await until(lambda: len(got.delivered()) == 1)
            await asyncio.sleep(0.2)
    assert [e["data"]["agent_kind"] for e in got.delivered()] == ["second"]
