"""The workflow benchmark (``agentbus bench --workflows N``): diamond runs through a simulated fleet.

Each run is a diamond, ``start -> (left, middle, right) -> join``, whose steps read their
upstream's results through templates. Simulated agents complete every step the moment they see it
assigned. Reported, on the configured backend, in one run:

- saturated: N runs started at once; steps/s until every run has ended and the read models
  caught up, and the step transition latency (a predecessor's ``TaskCompleted`` seen -> the
  successor's ``TaskAssigned`` seen, the later predecessor for ``join``) p50/p99;
- paced: runs started at an offered rate of steps/s (default 200); the transition latency again,
  now without queueing;
- beside them, the same fleet working the same number of plain tasks (no workflow): tasks/s, so
  the ratio says what the workflow machinery costs.

Measures; never asserts.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from contracts import Envelope
from contracts import commands as c
from contracts import event_types as e
from contracts.workflows import WorkflowDefinition
from services.bench.scenario import Target, _caught_up, peak_rss_mb, percentile
from services.runtime.ingest import command_envelope
from services.runtime.settings import Settings

DIAMOND = WorkflowDefinition.model_validate(
    {
        "name": "diamond",
        "max_parallel": 3,
        "inputs": {"n": {"type": "integer", "required": True}},
        "tasks": [
            {"name": "start", "required_capabilities": ["x"], "parameters": {"n": "{{ inputs.n }}"}},
            {
                "name": "left",
                "required_capabilities": ["x"],
                "depends_on": ["start"],
                "parameters": {"v": "{{ tasks.start.result.v }}"},
            },
            {"name": "middle", "required_capabilities": ["x"], "depends_on": ["start"]},
            {"name": "right", "required_capabilities": ["x"], "depends_on": ["start"]},
            {
                "name": "join",
                "required_capabilities": ["x"],
                "depends_on": ["left", "middle", "right"],
                "parameters": {
                    "all": "{{ tasks.left.result.v }}/{{ tasks.middle.status }}/{{ tasks.right.status }}"
                },
            },
        ],
    }
)
STEPS = len(DIAMOND.tasks)
DEPENDS = {s.name: s.depends_on for s in DIAMOND.tasks}
SOURCE = "urn:agentbus:bench"


@dataclass
class _Fleet:
    """Completes every assigned task at once; times step transitions and counts ended runs."""

    target: Target
    completed_at: dict[str, float] = field(default_factory=dict)  # task id -> seen completed
    transitions_ms: list[float] = field(default_factory=list)
    ended: int = 0
    plain: int = 0
    expected_runs: int = 0
    expected_plain: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)

    async def _batches(self, partition: int, start: int) -> AsyncIterator[list[tuple[int, Envelope]]]:
        from services.bench.scenario import Fleet

        async for batch in Fleet(self.target)._batches(partition, start):
            yield batch

    async def run(self, partition: int, start: int) -> None:
        async for batch in self._batches(partition, start):
            now = time.perf_counter()
            out: list[Envelope] = []
            for _, env in batch:
                ev = env.data
                if isinstance(ev, e.TaskAssigned):
                    run, _, step = ev.task_id.rpartition(".")
                    if DEPENDS.get(step):
                        seen = [self.completed_at.get(f"{run}.{d}") for d in DEPENDS[step]]
                        if all(t is not None for t in seen):
                            self.transitions_ms.append((now - max(t for t in seen if t is not None)) * 1000)
                    out.append(
                        command_envelope(
                            c.CompleteTask(
                                task_id=ev.task_id, agent_id=ev.agent_id, result={"v": len(ev.task_id)}
                            ),
                            pool=env.pool,
                            source=SOURCE,
                        )
                    )
                elif isinstance(ev, e.TaskCompleted):
                    if "." in ev.task_id:
                        self.completed_at[ev.task_id] = now
                    else:
                        self.plain += 1
                        if self.plain >= self.expected_plain > 0:
                            self.done.set()
                elif isinstance(ev, e.WorkflowEnded):
                    self.ended += 1
                    for step in DEPENDS:
                        self.completed_at.pop(f"{ev.workflow_id}.{step}", None)
                    if self.ended >= self.expected_runs > 0:
                        self.done.set()
            if out:
                await self.target.submit_many(out)


def _start(i: int, prefix: str, pool: str) -> Envelope:
    return command_envelope(
        c.StartWorkflow(workflow_id=f"{prefix}{i}", definition=DIAMOND, inputs={"n": i}),
        pool=pool,
        source=SOURCE,
    )


async def bench_workflows(
    settings: Settings,
    workflows: int,
    agents: int = 50,
    rate: float = 200.0,
    paced_seconds: float = 5.0,
    workers: int = 0,
) -> dict[str, Any]:
    """Diamond runs saturated and paced, and the same number of plain tasks, on one runtime."""
    target = Target(settings, workers)
    tag = f"{target.app_id}-" if target.kafka else ""
    pool = f"{tag}wfbench"
    await target.start()
    fleet_task: asyncio.Task[None] | None = None
    try:
        part = target.partition_of(pool)
        fleet = _Fleet(target)
        start = await target.log.end_offset(target.topics.events, part)
        fleet_task = asyncio.create_task(fleet.run(part, start))
        await target.submit_many(
            [
                # Liveness is watched from registration: a day, since these agents send no heartbeats.
                command_envelope(
                    c.RegisterAgent(
                        agent_id=f"{tag}w{i}",
                        name=f"w{i}",
                        capabilities=("x",),
                        capacity=8,
                        heartbeat_timeout_s=86_400,
                    ),
                    pool=pool,
                    source=SOURCE,
                )
                for i in range(agents)
            ]
        )

        # Saturated: every run at once.
        fleet.expected_runs = workflows
        t0 = time.perf_counter()
        for i in range(0, workflows, 500):
            await target.submit_many([_start(j, f"{tag}r", pool) for j in range(i, min(workflows, i + 500))])
        await fleet.done.wait()
        ended_s = time.perf_counter() - t0
        await _caught_up(target)
        saturated_s = time.perf_counter() - t0
        saturated = list(fleet.transitions_ms)

        # The same number of steps as plain tasks, through the same fleet.
        fleet.done.clear()
        fleet.expected_plain = workflows * STEPS
        t0 = time.perf_counter()
        for i in range(0, workflows * STEPS, 500):
            await target.submit_many(
                [
                    command_envelope(
                        c.SubmitTask(task_id=f"{tag}plain{j}", type="t", required_capabilities=("x",)),
                        pool=pool,
                        source=SOURCE,
                    )
                    for j in range(i, min(workflows * STEPS, i + 500))
                ]
            )
        await fleet.done.wait()
        await _caught_up(target)
        plain_s = time.perf_counter() - t0

        # Paced: runs started at ``rate`` steps/s offered.
        fleet.transitions_ms.clear()
        fleet.done.clear()
        paced_runs = max(1, int(rate / STEPS * paced_seconds))
        fleet.ended, fleet.expected_runs, fleet.expected_plain = 0, paced_runs, 0
        interval = STEPS / rate
        tick = time.perf_counter()
        for i in range(paced_runs):
            await target.submit_many([_start(i, f"{tag}p", pool)])
            tick += interval
            await asyncio.sleep(max(0.0, tick - time.perf_counter()))
        await asyncio.wait_for(fleet.done.wait(), timeout=120)
        paced = list(fleet.transitions_ms)
    finally:
        if fleet_task is not None:
            fleet_task.cancel()
            await asyncio.gather(fleet_task, return_exceptions=True)
        await target.stop()
    steps_per_s = workflows * STEPS / saturated_s
    plain_per_s = workflows * STEPS / plain_s
    return {
        "workflows": workflows,
        "steps": workflows * STEPS,
        "agents": agents,
        "seconds": round(saturated_s, 3),
        "runs_ended_s": round(ended_s, 3),  # every run ended (the read models catch up after)
        "steps_per_s": round(steps_per_s, 1),
        "saturated_transition_p50_ms": round(percentile(saturated, 50), 3),
        "saturated_transition_p99_ms": round(percentile(saturated, 99), 3),
        "plain_tasks_per_s": round(plain_per_s, 1),
        "steps_to_plain_ratio": round(steps_per_s / plain_per_s, 3),
        "offered_steps_per_s": rate,
        "paced_workflows": paced_runs,
        "transition_p50_ms": round(percentile(paced, 50), 3),
        "transition_p99_ms": round(percentile(paced, 99), 3),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "projector_peak_rss_mb": target.projector_peak_rss_mb,
    }
