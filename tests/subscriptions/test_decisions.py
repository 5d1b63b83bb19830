"""The subscription rules of the system pool's decider, given / when / then, and the contract that
keeps a secret in clear off the log."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from contracts import SYSTEM_POOL, Reason
from contracts import commands as c
from contracts import event_types as e
from services.runtime.sealing import Sealer, new_key
from tests.gwt import given

SEAL = Sealer.from_text(new_key())
SEALED = SEAL.seal("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", context="subscription:s")
OTHER = SEAL.seal("whsec_dGhlIG90aGVyIHNlY3JldCBvZiBzb21lIGxlbmd0aA==", context="subscription:s")
GENERATED = SEAL.seal("whsec_Z2VuZXJhdGVkIGJ5IHRoZSBzZXJ2ZXIgaXRzZWxm", context="subscription:s")
URL = "https://receiver.example/hooks"


def put(**fields: Any) -> c.SetSubscription:
    values: dict[str, Any] = {"name": "s", "url": URL, "channels": ("tasks",), "secret": SEALED,
                              "generated": c.SubscriptionGenerated(positions=(7, 3), secret=GENERATED)}
    return c.SetSubscription(**{**values, **fields})


def made(**fields: Any) -> e.SubscriptionSet:
    values: dict[str, Any] = {"name": "s", "url": URL, "channels": ("tasks",), "secret": SEALED,
                              "start": (7, 3), "max_attempts": 8, "incarnation": 1, "created": True,
                              "secret_changed": True}
    return e.SubscriptionSet(**{**values, **fields})


def test_a_new_subscription_starts_at_the_positions_the_api_read() -> None:
    given(pool=SYSTEM_POOL).when(put()).then(made())


def test_from_earliest_starts_at_the_start_of_every_partition() -> None:
    given(pool=SYSTEM_POOL).when(put(start="earliest")).then(made(start=()))


def test_its_incarnation_is_the_sequence_of_the_event_that_created_it() -> None:
    history = (made(), e.SubscriptionDeleted(name="s", incarnation=1))
    given(*history, pool=SYSTEM_POOL).when(put()).then(made(incarnation=3))


def test_without_a_secret_a_new_subscription_takes_the_generated_one() -> None:
    given(pool=SYSTEM_POOL).when(put(secret=None)).then(made(secret=GENERATED))


def test_a_change_keeps_position_incarnation_and_unless_given_the_secret() -> None:
    history = (made(),)
    later = put(url="http://other.example/x", secret=None, start="earliest", max_attempts=2,
                generated=c.SubscriptionGenerated(positions=(99, 99), secret=OTHER))
    given(*history, pool=SYSTEM_POOL).when(later).then(
        made(url="http://other.example/x", max_attempts=2, created=False, secret_changed=False))
    given(*history, pool=SYSTEM_POOL).when(put(secret=OTHER)).then(made(secret=OTHER, created=False))


@pytest.mark.parametrize(("cmd", "code"), [
    (put(secret=None, generated=c.SubscriptionGenerated(positions=(1,))), Reason.INVALID_COMMAND),
    (put(generated=c.SubscriptionGenerated()), Reason.INVALID_COMMAND),  # latest: where is the end?
    (put(url="ftp://receiver.example/x"), Reason.INVALID_COMMAND),
    (put(url="https://user:password@receiver.example/x"), Reason.INVALID_COMMAND),
])
def test_what_a_new_subscription_cannot_be(cmd: c.SetSubscription, code: Reason) -> None:
    given(pool=SYSTEM_POOL).when(cmd).rejects(code, name="s")


def test_subscriptions_live_in_the_system_pool_only() -> None:
    given().when(put()).rejects(Reason.NOT_SYSTEM_POOL, pool="default")
    given().when(c.DeleteSubscription(name="s")).rejects(Reason.NOT_SYSTEM_POOL)


def test_delete_and_dead_letters_name_a_subscription_that_exists() -> None:
    given(pool=SYSTEM_POOL).when(c.DeleteSubscription(name="s")).rejects(Reason.UNKNOWN_SUBSCRIPTION)
    given(made(), pool=SYSTEM_POOL).when(c.DeleteSubscription(name="s")).then(
        e.SubscriptionDeleted(name="s", incarnation=1)).then_state(lambda s: "s" not in s.subscriptions)
    failure = c.RecordDeliveryFailure(name="s", incarnation=1, event_id="ev", event_type="TaskSubmitted",
                                      partition=0, position=41, attempts=8, last_error="HTTP 500",
                                      last_status=500)
    given(made(), pool=SYSTEM_POOL).when(failure).then(e.SubscriptionDeliveryFailed(**failure.model_dump()))
    # A dead letter of a subscription deleted and made anew belongs to neither.
    again = (made(), e.SubscriptionDeleted(name="s", incarnation=1), made(incarnation=3))
    given(*again, pool=SYSTEM_POOL).when(failure).rejects(Reason.UNKNOWN_SUBSCRIPTION, incarnation=1)


@pytest.mark.parametrize("secret", ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "sealed:v1:zz:abc", "x"])
def test_the_contract_refuses_a_secret_that_is_not_sealed(secret: str) -> None:
    with pytest.raises(ValidationError) as caught:
        put(secret=secret)
    assert caught.value.errors()[0]["loc"] == ("secret",)
    with pytest.raises(ValidationError):
        c.SubscriptionGenerated(secret=secret)
