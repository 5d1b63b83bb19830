"""API tokens end to end: ``agentbus tokens`` on the deployment's log (before the server ever ran,
too), ``/v1/tokens`` for admins, and how fast a revocation is obeyed."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson

from events import open_log
from projections import queries
from projections.store import ProjectionStore
from services.executors.standins.serving import serving
from services.http.app import create_app
from services.runtime.settings import Settings
from tests.auth.conftest import Deployment, deployment, ready


def _records(data: Path) -> list[bytes]:
    """Every record of the deployment's log (commands and events), as stored."""

    async def read() -> list[bytes]:
        log = open_log(f"sqlite:///{data}/log.db")
        await log.start()
        try:
            out: list[bytes] = []
            for topic in ("commands", "events"):
                for partition in range(await log.partitions(topic)):
                    out += [r.value for r in await log.read(topic, partition, 0, 100_000)]
            return out
        finally:
            await log.close()

    return asyncio.run(read())


def _tables(data: Path) -> str:
    async def dump() -> str:
        store = ProjectionStore(f"sqlite+aiosqlite:///{data}/read.db")
        await store.start()
        try:
            return str(await queries.dump_tables(store))
        finally:
            await store.close()

    return asyncio.run(dump())


def test_create_prints_the_token_last_and_nothing_keeps_its_secret(tmp_path: Path) -> None:
    with deployment(tmp_path) as dep:
        result = dep.cli("tokens", "create", "--role", "agent", "--agent-id", "a1", "--name", "ci runner")
        assert result.exit_code == 0, result.output
        lines = result.stdout.strip().splitlines()
        token = lines[-1]
        token_id, secret = token.removeprefix("abt_").split("_", 1)
        assert lines[:-1] == [f"token_id: {token_id}", "role: agent", "agent_id: a1", "status: applied"]
        assert token.startswith("abt_") and len(secret) >= 43  # 32 random bytes
        with dep.client(token) as client:
            assert client.get("/v1/agents").status_code == 200
        listed = dep.cli("tokens", "list")
        assert listed.exit_code == 0
        [row] = orjson.loads(listed.stdout)
        assert row["token_id"] == token_id and row["role"] == "agent" and row["name"] == "ci runner"
        assert secret not in listed.stdout and "secret_hash" not in row
    # Neither the log (decoded) nor the read models, nor any file of the data directory, hold it.
    assert all(secret.encode() not in value for value in _records(dep.data))
    assert token_id in _tables(dep.data) and secret not in _tables(dep.data)
    for path in dep.data.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


def test_the_first_admin_token_is_made_before_the_server_ever_started(tmp_path: Path) -> None:
    data = tmp_path / "data"
    dep = Deployment(data, "", Settings(data_dir=data))
    result = dep.cli("tokens", "create", "--role", "admin", "--wait", "0")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-2:-1] == ["status: pending"]
    assert "works once `agentbus serve`" in result.stderr
    token = result.stdout.strip().splitlines()[-1]
    app = create_app(settings=Settings(data_dir=data, auth="required"))
    with serving(app) as url:
        ready(url)
        started = Deployment(data, url, app.state.settings, app)
        with started.client(token) as client:
            deadline = time.monotonic() + 10
            while (resp := client.get("/v1/tokens")).status_code != 200:
                assert resp.status_code == 401 and time.monotonic() < deadline
                time.sleep(0.05)
            assert [t["role"] for t in resp.json()["items"]] == ["admin"]


