"""``POST /v1/webhooks/{source}``: a signed delivery from another system becomes an event on the log.

Authenticated by its signature, not by an API token (``services.webhooks.signatures``). In order:
404 for a source that does not exist; 413 for a body over the API's limit (before it is read);
401 for a missing or wrong signature; 400 for a timestamp more than 5 minutes off or a missing
delivery header; 422 for a body that is not a storable JSON object, or whose event type cannot be
read; 409 for a delivery id received before. None of those appends anything. A verified delivery
is appended as ``ReceiveExternalEvent`` to the source's pool, under the command id
``webhook:<source>:<webhook id>``, so the log itself refuses the same delivery twice, however the
two reach it; the decider turns it into an ``ExternalEventReceived`` (200), and the webhook
reactor into the commands its mapping says.

This module must never decide anything, never append anything it refuses, and never log or answer
a secret.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Annotated, Any, Literal

import jmespath  # type: ignore[import-untyped]
import orjson
from fastapi import APIRouter, HTTPException, Path, Request, Response
from jmespath.exceptions import JMESPathError  # type: ignore[import-untyped]
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from contracts import derived_id, utcnow
from contracts.commands import ReceiveExternalEvent
from contracts.event_types import CommandRejected, ExternalEventReceived
from contracts.values import json_problem, text_problem
from contracts.webhooks import SourceName, WebhookMapping
from projections import webhooks as queries
from services.http.deps import DEFAULT_WAIT_S, ServiceDep
from services.http.errors import error_item, field_errors, invalid
from services.http.responses import Error, ValidationErrors, json_response
from services.http.webhooks import caught_up, sealer, secret_context
from services.runtime.ingest import command_envelope
from services.runtime.sealing import SealError
from services.runtime.service import Service
from services.webhooks.reactor import SOURCE
from services.webhooks.signatures import Delivery, Refused, verify

__all__ = ["delivery_command_id", "router"]


def delivery_command_id(source: str, webhook_id: str) -> str:
    """The command id of a delivery: one per (source, webhook id), so a repeat is refused by the log."""
    return derived_id("webhook", source, webhook_id)


class _Doc(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Received(_Doc):
    """The delivery is on the log (200: decided, its event appended; 202: not decided yet)."""

    status: Literal["received", "accepted"]
    source: str
    webhook_id: str
    event_type: str
    pool: str = Field(description="The pool its ExternalEventReceived is an event of.")
    rules: int = Field(ge=0, description="The mapping rules that apply to its event type.")
    command_id: str
    partition: int = Field(ge=0)
    position: int = Field(ge=0, description="The command's position: min_position for reads of the pool.")
    event_position: int | None = Field(None, description="The ExternalEventReceived's offset (200 only).")


class Repeated(_Doc):
    """This delivery id was received before (or the decider refused it): nothing new appended."""

    detail: str
    command_id: str
    partition: int | None = None
    position: int | None = None


_NAMES: TypeAdapter[str] = TypeAdapter(SourceName)
# orjson reads an integer beyond 64 bits as a rounded float; such a body is read again exactly, so
# the contract refuses the integer by name (as services.http.bodies does).
_LONG_NUMBER = re.compile(rb"[0-9]{19}")

router = APIRouter(tags=["webhooks"])


def _no_constant(name: str) -> Any:
    raise json.JSONDecodeError(f"{name} is not JSON", name, 0)


def _payload(body: bytes) -> dict[str, Any]:
    """The delivery's JSON object; 422 when it is none."""
    try:
        value = orjson.loads(body)
        if _LONG_NUMBER.search(body):
            value = json.loads(body, parse_constant=_no_constant)
    except (orjson.JSONDecodeError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        invalid([error_item(("body",), "json_invalid", f"the body is not JSON: {exc}")])
    if not isinstance(value, dict):
        invalid([error_item(("body",), "dict_type", "the body must be a JSON object",
                            "null" if value is None else type(value).__name__)])
    return value


def _event_type(delivery: Delivery, mapping: WebhookMapping, payload: dict[str, Any]) -> str:
    """The delivery's event type: GitHub's header, else the mapping's expression over the payload."""
    if delivery.event_type is not None:
        return delivery.event_type
    try:
        found = jmespath.search(mapping.event_type, payload)
    except JMESPathError:  # e.g. a function applied to a value of another type
        found = None
    if isinstance(found, int | float) and not isinstance(found, bool):
        found = orjson.dumps(found).decode()  # a numbered event type reads as its JSON text
    if not isinstance(found, str) or not 1 <= len(found) <= 200 or text_problem(found) is not None:
        invalid([error_item(("body",), "event_type",
                            f"the event type ({mapping.event_type!r} over the payload, the source's "
                            "mapping.event_type) must be a string of 1 to 200 characters",
                            found if isinstance(found, str) else None)])
    return found


async def _source(service: Service, name: str) -> dict[str, Any]:
    """The source ``name`` with its sealed secret; 404 when there is none."""
    found = None
    if _valid_name(name):
        found = await queries.verifier(service.store, name)
        if found is None:
            await caught_up(service)  # created a moment ago?
            found = await queries.verifier(service.store, name)
    if found is None:
        raise HTTPException(404, f"no webhook source {name!r}")
    return found


def _valid_name(name: str) -> bool:
    try:
        _NAMES.validate_python(name)
    except ValidationError:
        return False
    return True


def _verified(service: Service, source: dict[str, Any], body: bytes, request: Request) -> Delivery:
    try:
        secret = sealer(service).open(source["secret"], context=secret_context(source["source"]))
    except SealError as exc:
        raise HTTPException(503, f"the secret of webhook source {source['source']!r} cannot be opened: "
                                 f"{exc}") from None
    return verify(source["scheme"], secret, body, request.headers)


def _repeated(cid: str, webhook_id: str, source: str, partition: int | None = None,
              position: int | None = None, detail: str | None = None) -> Response:
    detail = detail or f"delivery {webhook_id!r} of webhook source {source!r} was received already"
    return json_response({"detail": detail, "command_id": cid, "partition": partition, "position": position},
                         409)


@router.post(
    "/v1/webhooks/{source}", summary="Receive a signed webhook delivery", status_code=200,
    response_model=Received, response_description="Verified and recorded: its ExternalEventReceived is on "
                                                  "the log.",
    responses={
        202: {"model": Received, "description": "Verified and appended; not decided within 10 s."},
        400: {"model": Error, "description": "webhook-timestamp more than 5 minutes from the server's "
                                             "clock, or a delivery header missing or malformed."},
        401: {"model": Error, "description": "The signature is missing or does not match."},
        404: {"model": Error, "description": "No such webhook source."},
        409: {"model": Repeated, "description": "This delivery id (webhook-id, X-GitHub-Delivery) was "
                                                "received before."},
        413: {"model": Error, "description": "The body is larger than the configured limit."},
        422: {"model": ValidationErrors, "description": "The body is not a storable JSON object, or its "
                                                        "event type cannot be read."},
        503: {"model": Error, "description": "The service is starting or has failed, or the secret key "
                                             "cannot open the source's secret."},
    },
    openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": {
        "type": "object", "description": "The delivery, as its sender signed it."}}}}},
)
async def receive(source: Annotated[str, Path(description="The webhook source's name.")], request: Request,
                  service: ServiceDep) -> Response:
    """Verify the delivery's signature, then record it; see the module's documentation."""
    if service.failure is not None:
        raise HTTPException(503, f"agentbus has failed: {service.failure}")
    found = await _source(service, source)
    body = await request.body()
    try:
        delivery = _verified(service, found, body, request)
    except Refused as exc:
        if exc.status != 401:
            raise HTTPException(exc.status, exc.detail) from None
        await caught_up(service)  # its secret may have been replaced a moment ago
        again = await queries.verifier(service.store, source)
        if again is None or again["position"] == found["position"]:
            raise HTTPException(401, exc.detail) from None
        found = again
        try:
            delivery = _verified(service, found, body, request)
        except Refused as retried:
            raise HTTPException(retried.status, retried.detail) from None
    payload = _payload(body)
    try:
        mapping = WebhookMapping.model_validate(found["mapping"])
    except ValidationError:
        raise HTTPException(503, f"the mapping of webhook source {source!r} does not read in this version "
                                 f"of agentbus: PUT /v1/webhooks/{source} again") from None
    event_type = _event_type(delivery, mapping, payload)
    problem = json_problem(payload)
    if problem is not None:
        where, why = problem
        invalid([error_item(("body", *where.split(".")) if where else ("body",), "json_unstorable", why)])
    received_at = utcnow()
    rules = mapping.matching(event_type)
    try:
        cmd = ReceiveExternalEvent(source=source, webhook_id=delivery.webhook_id, event_type=event_type,
                                   payload=payload, received_at=received_at, rules=rules)
    except ValidationError as exc:
        invalid(field_errors(exc, ("body",)))
    return await _append(service, cmd, found["pool"], received_at)


