"""Shared by the CLI tests: a clean environment, the command runner, and a history on disk."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from contracts import commands as c
from projections import queries
from services.cli import main
from services.runtime.embedded import Runner
from services.runtime.ingest import command_envelope
from services.runtime.settings import ENV_PREFIX, Settings


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings and the CLI read AGENTBUS_*; a developer's shell must not leak into the tests.

    The test harness's own variables (``AGENTBUS_TEST_*``: which broker and database to use) stay.
    """
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX) and not name.startswith(f"{ENV_PREFIX}TEST_"):
            monkeypatch.delenv(name)


def invoke(*args: str) -> Any:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result


async def produce(data_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """Run a real Runner over a small history in two pools; returns the live read-model tables."""
    runner = Runner(Settings(data_dir=data_dir))
    await runner.start()
    try:
        await runner.ready()
        envs = [
            command_envelope(c.RegisterAgent(agent_id="a1", name="one", capabilities=("text",), capacity=2)),
            command_envelope(c.RegisterAgent(agent_id="g1", name="gpu", capabilities=("img",)), pool="gpu"),
            command_envelope(
                c.SetResourceLimits(max_cpu_cores=4, max_memory_mb=100, max_disk_mb=100, max_network_mbps=10)
            ),
            command_envelope(c.AllocateResources(allocation_id="al1", agent_id="a1", cpu_cores=2)),
            command_envelope(
                c.AllocateResources(allocation_id="al2", agent_id="a1", cpu_cores=3)
            ),  # rejected
            *[
                command_envelope(c.SubmitTask(task_id=f"t{i}", type="x", required_capabilities=("text",)))
                for i in range(4)
            ],
            command_envelope(
                c.SubmitTask(task_id="g", type="render", required_capabilities=("img",)), pool="gpu"
            ),
            command_envelope(c.RecordCost(cost_id="c1", agent_id="a1", model="gpt-4o", input_tokens=100)),
        ]
        for env in envs:
            await runner.submit(env)
        await settle(runner)
        await runner.submit(command_envelope(c.CompleteTask(task_id="t0", result={"ok": True})))
        # Completing t0 frees a slot on a1, so the coordinator assigns t2 as well.
        await settle(runner)
        return await queries.dump_tables(runner.store)
    finally:
        await runner.stop()


async def settle(runner: Runner) -> None:
    """Wait until deciders, coordinator and projector have nothing left to do."""
    stable = 0
    last: tuple[int, int] | None = None
    while stable < 5:
        ends = (await runner.log.end_offset("commands", 0), await runner.log.end_offset("events", 0))
        decided = await runner.log.committed("decider", "commands", 0)
        projected = ends[1] == 0 or await runner.store.wait_for_position("events", 0, ends[1] - 1, timeout=5)
        stable = stable + 1 if ends == last and decided == ends[0] and projected else 0
        last = ends
        await asyncio.sleep(0.05)


@pytest.fixture
def history(tmp_path: Path) -> tuple[Path, dict[str, list[dict[str, Any]]]]:
    """A data directory holding a log and read models written by a real Runner."""
    data = tmp_path / "data"
    live = asyncio.run(produce(data))
    return data, live
