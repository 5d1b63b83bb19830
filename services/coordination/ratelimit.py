"""Token buckets per agent and per model (requests/min, tokens/min, concurrent), on event time.

Used by the coordinator to skip limited agents. Deterministic: "now" is always passed in (the
time of the events observed), never read from a clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from contracts import event_types as e


@dataclass(slots=True)
class Bucket:
    """Holds up to ``capacity`` units, refilled at ``rate`` units per second."""

    rate: float
    capacity: float
    level: float
    at: float

    def refill(self, now: float) -> None:
        if now > self.at:
            self.level = min(self.capacity, self.level + (now - self.at) * self.rate)
            self.at = now

    def take(self, now: float, n: float) -> None:
        """Spend ``n`` units (may go below zero: usage reported after the fact still counts)."""
        self.refill(now)
        self.level -= n

    def give(self, now: float, n: float) -> None:
        self.refill(now)
        self.level = min(self.capacity, self.level + n)

    def ready_at(self, now: float, need: float) -> float:
        """When the level reaches ``need`` (``now`` if it already has)."""
        self.refill(now)
        if self.level >= need:
            return now
        return now + (need - self.level) / self.rate


@dataclass(slots=True)
class Limit:
    requests: Bucket | None = None
    tokens: Bucket | None = None
    concurrent: int | None = None


def _bucket(per_min: float | None, now: float) -> Bucket | None:
    if per_min is None:
        return None
    return Bucket(rate=per_min / 60.0, capacity=per_min, level=per_min, at=now)


@dataclass
class RateLimiter:
    """Limits keyed by ("agent", id) or ("model", name)."""

    limits: dict[tuple[str, str], Limit] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.limits)

    def set(self, ev: e.RateLimitSet, now: float) -> None:
        self.limits[(ev.scope, ev.scope_id)] = Limit(
            _bucket(ev.requests_per_min, now), _bucket(ev.tokens_per_min, now), ev.concurrent
        )

    def _keys(self, agent_id: str, model: str | None) -> list[Limit]:
        out = []
        lim = self.limits.get(("agent", agent_id))
        if lim is not None:
            out.append(lim)
        if model is not None:
            lim = self.limits.get(("model", model))
            if lim is not None:
                out.append(lim)
        return out

    def ready_at(self, agent_id: str, model: str | None, now: float) -> float:
        """When the agent may take one more request (``now`` if it may at once)."""
        at = now
        for lim in self._keys(agent_id, model):
            if lim.requests is not None:
                at = max(at, lim.requests.ready_at(now, 1.0))
            if lim.tokens is not None:
                at = max(at, lim.tokens.ready_at(now, math.ulp(1.0)))
        return at

    def concurrency(self, scope: str, scope_id: str | None) -> int | None:
        if scope_id is None:
            return None
        lim = self.limits.get((scope, scope_id))
        return None if lim is None else lim.concurrent

    def on_assign(self, agent_id: str, model: str | None, now: float, n: float = 1.0) -> None:
        for lim in self._keys(agent_id, model):
            if lim.requests is not None:
                lim.requests.take(now, n)

    def on_refund(self, agent_id: str, model: str | None, now: float) -> None:
        for lim in self._keys(agent_id, model):
            if lim.requests is not None:
                lim.requests.give(now, 1.0)

    def on_tokens(self, agent_id: str, model: str | None, tokens: int, now: float) -> None:
        for lim in self._keys(agent_id, model):
            if lim.tokens is not None:
                lim.tokens.take(now, tokens)
