"""Read-model queries about API tokens (pool ``contracts.SYSTEM_POOL``): one by id, for checking a
bearer token, and the list, for ``GET /v1/tokens`` and ``agentbus tokens list``.

Reads only. ``token`` returns the stored hash for the caller to compare; ``tokens`` never
returns it (a listing has no use for it).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from contracts import SYSTEM_POOL
from projections import tables
from projections.queries import _all, _by_key, _one
from projections.store import ProjectionStore

__all__ = ["token", "tokens"]

_LISTED = [c for c in tables.api_tokens.c if c.name not in ("pool", "secret_hash")]
_TOKEN = _by_key(tables.api_tokens, "token_id")


async def token(store: ProjectionStore, token_id: str) -> dict[str, Any] | None:
    """The token ``token_id`` with its secret's hash (ISO times), or None when no token has it."""
    return await _one(store, _TOKEN, {"pool": SYSTEM_POOL, "key": token_id})


async def tokens(store: ProjectionStore, *, revoked: bool = True) -> list[dict[str, Any]]:
    """Every token, oldest first, without hashes; ``revoked=False``: only those still accepted."""
    t = tables.api_tokens.c
    stmt = sa.select(*_LISTED).where(t.pool == SYSTEM_POOL).order_by(t.created_at, t.token_id)
    if not revoked:
        stmt = stmt.where(t.revoked_at.is_(None))
    return await _all(store, stmt)
