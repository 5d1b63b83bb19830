"""Fixtures of the outbound subscription tests: an embedded service with quick retries, a client
of its HTTP API, and a receiving server that verifies signatures (``tests.subscriptions.receiver``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.http.app import create_app
from services.runtime.embedded import Runner
from tests.api.runtimes import embedded
from tests.subscriptions.receiver import Receiver, receiving

WAIT = {"wait": "true"}
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@contextlib.asynccontextmanager
async def running(data_dir: Path, **quick: float) -> AsyncIterator[tuple[Runner, httpx.AsyncClient]]:
    """An embedded service on ``data_dir`` whose deliveries retry within milliseconds, and a client."""
    async with embedded(data_dir) as service:
        assert isinstance(service, Runner) and service.deliveries is not None
        service.deliveries.backoff_s = quick.get("backoff_s", 0.01)
        service.deliveries.max_backoff_s = quick.get("max_backoff_s", 0.05)
        service.deliveries.commit_every_s = quick.get("commit_every_s", 0.05)
        transport = httpx.ASGITransport(app=create_app(service=service))
        async with httpx.AsyncClient(transport=transport, base_url="http://agentbus") as client:
            yield service, client


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    with receiving(SECRET) as got:
        yield got


async def subscribe(client: httpx.AsyncClient, name: str, url: str, channels: list[str], **more: Any
                    ) -> dict[str, Any]:
    """PUT the subscription (secret SECRET unless ``more`` says otherwise); its answer."""
    body = {"url": url, "channels": channels, "secret": SECRET, **more}
    sent = {k: v for k, v in body.items() if v is not None}
    resp = await client.put(f"/v1/subscriptions/{name}", json=sent)
    assert resp.status_code in (200, 201), resp.text
    answer: dict[str, Any] = resp.json()
    return answer


async def submit_tasks(client: httpx.AsyncClient, *task_ids: str, pool: str = "default") -> None:
    for task_id in task_ids:
        resp = await client.post("/v1/tasks", params={**WAIT, "pool": pool},
                                 json={"task_id": task_id, "type": "demo"})
        assert resp.status_code == 201, resp.text


async def caught_up(client: httpx.AsyncClient, name: str) -> None:
    """Wait until subscription ``name`` has delivered (or skipped) everything in the log and committed
    that: a stop after this sends nothing again, where a stop after the receiver merely got an event
    may send it again (the answer was still on its way)."""
    delivery: list[dict[str, Any]] = []
    for _ in range(250):
        read = await client.get(f"/v1/subscriptions/{name}", params={"min_position": 0})
        delivery = read.json()["delivery"]
        if all(p["next"] == p["end"] for p in delivery):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"subscription {name!r} did not catch up: {delivery}")


async def log_events(client: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    """Every event of the log (GET /v1/events), oldest first."""
    items: list[dict[str, Any]] = (await client.get("/v1/events", params={"limit": 1000, **params})).json()[
        "items"]
    return items
