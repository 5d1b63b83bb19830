"""Token buckets per agent and per model (requests/min, tokens/min, concurrent), on event time.

Used by the coordinator to skip limited agents. A run of a model call is paid for twice over:
ahead, by reserving its estimated tokens (``estimate_tokens``) when it is assigned, and after, by
settling the reservation against the usage its ``CostRecorded`` reports (the net spend is the real
usage). So a burst of calls is spread out by estimate instead of all overshooting a provider's
tokens-per-minute limit before the first usage comes back.

Deterministic: "now" is always passed in (the time of the events observed), never read from a
clock. Bucket levels change only as events are folded in (``reserve`` on ``TaskAssigned``,
``settle``, ``release``), never when the coordinator issues a command: what it has asked for and
not yet seen on the log is ``held`` beside the level. A view rebuilt from the log therefore holds
the very same buckets as the live one. Never does I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from contracts import event_types as e
from contracts.money import MAX_TOKENS

# The completion budget reserved for a call whose task and agent name none.
DEFAULT_MAX_TOKENS = 1000
# Characters per token of the prompt estimate: about what English text averages with the common
# tokenizers; most other text has more tokens per character, which the max-tokens part outweighs.
CHARS_PER_TOKEN = 4

Key = tuple[str, str]  # ("agent", agent id) or ("model", model name)
_ANY = math.ulp(1.0)  # what a token bucket must hold for a call of no estimate: more than nothing


# -- how many tokens a call may use --------------------------------------------------------------
def estimate_tokens(parameters: Mapping[str, Any] | None, max_tokens_default: int) -> int:
    """The tokens a model call with ``parameters`` may use at most, as reserved before it runs.

    ``ceil(chars / 4) + max_tokens``: ``chars`` counts the characters of ``prompt``, ``system``
    and the ``content`` of each of ``messages`` (strings, or the text parts of a list of parts);
    ``max_tokens`` is the parameters' own if a positive integer, else ``max_tokens_default``.
    A deliberate over-estimate (the call rarely writes all the tokens it may): the usage its
    ``CostRecorded`` reports settles the reservation. Any JSON is accepted; what is not text of
    a known field counts nothing, and nothing raises.
    """
    prompt, asked = call_tokens(parameters)
    return prompt + (max_tokens_default if asked is None else asked)


def call_tokens(parameters: object) -> tuple[int, int | None]:
    """The two parts of ``estimate_tokens``: the prompt's tokens, and the ``max_tokens`` the call
    asks for (None: it names none). Kept apart because the default depends on the agent."""
    if not isinstance(parameters, Mapping):
        return 0, None
    chars = _text(parameters.get("prompt")) + _text(parameters.get("system"))
    messages = parameters.get("messages")
    if isinstance(messages, list | tuple):
        for message in messages:
            chars += _text(message.get("content")) if isinstance(message, Mapping) else _text(message)
    return -(-chars // CHARS_PER_TOKEN), _positive(parameters.get("max_tokens"))


def max_tokens_default(metadata: Mapping[str, Any]) -> int | None:
    """What an agent reserves for a call whose task names no ``max_tokens``: its registration's
    ``metadata["max_tokens"]``, else ``DEFAULT_MAX_TOKENS`` if it names a ``model``. None: it calls
    no model we know of, so its tasks reserve nothing (their usage is only taken after the fact)."""
    own = _positive(metadata.get("max_tokens"))
    if own is not None:
        return own
    return DEFAULT_MAX_TOKENS if isinstance(metadata.get("model"), str) else None


def _positive(value: object) -> int | None:
    # bool is an int to Python, never a token count; no call may use more than a recorded cost can
    # say (and a huge JSON integer would not fit the buckets' floats).
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return min(value, MAX_TOKENS)
    return None


def _text(value: object) -> int:
    """Characters of text in a content value: a string, a text part, or the text parts of a list."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, Mapping):
        text = value.get("text")
        return len(text) if isinstance(text, str) else 0
    if isinstance(value, list | tuple):
        return sum(_text(part) for part in value if isinstance(part, str | Mapping))
    return 0


