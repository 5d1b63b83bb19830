"""A receiving endpoint for outbound subscriptions: a real local HTTP server that verifies every
delivery with the Standard Webhooks reference code (``standardwebhooks.Webhook.verify``) and
records it; tests choose what it answers.

Test-only. Runs in a thread of its own (``services.executors.standins.serving``), so its records
are guarded by a lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson
from standardwebhooks import Webhook, WebhookVerificationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from services.executors.standins.serving import serving


@dataclass(frozen=True)
class Call:
    """One POST as received: the verified CloudEvent (None when the signature did not verify)."""

    path: str
    webhook_id: str
    content_type: str
    body: bytes
    event: dict[str, Any] | None
    status: int
    at: float  # time.monotonic() when it arrived


class Receiver:
    """``POST /<anything>``: 401 unless the signature verifies with ``secret``; else what ``answer``
    says for the event: a status (default 204), or a status and headers."""

    def __init__(self, secret: str | None = None) -> None:
        self.secret = secret
        self.answer: Callable[[dict[str, Any]], int | tuple[int, dict[str, str]]] = lambda event: 204
        self._lock = threading.Lock()
        self._calls: list[Call] = []
        self.app = Starlette(routes=[Route("/{path:path}", self._endpoint, methods=["POST"])])

    async def _endpoint(self, request: Request) -> Response:
        arrived = time.monotonic()
        body = await request.body()
        headers = dict(request.headers)
        event: dict[str, Any] | None = None
        answer: int | tuple[int, dict[str, str]] = 401
        if self.secret is not None:
            try:
                event = Webhook(self.secret).verify(body, headers)
            except WebhookVerificationError:
                event = None
        if event is not None:
            answer = self.answer(event)
        status, extra = answer if isinstance(answer, tuple) else (answer, {})
        with self._lock:
            self._calls.append(Call(request.url.path, headers.get("webhook-id", ""),
                                    headers.get("content-type", ""), body, event, status, arrived))
        return Response(status_code=status, headers=extra)

    @property
    def calls(self) -> list[Call]:
        with self._lock:
            return list(self._calls)

    def delivered(self, path: str | None = None) -> list[dict[str, Any]]:
        """The events acknowledged (2xx), in the order they arrived (repeats included)."""
        return [c.event for c in self.calls
                if c.event is not None and 200 <= c.status < 300 and (path is None or c.path == path)]

    def ids(self, path: str | None = None) -> list[str]:
        return [e["id"] for e in self.delivered(path)]


@contextlib.contextmanager
def receiving(secret: str | None = None) -> Iterator[tuple[Receiver, str]]:
    """A receiver served on a free local port: (receiver, its base URL)."""
    receiver = Receiver(secret)
    with serving(receiver.app) as url:
        yield receiver, url


async def until(check: Callable[[], object], timeout: float = 10.0, what: str = "condition") -> None:
    """Wait until ``check()`` is true."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"{what} not reached in {timeout} s")
        await asyncio.sleep(0.02)


def loads(body: bytes) -> Any:
    return orjson.loads(body)
