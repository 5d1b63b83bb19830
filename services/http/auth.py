"""Authentication for the whole app: every HTTP request and WebSocket connection is matched to its
route, the route's permission looked up in ``permissions.PERMISSIONS``, and the caller's bearer
credential resolved to a principal (``credentials``) before the route runs.

An ASGI middleware rather than a dependency of each route, so a route added by any module is
covered without importing this one, WebSocket routes included. Answers: ``401`` (with
``WWW-Authenticate: Bearer``) for a missing, unknown, revoked, expired or badly signed
credential; ``403`` naming the permission the role lacks; ``429`` with ``Retry-After`` past the
principal's request rate. A WebSocket handshake is refused with the same statuses. The
credential comes from ``Authorization: Bearer``, or from ``?access_token=`` on WebSocket and
Server-Sent Events routes, where browsers cannot set headers. The principal rides in the ASGI
scope (``principal_of``): writes take the envelope's ``actor`` from it, never from a header.

``check_exposure`` is the secure default of ``agentbus serve``: no authentication configured is
open on a loopback address only.

This module must never let a request through to a route whose permission it did not check, and
never echo a credential.
"""

from __future__ import annotations

import ipaddress
import math
import re
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

import jwt
import orjson
from fastapi import FastAPI, Request
from starlette.requests import HTTPConnection
from starlette.routing import BaseRoute, Mount, Router, WebSocketRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from projections import queries
from services.http.credentials import Authenticator, JWTVerifier, Unauthorized
from services.http.permissions import OPEN, PERMISSIONS, SELF_SCOPED, SIGNED, Forbidden, Principal, missing
from services.http.responses import JSONBytesResponse, json_response
from services.runtime.channels import workflow_of_task
from services.runtime.service import SettingsError
from services.runtime.settings import Settings

__all__ = ["AuthMiddleware", "check_exposure", "document_auth", "install_auth", "principal_of",
           "recheck_interval", "route_keys", "still_valid"]

SCOPE_KEY = "agentbus.principal"
# The template of the route matched here, for the request metrics' label when this middleware
# answers (401, 403, 429) before the router runs the route (``services.http.metrics``).
ROUTE_TEMPLATE = "agentbus.route_template"
CREDENTIAL_KEY = "agentbus.credential"  # the bearer credential the principal came from
# An open stream's credential is checked again this often at least (else every --auth-cache-s).
RECHECK_MIN_S = 1.0
# Routes a browser reaches without setting headers: the credential may come in the query string.
QUERY_TOKEN_ROUTES = frozenset({("GET", "/v1/events/stream")})
QUERY_TOKEN_PARAMS = ("access_token", "token")
# Routes about one task that an agent may call only while it holds the task (read model).
HELD_TASK_ROUTES = frozenset({("POST", "/v1/tasks/{task_id}/progress")})
_HELD = ("assigned", "running")
_MAX_HELD = 100_000
_MAX_MATCHED = 10_000
_MOUNT = ("*",)


def route_keys(route: BaseRoute) -> list[tuple[str, str]]:
    """The ``PERMISSIONS`` keys of ``route``: (method, path); ``WS`` for WebSockets, ``*`` for mounts."""
    path = str(getattr(route, "path", ""))
    if isinstance(route, Mount):
        return [("*", path)]
    if isinstance(route, WebSocketRoute) or not hasattr(route, "methods"):
        return [("WS", path)]
    return [(m, path) for m in sorted(route.methods or ()) if m != "HEAD"] or [("GET", path)]


def principal_of(request: HTTPConnection) -> Principal | None:
    """The authenticated caller of a request or WebSocket (None when authentication is off)."""
    found: Principal | None = request.scope.get(SCOPE_KEY)
    return found


def recheck_interval(conn: HTTPConnection) -> float | None:
    """How often an open stream (WebSocket, SSE) checks its credential again (``still_valid``):
    None when the connection was opened without one (authentication off)."""
    authenticator = getattr(conn.app.state, "authenticator", None)
    if authenticator is None or conn.scope.get(CREDENTIAL_KEY) is None:
        return None
    return max(RECHECK_MIN_S, float(authenticator.cache_s))


