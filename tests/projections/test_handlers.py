"""The projector's handler table: one entry per event type, each with the rows it reads."""

from __future__ import annotations

import pytest

from contracts import event_types as ev
from projections.batch import Batch
from projections.handlers import HANDLERS, Registry
from projections.handlers.registry import merge
from projections.loading import AGENT, STEP_OF_TASK, TASK


def _noop(b: Batch, env: object, d: object) -> None:
    return None


def test_an_entry_holds_the_handler_and_the_rows_it_reads() -> None:
    entry = HANDLERS[ev.TaskAssigned]
    assert entry.reads == (TASK, AGENT, STEP_OF_TASK)  # the task's, then its workflow step's


def test_one_handler_may_serve_several_event_types() -> None:
    assert HANDLERS[ev.TimerCancelled] == HANDLERS[ev.TimerFired]


def test_an_event_type_cannot_have_two_handlers() -> None:
    family = Registry()
    family.on(ev.TaskStarted, reads=(TASK,))(_noop)
    with pytest.raises(ValueError, match="TaskStarted has two handlers"):
        family.on(ev.TaskStarted)(_noop)
    other = Registry()
    other.on(ev.TaskStarted)(_noop)
    with pytest.raises(ValueError, match="TaskStarted has two handlers"):
        merge(family, other)
