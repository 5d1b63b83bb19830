"""Hypothesis: the coordination features together keep the pool's invariants.

A clocked pool (``tests.unit.fleet.World``: decider + coordinator + timer book) gets random
registrations, deregistrations, heartbeats and silences, tasks with strategies, retry policies
and timeouts, completions and failures, cancellations, policy changes (default strategy, partial
matches, circuit breakers), resource limits with max agents, allocations and costs, while time
moves on and timers fire. Whatever happens:

* no agent holds more tasks than its capacity, no task is held by two agents;
* allocations stay within the limits, active agents within max_agents;
* recorded costs sum to what the budgets count as spent;
* every pending timer belongs to a subject still in the state it was armed for;
* replaying the log rebuilds the live state, and running the same commands at the same times
  again yields the same events (decider, coordinator and timers are deterministic);
* once quiet, no queued task is one the decider would let some agent take (partial matches
  included), and every task whose capabilities no registered agent covers is marked.
"""

from __future__ import annotations

import math
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from contracts import Payload
from contracts import commands as c
from services.domain.capabilities import capability_match
from services.domain.decider import Rejected, decide, evolve
from services.domain.state import PoolState
from tests.unit.fleet import World

AGENTS = ["a0", "a1", "a2", "a3"]
PROFILES = [("x", "y", "z"), ("x", "y", "z"), ("x",), ("y",), ("x", "y"), ()]
REQS = [(), ("x",), ("y",), ("x", "y"), ("x",), (), ("x", "y", "z", "w")]
RETRIES = [
    None,
    c.RetryPolicy(max_attempts=2, strategy="immediate"),
    c.RetryPolicy(max_attempts=3, strategy="exponential", base_delay_s=1, max_delay_s=4, jitter=0.5),
]


class CoordinationMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.world = World()
        self.script: list[tuple[str, Any]] = []  # what the test did, to do it again
        self.tasks: list[str] = []
        self.costs = 0

    # -- actions, recorded ----------------------------------------------------------------------
    def send(self, cmd: Payload) -> None:
        cid = self.world.send(cmd)
        self.script.append(("send", (cmd, cid)))

    def step(self, n: int) -> None:
        for _ in range(n):
            self.world.step()
        self.script.append(("step", n))

    def advance(self, seconds: float) -> None:
        self.world.advance(seconds)
        self.script.append(("advance", seconds))

    # -- rules ----------------------------------------------------------------------------------
    @initialize(n=st.integers(2, 4), caps=st.lists(st.sampled_from(PROFILES), min_size=4, max_size=4))
    def start(self, n: int, caps: list[tuple[str, ...]]) -> None:
        for agent_id, profile in zip(AGENTS[:n], caps, strict=False):
            self.send(
                c.RegisterAgent(
                    agent_id=agent_id, name=agent_id, capabilities=profile, capacity=2, heartbeat_timeout_s=5
                )
            )
            self.send(c.AgentHeartbeat(agent_id=agent_id))

    @rule(
        agent_id=st.sampled_from(AGENTS),
        caps=st.sampled_from(PROFILES),
        capacity=st.integers(1, 3),
        weight=st.sampled_from([0.5, 1.0, 3.0]),
    )
    def register(self, agent_id: str, caps: tuple[str, ...], capacity: int, weight: float) -> None:
        self.send(
            c.RegisterAgent(
                agent_id=agent_id,
                name=agent_id,
                capabilities=caps,
                capacity=capacity,
                heartbeat_timeout_s=5,
                weight=weight,
            )
        )

    @rule(agent_id=st.sampled_from(AGENTS))
    def deregister(self, agent_id: str) -> None:
        self.send(c.DeregisterAgent(agent_id=agent_id))

    @rule(agent_id=st.sampled_from(AGENTS), cpu=st.floats(0, 100))
    def heartbeat(self, agent_id: str, cpu: float) -> None:
        self.send(c.AgentHeartbeat(agent_id=agent_id, cpu=cpu, memory=50))

    @rule(
        batch=st.lists(
            st.tuples(
                st.sampled_from(REQS),
                st.sampled_from([None, *c.STRATEGIES]),
                st.sampled_from(RETRIES),
                st.sampled_from([None, 3.0]),
                st.sampled_from([{}, {"data_source": "postgresql"}]),
            ),
            min_size=1,
            max_size=3,
        )
    )
    def submit(self, batch: list[tuple[Any, ...]]) -> None:
        for req, strategy, retry, timeout, data in batch:
            task_id = f"t{len(self.tasks)}"
            self.tasks.append(task_id)
            self.send(
                c.SubmitTask(
                    task_id=task_id,
                    type="w",
                    required_capabilities=req,
                    strategy=strategy,
                    retry=retry,
                    timeout_s=timeout,
                    data=data,
                )
            )

    @rule(data=st.data(), kind=st.sampled_from(["complete", "fail", "fail", "cancel", "start"]))
    def finish(self, data: st.DataObject, kind: str) -> None:
        if not self.tasks:
            return
        held = sorted(t for t, s in self.world.state.tasks.items() if s.held)
        if held and data.draw(st.integers(0, 4)):
            task_id = data.draw(st.sampled_from(held))
        else:
            task_id = data.draw(st.sampled_from(self.tasks))
        cmd = {
            "complete": c.CompleteTask(task_id=task_id),
            "fail": c.FailTask(task_id=task_id),
            "cancel": c.CancelTask(task_id=task_id),
            "start": c.StartTask(task_id=task_id),
        }[kind]
        self.send(cmd)

    @rule(
        strategy=st.sampled_from(c.STRATEGIES),
        match=st.sampled_from([1.0, 0.5, 0.3]),
        breaker=st.sampled_from([None, 1, 2]),
    )
    def set_policy(self, strategy: Any, match: float, breaker: int | None) -> None:
        self.send(
            c.SetPoolPolicy(
                default_strategy=strategy,
                min_capability_match=match,
                breaker_threshold=breaker,
                breaker_cooldown_s=2,
                dead_after_timeouts=1,
            )
        )

    @rule(cpu=st.sampled_from([1.0, 4.0, 100.0]), max_agents=st.sampled_from([None, 1, 2, 3, 4]))
    def set_limits(self, cpu: float, max_agents: int | None) -> None:
        self.send(
            c.SetResourceLimits(
                max_cpu_cores=cpu,
                max_memory_mb=100,
                max_disk_mb=100,
                max_network_mbps=100,
                max_agents=max_agents,
            )
        )

    @rule(agent_id=st.sampled_from(AGENTS), cpu=st.sampled_from([0.5, 1.0, 2.0]), n=st.integers(0, 99))
    def allocate(self, agent_id: str, cpu: float, n: int) -> None:
        self.send(c.AllocateResources(allocation_id=f"r{n}", agent_id=agent_id, cpu_cores=cpu))

    @rule(agent_id=st.sampled_from(AGENTS), usd=st.sampled_from([0.5, 1.0, 2.5]), budget=st.booleans())
    def spend(self, agent_id: str, usd: float, budget: bool) -> None:
        self.costs += 1
        self.send(c.RecordCost(cost_id=f"k{self.costs}", agent_id=agent_id, model="m", cost_usd=usd))
        if budget:
            self.send(c.SetBudget(scope="agent", scope_id=agent_id, limit_usd=self.costs * 1.5))

    @rule(n=st.integers(1, 8))
    def decide_some(self, n: int) -> None:
        self.step(n)

    @rule(n=st.integers(4, 30))
    def decide_more(self, n: int) -> None:
        self.step(n)

    @rule(seconds=st.sampled_from([0.5, 1.0, 2.0, 4.0, 6.0, 12.0]))
    def time_passes(self, seconds: float) -> None:
        self.advance(seconds)

    # -- invariants -----------------------------------------------------------------------------
    @invariant()
    def capacity_and_single_holders(self) -> None:
        state = self.world.state
        holders: dict[str, str] = {}
        for agent in state.agents.values():
            assert len(agent.tasks) <= agent.capacity, agent
            for task_id in agent.tasks:
                assert task_id not in holders, (task_id, holders[task_id], agent.agent_id)
                holders[task_id] = agent.agent_id
        for task in state.tasks.values():
            if task.held:
                assert holders.get(task.task_id) == task.agent_id, task
            else:
                assert task.task_id not in holders, task

    @invariant()
    def limits_and_costs(self) -> None:
        state = self.world.state
        if state.limits is not None:
            for used, limit in zip(state.used, state.limits, strict=True):
                assert used <= limit + 1e-9
        if state.max_agents is not None:
            # A lower max_agents is refused while more are active; registrations are checked.
            assert state.active_agents() <= state.max_agents
        total = sum(0.0 for _ in ())
        for env in self.world.log:
            cost = getattr(env.data, "cost_usd", None)
            if type(env.data).__name__ == "CostRecorded" and cost is not None:
                total += cost
        assert math.isclose(state.spent.get(("pool", "default"), 0) / 1_000_000, total, abs_tol=1e-9)

    @invariant()
    def timers_belong_to_live_subjects(self) -> None:
        state = self.world.state
        for timer in state.timers.values():
            match timer.kind:
                case "task_timeout":
                    task = state.tasks[timer.task_id or ""]
                    assert task.held and task.attempts == timer.attempt, (timer, task)
                case "retry":
                    assert state.tasks[timer.task_id or ""].status == "retrying", timer
                case "heartbeat":
                    assert state.agents[timer.agent_id or ""].active, timer
                case "agent_dead":
                    agent = state.agents[timer.agent_id or ""]
                    assert agent.active and not agent.healthy, timer
                case "circuit":
                    agent = state.agents[timer.agent_id or ""]
                    assert agent.active and agent.breaker == "open", timer
        for task in state.tasks.values():
            if task.status == "retrying":
                assert f"retry:{task.task_id}" in state.timers, task

    @invariant()
    def replay_rebuilds_the_state(self) -> None:
        replayed = PoolState("default")
        for env in self.world.log:
            evolve(replayed, env)
        assert replayed == self.world.state

    def quiet_checks(self) -> None:
        world = self.world
        world.run()
        state, view = world.state, world.view
        capable = [a.capabilities for a in state.agents.values() if a.active]
        threshold = state.policy.min_capability_match
        for task in state.tasks.values():
            if task.status != "queued":
                continue
            covered = any(
                task.required <= caps
                or (threshold < 1 and capability_match(task.required, caps) >= threshold)
                for caps in capable
            )
            if not covered:
                assert task.unassignable is not None, f"{task.task_id} nobody can serve is not marked"
            for agent_id in state.agents:
                try:
                    decide(state, c.AssignTask(task_id=task.task_id, agent_id=agent_id, allow_partial=True))
                except Rejected:
                    continue
                raise AssertionError(f"{task.task_id} waits in a quiet pool though {agent_id} could take it")
        assert world.coordinator.schedule() == []
        assert all(t.pending is None for t in view.tasks.values())

    def teardown(self) -> None:
        self.quiet_checks()
        again = World()
        for kind, arg in self.script:
            if kind == "send":
                cmd, cid = arg
                again.send(cmd, cid)
            elif kind == "step":
                for _ in range(arg):
                    again.step()
            else:
                again.advance(arg)
        again.run()
        assert [(x.commandid, x.time, _timeless(x.data)) for x in again.log] == [
            (x.commandid, x.time, _timeless(x.data)) for x in self.world.log
        ]


def _timeless(data: Any) -> Any:
    """The event without the audit's decision_us (wall-clock time measured, never decided on)."""
    audit = getattr(data, "audit", None)
    if audit is None:
        return data
    return data.model_copy(update={"audit": audit.model_copy(update={"decision_us": 0.0})})


CoordinationMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestCoordination = CoordinationMachine.TestCase