# -- buckets -------------------------------------------------------------------------------------
@dataclass(slots=True)
class Bucket:
    """Holds up to ``capacity`` units, refilled at ``rate`` units per second.

    ``level`` is as of ``at``; it changes only by ``take`` and ``give`` (events), so reading it
    (``level_at``, ``ready_at``) never changes the state. ``held``: units promised to commands in
    flight, not yet taken (they are once their event is on the log)."""

    rate: float
    capacity: float
    level: float
    at: float
    held: float = 0.0

    def level_at(self, now: float) -> float:
        if now > self.at:
            return min(self.capacity, self.level + (now - self.at) * self.rate)
        return self.level

    def take(self, now: float, n: float) -> None:
        """Spend ``n`` units (may go below zero: usage reported after the fact still counts)."""
        self.level = self.level_at(now) - n
        self.at = max(self.at, now)

    def give(self, now: float, n: float) -> None:
        self.level = min(self.capacity, self.level_at(now) + n)
        self.at = max(self.at, now)

    def ready_at(self, now: float, need: float) -> float:
        """When ``need`` units are free beside those held (``now`` if they already are)."""
        level = self.level  # level_at, inlined: called for every agent a choice looks at
        if now > self.at:
            level = min(self.capacity, level + (now - self.at) * self.rate)
        free = level - self.held
        if free >= need:
            return now
        return now + (need - free) / self.rate


@dataclass(slots=True)
class Limit:
    requests: Bucket | None = None
    tokens: Bucket | None = None
    concurrent: int | None = None


@dataclass(frozen=True, slots=True)
class Hold:
    """What an assignment in flight was promised: a request, and its estimate in token buckets."""

    requests: tuple[Bucket, ...]
    tokens: tuple[Bucket, ...]
    estimate: float


@dataclass(frozen=True, slots=True)
class Reservation:
    """The estimate taken from the token buckets of the agent running a task, until settled."""

    agent_id: str
    tokens: float
    buckets: tuple[tuple[Key, Bucket], ...]


def _bucket(per_min: float | None, now: float) -> Bucket | None:
    if per_min is None:
        return None
    return Bucket(rate=per_min / 60.0, capacity=per_min, level=per_min, at=now)


