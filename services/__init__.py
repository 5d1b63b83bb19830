"""agentbus's behaviour, one package per role.

- ``services.domain``: the pure pool decider, its state and rules (no I/O, no clock).
- ``services.coordination``: the coordinator's pure view and choice, strategies, rate limits,
  scaling rules and the timer book (no I/O, no clock).
- ``services.runtime``: settings, topics, the ``Service`` protocol and the factory that opens a
  runtime; the loops that feed the pure parts from the log; the embedded runner and the Kafka
  cluster runtime.
- ``services.http``: the FastAPI application.
- ``services.cli``: the ``agentbus`` command line.
- ``services.bench``: ``agentbus bench``.

Dependencies point inwards: ``domain`` and ``coordination`` import no I/O package of ours;
``runtime``, ``http``, ``cli`` and ``bench`` may import them, never the other way round.
"""
