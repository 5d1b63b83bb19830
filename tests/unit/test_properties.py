"""Random command sequences through the real decide/evolve + coordinator loop, checked after each step.

The loop (``tests.gwt.Loop``) decides commands in FIFO order like one commands partition; the
coordinator's AssignTask commands join the same queue, so client commands interleave with
assignments in flight. Nothing is held back: agents register, deregister and re-register (with
other capabilities or capacity) at any time, also while assignments to them are in flight;
budgets are set for the pool, for agents and for workflows (tasks with ``data.workflow_id``),
costs exhaust them and budgets are raised again.

Besides the decider's own invariants (capacity, one holder per task, resources within limits,
spent = sum of costs, replay = live state), the coordinator is held to:

* every assignment it issues would be accepted if no client command intervened, and every one
  the decider rejects is explained by a client command decided while it was in flight (so the
  AssignTask commands per task are bounded: no retry storm);
* its view (loads, in-flight commands, task statuses, agents, budgets) matches the decider;
* once the loop is quiet nothing is in flight, it issues nothing more (live or rebuilt from the
  log), no queued task is one the decider would let some agent take, and every queued task no
  registered agent could serve is marked unassignable.

The races the old restrictions left out are also played as fixed scenarios below (the random runs
reach them only now and then); regressions for bugs it found are at the end.
"""

from __future__ import annotations

import copy
import math
from collections import Counter
from decimal import ROUND_HALF_UP, Decimal

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from contracts import Payload
from contracts import commands as c
from contracts import event_types as e
from contracts.money import to_usd
from services.coordination.coordinator import AUDIT_TOP, STRATEGY, Assignment, Coordinator, PoolView
from services.domain.decider import Rejected, decide, evolve
from services.domain.prices import BUILTIN, BUILTIN_PRICES
from services.domain.state import PoolState
from tests.gwt import Loop, wrap

AGENTS = {"a0": (), "a1": ("x",), "a2": ("x", "y"), "a3": ("y",), "a4": ("x",)}  # usual profile per id
PROFILES = [(), ("x",), ("y",), ("x", "y")]  # what a re-registration may bring instead
REQS = [(), ("x",), ("y",), ("x", "y"), ("z",)]
WORKFLOWS = ["w1", "w2"]
MODELS = ["gpt-4", "gpt-4o", "claude-sonnet-4", "openai/gpt-4o-mini-2024-07-18", "unpriced-model"]
AMOUNT = st.sampled_from([0, 0.5, 1, 2, 4]) | st.floats(0, 8, allow_nan=False)
# Budgets: mostly enough for a few costs (up to 5 USD each), sometimes spent at once.
LIMIT = st.sampled_from([0, 1, 5, 10, 20, 100]) | st.floats(0, 20, allow_nan=False)

# Rejections a coordinator command may meet legitimately, each when a client command decided while
# it was in flight changed the world: the task ended; the agent deregistered, or re-registered with
# less capacity or other capabilities; a cost or a lower limit exhausted a budget.
IN_FLIGHT_REJECTIONS = {
    "INVALID_TASK_STATE",
    "AGENT_NOT_ACTIVE",
    "AGENT_OVER_CAPACITY",
    "CAPABILITY_MISMATCH",
    "BUDGET_EXCEEDED",
}
# The coordinator's name for each decider task status; any other status is "done".
VIEW_STATUS = {"queued": "queued", "assigned": "held", "running": "held", "retrying": "waiting"}


def _queued_findable(view: PoolView) -> list[str]:
    """Queued tasks, not in flight, that the view could never schedule again (should be none)."""
    in_heaps = {
        (task_id, version) for q in view.queues.values() for _, _, task_id, version in q.heap
    }
    parked = {t.task_id for tasks in view.parked.values() for t in tasks}
    lost = []
    for t in view.tasks.values():
        if t.status != "queued" or t.pending is not None or (t.task_id, t.qversion) in in_heaps:
            continue
        if t.task_id in parked and ("workflow", t.workflow) in view.exhausted:
            continue
        lost.append(t.task_id)
    return lost


class PoolMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = Loop(on_schedule=self.check_issued)
        self.tasks: list[str] = []
        self.allocs: list[str] = []
        self.costs = 0
        self.issued: set[str] = set()
        self.explained = 0  # decisions whose coordinator rejections are already checked

    def agent(self, data: st.DataObject) -> str:
        """Mostly an active agent (when there is one), sometimes any id, known or not."""
        active = sorted(a for a, s in self.loop.state.agents.items() if s.active)
        if active and data.draw(st.integers(0, 3)):
            return data.draw(st.sampled_from(active))
        return data.draw(st.sampled_from(sorted(AGENTS)))

    def task(self, data: st.DataObject) -> str:
        """Mostly a task some agent holds or is being assigned (if any), sometimes any task."""
        flying = {cmd.task_id for _, cmd, by in self.loop.queue if by and isinstance(cmd, c.AssignTask)}
        held = sorted(flying | {t for t, s in self.loop.state.tasks.items() if s.held})
        if held and data.draw(st.integers(0, 3)):
            return data.draw(st.sampled_from(held))
        return data.draw(st.sampled_from(self.tasks))

    # -- client commands ---------------------------------------------------------------------------

    @initialize(capacities=st.lists(st.integers(1, 3), min_size=1, max_size=3))
    def start(self, capacities: list[int]) -> None:
        for agent_id, capacity in zip(sorted(AGENTS), capacities, strict=False):
            self.register(agent_id, AGENTS[agent_id], capacity)

    @rule(data=st.data(), capacity=st.integers(1, 3), other=st.booleans())
    def register_again(self, data: st.DataObject, capacity: int, other: bool) -> None:
        """Mostly a new, deregistered or being deregistered agent, sometimes an active one (AGENT_EXISTS).

        Nothing waits for the loop to be quiet: assignments to the agent may be in flight.
        """
        leaving = {cmd.agent_id for _, cmd, _ in self.loop.queue if isinstance(cmd, c.DeregisterAgent)}
        idle = sorted(
            a
            for a in AGENTS
            if a not in self.loop.state.agents or not self.loop.state.agents[a].active or a in leaving
        )
        agent_id = (
            data.draw(st.sampled_from(idle)) if idle and data.draw(st.integers(0, 3)) else self.agent(data)
        )
        caps = data.draw(st.sampled_from(PROFILES)) if other else AGENTS[agent_id]
        self.register(agent_id, caps, capacity)

    def register(self, agent_id: str, caps: tuple[str, ...], capacity: int) -> None:
        self.loop.send(
            c.RegisterAgent(agent_id=agent_id, name=agent_id, capabilities=caps, capacity=capacity)
        )

    @rule(data=st.data())
    def deregister(self, data: st.DataObject) -> None:
        self.loop.send(c.DeregisterAgent(agent_id=self.agent(data)))

    @rule(
        batch=st.lists(
            st.tuples(st.integers(1, 10), st.sampled_from(REQS), st.sampled_from([None, *WORKFLOWS])),
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
        by=st.sampled_from(["holder", "holder", "anyone", "a0"]),
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

    @rule(
        scope=st.sampled_from(["pool", "agent", "workflow"]),
        agent_id=st.sampled_from(sorted(AGENTS)),
        workflow=st.sampled_from(WORKFLOWS),
        limit=LIMIT,
    )
    def set_budget(self, scope: str, agent_id: str, workflow: str, limit: float) -> None:
        scope_id = {"pool": None, "agent": agent_id, "workflow": workflow}[scope]
        self.loop.send(c.SetBudget(scope=scope, scope_id=scope_id, limit_usd=limit))  # type: ignore[arg-type]

    @precondition(lambda self: self.loop.state.exceeded)
    @rule(data=st.data(), extra=st.sampled_from([0.01, 1, 100]))
    def raise_budget(self, data: st.DataObject, extra: float) -> None:
        """Lift a spent budget above what it has spent (as the decider knows it now)."""
        scope, scope_id = data.draw(st.sampled_from(sorted(self.loop.state.exceeded)))
        limit = to_usd(self.loop.state.spent.get((scope, scope_id), 0)) + extra
        self.loop.send(c.SetBudget(scope=scope, scope_id=scope_id, limit_usd=limit))  # type: ignore[arg-type]

    # -- the loop ----------------------------------------------------------------------------------

    # Rules are drawn uniformly: two stepping rules make decisions keep pace with the commands.
    @rule(n=st.integers(1, 4))
    def step(self, n: int) -> None:
        for _ in range(n):
            self.loop.step()

    @rule(n=st.integers(1, 12))
    def step_more(self, n: int) -> None:
        self.step(n)

    @rule()
    def drain(self) -> None:
        self.loop.run()

    # -- what the coordinator issues ---------------------------------------------------------------

    def check_issued(self, new: list[Assignment]) -> None:
        """Called by the loop right after the coordinator queued ``new``.

        Decides every coordinator command in flight (assignments, unassignable marks, ...), in
        queue order, on a copy of the decider's state, as if no client command came in between:
        each new one must be accepted.
        """
        fresh = {a.command_id for a in new}
        assert not fresh & self.issued, f"command ids issued twice: {sorted(fresh & self.issued)}"
        assert len(fresh) == len(new)
        self.issued |= fresh
        self.check_least_loaded(new)
        state = copy.deepcopy(self.loop.state)
        for cid, cmd, by in self.loop.queue:
            if not by:
                continue
            try:
                events = decide(state, cmd)
            except Rejected as exc:
                assert cid not in fresh, f"the coordinator issued {cid} ({cmd}), rejected: {exc.code}"
                continue
            for env in wrap(events, pool=state.pool, start=state.sequence, command_id=cid):
                evolve(state, env)

    def check_least_loaded(self, new: list[Assignment]) -> None:
        """Each assignment of the batch went to the least-loaded eligible agent, as its audit says.

        Loads are replayed through the batch from what they were before it, as the view counts
        them (held tasks plus assignments in flight).
        """
        view = self.loop.coordinator.view("default")
        assigns = [a.command for a in new if isinstance(a.command, c.AssignTask)]
        loads = {a.agent_id: a.load for a in view.agents.values()}
        for cmd in assigns:
            loads[cmd.agent_id] -= 1
        for cmd in assigns:
            task = view.tasks[cmd.task_id]
            eligible = [x for x in view.agents.values() if x.active and task.req <= x.caps]
            free = sorted(
                (loads[x.agent_id] / x.capacity, x.agent_id)
                for x in eligible
                if loads[x.agent_id] < x.capacity and ("agent", x.agent_id) not in view.exhausted
            )
            audit = cmd.audit
            assert audit is not None and audit.strategy == STRATEGY
            expected = [
                (agent_id, round(1 - ratio, 6), loads[agent_id], view.agents[agent_id].capacity)
                for ratio, agent_id in free[:AUDIT_TOP]
            ]
            actual = [(x.agent_id, x.score, x.load, x.capacity) for x in audit.candidates]
            assert actual == expected, (cmd, expected)
            assert cmd.agent_id == expected[0][0]
            assert audit.eligible == len(eligible), (cmd, len(eligible))
            loads[cmd.agent_id] += 1

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
        spent: dict[tuple[str, str], Decimal] = {}
        # The workflow as the task's submission on the log names it (the state keeps no data).
        data = {env.data.task_id: env.data.data for env in self.loop.log
                if isinstance(env.data, e.TaskSubmitted)}
        for x in costs:  # in decimal: money sums are exact, whatever the order
            wf = data[x.task_id].get("workflow_id") if x.task_id else None
            keys = [("pool", "default"), ("agent", x.agent_id)] + ([("workflow", str(wf))] if wf else [])
            for key in keys:
                spent[key] = spent.get(key, Decimal(0)) + Decimal(str(x.cost_usd))
        assert {k: v * 1_000_000 for k, v in spent.items()} == state.spent
        for x in costs:
            if x.priced_from_table:
                p_in, p_out = BUILTIN_PRICES.get(BUILTIN.match(x.model) or "", (0.01, 0.03))
                exact = Decimal(x.input_tokens) * Decimal(str(p_in)) / 1000 + Decimal(
                    x.output_tokens) * Decimal(str(p_out)) / 1000
                assert Decimal(str(x.cost_usd)) == exact.quantize(Decimal("0.000001"), rounding=ROUND_HALF_UP)

    @invariant()
    def budgets_are_exceeded_exactly_when_spent(self) -> None:
        state = self.loop.state
        for key in state.exceeded:
            assert key in state.budgets and state.spent.get(key, 0) >= state.budgets[key], key
        for key, limit in state.budgets.items():
            if state.spent.get(key, 0) >= limit:
                assert key in state.exceeded, (key, limit, state.spent.get(key))

    @invariant()
    def coordinator_view_matches_the_decider(self) -> None:
        state, view = self.loop.state, self.loop.coordinator.view("default")
        in_flight = {cid: cmd for cid, cmd, by in self.loop.queue if by and isinstance(cmd, c.AssignTask)}
        pending = {t.pending for t in view.tasks.values() if t.pending is not None}
        assert pending == {(cid, cmd.agent_id) for cid, cmd in in_flight.items()}
        assert view.agents.keys() == state.agents.keys()
        for agent_id, agent in state.agents.items():
            seen = view.agents[agent_id]
            mine = sum(1 for _, a in pending if a == agent_id)
            # Loads count assignments in flight, which a re-registration with less capacity may
            # leave above the capacity until the decider rejects them.
            assert seen.load == len(agent.tasks) + mine, agent_id
            assert (seen.active, seen.caps, seen.capacity) == (
                agent.active, agent.capabilities, agent.capacity
            ), agent_id
        # Every task not ended; an ended one only while a command of the coordinator's about it is
        # in flight, else just its workflow (for a cost recorded after the end).
        ended = {task_id for task_id, task in state.tasks.items() if task.status not in VIEW_STATUS}
        assert state.tasks.keys() - ended <= view.tasks.keys() <= state.tasks.keys()
        for task_id in ended - view.tasks.keys():
            assert view.ended_in.get(task_id) == state.tasks[task_id].workflow, task_id
        for task_id, task in state.tasks.items():
            seen_task = view.tasks.get(task_id)
            if seen_task is None:
                continue
            if task_id in ended:
                assert (seen_task.pending, seen_task.marking, seen_task.deferring, seen_task.noting) != (
                    None, None, None, 0), seen_task
            assert seen_task.status == VIEW_STATUS.get(task.status, "done"), (task, seen_task)
            if task.held:
                assert seen_task.agent_id == task.agent_id
            assert seen_task.assigned == task.attempts
        assert (view.spent, view.limits, view.exhausted) == (state.spent, state.budgets, state.exceeded)
        assert _queued_findable(view) == []

    @invariant()
    def every_coordinator_rejection_is_explained_by_a_client_command_in_flight(self) -> None:
        decisions = self.loop.decisions
        for j in range(self.explained, len(decisions)):
            d = decisions[j]
            if not d.by_coordinator:
                continue
            assert d.events, f"coordinator command {d.command_id} was dropped as a repeat"
            rejected = [env.data for env in d.events if isinstance(env.data, e.CommandRejected)]
            if not rejected:
                continue
            [r] = rejected
            assert r.code in IN_FLIGHT_REJECTIONS, r
            i = self.loop.issued[d.command_id]
            between = [x for x in decisions[i + 1 : j] if not x.by_coordinator and x.events]
            assert between, f"{d.command_id} rejected ({r.code}) though no client command came in between"
        self.explained = len(decisions)

    @invariant()
    def assignments_per_task_are_bounded(self) -> None:
        sent: Counter[str] = Counter()
        for d in self.loop.decisions:
            if d.by_coordinator and isinstance(d.command, c.AssignTask):
                sent[d.command.task_id] += 1
        view = self.loop.coordinator.view("default")
        for task_id, n in sent.items():
            task = view.tasks.get(task_id)
            if task is None:  # ended with none in flight: bounded when last counted, and no more came
                assert self.loop.state.tasks[task_id].status not in VIEW_STATUS
                continue
            # Every decided one was either assigned (counted by attempts) or rejected.
            assert n <= task.assigned + task.rejected, (task_id, n, task)

    @invariant()
    def a_quiet_pool_leaves_no_servable_task_waiting(self) -> None:
        if self.loop.queue:
            return
        state = self.loop.state
        view = self.loop.coordinator.view("default")
        assert [t.task_id for t in view.tasks.values() if t.pending is not None or t.marking] == []
        # No agent the decider would let take a queued task (free, capable, active, with budget),
        # and one no registered agent could serve is marked unassignable. Known bug: a task parked
        # for its workflow's budget is not marked (test_a_parked_task_nobody_can_serve_is_marked).
        parked = {t.task_id for tasks in view.parked.values() for t in tasks}
        capable = [a.capabilities for a in state.agents.values() if a.active]
        for task in state.tasks.values():
            if task.status != "queued":
                continue
            if task.task_id not in parked and not any(task.required <= caps for caps in capable):
                assert task.unassignable is not None, f"{task.task_id} nobody can serve is not marked"
            for agent_id in state.agents:
                try:
                    decide(state, c.AssignTask(task_id=task.task_id, agent_id=agent_id))
                except Rejected:
                    continue
                raise AssertionError(f"{task.task_id} waits in a quiet pool though {agent_id} could take it")
        assert self.loop.coordinator.schedule() == []
        rebuilt = Coordinator()
        for env in self.loop.log:
            rebuilt.observe(env)
        reissued = [
            (a.command_id, a.command)
            for a in rebuilt.schedule()
            if not (isinstance(a.command, c.MarkTaskUnassignable) and a.command.task_id in parked)
        ]
        assert reissued == [], f"a coordinator rebuilt from the log issues {reissued}"
        again = rebuilt.view("default")
        for agent_id, agent in state.agents.items():
            assert again.agents[agent_id].load == view.agents[agent_id].load == len(agent.tasks)

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
        self.every_coordinator_rejection_is_explained_by_a_client_command_in_flight()
        self.coordinator_view_matches_the_decider()
        self.a_quiet_pool_leaves_no_servable_task_waiting()


PoolMachine.TestCase.settings = settings(
    max_examples=200, stateful_step_count=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestPool = PoolMachine.TestCase


# -- the races the restrictions used to leave out, as fixed scenarios ---------------------------------
#
# Random runs reach these only now and then; here each one is played step by step through the same
# machine, with every invariant checked after each decision.


def _agent(agent_id: str, capacity: int = 1, caps: tuple[str, ...] | None = None) -> c.RegisterAgent:
    return c.RegisterAgent(
        agent_id=agent_id, name=agent_id, capabilities=AGENTS[agent_id] if caps is None else caps,
        capacity=capacity,
    )


def _task(task_id: str, req: tuple[str, ...] = (), workflow: str | None = None) -> c.SubmitTask:
    return c.SubmitTask(
        task_id=task_id, type="w", required_capabilities=req,
        data={} if workflow is None else {"workflow_id": workflow},
    )


def _cost(cost_id: str, agent_id: str, usd: float, task_id: str | None = None) -> c.RecordCost:
    return c.RecordCost(cost_id=cost_id, agent_id=agent_id, task_id=task_id, model="m", cost_usd=usd)


def play(*batches: list[Payload]) -> PoolMachine:
    """Queue each batch of client commands, then decide until quiet, checking after every step."""
    machine = PoolMachine()
    checks = [
        getattr(machine, name)
        for name in dir(PoolMachine)
        if getattr(getattr(PoolMachine, name), "hypothesis_stateful_invariant", None) is not None
    ]
    assert len(checks) >= 9
    for batch in batches:
        for cmd in batch:
            machine.loop.send(cmd)
        while machine.loop.step() is not None:
            for check in checks:
                check()
    machine.teardown()
    return machine


def _rejected(machine: PoolMachine) -> list[str]:
    return [
        env.data.code
        for d in machine.loop.decisions
        if d.by_coordinator
        for env in d.events
        if isinstance(env.data, e.CommandRejected)
    ]


def test_an_agent_whose_budget_is_raised_takes_work_again() -> None:
    m = play(
        [_agent("a0", capacity=2), c.SetBudget(scope="agent", scope_id="a0", limit_usd=1), _task("t1")],
        [_cost("k1", "a0", 2), _task("t2")],  # a0 is spent: t2 waits
        [c.SetBudget(scope="agent", scope_id="a0", limit_usd=10)],
    )
    assert m.loop.state.tasks["t2"].status == "assigned"


def test_a_pool_whose_budget_is_raised_schedules_again() -> None:
    m = play(
        [_agent("a0", capacity=2), _task("t1"), c.SetBudget(limit_usd=1)],
        [_cost("k1", "a0", 1), c.CompleteTask(task_id="t1")],
        [c.SetBudget(limit_usd=5)],
        [_task("t2")],
    )
    assert m.loop.state.tasks["t2"].status == "assigned"


def test_a_spent_workflow_parks_its_tasks_until_raised_and_others_go_on() -> None:
    m = play(
        [_agent("a0"), c.SetBudget(scope="workflow", scope_id="w1", limit_usd=1)],
        [_task("t1", workflow="w1"), _task("t2", workflow="w1")],  # a0 takes t1, t2 waits
        [_cost("k1", "a0", 1, task_id="t1"), _task("t3", workflow="w2"), c.CompleteTask(task_id="t1")],
    )
    assert [m.loop.state.tasks[t].status for t in ("t1", "t2", "t3")] == ["completed", "queued", "assigned"]
    view = m.loop.coordinator.view("default")
    assert {wf: [t.task_id for t in tasks] for wf, tasks in view.parked.items()} == {"w1": ["t2"]}
    m2 = play(
        [_agent("a0", capacity=3), c.SetBudget(scope="workflow", scope_id="w1", limit_usd=1)],
        [_task("t1", workflow="w1"), _task("t2", workflow="w1")],  # t2's assignment is in flight ...
        [_cost("k1", "a0", 1, task_id="t1"), c.SetBudget(scope="workflow", scope_id="w1", limit_usd=3)],
    )
    assert m2.loop.state.tasks["t2"].status == "assigned"


def test_a_cost_decided_while_an_assignment_is_in_flight_parks_the_task() -> None:
    batches = [
        [_agent("a0", capacity=3), c.SetBudget(scope="workflow", scope_id="w1", limit_usd=1)],
        [_task("t1", workflow="w1"), _cost("k1", "a0", 2, task_id="t1")],  # AssignTask t1 comes after
    ]
    m = play(*batches)
    assert _rejected(m) == ["BUDGET_EXCEEDED"]
    assert m.loop.state.tasks["t1"].status == "queued"
    assert [t.task_id for t in m.loop.coordinator.view("default").parked["w1"]] == ["t1"]
    m = play(*batches, [c.SetBudget(scope="workflow", scope_id="w1", limit_usd=5)])
    assert m.loop.state.tasks["t1"].status == "assigned"


def test_reregistering_with_less_capacity_while_assignments_are_in_flight() -> None:
    m = play(
        [_agent("a0", capacity=3), _agent("a1", capacity=3)],
        # t1 -> a0, t2 -> a1, t3 -> a0 are issued behind the re-registration
        [_task("t1"), _task("t2"), _task("t3"), c.DeregisterAgent(agent_id="a0"), _agent("a0", capacity=1)],
    )
    assert _rejected(m) == ["AGENT_OVER_CAPACITY"]
    assert {t: s.agent_id for t, s in m.loop.state.tasks.items()} == {"t1": "a0", "t2": "a1", "t3": "a1"}


def test_reregistering_with_other_capabilities_while_an_assignment_is_in_flight() -> None:
    m = play(
        [_agent("a1")],
        [_task("t1", ("x",)), c.DeregisterAgent(agent_id="a1"), _agent("a1", caps=("y",)), _agent("a2")],
    )
    assert _rejected(m) == ["CAPABILITY_MISMATCH"]
    assert m.loop.state.tasks["t1"].agent_id == "a2"


def test_deregistering_while_an_assignment_is_in_flight() -> None:
    m = play(
        [_agent("a0"), _agent("a1"), _task("t1"), c.DeregisterAgent(agent_id="a0")],
        [c.DeregisterAgent(agent_id="a1"), _agent("a0", capacity=2)],
    )
    assert _rejected(m) == ["AGENT_NOT_ACTIVE"]
    assert m.loop.state.tasks["t1"].agent_id == "a0"
    assert m.loop.state.tasks["t1"].attempts == 2


# -- regressions -----------------------------------------------------------------------------------


def test_a_parked_task_nobody_can_serve_is_marked_unassignable_as_a_rebuilt_coordinator_would() -> None:
    loop = Loop()
    loop.do(c.RegisterAgent(agent_id="a", name="a"))
    loop.do(c.SubmitTask(task_id="t0", type="w"))
    loop.do(c.SubmitTask(task_id="t1", type="w", data={"workflow_id": "w1"}))
    loop.do(c.SetBudget(scope="workflow", scope_id="w1", limit_usd=0))
    loop.do(c.CompleteTask(task_id="t0"))  # a is free; t1 is parked (w1 is spent)
    loop.do(c.DeregisterAgent(agent_id="a"))  # nobody is left who could serve t1
    rebuilt = Coordinator()
    for env in loop.log:
        rebuilt.observe(env)
    assert [type(a.command).__name__ for a in rebuilt.schedule()] == []  # fails: MarkTaskUnassignable
    assert loop.state.tasks["t1"].unassignable is not None
