"""The bench scenario on the ``eventsourcing`` library: the peer ``agentbus bench --compare`` measures
agentbus beside.

The same lifecycle as ``services.bench.scenario.bench_inprocess``, written in the library's own
idioms: ``Bus`` (an ``Application``) holds agents, tasks and costs as ``Aggregate`` s with ``@event``
methods; ``Coordinator`` (a ``ProcessApplication``) follows the bus's notification log and, as a
reaction to each ``Task.Submitted``, assigns the task to the least-loaded capable agent with room
(or queues it until a slot frees); both run in a ``System`` under a ``SingleThreadedRunner``, each on
its own SQLite file (``PERSISTENCE_MODULE=eventsourcing.sqlite``). Simulated agents read the
coordinator's notification log and complete each task assigned to them, recording its cost, in
one save per batch read, as agentbus's bench fleet appends one batch per batch it reads.

The aggregate cache is on, without fast-forwarding nor copying (the library's settings for a single
writer): without it every command would rebuild its aggregate from the store, and the coordinator's
pool (one aggregate, as agentbus's per-pool decider state) would cost O(history) per decision.

Replay rebuilds every aggregate of both applications from their SQLite stores: every stored event
read through the recorder's notification log, decoded by the application's mapper and applied
with the event's own ``mutate``.

This module must never import agentbus's runtime: the peer shares only the scenario's shape.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.application import AggregateNotFoundError, Application, ProcessingEvent
from eventsourcing.dispatch import singledispatchmethod
from eventsourcing.domain import Aggregate, DomainEventProtocol, event
from eventsourcing.persistence import Notification
from eventsourcing.system import NotificationLogReader, ProcessApplication, SingleThreadedRunner, System
from eventsourcing.utils import get_topic

MODEL = "gpt-4o-mini"
SUBMIT_BATCH = 500  # tasks per save, as agentbus's bench appends 500 submissions at a time
READ_SECTION = 2000  # notifications per read of a log (the bench fleet reads up to 2,000 events)


# --- the bus: agents, tasks and costs -----------------------------------------------------------


class Agent(Aggregate):
    """An agent and what it can do."""

    class Registered(Aggregate.Created):
        agent_id: str
        capabilities: list[str]
        capacity: int

    @staticmethod
    def create_id(agent_id: str) -> UUID:
        return uuid5(NAMESPACE_URL, f"/agents/{agent_id}")

    @event(Registered)
    def __init__(self, agent_id: str, capabilities: list[str], capacity: int) -> None:
        self.agent_id = agent_id
        self.capabilities = capabilities
        self.capacity = capacity


class Task(Aggregate):
    """A task from submission to completion."""

    class Submitted(Aggregate.Created):
        task_id: str
        kind: str
        priority: int
        required: list[str]
        data: dict[str, Any]

    class Completed(Aggregate.Event):
        task_id: str
        agent_id: str

    @staticmethod
    def create_id(task_id: str) -> UUID:
        return uuid5(NAMESPACE_URL, f"/tasks/{task_id}")

    @event(Submitted)
    def __init__(self, task_id: str, kind: str, priority: int, required: list[str],
                 data: dict[str, Any]) -> None:
        self.task_id = task_id
        self.kind = kind
        self.priority = priority
        self.required = required
        self.data = data
        self.completed_by: str | None = None

    def complete(self, agent_id: str) -> None:
        """Completed by ``agent_id``; a task is completed once."""
        if self.completed_by is not None:
            raise ValueError(f"task {self.task_id} is already completed")
        self._completed(self.task_id, agent_id)

    @event(Completed)
    def _completed(self, task_id: str, agent_id: str) -> None:
        self.completed_by = agent_id


class Cost(Aggregate):
    """The cost of a model call made for a task."""

    class Recorded(Aggregate.Created):
        cost_id: str
        agent_id: str
        task_id: str
        model: str
        input_tokens: int
        output_tokens: int

    @staticmethod
    def create_id(cost_id: str) -> UUID:
        return uuid5(NAMESPACE_URL, f"/costs/{cost_id}")

    @event(Recorded)
    def __init__(self, cost_id: str, agent_id: str, task_id: str, model: str, input_tokens: int,
                 output_tokens: int) -> None:
        self.cost_id = cost_id
        self.agent_id = agent_id
        self.task_id = task_id
        self.model = model
        self.input_tokens = input_tokens
        self.output_tokens = output_tokens


class Bus(Application[UUID]):
    """The commands: register, submit, complete, record a cost. Each save is one transaction."""

    log_section_size = READ_SECTION

    def register_agents(self, agents: list[tuple[str, list[str], int]]) -> None:
        self.save(*(Agent(agent_id, caps, capacity) for agent_id, caps, capacity in agents))

    def submit_tasks(self, tasks: list[tuple[str, int, list[str]]]) -> None:
        self.save(*(Task(task_id, "summarize", priority, required, {"doc": task_id})
                    for task_id, priority, required in tasks))

    def complete_with_costs(self, done: list[tuple[str, str]]) -> None:
        """Each (task, agent): the task completed by the agent and the cost of its call recorded."""
        out: list[Aggregate] = []
        for task_id, agent_id in done:
            task: Task = self.repository.get(Task.create_id(task_id))
            task.complete(agent_id)
            out.append(task)
            out.append(Cost(f"cost-{task_id}", agent_id, task_id, MODEL, 1200, 300))
        self.save(*out)


# --- the coordinator: assignment as a reaction ----------------------------------------------------


@dataclass(slots=True)
class _Group:
    """The agents of one capability set, by load (only agents with room), first come first."""

    capabilities: frozenset[str]
    by_load: dict[int, dict[str, None]] = field(default_factory=dict)


class Pool(Aggregate):
    """Who has which capabilities, each agent's load, and the tasks waiting for a slot.

    The least-loaded choice is O(capability groups * capacity), not O(agents): agents are kept in
    buckets by load within their capability set, as agentbus's coordinator keeps them in groups.
    """

    class Opened(Aggregate.Created):
        name: str

    class AgentJoined(Aggregate.Event):
        agent_id: str
        capabilities: list[str]
        capacity: int

    class TaskQueued(Aggregate.Event):
        task_id: str
        required: list[str]
        priority: int

    class TaskAssigned(Aggregate.Event):
        task_id: str
        agent_id: str

    class TaskReleased(Aggregate.Event):
        task_id: str
        agent_id: str

    @staticmethod
    def create_id(name: str) -> UUID:
        return uuid5(NAMESPACE_URL, f"/pools/{name}")

    @event(Opened)
    def __init__(self, name: str) -> None:
        self.name = name
        self.capabilities: dict[str, frozenset[str]] = {}
        self.capacity: dict[str, int] = {}
        self.load: dict[str, int] = {}
        self.group_of: dict[str, _Group] = {}
        self.groups: dict[frozenset[str], _Group] = {}
        self.eligible: dict[frozenset[str], list[_Group]] = {}
        # Waiting tasks by requirement: a heap of (-priority, arrival, task id) each.
        self.queues: dict[frozenset[str], list[tuple[int, int, str]]] = {}
        self.waiting: dict[str, frozenset[str]] = {}  # task -> its queue
        self.arrivals = 0

    # decisions

    def submit(self, task_id: str, required: list[str], priority: int) -> None:
        """Assign ``task_id`` to the least-loaded capable agent with room, or queue it."""
        agent = self._least_loaded(frozenset(required))
        if agent is None:
            self._queued(task_id, required, priority)
        else:
            self._assigned(task_id, agent)

    def release(self, task_id: str, agent_id: str) -> None:
        """``agent_id`` finished ``task_id``: its slot goes to the best waiting task it can take."""
        self._released(task_id, agent_id)
        caps = self.capabilities[agent_id]
        best: tuple[int, int, str] | None = None
        best_req: frozenset[str] | None = None
        for req, heap in self.queues.items():
            if heap and req <= caps and (best is None or heap[0] < best):
                best, best_req = heap[0], req
        if best is not None and best_req is not None:
            agent = self._least_loaded(best_req)
            if agent is not None:
                self._assigned(best[2], agent)  # takes it off the head of its queue

    def _least_loaded(self, required: frozenset[str]) -> str | None:
        groups = self.eligible.get(required)
        if groups is None:
            groups = self.eligible[required] = [g for g in self.groups.values() if required <= g.capabilities]
        best: tuple[int, str] | None = None
        for group in groups:
            for load in sorted(group.by_load):
                bucket = group.by_load[load]
                if bucket:
                    if best is None or load < best[0]:
                        best = (load, next(iter(bucket)))
                    break
        return None if best is None else best[1]

    # events: the state they leave (run again, in order, by a replay)

    @event(AgentJoined)
    def join(self, agent_id: str, capabilities: list[str], capacity: int) -> None:
        caps = frozenset(capabilities)
        group = self.groups.get(caps)
        if group is None:
            group = self.groups[caps] = _Group(caps)
            self.eligible.clear()
        self.capabilities[agent_id] = caps
        self.capacity[agent_id] = capacity
        self.load[agent_id] = 0
        self.group_of[agent_id] = group
        if capacity > 0:
            group.by_load.setdefault(0, {})[agent_id] = None

    @event(TaskQueued)
    def _queued(self, task_id: str, required: list[str], priority: int) -> None:
        self.arrivals += 1
        req = self.waiting[task_id] = frozenset(required)
        heapq.heappush(self.queues.setdefault(req, []), (-priority, self.arrivals, task_id))

    @event(TaskAssigned)
    def _assigned(self, task_id: str, agent_id: str) -> None:
        req = self.waiting.pop(task_id, None)
        if req is not None:  # a waiting task is only ever assigned from the head of its queue
            heapq.heappop(self.queues[req])
        self._move(agent_id, +1)

    @event(TaskReleased)
    def _released(self, task_id: str, agent_id: str) -> None:
        self._move(agent_id, -1)

    def _move(self, agent_id: str, by: int) -> None:
        group, load = self.group_of[agent_id], self.load[agent_id]
        group.by_load.get(load, {}).pop(agent_id, None)
        self.load[agent_id] = load = load + by
        if load < self.capacity[agent_id]:
            group.by_load.setdefault(load, {})[agent_id] = None


POOL = "bench"


class Coordinator(ProcessApplication[UUID]):
    """Follows the bus: an agent registered joins the pool; a task submitted is assigned (or
    queued); a task completed frees its agent's slot. Each reaction is recorded with the position
    it processed, in one transaction."""

    log_section_size = READ_SECTION
    pull_section_size = READ_SECTION
    topics = (get_topic(Agent.Registered), get_topic(Task.Submitted), get_topic(Task.Completed))

    def pool(self) -> Pool:
        try:
            pool: Pool = self.repository.get(Pool.create_id(POOL))
        except AggregateNotFoundError:
            pool = Pool(POOL)
        return pool

    @singledispatchmethod
    def policy(self, domain_event: DomainEventProtocol[UUID],
               processing_event: ProcessingEvent[UUID]) -> None:
        """Events the coordinator does not react to."""

    @policy.register
    def _(self, domain_event: Agent.Registered, processing_event: ProcessingEvent[UUID]) -> None:
        pool = self.pool()
        pool.join(domain_event.agent_id, domain_event.capabilities, domain_event.capacity)
        processing_event.collect_events(pool)

    @policy.register
    def _(self, domain_event: Task.Submitted, processing_event: ProcessingEvent[UUID]) -> None:
        pool = self.pool()
        pool.submit(domain_event.task_id, domain_event.required, domain_event.priority)
        processing_event.collect_events(pool)

    @policy.register
    def _(self, domain_event: Task.Completed, processing_event: ProcessingEvent[UUID]) -> None:
        pool = self.pool()
        pool.release(domain_event.task_id, domain_event.agent_id)
        processing_event.collect_events(pool)


SYSTEM = System(pipes=[[Bus, Coordinator]])


# --- the scenario -------------------------------------------------------------------------------


def environment(directory: Path) -> dict[str, str]:
    """The applications' settings: SQLite files in ``directory``, one per application (the
    library names its tables the same in every application)."""
    return {
        "PERSISTENCE_MODULE": "eventsourcing.sqlite",
        "BUS_SQLITE_DBNAME": str(directory / "bus.sqlite"),
        "COORDINATOR_SQLITE_DBNAME": str(directory / "coordinator.sqlite"),
        "AGGREGATE_CACHE_MAXSIZE": "0",  # unbounded
        "AGGREGATE_CACHE_FASTFORWARD": "n",
        "DEEPCOPY_FROM_AGGREGATE_CACHE": "n",
    }


def agent_specs(agents: int) -> list[tuple[str, list[str], int]]:
    """The bench's agents: odd ones can also code; capacity 4 each."""
    return [(f"a{i}", ["text", "code"] if i % 2 else ["text"], 4) for i in range(agents)]


