"""Executor calls are timed by executor type, name and outcome: a real executor host on an
embedded service calling a real local HTTP server."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from pathlib import Path

from contracts import commands as c
from contracts.executors import ExecutorsFile
from services.executors.host import ExecutorHost
from services.executors.standins.http_target import create_app
from services.executors.standins.serving import serving
from services.runtime.embedded import Runner
from services.runtime.ingest import command_envelope
from services.runtime.metrics import REGISTRY
from tests.api.runtimes import embedded

WAIT_S = 20.0
CALLS = "agentbus_executor_call_seconds_count"


def calls(name: str, outcome: str, error: str = "") -> float:
    labels = {"executor": "http_api", "name": name, "outcome": outcome, "error": error}
    return REGISTRY.get_sample_value(CALLS, labels) or 0.0


async def test_calls_are_timed_by_executor_name_and_outcome(tmp_path: Path) -> None:
    name = f"api-{uuid.uuid4().hex[:8]}"
    with serving(create_app()) as target:
        config = ExecutorsFile.model_validate({"agents": [{
            "name": name, "type": "http_api", "endpoint": target, "capabilities": ["http"], "capacity": 4,
            "heartbeat_interval": 1.0}]})
        async with embedded(tmp_path) as service:
            assert isinstance(service, Runner)
            host = ExecutorHost(service.log, config.agents, topics=service.topics, cache=service.cache)
            running = asyncio.create_task(host.run())
            try:
                await asyncio.wait_for(host.ready.wait(), WAIT_S)
                for task_id, path in (("ok", "/echo/items"), ("missing", "/status/404")):
                    await service.submit(command_envelope(c.SubmitTask(
                        task_id=task_id, type="call", required_capabilities=("http",),
                        data={"action": "GET", "parameters": {"path": path}})))
                loop = asyncio.get_running_loop()
                deadline = loop.time() + WAIT_S
                while calls(name, "completed") < 1 or calls(name, "failed", "http_status") < 1:
                    assert loop.time() < deadline, "the calls were not counted in time"
                    await asyncio.sleep(0.05)
            finally:
                running.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await running
    assert calls(name, "completed") == 1 and calls(name, "failed", "http_status") == 1
    labels = {"executor": "http_api", "name": name, "outcome": "completed", "error": ""}
    assert (REGISTRY.get_sample_value("agentbus_executor_call_seconds_sum", labels) or 0.0) > 0
