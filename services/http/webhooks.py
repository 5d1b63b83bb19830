"""The webhook source endpoints: ``PUT``, ``GET`` and ``DELETE /v1/webhooks/{source}``, ``GET /v1/webhooks``.

A source is a deployment setting (pool ``_system``): its scheme, its secret, the pool its
deliveries go to and their mapping (``contracts.webhooks``). The secret is sealed with the
deployment's key (``services.runtime.sealing``) before the command exists, so it is never in clear
on the log, and never answered: not by these endpoints, not in a 422 (a refused body's ``input`` is
left out). Deliveries themselves are ``services.http.webhook_deliveries``.

``PUT`` and ``DELETE`` wait for the decision unless ``wait=false``: their answer is the decision.
This module must never decide anything and never append anything for a request it answers 4xx.
"""

from __future__ import annotations

import dataclasses
import functools
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Body, HTTPException, Request, Response
from fastapi import Path as PathParam
from pydantic import BaseModel, ConfigDict, Field, PlainValidator, ValidationError

from contracts import SYSTEM_POOL, Reason
from contracts.base import Command
from contracts.commands import DeleteWebhookSource, SetWebhookSource
from contracts.values import Id
from contracts.webhooks import SourceName, WebhookMapping, WebhookScheme
from projections import webhooks as queries
from services.http import deps
from services.http.bodies import JSONBodyRoute
from services.http.deps import ServiceDep, Write, WriteOptions
from services.http.errors import error_item, field_errors, invalid
from services.http.responses import (
    Accepted,
    Error,
    JSONBytesResponse,
    Rejection,
    ValidationErrors,
    json_response,
)
from services.http.writes import submit
from services.runtime.sealing import Sealer, SealError, sealer_for
from services.runtime.service import Service
from services.webhooks.signatures import secret_problem

__all__ = ["caught_up", "router", "sealer", "secret_context"]


# --- shared with the deliveries -------------------------------------------------------------------


def secret_context(source: str) -> str:
    """What a source's secret is sealed for: a sealed secret moved to another source does not open."""
    return f"webhook:{source}"


@functools.lru_cache(maxsize=16)
def _sealer(secret_key: str | None, data_dir: Path) -> Sealer:
    return sealer_for(secret_key, data_dir)


def sealer(service: Service) -> Sealer:
    """The deployment's sealer; 503 naming the problem when its key is unusable."""
    settings = service.settings
    key = settings.secret_key.get_secret_value() if settings.secret_key is not None else None
    try:
        return _sealer(key, settings.data_dir)
    except (SealError, OSError) as exc:
        raise HTTPException(503, f"the secret key cannot be used: {exc}") from None


async def caught_up(service: Service) -> None:
    """Wait, briefly, until the read models hold every decision made so far about pool _system: a
    source set or deleted a moment ago is then seen as it is."""
    await deps.projected_so_far(service, SYSTEM_POOL)


# --- documents ------------------------------------------------------------------------------------


