"""What ``/v1/subscriptions`` answers, as response models: documentation only (the OpenAPI document
is exact by them), never instantiated on the request path. None has a place for a secret but the
answer of the PUT that generated one.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from services.http.reads import READ_RESPONSES
from services.http.responses import Accepted, Error, Outcome, Rejection, ValidationErrors

__all__ = ["DELETE_RESPONSES", "PUT_RESPONSES", "READ_ONE", "DeadLetter", "Subscribed",
           "SubscriptionState", "SubscriptionView"]


class _Doc(BaseModel):
    model_config = ConfigDict(frozen=True)


class SubscriptionSettings(_Doc):
    """A subscription as set: where, which channels, how many tries, and where it started."""

    name: str
    url: str
    channels: list[str]
    max_attempts: int
    incarnation: int = Field(description="Tells it from an earlier subscription of the same name.")
    start: list[int] = Field(description="Its first position in each events partition ([]: from 0).")


class SubscriptionView(SubscriptionSettings):
    updated_at: datetime


class DeliveryPosition(_Doc):
    partition: int = Field(ge=0)
    next: int = Field(ge=0, description="The position it delivers (or skips) next.")
    end: int = Field(ge=0, description="The end of the partition: caught up when next equals it.")


class SubscriptionState(SubscriptionView):
    """A subscription and how far it delivered."""

    delivery: list[DeliveryPosition]


class Subscribed(_Doc):
    """PUT: the subscription as it is now."""

    command_id: str
    status: Literal["applied"]
    partition: int = Field(ge=0)
    position: int = Field(ge=0, description="Pass as min_position to read your own write.")
    duplicate: bool
    subscription: SubscriptionSettings
    secret: str | None = Field(default=None, description="Only when this request left the secret out and "
                                                         "a new one was generated: shown this once.")


class DeadLetter(_Doc):
    """An event not delivered in ``attempts`` tries; delivery went on after it."""

    position: int = Field(description="This dead letter's position, for paging with after.")
    name: str
    incarnation: int
    event_id: str
    event_type: str
    event_partition: int
    event_position: int
    attempts: int
    last_error: str
    last_status: int | None = Field(description="The last HTTP status (None: no answer).")
    failed_at: datetime


_WRITE: dict[int | str, dict[str, Any]] = {
    202: {"model": Accepted, "description": "Appended, not decided within `timeout` (status pending)."},
    400: {"model": Error, "description": "The Content-Length header is not a number."},
    409: {"model": Rejection, "description": "The decider rejected the command."},
    413: {"model": Error, "description": "The body is larger than the configured limit."},
    422: {"model": ValidationErrors, "description": "Invalid input; nothing was appended."},
    503: {"model": Error, "description": "The service is starting, has failed, or cannot reach its log."},
}
PUT_RESPONSES: dict[int | str, dict[str, Any]] = {
    **_WRITE,
    200: {"model": Subscribed, "description": "Changed (its position kept)."},
    201: {"model": Subscribed, "description": "Created; `secret` holds a generated secret, shown once."},
}
DELETE_RESPONSES: dict[int | str, dict[str, Any]] = {
    **_WRITE,
    200: {"model": Outcome, "description": "Deleted."},
    404: {"model": Rejection, "description": "No such subscription."},
}
READ_ONE: dict[int | str, dict[str, Any]] = {
    **READ_RESPONSES, 404: {"model": Error, "description": "No such subscription."}}
