"""The process that hosts executors: registers them as agents, heartbeats, reads their assignments
from the events log, calls the outside world and reports each run as commands.

One ``ExecutorHost`` runs inside ``agentbus serve --executors FILE`` (sharing the service's log and
envelope cache, so an assignment reaches it without a read of the log) or alone in
``agentbus executor run --config FILE`` (any log URL: the SQLite file of an embedded server, or
Kafka). Either way it is an ordinary client of the log: it appends commands to the commands topic
and reads the events topic, and the decider checks everything it says like anything an agent says.

Delivery: towards the outside world a run is at least once. Every call carries an
``Idempotency-Key`` fixed by (pool, task, attempt); a crash between the call and its report makes
the restarted host call again with the same key (``HostView`` finds the runs its agents still
hold). The report is recorded once: its command ids are derived from the same triple, so the
decider drops a repeat. A run's report is one append: ``RecordCost`` (when the call reported
usage), then ``CompleteTask``, ``FailTask`` (with ``retryable`` and ``error_code``) or ``DeferTask``
(the target asked to be called later: no attempt spent). ``StartTask`` says a run is under way: a
call still going after ``report_start_after_s`` has it reported then, alone; a call that answered
sooner reports only its outcome (the decider takes it from an assigned task, and its history goes
from ``TaskAssigned`` to its end, as an agent's that never says it started).

Progress: with ``publish`` (inside ``agentbus serve``, the service's hub), each run tells the task's
live subscribers (``task:<id>``, ``workflow:<run>``) "started", then "finished", "failed" or
"deferred", and its executor may hand on more (an ``ai_agent`` streams the model's text deltas).
None of it is appended to the log. A host in a process of its own (``agentbus executor run``) is a
client of the log only, with no hub and no address of the HTTP API, so its runs publish nothing.

This module must never decide anything the decider decides (capacity, retries, budgets): it
reports, and the decider rules.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pydantic import TypeAdapter, ValidationError

from contracts import Command, Envelope, new_id
from contracts import commands as c
from contracts.executors import ExecutorConfig
from events import EventLog
from events.cache import EnvelopeCache, tail
from services.executors.base import Call, Executor, Outcome, Progress
from services.executors.factory import build_executor
from services.executors.secrets import guarded
from services.executors.view import Drop, Host, HostView, OpenTask, Refused, Register, Run
from services.runtime.ingest import command_envelope
from services.runtime.metrics import executor_run
from services.runtime.topics import Topics

log = logging.getLogger("agentbus.executors")

SOURCE = "urn:agentbus:executor"
COMMIT_INTERVAL_S = 1.0  # how often the resume offsets are stored
REFUSED_RETRY_S = 10.0  # a refused registration is tried again after this long
CATCH_UP_BATCH = 5000
REPORT_START_AFTER_S = 0.02  # see ExecutorHost.report_start_after_s
MAX_DEFER_S = 86_400.0  # a target's Retry-After is honoured up to a day
# A deferral waits at least MIN_DEFER_S, doubled with each attempt the task has had, up to
# MAX_MIN_DEFER_S: a target answering "Retry-After: 0" to every call is called at a falling rate
# (about once a minute after seven deferrals), not in a loop as fast as the log takes the reports.
MIN_DEFER_S = 1.0
MAX_MIN_DEFER_S = 60.0
_CONFIG = TypeAdapter(ExecutorConfig)


def _digest(*parts: object) -> str:
    raw = "\x1f".join(str(p) for p in parts).encode()
    return hashlib.blake2b(raw, digest_size=16).hexdigest()


def idempotency_key(pool: str, task_id: str, attempt: int) -> str:
    """The ``Idempotency-Key`` of every call of one task attempt (ASCII, whatever the task id)."""
    return f"agentbus-{_digest(pool, task_id, attempt)}"


def run_command_id(agent_id: str, pool: str, task_id: str, attempt: int, what: str) -> str:
    """The id of a command reporting on one run: a repeat after a crash is the same command."""
    return f"exec-{what}-{_digest(agent_id, pool, task_id, attempt)}"


class Publish(Protocol):
    """Hands one task's progress to its live subscribers (``services.runtime.hub.publish_progress``
    of a service); returns at once, stores nothing."""

    def __call__(self, task_id: str, *, pool: str | None = None, message: str | None = None,
                 delta: str | None = None, data: dict[str, Any] | None = None) -> object: ...


@dataclass
class Hosted:
    """One executor this host runs, and the runs in flight on it (``declared_by``: the workflow that
    brought it, None for the deployment's own)."""

    agent_id: str
    config: ExecutorConfig
    executor: Executor
    pool: str
    runs: dict[tuple[str, str], tuple[int, asyncio.Task[None]]] = field(default_factory=dict)
    register_id: str | None = None
    declared_by: str | None = None


class NameTaken(Exception):
    """An executor's agent id is hosted already, in another pool or with another configuration."""


def same_executor(config: ExecutorConfig, other: ExecutorConfig) -> bool:
    """Whether two configurations make the same executor: every field alike, the pool aside (a
    workflow's executors run in the workflow's pool whatever their own says)."""
    return type(config) is type(other) and (config.model_dump(mode="json", exclude={"pool"})
                                            == other.model_dump(mode="json", exclude={"pool"}))


@dataclass
class ExecutorHost:
    """Hosts ``configs`` on ``log``. ``instance`` suffixes every agent id (``name@instance``) so
    several processes can run the same configuration; ``workflow_agents`` also hosts the
    executors running workflows declare (run it in one process only); ``publish``, when given,
    carries each run's progress to live subscribers."""

    log: EventLog
    configs: Sequence[ExecutorConfig] = ()
    topics: Topics = field(default_factory=Topics)
    cache: EnvelopeCache = field(default_factory=EnvelopeCache)
    instance: str | None = None
    workflow_agents: bool = False
    group: str | None = None
    grace_s: float = 10.0
    # A call still going after this has its start reported then, while it goes on; one that
    # answered sooner reports its outcome only (a start reported with the outcome would say nothing
    # the outcome does not, for a command and an event: a quarter of a run's records).
    report_start_after_s: float = REPORT_START_AFTER_S
    build: Callable[[ExecutorConfig], Executor] = build_executor
    publish: Publish | None = None
    # The data directories whose files the executors workflows declare may not reference (nor any
    # AGENTBUS_* variable: ``secrets.guarded``); the deployment's own configs are not guarded.
    guard: Sequence[Path] = ()
    hosted: dict[str, Hosted] = field(default_factory=dict)
    view: HostView = field(default_factory=HostView)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    _stopping: bool = False
    _loops: list[asyncio.Task[None]] = field(default_factory=list)
    _registrations: set[asyncio.Task[None]] = field(default_factory=set)
    _adding: asyncio.Lock = field(default_factory=asyncio.Lock)

    def __post_init__(self) -> None:
        if self.group is None:
            names = sorted(self.agent_id(cfg) for cfg in self.configs)
            self.group = f"executors-{_digest(*names, self.workflow_agents)}"

    def agent_id(self, config: ExecutorConfig) -> str:
        return config.name if self.instance is None else f"{config.name}@{self.instance}"

    # -- lifecycle ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Start the executors, catch up, register, resume held runs, then follow the log until
        cancelled; a cancellation stops it gracefully (``stop``)."""
        try:
            for config in self.configs:
                try:
                    await self._add(config, config.pool)
                except NameTaken as exc:  # one name in two pools of a file: one agent id here
                    log.error("executor %s of pool %s is not hosted: %s", config.name, config.pool, exc)
            partitions = await self.log.partitions(self.topics.events)
            starts = await self._catch_up(partitions)
            for agent in list(self.hosted.values()):
                await self._register(agent)
            for action in self.view.held():
                self._start_run(action)
            self._loops = [asyncio.create_task(self._follow(p, start), name=f"executors:events[{p}]")
                           for p, start in starts.items()]
            self._loops += [asyncio.create_task(self._heartbeats(), name="executors:heartbeats"),
                            asyncio.create_task(self._commits(partitions), name="executors:commits")]
            self.ready.set()
            await asyncio.gather(*self._loops)
        finally:
            await asyncio.shield(self.stop())

    async def stop(self) -> None:
        """Stop following; give runs in flight ``grace_s`` to report; deregister; close."""
        if self._stopping:
            return
        self._stopping = True
        for task in [*self._loops, *self._registrations]:
            task.cancel()
        runs = [t for agent in self.hosted.values() for _, t in agent.runs.values()]
        if runs:
            _, late = await asyncio.wait(runs, timeout=self.grace_s)
            for t in late:
                t.cancel()
            if late:
                await asyncio.wait(late, timeout=2.0)
        leaving = [self._envelope(c.DeregisterAgent(agent_id=a.agent_id, reason="executor host stopped"),
                                  a.pool, new_id(), a.agent_id)
                   for a in self.hosted.values() if a.agent_id in self.view.registered]
        with contextlib.suppress(Exception):
            if leaving:
                await self._append(leaving)
            await self._commit_all()
        for agent in self.hosted.values():
            with contextlib.suppress(Exception):
                await agent.executor.close()

    async def _add(self, config: ExecutorConfig, pool: str, *,
                   declared_by: str | None = None) -> Hosted | None:
        """Start and host ``config``'s executor (``declared_by``: the workflow that declares it, so
        guarded); None when the very same executor is hosted already, and shared.

        An agent id is one executor: its tasks run on whichever configuration holds the id. So a
        configuration unlike the one hosted under its id (another endpoint, other credentials,
        another pool) raises ``NameTaken``: taking the hosted one in its place would send a run's
        calls, parameters and all, to a target its workflow never named. One start at a time (the
        partitions are followed concurrently), so two declarations of a name cannot both pass."""
        async with self._adding:
            agent_id = self.agent_id(config)
            hosted = self.hosted.get(agent_id)
            if hosted is not None:
                if hosted.pool == pool and same_executor(hosted.config, config):
                    return None
                owner = ("the deployment's executors file" if hosted.declared_by is None
                         else f"workflow {hosted.declared_by!r}")
                where = f"in pool {hosted.pool!r}" if hosted.pool != pool else "with another configuration"
                raise NameTaken(f"an executor named {config.name!r} is already hosted {where}, from {owner}; "
                                "give it another name, or declare the same configuration to share it")
            executor = self.build(config)
            with guarded(self.guard) if declared_by is not None else contextlib.nullcontext():
                await executor.start()  # resolves its secrets: a missing one fails here, named
            agent = self.hosted[agent_id] = Hosted(agent_id, config, executor, pool, declared_by=declared_by)
            self.view.agents[agent_id] = pool
            log.info("hosting %s executor %s in pool %s", config.type, agent_id, pool)
            return agent

    # -- reading the log ---------------------------------------------------------------------

    async def _catch_up(self, partitions: int) -> dict[int, int]:
        """Read each partition from the stored resume offset to its end without acting; the
        executors workflows still running declared are started. Returns where to follow from."""
        assert self.group is not None
        starts = {}
        for p in range(partitions):
            offset = await self.log.committed(self.group, self.topics.events, p)
            end = await self.log.end_offset(self.topics.events, p)
            while offset < end:
                batch = await self.log.read(self.topics.events, p, offset, min(CATCH_UP_BATCH, end - offset))
                if not batch:
                    break
                for rec in batch:
                    self.view.observe(p, rec.offset, self.cache.decode(rec))
                offset = batch[-1].offset + 1
            self.view.positions.setdefault(p, offset)
            starts[p] = offset
        if self.workflow_agents:
            for _, _, host in list(self.view.workflows.values()):
                await self._host_workflow(host, register=False)
        return starts

    async def _follow(self, partition: int, start: int) -> None:
        batches = tail(self.log, self.cache, self.topics.events, partition, start)
        async with contextlib.aclosing(batches):
            async for batch in batches:
                for offset, env in batch:
                    for action in self.view.observe(partition, offset, env):
                        await self._act(action)

    async def _act(self, action: Run | Drop | Register | Refused | Host) -> None:
        match action:
            case Run():
                self._start_run(action)
            case Drop(agent_id=agent_id, pool=pool, task_id=task_id, attempt=attempt):
                agent = self.hosted.get(agent_id)
                running = agent.runs.get((pool, task_id)) if agent is not None else None
                if running is not None and running[0] == attempt and not running[1].done():
                    running[1].cancel()
            case Register(agent_id=agent_id):
                if agent_id in self.hosted and not self._stopping:
                    log.warning("agent %s left its pool; registering it again", agent_id)
                    await self._register(self.hosted[agent_id])
            case Refused(agent_id=agent_id, code=code, message=message):
                log.error("registering %s was refused (%s): %s; trying again in %.0f s",
                          agent_id, code, message, REFUSED_RETRY_S)
                self._later(self._register_after(agent_id, REFUSED_RETRY_S))
            case Host():
                if self.workflow_agents:
                    await self._host_workflow(action, register=True)

    async def _host_workflow(self, host: Host, *, register: bool) -> None:
        for raw in host.configs:
            try:
                config = _CONFIG.validate_python(raw)
            except ValidationError as exc:
                log.error("workflow %s declares an executor that cannot run: %s", host.workflow_id, exc)
                await self._cancel_run(host, str(raw.get("name")), f"it cannot run: {exc}")
                continue
            try:
                agent = await self._add(config, host.pool, declared_by=host.workflow_id)
            except NameTaken as exc:
                log.error("workflow %s: executor %s refused: %s", host.workflow_id, config.name, exc)
                await self._cancel_run(host, config.name, str(exc))
                continue
            except Exception as exc:
                log.error("workflow %s: executor %s did not start: %s", host.workflow_id, config.name, exc)
                await self._cancel_run(host, config.name, f"it did not start: {exc}")
                continue
            if agent is not None and register:
                await self._register(agent)

    async def _cancel_run(self, host: Host, name: str, why: str) -> None:
        """Cancel a run whose own executor cannot be hosted, saying why: its steps for that executor
        would otherwise wait, queued, for an agent that never comes. The command id is fixed by the
        run and the executor, so hosting it again (a restart) cancels once."""
        self.view.refuse(host.pool, host.workflow_id)
        reason = f"executor {name!r} declared by the workflow: {why}"[:1000]
        reason = reason.replace("\x00", "?").encode("utf-8", "replace").decode()  # storable text
        try:
            cmd = c.CancelWorkflow(workflow_id=host.workflow_id, reason=reason)
            cid = f"exec-cancel-{_digest(host.pool, host.workflow_id, name)}"
            await self._append([command_envelope(cmd, pool=host.pool, command_id=cid, source=SOURCE,
                                                 actor="executor-host")])
        except Exception:  # the host goes on hosting everything else whatever this one's name was
            log.exception("workflow %s: cancelling the run failed", host.workflow_id)

    # -- registration and heartbeats ------------------------------------------------------------

    async def _register(self, agent: Hosted) -> None:
        cfg = agent.config
        metadata: dict[str, Any] = {**cfg.metadata, "executor": cfg.type, "host": _host_name()}
        model = getattr(cfg, "model", None)
        if model is not None:
            from services.executors.ai_agent import DEFAULT_MAX_TOKENS

            # What the coordinator reserves in the model's tokens-per-minute bucket for a task that
            # names no max_tokens: the most this executor asks the model for.
            metadata["model"] = model
            max_tokens = getattr(getattr(cfg, "defaults", None), "max_tokens", None)
            metadata["max_tokens"] = max_tokens if isinstance(max_tokens, int) else DEFAULT_MAX_TOKENS
        extra: dict[str, Any] = {}
        if cfg.retry_config is not None:
            extra["retry"] = cfg.retry_config.policy()
        if cfg.circuit_breaker is not None:
            extra["breaker_threshold"] = cfg.circuit_breaker.failure_threshold
            extra["breaker_cooldown_s"] = cfg.circuit_breaker.recovery_timeout
        cmd = c.RegisterAgent(agent_id=agent.agent_id, name=cfg.name, kind=cfg.kind or cfg.type,
                              capabilities=cfg.capabilities, capacity=cfg.capacity,
                              heartbeat_timeout_s=3 * cfg.heartbeat_interval, metadata=metadata, **extra)
        agent.register_id = cid = new_id()
        self.view.pending[cid] = agent.agent_id
        await self._append([self._envelope(cmd, agent.pool, cid, agent.agent_id)])

    async def _register_after(self, agent_id: str, delay: float) -> None:
        await asyncio.sleep(delay)
        if agent_id in self.hosted and agent_id not in self.view.registered and not self._stopping:
            await self._register(self.hosted[agent_id])

    def _later(self, work: Any) -> None:
        task = asyncio.create_task(work)
        self._registrations.add(task)
        task.add_done_callback(self._registrations.discard)

    async def _heartbeats(self) -> None:
        interval = min((a.config.heartbeat_interval for a in self.hosted.values()), default=5.0)
        while True:
            await asyncio.sleep(interval)
            beats = []
            for agent in self.hosted.values():
                if agent.agent_id not in self.view.registered:
                    continue
                held = len(agent.runs)
                beats.append(self._envelope(
                    c.AgentHeartbeat(agent_id=agent.agent_id, load=held / agent.config.capacity, queue=held),
                    agent.pool, new_id(), agent.agent_id))
            if beats:
                try:
                    await self._append(beats)
                except Exception as exc:  # the log is away for a moment: the next beat tries again
                    log.warning("heartbeats not sent: %r", exc)

    async def _commits(self, partitions: int) -> None:
        while True:
            await asyncio.sleep(COMMIT_INTERVAL_S)
            await self._commit_all(range(partitions))

    async def _commit_all(self, partitions: Iterable[int] | None = None) -> None:
        assert self.group is not None
        for p in (self.view.positions if partitions is None else partitions):
            await self.log.commit(self.group, self.topics.events, p, self.view.resume_offset(p))

    # -- runs --------------------------------------------------------------------------------

    def _start_run(self, action: Run) -> None:
        agent = self.hosted.get(action.agent_id)
        if agent is None or self._stopping:
            return
        task = action.task
        key = (task.pool, task.task_id)
        running = agent.runs.get(key)
        if running is not None and running[0] == task.attempt and not running[1].done():
            return  # already running this attempt
        job = asyncio.create_task(self._run(agent, task, task.attempt, task.started),
                                  name=f"executors:{agent.agent_id}:{task.task_id}")
        agent.runs[key] = (task.attempt, job)

        def done(t: asyncio.Task[None]) -> None:
            if agent.runs.get(key, (None, None))[1] is t:
                del agent.runs[key]
            if not t.cancelled() and t.exception() is not None:
                log.error("run of %s on %s failed to report: %r", task.task_id, agent.agent_id, t.exception())

        job.add_done_callback(done)

    async def _run(self, agent: Hosted, task: OpenTask, attempt: int, started: bool) -> None:
        pool, task_id, agent_id = task.pool, task.task_id, agent.agent_id

        def envelope(cmd: Command, what: str) -> Envelope:
            return self._envelope(cmd, pool, run_command_id(agent_id, pool, task_id, attempt, what), agent_id,
                                  cause=task.cause)

        progress = self._progress(pool, task_id)
        call = Call(task_id=task_id, attempt=attempt, action=task.action, parameters=task.parameters,
                    idempotency_key=idempotency_key(pool, task_id, attempt), timeout_s=task.timeout_s,
                    task_type=task.type, progress=progress)
        if progress is not None:
            progress(message="started", data={"agent_id": agent_id, "attempt": attempt})
        # The start is reported when the call is still going after ``report_start_after_s``; the
        # report waits for it, so the log keeps the order.
        starting: list[asyncio.Future[None]] = []

        def report_start() -> None:
            starting.append(asyncio.ensure_future(
                self._append([envelope(c.StartTask(task_id=task_id, agent_id=agent_id), "start")])))

        timer = None if started else asyncio.get_running_loop().call_later(self.report_start_after_s,
                                                                           report_start)
        called = time.perf_counter()
        try:
            outcome = await agent.executor.call(call)
        except asyncio.CancelledError:
            for append in starting:
                append.cancel()
            if progress is not None:
                progress(message="stopped", data={"agent_id": agent_id, "attempt": attempt})
            raise
        except Exception as exc:  # a bug of ours, not the target's answer: report it, retryable
            log.exception("executor %s raised on task %s", agent_id, task_id)
            outcome = Outcome.bug(exc)
        finally:
            if timer is not None:
                timer.cancel()
        executor_run(agent.config.type, agent.config.name, outcome, time.perf_counter() - called)
        if progress is not None:
            # Before the report: a subscriber sees the run end, then the event that records it.
            progress(**ended(outcome, agent_id, attempt))
        envs = [envelope(cmd, what) for what, cmd in report(agent_id, pool, task_id, attempt, outcome)]
        for append in starting:
            await append
        await self._append(envs)

    def _progress(self, pool: str, task_id: str) -> Progress | None:
        """The progress sink of one run, or None when this host publishes nowhere."""
        publish = self.publish
        if publish is None:
            return None

        def progress(*, message: str | None = None, delta: str | None = None,
                     data: dict[str, Any] | None = None) -> None:
            try:
                publish(task_id, pool=pool, message=message, delta=delta, data=data)
            except Exception:  # live progress is a courtesy: a run never fails for it
                log.warning("progress of %s not published", task_id, exc_info=True)

        return progress

    # -- appending ---------------------------------------------------------------------------

    def _envelope(self, cmd: Command, pool: str, cid: str, agent_id: str,
                  cause: str | None = None) -> Envelope:
        return command_envelope(cmd, pool=pool, command_id=cid, source=SOURCE, actor=f"executor:{agent_id}",
                                causation_id=cause)

    async def _append(self, envs: list[Envelope]) -> None:
        await self.cache.append(self.log, self.topics.commands, envs)


def report(agent_id: str, pool: str, task_id: str, attempt: int,
           outcome: Outcome) -> list[tuple[str, Command]]:
    """The commands that report one run: its cost first (so budgets see it before the task ends),
    then how it ended. Each with a short name its command id is derived from."""
    out: list[tuple[str, Command]] = []
    usage = outcome.usage
    if usage is not None and (usage.input_tokens or usage.output_tokens):
        out.append(("cost", c.RecordCost(cost_id=f"cost-{_digest(agent_id, pool, task_id, attempt)}",
                                         agent_id=agent_id, task_id=task_id, model=usage.model,
                                         input_tokens=usage.input_tokens, output_tokens=usage.output_tokens)))
    if outcome.ok:
        out.append(("complete", c.CompleteTask(task_id=task_id, agent_id=agent_id, result=outcome.result)))
    elif outcome.retry_after_s is not None:
        delay = min(max(outcome.retry_after_s, min_deferral(attempt)), MAX_DEFER_S)
        out.append(("defer", c.DeferTask(task_id=task_id, agent_id=agent_id,
                                         reason="RETRY_AFTER", delay_s=delay)))
    else:
        out.append(("fail", c.FailTask(task_id=task_id, agent_id=agent_id,
                                       error=outcome.error or "failed", error_code=outcome.error_code,
                                       retryable=outcome.retryable)))
    return out


def min_deferral(attempt: int) -> float:
    """The shortest a run's deferral waits, whatever the target said: ``MIN_DEFER_S`` at the first
    attempt, doubling with each (every deferral is an attempt of its own), up to ``MAX_MIN_DEFER_S``."""
    return min(MAX_MIN_DEFER_S, MIN_DEFER_S * 2.0 ** min(max(attempt - 1, 0), 16))


def ended(outcome: Outcome, agent_id: str, attempt: int) -> dict[str, Any]:
    """The progress that says how a run ended: "finished", "deferred" or "failed" (with why)."""
    data: dict[str, Any] = {"agent_id": agent_id, "attempt": attempt}
    if outcome.ok:
        return {"message": "finished", "data": data}
    if outcome.retry_after_s is not None:
        return {"message": "deferred", "data": {**data, "retry_after_s": outcome.retry_after_s}}
    return {"message": "failed", "data": {**data, "error_code": outcome.error_code,
                                          "retryable": outcome.retryable}}


def _host_name() -> str:
    return f"{os.uname().nodename}:{os.getpid()}"
