"""Command handlers and state changes for API tokens, which live in the pool ``contracts.SYSTEM_POOL``.

A token is issued with its role (and, for the agent role, the agent it acts as) and the SHA-256
of its secret; it can be revoked once, for good. Which requests a role may make is the HTTP
layer's business (``services.http.permissions``); here only the tokens' own rules: one id, one
token; only the _system pool holds them.

Pure: no I/O, no clock. Never sees a token's secret, only its hash.
"""

from __future__ import annotations

from contracts import SYSTEM_POOL, Payload, Reason
from contracts import commands as c
from contracts import event_types as e
from services.domain.decision import DeciderConfig, Rejected
from services.domain.state import PoolState

__all__ = ["issue", "revoke", "token_issued", "token_revoked"]


def _system_only(state: PoolState, cmd: c.IssueApiToken | c.RevokeApiToken) -> None:
    # Tokens of a user pool would be read by nobody: the API looks them up in _system only.
    if state.pool != SYSTEM_POOL:
        raise Rejected(Reason.NOT_SYSTEM_POOL,
                       f"API tokens live in the {SYSTEM_POOL!r} pool, not in {state.pool!r}",
                       token_id=cmd.token_id, pool=state.pool)


def issue(state: PoolState, cmd: c.IssueApiToken, config: DeciderConfig) -> list[Payload]:
    """A new token; its id is never reused, not even after a revocation."""
    _system_only(state, cmd)
    if cmd.token_id in state.api_tokens:
        raise Rejected(Reason.TOKEN_EXISTS, f"API token {cmd.token_id!r} already exists",
                       token_id=cmd.token_id)
    return [e.ApiTokenIssued(token_id=cmd.token_id, role=cmd.role, agent_id=cmd.agent_id, name=cmd.name,
                             secret_hash=cmd.secret_hash)]


def revoke(state: PoolState, cmd: c.RevokeApiToken, config: DeciderConfig) -> list[Payload]:
    """The token is refused from now on (the API notices within its cache time)."""
    _system_only(state, cmd)
    revoked = state.api_tokens.get(cmd.token_id)
    if revoked is None:
        raise Rejected(Reason.UNKNOWN_TOKEN, f"no API token {cmd.token_id!r}", token_id=cmd.token_id)
    if revoked:
        raise Rejected(Reason.TOKEN_REVOKED, f"API token {cmd.token_id!r} is revoked already",
                       token_id=cmd.token_id)
    return [e.ApiTokenRevoked(token_id=cmd.token_id)]


def token_issued(state: PoolState, ev: e.ApiTokenIssued) -> None:
    state.api_tokens[ev.token_id] = False


def token_revoked(state: PoolState, ev: e.ApiTokenRevoked) -> None:
    state.api_tokens[ev.token_id] = True
