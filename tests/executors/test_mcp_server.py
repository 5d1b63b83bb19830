"""The mcp_server executor through the official MCP client, against the MCPServer stand-in over
streamable HTTP on a real local port and over a child process's stdio."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from contracts.executors import McpServerConfig
from contracts.values import json_problem
from services.executors.base import BAD_REQUEST, CONNECTION, TIMEOUT, TOOL
from services.executors.mcp_server import (
    IDEMPOTENCY_META_KEY,
    MAX_READ_BYTES,
    MAX_RESULT_BYTES,
    McpServerExecutor,
)
from services.executors.secrets import REDACTED, SecretError
from services.executors.standins import mcp_tools
from services.executors.standins.serving import free_port, serving
from tests.executors.conftest import get_json, make_call

Make = Callable[..., Awaitable[McpServerExecutor]]


def http_config(url: str, **extra: Any) -> McpServerConfig:
    return McpServerConfig.model_validate({"name": "tools", "type": "mcp_server", "url": f"{url}/mcp",
                                           **extra})


@pytest.fixture
async def started() -> AsyncIterator[Make]:
    made: list[McpServerExecutor] = []

    async def make(config: McpServerConfig) -> McpServerExecutor:
        executor = McpServerExecutor(config)
        made.append(executor)
        await executor.start()
        return executor

    yield make
    for executor in made:
        await executor.close()


async def test_a_tool_call_returns_content_and_structured_content(mcp_url: str, started: Make) -> None:
    executor = await started(http_config(mcp_url))
    outcome = await executor.call(make_call({"text": "hello"}, action="echo"))
    assert outcome.ok, outcome
    assert outcome.result == {"content": [{"type": "text", "text": "hello"}],
                              "structured": {"result": "hello"}, "is_error": False, "truncated": False}
    outcome = await executor.call(make_call({"a": 2, "b": 3.5}, action="add"))
    assert outcome.ok and outcome.result["structured"] == {"result": 5.5}
    assert outcome.usage is None


async def test_the_idempotency_key_and_resolved_headers_reach_the_server(
        mcp_url: str, started: Make, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STANDIN_MCP_TOKEN", "tok-0123456789")
    headers = {"Authorization": "Bearer ${env:STANDIN_MCP_TOKEN}", "X-Team": "blue"}
    executor = await started(http_config(mcp_url, headers=headers))
    outcome = await executor.call(make_call({}, action="request_info", key="pool/task-1/1"))
    assert outcome.ok, outcome
    seen = outcome.result["structured"]
    assert seen["meta"][IDEMPOTENCY_META_KEY] == "pool/task-1/1"
    assert seen["headers"]["x-team"] == "blue"
    # The server got the resolved credential (only that value is redacted); no result carries it.
    assert seen["headers"]["authorization"] == REDACTED
    assert "tok-0123456789" not in json.dumps(outcome.result)


async def test_a_tool_error_fails_without_retry(mcp_url: str, started: Make) -> None:
    executor = await started(http_config(mcp_url))
    outcome = await executor.call(make_call({"message": "disk full"}, action="fail"))
    assert (outcome.ok, outcome.error_code, outcome.retryable) == (False, TOOL, False)
    assert outcome.error and "disk full" in outcome.error


async def test_arguments_the_tool_refuses_fail_without_retry(mcp_url: str, started: Make) -> None:
    executor = await started(http_config(mcp_url))
    outcome = await executor.call(make_call({"a": "two", "b": 1}, action="add"))
    assert (outcome.ok, outcome.error_code, outcome.retryable) == (False, TOOL, False)


@pytest.mark.parametrize("action", ["no_such_tool", None, ""])
async def test_a_tool_the_server_does_not_have_is_a_bad_request(mcp_url: str, started: Make,
                                                                action: str | None) -> None:
    executor = await started(http_config(mcp_url))
    outcome = await executor.call(make_call({}, action=action))
    assert (outcome.ok, outcome.error_code, outcome.retryable) == (False, BAD_REQUEST, False)


async def test_concurrent_calls_share_one_session(mcp_url: str, started: Make) -> None:
    executor = await started(http_config(mcp_url, capacity=8))
    began = time.monotonic()
    outcomes = await asyncio.gather(*(executor.call(make_call({"seconds": 0.5}, action="slow", key=f"k{i}"))
                                      for i in range(8)))
    elapsed = time.monotonic() - began
    assert all(o.ok for o in outcomes), outcomes
    assert elapsed < 2.5  # in parallel: eight half-second calls one after another would take 4 s
    counts = await get_json(f"{mcp_url}/_counts")
    assert (counts["sessions"], counts["opened"]) == (1, 1)


async def test_a_slow_tool_times_out_at_the_tasks_limit(mcp_url: str, started: Make) -> None:
    executor = await started(http_config(mcp_url))
    began = time.monotonic()
    outcome = await executor.call(make_call({"seconds": 3}, action="slow", timeout_s=0.3))
    assert (outcome.ok, outcome.error_code, outcome.retryable) == (False, TIMEOUT, True)
    assert time.monotonic() - began < 2.0
    assert (await executor.call(make_call({"text": "still here"}, action="echo"))).ok  # the session survives


async def test_a_large_result_is_cut_to_a_storable_size(mcp_url: str, started: Make) -> None:
    executor = await started(http_config(mcp_url))
    outcome = await executor.call(make_call({"chars": 2 * MAX_RESULT_BYTES}, action="big"))
    assert outcome.ok and outcome.result["truncated"] is True
    assert outcome.result["structured"] is None  # {"result": <the whole text>} does not fit
    [block] = outcome.result["content"]
    assert block["type"] == "text" and block["text"] == ("0123456789" * MAX_RESULT_BYTES)[:len(block["text"])]
    size = len(json.dumps(outcome.result, ensure_ascii=False).encode())
    assert MAX_RESULT_BYTES - 1024 < size <= MAX_RESULT_BYTES + 200  # the budget, plus the result's keys
    assert json_problem(outcome.result) is None


async def test_an_answer_past_the_read_limit_fails_without_retry(mcp_url: str, started: Make) -> None:
    executor = await started(http_config(mcp_url))
    outcome = await executor.call(make_call({"chars": MAX_READ_BYTES}, action="big"))
    assert (outcome.ok, outcome.error_code, outcome.retryable) == (False, TOOL, False)
    assert (await executor.call(make_call({"text": "x"}, action="echo"))).ok  # the session is fine
    assert (await get_json(f"{mcp_url}/_counts"))["opened"] == 1


@contextlib.asynccontextmanager
async def server_process(port: int) -> AsyncIterator[str]:
    """The MCP stand-in in a process of its own on ``port``, killed (not stopped) at the end."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.executors.standins.mcp_tools", "--port", str(port),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                await get_json(f"{url}/_counts")
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline and process.returncode is None, "the server did not start"
                await asyncio.sleep(0.05)
        yield url
    finally:
        process.kill()
        await process.wait()


