"""API tokens: one row per token of the _system pool, as its ``ApiTokenIssued`` and
``ApiTokenRevoked`` left it.

The row holds what the API checks a bearer token against (role, agent, the secret's SHA-256,
whether it is revoked), never the secret itself, which is never on the log either.
"""

from __future__ import annotations

from contracts import Envelope
from contracts import event_types as ev
from projections.batch import Batch
from projections.handlers.registry import Registry
from projections.loading import TOKEN

handlers = Registry()


@handlers.on(ev.ApiTokenIssued)
def _issued(b: Batch, env: Envelope, d: ev.ApiTokenIssued) -> None:
    b.api_tokens.put((env.pool, d.token_id), {
        "pool": env.pool,
        "token_id": d.token_id,
        "role": d.role,
        "agent_id": d.agent_id,
        "name": d.name,
        "secret_hash": d.secret_hash,
        "created_at": env.time,
        "revoked_at": None,
    })


@handlers.on(ev.ApiTokenRevoked, reads=(TOKEN,))
def _revoked(b: Batch, env: Envelope, d: ev.ApiTokenRevoked) -> None:
    key = (env.pool, d.token_id)
    row = b.api_tokens.rows.get(key)
    if row is None:
        raise b.fail(f"unknown API token {d.token_id!r}")
    row["revoked_at"] = env.time
    b.api_tokens.touch(key)
