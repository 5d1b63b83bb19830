"""Workflows: durable DAGs of steps, run as ordinary tasks and signals.

- ``machine``: the pure state machine of one run (which steps may start, what a step's end implies
  under the run's failure strategy), shared by the pool decider and the reactor;
- ``reactor``: ``WorkflowReactor``, the process manager that submits each step once its
  dependencies are done (with derived command ids, so a restart never submits twice).

Pure: no I/O, no clock. The definitions and their checks are contracts (``contracts.workflows``);
the runtime drives the reactor beside the coordinator (``services.runtime.coordinator``).
"""

from services.workflows.machine import Run, Settlement, Step, new_run, ready, settle
from services.workflows.reactor import WorkflowReactor

__all__ = ["Run", "Settlement", "Step", "WorkflowReactor", "new_run", "ready", "settle"]
