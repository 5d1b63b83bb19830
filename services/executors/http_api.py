"""The ``http_api`` executor: one HTTP request per task run, its response as a storable result.

The task says what to send. ``parameters`` may hold ``method``, ``path`` (relative to the
configured ``endpoint``), ``query`` (an object), ``headers`` (an object) and ``body`` (any JSON,
sent as JSON); an ``action`` that is an HTTP method name (any case) is the method. Without either,
the method is GET, or POST when there is a body. Every request carries
``Idempotency-Key: <call.idempotency_key>`` (the task cannot override it), the configured
authentication and static headers.

How a response ends the run:

=====================================  =========================================================
2xx                                    success: ``{status, headers, body, truncated, ...}``
429 or 503 with a usable Retry-After   ``later`` (seconds or an HTTP-date, clamped to 0..1 day)
408, 429, 5xx                          retryable failure, ``http_status:<code>``
other 3xx/4xx                          failure, not retryable, ``http_status:<code>``
no response within the time limit      retryable ``timeout``
refused, reset, broken connection      retryable ``connection_error``
parameters that make no request        not retryable ``bad_request``
=====================================  =========================================================

A result is always storable: the body kept is at most ``max_response_bytes`` (a JSON body cut
short becomes text), text holds no NUL, and the whole result's JSON is at most
``MAX_RESULT_BYTES``. Must never raise for what the target did, and never put a resolved secret
in a result or an error (``Redactor`` scrubs what a target echoes back).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import math
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import httpx2
import orjson

from contracts.executors import MAX_RESPONSE_BYTES, ApiKeyAuth, BasicAuth, HttpApiConfig, is_sensitive_name
from contracts.scheduling import MAX_SECONDS
from contracts.values import json_problem
from services.executors.base import BAD_REQUEST, CONNECTION, HTTP_STATUS, TIMEOUT, Call, Outcome
from services.executors.secrets import Redactor, resolve, resolve_values

__all__ = ["MAX_RESULT_BYTES", "MAX_RETRY_AFTER_S", "METHODS", "HttpApiExecutor"]

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
PARAMETERS = ("method", "path", "query", "headers", "body")
# The JSON form of a result is never larger: a quarter of the 1 MiB an HTTP API request and a
# Kafka record may hold, leaving room for the envelope and for events that carry the result on.
MAX_RESULT_BYTES = MAX_RESPONSE_BYTES
# A Retry-After is honoured up to what a DeferTask may say (one day); further is read as a day.
MAX_RETRY_AFTER_S = MAX_SECONDS
MAX_HEADER_VALUE = 2000  # characters of a response header kept in the result
EXCERPT = 200  # characters of a failed response's body quoted in the error
MAX_ERROR = 2000  # characters of an error (FailTask takes 10,000)
USER_AGENT = "agentbus-http-api"

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e]*")
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")  # what no store holds in text (contracts.values)
_SCALAR = (str, int, float, bool, type(None))
_NOT_JSON: Any = object()


class _BadRequest(Exception):
    """The task's action and parameters make no request."""


@dataclass(frozen=True, slots=True)
class _Request:
    method: str
    path: str
    query: dict[str, Any]
    headers: dict[str, str]
    body: Any
    has_body: bool


def _request_of(call: Call) -> _Request:
    """What ``call`` asks to send; raises _BadRequest saying what is wrong."""
    p = call.parameters
    unknown = sorted(set(p) - set(PARAMETERS))
    if unknown:
        raise _BadRequest(f"unknown parameters {', '.join(unknown)}; an http_api task takes "
                          f"{', '.join(PARAMETERS)}")
    has_body = p.get("body") is not None
    method = p.get("method")
    if method is not None:
        if not isinstance(method, str) or method.upper() not in METHODS:
            raise _BadRequest(f"parameters.method must be one of {', '.join(sorted(METHODS))}")
        method = method.upper()
    elif call.action is not None and call.action.upper() in METHODS:
        method = call.action.upper()
    else:
        method = "POST" if has_body else "GET"
    path = p.get("path", "")
    if not isinstance(path, str):
        raise _BadRequest("parameters.path must be text")
    try:
        parts = urlsplit(path)
    except ValueError as exc:
        raise _BadRequest(f"parameters.path is not a URL path: {exc}") from None
    if parts.scheme or parts.netloc or path.startswith("//"):
        raise _BadRequest("parameters.path must be a path relative to the endpoint, not a URL")
    return _Request(method, path, _query(p.get("query")), _headers(p.get("headers")), p.get("body"), has_body)


def _query(query: Any) -> dict[str, Any]:
    if query is None:
        return {}
    if not isinstance(query, dict):
        raise _BadRequest("parameters.query must be an object of names to values (or lists of values)")
    for name, value in query.items():
        items = value if isinstance(value, list) else [value]
        if not all(isinstance(v, _SCALAR) for v in items):
            raise _BadRequest(f"parameters.query.{name} must be text, a number, a boolean, null or a list "
                              "of those")
    return query


