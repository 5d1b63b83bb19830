"""A local agent process (``agentbus agent run``): registers, heartbeats, works its tasks.

It is an HTTP client of a running server and nothing more, so scale-out can be watched on one
machine: start more of these when ScalingDecided asks for them. It registers (printing its id),
heartbeats every ``heartbeat_s`` with its load, polls its assigned (and started, unfinished) tasks,
and for each one starts it, works ``work_s`` seconds, records the model call's cost and completes it
(or fails it at ``fail_rate``). On SIGTERM/SIGINT it deregisters, which puts its unfinished tasks
back in the queue, and exits 0. Declared dead by the server (missed heartbeats), it registers again.

Every write carries a command id derived from what it is about (agent, task, attempt), so a
retried request is the same command and the server applies it once.

``run_command`` is ``agentbus agent run``: its options are ``AgentConfig``'s fields, so the
command and the process it starts are read together here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

import click
import httpx

from contracts import DEFAULT_POOL, new_id
from contracts.commands import RegisterAgent
from services.cli import common
from services.runtime.settings import Settings

log = logging.getLogger("agentbus.agent")

POLL_S = 0.2  # longest pause between looks at the assigned tasks
RETRY_S = 1.0  # pause after a failed request before the loop tries again
FINISHED_KEPT = 10_000  # finished runs remembered; far more than the read model can lag behind


@dataclass(frozen=True)
class AgentConfig:
    """What the agent is and how it behaves."""

    url: str
    name: str
    capabilities: tuple[str, ...] = ()
    capacity: int = 1
    kind: str = "generic"
    pool: str = DEFAULT_POOL
    agent_id: str | None = None
    heartbeat_s: float = 5.0
    work_s: float = 0.1
    fail_rate: float = 0.0
    model: str = "gpt-4o-mini"
    input_tokens: int = 500
    output_tokens: int = 200
    seed: int | None = None
    weight: float | None = None  # None: the server's default
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def heartbeat_timeout_s(self) -> float:
        # Three missed beats before the server presumes it gone: one slow request is no failure.
        return max(3.0 * self.heartbeat_s, 1.0)


class AgentError(Exception):
    """The server refused something the agent cannot work around (e.g. registration)."""


@dataclass
class LocalAgent:
    """The agent's loops over one HTTP client (inject a transport in tests)."""

    config: AgentConfig
    client: httpx.AsyncClient
    agent_id: str = ""
    completed: int = 0
    failed: int = 0
    working: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    # Runs (task:attempt) already worked. The read model may still list a finished run as assigned
    # for a moment; working it again would send a stale outcome, which the decider (it knows no
    # attempt numbers) would apply to the task's next attempt.
    finished: dict[str, None] = field(default_factory=dict)
    _rng: random.Random = field(default_factory=random.Random)
    _generation: int = 0
    # Set when ``run`` stops: the loops end at their next turn even if a cancellation was lost in
    # a request (one made in-process, through the ASGI app, can swallow it).
    _stopping: bool = False

    def __post_init__(self) -> None:
        self.agent_id = self.config.agent_id or self.agent_id or new_id()
        self._rng = random.Random(self.config.seed)

    # -- requests -----------------------------------------------------------------------------

    async def _write(self, method: str, path: str, body: dict[str, Any] | None, command_id: str,
                     params: dict[str, str] | None = None) -> httpx.Response:
        payload = None if body is None else {**body, "pool": self.config.pool}
        return await self.client.request(
            method, path, params={"wait": "true", "pool": self.config.pool, **(params or {})},
            json=payload,
            headers={"Idempotency-Key": command_id, "X-Agentbus-Actor": f"agent:{self.agent_id}"})

    async def register(self) -> None:
        self._generation += 1
        c = self.config
        resp = await self._write("POST", "/v1/agents", {
            "agent_id": self.agent_id, "name": c.name, "kind": c.kind, "capabilities": list(c.capabilities),
            "capacity": c.capacity, "heartbeat_timeout_s": c.heartbeat_timeout_s,
            "metadata": {"process": "agentbus agent run", **c.metadata},
            **({} if c.weight is None else {"weight": c.weight}),
        }, f"agent:{self.agent_id}:register:{self._generation}:{new_id()}")
        if resp.status_code != 201:
            raise AgentError(f"registration refused: HTTP {resp.status_code} {resp.text[:500]}")

    async def heartbeat(self) -> None:
        held = len(self.working)
        resp = await self._write("POST", f"/v1/agents/{self.agent_id}/heartbeat",
                                 {"load": held / self.config.capacity, "queue": held},
                                 f"agent:{self.agent_id}:heartbeat:{new_id()}")
        gone = ("UNKNOWN_AGENT", "AGENT_NOT_ACTIVE")
        if resp.status_code in (404, 409) and resp.json().get("code") in gone:
            log.warning("agent %s was removed by the server (%s); registering again",
                        self.agent_id, resp.json().get("code"))
            await self.register()
            await self.heartbeat()

    async def deregister(self) -> None:
        await self._write("DELETE", f"/v1/agents/{self.agent_id}", None,
                          f"agent:{self.agent_id}:leave:{new_id()}",
                          params={"reason": "agent process stopped"})

    async def assigned(self) -> list[dict[str, Any]]:
        """Its runs to work: assigned, and started but not finished here. A started one comes back
        when a request about it failed (the server restarted mid-way: its answer, or the next step,
        never came), so the next look finishes it; every write carries the same command id again."""
        items: list[dict[str, Any]] = []
        for status in ("assigned", "running"):
            resp = await self.client.get("/v1/tasks", params={
                "pool": self.config.pool, "agent_id": self.agent_id, "status": status, "page_size": 500})
            resp.raise_for_status()
            items += resp.json()["items"]
        return items

    # -- work ---------------------------------------------------------------------------------

    async def work(self, task: dict[str, Any]) -> None:
        """Start, work, record the cost, complete or fail one assignment (an attempt of a task)."""
        task_id, attempt = task["task_id"], task["attempts"]
        run = f"{task_id}:{attempt}"
        started = await self._write("POST", f"/v1/tasks/{task_id}/start", {"agent_id": self.agent_id},
                                    f"agent:{self.agent_id}:start:{run}")
        if started.status_code != 200:
            return  # taken back meanwhile (reassigned, cancelled, timed out): not ours any more
        await asyncio.sleep(self.config.work_s)
        cost = await self._write("POST", "/v1/costs", {
            "cost_id": f"{self.agent_id}:{run}", "agent_id": self.agent_id, "task_id": task_id,
            "model": self.config.model, "input_tokens": self.config.input_tokens,
            "output_tokens": self.config.output_tokens,
        }, f"agent:{self.agent_id}:cost:{run}")
        if cost.status_code != 201:
            log.warning("cost of %s not recorded: HTTP %s %s", run, cost.status_code, cost.text[:300])
        if self._rng.random() < self.config.fail_rate:
            resp = await self._write("POST", f"/v1/tasks/{task_id}/fail",
                                     {"agent_id": self.agent_id, "error": "simulated failure"},
                                     f"agent:{self.agent_id}:fail:{run}")
            self.failed += resp.status_code == 200
        else:
            # A stand-in for real output: a short text (``body``), so that workflow templates such
            # as ``{{ tasks.fetch.result.body }}`` read something, as they would from real work.
            result = {"by": self.agent_id, "attempt": attempt,
                      "body": f"{task.get('type', 'task')} {task_id} done by {self.agent_id}"}
            resp = await self._write("POST", f"/v1/tasks/{task_id}/complete",
                                     {"agent_id": self.agent_id, "result": result},
                                     f"agent:{self.agent_id}:complete:{run}")
            self.completed += resp.status_code == 200

    async def _work_guarded(self, key: str, task: dict[str, Any]) -> None:
        try:
            await self.work(task)
        except httpx.HTTPError as exc:
            log.warning("task %s: %s", key, exc)  # not finished: the next look at it tries again
        else:
            self.finished[key] = None
            while len(self.finished) > FINISHED_KEPT:
                del self.finished[next(iter(self.finished))]
        finally:
            self.working.pop(key, None)

    # -- loops --------------------------------------------------------------------------------

    async def heartbeat_loop(self) -> None:
        while not self._stopping:
            try:
                await self.heartbeat()
            except (httpx.HTTPError, AgentError, ValueError) as exc:
                log.warning("heartbeat failed: %s", exc)
            await asyncio.sleep(self.config.heartbeat_s)

    async def task_loop(self) -> None:
        pause = min(POLL_S, max(self.config.work_s, 0.01))
        while not self._stopping:
            try:
                for task in await self.assigned():
                    key = f"{task['task_id']}:{task['attempts']}"
                    if key not in self.working and key not in self.finished:
                        self.working[key] = asyncio.create_task(self._work_guarded(key, task))
            except httpx.HTTPError as exc:
                log.warning("cannot read assigned tasks: %s", exc)
                await asyncio.sleep(RETRY_S)
            await asyncio.sleep(pause)

    async def run(self, stop: asyncio.Event, on_registered: Callable[[str], object] | None = None) -> None:
        """Register, then heartbeat and work until ``stop`` is set; then deregister."""
        await self.register()
        if on_registered is not None:
            on_registered(self.agent_id)
        self._stopping = False
        loops = [asyncio.create_task(self.heartbeat_loop()), asyncio.create_task(self.task_loop())]
        try:
            await stop.wait()
        finally:
            self._stopping = True
            for t in [*loops, *self.working.values()]:
                t.cancel()
            for t in [*loops, *self.working.values()]:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
            # Leaving puts unfinished tasks back in the queue for the other agents.
            await self.deregister()


