"""The pool decider: ``decide(state, command) -> events`` and ``evolve(state, event) -> state``.

``decide`` looks the command's exact type up in ``COMMAND_HANDLERS``, one row per command, and
runs its handler; the handlers live with their family (``agents``, ``tasks``, ``resources``,
``budgets``, ``policies``, ``timers``, ``workflows``) and ``evolve`` with its own table in
``evolution``. After the handler, ``workflows.follow`` adds what the decision means for the
workflow runs whose steps it ended, so a run is settled in the same decision.
Adding a command is adding a handler and its row. Every event a handler returns is checked
against its contract (``contracts.roundtrip``): one that would not read back as written rejects
the command (``UNREADABLE_EVENT``) instead of being appended.

Pure: no I/O, no clock, no randomness. Time and ids come from the envelopes the runner passes
in, so the same history always yields the same decisions, in the embedded runner and on Faust.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from contracts import Payload, Reason, roundtrip
from contracts import commands as c
from contracts.roundtrip import Unreadable
from services.domain import (
    access,
    agents,
    audit,
    budgets,
    policies,
    resources,
    subscriptions,
    tasks,
    timers,
    webhooks,
    workflows,
)
from services.domain.decision import DeciderConfig, Rejected
from services.domain.evolution import evolve
from services.domain.state import PoolState

# (state before, command, config) -> the events that follow; raises Rejected. Never changes state.
CommandHandler = Callable[[PoolState, Any, DeciderConfig], list[Payload]]

COMMAND_HANDLERS: dict[type[Any], CommandHandler] = {
    c.RegisterAgent: agents.register,
    c.AgentHeartbeat: agents.heartbeat,
    c.DeregisterAgent: agents.deregister,
    c.SubmitTask: tasks.submit,
    c.AssignTask: tasks.assign,
    c.StartTask: tasks.start,
    c.CompleteTask: tasks.complete,
    c.FailTask: tasks.fail,
    c.CancelTask: tasks.cancel,
    c.MarkTaskUnassignable: tasks.mark_unassignable,
    c.DeferTask: tasks.defer,
    c.NoteTaskWaiting: tasks.note_waiting,
    c.SetResourceLimits: resources.set_limits,
    c.AllocateResources: resources.allocate,
    c.ReleaseResources: resources.release,
    c.RecordCost: budgets.record_cost,
    c.SetBudget: budgets.set_budget,
    c.SetPoolPolicy: policies.set_pool_policy,
    c.SetRateLimit: policies.set_rate_limit,
    c.SetScalingPolicy: policies.set_scaling_policy,
    c.DecideScaling: policies.decide_scaling,
    c.SetPrices: budgets.set_prices,
    c.FireTimer: timers.fire,
    c.StartWorkflow: workflows.start,
    c.CancelWorkflow: workflows.cancel,
    c.SignalWorkflow: workflows.signal,
    c.AwaitSignal: workflows.await_signal,
    c.FailWorkflowStep: workflows.fail_step,
    c.RegisterWorkflowDefinition: workflows.register_definition,
    c.IssueApiToken: access.issue,
    c.RevokeApiToken: access.revoke,
    c.SetSubscription: subscriptions.set_subscription,
    c.DeleteSubscription: subscriptions.delete,
    c.RecordDeliveryFailure: subscriptions.record_failure,
    c.SetWebhookSource: webhooks.set_source,
    c.DeleteWebhookSource: webhooks.delete_source,
    c.ReceiveExternalEvent: webhooks.receive,
    c.RecordWebhookMappingFailure: webhooks.record_failure,
    c.RecordAuditCheckpoint: audit.record_checkpoint,
}

_DEFAULT_CONFIG = DeciderConfig()


def decide(state: PoolState, cmd: Payload, config: DeciderConfig | None = None) -> list[Payload]:
    """Events that follow from ``cmd`` in ``state``; raises Rejected when a rule is broken."""
    handler = COMMAND_HANDLERS.get(type(cmd))
    if handler is None:
        raise Rejected(Reason.UNKNOWN_COMMAND, f"{type(cmd).__name__} is not a command this pool accepts")
    try:
        events = list(handler(state, cmd, _DEFAULT_CONFIG if config is None else config))
        # What the decision means for the workflow runs its tasks belong to, in the same decision.
        events = workflows.follow(state, events)
    except ValidationError as exc:
        # An event's own contract refused a value the command led to (e.g. an amount out of range).
        err = exc.errors(include_url=False)[0]
        field = ".".join(str(p) for p in err["loc"])
        raise _unreadable(cmd, exc.title, field, err["msg"]) from None
    for event in events:
        try:
            roundtrip.check(event)
        except Unreadable as exc:
            raise _unreadable(cmd, exc.type_name, exc.where, exc.problem) from None
    return events


def _unreadable(cmd: Payload, event_type: str, field: str, problem: str) -> Rejected:
    # Never appended: a record nothing can read would stop every replay and projector after it.
    where = f"{event_type}.{field}" if field else event_type
    return Rejected(Reason.UNREADABLE_EVENT,
                    f"{type(cmd).__name__} would append a {event_type} that cannot be read back "
                    f"({where}: {problem})", event_type=event_type, field=field)


__all__ = [
    "COMMAND_HANDLERS",
    "CommandHandler",
    "DeciderConfig",
    "Rejected",
    "decide",
    "evolve",
]
