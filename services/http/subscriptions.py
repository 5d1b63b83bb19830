"""Outbound subscriptions over HTTP: ``PUT``, ``GET`` and ``DELETE /v1/subscriptions/{name}``, the
list, and a subscription's dead letters (``/failures``).

A PUT seals the signing secret with the deployment's key (``services.runtime.sealing``) before
anything is appended, so it is never in clear on the log; without a ``secret`` a new subscription
gets a generated one, answered once, in that PUT's answer (an existing one keeps its own). It
also reads the end of each events partition first: a new subscription (``from: latest``) starts
there, so every event appended after the PUT is delivered. Writes wait for the decider's outcome
(``timeout`` bounds the wait; 202 "pending" past it). Reads come from the read models and never
hold a secret, sealed or not.

This module must never decide anything, never put a secret in clear in a command, and never
answer one except the secret it generated, to the PUT that generated it.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Body, Depends, HTTPException, Path, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from contracts import SYSTEM_POOL
from contracts import commands as c
from contracts.values import Id
from projections import subscriptions as queries
from services.domain.subscriptions import url_problem
from services.http.bodies import MAX_ID, JSONBodyRoute
from services.http.deps import MAX_POSITION, MinPosition, ReadScope, ServiceDep, Write, read_model_caught_up
from services.http.errors import error_item, invalid
from services.http.read_schemas import Items
from services.http.reads import READ_RESPONSES
from services.http.responses import json_response
from services.http.subscription_schemas import (
    DELETE_RESPONSES,
    PUT_RESPONSES,
    READ_ONE,
    DeadLetter,
    SubscriptionState,
    SubscriptionView,
)
from services.http.writes import submit
from services.runtime.channels import ChannelError, parse_channel
from services.runtime.deliveries import group_of, group_prefix, secret_context
from services.runtime.sealing import sealer_of
from services.runtime.webhook import new_secret, start_positions

__all__ = ["router"]

router = APIRouter(tags=["subscriptions"], route_class=JSONBodyRoute, strict_content_type=False)

Name = Annotated[Id, Path(min_length=1, max_length=MAX_ID, description="The subscription's name.")]
# Standard Webhooks: a secret is 24 to 64 random bytes, base64 after "whsec_".
_SECRET_BYTES = (24, 64)


class SubscriptionBody(BaseModel):
    """Where to deliver, which events, how to sign them and how hard to try."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    url: str = Field(min_length=1, max_length=2000, description="http:// or https:// URL the events are "
                                                                "POSTed to.")
    channels: list[str] = Field(min_length=1, max_length=c.MAX_CHANNELS, description=(
        "events, type:<EventType>, tasks, agents, workflows, task:<id>, agent:<id>, workflow:<id>, each "
        "optionally as pool/<pool>/<channel>."))
    # No length bound here: pydantic's error would echo the value; _problems checks it instead.
    secret: str | None = Field(default=None, description=(
        "Standard Webhooks signing secret (whsec_ and 24 to 64 bytes in base64). Left out: an existing "
        "subscription keeps its own, a new one gets one, answered once."))
    start: Literal["latest", "earliest"] = Field(default="latest", alias="from", description=(
        "Where a new subscription starts: events appended after this request, or the whole log."))
    max_attempts: int = Field(default=8, ge=1, le=c.MAX_DELIVERY_ATTEMPTS,
                              description="Tries per event before it becomes a dead letter.")


def _problems(body: SubscriptionBody) -> list[dict[str, Any]]:
    errors = []
    problem = url_problem(body.url)
    if problem is not None:
        errors.append(error_item(("body", "url"), "url_invalid", problem, body.url))
    for i, text in enumerate(body.channels):
        try:
            parse_channel(text)
        except ChannelError as exc:
            errors.append(error_item(("body", "channels", i), "channel_invalid", str(exc), text))
    if body.secret is not None:
        raw = body.secret.removeprefix("whsec_")
        try:
            size = len(base64.b64decode(raw, validate=True)) if body.secret.startswith("whsec_") else 0
        except (binascii.Error, ValueError):
            size = 0
        if not _SECRET_BYTES[0] <= size <= _SECRET_BYTES[1]:
            # The value is not echoed: it is a secret, even when malformed.
            errors.append(error_item(("body", "secret"), "secret_invalid", "must be whsec_ followed by 24 to "
                                     "64 bytes in base64 (Standard Webhooks)"))
    return errors


