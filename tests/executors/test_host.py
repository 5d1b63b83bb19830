"""An executor host on a real embedded service: a task given to an http_api executor is called
against a real local HTTP server and reported; failures say whether to retry; a Retry-After defers
without spending an attempt (a restart resuming held runs: tests/e2e/test_executor_crash.py)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from contracts import Command, Envelope
from contracts import commands as c
from contracts import event_types as e
from contracts.executors import ExecutorsFile
from events.codec import decode, from_record
from projections.queries import get_task
from services.executors.host import ExecutorHost, idempotency_key
from services.executors.standins.http_target import create_app
from services.executors.standins.serving import serving
from services.runtime.ingest import command_envelope
from services.runtime.service import Service
from tests.api.conftest import settle
from tests.api.runtimes import embedded

WAIT_S = 20.0


@pytest.fixture(scope="module")
def target() -> Iterator[str]:
    with serving(create_app()) as url:
        yield url


def executors(target: str, **extra: Any) -> ExecutorsFile:
    return ExecutorsFile.model_validate({"agents": [{
        "name": "api", "type": "http_api", "endpoint": target, "capabilities": ["http"], "capacity": 4,
        "heartbeat_interval": 1.0, **extra}]})


@contextlib.asynccontextmanager
async def hosted(service: Service, config: ExecutorsFile, log: Any = None,
                 **kw: Any) -> AsyncIterator[ExecutorHost]:
    """A host of ``config`` on the service's log (or ``log``, a spy around it), running and ready."""
    cache = service.cache
    host = ExecutorHost(log or service.log, config.agents, topics=service.topics, cache=cache, **kw)
    task = asyncio.create_task(host.run())
    await asyncio.wait_for(host.ready.wait(), WAIT_S)
    try:
        yield host
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def send(service: Service, cmd: Command) -> None:
    await service.submit(command_envelope(cmd))


async def events(service: Service) -> list[Envelope]:
    recs = await service.log.read(service.topics.events, 0, 0, 100_000)
    return [from_record(r) for r in recs]


async def commands(service: Service) -> list[Envelope]:
    recs = await service.log.read(service.topics.commands, 0, 0, 100_000)
    return [from_record(r) for r in recs]


async def until(service: Service, check: Any) -> list[Envelope]:
    deadline = asyncio.get_running_loop().time() + WAIT_S
    while True:
        envs = await events(service)
        if check(envs):
            return envs
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("not within the time: " + ", ".join(x.type for x in envs[-30:]))
        await asyncio.sleep(0.05)


def of(envs: list[Envelope], kind: type, task_id: str) -> list[Any]:
    return [x.data for x in envs if isinstance(x.data, kind) and getattr(x.data, "task_id", None) == task_id]


def ended(task_id: str) -> Any:
    return lambda envs: bool(of(envs, e.TaskCompleted, task_id) or of(envs, e.TaskFailed, task_id))


def submit(task_id: str, action: str | None, **parameters: Any) -> c.SubmitTask:
    return c.SubmitTask(task_id=task_id, type="call", required_capabilities=("http",),
                        data={"action": action, "parameters": parameters})


async def counts(target: str) -> dict[str, dict[str, int]]:
    async with httpx.AsyncClient(base_url=target) as client:
        return (await client.get("/_counts")).json()  # type: ignore[no-any-return]


async def test_a_task_runs_on_the_executor_and_its_result_is_recorded(tmp_path: Path, target: str) -> None:
    async with embedded(tmp_path) as service, hosted(service, executors(target)):
        envs = await until(service, lambda envs: any(isinstance(x.data, e.AgentRegistered) for x in envs))
        [reg] = [x.data for x in envs if isinstance(x.data, e.AgentRegistered)]
        assert (reg.agent_id, reg.capabilities, reg.capacity) == ("api", ("http",), 4)
        assert reg.metadata["executor"] == "http_api"
        await send(service, submit("t1", "POST", path="/echo/items", query={"q": "1"}, body={"n": 1}))
        envs = await until(service, ended("t1"))
        [done] = of(envs, e.TaskCompleted, "t1")
        assert done.agent_id == "api" and done.result["status"] == 200
        echoed = done.result["body"]
        assert echoed["method"] == "POST" and echoed["query"] == {"q": "1"} and echoed["body"] == {"n": 1}
        key = idempotency_key("default", "t1", 1)
        assert (await counts(target))["applied"][key] == 1
        # The run's report answers the assignment: its causation is the TaskAssigned event.
        [assigned] = [x for x in envs if isinstance(x.data, e.TaskAssigned) and x.data.task_id == "t1"]
        [completed] = [x for x in envs if isinstance(x.data, e.TaskCompleted)]
        [complete_cmd] = [x for x in await commands(service) if x.id == completed.commandid]
        assert complete_cmd.causationid == assigned.id


