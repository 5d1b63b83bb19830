"""The stand-in servers on real local ports, and how a test reads what they were asked.

The model stand-ins serve a whole module (a test reads what it changed: the last request, counts
before and after); the MCP stand-in serves one test, so its session counts are the test's own."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from services.executors.base import Call
from services.executors.standins import anthropic_compat, mcp_tools, openai_compat
from services.executors.standins.serving import serving


@pytest.fixture(scope="module")
def openai_url() -> Iterator[str]:
    """Base URL of an OpenAI-compatible stand-in (without ``/v1``)."""
    with serving(openai_compat.create_app()) as url:
        yield url


@pytest.fixture(scope="module")
def anthropic_url() -> Iterator[str]:
    """Base URL of an Anthropic Messages stand-in."""
    with serving(anthropic_compat.create_app()) as url:
        yield url


@pytest.fixture
def mcp_url() -> Iterator[str]:
    """Base URL of the MCP stand-in (its endpoint is ``/mcp``)."""
    with serving(mcp_tools.create_app()) as url:
        yield url


async def get_json(url: str) -> Any:
    async with httpx.AsyncClient() as client:
        response = await client.get(url)
        response.raise_for_status()
        return response.json()


def make_call(parameters: dict[str, Any], *, action: str | None = None, timeout_s: float | None = None,
              key: str = "task-1:1") -> Call:
    return Call(task_id="task-1", attempt=1, action=action, parameters=parameters, idempotency_key=key,
                timeout_s=timeout_s)