# --- agentbus agent run -------------------------------------------------------------------------


# The options' defaults are AgentConfig's own.
_DEFAULT = {f.name: f.default for f in fields(AgentConfig)}


@click.command("run")
@click.option("--name", required=True, help="The agent's name.")
@click.option("--capability", "-c", "capabilities", multiple=True, help="A capability (repeatable).")
@click.option("--capacity", type=click.IntRange(min=1), default=_DEFAULT["capacity"], show_default=True,
              help="Tasks it works at once.")
@click.option("--kind", default=_DEFAULT["kind"], show_default=True,
              help="Agent kind (what scaling policies name).")
@click.option("--id", "agent_id", help="Agent id (default: generated).")
@click.option("--heartbeat-s", type=click.FloatRange(min=0.05), default=_DEFAULT["heartbeat_s"],
              show_default=True, help="Seconds between heartbeats (the server presumes it gone after three "
                                      "missed).")
@click.option("--work-s", type=click.FloatRange(min=0), default=_DEFAULT["work_s"], show_default=True,
              help="Seconds each task takes.")
@click.option("--fail-rate", type=click.FloatRange(0, 1), default=_DEFAULT["fail_rate"], show_default=True,
              help="Share of tasks it fails.")
@click.option("--model", default=_DEFAULT["model"], show_default=True,
              help="Model whose cost each task records.")
