"""The coordinator reactor over every pool of the partitions it reads.

It keeps one ``PoolView`` per pool (``view``: built from events through ``handlers``) and asks
each, after a batch of events, what to issue (``choice``): ``AssignTask`` with a selection audit,
``MarkTaskUnassignable``, ``DeferTask`` and the scaler's ``DecideScaling``.

The decider has the last word: an assignment that became invalid in flight is rejected, and the
coordinator takes the rejection back into its view. Deterministic: "now" is the latest event time
of a pool, never the wall clock, which is read only to measure the audit's ``decision_us``.
Never does I/O: the runtime (``services.runtime.coordinator``) feeds events in and appends what
comes out.
"""

from __future__ import annotations

from contracts import Envelope
from services.coordination.choice import AUDIT_TOP, RATE_LIMITED, STRATEGY, Assignment
from services.coordination.view import PoolView

__all__ = ["AUDIT_TOP", "RATE_LIMITED", "STRATEGY", "Assignment", "Coordinator", "PoolView"]


class Coordinator:
    """The reactor over all pools of the partitions it reads."""

    def __init__(self) -> None:
        self.views: dict[str, PoolView] = {}

    def view(self, pool: str) -> PoolView:
        v = self.views.get(pool)
        if v is None:
            v = self.views[pool] = PoolView(pool)
        return v

    def observe(self, env: Envelope) -> None:
        self.view(env.pool).observe(env)

    def compact(self) -> None:
        """After a fold of history: see ``PoolView.compact``."""
        for v in self.views.values():
            v.compact()

    def schedule(self) -> list[Assignment]:
        out: list[Assignment] = []
        for v in self.views.values():
            if v.work or v.to_mark or v.limited or v.scaler.out:
                out.extend(v.schedule())
        return out
