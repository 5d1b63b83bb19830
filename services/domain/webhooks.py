"""Command handlers and state changes for inbound webhooks.

Sources are deployment settings: ``SetWebhookSource`` and ``DeleteWebhookSource`` are accepted in
the reserved pool ``_system`` only. A delivery (``ReceiveExternalEvent``) is accepted in the pool
its source delivers into, any but ``_system``; its signature was verified at ingest, and a second
delivery with the same webhook id never reaches a handler (its command id is derived from the
source and the webhook id, and the decider drops a command id it has seen). The webhook reactor
reports a rule it could not turn into a command (``RecordWebhookMappingFailure``).

Pure: no I/O, no clock. The secret in a source is sealed (``contracts.webhooks.SealedSecret``);
nothing here could read it, and nothing needs to.
"""

from __future__ import annotations

from contracts import SYSTEM_POOL, Payload, Reason
from contracts import commands as c
from contracts import event_types as e
from services.domain.decision import DeciderConfig, Rejected
from services.domain.state import PoolState


def _settings_pool(state: PoolState, cmd: Payload) -> None:
    if state.pool != SYSTEM_POOL:
        raise Rejected(Reason.NOT_SYSTEM_POOL,
                       f"{type(cmd).__name__} is a deployment setting: send it to pool {SYSTEM_POOL!r}, "
                       f"not {state.pool!r}", pool=state.pool)


def set_source(state: PoolState, cmd: c.SetWebhookSource, config: DeciderConfig) -> list[Payload]:
    """A new source, or a source replaced whole (its secret, scheme, pool and mapping)."""
    _settings_pool(state, cmd)
    if cmd.pool == SYSTEM_POOL:
        raise Rejected(Reason.INVALID_COMMAND,
                       f"a webhook source delivers into an ordinary pool, not {SYSTEM_POOL!r}",
                       source=cmd.source)
    return [e.WebhookSourceSet(source=cmd.source, scheme=cmd.scheme, secret=cmd.secret, pool=cmd.pool,
                               mapping=cmd.mapping.model_dump(mode="json"))]


def delete_source(state: PoolState, cmd: c.DeleteWebhookSource, config: DeciderConfig) -> list[Payload]:
    """The source goes; an unknown one is rejected (UNKNOWN_WEBHOOK_SOURCE)."""
    _settings_pool(state, cmd)
    if cmd.source not in state.webhook_sources:
        raise Rejected(Reason.UNKNOWN_WEBHOOK_SOURCE, f"webhook source {cmd.source!r} does not exist",
                       source=cmd.source)
    return [e.WebhookSourceDeleted(source=cmd.source)]


def receive(state: PoolState, cmd: c.ReceiveExternalEvent, config: DeciderConfig) -> list[Payload]:
    """A verified delivery becomes an event of the pool, with the rules that apply to it."""
    if state.pool == SYSTEM_POOL:
        raise Rejected(Reason.INVALID_COMMAND,
                       f"webhook deliveries go to the pool of their source, not {SYSTEM_POOL!r}",
                       source=cmd.source)
    return [e.ExternalEventReceived(source=cmd.source, webhook_id=cmd.webhook_id, event_type=cmd.event_type,
                                    payload=cmd.payload, received_at=cmd.received_at,
                                    rules=tuple(r.model_dump(mode="json") for r in cmd.rules))]


def record_failure(state: PoolState, cmd: c.RecordWebhookMappingFailure,
                   config: DeciderConfig) -> list[Payload]:
    """A rule or trigger that could not be applied, on the log where its delivery is."""
    return [e.WebhookMappingFailed(source=cmd.source, webhook_id=cmd.webhook_id, rule=cmd.rule,
                                   workflow=cmd.workflow, error=cmd.error)]


# -- evolution ---------------------------------------------------------------------------------------


def source_set(state: PoolState, ev: e.WebhookSourceSet) -> None:
    state.webhook_sources.add(ev.source)


def source_deleted(state: PoolState, ev: e.WebhookSourceDeleted) -> None:
    state.webhook_sources.discard(ev.source)