def task_spec(i: int) -> tuple[str, int, list[str]]:
    """The bench's i-th task: every third needs code, the rest text; priority 1..10."""
    return (f"t{i}", 1 + i % 10, ["code"] if i % 3 == 0 else ["text"])


def _new_assignments(reader: NotificationLogReader, after: int, coordinator: Coordinator,
                     ) -> Iterator[tuple[int, list[tuple[str, str]]]]:
    """(last position read, [(task, agent)]) per section of the coordinator's log after ``after``."""
    topic = get_topic(Pool.TaskAssigned)
    for section in reader.select(start=after, topics=[topic], inclusive_of_start=False):
        done: list[tuple[str, str]] = []
        for note in section:
            ev = coordinator.mapper.to_domain_event(note)
            assert isinstance(ev, Pool.TaskAssigned)
            done.append((ev.task_id, ev.agent_id))
        yield section[-1].id, done


def run_lifecycle(directory: Path, agents: int, tasks: int) -> dict[str, Any]:
    """Register ``agents``, then ``tasks`` through submit -> assign -> complete -> cost; wall clock
    until every cost is recorded. ``directory`` receives the SQLite files (it must hold none)."""
    runner: SingleThreadedRunner[UUID] = SingleThreadedRunner(SYSTEM, env=environment(directory))
    runner.start()
    try:
        bus, coordinator = runner.get(Bus), runner.get(Coordinator)
        reader = NotificationLogReader(coordinator.notification_log, section_size=READ_SECTION)
        position, completed = 0, 0

        def fleet() -> None:
            nonlocal position, completed
            for last, done in _new_assignments(reader, position, coordinator):
                position = last
                if done:
                    bus.complete_with_costs(done)
                    completed += len(done)

        t0 = time.perf_counter()
        specs = agent_specs(agents)
        for i in range(0, agents, 1000):
            bus.register_agents(specs[i:i + 1000])
        for i in range(0, tasks, SUBMIT_BATCH):
            bus.submit_tasks([task_spec(j) for j in range(i, min(tasks, i + SUBMIT_BATCH))])
            fleet()
        while completed < tasks:
            before = completed
            fleet()
            if completed == before:
                raise RuntimeError(f"the peer stalled: {completed} of {tasks} tasks completed")
        elapsed = time.perf_counter() - t0
    finally:
        runner.stop()
    commands = agents + tasks * 4  # register; submit, assign, complete, cost
    return {
        "agents": agents,
        "tasks": tasks,
        "commands": commands,
        "seconds": round(elapsed, 3),
        "commands_per_s": round(commands / elapsed, 1),
    }


