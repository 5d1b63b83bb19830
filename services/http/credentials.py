"""Bearer credentials to principals: API tokens checked against the read model, JWTs against a
shared secret (HS256) or a JWKS (a file, or a URL fetched with ``jwt.PyJWKClient``).

A checked credential is trusted for ``auth_cache_s`` seconds in this process (never past a JWT's
``exp``), so most requests cost a dictionary lookup, not a query. A revocation therefore applies
to a request once the read model holds it, plus at most that long; at once in the process that
revoked the token over HTTP (``Authenticator.forget``). Each principal also has a token bucket:
``auth_rate`` requests per second, ``auth_burst`` at once.

This module must never store, log or echo a credential: a refusal names the token id at most.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jwt
import orjson
from pydantic import TypeAdapter, ValidationError

from contracts.commands import ROLES
from contracts.values import Id
from projections import access
from services.http.permissions import Principal
from services.runtime import tokens
from services.runtime.service import Service
from services.runtime.settings import Settings

__all__ = ["Authenticator", "JWTVerifier", "RateLimiter", "Unauthorized"]

# Bounds on what one process remembers: checked credentials and rate-limit buckets.
MAX_CACHED = 10_000
MAX_BUCKETS = 100_000
# A shorter HMAC key is below RFC 7518's minimum for HS256 (PyJWT warns about it).
MIN_JWT_SECRET_BYTES = 32
# Algorithms a JWKS key may sign with: asymmetric only (an HMAC "key" in a public JWKS is no secret).
ASYMMETRIC = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
_ID: TypeAdapter[str] = TypeAdapter(Id)


class Unauthorized(Exception):
    """No credential, or one that is not valid (unknown, revoked, expired, badly signed): 401."""


class RateLimiter:
    """A token bucket per principal: ``rate`` requests per second, ``burst`` at once (0: none)."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)

    def admit(self, key: str, now: float | None = None) -> float:
        """0 when the request may go on (and counts), else the seconds until it may."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic() if now is None else now
        level, at = self._buckets.get(key, (float(self.burst), now))
        level = min(float(self.burst), level + (now - at) * self.rate)
        if level < 1.0:
            self._buckets[key] = (level, now)
            return (1.0 - level) / self.rate
        if key not in self._buckets and len(self._buckets) >= MAX_BUCKETS:
            self._buckets.pop(next(iter(self._buckets)))  # the longest-known principal starts afresh
        self._buckets[key] = (level - 1.0, now)
        return 0.0


class JWTVerifier:
    """Checks a JWT's signature, expiry, issuer and audience, and reads its role and agent."""

    def __init__(self, settings: Settings) -> None:
        secret = settings.jwt_secret.get_secret_value() if settings.jwt_secret is not None else ""
        if secret and len(secret.encode()) < MIN_JWT_SECRET_BYTES:
            raise ValueError(f"the JWT secret (AGENTBUS_JWT_SECRET) must be at least {MIN_JWT_SECRET_BYTES} "
                             "bytes long (RFC 7518, HS256)")
        self.secret = secret
        self.issuer = settings.jwt_issuer or None
        self.audience = settings.jwt_audience or None
        self.role_claim, self.agent_claim = settings.jwt_role_claim, settings.jwt_agent_claim
        source = settings.jwt_jwks
        self._client: jwt.PyJWKClient | None = None
        self._keys: jwt.PyJWKSet | None = None
        if source.startswith(("https://", "http://")):
            self._client = jwt.PyJWKClient(source, cache_keys=True, lifespan=300, timeout=10)
        elif source:
            self._keys = jwt.PyJWKSet.from_dict(orjson.loads(Path(source).read_bytes()))

    @property
    def configured(self) -> bool:
        return bool(self.secret) or self._client is not None or self._keys is not None

    async def verify(self, token: str) -> tuple[Principal, float]:
        """The principal of ``token`` and its ``exp`` (Unix time); raises Unauthorized."""
        try:
            header = jwt.get_unverified_header(token)
            algorithm = str(header.get("alg"))
            key = await self._key(token, algorithm, header)
            claims = jwt.decode(token, key, algorithms=[algorithm], audience=self.audience,
                                issuer=self.issuer, options={"require": ["exp", "sub"]})
        except jwt.PyJWKClientError as exc:
            raise Unauthorized(f"cannot fetch the JWKS to verify the JWT: {exc}") from None
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"invalid JWT: {exc}") from None
        return self._principal(claims), float(claims["exp"])

    async def _key(self, token: str, algorithm: str, header: Mapping[str, Any]) -> Any:
        if algorithm == "HS256":
            if not self.secret:
                raise Unauthorized("HS256 JWTs are not accepted: no JWT secret is configured")
            return self.secret
        if algorithm not in ASYMMETRIC:
            raise Unauthorized(f"JWTs signed with {algorithm!r} are not accepted")
        if self._client is not None:
            # PyJWKClient fetches with urllib (blocking); it caches the set, so this is rare.
            return await asyncio.to_thread(self._client.get_signing_key_from_jwt, token)
        if self._keys is None:
            raise Unauthorized("JWTs signed with keys are not accepted: no JWKS is configured")
        kid = header.get("kid")
        keys = [k for k in self._keys.keys if kid is None or k.key_id == kid]
        if len(keys) != 1:
            raise Unauthorized(f"no key of the JWKS matches the JWT's kid {kid!r}" if kid is not None
                               else "the JWT names no kid and the JWKS holds several keys")
        return keys[0]

    def _principal(self, claims: Mapping[str, Any]) -> Principal:
        subject = _id(claims.get("sub"), "sub")
        role = _role(claims.get(self.role_claim))
        if role is None:
            raise Unauthorized(f"the JWT's {self.role_claim!r} claim names no agentbus role "
                               f"({', '.join(ROLES)})")
        agent_id = None
        if role == "agent":
            agent_id = _id(claims.get(self.agent_claim, subject), self.agent_claim)
        return Principal("jwt", subject, role, agent_id)


