"""``GET /v1/audit/verify``: the events topic's hash chain recomputed over the service's log, and,
when the server was given the audit public key (``AGENTBUS_AUDIT_PUBLIC_KEY``), every signed
checkpoint in it checked (``services.audit.verify``).

The check reads the whole log a page at a time, awaiting each read, so the event loop serves other
requests between pages; what it answers is the report, ``ok`` false naming the first record (or
checkpoint) that does not match. With a public key, as with ``agentbus audit verify --key``, a log
holding no checkpoint signed by it is not ``ok``: nothing vouches for it yet. Verification is a
read: the reader role may run it, as it may read the log itself (``/v1/events/export``).

This module must never write anything, and never holds a private key.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, Field

from contracts.system_commands import AUDIT_KEY_ID
from services.audit.checkpoints import AuditKeyError, key_id, load_public_key
from services.audit.verify import verify_log_audit
from services.http.deps import MAX_POSITION, ServiceDep
from services.http.errors import error_item, invalid
from services.http.responses import Error, ValidationErrors, json_response
from services.runtime.settings import Settings

__all__ = ["AuditVerification", "router"]

router = APIRouter(tags=["audit"])


class VerifyFailure(BaseModel):
    """The first record, or checkpoint head, that does not match (partition and offset -1: none)."""

    topic: str
    partition: int
    offset: int
    expected: str | None = Field(description="Hex chain value it should have (recomputed, or signed).")
    found: str | None = Field(description="Hex chain value it has (stored, or recomputed).")
    reason: str


class CheckpointSummary(BaseModel):
    """The signed checkpoints checked with the server's public key."""

    key_id: str
    found: int = Field(description="Checkpoints found (every key's, or key_id's when asked).")
    verified: int = Field(description="Of them, signed by the key with every head matching the chain.")
    last: dict[str, Any] | None = Field(description="The last verified one: its partition, offset and "
                                                    "the position it signed per partition.")
    unchecked_heads: int


class AuditVerification(BaseModel):
    """What the verification checked and found."""

    ok: bool = Field(description="The chain verifies, and every checkpoint checked holds.")
    topic: str
    records: int = Field(description="Records checked.")
    heads: dict[str, str] = Field(description="Per partition, the hex chain value of its last record.")
    ends: dict[str, int] = Field(description="Per partition, the offset after the last record checked.")
    seconds: float
    events_per_s: float | None
    legacy: int = Field(description="Unchained records before a partition's first chained one (Kafka "
                                    "topics written before the chain existed).")
    mismatch: VerifyFailure | None = Field(description="The first record that does not match its chain.")
    failure: VerifyFailure | None = Field(description="The first failure: the chain's, else a checkpoint's.")
    checkpoints: CheckpointSummary | None = Field(description="None when the server has no audit public "
                                                              "key (AGENTBUS_AUDIT_PUBLIC_KEY).")


@router.get(
    "/v1/audit/verify",
    summary="Recompute the event log's hash chain and check its signed checkpoints",
    response_model=AuditVerification,
    responses={422: {"model": ValidationErrors, "description": "An invalid query parameter, or a key_id "
                                                               "the server has no public key for."},
               503: {"model": Error, "description": "The service is starting, cannot reach its log, or "
                                                    "its audit public key cannot be read."}},
)
async def verify_audit(
    request: Request,
    service: ServiceDep,
    from_offset: Annotated[int, Query(alias="from", ge=0, le=MAX_POSITION,
                                      description="First offset checked in each partition (the chain "
                                                  "below it is taken as stored).")] = 0,
    signer: Annotated[str | None, Query(alias="key_id", pattern=AUDIT_KEY_ID,
                                        description="Only the checkpoints signed by this key id (it must "
                                                    "be the server's public key's).")] = None,
) -> Response:
    settings: Settings = request.app.state.settings
    key = None
    if settings.audit_public_key:
        try:
            key = load_public_key(settings.audit_public_key, "AGENTBUS_AUDIT_PUBLIC_KEY")
        except AuditKeyError as exc:
            return json_response({"detail": str(exc)}, 503)
    if signer is not None and (key is None or key_id(key) != signer):
        why = ("the server has no audit public key (AGENTBUS_AUDIT_PUBLIC_KEY)" if key is None
               else f"the server checks the signatures of key {key_id(key)} only")
        invalid([error_item(("query", "key_id"), "value_error", f"cannot check key {signer}: {why}", signer)])
    report = await verify_log_audit(service.log, service.topics.events, from_offset=from_offset, key=key,
                                    only_key_id=signer)
    return json_response(report.to_json())
