"""Fixtures of the inbound webhook tests: the API's runtimes (embedded, and the Kafka cluster
when a broker is configured, see tests/api/conftest.py), and a sender that signs as real senders
do: Standard Webhooks with its reference implementation (``standardwebhooks.Webhook.sign``),
GitHub with HMAC-SHA256 of the body.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook

from services.http.app import create_app
from services.runtime.embedded import Runner
from services.runtime.service import Service
from services.runtime.settings import Settings
from tests.api import conftest as api_tests
from tests.api.conftest import _no_env, client, cluster_services, service  # noqa: F401  (the API's fixtures)

HERE = Path(__file__).parent
pytest_configure = api_tests.pytest_configure
pytest_generate_tests = api_tests.pytest_generate_tests


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """These tests share the package's event loop, as the API tests do (its cluster services)."""
    for item in items:
        if item.path.is_relative_to(HERE) and item.get_closest_marker("asyncio") is not None:
            item.add_marker(pytest.mark.asyncio(loop_scope=api_tests.LOOP), append=False)


# A rule most tests use: an order becomes a task named after it.
ORDER_TYPE_RULE = {"on": "order.created", "command": "SubmitTask",
                   "data": {"task_id": "{{ payload.id }}", "type": "ship"}}


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Runner]:
    """An embedded runner on ``settings``, started and ready."""
    runner = Runner(settings)
    try:
        await runner.start()
        await runner.ready()
        yield runner
    finally:
        await runner.stop()


@contextlib.asynccontextmanager
async def api(runner: Service) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the API on ``runner``, over ASGI."""
    app = create_app(service=runner, settings=runner.settings)
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        yield http


def new_secret() -> str:
    """A Standard Webhooks secret as senders generate them: whsec_ and 24 random bytes in base64."""
    return "whsec_" + base64.b64encode(os.urandom(24)).decode()


@dataclass
class StandardSender:
    """Signs deliveries with the Standard Webhooks reference implementation."""

    secret: str
    sent: int = field(default=0)

    def headers(self, body: str, msg_id: str | None = None, when: datetime | None = None,
                secret: str | None = None) -> dict[str, str]:
        self.sent += 1
        msg_id = msg_id or f"msg_{os.urandom(8).hex()}"
        when = when or datetime.now(UTC)
        signature = Webhook(secret or self.secret).sign(msg_id, when, body)
        return {"webhook-id": msg_id, "webhook-timestamp": str(int(when.timestamp())),
                "webhook-signature": signature, "content-type": "application/json"}

    async def send(self, http: httpx.AsyncClient, source: str, payload: dict[str, Any], **kw: Any
                   ) -> httpx.Response:
        body = json.dumps(payload)
        return await http.post(f"/v1/webhooks/{source}", content=body, headers=self.headers(body, **kw))


def github_headers(secret: str, body: bytes, event: str, delivery: str) -> dict[str, str]:
    """The headers GitHub sends with a delivery signed with ``secret``."""
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {"X-Hub-Signature-256": f"sha256={digest}", "X-GitHub-Event": event,
            "X-GitHub-Delivery": delivery, "content-type": "application/json"}


def minutes_ago(n: float) -> datetime:
    return datetime.now(UTC) - timedelta(minutes=n)


async def put_source(http: httpx.AsyncClient, name: str, secret: str, scheme: str = "standard",
                     **extra: Any) -> dict[str, Any]:
    resp = await http.put(f"/v1/webhooks/{name}", json={"secret": secret, "scheme": scheme, **extra})
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


async def ends(of: Service) -> list[tuple[int, int]]:
    """(commands end, events end) of every partition: proves a refused request appended nothing."""
    log, topics = of.log, of.topics
    return [(await log.end_offset(topics.commands, p), await log.end_offset(topics.events, p))
            for p in range(of.partitions)]


async def events_of(http: httpx.AsyncClient, kind: str, pool: str = "default") -> list[dict[str, Any]]:
    """The pool's events of type ``kind``, through the API."""
    resp = await http.get("/v1/events", params={"pool": pool, "limit": 1000})
    assert resp.status_code == 200, resp.text
    return [e for e in resp.json()["items"] if e["type"] == kind]
