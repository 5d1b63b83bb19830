"""``/v1/tokens``: admins create, list and revoke API tokens over HTTP; ``/v1/auth/me`` says who a
token is and what it may do (what a client such as the dashboard offers its user).

``POST`` makes the token here (``services.runtime.tokens.mint``), appends ``IssueApiToken`` with
only the secret's hash, waits for the decision and for the read model to hold it (so the token
works on the next request) and answers the token, once. ``DELETE`` appends ``RevokeApiToken``,
waits likewise, and makes this process check the token again at once. ``GET`` lists tokens
without their hashes.

This module must never store or log a token's secret, and never decide anything.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Body, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from contracts import SYSTEM_POOL, Reason
from contracts.commands import IssueApiToken, RevokeApiToken, Role
from contracts.values import Id, Text
from projections import access
from services.http.auth import principal_of
from services.http.deps import DEFAULT_WAIT_S, ServiceDep, Write, WriteOptions
from services.http.errors import field_errors, invalid
from services.http.permissions import ROLE_PERMISSIONS
from services.http.responses import Error, JSONBytesResponse, Rejection, json_response
from services.http.writes import submit
from services.runtime import tokens
from services.runtime.service import Service

__all__ = ["router"]

router = APIRouter(tags=["tokens"], responses={
    400: {"model": Error, "description": "The body could not be read as JSON."},
    409: {"model": Rejection, "description": "The decider refused the command."},
    503: {"model": Error, "description": "The service is starting, has failed, or cannot reach its log."},
})


class NewToken(BaseModel):
    """The token to create."""

    model_config = ConfigDict(extra="forbid")

    role: Role
    agent_id: Id | None = Field(default=None, min_length=1, max_length=200,
                                description="Required for the agent role (and only for it): the agent the "
                                            "token acts as.")
    name: Text | None = Field(default=None, min_length=1, max_length=200, description="What it is for.")


class TokenInfo(BaseModel):
    """A token, without its secret."""

    token_id: str
    role: str
    agent_id: str | None
    name: str | None
    created_at: str
    revoked_at: str | None


class CreatedToken(BaseModel):
    """The new token: ``token`` is shown this once and cannot be read again."""

    token: str = Field(description="The bearer token: send it as Authorization: Bearer <token>.")
    token_id: str
    role: str
    agent_id: str | None
    name: str | None
    status: str = Field(description="applied: usable now; pending: on the log, usable once decided.")
    command_id: str
    position: int


class TokenList(BaseModel):
    items: list[TokenInfo]


class Me(BaseModel):
    """The caller: who its credentials are, and the permissions its role holds."""

    authenticated: bool = Field(description="False when the server runs without authentication: every "
                                            "request is allowed, so `permissions` lists them all.")
    kind: str | None = Field(description="token (an API token) or jwt.")
    id: str | None = Field(description="The token's id, or the JWT's subject.")
    role: str | None
    agent_id: str | None = Field(description="The agent an agent-role token acts as (its own tasks and "
                                             "heartbeats only).")
    permissions: list[str] = Field(description="Every permission the role holds, sorted (see the "
                                               "`permission` of a 403 answer).")


TokenId = Annotated[str, Path(pattern=r"^[A-Za-z0-9-]{1,64}$")]


async def _decided(service: Service, opts: WriteOptions, cmd: IssueApiToken | RevokeApiToken,
                   ) -> tuple[int, dict[str, Any]]:
    """Append ``cmd`` to the _system pool, wait for its outcome and for the read model to hold it."""
    waited = dataclasses.replace(opts, wait=True, timeout=opts.timeout if opts.wait else DEFAULT_WAIT_S)
    resp = await submit(service, waited, cmd, pool=SYSTEM_POOL, command_id=None)
    body: dict[str, Any] = orjson.loads(resp.body)
    events = body.get("events") or []
    if body["status"] == "applied" and events:
        last = events[-1]
        await service.store.wait_for_position(service.topics.events, last["partition"], last["position"],
                                              timeout=waited.timeout)
    return resp.status_code, body


@router.post("/v1/tokens", summary="Create an API token (shown once)", status_code=201,
             response_model=CreatedToken, responses={202: {"model": CreatedToken}})
async def create_token(body: Annotated[NewToken, Body()], service: ServiceDep, opts: Write) -> Response:
    try:
        minted = tokens.mint(body.role, body.agent_id, body.name)
    except ValidationError as exc:  # an agent token without its agent, or another role with one
        invalid(field_errors(exc, ("body",)))
    status, outcome = await _decided(service, opts, minted.command)
    if outcome["status"] == "rejected":
        return json_response(outcome, status)
    cmd = minted.command
    return json_response({"token": minted.token, "token_id": cmd.token_id, "role": cmd.role,
                          "agent_id": cmd.agent_id, "name": cmd.name, "status": outcome["status"],
                          "command_id": outcome["command_id"], "position": outcome["position"]},
                         201 if outcome["status"] == "applied" else 202)


@router.get("/v1/auth/me", summary="Who the bearer token is, and what it may do", response_model=Me)
async def me(request: Request) -> Response:
    principal = principal_of(request)
    if principal is None:
        return json_response({"authenticated": False, "kind": None, "id": None, "role": None,
                              "agent_id": None, "permissions": sorted(ROLE_PERMISSIONS["admin"])})
    return json_response({"authenticated": True, "kind": principal.kind, "id": principal.id,
                          "role": principal.role, "agent_id": principal.agent_id,
                          "permissions": sorted(principal.permissions)})


@router.get("/v1/tokens", summary="List API tokens (never their secrets)", response_model=TokenList)
async def list_tokens(service: ServiceDep, revoked: Annotated[bool, Query(
        description="Include revoked tokens.")] = True) -> Response:
    return json_response({"items": await access.tokens(service.store, revoked=revoked)})


@router.delete("/v1/tokens/{token_id}", summary="Revoke an API token", responses={
    202: {"description": "Appended; not decided within the wait (or ?wait=false)."},
    404: {"model": Rejection, "description": "No token has this id."}})
async def revoke_token(token_id: TokenId, request: Request, service: ServiceDep, opts: Write) -> Response:
    status, outcome = await _decided(service, opts, RevokeApiToken(token_id=token_id))
    authenticator = getattr(request.app.state, "authenticator", None)
    if authenticator is not None:
        authenticator.forget(token_id)
    if outcome["status"] == "rejected" and outcome["code"] == Reason.UNKNOWN_TOKEN:
        status = 404
    return JSONBytesResponse(outcome, status_code=status)
