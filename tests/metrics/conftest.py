"""Fixtures of the metrics tests: an embedded service, the real app on it, and scrapes parsed by
prometheus_client's own text-format parser."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.http.app import create_app
from services.runtime.service import Service
from tests.api.runtimes import embedded

WAIT_S = 20.0
Labels = frozenset[tuple[str, str]]


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings read AGENTBUS_* variables; a developer's shell must not leak into the tests."""
    for name in list(os.environ):
        if name.startswith("AGENTBUS_") and not name.startswith("AGENTBUS_TEST_"):
            monkeypatch.delenv(name)


class Scrape:
    """One scrape, parsed: every sample by name and labels."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.families = list(text_string_to_metric_families(text))
        self.samples: dict[str, dict[Labels, float]] = {}
        for family in self.families:
            for s in family.samples:
                self.samples.setdefault(s.name, {})[frozenset(s.labels.items())] = s.value

    def value(self, name: str, **labels: str) -> float:
        """The sample's value; 0 when the series does not exist (yet)."""
        return self.samples.get(name, {}).get(frozenset(labels.items()), 0.0)

    def has(self, name: str, **labels: str) -> bool:
        return frozenset(labels.items()) in self.samples.get(name, {})

    def series(self, name: str) -> dict[Labels, float]:
        return self.samples.get(name, {})


async def scrape(client: httpx.AsyncClient) -> Scrape:
    resp = await client.get("/metrics")
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain")
    return Scrape(resp.text)


async def until(client: httpx.AsyncClient, check: Callable[[Scrape], bool]) -> Scrape:
    """Scrape until ``check`` holds (the coordinator and projector work after a write answers)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    while True:
        s = await scrape(client)
        if check(s):
            return s
        if loop.time() > deadline:
            raise AssertionError("not within the time; last scrape:\n" + "\n".join(
                line for line in s.text.splitlines() if line.startswith("agentbus_")))
        await asyncio.sleep(0.05)


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[Service]:
    async with embedded(tmp_path) as svc:
        yield svc


@pytest.fixture
async def client(service: Service) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(service=service)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        yield c


