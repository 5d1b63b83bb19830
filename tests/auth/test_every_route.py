"""Every role against every route of the app, from the app's own route list.

The routes come from ``app.routes`` of the app under test, so a route added anywhere is checked
here: one missing from ``PERMISSIONS`` fails ``test_every_route_has_a_permission``. Each route is
then called over a real socket with no credential and with a token of each role: no credential
is 401 (open and signed routes aside), a role without the route's permission is 403 naming it,
and a role with it gets past authentication (any other answer: 2xx, 404, 409, 422...).
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
import websockets.exceptions
import websockets.sync.client

from services.http.auth import route_keys
from services.http.permissions import OPEN, PERMISSIONS, ROLE_PERMISSIONS, SIGNED
from tests.auth.conftest import Deployment, deployment, until

ROLES = ("reader", "agent", "operator", "admin")
# The server, a token per role (None: no token), and the (method, path) of every route.
World = tuple[Deployment, dict[str | None, str | None], list[tuple[str, str]]]
AGENT = "a-self"
HELD = "t-held"  # a task the agent holds: its progress route passes the agent's own check
# Path parameters: ids naming nothing (404s are fine: past authentication), the agent as itself.
PARAMS = {"agent_id": AGENT, "task_id": "t-none", "workflow_id": "w-none", "name": "n-none",
          "allocation_id": "al-none", "token_id": "tok-none", "source": "src-none"}
# Where the generic value would change what later calls see: deregistering the agent.
OVERRIDES: dict[tuple[str, str], dict[str, str]] = {
    ("DELETE", "/v1/agents/{agent_id}"): {"agent_id": "a-other"},
    ("POST", "/v1/tasks/{task_id}/progress"): {"task_id": HELD},
}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with pytest.MonkeyPatch.context() as mp:
        for name in [n for n in os.environ if n.startswith("AGENTBUS_")]:
            mp.delenv(name)
        with deployment(tmp_path_factory.mktemp("routes")) as dep:
            tokens: dict[str | None, str | None] = {None: None}
            for role in ROLES:
                tokens[role] = dep.token(role, agent_id=AGENT if role == "agent" else None)
            with dep.client(tokens["operator"]) as op:
                assert op.post("/v1/agents", params={"wait": "true"}, json={
                    "agent_id": AGENT, "name": "self", "capacity": 5}).status_code == 201
                assert op.post("/v1/tasks", params={"wait": "true"}, json={
                    "task_id": HELD, "type": "x", "agent_id": AGENT}).status_code == 201
                until(lambda: op.get(f"/v1/tasks/{HELD}").json().get("status") == "assigned")
            assert dep.app is not None
            yield dep, tokens, [key for route in dep.app.routes for key in route_keys(route)]


def test_every_route_has_a_permission(world: Any) -> None:
    _, _, keys = world
    missing = [key for key in keys if key not in PERMISSIONS]
    assert missing == [], f"routes without an entry in services.http.permissions.PERMISSIONS: {missing}"
    # And the table names no route the app does not have (a renamed route would leave it stale).
    stale = [key for key in PERMISSIONS if key not in keys]
    assert stale == [], f"PERMISSIONS entries for routes the app does not have: {stale}"


def _path(key: tuple[str, str]) -> str:
    values = {**PARAMS, **OVERRIDES.get(key, {})}
    return re.sub(r"\{(\w+)(:\w+)?\}", lambda m: values.get(m.group(1), "x"), key[1])


def _call(dep: Deployment, client: httpx.Client, key: tuple[str, str],
          token: str | None) -> tuple[int, dict[str, Any], str]:
    """(status, JSON body or {}, WWW-Authenticate) of one call of the route ``key``."""
    method, _ = key
    path = _path(key)
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    if method == "WS":
        url = dep.url.replace("http://", "ws://") + path
        try:
            with websockets.sync.client.connect(url, additional_headers=headers, open_timeout=10):
                return 101, {}, ""
        except websockets.exceptions.InvalidStatus as exc:
            response = exc.response
            return response.status_code, _json(response.body), response.headers.get("www-authenticate", "")
    if method == "*":
        method, path = "GET", f"{path}/swagger-ui.css"
    params = {"channels": "events"} if method == "GET" else {}
    body: dict[str, Any] | None = {} if method in ("POST", "PUT") else None
    with client.stream(method, path, params=params, json=body, headers=headers) as resp:
        # Streams (SSE) never end: the status and headers are the answer.
        raw = resp.read() if "text/event-stream" not in resp.headers.get("content-type", "") else b""
        return resp.status_code, _json(raw), resp.headers.get("www-authenticate", "")


def _json(raw: bytes | bytearray | None) -> dict[str, Any]:
    try:
        value = orjson.loads(raw or b"null")
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def test_every_role_against_every_route(world: Any) -> None:
    dep, tokens, keys = world
    wrong: list[str] = []
    client = dep.client()
    for key in keys:
        permission = PERMISSIONS[key]
        answers = {role: _call(dep, client, key, tokens[role]) for role in (None, *ROLES)}
        for role, (status, body, challenge) in answers.items():
            where = f"{key[0]} {key[1]} as {role or 'nobody'}: {status} {body}"
            if permission == OPEN:
                if status in (401, 403):
                    wrong.append(f"{where} (open route)")
            elif permission == SIGNED:
                # Authenticated by the route itself: a token changes nothing.
                if status != answers[None][0] or status == 403:
                    wrong.append(f"{where} (signed route answered {answers[None][0]} without a token)")
            elif role is None:
                if status != 401 or not challenge.startswith("Bearer"):
                    wrong.append(f"{where} (expected 401 with a Bearer challenge)")
            elif permission not in ROLE_PERMISSIONS[role]:
                if status != 403 or body.get("permission") != permission:
                    wrong.append(f"{where} (expected 403 naming {permission!r})")
            elif status in (401, 403):
                wrong.append(f"{where} (the role holds {permission!r})")
    client.close()
    assert wrong == [], "\n".join(wrong)


def test_the_roles_nest_reader_agent_operator_admin() -> None:
    chain = [ROLE_PERMISSIONS[r] for r in ROLES]
    assert all(a < b for a, b in itertools.pairwise(chain))
    assert ROLE_PERMISSIONS["reader"] == {"read"}
    assert {"tokens:manage", "webhooks:manage"} <= ROLE_PERMISSIONS["admin"] - ROLE_PERMISSIONS["operator"]
    assert {"tasks:submit", "workflows:run", "pools:manage", "agents:manage", "subscriptions:manage"} <= (
        ROLE_PERMISSIONS["operator"] - ROLE_PERMISSIONS["agent"])