class _Doc(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SourceBody(_Doc):
    """A webhook source: who signs its deliveries, with what, and what they do."""

    secret: str = Field(min_length=1, max_length=1000, description=(
        "standard: the whsec_ secret (whsec_ then the key in base64, 16 to 256 bytes); github: the "
        "webhook's secret as entered on GitHub. Stored sealed with the deployment's key; never shown."))
    scheme: WebhookScheme = Field(description="standard: Standard Webhooks signatures (webhook-id, "
                                              "webhook-timestamp, webhook-signature); github: "
                                              "X-Hub-Signature-256.")
    pool: Id | None = Field(None, description="The pool its deliveries become events of (default: ?pool, "
                                              "else 'default').")
    mapping: WebhookMapping = Field(default_factory=WebhookMapping)


class Source(_Doc):
    """A webhook source as stored (never its secret)."""

    source: str
    scheme: WebhookScheme
    pool: str
    mapping: dict[str, Any]
    updated_at: datetime


class SourceList(_Doc):
    items: list[Source]


class SourceStored(_Doc):
    """The decision on a PUT or DELETE: the source as it now is (DELETE: deleted)."""

    command_id: str
    status: Literal["applied", "deleted"]
    source: str
    scheme: WebhookScheme | None = None
    pool: str | None = None
    mapping: dict[str, Any] | None = None
    partition: int = Field(ge=0)
    position: int = Field(ge=0, description="Pass as min_position to read pool _system's writes.")
    duplicate: bool


def _accept_object(value: Any) -> Any:
    return value


SourceDocument = Annotated[dict[str, Any], PlainValidator(_accept_object, json_schema_input_type=SourceBody)]
SourcePath = Annotated[SourceName, PathParam(description="The source's name.")]

router = APIRouter(tags=["webhooks"], route_class=JSONBodyRoute, strict_content_type=False, responses={
    400: {"model": Error, "description": "The Content-Length header is not a number."},
    413: {"model": Error, "description": "The body is larger than the configured limit."},
    422: {"model": ValidationErrors, "description": "Invalid input, every problem located (a secret is "
                                                    "never echoed); nothing was appended."},
    503: {"model": Error, "description": "The service is starting or has failed, or the secret key "
                                         "cannot be used."},
})
_PENDING = {"model": Accepted, "description": "wait=false, or the decision took longer than ?timeout."}


async def _decide(service: Service, opts: WriteOptions, cmd: Command) -> JSONBytesResponse | dict[str, Any]:
    """Append ``cmd`` to pool _system and wait for its decision unless wait=false: the applied
    command's document, or the response to give (202 pending, 404/409 rejected)."""
    resp = await submit(service, opts, cmd, pool=SYSTEM_POOL, command_id=None)
    body: dict[str, Any] = orjson.loads(resp.body)
    if resp.status_code == 202:
        return resp
    if body.get("status") == "rejected":  # its one event, CommandRejected, holds no secret
        return json_response(body, 404 if body["code"] == Reason.UNKNOWN_WEBHOOK_SOURCE else 409)
    # Answered once the read models hold it: a delivery sent after the answer is verified (or
    # refused) by the source as it is now, not as it was.
    last = max((e["position"] for e in body["events"]), default=-1)
    if last >= 0:
        await service.store.wait_for_position(service.topics.events, body["events"][0]["partition"], last,
                                              timeout=deps.READ_WAIT_S)
    return {k: body[k] for k in ("command_id", "partition", "position", "duplicate")}


def _waiting(request: Request, opts: WriteOptions) -> WriteOptions:
    return opts if "wait" in request.query_params else dataclasses.replace(opts, wait=True)


@router.put("/v1/webhooks/{source}", summary="Create or replace a webhook source", status_code=200,
            response_model=SourceStored, response_description="Stored (and replaced, if it existed).",
            responses={202: _PENDING, 409: {"model": Rejection, "description": "The decider refused it."}})
async def put_source(source: SourcePath, body: Annotated[SourceDocument, Body()], request: Request,
                     service: ServiceDep, opts: Write) -> Response:
    """Deliveries to ``POST /v1/webhooks/{source}`` are verified with this secret from now on."""
    try:
        doc = SourceBody.model_validate(body)
    except ValidationError as exc:
        invalid([{**err, "input": None} for err in field_errors(exc, ("body",))])
    problem = secret_problem(doc.scheme, doc.secret)
    if problem is not None:
        invalid([error_item(("body", "secret"), "secret_invalid", problem)])
    pool = doc.pool or opts.pool or "default"
    if pool == SYSTEM_POOL:
        invalid([error_item(("body", "pool"), "value_error",
                            f"deliveries go to an ordinary pool, not {SYSTEM_POOL!r}", pool)])
    sealed = sealer(service).seal(doc.secret, context=secret_context(source))
    try:
        cmd = SetWebhookSource(source=source, scheme=doc.scheme, secret=sealed, pool=pool,
                               mapping=doc.mapping)
    except ValidationError as exc:
        invalid([{**err, "input": None} for err in field_errors(exc, ("body",))])
    decided = await _decide(service, _waiting(request, opts), cmd)
    if isinstance(decided, Response):
        return decided
    return json_response({**decided, "status": "applied", "source": source, "scheme": doc.scheme,
                          "pool": pool, "mapping": doc.mapping.model_dump(mode="json")})


@router.delete("/v1/webhooks/{source}", summary="Delete a webhook source", status_code=200,
               response_model=SourceStored, response_description="Deleted: its deliveries are refused.",
               responses={202: _PENDING, 404: {"model": Rejection,
                                                "description": "No such source (UNKNOWN_WEBHOOK_SOURCE)."}})
async def delete_source(source: SourcePath, request: Request, service: ServiceDep, opts: Write) -> Response:
    """Deliveries to it are answered 404 from now on; its past deliveries stay on the log."""
    decided = await _decide(service, _waiting(request, opts), DeleteWebhookSource(source=source))
    if isinstance(decided, Response):
        return decided
    return json_response({**decided, "status": "deleted", "source": source})


@router.get("/v1/webhooks", summary="List the webhook sources", response_model=SourceList)
async def list_sources(service: ServiceDep) -> Response:
    """Every source with its scheme, pool and mapping; never a secret."""
    await caught_up(service)
    return json_response({"items": await queries.sources(service.store)})


@router.get("/v1/webhooks/{source}", summary="Read a webhook source", response_model=Source,
            responses={404: {"model": Error, "description": "No such source."}})
async def get_source(source: SourcePath, service: ServiceDep) -> Response:
    """The source's scheme, pool and mapping; never its secret."""
    await caught_up(service)
    found = await queries.source(service.store, source)
    if found is None:
        raise HTTPException(404, f"no webhook source {source!r}; create one with PUT /v1/webhooks/{source}")
    return json_response(found)