def stored_notifications(app: Application[UUID]) -> Iterator[Notification]:
    """Every event ``app`` stored, in order, read through its notification log."""
    reader = NotificationLogReader(app.notification_log, section_size=READ_SECTION)
    for section in reader.select(start=1):
        yield from section


def replay(directory: Path) -> tuple[dict[UUID, Aggregate], int]:
    """Every aggregate of both applications rebuilt from the SQLite stores in ``directory``, and
    the number of events applied."""
    env = environment(directory)
    aggregates: dict[UUID, Aggregate] = {}
    events = 0
    for cls in (Bus, Coordinator):
        app = cls(env=env)
        try:
            for note in stored_notifications(app):
                ev = app.mapper.to_domain_event(note)
                aggregates[ev.originator_id] = ev.mutate(aggregates.get(ev.originator_id))  # type: ignore[attr-defined]
                events += 1
        finally:
            app.close()
    return aggregates, events


def bench_peer(directory: Path, agents: int, tasks: int) -> dict[str, Any]:
    """The lifecycle, then a replay of what it stored: commands/s end to end, replay events/s."""
    result = run_lifecycle(directory, agents, tasks)
    t0 = time.perf_counter()
    _, events = replay(directory)
    replay_s = time.perf_counter() - t0
    result["replay_events"] = events
    result["replay_events_per_s"] = round(events / replay_s, 1) if replay_s else 0.0
    return result