async def _append(service: Service, cmd: ReceiveExternalEvent, pool: str, received_at: datetime) -> Response:
    """Append the delivery unless its id was seen; answer with its event once decided."""
    cid = delivery_command_id(cmd.source, cmd.webhook_id)
    ref, seen = service.outcomes.admit(cid, None)
    if seen:
        return _repeated(cid, cmd.webhook_id, cmd.source, ref.partition if ref else None)
    try:
        env = command_envelope(cmd, pool=pool, command_id=cid, source=SOURCE, actor=f"webhook:{cmd.source}")
        partition, position, duplicate = await service.submit(env)
    except BaseException:
        service.outcomes.forget(cid)
        raise
    if duplicate:
        return _repeated(cid, cmd.webhook_id, cmd.source, partition, position)
    doc = {"source": cmd.source, "webhook_id": cmd.webhook_id, "event_type": cmd.event_type, "pool": pool,
           "rules": len(cmd.rules), "command_id": cid, "partition": partition, "position": position}
    ref = await service.outcomes.wait(cid, DEFAULT_WAIT_S)
    if ref is None:
        return json_response({**doc, "status": "accepted", "event_position": None}, 202)
    [(offset, first), *_] = await service.outcome_events(ref)
    data = first.data
    if isinstance(data, CommandRejected):
        return _repeated(cid, cmd.webhook_id, cmd.source, partition, position, f"{data.code}: {data.message}")
    if not isinstance(data, ExternalEventReceived) or data.received_at != received_at:
        # Decided before this one was appended (another API process took the first): a repeat.
        return _repeated(cid, cmd.webhook_id, cmd.source, partition, position)
    return json_response({**doc, "status": "received", "event_position": offset})