@dataclass
class RateLimiter:
    """Limits keyed by ("agent", id) or ("model", name), and the reservations of running tasks."""

    limits: dict[Key, Limit] = field(default_factory=dict)
    holds: dict[str, Hold] = field(default_factory=dict)  # task id -> assignment in flight
    reservations: dict[str, Reservation] = field(default_factory=dict)  # task id -> its run's
    # Keys whose token buckets got units back since the coordinator last looked: agents it parked
    # waiting for them may be free sooner than it thought.
    freed: set[Key] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.limits)

    def set(self, ev: e.RateLimitSet, now: float) -> None:
        # Reservations and holds keep their former buckets: what they give back goes there (to no
        # effect), never into the new, full bucket that never gave it.
        self.limits[(ev.scope, ev.scope_id)] = Limit(
            _bucket(ev.requests_per_min, now), _bucket(ev.tokens_per_min, now), ev.concurrent
        )

    def _limits(self, agent_id: str, model: str | None) -> list[tuple[Key, Limit]]:
        out = []
        key = ("agent", agent_id)
        lim = self.limits.get(key)
        if lim is not None:
            out.append((key, lim))
        if model is not None:
            key = ("model", model)
            lim = self.limits.get(key)
            if lim is not None:
                out.append((key, lim))
        return out

    def ready_at(self, agent_id: str, model: str | None, now: float, tokens: float = 0.0) -> float:
        """When the agent may take one more request estimated at ``tokens`` (``now``: at once).

        With no estimate (0) a token bucket only has to be above zero."""
        at = now
        limits = self.limits
        for lim in (limits.get(("agent", agent_id)), None if model is None else limits.get(("model", model))):
            if lim is None:
                continue
            b = lim.requests
            if b is not None:
                at = max(at, b.ready_at(now, 1.0))
            b = lim.tokens
            if b is not None:
                # An estimate beyond what the bucket can ever hold waits for a full bucket, not
                # for ever (else such a task could never run); its run overdraws the bucket and
                # the refill pays the debt before the next run.
                need = (tokens if tokens < b.capacity else b.capacity) if tokens > 0 else _ANY
                at = max(at, b.ready_at(now, need))
        return at

    def concurrency(self, scope: str, scope_id: str | None) -> int | None:
        if scope_id is None:
            return None
        lim = self.limits.get((scope, scope_id))
        return None if lim is None else lim.concurrent

    # -- an assignment issued, confirmed or rejected ------------------------------------------
    def hold(self, task_id: str, agent_id: str, model: str | None, tokens: float) -> None:
        """The coordinator asked for ``task_id`` on ``agent_id``: hold its request and estimate,
        so the next choices see them spent before the assignment is on the log."""
        self.unhold(task_id)
        limits = self._limits(agent_id, model)
        requests = tuple(lim.requests for _, lim in limits if lim.requests is not None)
        buckets = tuple(lim.tokens for _, lim in limits if lim.tokens is not None) if tokens > 0 else ()
        if not (requests or buckets):
            return
        for b in requests:
            b.held += 1.0
        for b in buckets:
            b.held += tokens
        self.holds[task_id] = Hold(requests, buckets, tokens)

    def unhold(self, task_id: str) -> bool:
        """The assignment in flight for ``task_id`` was answered: its hold goes (True if any)."""
        h = self.holds.pop(task_id, None)
        if h is None:
            return False
        for b in h.requests:
            b.held = max(0.0, b.held - 1.0)
        for b in h.tokens:
            b.held = max(0.0, b.held - h.estimate)
        return True

    def rejected(self, task_id: str, agent_id: str, model: str | None) -> None:
        """The assignment was rejected: what it held is free again."""
        if self.unhold(task_id):
            self.freed.update(key for key, _ in self._limits(agent_id, model))

    def reserve(self, task_id: str, agent_id: str, model: str | None, tokens: float, now: float) -> None:
        """``TaskAssigned`` (live or replayed, alike): take a request, and reserve ``tokens`` in the
        agent's token buckets until the run's cost settles them or the run ends without one."""
        self.unhold(task_id)
        self.release(task_id, now)  # a former run's, had its end not been seen
        limits = self._limits(agent_id, model)
        for _, lim in limits:
            if lim.requests is not None:
                lim.requests.take(now, 1.0)
        if tokens <= 0:
            return
        buckets = tuple((key, lim.tokens) for key, lim in limits if lim.tokens is not None)
        for _, b in buckets:
            b.take(now, tokens)
        if buckets:
            self.reservations[task_id] = Reservation(agent_id, tokens, buckets)

    # -- a run's tokens settled ----------------------------------------------------------------
    def release(self, task_id: str, now: float) -> None:
        """The run ended or left its agent with no cost recorded: its reservation comes back."""
        r = self.reservations.pop(task_id, None)
        if r is not None:
            for key, b in r.buckets:
                b.give(now, r.tokens)
                self.freed.add(key)

    def settle(self, task_id: str | None, agent_id: str, model: str, tokens: int, now: float) -> None:
        """``CostRecorded``: the reservation of the task's run (if this agent's) comes back and the
        real ``tokens`` are taken; a cost of no task or of no reservation is only taken."""
        limits = self._limits(agent_id, model)
        r = self.reservations.get(task_id) if task_id is not None else None
        if task_id is not None and r is not None and r.agent_id == agent_id:
            del self.reservations[task_id]
            taken = {key for key, lim in limits if lim.tokens is not None}
            for key, b in r.buckets:
                b.give(now, r.tokens)
                if r.tokens > tokens or key not in taken:  # less spent there than reserved
                    self.freed.add(key)
        for _, lim in limits:
            if lim.tokens is not None:
                lim.tokens.take(now, tokens)
