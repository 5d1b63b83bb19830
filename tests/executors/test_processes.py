"""Executors whose calls run in worker processes (``processes: N``), against the real local stand-in
servers: the same outcomes as in the host's process, secrets resolved in the worker, a cancel
reaching the worker, progress carried back, a killed worker replaced and its calls made again with
their keys, calls spread over the workers, and a whole task run through a host."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from contracts import event_types as e
from contracts.executors import ExecutorConfig, ExecutorsFile
from contracts.workflows import WorkflowDefinition
from services.executors.base import INTERNAL, Call, Outcome
from services.executors.factory import build_executor
from services.executors.processes import REDO_AFTER_DEATH, WorkerExecutor, WorkerStartError
from services.executors.standins.http_target import create_app
from services.executors.standins.serving import serving
from tests.api.runtimes import embedded
from tests.executors.test_host import counts, ended, hosted, of, send, submit, until


@pytest.fixture(scope="module")
def target() -> Iterator[str]:
    with serving(create_app()) as url:
        yield url


def http(endpoint: str, processes: int, **extra: Any) -> ExecutorConfig:
    return ExecutorsFile.model_validate({"agents": [{
        "name": "api", "type": "http_api", "endpoint": endpoint, "capacity": 8, "processes": processes,
        **extra}]}).agents[0]


async def started(config: ExecutorConfig) -> AsyncIterator[Any]:
    executor = build_executor(config)
    await executor.start()
    try:
        yield executor
    finally:
        await executor.close()


def call(key: str, timeout_s: float | None = None, progress: Any = None, action: str | None = None,
         **parameters: Any) -> Call:
    return Call(task_id="t1", attempt=1, action=action, parameters=parameters, idempotency_key=key,
                timeout_s=timeout_s, progress=progress)


def view(outcome: Outcome) -> tuple[Any, ...]:
    """The outcome without what differs between two runs: the time taken, the echoed key."""
    result = {k: v for k, v in outcome.result.items() if k != "elapsed_ms"}
    body = result.get("body")
    if isinstance(body, dict) and "headers" in body:
        result["body"] = {**body, "headers": {**body["headers"], "idempotency-key": "-"},
                          "header_digests": {**body["header_digests"], "idempotency-key": "-"}}
    return (outcome.ok, result, outcome.error, outcome.error_code, outcome.retryable, outcome.retry_after_s)


CASES = [
    ("json", {"action": "POST", "path": "/echo/x", "query": {"q": "1"}, "body": {"n": [1, 2]}}),
    ("client error", {"path": "/status/404"}),
    ("deferred", {"path": "/status/429", "query": {"retry_after": "7"}}),
    ("server error", {"path": "/status/502"}),
    ("timeout", {"path": "/slow", "query": {"seconds": 2}, "timeout_s": 0.2}),
    ("no request", {"path": "http://elsewhere/x"}),
]


async def test_a_worker_process_answers_as_the_host_process_does(target: str) -> None:
    outcomes: dict[int, list[tuple[Any, ...]]] = {}
    for processes in (0, 1):
        outcomes[processes] = []
        async for executor in started(http(target, processes)):
            assert isinstance(executor, WorkerExecutor) == (processes == 1)
            for name, spec in CASES:
                spec = dict(spec)
                out = await executor.call(call(f"same-{name}-{processes}", spec.pop("timeout_s", None),
                                               action=spec.pop("action", None), **spec))
                outcomes[processes].append(view(out))
    assert outcomes[1] == outcomes[0]
    assert [o[0] for o in outcomes[1]] == [True, False, False, False, False, False]
    applied = (await counts(target))["applied"]
    assert applied["same-json-0"] == applied["same-json-1"] == 1  # the worker sent the run's key


async def test_the_worker_resolves_secrets_and_a_missing_one_fails_start_naming_it(
        target: str, monkeypatch: pytest.MonkeyPatch) -> None:
    auth = {"type": "bearer", "token": "${env:AB_WORKER_TOKEN}"}
    executor = build_executor(http(target, 1, authentication=auth))
    missing = r"api\.authentication\.token: \$\{env:AB_WORKER_TOKEN\} is not set"
    with pytest.raises(WorkerStartError, match=missing):
        await executor.start()
    monkeypatch.setenv("AB_WORKER_TOKEN", "tok-worker-0123456789")
    async for executor in started(http(target, 1, authentication=auth)):
        out = await executor.call(call("secret-1", path="/echo"))
        assert out.ok and "authorization" in out.result["body"]["header_digests"]
        assert "tok-worker-0123456789" not in str(out.result)


def _pids(executor: WorkerExecutor) -> list[int]:
    return [w.proc.pid for w in executor._workers if w is not None]


async def test_a_killed_workers_calls_are_made_again_with_their_keys_in_a_new_worker(target: str) -> None:
    async for executor in started(http(target, 1)):
        assert isinstance(executor, WorkerExecutor)
        [pid] = _pids(executor)
        slow = [asyncio.create_task(executor.call(call(f"kill-{i}", path="/slow", query={"seconds": 1})))
                for i in range(3)]
        await asyncio.sleep(0.5)
        os.kill(pid, signal.SIGKILL)
        outs = await asyncio.wait_for(asyncio.gather(*slow), 20)
        assert all(out.ok for out in outs), outs
        assert _pids(executor) != [pid]
        # Each call reached the target twice (the killed worker's, then the new one's), with one key.
        requests = (await counts(target))["requests"]
        assert [requests.get(f"kill-{i}") for i in range(3)] == [2, 2, 2]


async def test_a_call_whose_worker_keeps_dying_fails_as_retryable(target: str) -> None:
    async for executor in started(http(target, 1)):
        assert isinstance(executor, WorkerExecutor)
        doomed = asyncio.create_task(executor.call(call("doomed", path="/slow", query={"seconds": 30})))
        killed: list[int] = []
        while len(killed) <= REDO_AFTER_DEATH:  # the first worker, then each one it is made again in
            await asyncio.sleep(0.3)
            [pid] = _pids(executor)
            if pid not in killed and (await counts(target))["requests"].get("doomed", 0) > len(killed):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
        out = await asyncio.wait_for(doomed, 20)
        assert not out.ok and out.retryable and out.error_code == INTERNAL
        assert out.error is not None and "worker process exited" in out.error
        assert f"{REDO_AFTER_DEATH + 1} times in a row" in out.error
        after = await executor.call(call("kill-after", path="/echo"))
        assert after.ok and _pids(executor)[0] not in killed


async def test_a_cancelled_call_is_cancelled_in_the_worker(target: str) -> None:
    # One connection in the worker's pool: while the slow request holds it, nothing else is sent.
    async for executor in started(http(target, 1, capacity=1)):
        assert isinstance(executor, WorkerExecutor)
        running = asyncio.create_task(executor.call(call("cancel-1", path="/slow", query={"seconds": 30})))
        await asyncio.sleep(0.5)
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        worker = executor._workers[0]
        assert worker is not None and not worker.calls and worker.alive
        # The worker dropped the request and its connection: the next call is sent at once.
        out = await executor.call(call("cancel-2", timeout_s=3, path="/echo"))
        assert out.ok, out.error


async def test_calls_spread_over_the_workers(target: str) -> None:
    async for executor in started(http(target, 2)):
        assert isinstance(executor, WorkerExecutor) and len(set(_pids(executor))) == 2
        calls = [asyncio.create_task(executor.call(call(f"spread-{i}", path="/slow", query={"seconds": 0.5})))
                 for i in range(6)]
        await asyncio.sleep(0.2)
        held = [len(w.calls) for w in executor._workers if w is not None]
        assert held == [3, 3]
        began = time.perf_counter()
        assert all(o.ok for o in await asyncio.gather(*calls))
        assert time.perf_counter() - began < 2


async def test_progress_comes_back_from_the_worker(openai_url: str) -> None:
    config = ExecutorsFile.model_validate({"agents": [{
        "name": "writer", "type": "ai_agent", "provider": "openai", "base_url": f"{openai_url}/v1",
        "model": "standin-model", "processes": 1}]}).agents[0]
    published: list[dict[str, Any]] = []

    def progress(**message: Any) -> None:
        published.append(message)

    async for executor in started(config):
        out = await executor.call(call("progress-1", progress=progress, prompt="one two three"))
    assert out.ok and out.usage is not None and out.usage.output_tokens > 0
    assert published and "".join(m["delta"] for m in published) == out.result["content"]


async def test_a_task_runs_through_a_worker_process_of_a_host(tmp_path: Path, target: str) -> None:
    config = ExecutorsFile.model_validate({"agents": [{
        "name": "api", "type": "http_api", "endpoint": target, "capabilities": ["http"], "capacity": 4,
        "heartbeat_interval": 1.0, "processes": 1}]})
    async with embedded(tmp_path) as service, hosted(service, config):
        await send(service, submit("wt1", "POST", path="/echo/items", body={"n": 1}))
        envs = await until(service, ended("wt1"))
        [done] = of(envs, e.TaskCompleted, "wt1")
        assert done.result["status"] == 200 and done.result["body"]["body"] == {"n": 1}


def _definition(**agent: Any) -> dict[str, Any]:
    return {"name": "wf", "version": "1", "tasks": [{"name": "a", "agent_name": "api"}],
            "agents": [{"name": "api", "type": "http_api", "endpoint": "http://127.0.0.1:9/", **agent}]}


def test_a_workflow_cannot_start_worker_processes() -> None:
    with pytest.raises(ValidationError, match=r"agents\.0\.processes: worker processes are chosen where"):
        WorkflowDefinition.model_validate(_definition(processes=2))


def test_a_definition_without_processes_keeps_its_stored_form() -> None:
    """A field left at 0 is not in the dump: definitions stored before it keep their digest."""
    dumped = WorkflowDefinition.model_validate(_definition()).model_dump(mode="json")
    assert "processes" not in dumped["agents"][0]
    assert WorkflowDefinition.model_validate(_definition(processes=0)).model_dump(mode="json") == dumped


ORPHAN = """
import asyncio, sys
from contracts.executors import ExecutorsFile
from services.executors.factory import build_executor

async def main():
    config = ExecutorsFile.model_validate({"agents": [{
        "name": "api", "type": "http_api", "endpoint": sys.argv[1], "processes": 1}]}).agents[0]
    executor = build_executor(config)
    await executor.start()
    print(executor._workers[0].proc.pid, flush=True)
    await asyncio.sleep(600)

asyncio.run(main())
"""


async def test_a_worker_exits_when_its_host_is_killed(target: str) -> None:
    host = await asyncio.create_subprocess_exec(sys.executable, "-c", ORPHAN, target,
                                                stdout=asyncio.subprocess.PIPE)
    assert host.stdout is not None
    line = await asyncio.wait_for(host.stdout.readline(), 30)
    worker = int(line)
    os.kill(worker, 0)  # running
    host.kill()
    await host.wait()
    deadline = time.monotonic() + 10
    while _running(worker):
        assert time.monotonic() < deadline, "the worker outlived its host by 10 s"
        await asyncio.sleep(0.1)


def _running(pid: int) -> bool:
    """Whether ``pid`` is a process that has not ended (a zombie has: only its parent's wait is left)."""
    try:
        state = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                     if line.startswith("State:"))
    except (OSError, StopIteration):
        return False
    return "zombie" not in state.lower()
