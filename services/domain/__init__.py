"""The pool decider: ``decide(state, command) -> events`` and ``evolve(state, event)``.

``decider`` dispatches each command by its type to one handler, found in the module of its family:
``agents``, ``tasks``, ``resources``, ``budgets`` (costs, budgets and prices), ``policies`` and
``timers`` and ``workflows`` (runs, their steps' starts and ends), which share the lookups, the
rejection and the decision builder of ``decision``.
``evolution`` folds events into the ``state`` of a pool the same way, one handler per event type.
Around them: the built-in model prices and how a pool's prices price a call (``prices``),
capability inference and matching (``capabilities``), retry schedules (``retries``) and how a decision is
wrapped into event envelopes (``envelopes``).

Pure: no I/O, no clock, no randomness. Time comes from the command envelope, so the same history
always yields the same decisions, in the embedded runner, on Kafka workers and in replay. This
package must never import ``events``, ``projections`` or any ``services`` package that does I/O;
the one it shares is the pure workflow state machine (``services.workflows.machine``).
"""

from services.domain.decider import DeciderConfig, Rejected, decide, evolve
from services.domain.envelopes import event_envelopes, rejection
from services.domain.state import PoolState

__all__ = [
    "DeciderConfig",
    "PoolState",
    "Rejected",
    "decide",
    "event_envelopes",
    "evolve",
    "rejection",
]
