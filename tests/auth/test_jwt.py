"""JWT bearer tokens: HS256 with a shared secret, RS256 with a JWKS file and a JWKS URL; the role
and the agent come from configurable claims; expiry, issuer and audience are enforced."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from services.executors.standins.serving import serving
from tests.auth.conftest import Deployment, deployment

SECRET = "s" * 40


def _hs(claims: dict[str, Any], secret: str = SECRET, **headers: Any) -> str:
    return jwt.encode({"exp": int(time.time()) + 60, **claims}, secret, algorithm="HS256",
                      headers=headers or None)


def _rsa() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _jwks(key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    return {"keys": [{**jwk, "kid": kid, "use": "sig", "alg": "RS256"}]}


def _rs(key: rsa.RSAPrivateKey, kid: str, claims: dict[str, Any]) -> str:
    return jwt.encode({"exp": int(time.time()) + 60, **claims}, key, algorithm="RS256", headers={"kid": kid})


@pytest.fixture
def hs(tmp_path: Path) -> Iterator[Deployment]:
    with deployment(tmp_path, jwt_secret=SECRET, jwt_issuer="https://idp.example",
                    jwt_audience="agentbus") as dep:
        yield dep


def _claims(**more: Any) -> dict[str, Any]:
    return {"iss": "https://idp.example", "aud": "agentbus", **more}


def test_hs256_jwt_with_a_role_acts_as_its_subject(hs: Deployment) -> None:
    with hs.client(_hs(_claims(sub="alice", role="operator"))) as client:
        resp = client.post("/v1/tasks", params={"wait": "true"}, json={"task_id": "t1", "type": "x"})
        assert resp.status_code == 201, resp.text
        assert resp.json()["events"][0]["actor"] == "jwt:alice"
        assert client.get("/v1/tokens").status_code == 403


def test_agent_jwts_act_as_the_agent_their_claim_names(hs: Deployment) -> None:
    with hs.client(_hs(_claims(sub="svc-7", role="agent", agent_id="a9"))) as client:
        resp = client.post("/v1/agents", params={"wait": "true"}, json={"name": "nine"})
        assert resp.status_code == 201, resp.text
        assert resp.json()["events"][0]["data"]["agent_id"] == "a9"
        assert resp.json()["events"][0]["actor"] == "agent:a9"
        assert client.post("/v1/agents/other/heartbeat").status_code == 403
    # Without the agent claim the subject is the agent.
    with hs.client(_hs(_claims(sub="a9", role="agent"))) as client:
        assert client.post("/v1/agents/a9/heartbeat", params={"wait": "true"}).status_code == 200


@pytest.mark.parametrize(("claims", "secret", "detail"), [
    (_claims(sub="a", role="admin", exp=int(time.time()) - 10), SECRET, "Signature has expired"),
    (_claims(sub="a", role="admin"), "t" * 40, "Signature verification failed"),
    ({"sub": "a", "role": "admin", "iss": "https://idp.example", "aud": "other"}, SECRET, "Audience"),
    ({"sub": "a", "role": "admin", "aud": "agentbus", "iss": "https://evil.example"}, SECRET, "issuer"),
    ({"sub": "a", "role": "admin", "iss": "https://idp.example"}, SECRET, "aud"),
    (_claims(sub="a", role="root"), SECRET, "names no agentbus role"),
    (_claims(role="admin"), SECRET, "sub"),
])
def test_bad_jwts_are_401(hs: Deployment, claims: dict[str, Any], secret: str, detail: str) -> None:
    with hs.client(_hs(claims, secret)) as client:
        resp = client.get("/v1/agents")
        assert resp.status_code == 401
        assert detail in resp.json()["detail"]
        assert "invalid_token" in resp.headers["www-authenticate"]


def test_an_unsigned_jwt_is_refused(hs: Deployment) -> None:
    unsigned = jwt.encode(_claims(sub="a", role="admin", exp=int(time.time()) + 60), "", algorithm="none")
    with hs.client(unsigned) as client:
        resp = client.get("/v1/agents")
        assert resp.status_code == 401 and "'none' are not accepted" in resp.json()["detail"]


def test_rs256_jwts_verified_with_a_jwks_file(tmp_path: Path) -> None:
    key, other = _rsa(), _rsa()
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(_jwks(key, "k1")))
    with deployment(tmp_path, jwt_jwks=str(jwks), jwt_role_claim="roles") as dep:
        with dep.client(_rs(key, "k1", {"sub": "bob", "roles": ["reader", "operator"]})) as client:
            resp = client.post("/v1/tasks", params={"wait": "true"}, json={"task_id": "t1", "type": "x"})
            assert resp.status_code == 201, resp.text  # the strongest role listed
            assert resp.json()["events"][0]["actor"] == "jwt:bob"
        for token, detail in [
            (_rs(other, "k1", {"sub": "bob", "roles": ["admin"]}), "Signature verification failed"),
            (_rs(key, "k2", {"sub": "bob", "roles": ["admin"]}), "no key of the JWKS matches"),
            # Without a shared secret, an HS256 token (signed with the public key, say) is refused.
            (_hs({"sub": "bob", "roles": ["admin"]}), "no JWT secret is configured"),
        ]:
            with dep.client(token) as client:
                resp = client.get("/v1/agents")
                assert resp.status_code == 401 and detail in resp.json()["detail"], resp.text


def test_rs256_jwts_verified_with_a_jwks_url(tmp_path: Path) -> None:
    key = _rsa()
    fetched: list[str] = []

    async def keys(request: Any) -> JSONResponse:
        fetched.append(request.url.path)
        return JSONResponse(_jwks(key, "k1"))

    with serving(Starlette(routes=[Route("/.well-known/jwks.json", keys)])) as idp, \
            deployment(tmp_path, jwt_jwks=f"{idp}/.well-known/jwks.json") as dep:
        for _ in range(3):
            with dep.client(_rs(key, "k1", {"sub": "carol", "role": "reader"})) as client:
                assert client.get("/v1/agents").status_code == 200
        assert fetched == ["/.well-known/jwks.json"]  # fetched once, then cached
