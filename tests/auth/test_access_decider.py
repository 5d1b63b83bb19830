"""API tokens in the decider (given / when / then) and in the read model (issued, then revoked)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from contracts import SYSTEM_POOL, Reason
from contracts import commands as c
from contracts import event_types as e
from projections import ProjectionStore, Projector, access
from tests.gwt import given, wrap

HASH = "ab" * 32


def issued(token_id: str = "t1", role: str = "admin", agent_id: str | None = None) -> e.ApiTokenIssued:
    return e.ApiTokenIssued(token_id=token_id, role=role, agent_id=agent_id, name=None, secret_hash=HASH)


def test_a_token_is_issued_with_its_hash_only() -> None:
    given(pool=SYSTEM_POOL).when(
        c.IssueApiToken(token_id="t1", role="agent", agent_id="a1", name="ci", secret_hash=HASH)
    ).then(e.ApiTokenIssued(token_id="t1", role="agent", agent_id="a1", name="ci", secret_hash=HASH))


def test_an_id_is_never_issued_twice_not_even_after_revocation() -> None:
    cmd = c.IssueApiToken(token_id="t1", role="reader", secret_hash=HASH)
    given(issued(), pool=SYSTEM_POOL).when(cmd).rejects(Reason.TOKEN_EXISTS, token_id="t1")
    given(issued(), e.ApiTokenRevoked(token_id="t1"), pool=SYSTEM_POOL).when(cmd).rejects(
        Reason.TOKEN_EXISTS, token_id="t1")


def test_tokens_live_in_the_system_pool_only() -> None:
    given().when(c.IssueApiToken(token_id="t1", role="reader", secret_hash=HASH)).rejects(
        Reason.NOT_SYSTEM_POOL, token_id="t1", pool="default")
    given().when(c.RevokeApiToken(token_id="t1")).rejects(
        Reason.NOT_SYSTEM_POOL, token_id="t1", pool="default")


def test_a_token_is_revoked_once() -> None:
    given(issued(), pool=SYSTEM_POOL).when(c.RevokeApiToken(token_id="t1")).then(
        e.ApiTokenRevoked(token_id="t1"))
    given(issued(), e.ApiTokenRevoked(token_id="t1"), pool=SYSTEM_POOL).when(
        c.RevokeApiToken(token_id="t1")).rejects(Reason.TOKEN_REVOKED, token_id="t1")
    given(pool=SYSTEM_POOL).when(c.RevokeApiToken(token_id="t1")).rejects(Reason.UNKNOWN_TOKEN, token_id="t1")


@pytest.mark.parametrize("fields", [
    {"role": "agent"},  # an agent token names its agent
    {"role": "operator", "agent_id": "a1"},  # and only an agent token does
    {"role": "root"},
    {"role": "reader", "token_id": "has_underscore"},  # the id is split at the first '_'
    {"role": "reader", "secret_hash": "not-a-sha256"},
])
def test_bad_tokens_are_refused_at_the_door(fields: dict[str, str]) -> None:
    with pytest.raises(ValidationError):
        c.IssueApiToken.model_validate({"token_id": "t1", "secret_hash": HASH, **fields})


async def test_the_read_model_holds_role_hash_and_revocation_never_a_secret(tmp_path: Path) -> None:
    store = ProjectionStore(f"sqlite+aiosqlite:///{tmp_path}/read.db")
    await store.start()
    try:
        projector = Projector(store)
        first = wrap([issued("t1", "agent", "a1"), issued("t2", "reader")], pool=SYSTEM_POOL, start=0,
                     command_id="c1")
        await projector.apply("events", 0, list(enumerate(first)))
        row = await access.token(store, "t1")
        assert row is not None
        stored = (row["role"], row["agent_id"], row["secret_hash"], row["revoked_at"])
        assert stored == ("agent", "a1", HASH, None)
        # The revocation comes in a later batch: the row is read, then changed.
        revoked = wrap([e.ApiTokenRevoked(token_id="t1")], pool=SYSTEM_POOL, start=2, command_id="c2")
        await projector.apply("events", 0, [(2, revoked[0])])
        row = await access.token(store, "t1")
        assert row is not None and row["revoked_at"] == revoked[0].time.isoformat()
        listed = await access.tokens(store)
        assert [t["token_id"] for t in listed] == ["t1", "t2"]
        assert all("secret_hash" not in t for t in listed)
        assert [t["token_id"] for t in await access.tokens(store, revoked=False)] == ["t2"]
    finally:
        await store.close()
