"""Waiting in tests without sleeping blindly: until a served API is ready, until a check holds.

Both poll briefly and fail the test with what they saw when time runs out.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx


def ready(url: str, timeout: float = 20.0) -> None:
    """Until the server's deciders and coordinator are ready (/v1/health is open)."""
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=url) as client:
        while True:
            body = client.get("/v1/health").json()
            if body.get("deciders_ready") and body.get("coordinator_ready"):
                return
            assert time.monotonic() < deadline, body
            time.sleep(0.05)


def until(check: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Call ``check`` until it returns something true; that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(interval)


async def eventually(check: Callable[[], Any], timeout: float = 10.0, interval: float = 0.01) -> Any:
    """``until`` for a test on an event loop: polls without blocking the loop the code under test runs on."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = check()
        if value:
            return value
        assert loop.time() < deadline, "the condition never held"
        await asyncio.sleep(interval)
