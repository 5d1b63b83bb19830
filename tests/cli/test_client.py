"""What the entity commands send, checked against an injected httpx transport (no server)."""

from __future__ import annotations

import json
from typing import Any

import httpx
from click.testing import CliRunner

from services.cli import main


def run(*args: str, status: int = 202, answer: Any = None) -> tuple[Any, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(status, json=answer if answer is not None else {"status": "applied"})

    result = CliRunner().invoke(main, list(args), obj={"transport": httpx.MockTransport(handler)})
    return result, seen


def test_task_submit_sends_the_contract_body_and_waits() -> None:
    result, [req] = run(
        "task",
        "submit",
        "summarize",
        "--priority",
        "9",
        "-r",
        "text",
        "-r",
        "code",
        "--data",
        '{"doc": "d1"}',
        "--id",
        "t1",
        "--pool",
        "gpu",
        "--command-id",
        "k1",
        "--url",
        "http://agentbus.test:9000",
    )
    assert result.exit_code == 0, result.output
    assert req.method == "POST" and req.url.path == "/v1/tasks" and req.url.host == "agentbus.test"
    assert req.url.params["wait"] == "true"
    assert json.loads(req.content) == {
        "task_id": "t1",
        "type": "summarize",
        "priority": 9,
        "required_capabilities": ["text", "code"],
        "data": {"doc": "d1"},
        "pool": "gpu",
        "command_id": "k1",
    }
    assert json.loads(result.output) == {"status": "applied"}


def test_agent_commands_build_their_requests() -> None:
    _, [req] = run("agent", "register", "bot", "-c", "a", "--capacity", "3", "--metadata", '{"zone": "eu"}')
    assert json.loads(req.content) == {
        "name": "bot",
        "kind": "generic",
        "capabilities": ["a"],
        "capacity": 3,
        "metadata": {"zone": "eu"},
        "pool": "default",
    }
    _, [req] = run("agent", "remove", "a1", "--reason", "gone")
    assert req.method == "DELETE" and req.url.path == "/v1/agents/a1"
    assert dict(req.url.params) == {"wait": "true", "pool": "default", "reason": "gone"}
    _, [req] = run("agent", "list", "--status", "active", "--pool", "p")
    assert req.method == "GET" and dict(req.url.params) == {"pool": "p", "status": "active"}


def test_url_comes_from_the_environment() -> None:
    seen: list[httpx.Request] = []
    transport = httpx.MockTransport(lambda r: seen.append(r) or httpx.Response(200, json={"items": []}))
    result = CliRunner().invoke(
        main, ["task", "list"], obj={"transport": transport}, env={"AGENTBUS_URL": "http://from-env:1234"}
    )
    assert result.exit_code == 0 and seen[0].url.host == "from-env" and seen[0].url.port == 1234


def test_http_errors_exit_1_with_the_message() -> None:
    rejected = {"status": "rejected", "code": "AGENT_OVER_CAPACITY", "message": "a1 is full"}
    result, _ = run("task", "start", "t1", status=409, answer=rejected)
    assert result.exit_code == 1
    assert "HTTP 409: AGENT_OVER_CAPACITY: a1 is full" in result.output
    invalid = {"detail": [{"loc": ["body", "priority"], "msg": "too big", "type": "x"}]}
    result, _ = run("send", "SubmitTask", '{"priority": 99}', status=422, answer=invalid)
    assert result.exit_code == 1 and "body.priority: too big" in result.output


def test_bad_json_arguments_are_usage_errors() -> None:
    result, seen = run("task", "submit", "x", "--data", "{nope")
    assert result.exit_code == 2 and "not valid JSON" in result.output and seen == []
    result, seen = run("send", "SetBudget", "[1]")
    assert result.exit_code == 2 and "JSON object" in result.output and seen == []
