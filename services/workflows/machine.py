"""The workflow state machine: one run's steps, which may start now, and what a step's end implies.

Shared by the pool decider (which records the run and settles it in the same decision as the
step's outcome) and the workflow reactor (which submits the steps that may start). Both build a
``Run`` from ``WorkflowStarted``'s definition snapshot and move its steps with ``set_status``, so
they agree by construction.

Rules, per ``failure_strategy``, once a step has failed for good (a failed or cancelled task, a
signal that timed out, a step that could not be submitted):

- ``stop_on_first_failure``: open steps are cancelled, pending ones skipped, the run fails;
- ``continue_on_failure``: the failed step's dependents (transitively) are skipped, independent
  branches go on; the run fails once every step has ended;
- ``partial_completion_allowed``: as above, but the run ends ``partially_completed`` when at
  least one step completed (``failed`` when none did);
- a step with ``continue_on_failure: true`` counts as done for its dependents and never fails the
  run.

Pure: no I/O, no clock; a run is a plain record changed only through ``set_status``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# A step that has not ended, by status.
OPEN = frozenset({"queued", "assigned", "running", "retrying", "waiting"})
ENDED = frozenset({"completed", "failed", "cancelled", "skipped"})
FAILED = frozenset({"failed", "cancelled"})
RUN_OPEN = frozenset({"queued", "running"})


@dataclass(slots=True)
class Step:
    """One step of a run, as far as the state machine cares."""

    name: str
    kind: str  # task | signal
    depends_on: tuple[str, ...]
    tolerated: bool  # continue_on_failure: a failure is not the run's
    timeout: float | None
    status: str = "pending"
    signal: dict[str, Any] | None = None  # a signal delivered before the step waited for it

    @property
    def done(self) -> bool:
        """Its dependents may start: it completed, or it failed and that is tolerated."""
        return self.status == "completed" or (self.tolerated and self.status in FAILED)

    @property
    def failed(self) -> bool:
        """It failed in a way that counts against the run."""
        return self.status in FAILED and not self.tolerated


@dataclass(slots=True)
class Run:
    """One workflow run: its steps in definition order and how they may run together."""

    workflow_id: str
    name: str
    strategy: str
    cap: int  # steps in flight at most (1 without parallel_execution)
    timeout: float | None
    steps: dict[str, Step]
    status: str = "queued"
    in_flight: int = 0
    ended: int = 0

    @property
    def open(self) -> bool:
        return self.status in RUN_OPEN


def new_run(workflow_id: str, definition: dict[str, Any]) -> Run:
    """A run of ``definition`` (a ``WorkflowStarted`` snapshot: every field present), all pending.

    Reads the snapshot's fields directly rather than validating it again: the command that
    started the run was validated, and this runs on every replay."""
    steps = {}
    for s in definition["tasks"]:
        steps[s["name"]] = Step(
            s["name"],
            s.get("type", "task"),
            tuple(s.get("depends_on", ())),
            bool(s.get("continue_on_failure", False)),
            s.get("timeout"),
        )
    parallel = definition.get("parallel_execution", True)
    return Run(
        workflow_id,
        definition["name"],
        definition.get("failure_strategy", "stop_on_first_failure"),
        int(definition.get("max_parallel", 10)) if parallel else 1,
        definition.get("global_timeout"),
        steps,
    )


def set_status(run: Run, step: Step, status: str) -> None:
    """Move ``step`` to ``status``, keeping the run's counts of open and ended steps."""
    before = step.status
    if before == status:
        return
    run.in_flight += (status in OPEN) - (before in OPEN)
    run.ended += (status in ENDED) - (before in ENDED)
    step.status = status
    if status in OPEN and run.status == "queued":
        run.status = "running"


def ready(run: Run, starting: set[str] | frozenset[str] = frozenset()) -> list[Step]:
    """The pending steps whose dependencies are done, in definition order, within the run's cap
    (``starting``: steps whose start is in flight, which count against it)."""
    if not run.open:
        return []
    room = run.cap - run.in_flight - len(starting)
    out: list[Step] = []
    if room <= 0:
        return out
    steps = run.steps
    for step in steps.values():
        if (
            step.status == "pending"
            and step.name not in starting
            and all(steps[d].done for d in step.depends_on)
        ):
            out.append(step)
            if len(out) == room:
                break
    return out


