"""A small real HTTP API for the ``http_api`` executor to call: in tests, the benchmark and the
examples, served on a local port by ``serving(create_app())``.

Endpoints (any method unless said):

- ``/echo`` and ``/echo/<anything>``: the request as JSON (method, path, query, headers, body),
  and ``header_digests``: the SHA-256 of each header value, so a test can check a credential
  arrived without the credential appearing in what the executor keeps.
- ``/status/<code>``: answers that status; ``?retry_after=V`` sets ``Retry-After: V``,
  ``?location=URL`` sets ``Location``.
- ``/slow?seconds=S``: answers after S seconds.
- ``/big?bytes=N[&type=json][&fill=HH]``: a body of N bytes (text, or a JSON object of about that
  size), made of the byte HH (hexadecimal; default 78, "x").
- ``/headers?name=value&...``: answers with those response headers.
- ``GET /_counts``: ``{"requests": {key: n}, "applied": {key: n}, "total": n}``; ``POST /_reset``.

Idempotency is honoured the way Stripe's API does: the first request carrying an
``Idempotency-Key`` is applied; every later one with the same key, method and path (even while the
first is still running) is not applied again but gets the first one's response replayed, with
``Idempotent-Replayed: true``. (Method and path are part of it so that a redirect, which carries
the key on to another path, is a request of its own.) ``/_counts`` says how often each key was
sent and applied, so a test can prove a run reached the outside world once.

Never for production traffic: no TLS, no authentication, state in memory.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

__all__ = ["create_app"]

ANY_METHOD = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
MAX_BIG_BYTES = 64 << 20
MAX_SLOW_S = 600.0

Handler = Callable[[Request], Awaitable[Response]]
# (status, headers, body) of a first response, replayed to later requests with its key.
Recorded = tuple[int, list[tuple[str, str]], bytes]


@dataclass
class _Keys:
    """What the target saw, per Idempotency-Key."""

    requests: Counter[str] = field(default_factory=Counter)
    applied: Counter[str] = field(default_factory=Counter)
    first: dict[tuple[str, str, str], asyncio.Future[Recorded]] = field(default_factory=dict)
    total: int = 0


def _tracked(keys: _Keys, handler: Handler) -> Handler:
    """``handler`` applied once per Idempotency-Key, its first response replayed after that."""

    async def endpoint(request: Request) -> Response:
        keys.total += 1
        key = request.headers.get("idempotency-key")
        if key is None:
            return await handler(request)
        # Nothing awaits between looking the key up and claiming it: on the server's one event
        # loop no other request runs in between, so two concurrent requests never both apply it.
        keys.requests[key] += 1
        request_key = (key, request.method, request.url.path)
        first = keys.first.get(request_key)
        if first is not None:
            status, headers, body = await asyncio.shield(first)
            return Response(body, status, headers=dict([*headers, ("idempotent-replayed", "true")]))
        recorded: asyncio.Future[Recorded] = asyncio.get_running_loop().create_future()
        keys.first[request_key] = recorded
        keys.applied[key] += 1
        try:
            response = await handler(request)
        except Exception as exc:
            response = JSONResponse({"error": f"{type(exc).__name__}: {exc}"}, 500)
        except BaseException:  # cancelled: those waiting get an empty answer, never a hang
            recorded.set_result((499, [], b""))
            raise
        headers = [(k, v) for k, v in response.headers.items() if k != "content-length"]
        recorded.set_result((response.status_code, headers, bytes(response.body)))
        return response

    return endpoint


def _json(value: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(value), status, headers=headers, media_type="application/json")


def _number(request: Request, name: str, default: float, high: float) -> float:
    try:
        value = float(request.query_params.get(name, default))
    except ValueError:
        value = default
    return min(max(value, 0.0), high)


async def _echo(request: Request) -> Response:
    raw = await request.body()
    body: Any = None
    if raw:
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = raw.decode("utf-8", errors="replace")
    query: dict[str, Any] = {}
    for name in request.query_params:
        values = request.query_params.getlist(name)
        query[name] = values[0] if len(values) == 1 else values
    headers = dict(request.headers.items())
    digests = {k: hashlib.sha256(v.encode("latin-1")).hexdigest() for k, v in headers.items()}
    return _json({"method": request.method, "path": request.url.path, "query": query,
                  "headers": headers, "header_digests": digests, "body": body})


async def _status(request: Request) -> Response:
    code = int(request.path_params["code"])
    headers = {}
    if "retry_after" in request.query_params:
        headers["Retry-After"] = request.query_params["retry_after"]
    if "location" in request.query_params:
        headers["Location"] = request.query_params["location"]
    if code < 200 or code in (204, 304):  # statuses that carry no body
        return Response(None, code, headers=headers)
    return _json({"status": code, "error": f"the status {code} was asked for"}, code, headers)


async def _slow(request: Request) -> Response:
    seconds = _number(request, "seconds", 1.0, MAX_SLOW_S)
    await asyncio.sleep(seconds)
    return _json({"slept": seconds})


async def _big(request: Request) -> Response:
    size = int(_number(request, "bytes", 1024, MAX_BIG_BYTES))
    try:
        fill = bytes.fromhex(request.query_params.get("fill", "78"))[:1] or b"x"
    except ValueError:
        fill = b"x"
    if request.query_params.get("type") == "json":
        filler = max(size - len(b'{"data":""}'), 0)
        return Response(b'{"data":"' + fill * filler + b'"}', media_type="application/json")
    return Response(fill * size, media_type="text/plain; charset=utf-8")


async def _headers(request: Request) -> Response:
    chosen = dict(request.query_params.items())
    return _json({"headers": chosen}, headers=chosen)


def create_app() -> Starlette:
    """A fresh target, with its own counts."""
    keys = _Keys()

    async def counts(request: Request) -> Response:
        return _json({"requests": dict(keys.requests), "applied": dict(keys.applied), "total": keys.total})

    async def reset(request: Request) -> Response:
        keys.requests.clear()
        keys.applied.clear()
        keys.first.clear()
        keys.total = 0
        return _json({"reset": True})

    def route(path: str, handler: Handler) -> Route:
        return Route(path, _tracked(keys, handler), methods=ANY_METHOD)

    return Starlette(routes=[
        route("/echo", _echo),
        route("/echo/{rest:path}", _echo),
        route("/status/{code:int}", _status),
        route("/slow", _slow),
        route("/big", _big),
        route("/headers", _headers),
        Route("/_counts", counts, methods=["GET"]),
        Route("/_reset", reset, methods=["POST"]),
    ])
