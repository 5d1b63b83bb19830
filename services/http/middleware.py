"""ASGI middleware of the HTTP API: the request body size limit, and the origin check.

A body over the limit is answered 413 before it is read whole, so an oversized upload costs at
most the limit in memory. A write or a WebSocket handshake a browser sends for a page of another
site is refused (403) before anything reads it. This module must never look inside a body (it
only counts bytes), and never answer anything but 400 (a Content-Length that is not a number),
403 (a foreign origin) or 413.
"""

from __future__ import annotations

import orjson
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["BodyLimitMiddleware", "BodyTooLarge", "OriginMiddleware", "parse_origins"]

# Methods a page of another site may make a browser send without asking (CORS) that change
# nothing: every other method is a write.
_SAFE = frozenset({"GET", "HEAD", "OPTIONS"})
_DEFAULT_PORTS = {"http": "80", "https": "443", "ws": "80", "wss": "443"}


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


def parse_origins(text: str) -> frozenset[str]:
    """The origins of ``--allow-origins`` (comma-separated, ``*`` for any), normalised as browsers
    send them: ``scheme://host[:port]``, lower case, without a default port or a trailing ``/``.
    ValueError naming one that is not an origin."""
    out = set()
    for item in (x.strip() for x in text.split(",")):
        if not item:
            continue
        if item == "*":
            out.add(item)
            continue
        normal = _normal(item.rstrip("/"))
        if normal is None:
            raise ValueError(f"{item!r} is not an origin: write scheme://host[:port], e.g. "
                             "https://ops.example.com")
        out.add(normal)
    return frozenset(out)


def _normal(origin: str) -> str | None:
    scheme, sep, rest = origin.lower().partition("://")
    if not sep or scheme not in ("http", "https") or not rest or "/" in rest or "@" in rest:
        return None
    host, colon, port = rest.rpartition(":")
    if colon and port.isdigit() and not host.endswith("]") and "]" not in port:
        if port == _DEFAULT_PORTS[scheme]:
            rest = host
    return f"{scheme}://{rest}"


class OriginMiddleware:
    """Refuse what a web page of another site makes a browser send: a write (any method but GET,
    HEAD and OPTIONS) or a WebSocket handshake whose ``Origin`` is not this server's own.

    Without it, any page a user of the machine opens could submit tasks or record costs on a
    server that runs without authentication on a loopback address (a form or ``fetch`` with a
    ``text/plain`` body needs no CORS preflight), and read the live streams (browsers apply no
    CORS to WebSockets). Browsers send ``Origin`` on both; other clients (the CLI, SDKs, webhook
    senders) send none and are not concerned. An origin is this server's own when its host and
    port are the request's ``Host`` (the dashboard), or when ``allowed`` names it (``*``: any).
    ``Origin: null`` (a sandboxed frame, a file) is never the server's own.
    """

    def __init__(self, app: ASGIApp, allowed: frozenset[str] = frozenset()) -> None:
        self.app = app
        self.allowed = allowed
        self.any = "*" in allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if self.any or not (kind == "websocket" or (kind == "http" and scope["method"] not in _SAFE)):
            await self.app(scope, receive, send)
            return
        origin = host = None
        for name, value in scope.get("headers", ()):
            if name == b"origin":
                origin = value.decode("latin-1")
            elif name == b"host":
                host = value.decode("latin-1")
        if origin is None or self._own(origin, host, scope):
            await self.app(scope, receive, send)
            return
        detail = (f"a request from a page of {origin!r} is refused: only this server's own pages (and "
                  "--allow-origins) may write or open a stream from a browser")
        if kind == "websocket":
            await receive()  # websocket.connect
            await send({"type": "websocket.close", "code": 1008, "reason": detail[:120]})
            return
        await _send_error(send, 403, detail)

    def _own(self, origin: str, host: str | None, scope: Scope) -> bool:
        normal = _normal(origin)
        if normal is None:
            return False
        if normal in self.allowed:
            return True
        if host is None:
            return False
        scheme = scope.get("scheme", "http")
        secure = scheme in ("https", "wss")
        # The request's own origin as a browser on this page would write it (behind a TLS proxy
        # the scheme differs: the host and port decide).
        schemes = ("https", "http") if secure else ("http", "https")
        return any(_normal(f"{s}://{host}") == normal for s in schemes)
