"""The pool decider: ``decide(state, command) -> events`` and ``evolve(state, event)``.

What a pool's state is (``state``), the rules that accept or reject each command (``decider``),
capability inference and matching (``capabilities``), retry schedules (``retries``) and how a
decision is wrapped into event envelopes (``envelopes``).

Pure: no I/O, no clock, no randomness. Time comes from the command envelope, so the same history
always yields the same decisions, in the embedded runner, on Kafka workers and in replay. This
package must never import ``events``, ``projections`` or any other ``services`` package.
"""
