"""Read-model queries about outbound subscriptions (pool ``contracts.SYSTEM_POOL``): the list,
one by name, and one's dead letters, for ``GET /v1/subscriptions...``.

Reads only. No secret is stored in the read models, so none can be returned.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from contracts import SYSTEM_POOL
from projections import tables
from projections.queries import _all, _one
from projections.store import ProjectionStore

__all__ = ["failures", "subscription", "subscriptions"]

_S = tables.subscriptions
_SHOWN = [c for c in _S.c if c.name not in ("pool", "status")]
_F = tables.subscription_failures


async def subscriptions(store: ProjectionStore) -> list[dict[str, Any]]:
    """Every subscription (not deleted), by name."""
    stmt = (sa.select(*_SHOWN).where(_S.c.pool == SYSTEM_POOL, _S.c.status == "active")
            .order_by(_S.c.name))
    return await _all(store, stmt)


async def subscription(store: ProjectionStore, name: str) -> dict[str, Any] | None:
    """Subscription ``name``, or None when there is none (or it was deleted)."""
    stmt = sa.select(*_SHOWN).where(_S.c.pool == SYSTEM_POOL, _S.c.name == name, _S.c.status == "active")
    return await _one(store, stmt)


async def failures(store: ProjectionStore, name: str, incarnation: int, *, after: int | None = None,
                   limit: int = 100) -> list[dict[str, Any]]:
    """The dead letters of subscription ``name`` (its ``incarnation``: not those of a deleted
    subscription of the same name) in log order; ``after``: the last ``position`` seen, for paging."""
    stmt = (sa.select(_F).where(_F.c.pool == SYSTEM_POOL, _F.c.name == name, _F.c.incarnation == incarnation)
            .order_by(_F.c.position).limit(limit))
    if after is not None:
        stmt = stmt.where(_F.c.position > after)
    return [{k: v for k, v in row.items() if k != "pool"} for row in await _all(store, stmt)]
