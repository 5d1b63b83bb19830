"""Coordinator decision time per assignment at fleet scale, per strategy (``agentbus bench``).

Builds a pool view of ``agents`` agents in ``profiles`` capability groups (capacity 4, mixed
weights, heartbeat cpu/memory figures, some outcome history so performance scores differ), loads
it to about half its capacity, then submits ``tasks`` tasks one at a time; each ``schedule()``
makes one assignment, which is confirmed (TaskAssigned) and a random held task completes, so the
pool stays in a steady state. Reports the wall time of each ``schedule()`` call (everything the
coordinator does for one assignment, audit included) and the ``decision_us`` the audit records.
In memory, no log: this measures the coordinator alone. Measures; never asserts.
"""

from __future__ import annotations

import gc
import random
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from contracts import REGISTRY, Envelope, Payload
from contracts import commands as c
from contracts import event_types as e
from contracts.commands import STRATEGIES
from services.coordination.coordinator import PoolView
from services.runtime.memory import GC_THRESHOLDS

T0 = datetime(2025, 1, 1, tzinfo=UTC)
CAPS = ("text", "code", "sql", "vision", "audio", "search", "math", "translate")


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


class _Feed:
    def __init__(self, view: PoolView) -> None:
        self.view, self.seq, self.t = view, 0, T0

    def __call__(self, ev: Payload, command_id: str = "bench") -> None:
        self.seq += 1
        contract = REGISTRY[type(ev).__name__]
        self.view.observe(
            Envelope.trusted(
                id=f"e{self.seq}",
                type=contract.name,
                time=self.t,
                pool=self.view.pool,
                sequence=self.seq,
                commandid=command_id,
                data=ev,
            )
        )


def run(
    agents: int = 10_000,
    tasks: int = 20_000,
    strategy: str = "least_loaded",
    profiles: int = 8,
    seed: int = 7,
) -> dict[str, Any]:
    """Decision times at ``agents`` agents for ``strategy``: {"strategy", "p50_us", "p99_us", ...}."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}")
    rnd = random.Random(seed)
    view = PoolView("bench")
    feed = _Feed(view)
    shapes = [frozenset(rnd.sample(CAPS, rnd.randint(1, 4))) | {"text"} for _ in range(profiles)]
    for i in range(agents):
        caps = shapes[i % profiles]
        feed(
            e.AgentRegistered(
                agent_id=f"a{i:05d}",
                name=f"a{i}",
                kind="llm",
                capabilities=tuple(sorted(caps)),
                capacity=4,
                weight=rnd.choice((0.5, 1.0, 2.0)),
            )
        )
        feed(
            e.AgentHeartbeatReceived(
                agent_id=f"a{i:05d}", cpu=rnd.uniform(0, 100), memory=rnd.uniform(0, 100)
            )
        )
    held: list[str] = []
    n = 0

    def submit(policy_req: tuple[str, ...]) -> list[Any]:
        nonlocal n
        n += 1
        feed(
            e.TaskSubmitted(
                task_id=f"t{n}",
                type="w",
                priority=5,
                required_capabilities=policy_req,
                strategy=strategy,
                data={"data_source": "postgresql"} if n % 3 == 0 else {},
                inferred_capabilities=("sql",) if n % 3 == 0 else (),
            )
        )
        return view.schedule()

    def confirm(out: list[Any]) -> None:
        for a in out:
            if isinstance(a.command, c.AssignTask):
                feed(
                    e.TaskAssigned(task_id=a.command.task_id, agent_id=a.command.agent_id, attempt=1),
                    a.command_id,
                )
                held.append(a.command.task_id)

    def finish(ok: bool) -> None:
        if held:
            i = rnd.randrange(len(held))
            held[i], held[-1] = held[-1], held[i]
            task_id = held.pop()
            agent_id = view.tasks[task_id].agent_id or ""
            feed.t += timedelta(milliseconds=5)
            if ok:
                feed(e.TaskCompleted(task_id=task_id, agent_id=agent_id))
            else:
                feed(e.TaskFailed(task_id=task_id, agent_id=agent_id, error="x", attempt=1))

    reqs = [("text",), (), tuple(sorted(shapes[0]))[:2], ("text", "code")]
    for _ in range(agents * 2):  # warm up to about half the fleet's capacity, with some history
        confirm(submit(rnd.choice(reqs)))
    for _ in range(agents // 2):
        finish(rnd.random() < 0.9)
    # As the runners do (services.runtime.embedded.tune_gc): collect rarely, freeze the long-lived state.
    thresholds = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    wall: list[float] = []
    audited: list[float] = []
    for _ in range(tasks):
        req = rnd.choice(reqs)
        started = time.perf_counter()
        out = submit(req)
        elapsed = (time.perf_counter() - started) * 1e6
        assigns = [a for a in out if isinstance(a.command, c.AssignTask)]
        if assigns:
            wall.append(elapsed / len(assigns))
            audited.extend(a.command.audit.decision_us for a in assigns if a.command.audit is not None)
        confirm(out)
        finish(rnd.random() < 0.9)
    gc.unfreeze()
    gc.set_threshold(*thresholds)
    return {
        "strategy": strategy,
        "agents": agents,
        "assignments": len(wall),
        "p50_us": round(_percentile(wall, 50), 1),
        "p99_us": round(_percentile(wall, 99), 1),
        "max_us": round(max(wall), 1),
        "audit_p50_us": round(_percentile(audited, 50), 1),
        "audit_p99_us": round(_percentile(audited, 99), 1),
    }


def run_all(agents: int = 10_000, tasks: int = 20_000) -> list[dict[str, Any]]:
    """``run`` for every strategy."""
    return [run(agents, tasks, s) for s in STRATEGIES]


if __name__ == "__main__":
    for row in run_all():
        print(row)
