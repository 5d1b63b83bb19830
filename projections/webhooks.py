"""Read-model queries about inbound webhook sources (pool ``contracts.SYSTEM_POOL``).

``sources`` and ``source`` are what ``GET /v1/webhooks`` shows: never the secret, not even sealed.
``verifier`` is what the API verifies a delivery with: the sealed secret, which only the
deployment's key opens. Reads only.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from contracts import SYSTEM_POOL
from projections import tables
from projections.queries import _all, _one
from projections.store import ProjectionStore

__all__ = ["source", "sources", "verifier"]

_W = tables.webhook_sources
_SHOWN = [_W.c.source, _W.c.scheme, _W.c.target_pool.label("pool"), _W.c.mapping, _W.c.updated_at]
_LIVE = (_W.c.pool == SYSTEM_POOL, _W.c.deleted_at.is_(None))


async def sources(store: ProjectionStore) -> list[dict[str, Any]]:
    """Every source (not deleted), by name, without its secret."""
    return await _all(store, sa.select(*_SHOWN).where(*_LIVE).order_by(_W.c.source))


async def source(store: ProjectionStore, name: str) -> dict[str, Any] | None:
    """Source ``name`` without its secret, or None when there is none (or it was deleted)."""
    return await _one(store, sa.select(*_SHOWN).where(*_LIVE, _W.c.source == name))


async def verifier(store: ProjectionStore, name: str) -> dict[str, Any] | None:
    """Source ``name`` with its sealed secret and the position that set it, or None."""
    cols = [*_SHOWN, _W.c.secret, _W.c.position]
    return await _one(store, sa.select(*cols).where(*_LIVE, _W.c.source == name))