def test_admins_create_list_and_revoke_tokens_over_http(tmp_path: Path) -> None:
    # A long cache: only the revoking process's own forgetting makes the revocation immediate.
    with deployment(tmp_path, auth_cache_s=60) as dep:
        admin = dep.token("admin")
        with dep.client(admin) as client:
            assert client.post("/v1/tokens", json={"role": "agent"}).status_code == 422
            assert client.post("/v1/tokens", json={"role": "reader", "agent_id": "a1"}).status_code == 422
            created = client.post("/v1/tokens", json={"role": "reader", "name": "dashboard"})
            assert created.status_code == 201, created.text
            body = created.json()
            assert body["status"] == "applied" and body["role"] == "reader" and body["name"] == "dashboard"
            reader = body["token"]
            with dep.client(reader) as as_reader:
                assert as_reader.get("/v1/agents").status_code == 200  # usable on the next request
                assert as_reader.get("/v1/tokens").status_code == 403
                listed = client.get("/v1/tokens").json()["items"]
                assert {t["token_id"] for t in listed} == {admin.split("_")[1], body["token_id"]}
                assert reader.rpartition("_")[2] not in str(listed)
                revoked = client.delete(f"/v1/tokens/{body['token_id']}")
                assert revoked.status_code == 200 and revoked.json()["status"] == "applied"
                refused = as_reader.get("/v1/agents")
                assert refused.status_code == 401
                assert refused.json()["detail"] == f"API token {body['token_id']!r} is revoked"
            again = client.delete(f"/v1/tokens/{body['token_id']}")
            assert again.status_code == 409 and again.json()["code"] == "TOKEN_REVOKED"
            assert client.delete("/v1/tokens/no-such").status_code == 404
            active = client.get("/v1/tokens", params={"revoked": "false"}).json()["items"]
            assert [t["token_id"] for t in active] == [admin.split("_")[1]]


def test_a_revocation_from_the_cli_is_obeyed_once_the_read_model_has_it(tmp_path: Path) -> None:
    # auth_cache_s=0: every request checks the read model, so the next one is refused.
    with deployment(tmp_path, auth_cache_s=0) as dep:
        reader = dep.token("reader")
        token_id = reader.split("_")[1]
        with dep.client(reader) as client:
            assert client.get("/v1/agents").status_code == 200
            result = dep.cli("tokens", "revoke", token_id)
            assert result.exit_code == 0, result.output
            assert result.stdout.startswith(f"{token_id}: revoked at ")
            assert client.get("/v1/agents").status_code == 401
        assert dep.cli("tokens", "revoke", token_id).exit_code == 1
        assert dep.cli("tokens", "revoke", "no-such").exit_code == 1


def test_with_a_cache_a_revocation_is_obeyed_within_the_cache_time(tmp_path: Path) -> None:
    cache_s = 1.0
    with deployment(tmp_path, auth_cache_s=cache_s) as dep:
        reader = dep.token("reader")
        with dep.client(reader) as client:
            assert client.get("/v1/agents").status_code == 200  # checked, and remembered
            assert dep.cli("tokens", "revoke", reader.split("_")[1]).exit_code == 0
            applied = time.monotonic()
            statuses = []
            while time.monotonic() < applied + cache_s + 0.5:
                statuses.append((time.monotonic() - applied, client.get("/v1/agents").status_code))
                time.sleep(0.05)
            assert all(status == 401 for at, status in statuses if at > cache_s), statuses
            assert statuses[-1][1] == 401


def test_me_says_who_each_token_is_and_what_its_role_may_do(tmp_path: Path) -> None:
    with deployment(tmp_path) as dep:
        for role in ("reader", "agent", "operator", "admin"):
            token = dep.token(role, agent_id="a1") if role == "agent" else dep.token(role)
            with dep.client(token) as client:
                me = client.get("/v1/auth/me")
                assert me.status_code == 200, me.text
                body = me.json()
                assert body["authenticated"] is True and body["kind"] == "token" and body["role"] == role
                assert body["id"] == token.split("_")[1]
                assert body["agent_id"] == ("a1" if role == "agent" else None)
                permissions = set(body["permissions"])
                # What it says is what the server enforces: a cancel is refused exactly when it
                # says the role lacks tasks:manage.
                cancel = client.post("/v1/tasks/nope/cancel", json={"reason": "x"})
                assert (cancel.status_code == 403) == ("tasks:manage" not in permissions), cancel.text
                assert ("tokens:manage" in permissions) == (role == "admin")
                assert ("read" in permissions) and body["permissions"] == sorted(permissions)
        with dep.client(None) as anonymous:
            assert anonymous.get("/v1/auth/me").status_code == 401
        with dep.client("agentbus_nope_nope") as wrong:
            assert wrong.get("/v1/auth/me").status_code == 401