def _id(value: Any, claim: str) -> str:
    # The subject and the agent end up in envelopes and commands: the contract's id rules apply.
    try:
        return _ID.validate_python(value)
    except ValidationError:
        raise Unauthorized(f"the JWT's {claim!r} claim is not a valid id (1-200 characters, no control "
                           "characters)") from None


def _role(claimed: Any) -> str | None:
    """The role a claim names: a role, or a list of names of which the strongest role counts."""
    names = [claimed] if isinstance(claimed, str) else claimed if isinstance(claimed, list) else []
    known = [r for r in ROLES if r in names]  # ROLES: strongest first
    return known[0] if known else None


class Authenticator:
    """Turns a bearer credential into a principal, remembering checked ones for a while."""

    def __init__(self, settings: Settings) -> None:
        self.cache_s = settings.auth_cache_s
        self.max_body_bytes = settings.max_body_bytes
        self.jwt = JWTVerifier(settings)
        self.limiter = RateLimiter(settings.auth_rate, settings.auth_burst)
        self._cache: dict[str, tuple[Principal, float]] = {}  # credential -> (principal, until)

    async def principal(self, service: Service, credential: str) -> Principal:
        """Who ``credential`` is; raises Unauthorized."""
        now = time.monotonic()
        hit = self._cache.get(credential)
        if hit is not None and hit[1] > now:
            return hit[0]
        parsed = tokens.parse(credential)
        if parsed is not None:
            principal, until = await self._api_token(service, *parsed), now + self.cache_s
        elif self.jwt.configured:
            principal, expires = await self.jwt.verify(credential)
            until = min(now + self.cache_s, now + expires - time.time())
        else:
            raise Unauthorized("not an agentbus API token (abt_...), and no JWT verification is configured")
        if until > now:
            self._remember(credential, principal, until, now)
        return principal

    async def _api_token(self, service: Service, token_id: str, secret: str) -> Principal:
        row = await access.token(service.store, token_id)
        if row is None:
            raise Unauthorized(f"unknown API token {token_id!r}")
        if row["revoked_at"] is not None:
            raise Unauthorized(f"API token {token_id!r} is revoked")
        if not tokens.verify(secret, row["secret_hash"]):
            raise Unauthorized(f"wrong secret for API token {token_id!r}")
        return Principal("token", token_id, row["role"], row["agent_id"])

    def _remember(self, credential: str, principal: Principal, until: float, now: float) -> None:
        if len(self._cache) >= MAX_CACHED:
            self._cache = {k: v for k, v in self._cache.items() if v[1] > now}
            while len(self._cache) >= MAX_CACHED:
                self._cache.pop(next(iter(self._cache)))
        self._cache[credential] = (principal, until)

    def forget(self, token_id: str) -> None:
        """Check the API token ``token_id`` again on its next use (it was just revoked here)."""
        self._cache = {k: v for k, v in self._cache.items()
                       if not (v[0].kind == "token" and v[0].id == token_id)}
