"""A local agent process (``agentbus agent run``): registers, heartbeats, works its tasks.

It is an HTTP client of a running server and nothing more, so scale-out can be watched on one
machine: start more of these when ScalingDecided asks for them. It registers (printing its id),
heartbeats every ``heartbeat_s`` with its load, polls its assigned tasks, and for each one starts
it, works ``work_s`` seconds, records the model call's cost and completes it (or fails it at
``fail_rate``). On SIGTERM/SIGINT it deregisters, which puts its unfinished tasks back in the
queue, and exits 0. Declared dead by the server (missed heartbeats), it registers again.

Every write carries a command id derived from what it is about (agent, task, attempt), so a
retried request is the same command and the server applies it once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from contracts import new_id

log = logging.getLogger("agentbus.agent")

POLL_S = 0.2  # longest pause between looks at the assigned tasks
RETRY_S = 1.0  # pause after a failed request before the loop tries again


@dataclass(frozen=True)
class AgentConfig:
    """What the agent is and how it behaves."""

    url: str
    name: str
    capabilities: tuple[str, ...] = ()
    capacity: int = 1
    kind: str = "generic"
    pool: str = "default"
    agent_id: str | None = None
    heartbeat_s: float = 5.0
    work_s: float = 0.1
    fail_rate: float = 0.0
    model: str = "gpt-4o-mini"
    input_tokens: int = 500
    output_tokens: int = 200
    seed: int | None = None

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
    _rng: random.Random = field(default_factory=random.Random)
    _generation: int = 0

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
            "metadata": {"process": "agentbus agent run"},
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
        resp = await self.client.get("/v1/tasks", params={
            "pool": self.config.pool, "agent_id": self.agent_id, "status": "assigned", "page_size": 500})
        resp.raise_for_status()
        return list(resp.json()["items"])

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
            result = {"by": self.agent_id, "attempt": attempt}
            resp = await self._write("POST", f"/v1/tasks/{task_id}/complete",
                                     {"agent_id": self.agent_id, "result": result},
                                     f"agent:{self.agent_id}:complete:{run}")
            self.completed += resp.status_code == 200

    async def _work_guarded(self, key: str, task: dict[str, Any]) -> None:
        try:
            await self.work(task)
        except httpx.HTTPError as exc:
            log.warning("task %s: %s", key, exc)
        finally:
            self.working.pop(key, None)

    # -- loops --------------------------------------------------------------------------------

    async def heartbeat_loop(self) -> None:
        while True:
            try:
                await self.heartbeat()
            except (httpx.HTTPError, AgentError, ValueError) as exc:
                log.warning("heartbeat failed: %s", exc)
            await asyncio.sleep(self.config.heartbeat_s)

    async def task_loop(self) -> None:
        pause = min(POLL_S, max(self.config.work_s, 0.01))
        while True:
            try:
                for task in await self.assigned():
                    key = f"{task['task_id']}:{task['attempts']}"
                    if key not in self.working:
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
        loops = [asyncio.create_task(self.heartbeat_loop()), asyncio.create_task(self.task_loop())]
        try:
            await stop.wait()
        finally:
            for t in [*loops, *self.working.values()]:
                t.cancel()
            for t in [*loops, *self.working.values()]:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
            # Leaving puts unfinished tasks back in the queue for the other agents.
            await self.deregister()
