"""Turning a validated command into its envelope, stamped with id and time at ingest.

Never wraps a command that would not read back as written (``contracts.roundtrip``): it raises
``Unreadable`` instead, which the HTTP API answers with a 422 naming the field.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from contracts import REGISTRY, Command, Envelope, new_id, roundtrip, utcnow
from contracts.envelope import MAX_ENVELOPE_ID
from contracts.roundtrip import Unreadable

__all__ = ["Unreadable", "command_envelope", "parse_command"]


def command_envelope(
    cmd: Command,
    *,
    pool: str = "default",
    command_id: str | None = None,
    source: str = "urn:agentbus:api",
    actor: str | None = None,
    correlation_id: str | None = None,
    causation_id: str | None = None,
    time: datetime | None = None,
    digest: str | None = None,
) -> Envelope:
    """The envelope for ``cmd``: its CloudEvents id is the command id (client-chosen or new).

    ``time`` defaults to now (ingest stamps it); the timer service passes the time it fired.
    ``digest`` is what the client asked for (``services.runtime.outcomes.command_digest``).
    """
    roundtrip.check(cmd)  # raises Unreadable: nothing is appended
    cid = command_id or new_id()
    if len(cid) > MAX_ENVELOPE_ID:  # a reactor's own id (``contracts.derived_id`` keeps them short)
        raise Unreadable(type(cmd).__name__, "", f"a command id is at most {MAX_ENVELOPE_ID} characters, "
                                                 f"not {len(cid)}")
    contract = REGISTRY[type(cmd).__name__]
    return Envelope.trusted(
        specversion="1.0",
        id=cid,
        source=source,
        type=contract.name,
        time=time or utcnow(),
        subject=cmd.subject(),
        datacontenttype="application/json",
        dataschema=contract.dataschema,
        schemaversion=contract.version,
        pool=pool,
        sequence=None,
        commandid=cid,
        causationid=causation_id,
        correlationid=correlation_id or cid,
        actor=actor,
        commanddigest=digest,
        data=cmd,
    )


def parse_command(type_name: str, data: dict[str, Any]) -> Command:
    """Validate ``data`` as the command ``type_name``; raises UnknownType or ValidationError."""
    contract = REGISTRY[type_name]
    if contract.kind != "command":
        raise ValueError(f"{type_name!r} is an event, not a command")
    model = contract.model.model_validate(data)
    assert isinstance(model, Command)
    return model