async def test_a_client_error_fails_the_task_at_once_whatever_its_retry_policy(
        tmp_path: Path, target: str) -> None:
    config = executors(target, retry_config={"max_attempts": 5, "initial_delay": 0.01})
    async with embedded(tmp_path) as service, hosted(service, config):
        await send(service, submit("t404", "GET", path="/status/404"))
        envs = await until(service, ended("t404"))
        [failed] = of(envs, e.TaskFailed, "t404")
        assert failed.retryable is False and failed.error_code == "http_status:404"
        assert not of(envs, e.TaskRetryScheduled, "t404")


async def test_a_server_error_is_retried_by_the_executors_own_retry_policy(tmp_path: Path,
                                                                            target: str) -> None:
    config = executors(target, retry_config={"max_attempts": 2, "initial_delay": 0.01, "jitter": False})
    async with embedded(tmp_path) as service, hosted(service, config):
        await send(service, submit("t500", "GET", path="/status/500"))
        envs = await until(service, ended("t500"))
        [retry] = of(envs, e.TaskRetryScheduled, "t500")
        assert retry.error_code == "http_status:500"
        [failed] = of(envs, e.TaskFailed, "t500")
        assert failed.retryable is True
        assert len(of(envs, e.TaskAssigned, "t500")) == 2


async def test_retry_after_defers_the_task_without_spending_an_attempt(tmp_path: Path, target: str) -> None:
    async with embedded(tmp_path) as service, hosted(service, executors(target)):
        await send(service, c.SubmitTask(task_id="t429", type="call", required_capabilities=("http",),
                                         retry=None,
                                         data={"action": "GET",
                                               "parameters": {"path": "/status/429",
                                                              "query": {"retry_after": "0.2"}}}))
        envs = await until(service, lambda envs: len(of(envs, e.TaskAssigned, "t429")) >= 2)
        deferred = of(envs, e.TaskDeferred, "t429")
        assert deferred and deferred[0].agent_id == "api" and 0.1 <= deferred[0].delay_s <= 1.0
        assert not of(envs, e.TaskFailed, "t429") and not of(envs, e.TaskRetryScheduled, "t429")
        await send(service, c.CancelTask(task_id="t429"))


class _Appends:
    """The service's log, noting the command types of each append (everything else passes through)."""

    def __init__(self, log: Any) -> None:
        self._log = log
        self.appends: list[list[tuple[str, str]]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._log, name)

    async def append(self, topic: str, records: Any, **kw: Any) -> Any:
        envs = [decode(r.value) for r in records]
        self.appends.append([(x.type.rsplit(".", 1)[-1], getattr(x.data, "task_id", "")) for x in envs])
        return await self._log.append(topic, records, **kw)


async def test_a_call_that_answers_at_once_reports_its_outcome_alone(tmp_path: Path, target: str) -> None:
    """One append and one decision per run: no start reported with the outcome (it would say
    nothing the outcome does not); the task goes from assigned to completed."""
    async with embedded(tmp_path) as service:
        spied = _Appends(service.log)
        async with hosted(service, executors(target), log=spied, report_start_after_s=5.0):
            await send(service, submit("quick", "GET", path="/echo/q"))
            envs = await until(service, ended("quick"))
        kinds = [x.type.rsplit(".", 1)[-1] for x in envs if getattr(x.data, "task_id", None) == "quick"]
        assert kinds == ["TaskSubmitted", "TaskAssigned", "TaskCompleted"], kinds
        runs = [a for a in spied.appends if any(task == "quick" for _, task in a)]
        assert runs == [[("CompleteTask", "quick")]], spied.appends
        await settle(service)
        task = await get_task(service.store, "default", "quick")
        assert task is not None and task["status"] == "completed" and task["started_at"] is None, task
        assert task["assigned_at"] is not None and task["finished_at"] is not None, task


async def test_a_call_that_takes_longer_has_its_start_reported_while_it_runs(
        tmp_path: Path, target: str) -> None:
    async with embedded(tmp_path) as service:
        spied = _Appends(service.log)
        async with hosted(service, executors(target), log=spied, report_start_after_s=0.05):
            await send(service, submit("slow", "GET", path="/slow", query={"seconds": "3"}))
            envs = await until(service, lambda envs: bool(of(envs, e.TaskStarted, "slow")))
            assert not ended("slow")(envs), "the start was not reported while the call ran"
            assert [("StartTask", "slow")] in spied.appends
            envs = await until(service, ended("slow"))
        assert of(envs, e.TaskCompleted, "slow")
        assert [a for a in spied.appends if ("CompleteTask", "slow") in a] == [[("CompleteTask", "slow")]]
