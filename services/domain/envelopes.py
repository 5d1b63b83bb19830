"""Wrapping a decision in envelopes: the events a decider emits for one command, and rejections.

Pure: the time, pool and causal ids of every event come from the command envelope; only the
event ids are minted (time-ordered UUIDs). Used by the runtimes and by the tests, so there is one
copy of how a decision becomes log records.
"""

from __future__ import annotations

from contracts import REGISTRY, Envelope, Payload, new_id
from contracts import event_types as e
from services.domain.decision import Rejected
from services.domain.state import PoolState


def event_envelopes(cmd: Envelope, events: list[Payload], state: PoolState) -> list[Envelope]:
    """Wrap a decision's events: time from the command, sequence within the pool, causal ids."""
    out = []
    seq = state.sequence
    for ev in events:
        seq += 1
        contract = REGISTRY[type(ev).__name__]
        subject = ev.subject() if not isinstance(ev, e.CommandRejected) else cmd.subject
        out.append(
            Envelope.trusted(
                specversion="1.0",
                id=new_id(),
                source="urn:agentbus:decider",
                type=contract.name,
                time=cmd.time,
                subject=subject,
                datacontenttype="application/json",
                dataschema=contract.dataschema,
                schemaversion=contract.version,
                pool=cmd.pool,
                sequence=seq,
                commandid=cmd.commandid or cmd.id,
                causationid=cmd.id,
                correlationid=cmd.correlationid or cmd.id,
                actor=cmd.actor,
                data=ev,
            )
        )
    return out


def rejection(cmd_type: str, exc: Rejected, subject: str | None) -> e.CommandRejected:
    details = dict(exc.details)
    if subject is not None:
        details.setdefault("subject", subject)
    return e.CommandRejected(command_type=cmd_type, code=exc.code.value, message=exc.message, details=details)