def _headers(headers: Any) -> dict[str, str]:
    if headers is None:
        return {}
    if not isinstance(headers, dict):
        raise _BadRequest("parameters.headers must be an object of header names to values")
    out: dict[str, str] = {}
    for name, value in headers.items():
        if not _TOKEN.fullmatch(name):
            raise _BadRequest(f"parameters.headers: {name[:100]!r} is not a header name")
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise _BadRequest(f"parameters.headers.{name} must be text or a number")
        text = str(value)
        if not _HEADER_VALUE.fullmatch(text):
            raise _BadRequest(f"parameters.headers.{name} must be printable ASCII (no line breaks)")
        if name.lower() != "idempotency-key":  # the executor's own, always
            out[name] = text
    return out


def _retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds a Retry-After header asks to wait (0..MAX_RETRY_AFTER_S), or None if unusable."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - now).total_seconds()
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def _clean(text: str) -> str:
    return _UNSTORABLE.sub("\ufffd", text)


def _decode(raw: bytes, charset: str | None) -> str:
    try:
        text = raw.decode(charset or "utf-8", errors="replace")
    except LookupError:  # a charset Python does not know
        text = raw.decode("utf-8", errors="replace")
    return _clean(text)


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


class HttpApiExecutor:
    """An ``http_api`` executor: one pooled HTTP client, one request per call."""

    def __init__(self, config: HttpApiConfig) -> None:
        self.name = config.name
        self.config = config
        self._client: httpx2.AsyncClient | None = None
        self._static: dict[str, str] = {}
        self._auth: dict[str, str] = {}
        self._redact = Redactor()
        self._result_headers = tuple(dict.fromkeys(h.lower() for h in config.result_headers))

    async def start(self) -> None:
        """Resolve the secrets (a missing one raises SecretError, named) and open the pool."""
        cfg = self.config
        secrets: list[str] = []
        self._static = resolve_values(cfg.headers, f"{cfg.name}.headers")
        secrets += [v for k, v in self._static.items() if is_sensitive_name(k)]
        auth = cfg.authentication
        field = f"{cfg.name}.authentication"
        if isinstance(auth, ApiKeyAuth):
            key = resolve(auth.key, f"{field}.key")
            self._auth, secrets = {auth.header: key}, [*secrets, key]
        elif isinstance(auth, BasicAuth):
            password = resolve(auth.password, f"{field}.password")
            pair = base64.b64encode(f"{auth.username}:{password}".encode()).decode("ascii")
            self._auth, secrets = {"Authorization": f"Basic {pair}"}, [*secrets, password, pair]
        elif auth is not None:
            token = resolve(auth.token, f"{field}.token")
            self._auth, secrets = {"Authorization": f"Bearer {token}"}, [*secrets, token]
        for name, value in {**self._static, **self._auth}.items():
            if not _HEADER_VALUE.fullmatch(value):
                # The value is a secret's: say where it came from, never what it is.
                raise ValueError(f"{cfg.name}: the value resolved for header {name!r} is not printable "
                                 "ASCII (a line break or control character in the variable or file?)")
        self._redact = Redactor(secrets)
        self._client = httpx2.AsyncClient(
            base_url=cfg.endpoint,
            http2=cfg.http2,
            timeout=httpx2.Timeout(cfg.timeout),
            limits=httpx2.Limits(max_connections=cfg.capacity, max_keepalive_connections=cfg.capacity),
            follow_redirects=cfg.follow_redirects,
            headers={"User-Agent": USER_AGENT},
        )

    async def close(self) -> None:
        """Close the connection pool."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def call(self, call: Call) -> Outcome:
        """Send the request ``call`` describes; its response (or why there is none) as an Outcome."""
        if self._client is None:
            raise RuntimeError(f"executor {self.name} called before start()")
        try:
            req = _request_of(call)
        except _BadRequest as exc:
            return self._failure(str(exc), BAD_REQUEST, retryable=False)
        headers = httpx2.Headers(self._static)
        headers.update(req.headers)
        headers.update(self._auth)
        headers["Idempotency-Key"] = call.idempotency_key
        limit = call.timeout_s if call.timeout_s is not None else self.config.timeout
        what = f"{req.method} {urlsplit(req.path).path or '/'}"
        started = time.perf_counter()
        try:
            request = self._client.build_request(
                req.method, req.path, params=req.query, headers=headers,
                json=req.body if req.has_body else None, timeout=httpx2.Timeout(limit))
        except (httpx2.InvalidURL, ValueError) as exc:
            return self._failure(f"{what}: no request can be made of the parameters "
                                 f"({type(exc).__name__})", BAD_REQUEST, retryable=False)
        try:
            async with asyncio.timeout(limit):
                response = await self._client.send(request, stream=True)
                try:
                    raw, truncated = await self._read(response)
                finally:
                    await response.aclose()
        except (TimeoutError, httpx2.TimeoutException):
            return self._failure(f"{what}: no response within {limit:g} s", TIMEOUT, retryable=True)
        except httpx2.LocalProtocolError as exc:
            # Its message may quote a header value (a secret's): name the kind of problem only.
            return self._failure(f"{what}: the request is not valid HTTP ({type(exc).__name__})",
                                 BAD_REQUEST, retryable=False)
        except httpx2.TooManyRedirects:
            return self._failure(f"{what}: too many redirects", HTTP_STATUS, retryable=False)
        except (httpx2.TransportError, httpx2.DecodingError) as exc:
            reason = str(exc) or "no detail"
            return self._failure(f"{what}: {type(exc).__name__}: {reason}", CONNECTION, retryable=True)
        elapsed_ms = round((time.perf_counter() - started) * 1000, 1)
        return self._outcome(what, response, raw, truncated, elapsed_ms)

    def _text(self, error: str) -> str:
        """An error as reported: storable text, no secret in it, at most MAX_ERROR characters."""
        return self._redact.text(_clean(error))[:MAX_ERROR]

    def _failure(self, error: str, code: str, *, retryable: bool) -> Outcome:
        return Outcome.failure(self._text(error), code, retryable=retryable)

    async def _read(self, response: httpx2.Response) -> tuple[bytes, bool]:
        """The body, at most ``max_response_bytes`` of it, and whether there was more."""
        limit = self.config.max_response_bytes
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                return b"".join(chunks)[:limit], True
        return b"".join(chunks), False

    def _outcome(self, what: str, response: httpx2.Response, raw: bytes, truncated: bool,
                 elapsed_ms: float) -> Outcome:
        status = response.status_code
        result = self._result(response, raw, truncated, elapsed_ms)
        if 200 <= status < 300:
            return Outcome.success(result)
        code = f"{HTTP_STATUS}:{status}"
        error = f"{what}: HTTP {status} {response.reason_phrase}".rstrip()
        if status in (429, 503):
            wait = _retry_after(response.headers.get("retry-after"), datetime.now(UTC))
            if wait is not None:
                return Outcome.later(wait, self._text(f"{error}; retry after {wait:g} s"), code)
        location = response.headers.get("location")
        if 300 <= status < 400 and location:
            error += f" to {location[:MAX_HEADER_VALUE]}"
        body = result["body"]
        excerpt = " ".join((body if isinstance(body, str) else orjson.dumps(body).decode()).split())
        if excerpt:
            error += f": {excerpt[:EXCERPT]}{'...' if len(excerpt) > EXCERPT else ''}"
        return self._failure(error, code, retryable=status in (408, 429) or status >= 500)

    def _result(self, response: httpx2.Response, raw: bytes, truncated: bool,
                elapsed_ms: float) -> dict[str, Any]:
        """The response as storable JSON, within MAX_RESULT_BYTES."""
        got = response.headers
        headers = {name: self._redact.text(_clean(", ".join(got.get_list(name))))[:MAX_HEADER_VALUE]
                   for name in self._result_headers if name in got}
        body: Any = None
        if raw:
            body = _NOT_JSON
            if not truncated and _is_json(response.headers.get("content-type", "")):
                with contextlib.suppress(orjson.JSONDecodeError):
                    body = orjson.loads(raw)
                if json_problem(body) is not None:  # deeper or larger than a store holds
                    body = _NOT_JSON
            if body is _NOT_JSON:
                body = _decode(raw, response.charset_encoding)
            body = self._redact.json(body)
        result: dict[str, Any] = {"status": response.status_code, "headers": headers, "body": body,
                                  "truncated": truncated, "http_version": response.http_version,
                                  "elapsed_ms": elapsed_ms}
        over = len(orjson.dumps(result)) - MAX_RESULT_BYTES
        if over > 0:  # escapes made the JSON form larger than the bytes: cut the text further
            text = body if isinstance(body, str) else _decode(raw, response.charset_encoding)
            text = self._redact.text(text)
            while over > 0:
                # Cut as many characters as ``over`` bytes of the text's JSON form hold on average
                # (a control character takes six): a body of escapes keeps what fits, not nothing.
                size = len(orjson.dumps(text))
                drop = max(1, -(-over * len(text) // max(size, 1)))
                text = text[: max(0, len(text) - drop)]
                result.update(body=text, truncated=True)
                over = len(orjson.dumps(result)) - MAX_RESULT_BYTES
        return result