def may_start(run: Run, step: Step) -> str | None:
    """Why ``step`` may not start now (None: it may)."""
    if not run.open:
        return f"workflow {run.workflow_id!r} is {run.status}"
    if step.status != "pending":
        return f"step {step.name!r} is {step.status}"
    waiting = [d for d in step.depends_on if not run.steps[d].done]
    if waiting:
        return f"step {step.name!r} waits for {', '.join(waiting)}"
    if run.in_flight >= run.cap:
        return f"workflow {run.workflow_id!r} has {run.in_flight} steps in flight, its limit"
    return None


@dataclass(slots=True)
class Settlement:
    """What follows from steps ending: steps to cancel (open ones) or skip (with why), and the
    run's final status when it is over."""

    cancel: list[Step] = field(default_factory=list)
    skip: list[tuple[Step, str]] = field(default_factory=list)
    final: str | None = None
    reason: str | None = None
    counts: tuple[int, int, int] = (0, 0, 0)  # completed, failed, skipped


def settle(run: Run, changed: dict[str, str]) -> Settlement:
    """What follows once the steps in ``changed`` have the statuses given (the run's own steps
    otherwise), under the run's failure strategy. Changes nothing."""
    out = Settlement()
    if not run.open:
        return out
    status = {name: s.status for name, s in run.steps.items()}
    status.update(changed)
    steps = run.steps

    def failed(name: str) -> bool:
        return status[name] in FAILED and not steps[name].tolerated

    first = next((n for n in changed if failed(n)), None)
    if first is not None and run.strategy == "stop_on_first_failure":
        why = f"workflow stopped: step {first} failed"
        for name, st in status.items():
            if st in OPEN and name not in changed:
                if steps[name].kind == "task":
                    out.cancel.append(steps[name])
                else:
                    out.skip.append((steps[name], why))
                status[name] = "cancelled"
            elif st == "pending":
                out.skip.append((steps[name], why))
                status[name] = "skipped"
        return _final(run, status, out, f"step {first} failed")
    # Skip what can no longer run: a pending step with a dependency that failed or was skipped.
    # Definition order need not be topological, so go round until nothing changes.
    moved = True
    while moved:
        moved = False
        for name, step in steps.items():
            if status[name] != "pending":
                continue
            blocker = next((d for d in step.depends_on if failed(d) or status[d] == "skipped"), None)
            if blocker is not None:
                word = "was skipped" if status[blocker] == "skipped" else "failed"
                out.skip.append((step, f"dependency {blocker} {word}"))
                status[name] = "skipped"
                moved = True
    if all(st in ENDED for st in status.values()):
        culprit = next((n for n, st in status.items() if failed(n)), None)
        return _final(run, status, out, None if culprit is None else f"step {culprit} failed")
    return out


def stop(run: Run, why: str) -> Settlement:
    """Everything still open is cancelled and everything pending skipped (cancel, timeout, budget)."""
    out = Settlement()
    for step in run.steps.values():
        if step.status in OPEN and step.kind == "task":
            out.cancel.append(step)
        elif step.status in OPEN or step.status == "pending":
            out.skip.append((step, why))
    completed, failed, skipped = _counts({n: s.status for n, s in run.steps.items()}, run)
    out.counts = (completed, failed, skipped + len(out.skip))
    return out


def _final(run: Run, status: dict[str, str], out: Settlement, reason: str | None) -> Settlement:
    out.counts = _counts(status, run)
    completed, failed, _ = out.counts
    if failed == 0 and reason is None:
        out.final = "completed"
    elif run.strategy == "partial_completion_allowed" and completed > 0:
        out.final = "partially_completed"
    else:
        out.final = "failed"
    out.reason = reason
    return out


def _counts(status: dict[str, str], run: Run) -> tuple[int, int, int]:
    completed = sum(1 for st in status.values() if st == "completed")
    failed = sum(1 for n, st in status.items() if st == "failed" and not run.steps[n].tolerated)
    skipped = sum(1 for st in status.values() if st == "skipped")
    return completed, failed, skipped
