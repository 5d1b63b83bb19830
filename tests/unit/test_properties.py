"""Random command sequences through the real decide/evolve + coordinator loop, checked after each step.

The loop (``tests.gwt.Loop``) decides commands in FIFO order like one commands partition; the
coordinator's AssignTask commands join the same queue, so client commands interleave with
assignments in flight. Budgets are left out and agents (de)register only once the loop is quiet:
those paths have known coordinator bugs, pinned by strict xfail tests in test_coordinator.py.
"""

from __future__ import annotations

import math
from collections import Counter

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from contracts import Payload
from contracts import commands as c
from contracts import events as e
from services.coordinator import Coordinator
from services.decider import DEFAULT_PRICES, Rejected, decide, evolve
from services.state import PoolState
from tests.gwt import Loop

AGENTS = {"a0": (), "a1": ("x",), "a2": ("x", "y"), "a3": ("y",), "a4": ("x",)}  # fixed per id
REQS = [(), ("x",), ("y",), ("x", "y"), ("z",)]
MODELS = [*sorted(DEFAULT_PRICES), "unpriced-model"]
AMOUNT = st.sampled_from([0, 0.5, 1, 2, 4]) | st.floats(0, 8, allow_nan=False)

# Rejections a coordinator command may meet legitimately: the task ended while it was in flight.
IN_FLIGHT_REJECTIONS = {"INVALID_TASK_STATE"}


class PoolMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = Loop()
        self.tasks: list[str] = []
        self.allocs: list[str] = []
        self.costs = 0

    def agent(self, data: st.DataObject) -> str:
        """Mostly an active agent (when there is one), sometimes any id, known or not."""
        active = sorted(a for a, s in self.loop.state.agents.items() if s.active)
        if active and data.draw(st.integers(0, 3)):
            return data.draw(st.sampled_from(active))
        return data.draw(st.sampled_from(sorted(AGENTS)))

    def task(self, data: st.DataObject) -> str:
        """Mostly a task some agent holds (when there is one), sometimes any task."""
        held = sorted(t for t, s in self.loop.state.tasks.items() if s.held)
        if held and data.draw(st.integers(0, 3)):
            return data.draw(st.sampled_from(held))
        return data.draw(st.sampled_from(self.tasks))

    # -- client commands ---------------------------------------------------------------------------

    @initialize(capacities=st.lists(st.integers(1, 3), min_size=1, max_size=3))
    def start(self, capacities: list[int]) -> None:
        for agent_id, capacity in zip(sorted(AGENTS), capacities, strict=False):
            self.register(agent_id, capacity)

    @rule(data=st.data(), capacity=st.integers(1, 3))
    def register_again(self, data: st.DataObject, capacity: int) -> None:
        """Mostly a new or deregistered agent, sometimes an active one (AGENT_EXISTS)."""
        idle = sorted(
            a for a in AGENTS if a not in self.loop.state.agents or not self.loop.state.agents[a].active
        )
        agent_id = (
            data.draw(st.sampled_from(idle)) if idle and data.draw(st.integers(0, 3)) else self.agent(data)
        )
        self.register(agent_id, capacity)

    def register(self, agent_id: str, capacity: int) -> None:
        self.loop.run()
        self.loop.send(
            c.RegisterAgent(
                agent_id=agent_id, name=agent_id, capabilities=AGENTS[agent_id], capacity=capacity
            )
        )

    @rule(data=st.data())
    def deregister(self, data: st.DataObject) -> None:
        self.loop.run()
        self.loop.send(c.DeregisterAgent(agent_id=self.agent(data)))

    @rule(
        batch=st.lists(
            st.tuples(st.integers(1, 10), st.sampled_from(REQS), st.sampled_from([None, "w1", "w2"])),
            min_size=1,
            max_size=4,
        )
    )
    def submit(self, batch: list[tuple[int, tuple[str, ...], str | None]]) -> None:
        for priority, req, workflow in batch:
            task_id = f"t{len(self.tasks)}"
            self.tasks.append(task_id)
            data = {} if workflow is None else {"workflow_id": workflow}
            self.loop.send(
                c.SubmitTask(
                    task_id=task_id, type="w", priority=priority, required_capabilities=req, data=data
                )
            )

    @precondition(lambda self: self.tasks)
    @rule(
        data=st.data(),
        kind=st.sampled_from(["start", "complete", "fail", "cancel"]),
        by=st.sampled_from(["holder", "anyone", "a0"]),
    )
    def finish(self, data: st.DataObject, kind: str, by: str) -> None:
        task_id = self.task(data)
        task = self.loop.state.tasks.get(task_id)
        agent_id = None if by == "anyone" else (task.agent_id if by == "holder" and task else "a0")
        cmd: Payload = {
            "start": c.StartTask(task_id=task_id, agent_id=agent_id),
            "complete": c.CompleteTask(task_id=task_id, agent_id=agent_id),
            "fail": c.FailTask(task_id=task_id, agent_id=agent_id),
            "cancel": c.CancelTask(task_id=task_id),
        }[kind]
        self.loop.send(cmd)

    @rule(cpu=AMOUNT, mem=AMOUNT)
    def set_limits(self, cpu: float, mem: float) -> None:
        self.loop.send(
            c.SetResourceLimits(max_cpu_cores=cpu, max_memory_mb=mem, max_disk_mb=100, max_network_mbps=100)
        )

    @rule(data=st.data(), cpu=AMOUNT, mem=AMOUNT, reuse=st.booleans())
    def allocate(self, data: st.DataObject, cpu: float, mem: float, reuse: bool) -> None:
        agent_id = self.agent(data)
        if reuse and self.allocs:
            alloc_id = self.allocs[-1]
        else:
            alloc_id = f"r{len(self.allocs)}"
            self.allocs.append(alloc_id)
        self.loop.send(
            c.AllocateResources(allocation_id=alloc_id, agent_id=agent_id, cpu_cores=cpu, memory_mb=mem)
        )

    @precondition(lambda self: self.allocs)
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        self.loop.send(c.ReleaseResources(allocation_id=data.draw(st.sampled_from(self.allocs))))

    @rule(
        data=st.data(),
        model=st.sampled_from(MODELS),
        tokens=st.tuples(st.integers(0, 50_000), st.integers(0, 50_000)),
        usd=st.none() | st.floats(0, 5, allow_nan=False),
        repeat=st.booleans(),
    )
    def record_cost(
        self, data: st.DataObject, model: str, tokens: tuple[int, int], usd: float | None, repeat: bool
    ) -> None:
        agent_id = self.agent(data)
        task_id = data.draw(st.none() | st.sampled_from(self.tasks)) if self.tasks else None
        if not (repeat and self.costs):
            self.costs += 1
        self.loop.send(
            c.RecordCost(
                cost_id=f"k{self.costs}",
                agent_id=agent_id,
                task_id=task_id,
                model=model,
                input_tokens=tokens[0],
                output_tokens=tokens[1],
                cost_usd=usd,
            )
        )

    # -- the loop ----------------------------------------------------------------------------------

    @rule(n=st.integers(1, 4))
    def step(self, n: int) -> None:
        for _ in range(n):
            self.loop.step()

    @rule()
    def drain(self) -> None:
        self.loop.run()

    # -- invariants --------------------------------------------------------------------------------

    @invariant()
    def no_agent_above_capacity(self) -> None:
        for agent in self.loop.state.agents.values():
            assert len(agent.tasks) <= agent.capacity, agent
            if not agent.active:
                assert not agent.tasks and not agent.allocations, agent

    @invariant()
    def every_held_task_has_exactly_one_holder(self) -> None:
        state = self.loop.state
        holders = Counter(t for agent in state.agents.values() for t in agent.tasks)
        assert all(n == 1 for n in holders.values()), holders
        for task in state.tasks.values():
            if task.held:
                assert task.agent_id is not None and task.task_id in state.agents[task.agent_id].tasks
            else:
                assert holders[task.task_id] == 0, task

    @invariant()
    def allocations_stay_within_limits(self) -> None:
        state = self.loop.state
        totals = [sum(a.amounts[i] for a in state.allocations.values()) for i in range(4)]
        for used, total in zip(state.used, totals, strict=True):
            assert math.isclose(used, total, abs_tol=1e-9), (state.used, totals)
        if state.limits is not None:
            for used, limit in zip(state.used, state.limits, strict=True):
                assert used <= limit + 1e-9, (state.used, state.limits)
        for alloc in state.allocations.values():
            assert alloc.allocation_id in state.agents[alloc.agent_id].allocations

    @invariant()
    def recorded_costs_sum_to_spent(self) -> None:
        state = self.loop.state
        costs = [env.data for env in self.loop.log if isinstance(env.data, e.CostRecorded)]
        assert len({x.cost_id for x in costs}) == len(costs) == len(state.costs)
        spent: dict[tuple[str, str], float] = {}
        for x in costs:  # same order as evolve: exact float equality
            wf = state.tasks[x.task_id].data.get("workflow_id") if x.task_id else None
            keys = [("pool", "default"), ("agent", x.agent_id)] + ([("workflow", str(wf))] if wf else [])
            for key in keys:
                spent[key] = spent.get(key, 0.0) + x.cost_usd
        assert spent == state.spent
        for x in costs:
            if x.priced_from_table:
                p_in, p_out = DEFAULT_PRICES[x.model]
                assert math.isclose(
                    x.cost_usd,
                    x.input_tokens / 1000 * p_in + x.output_tokens / 1000 * p_out,
                    rel_tol=1e-12,
                    abs_tol=1e-10,
                )

    @invariant()
    def coordinator_view_matches_the_decider(self) -> None:
        state, view = self.loop.state, self.loop.coordinator.view("default")
        in_flight = {cid: cmd for cid, cmd, by in self.loop.queue if by and isinstance(cmd, c.AssignTask)}
        pending = {t.pending for t in view.tasks.values() if t.pending is not None}
        assert pending == {(cid, cmd.agent_id) for cid, cmd in in_flight.items()}
        for agent_id, agent in state.agents.items():
            mine = sum(1 for _, a in pending if a == agent_id)
            assert view.agents[agent_id].load == len(agent.tasks) + mine, agent_id
            assert view.agents[agent_id].active == agent.active
            assert view.agents[agent_id].load <= agent.capacity
        for task_id, task in state.tasks.items():
            seen = view.tasks[task_id]
            expected = {"queued": "queued", "assigned": "held", "running": "held"}.get(task.status, "done")
            assert seen.status == expected, (task, seen)
            if task.held:
                assert seen.agent_id == task.agent_id

    @invariant()
    def the_coordinator_only_sends_valid_assignments(self) -> None:
        for d in self.loop.decisions:
            if d.by_coordinator:
                for env in d.events:
                    if isinstance(env.data, e.CommandRejected):
                        assert env.data.code in IN_FLIGHT_REJECTIONS, env.data

    @invariant()
    def a_quiet_pool_leaves_no_servable_task_waiting(self) -> None:
        if self.loop.queue:
            return
        state = self.loop.state
        free = [a for a in state.agents.values() if a.active and len(a.tasks) < a.capacity]
        for task in state.tasks.values():
            if task.status == "queued":
                assert not [a.agent_id for a in free if task.required <= a.capabilities], task
        rebuilt = Coordinator()
        for env in self.loop.log:
            rebuilt.observe(env)
        assert rebuilt.schedule() == []
        view = rebuilt.view("default")
        for agent_id, agent in state.agents.items():
            assert view.agents[agent_id].load == len(agent.tasks)

    @invariant()
    def replay_rebuilds_the_same_state_and_decisions(self) -> None:
        replayed = PoolState("default")
        for env in self.loop.log:
            evolve(replayed, env)
        assert replayed == self.loop.state
        # Deciding the same commands again from scratch yields the same events.
        fresh = PoolState("default")
        for d in self.loop.decisions:
            if d.command_id in fresh.seen:
                assert d.events == []
                continue
            try:
                events = decide(fresh, d.command)
            except Rejected as exc:
                assert [env.data.code for env in d.events] == [exc.code.value]  # type: ignore[union-attr]
            else:
                assert events == [env.data for env in d.events]
            for env in d.events:
                evolve(fresh, env)
        assert fresh == self.loop.state

    def teardown(self) -> None:
        self.loop.run()  # every history settles
        self.a_quiet_pool_leaves_no_servable_task_waiting()
        self.coordinator_view_matches_the_decider()


PoolMachine.TestCase.settings = settings(
    max_examples=200, stateful_step_count=50, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestPool = PoolMachine.TestCase
