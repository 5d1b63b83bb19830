"""A workflow's own executors (``agents:``) and the names already hosted: the very same executor,
declared again, is shared; another configuration under a hosted name (another endpoint, another
pool) cancels its run, saying why, and no call of that run reaches either target. Two real local
HTTP targets, each counting what it was sent."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from contracts import commands as c
from contracts import event_types as e
from contracts.envelope import Envelope
from contracts.executors import ExecutorsFile
from contracts.workflows import WorkflowDefinition
from services.executors.standins.http_target import create_app
from services.executors.standins.serving import serving
from services.runtime.ingest import command_envelope
from services.runtime.service import Service
from tests.api.runtimes import embedded
from tests.executors.test_host import counts, hosted, until


@pytest.fixture(scope="module")
def first() -> Iterator[str]:
    with serving(create_app()) as url:
        yield url


@pytest.fixture(scope="module")
def second() -> Iterator[str]:
    with serving(create_app()) as url:
        yield url


def webfetch(endpoint: str, **extra: Any) -> dict[str, Any]:
    return {"name": "webfetch", "type": "http_api", "endpoint": endpoint, "capabilities": ["webfetch"],
            **extra}


def fetching(agent: dict[str, Any], capability: str = "webfetch") -> WorkflowDefinition:
    return WorkflowDefinition.model_validate({
        "name": "fetch", "agents": [agent],
        "tasks": [{"name": "get", "required_capabilities": [capability], "action": "GET",
                   "parameters": {"path": "/echo/data.json"}}]})


async def run(service: Service, workflow_id: str, definition: WorkflowDefinition,
              pool: str = "default") -> tuple[e.WorkflowEnded, list[Envelope]]:
    """Start a run and wait for it to end: how it ended, and the events of its pool by then."""
    await service.submit(command_envelope(c.StartWorkflow(workflow_id=workflow_id, definition=definition),
                                          pool=pool))

    def ended(envs: list[Envelope]) -> list[e.WorkflowEnded]:
        return [x.data for x in envs
                if isinstance(x.data, e.WorkflowEnded) and x.data.workflow_id == workflow_id]

    envs = await until(service, lambda envs: ended(envs))
    return ended(envs)[0], envs


def of_run(envs: list[Envelope], kind: type, workflow_id: str) -> list[Any]:
    return [x.data for x in envs
            if isinstance(x.data, kind) and getattr(x.data, "task_id", "").startswith(f"{workflow_id}.")]


def assigned(envs: list[Envelope], workflow_id: str) -> list[e.TaskAssigned]:
    return of_run(envs, e.TaskAssigned, workflow_id)


async def sent(*targets: str) -> tuple[int, ...]:
    """How many requests each target has had; after a moment, so a call under way has arrived."""
    await asyncio.sleep(0.3)
    return tuple([(await counts(t))["total"] for t in targets])


def never_ran(envs: list[Envelope], workflow_id: str) -> bool:
    """No step of the run started or ended on an agent. (The coordinator may give a step to an agent
    offering its capability before the cancel lands: the host must not run it.)"""
    return not any(of_run(envs, kind, workflow_id) for kind in (e.TaskStarted, e.TaskCompleted, e.TaskFailed))


def body_of(envs: list[Envelope], task_id: str) -> Any:
    [done] = [x.data for x in envs if isinstance(x.data, e.TaskCompleted) and x.data.task_id == task_id]
    return done.result["body"]


async def test_a_name_another_workflow_hosts_with_another_endpoint_cancels_the_run(
        tmp_path: Path, first: str, second: str) -> None:
    async with embedded(tmp_path) as service, hosted(service, _none(), workflow_agents=True):
        done, envs = await run(service, "wa", fetching(webfetch(first)))
        assert done.status == "completed"
        assert body_of(envs, "wa.get")["path"] == "/echo/data.json"
        before = await sent(first, second)

        # The same name, another endpoint: refused, not run on the first one's target.
        refused, envs = await run(service, "wb", fetching(webfetch(second)))
        assert refused.status == "cancelled" and refused.reason is not None
        assert "'webfetch'" in refused.reason and "workflow 'wa'" in refused.reason
        assert "already hosted with another configuration" in refused.reason
        assert never_ran(envs, "wb")
        assert await sent(first, second) == before
        # A capability nobody else has: cancelled as well, not queued for an agent that never comes.
        alone, envs = await run(service, "wc", fetching(webfetch(second, capabilities=["webfetch-2"]),
                                                        "webfetch-2"))
        assert alone.status == "cancelled" and not assigned(envs, "wc")
        assert await sent(first, second) == before

        # The very same executor declared again is the one hosted, shared.
        again, envs = await run(service, "wd", fetching(webfetch(first)))
        assert again.status == "completed"
        assert [a.agent_id for a in assigned(envs, "wd")] == ["webfetch"]
        assert await sent(first, second) == (before[0] + 1, before[1])


async def test_a_workflow_never_takes_a_deployment_executors_name_with_another_configuration(
        tmp_path: Path, first: str, second: str) -> None:
    own = webfetch(first, capacity=2)
    deployment = ExecutorsFile.model_validate({"agents": [own]})
    async with embedded(tmp_path) as service, hosted(service, deployment, workflow_agents=True):
        before = await sent(first, second)
        for workflow_id, agent in (("wa", webfetch(second, capacity=2)),
                                   ("wb", {**own, "headers": {"X-Extra": "1"}})):
            refused, envs = await run(service, workflow_id, fetching(agent))
            assert refused.status == "cancelled" and refused.reason is not None
            assert "'webfetch'" in refused.reason and "from the deployment's executors file" in refused.reason
            assert never_ran(envs, workflow_id)
            assert await sent(first, second) == before
        # Another pool: its steps could never reach an agent registered in the deployment's pool.
        elsewhere, envs = await run(service, "wc", fetching(own), pool="other")
        assert elsewhere.status == "cancelled" and elsewhere.reason is not None
        assert "already hosted in pool 'default'" in elsewhere.reason
        assert await sent(first, second) == before

        shared, envs = await run(service, "wd", fetching(own))
        assert shared.status == "completed"
        assert body_of(envs, "wd.get")["path"] == "/echo/data.json"
        assert await sent(first, second) == (before[0] + 1, before[1])


def _none() -> Any:
    return ExecutorsFile.model_construct(agents=())