@click.option("--input-tokens", type=click.IntRange(min=0), default=_DEFAULT["input_tokens"],
              show_default=True)
@click.option("--output-tokens", type=click.IntRange(min=0), default=_DEFAULT["output_tokens"],
              show_default=True)
@click.option("--seed", type=int, help="Seed of the simulated failures (default: random).")
@click.option("--weight", type=common.field_type(RegisterAgent, "weight"),
              help="Share of work under the weighted strategy (server default: 1).")
@click.option("--metadata", help="JSON object of extra facts about the agent.")
@common.settings_options("url", "pool")
def run_command(name: str, capabilities: tuple[str, ...], capacity: int, kind: str, agent_id: str | None,
                heartbeat_s: float, work_s: float, fail_rate: float, model: str, input_tokens: int,
                output_tokens: int, seed: int | None, weight: float | None, metadata: str | None,
                settings: Settings) -> None:
    """Run a local agent process: register (its id is printed), heartbeat, work assigned tasks.

    Stops on SIGTERM/SIGINT: deregisters (its unfinished tasks go back to the queue), exits 0.
    """
    import signal

    url = settings.url
    facts = common.json_object(metadata, "--metadata") or {}
    common.logging_to_stderr("httpx")
    config = AgentConfig(url=url, name=name, capabilities=capabilities, capacity=capacity, kind=kind,
                         pool=settings.pool, agent_id=agent_id, heartbeat_s=heartbeat_s, work_s=work_s,
                         fail_rate=fail_rate, model=model, input_tokens=input_tokens,
                         output_tokens=output_tokens, seed=seed, weight=weight, metadata=facts)

    def registered(agent: str) -> None:
        click.echo(agent)  # first line of stdout: the id, for scripts
        sys.stdout.flush()
        click.echo(f"agent {agent} ({name}, kind {kind}, capacity {capacity}) working for {url}", err=True)

    async def go() -> LocalAgent:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        async with httpx.AsyncClient(base_url=url, timeout=common.HTTP_TIMEOUT_S,
                                     transport=common.async_transport(),
                                     headers=common.bearer(settings)) as client:
            worker = LocalAgent(config, client)
            await worker.run(stop, on_registered=registered)
            return worker

    try:
        worker = common.run(go())
    except httpx.HTTPError as exc:
        common.fail(f"cannot reach agentbus at {url}: {exc}")
    except AgentError as exc:
        common.fail(str(exc))
    click.echo(f"agent {worker.agent_id} deregistered after {worker.completed} completed and "
               f"{worker.failed} failed task(s)", err=True)