async def test_a_restarted_server_gets_a_new_session_and_the_call_is_sent_again(started: Make) -> None:
    port = free_port()
    async with server_process(port) as url:
        executor = await started(http_config(url))
        assert (await executor.call(make_call({"text": "before"}, action="echo"))).ok
    async with server_process(port) as url:  # a new server process: it knows no session
        outcome = await executor.call(make_call({"text": "after"}, action="echo"))
        assert outcome.ok, outcome
        assert outcome.result["structured"] == {"result": "after"}
        counts = await get_json(f"{url}/_counts")
        # It refused the old session once, and the executor opened one new session.
        assert (counts["opened"], counts["sessions"]) == (1, 2)


async def test_an_unreachable_server_is_a_retryable_connection_error(started: Make) -> None:
    port = free_port()
    executor = await started(http_config(f"http://127.0.0.1:{port}"))  # start does not raise
    outcome = await executor.call(make_call({"text": "x"}, action="echo"))
    assert (outcome.ok, outcome.error_code, outcome.retryable) == (False, CONNECTION, True)
    with serving(mcp_tools.create_app(), port=port):  # the server comes up: the next call connects
        assert (await executor.call(make_call({"text": "x"}, action="echo"))).ok
        await executor.close()  # before the server stops: it would wait for the session's stream


async def test_a_missing_header_secret_fails_start_naming_it(mcp_url: str) -> None:
    headers = {"Authorization": "Bearer ${env:NO_SUCH_TOKEN}"}
    executor = McpServerExecutor(http_config(mcp_url, headers=headers))
    with pytest.raises(SecretError, match=r"tools\.headers\.Authorization"):
        await executor.start()
    await executor.close()


async def test_a_closed_executor_makes_no_call(mcp_url: str) -> None:
    executor = McpServerExecutor(http_config(mcp_url))
    await executor.start()
    await executor.close()
    outcome = await executor.call(make_call({"text": "x"}, action="echo"))
    assert (outcome.ok, outcome.error_code) == (False, CONNECTION)
    counts = await get_json(f"{mcp_url}/_counts")
    assert counts["opened"] == 1


def stdio_children() -> list[int]:
    """Our child processes running the MCP stand-in (read from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
            if int(fields[1]) == os.getpid() and b"mcp_tools" in cmdline and fields[0] != "Z":
                found.append(int(stat.parent.name))
    return found


async def test_a_tool_over_stdio(started: Make) -> None:
    config = McpServerConfig.model_validate({
        "name": "stdio-tools", "type": "mcp_server", "transport": "stdio", "command": sys.executable,
        "args": ["-m", "services.executors.standins.mcp_tools", "--stdio"]})
    executor = await started(config)
    outcome = await executor.call(make_call({"text": "one two three"}, action="word_count"))
    assert outcome.ok, outcome
    assert outcome.result["structured"] == {"result": 3}
    assert len(stdio_children()) == 1
    await executor.close()
    assert stdio_children() == []
    assert not (await executor.call(make_call({"text": "x"}, action="word_count"))).ok
