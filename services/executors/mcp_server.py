"""The ``mcp_server`` executor: one MCP tool call per task run, through the official ``mcp`` SDK.

A task's ``action`` names the tool and its ``parameters`` are the tool's arguments. The result:
``{content: [content blocks as JSON], structured: structuredContent or None, is_error: false,
truncated}``, bounded to ``MAX_RESULT_BYTES`` of JSON so it is always storable (structured content
first; text blocks are cut, other blocks that do not fit are replaced by a note; ``truncated``
says whether anything was).

One MCP session per executor, over streamable HTTP (``url``, ``headers``) or a child process's
stdio (``command``, ``args``, ``env`` over the SDK's safe default environment), opened in
``start`` and shared by every concurrent call. The transport and the session are async context
managers built on anyio task groups, so a task of their own enters and leaves them (``_Session``):
calls only send requests through the session, and ``close`` asks that task to leave, which is
how the SDK's cancel scopes stay in the task that opened them.

A call that finds the session broken (the connection closed, the child exited, the server forgot
the session) reconnects once and sends the request again with the same idempotency key (in the
request's ``_meta``): towards the outside world a run is at least once, as every executor's.

Errors: a tool result with ``isError`` fails without retry (``tool_error``): the server ran the
tool and answered; nothing in such a result says a repeat would differ, and a tool may have side
effects. A tool the server does not list, or arguments it refuses at the protocol level, is
``bad_request`` (never retried). An answer larger than ``MAX_READ_BYTES`` is ``tool_error``
without retry (it always will be). An unreachable server is ``connection_error`` and a call past
its time ``timeout``, both retryable; another protocol error from the server is
``tool_error:<code>``, retryable (the server's own trouble, like a 5xx).

Must never put a resolved secret (a referenced value, a credential header or variable) in a
result, an error or a log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from typing import Any, cast

import httpx2
import mcp_types
from mcp import ClientSession, MCPError, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from pydantic import ValidationError

from contracts.executors import MAX_RESPONSE_BYTES, SECRET_REFERENCE, McpServerConfig, is_sensitive_name
from contracts.values import json_problem
from services.executors.base import BAD_REQUEST, CONNECTION, TIMEOUT, TOOL, Call, Outcome
from services.executors.secrets import Redactor, resolve, resolve_values

__all__ = ["MAX_RESULT_BYTES", "McpServerExecutor"]

log = logging.getLogger(__name__)

# The JSON a result may take: the same bound as an http_api result, far below the 1 MiB of a
# request to the HTTP API or a Kafka record.
MAX_RESULT_BYTES = MAX_RESPONSE_BYTES
# The largest answer read over streamable HTTP (one server-sent event; the SDK's default is
# 1 MiB): a larger one is cut to MAX_RESULT_BYTES, one past this fails the call without retry.
MAX_READ_BYTES = 4 * 1024 * 1024
MAX_ERROR_CHARS = 2000
MAX_TOOL_PAGES = 100  # tools/list pages read at most (a server that pages forever cannot hang us)
CLOSE_TIMEOUT_S = 10.0  # a stdio child gets up to ~4 s from the SDK to exit before it is killed
IDEMPOTENCY_META_KEY = "io.agentbus/idempotency-key"
_REFUSED = frozenset({mcp_types.INVALID_PARAMS, mcp_types.METHOD_NOT_FOUND, mcp_types.INVALID_REQUEST})
# A server that forgot our session answers 404 with a JSON-RPC error whose code varies by SDK
# (-32600 in Python's, -32001 in TypeScript's; the Python client says "Session terminated" for a
# bare 404): its message is what they share. The request did not run; a new session is needed.
_SESSION_LOST = re.compile(r"\bsession\b.*\b(not found|terminated|expired)\b", re.IGNORECASE)


class _Session:
    """One MCP session, held open by a task of its own until ``close``."""

    def __init__(self, executor: McpServerExecutor) -> None:
        self.ready: asyncio.Future[ClientSession] = asyncio.get_running_loop().create_future()
        self.ready.add_done_callback(lambda f: f.cancelled() or f.exception())  # read: never "unretrieved"
        self.tools: frozenset[str] | None = None  # None: the server lists none (call whatever is asked)
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self._hold(executor), name=f"mcp-session:{executor.name}")
        self._task.add_done_callback(lambda t: t.cancelled() or t.exception())

    @property
    def alive(self) -> bool:
        return not self._task.done()

    async def _hold(self, executor: McpServerExecutor) -> None:
        try:
            async with contextlib.AsyncExitStack() as stack:
                read, write = await stack.enter_async_context(executor._transport(stack))
                session = await stack.enter_async_context(
                    ClientSession(read, write, read_timeout_seconds=executor.config.timeout))
                await session.initialize()
                self.tools = await _list_tools(session)
                self.ready.set_result(session)
                await self._stop.wait()
        except BaseException as exc:
            if not self.ready.done():
                self.ready.set_exception(exc if isinstance(exc, Exception) else ConnectionError("cancelled"))
            if isinstance(exc, Exception):
                log.warning("MCP session of %s ended: %s", executor.name, executor._describe(exc))
            raise

    async def session(self) -> ClientSession:
        """The session once open; raises what stopped it from opening."""
        return await asyncio.shield(self.ready)

    async def refresh_tools(self, session: ClientSession) -> None:
        self.tools = await _list_tools(session)

    async def close(self) -> None:
        """Ask the holding task to leave the session and transport (closing a stdio child and
        ending an HTTP session), and wait for it; cancel it if it does not end in time."""
        self._stop.set()
        _, late = await asyncio.wait({self._task}, timeout=CLOSE_TIMEOUT_S)
        if late:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=CLOSE_TIMEOUT_S)


async def _list_tools(session: ClientSession) -> frozenset[str] | None:
    names: set[str] = set()
    cursor: str | None = None
    try:
        for _ in range(MAX_TOOL_PAGES):
            params = mcp_types.PaginatedRequestParams(cursor=cursor) if cursor else None
            page = await session.list_tools(params=params)
            names.update(tool.name for tool in page.tools)
            cursor = page.next_cursor
            if not cursor:
                break
    except MCPError as exc:
        if exc.code == mcp_types.METHOD_NOT_FOUND:
            return None
        raise
    return frozenset(names)


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def _size(value: Any) -> int:
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())


def _bounded(structured: Any, blocks: list[dict[str, Any]]) -> tuple[Any, list[dict[str, Any]], bool]:
    """``structured`` and ``blocks`` within MAX_RESULT_BYTES of storable JSON, and whether anything
    was cut or left out."""
    budget, cut = MAX_RESULT_BYTES, False
    if structured is not None:
        if json_problem(structured) is not None or _size(structured) > budget:
            structured, cut = None, True
        else:
            budget -= _size(structured)
    kept: list[dict[str, Any]] = []
    for block in blocks:
        size = _size(block)
        if size <= budget and json_problem(block) is None:
            kept.append(block)
            budget -= size
            continue
        cut = True
        text = block.get("text")
        if block.get("type") == "text" and isinstance(text, str) and json_problem(block) is None:
            room = budget - _size({**block, "text": ""})
            while room > 0:
                short = {**block, "text": text.encode()[:room].decode(errors="ignore")}
                if _size(short) <= budget:
                    kept.append(short)
                    budget -= _size(short)
                    break
                room -= max(1, room // 8)  # escapes made it longer than its bytes: cut more
            continue
        note = {"type": str(block.get("type", "unknown")), "omitted": f"{size} bytes over the result limit"
                if json_problem(block) is None else "not storable JSON"}
        if _size(note) <= budget:
            kept.append(note)
            budget -= _size(note)
    return structured, kept, cut


class McpServerExecutor:
    """Calls the tools of one MCP server (see the module docstring)."""

    def __init__(self, config: McpServerConfig) -> None:
        self.name = config.name
        self.config = config
        self._headers: dict[str, str] = {}
        self._env: dict[str, str] = {}
        self._redactor = Redactor()
        self._current: _Session | None = None
        self._lock = asyncio.Lock()
        self._closed = False

    def _transport(self, stack: contextlib.AsyncExitStack) -> contextlib.AbstractAsyncContextManager[Any]:
        config = self.config
        if config.transport == "stdio":
            assert config.command is not None  # the config's validator requires it for stdio
            return stdio_client(StdioServerParameters(command=config.command, args=list(config.args),
                                                      env=self._env or None))
        assert config.url is not None  # the config's validator requires it for streamable_http
        # Connect and write within the call's time; reads may wait as long as a call may take.
        client = httpx2.AsyncClient(headers=self._headers,
                                    timeout=httpx2.Timeout(config.timeout, read=None))
        stack.push_async_callback(client.aclose)
        return streamable_http_client(config.url, http_client=client, max_sse_event_size=MAX_READ_BYTES)

    def _describe(self, exc: BaseException) -> str:
        leaf = _leaves(exc)[0]
        text = f"{type(leaf).__name__}: {leaf}" if str(leaf) else type(leaf).__name__
        return self._redactor.text(text)[:MAX_ERROR_CHARS]

    async def start(self) -> None:
        """Resolve the header and environment references (a missing one raises, named) and open the
        session. A server that cannot be reached now is not an error here: calls connect again."""
        config = self.config
        self._headers = resolve_values(config.headers, f"{self.name}.headers")
        self._env = resolve_values(config.env, f"{self.name}.env")
        # What to scrub from results and errors: each referenced value, and the whole value of a
        # header or variable whose name says it is a credential (as the http_api executor does).
        secrets = [resolve(found.group(), f"{self.name}.{what}.{name}")
                   for what, values in (("headers", config.headers), ("env", config.env))
                   for name, value in values.items() for found in SECRET_REFERENCE.finditer(value)]
        secrets += [v for k, v in {**self._headers, **self._env}.items() if is_sensitive_name(k)]
        self._redactor = Redactor(secrets)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._connected(None), self.config.timeout)

    async def close(self) -> None:
        self._closed = True
        async with self._lock:
            current, self._current = self._current, None
        if current is not None:
            await current.close()

    async def _connected(self, broken: _Session | None) -> tuple[_Session, ClientSession]:
        """The open session, opening a new one when there is none, or the current one has ended or
        is ``broken``. Raises what stops a session from opening."""
        async with self._lock:
            if self._closed:
                raise ConnectionError(f"executor {self.name} is closed")
            current = self._current
            if current is None or not current.alive or current is broken:
                if current is not None:
                    await current.close()
                current = self._current = _Session(self)
        return current, await current.session()

    async def call(self, call: Call) -> Outcome:
        if not call.action:
            return Outcome.failure("action must name the tool to call", BAD_REQUEST, retryable=False)
        timeout = call.timeout_s or self.config.timeout
        try:
            async with asyncio.timeout(timeout):
                return await self._call(call, call.action, timeout)
        except TimeoutError:
            return Outcome.failure(f"tool {call.action!r} did not answer within {timeout} s", TIMEOUT,
                                   retryable=True)

    async def _call(self, call: Call, tool: str, timeout: float) -> Outcome:
        broken: _Session | None = None
        for last in (False, True):
            try:
                held, session = await self._connected(broken)
            except Exception as exc:
                return Outcome.failure(f"cannot reach the MCP server: {self._describe(exc)}", CONNECTION,
                                       retryable=True)
            try:
                if held.tools is not None and tool not in held.tools:
                    await held.refresh_tools(session)  # the server may have added it since
                    if held.tools is not None and tool not in held.tools:
                        return Outcome.failure(f"the MCP server has no tool {tool!r}", BAD_REQUEST,
                                               retryable=False)
                # mypy does not read the open keys (PEP 728 extra_items) of RequestParamsMeta.
                meta = cast("mcp_types.RequestParamsMeta", {IDEMPOTENCY_META_KEY: call.idempotency_key})
                result = await session.call_tool(tool, dict(call.parameters), read_timeout_seconds=timeout,
                                                 meta=meta)
            except MCPError as exc:
                # "Connection closed" is the session's own end; the transport gives up on one request
                # (a stream cut short or too large) with the same code and another message.
                gone = (exc.code == mcp_types.CONNECTION_CLOSED and exc.message == "Connection closed") \
                    or bool(_SESSION_LOST.search(exc.message))
                if gone and not last:
                    broken = held
                    continue
                return self._error(tool, exc, gone)
            except ValidationError as exc:
                return Outcome.failure(f"the MCP server's answer to {tool!r} does not follow MCP: "
                                       f"{self._describe(exc)}", f"{TOOL}:invalid_result", retryable=False)
            except RuntimeError as exc:  # the SDK's checks: an output schema not met, input asked for
                return Outcome.failure(f"tool {tool!r}: {self._describe(exc)}", TOOL, retryable=False)
            return self._outcome(tool, result)
        raise AssertionError("unreachable")  # the loop's last pass always returns

    def _error(self, tool: str, exc: MCPError, gone: bool) -> Outcome:
        text = self._redactor.text(exc.message)[:MAX_ERROR_CHARS]
        if gone:
            return Outcome.failure(f"the MCP session broke during {tool!r}: {text}", CONNECTION,
                                   retryable=True)
        if exc.code == mcp_types.CONNECTION_CLOSED:
            if "exceeded" in exc.message:  # the answer is larger than MAX_READ_BYTES: it always will be
                return Outcome.failure(f"the answer of {tool!r} is too large to read: {text}", TOOL,
                                       retryable=False)
            return Outcome.failure(f"the answer of {tool!r} was cut short: {text}", CONNECTION,
                                   retryable=True)
        if exc.code == mcp_types.REQUEST_TIMEOUT:
            return Outcome.failure(f"tool {tool!r} did not answer in time: {text}", TIMEOUT, retryable=True)
        if exc.code in _REFUSED:
            return Outcome.failure(f"the MCP server refused {tool!r}: {text}", BAD_REQUEST, retryable=False)
        return Outcome.failure(f"the MCP server failed {tool!r} ({exc.code}): {text}", f"{TOOL}:{exc.code}",
                               retryable=True)

    def _outcome(self, tool: str, result: mcp_types.CallToolResult) -> Outcome:
        blocks = [self._redactor.json(b.model_dump(mode="json", by_alias=True, exclude_none=True))
                  for b in result.content]
        if result.is_error:
            said = " ".join(b["text"] for b in blocks
                            if b.get("type") == "text" and isinstance(b.get("text"), str))
            return Outcome.failure(f"tool {tool!r} failed: {said or 'no text'}"[:MAX_ERROR_CHARS], TOOL,
                                   retryable=False)
        structured, content, cut = _bounded(self._redactor.json(result.structured_content), blocks)
        return Outcome.success({"content": content, "structured": structured, "is_error": False,
                                "truncated": cut})