@router.put("/v1/subscriptions/{name}", summary="Create or change an outbound subscription",
            response_model=None, responses=PUT_RESPONSES)
async def put_subscription(name: Name, body: Annotated[SubscriptionBody, Body()], service: ServiceDep,
                           opts: Write) -> Response:
    errors = _problems(body)
    if errors:
        invalid(errors)
    sealer = sealer_of(service.settings)
    context = secret_context(name)
    generated = c.SubscriptionGenerated(
        positions=await start_positions(service.log, service.topics.events, service.partitions),
        secret=None if body.secret is not None else sealer.seal(new_secret(), context=context))
    given = None if body.secret is None else sealer.seal(body.secret, context=context)
    cmd = c.SetSubscription(name=name, url=body.url, channels=tuple(body.channels), start=body.start,
                            max_attempts=body.max_attempts, secret=given, generated=generated)
    resp = await submit(service, dataclasses.replace(opts, wait=True), cmd, pool=SYSTEM_POOL, command_id=None,
                        generated="generated")
    answer = orjson.loads(bytes(resp.body))
    if answer.get("status") != "applied":
        return resp
    [event] = [ev for ev in answer.pop("events") if ev["type"] == "SubscriptionSet"]
    data = event["data"]
    answer["subscription"] = {k: data[k] for k in ("name", "url", "channels", "max_attempts", "incarnation",
                                                   "start")}
    if body.secret is None and data["secret_changed"]:
        answer["secret"] = sealer.open(data["secret"], context=context)
    return json_response(answer, 201 if data["created"] else 200)


@router.delete("/v1/subscriptions/{name}", summary="Delete an outbound subscription",
               response_model=None, responses=DELETE_RESPONSES)
async def delete_subscription(name: Name, service: ServiceDep, opts: Write) -> Response:
    resp = await submit(service, dataclasses.replace(opts, wait=True), c.DeleteSubscription(name=name),
                        pool=SYSTEM_POOL, command_id=None)
    if resp.status_code == 409 and orjson.loads(bytes(resp.body)).get("code") == "UNKNOWN_SUBSCRIPTION":
        resp.status_code = 404
    return resp


async def _read(service: ServiceDep, min_position: MinPosition = None) -> ReadScope:
    return await read_model_caught_up(service, SYSTEM_POOL, min_position)


SystemRead = Annotated[ReadScope, Depends(_read)]


async def _found(read: ReadScope, name: str) -> dict[str, Any]:
    found = await queries.subscription(read.service.store, name)
    if found is None:
        raise HTTPException(404, f"subscription {name!r} not found")
    return found


@router.get("/v1/subscriptions", summary="Outbound subscriptions (never their secrets)",
            response_model=Items[SubscriptionView], responses=READ_RESPONSES)
async def list_subscriptions(read: SystemRead) -> Response:
    return json_response({"items": await queries.subscriptions(read.service.store)})


@router.get("/v1/subscriptions/{name}", summary="One outbound subscription and how far it delivered",
            response_model=SubscriptionState, responses=READ_ONE)
async def get_subscription(name: Name, read: SystemRead) -> Response:
    """The subscription, and per events partition the next position it delivers from (``next``) and
    the end of the partition (``end``): it has caught up when they are equal."""
    found = await _found(read, name)
    service = read.service
    group = group_of(group_prefix(service.settings), name, found["incarnation"])
    start: list[int] = found["start"]
    delivery = []
    events = service.topics.events
    for p in range(service.partitions):
        first = start[p] if p < len(start) else 0
        delivery.append({"partition": p, "next": max(await service.log.committed(group, events, p), first),
                         "end": await service.log.end_offset(events, p)})
    return json_response({**found, "delivery": delivery})


@router.get("/v1/subscriptions/{name}/failures", summary="A subscription's dead letters, in log order",
            response_model=Items[DeadLetter], responses=READ_ONE)
async def subscription_failures(
    name: Name, read: SystemRead,
    after: Annotated[int | None, Query(ge=-1, le=MAX_POSITION, description="The last position seen.")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Response:
    """Each: the event not delivered (id, type, partition and position), the tries, the last error
    and HTTP status, when; ``position`` pages with ``after``."""
    found = await _found(read, name)
    items = await queries.failures(read.service.store, name, found["incarnation"], after=after, limit=limit)
    return json_response({"items": items})