async def still_valid(conn: HTTPConnection) -> str | None:
    """None while the credential that opened ``conn`` still authenticates; else why not (a revoked
    API token, an expired JWT). Checked at the handshake only, a stream would outlive both."""
    authenticator = getattr(conn.app.state, "authenticator", None)
    credential = conn.scope.get(CREDENTIAL_KEY)
    if authenticator is None or credential is None:
        return None
    try:
        await authenticator.principal(conn.app.state.service, credential)
    except Unauthorized as exc:
        return str(exc)
    return None


class AuthMiddleware:
    """Authenticate and authorize every request before its route runs (see the module docstring)."""

    def __init__(self, app: ASGIApp, router: Router, authenticator: Authenticator) -> None:
        self.app, self.router, self.auth = app, router, authenticator
        # (agent, pool, task) -> (until when the agent is known to hold the task, the task's workflow
        # run): progress posts (an LLM's token deltas) come many a second, and need not each cost a
        # query.
        self._held: dict[tuple[str, str, str], tuple[float, str | None]] = {}
        # The routes as matched here: recomputed when routes were added since.
        self._index: list[_Indexed] = []
        self._indexed = -1
        # (method, path) -> what it matched: most requests repeat a path seen before.
        self._matched: dict[tuple[str, str], tuple[tuple[str, str], dict[str, Any]]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        found = self._route(scope)
        if found is None:  # no such route (404) or method (405): the app answers
            await self.app(scope, receive, send)
            return
        key, params = found
        scope[ROUTE_TEMPLATE] = key[1]  # the metrics' label, should this answer before the route runs
        permission = PERMISSIONS.get(key, "system")  # a route nobody listed: admins only
        if permission in (OPEN, SIGNED):
            await self.app(scope, receive, send)
            return
        try:
            principal = await self._principal(scope, key)
            wait = self.auth.limiter.admit(f"{principal.kind}:{principal.id}")
            if wait > 0:
                await _deny(scope, send, 429, {"detail": f"over the request rate of this {principal.kind}"},
                            {"retry-after": str(max(1, math.ceil(wait)))})
                return
            if principal.lacks(permission):
                raise missing(principal, permission)
            if key in HELD_TASK_ROUTES and principal.role == "agent" and permission in SELF_SCOPED:
                receive = await self._holds(scope, receive, principal, str(params.get("task_id")), permission)
        except Unauthorized as exc:
            given = _credential(scope, key) is not None
            challenge = 'Bearer realm="agentbus"' + (', error="invalid_token"' if given else "")
            await _deny(scope, send, 401, {"detail": str(exc)}, {"www-authenticate": challenge})
            return
        except Forbidden as exc:
            await _deny(scope, send, 403, {"detail": str(exc), "permission": exc.permission})
            return
        except _Starting:
            await _deny(scope, send, 503, {"detail": "agentbus is starting"})
            return
        scope[SCOPE_KEY] = principal
        await self.app(scope, receive, send)

    def _route(self, scope: Scope) -> tuple[tuple[str, str], dict[str, Any]] | None:
        """The ``PERMISSIONS`` key and path parameters of the route the router will run, as its
        own matching finds it (the first route whose path and method match), or None."""
        if len(self.router.routes) != self._indexed:
            self._index = [_Indexed.of(route) for route in self.router.routes]
            self._indexed = len(self.router.routes)
            self._matched.clear()
        websocket = scope["type"] == "websocket"
        method = "WS" if websocket else "GET" if scope["method"] == "HEAD" else scope["method"]
        path = scope["path"][len(scope.get("root_path", "")):] if scope.get("root_path") else scope["path"]
        known = self._matched.get((method, path))
        if known is not None:
            return known
        for entry in self._index:
            if entry.websocket is not websocket and entry.methods != _MOUNT:
                continue
            found = entry.regex.match(path)
            if found is not None and (method in entry.methods or entry.methods == _MOUNT):
                key = ("*" if entry.methods == _MOUNT else method, entry.path)
                if len(self._matched) >= _MAX_MATCHED:
                    self._matched.clear()
                self._matched[(method, path)] = result = (key, found.groupdict())
                return result
        return None

    async def _principal(self, scope: Scope, key: tuple[str, str]) -> Principal:
        credential = _credential(scope, key)
        if credential is None:
            raise Unauthorized("a bearer token is required (Authorization: Bearer <token>)")
        scope[CREDENTIAL_KEY] = credential
        service = getattr(scope["app"].state, "service", None)
        if service is None:
            raise _Starting
        return await self.auth.principal(service, credential)

    async def _holds(self, scope: Scope, receive: Receive, principal: Principal, task_id: str,
                     permission: str) -> Receive:
        """Refuse unless the agent holds the task (in the pool the route takes: the body's, else the
        query's) and the body names no workflow run but the task's own; the ``receive`` that
        replays the body read to find them."""
        receive, body = await _buffered(receive, self.auth.max_body_bytes)
        named_pool, named_run = _progress_target(body)
        pool = named_pool or _query(scope).get("pool", [None])[0] or "default"
        key = (str(principal.agent_id), pool, task_id)
        now = time.monotonic()
        held = self._held.get(key)
        if held is None or held[0] <= now:
            task = await queries.get_task(scope["app"].state.service.store, pool, task_id)
            if task is None or task["agent_id"] != principal.agent_id or task["status"] not in _HELD:
                raise Forbidden(permission, f"agent {principal.agent_id!r} does not hold task {task_id!r} "
                                            f"in pool {pool!r}")
            data = task.get("data") or {}
            run = data.get("workflow_id")
            held = (now + self.auth.cache_s, run if isinstance(run, str) else workflow_of_task(task_id))
            if len(self._held) >= _MAX_HELD:
                self._held = {k: v for k, v in self._held.items() if v[0] > now}
            if len(self._held) < _MAX_HELD:
                self._held[key] = held
        if named_run is not None and named_run != held[1]:
            raise Forbidden(permission, f"task {task_id!r} is not a step of workflow run {named_run!r}")
        return receive


@dataclass(frozen=True, slots=True)
class _Indexed:
    """A route as the middleware matches it: by its path regex and methods. Measured per request
    (busy machine): Starlette's own ``matches`` over the routes took 130 us for a route near the
    start of the list and 970 us for the last; these regexes 35 and 127 us; a path seen before,
    from the cache, 3 us."""

    regex: re.Pattern[str]
    methods: tuple[str, ...]  # ("WS",) for a WebSocket route, ("*",) for a mount
    websocket: bool
    path: str

    @classmethod
    def of(cls, route: BaseRoute) -> _Indexed:
        keys = route_keys(route)
        methods = tuple(method for method, _ in keys)
        regex = getattr(route, "path_regex", None) or re.compile("(?!)")  # a route without a path: never
        return cls(regex, methods, methods == ("WS",), keys[0][1])


class _Starting(Exception):
    """The service is not open yet: no token can be checked."""


async def _buffered(receive: Receive, limit: int) -> tuple[Receive, bytes]:
    """The request body (up to just past ``limit``: the body limit refuses more, later) and a
    ``receive`` that hands the app the same messages again."""
    messages: list[Message] = []
    size, more = 0, True
    while more and size <= limit:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            break
        size += len(message.get("body", b""))
        more = bool(message.get("more_body", False))
    body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.request")

    async def replay() -> Message:
        return messages.pop(0) if messages else await receive()

    return replay, body


def _progress_target(body: bytes) -> tuple[str | None, str | None]:
    """The ``pool`` and ``workflow_id`` a progress body names (None for either not given as text)."""
    try:
        fields = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return None, None
    if not isinstance(fields, dict):
        return None, None
    pool, run = fields.get("pool"), fields.get("workflow_id")
    return (pool if isinstance(pool, str) else None), (run if isinstance(run, str) else None)


def _query(scope: Scope) -> dict[str, list[str]]:
    return parse_qs(scope.get("query_string", b"").decode("latin-1"))


def _credential(scope: Scope, key: tuple[str, str]) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            header: str = value.decode("latin-1")
            scheme, _, credential = header.partition(" ")
            if scheme.lower() == "bearer" and credential.strip():
                return credential.strip()
    if scope["type"] == "websocket" or key in QUERY_TOKEN_ROUTES:
        query = _query(scope)
        for name in QUERY_TOKEN_PARAMS:
            if query.get(name):
                return query[name][0]
    return None


async def _deny(scope: Scope, send: Send, status: int, body: dict[str, Any],
                headers: dict[str, str] | None = None) -> None:
    content = orjson.dumps(body)
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(content)).encode()),
           *((k.encode(), v.encode()) for k, v in (headers or {}).items())]
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": content})
    elif "websocket.http.response" in scope.get("extensions", {}):
        await send({"type": "websocket.http.response.start", "status": status, "headers": raw})
        await send({"type": "websocket.http.response.body", "body": content})
    else:  # a server without the denial extension refuses the handshake with a 403
        await send({"type": "websocket.close", "code": 1008, "reason": str(body["detail"])[:120]})


