"""What the coordinator's view remembers of each agent, task, capability group and task queue.

Plain mutable records, private to ``services.coordination``: ``view`` keeps them indexed,
``handlers`` updates them from events, ``choice`` reads them to pick. They hold no logic beyond
what an agent's own fields say (its free room, whether it may take a task now); never I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field


def pin(agent_id: str) -> str:
    """The capability only ``agent_id`` has: a task pinned to it requires it (``SubmitTask.agent_id``).

    Only agents some task was pinned to carry theirs, so every other agent keeps sharing its
    capability group (one group per distinct capability set is what keeps a choice cheap)."""
    return f"@{agent_id}"


@dataclass(frozen=True, slots=True)
class Waiting:
    """Why a queued task cannot be assigned now, other than all capable agents being busy."""

    code: str
    scope: str | None = None
    scope_id: str | None = None
    agents: tuple[str, ...] = ()
    until: float | None = None  # event time, seconds


@dataclass(slots=True)
class Agent:
    """One registered agent as the coordinator counts it (held tasks plus assignments in flight)."""

    agent_id: str
    caps: frozenset[str]
    capacity: int
    load: int = 0
    active: bool = True
    version: int = 0  # bumped on every change: heap entries of older versions are stale
    kind: str = "generic"
    weight: float = 1.0
    model: str | None = None
    healthy: bool = True
    breaker: str = "closed"
    cpu: float | None = None
    memory: float | None = None
    picked: int = 0  # round robin: when it was last given a task
    order: int = 0  # registration order
    perf: float = 1.0  # performance score when last refreshed
    limit: int | None = None  # concurrency limit (rate limits)
    reopen_at: float = 0.0  # when an open breaker half-opens (event time, seconds)
    # Tokens reserved for a run whose task names no max_tokens (None: it calls no model we know
    # of, so nothing is reserved; ratelimit.max_tokens_default).
    max_tokens: int | None = None

    @property
    def room(self) -> int:
        cap = self.capacity if self.limit is None else min(self.capacity, self.limit)
        return cap - self.load

    def available(self) -> bool:
        if not (self.active and self.healthy and self.room > 0):
            return False
        if self.breaker == "closed":
            return True
        return self.breaker == "half_open" and self.load == 0  # one trial task at a time


@dataclass(slots=True)
class Task:
    """One submitted task and where the coordinator's own commands about it stand."""

    task_id: str
    req: frozenset[str]
    priority: int
    arrival: int
    correlation: str | None
    workflow: str | None = None
    status: str = "queued"  # queued | held | waiting (retry backoff) | done
    agent_id: str | None = None  # holder, once assigned
    pending: tuple[str, str] | None = None  # (command id, agent id) of an assignment in flight
    assigned: int = 0
    rejected: int = 0
    qversion: int = 0
    strategy: str | None = None
    preferred: frozenset[str] = frozenset()
    flagged: bool = False  # marked unassignable (until assigned)
    marks: int = 0
    marking: str | None = None  # MarkTaskUnassignable in flight
    deferred: int = 0
    deferring: str | None = None  # DeferTask in flight
    kind: str | None = None  # the agent kind its data names (scaling)
    # Why it waits, as last put on the log (None: the default, all capable agents busy), and the
    # NoteTaskWaiting commands seen back and still in flight (their ids count them).
    waiting: Waiting | None = None
    notes: int = 0
    noting: int = 0
    # Its model call's size as its parameters say (ratelimit.call_tokens): the prompt's tokens and
    # the max_tokens it asks for (None: the agent's default).
    prompt_tokens: int = 0
    max_tokens: int | None = None

    def tokens(self, default: int | None) -> int:
        """Tokens to reserve for a run on an agent whose default max tokens is ``default`` (0: none,
        the agent calls no model we know of): ``ratelimit.estimate_tokens`` of its parameters."""
        if default is None:
            return 0
        return self.prompt_tokens + (default if self.max_tokens is None else self.max_tokens)


@dataclass(slots=True)
class Group:
    """Agents sharing one capability set; a lazy heap of (load ratio, agent id, version), and one
    more per other strategy in use: (key, agent id, version)."""

    caps: frozenset[str]
    heap: list[tuple[float, str, int]] = field(default_factory=list)
    size: int = 0
    heaps: dict[str, list[tuple[object, str, int]]] = field(default_factory=dict)
    limited: int = 0  # its agents waiting for a rate limit
    members: set[str] = field(default_factory=set)  # active agents with these capabilities


@dataclass(slots=True)
class Queue:
    """Queued tasks sharing one required-capability set: (-priority, arrival, id, version)."""

    req: frozenset[str]
    heap: list[tuple[int, int, str, int]] = field(default_factory=list)
    # Why its tasks wait, as last noted (None: all capable agents busy), and the tasks queued or
    # given another reason since, whose reason the next look at the queue must check.
    waiting: Waiting | None = None
    fresh: list[Task] = field(default_factory=list)
