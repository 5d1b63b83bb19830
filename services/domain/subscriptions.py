"""Command handlers and state changes for outbound subscriptions, which live in the pool
``contracts.SYSTEM_POOL``.

A subscription names a URL, the channels whose events it receives (``services.runtime.channels``;
the HTTP API checks them, a channel no event is on simply receives nothing), its
signing secret (sealed: ``services.runtime.sealing``; the contract refuses one in clear, so the
decider never sees it) and how many tries an event gets before it becomes a dead letter.
Changing a subscription keeps its delivery position and, unless a new one is given, its secret;
deleting one and creating it again starts afresh: a new ``incarnation`` (the sequence of the event
that created it), a new position, no dead letters. The deliveries (``services.runtime.deliveries``)
report each dead letter with ``RecordDeliveryFailure``.

Pure: no I/O, no clock.
"""

from __future__ import annotations

from pydantic import TypeAdapter, ValidationError

from contracts import SYSTEM_POOL, Payload, Reason
from contracts import commands as c
from contracts import event_types as e
from contracts.executors import HttpUrl
from services.domain.decision import DeciderConfig, Rejected
from services.domain.state import PoolState

__all__ = [
    "delete",
    "record_failure",
    "set_subscription",
    "subscription_deleted",
    "subscription_set",
    "url_problem",
]

_URL: TypeAdapter[str] = TypeAdapter(HttpUrl)


def url_problem(url: str) -> str | None:
    """Why ``url`` is not a URL deliveries can POST to (http or https, a host, no credentials), or
    None; shared with the HTTP API, which answers it as 422 before anything is appended."""
    try:
        _URL.validate_python(url)
    except ValidationError as exc:
        return str(exc.errors(include_url=False)[0]["msg"])
    return None


def _system_only(state: PoolState, name: str) -> None:
    # The deliveries read subscriptions from the system pool only: one elsewhere would never run.
    if state.pool != SYSTEM_POOL:
        raise Rejected(Reason.NOT_SYSTEM_POOL,
                       f"subscriptions live in the {SYSTEM_POOL!r} pool, not in {state.pool!r}",
                       name=name, pool=state.pool)


def set_subscription(state: PoolState, cmd: c.SetSubscription, config: DeciderConfig) -> list[Payload]:
    """A new subscription, or new settings for one (its position kept)."""
    _system_only(state, cmd.name)
    problem = url_problem(cmd.url)
    if problem is not None:
        raise Rejected(Reason.INVALID_COMMAND, f"url: {problem}", name=cmd.name, field="url")
    existing = state.subscriptions.get(cmd.name)
    if cmd.secret is not None:
        secret, changed = cmd.secret, True
    elif existing is not None:
        secret, changed = existing.secret, False
    elif cmd.generated.secret is not None:
        secret, changed = cmd.generated.secret, True
    else:
        raise Rejected(Reason.INVALID_COMMAND, f"subscription {cmd.name!r} is new: it needs a secret",
                       name=cmd.name)
    if existing is not None:
        incarnation, start = existing.incarnation, existing.start
    elif cmd.start == "earliest":
        incarnation, start = state.sequence + 1, ()
    elif cmd.generated.positions:
        incarnation, start = state.sequence + 1, cmd.generated.positions
    else:
        raise Rejected(Reason.INVALID_COMMAND, "start 'latest' needs the end of each events partition "
                       "(generated.positions), which PUT /v1/subscriptions/{name} fills in", name=cmd.name)
    return [e.SubscriptionSet(name=cmd.name, url=cmd.url, channels=cmd.channels, secret=secret, start=start,
                              max_attempts=cmd.max_attempts, incarnation=incarnation,
                              created=existing is None, secret_changed=changed)]


def delete(state: PoolState, cmd: c.DeleteSubscription, config: DeciderConfig) -> list[Payload]:
    """No more deliveries to the subscription; the name is free for a new one."""
    _system_only(state, cmd.name)
    existing = state.subscriptions.get(cmd.name)
    if existing is None:
        raise Rejected(Reason.UNKNOWN_SUBSCRIPTION, f"no subscription {cmd.name!r}", name=cmd.name)
    return [e.SubscriptionDeleted(name=cmd.name, incarnation=existing.incarnation)]


def record_failure(state: PoolState, cmd: c.RecordDeliveryFailure, config: DeciderConfig) -> list[Payload]:
    """A dead letter of the subscription's current incarnation (one of a deleted one is refused)."""
    _system_only(state, cmd.name)
    existing = state.subscriptions.get(cmd.name)
    if existing is None or existing.incarnation != cmd.incarnation:
        raise Rejected(Reason.UNKNOWN_SUBSCRIPTION,
                       f"no subscription {cmd.name!r} of incarnation {cmd.incarnation}",
                       name=cmd.name, incarnation=cmd.incarnation)
    return [e.SubscriptionDeliveryFailed(**cmd.model_dump())]


def subscription_set(state: PoolState, ev: e.SubscriptionSet) -> None:
    state.subscriptions[ev.name] = ev


def subscription_deleted(state: PoolState, ev: e.SubscriptionDeleted) -> None:
    state.subscriptions.pop(ev.name, None)