async def _forbidden(request: Request, exc: Exception) -> JSONBytesResponse:
    assert isinstance(exc, Forbidden)
    return json_response({"detail": str(exc), "permission": exc.permission}, 403)


def install_auth(app: FastAPI, settings: Settings) -> None:
    """Require authentication on ``app`` when the settings say so (``auth: required``)."""
    app.add_exception_handler(Forbidden, _forbidden)
    if settings.auth != "required":
        return
    authenticator = Authenticator(settings)
    app.state.authenticator = authenticator
    app.add_middleware(AuthMiddleware, router=app.router, authenticator=authenticator)


_REFUSED = {"content": {"application/json": {"schema": {
    "type": "object", "properties": {"detail": {"type": "string"}, "permission": {"type": "string"}},
    "required": ["detail"]}}}}
_ANSWERS = {
    "401": {**_REFUSED, "description": "No bearer token, or one that is unknown, revoked, expired or badly "
                                       "signed (WWW-Authenticate: Bearer)."},
    "403": {**_REFUSED, "description": "The token's role lacks `permission`."},
    "429": {**_REFUSED, "description": "Over the token's request rate; retry after Retry-After seconds."},
}


def document_auth(schema: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """``schema`` (the OpenAPI document) with the bearer scheme, each operation's permission and
    the refusals it may answer, when authentication is required; unchanged otherwise."""
    if settings.auth != "required":
        return schema
    schema.setdefault("components", {}).setdefault("securitySchemes", {})["bearer"] = {
        "type": "http", "scheme": "bearer",
        "description": "An API token (abt_..., from `agentbus tokens create` or POST /v1/tokens) or a JWT."}
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            permission = PERMISSIONS.get((method.upper(), path), "system")
            if permission in (OPEN, SIGNED):
                continue
            operation["security"] = [{"bearer": []}]
            operation["x-agentbus-permission"] = permission
            operation.setdefault("responses", {}).update(_ANSWERS)
    return schema


def _loopback(host: str) -> bool:
    host = host.strip().strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(settings: Settings) -> str | None:
    """What ``serve`` says about authentication at start, or SettingsError when it must not start:
    listening beyond the loopback address without authentication configured."""
    if settings.auth == "required":
        try:
            JWTVerifier(settings)
        except (ValueError, OSError, jwt.PyJWTError) as exc:  # a short secret, a bad JWKS file
            raise SettingsError(f"cannot verify JWTs: {exc}") from None
        return None
    if settings.auth == "off":
        return None if _loopback(settings.host) else (
            f"agentbus: authentication is off (--auth off) on {settings.host}: anyone who can reach it may "
            "read and write everything")
    if _loopback(settings.host):
        return (f"agentbus: authentication is off: open to local processes on {settings.host} only "
                "(--auth required to require tokens)")
    raise SettingsError(
        f"refusing to listen on {settings.host} without authentication: anyone who can reach it could "
        "read and write everything. Create the first admin token with `agentbus tokens create --role "
        "admin` (with this deployment's --data-dir or --broker), then start with --auth required "
        "(AGENTBUS_AUTH=required) and send it as Authorization: Bearer <token>; or pass --auth off to "
        "run open on purpose.")
