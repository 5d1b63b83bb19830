"""Performance profiles per agent, folded from outcome and health events.

An agent's performance is ``success*0.4 + speed*0.3 + availability*0.2 + (1 - error rate)*0.1``
by default (weights from the pool policy). Success and error rates and the mean duration are
exponentially weighted (``ALPHA``), so recent results count most and the profile moves as results
arrive; availability is the share of registered time the agent was healthy. Everything is derived
from events and their times, so a profile rebuilt from the log is the live one. New agents start
optimistic (success 1, no errors) so that they are tried. Pure; never does I/O.

It lives in projections because both sides use it: the read model serves the profile, and the
coordinator (services) scores agents with the same numbers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from contracts import Envelope
from contracts import event_types as e
from contracts.commands import PerformanceWeights

ALPHA = 0.2  # weight of the newest result in the moving averages
DEFAULT_WEIGHTS = PerformanceWeights()


@dataclass(slots=True)
class Profile:
    agent_id: str
    completed: int = 0
    failed: int = 0  # runs that failed (final or retried), timeouts included
    timeouts: int = 0
    lost: int = 0  # tasks taken away because the agent became unhealthy
    success_rate: float = 1.0
    error_rate: float = 0.0
    mean_duration_s: float | None = None
    up_s: float = 0.0
    down_s: float = 0.0
    healthy: bool = True
    active: bool = True
    since: float | None = None  # time of the last health or registration change

    def availability(self, now: float | None = None) -> float:
        up, down = self.up_s, self.down_s
        if now is not None and self.since is not None and self.active and now > self.since:
            if self.healthy:
                up += now - self.since
            else:
                down += now - self.since
        total = up + down
        return 1.0 if total <= 0 else up / total

    def speed(self, reference_s: float) -> float:
        if self.mean_duration_s is None:
            return 1.0
        return reference_s / (reference_s + self.mean_duration_s)

    def score(self, weights: PerformanceWeights = DEFAULT_WEIGHTS, now: float | None = None) -> float:
        """The performance score in [0, 1] (for weights summing to 1)."""
        return (
            weights.success * self.success_rate
            + weights.time * self.speed(weights.reference_duration_s)
            + weights.availability * self.availability(now)
            + weights.errors * (1.0 - self.error_rate)
        )

    def _clock(self, now: float) -> None:
        if self.since is not None and self.active and now > self.since:
            if self.healthy:
                self.up_s += now - self.since
            else:
                self.down_s += now - self.since
        self.since = now

    def _result(self, ok: bool) -> None:
        self.success_rate += ALPHA * ((1.0 if ok else 0.0) - self.success_rate)
        self.error_rate += ALPHA * ((0.0 if ok else 1.0) - self.error_rate)


# The profile's fields, stored as columns of the same names in the agent_performance table.
PROFILE_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Profile))


def profile_from_row(row: Mapping[Any, Any]) -> Profile:
    """The profile held by a stored agent_performance row."""
    return Profile(**{f: row[f] for f in PROFILE_FIELDS})


def report(
    profile: Profile, weights: PerformanceWeights = DEFAULT_WEIGHTS, now: float | None = None
) -> dict[str, Any]:
    """The figures behind ``GET /v1/agents/{id}/performance``."""
    return {
        "agent_id": profile.agent_id,
        "score": round(profile.score(weights, now), 6),
        "success_rate": round(profile.success_rate, 6),
        "error_rate": round(profile.error_rate, 6),
        "mean_duration_s": None if profile.mean_duration_s is None else round(profile.mean_duration_s, 6),
        "speed": round(profile.speed(weights.reference_duration_s), 6),
        "availability": round(profile.availability(now), 6),
        "completed": profile.completed,
        "failed": profile.failed,
        "timeouts": profile.timeouts,
        "lost": profile.lost,
        "healthy": profile.healthy,
        "weights": weights.model_dump(),
    }


@dataclass
class PerformanceBook:
    """Profiles of every agent of one pool, kept from its events."""

    profiles: dict[str, Profile] = field(default_factory=dict)
    _began: dict[str, tuple[str, float]] = field(default_factory=dict)  # task -> (agent, start time)

    def profile(self, agent_id: str) -> Profile:
        p = self.profiles.get(agent_id)
        if p is None:
            p = self.profiles[agent_id] = Profile(agent_id)
        return p

    def running(self, task_id: str, agent_id: str, since: float) -> None:
        """Note that ``agent_id`` has held ``task_id`` since ``since`` (seconds since the epoch).

        For a book resumed from stored state (the read model) instead of folded from the start:
        what ``observe`` would have remembered from the task's assignment or start.
        """
        self._began[task_id] = (agent_id, since)

    def observe(self, env: Envelope) -> str | None:
        """Fold one event; returns the id of the agent whose score changed, if any."""
        ev = env.data
        if type(ev) not in FOLDED:
            return None
        now = env.time.timestamp()
        match ev:
            case e.AgentRegistered():
                p = self.profile(ev.agent_id)
                p._clock(now)
                p.active, p.healthy = True, True
                return ev.agent_id
            case e.AgentDeregistered():
                p = self.profile(ev.agent_id)
                p._clock(now)
                p.active = False
                return ev.agent_id
            case e.AgentMarkedUnhealthy() | e.AgentMarkedHealthy():
                p = self.profile(ev.agent_id)
                p._clock(now)
                p.healthy = isinstance(ev, e.AgentMarkedHealthy)
                return ev.agent_id
            case e.TaskAssigned():
                self._began[ev.task_id] = (ev.agent_id, now)
            case e.TaskStarted():
                self._began[ev.task_id] = (ev.agent_id, now)
            case e.TaskCompleted():
                began = self._began.pop(ev.task_id, None)
                p = self.profile(ev.agent_id)
                p.completed += 1
                p._result(True)
                if began is not None and began[0] == ev.agent_id:
                    d = max(0.0, now - began[1])
                    p.mean_duration_s = (
                        d
                        if p.mean_duration_s is None
                        else p.mean_duration_s + ALPHA * (d - p.mean_duration_s)
                    )
                return ev.agent_id
            case e.TaskFailed() | e.TaskRetryScheduled():
                self._began.pop(ev.task_id, None)
                if ev.agent_id is None:
                    return None
                p = self.profile(ev.agent_id)
                p.failed += 1
                p._result(False)
                return ev.agent_id
            case e.TaskTimedOut():
                self.profile(ev.agent_id).timeouts += 1  # the failure itself follows
            case e.TaskReassigned():
                self._began.pop(ev.task_id, None)
                p = self.profile(ev.agent_id)
                p.lost += 1
                p.error_rate += ALPHA * (1.0 - p.error_rate)
                return ev.agent_id
            case e.TaskRequeued() | e.TaskCancelled():
                self._began.pop(ev.task_id, None)
            case _:
                pass
        return None


# The event types ``observe`` reads (the rest it ignores).
FOLDED: frozenset[type[Any]] = frozenset(
    {
        e.AgentRegistered,
        e.AgentDeregistered,
        e.AgentMarkedUnhealthy,
        e.AgentMarkedHealthy,
        e.TaskAssigned,
        e.TaskStarted,
        e.TaskCompleted,
        e.TaskFailed,
        e.TaskRetryScheduled,
        e.TaskTimedOut,
        e.TaskReassigned,
        e.TaskRequeued,
        e.TaskCancelled,
    }
)


def profiles_from(events: Iterable[Envelope]) -> PerformanceBook:
    """A book folded over ``events`` (e.g. one pool's history read from the log)."""
    book = PerformanceBook()
    for env in events:
        book.observe(env)
    return book
