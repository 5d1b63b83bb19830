"""ASGI middleware of the HTTP API: the request body size limit.

A body over the limit is answered 413 before it is read whole, so an oversized upload costs at
most the limit in memory. This module must never look inside a body (it only counts bytes),
and never answer anything but 400 (a Content-Length that is not a number) or 413.
"""

from __future__ import annotations

import orjson
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["BodyLimitMiddleware", "BodyTooLarge"]


class BodyTooLarge(HTTPException):
    """The request body went past the configured limit while it was being received.

    An HTTPException (413), so that FastAPI, reading a body for validation, lets it through as
    the answer instead of turning it into "400: There was an error parsing the body".
    """

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body is larger than {limit} bytes")
        self.limit = limit


class BodyLimitMiddleware:
    """Answer 413 for bodies over ``max_bytes`` before they are read whole.

    Checks Content-Length up front and counts streamed chunks (chunked transfer has no length).
    A chunk past the limit raises ``BodyTooLarge`` inside the app: answered 413 here when nothing
    was sent yet, or by the app's exception handler when the app caught it first.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    await _send_error(send, 400, "invalid Content-Length header")
                    return
                if length > self.max_bytes:
                    await _send_error(send, 413, f"request body is larger than {self.max_bytes} bytes")
                    return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge as exc:
            if started:
                raise
            await _send_error(send, 413, exc.detail)


async def _send_error(send: Send, status: int, detail: str) -> None:
    body = orjson.dumps({"detail": detail})
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
    })
    await send({"type": "http.response.body", "body": body})
