"""What a refused request is answered: 401 with a Bearer challenge, 403 naming the permission, 429
with Retry-After; on HTTP, on the WebSocket handshake and on Server-Sent Events alike. And what
an accepted one carries: the envelope's actor is the principal, never a header."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import websockets.exceptions
import websockets.sync.client
from prometheus_client.parser import text_string_to_metric_families

from contracts import Reason
from services.runtime import tokens
from tests.auth.conftest import Deployment, deployment

HTTP_FAMILY = "agentbus_http_request_duration_seconds"


@pytest.fixture
def dep(tmp_path: Path) -> Iterator[Deployment]:
    with deployment(tmp_path) as d:
        yield d


def test_no_token_a_bad_one_and_a_malformed_header_are_401_with_a_bearer_challenge(dep: Deployment) -> None:
    admin = dep.token("admin")
    token_id = admin.split("_")[1]
    with dep.client() as anonymous:
        resp = anonymous.get("/v1/agents")
        assert resp.status_code == 401
        assert resp.headers["www-authenticate"] == 'Bearer realm="agentbus"'
        assert "bearer token is required" in resp.json()["detail"]
        for header in (f"Basic {admin}", "Bearer", f"Token {admin}"):
            refused = anonymous.get("/v1/agents", headers={"Authorization": header})
            assert refused.status_code == 401, header
    cases = {
        f"abt_{token_id}_wrong-secret": f"wrong secret for API token '{token_id}'",
        "abt_no-such-token_secret": "unknown API token 'no-such-token'",
        "eyJhbGciOi.not.a-jwt": "not an agentbus API token (abt_...), and no JWT verification is configured",
    }
    for credential, detail in cases.items():
        with dep.client(credential) as client:
            resp = client.get("/v1/agents")
            assert resp.status_code == 401
            assert resp.headers["www-authenticate"] == 'Bearer realm="agentbus", error="invalid_token"'
            assert resp.json() == {"detail": detail}
            assert credential.rpartition("_")[2] not in resp.text  # the secret is never echoed


def test_403_names_the_permission_the_role_lacks(dep: Deployment) -> None:
    reader = dep.token("reader")
    with dep.client(reader) as client:
        resp = client.post("/v1/tasks", json={"type": "x"})
        assert resp.status_code == 403
        assert resp.json() == {"detail": "the reader role lacks the permission 'tasks:submit'",
                               "permission": "tasks:submit"}
        assert client.get("/v1/tasks").status_code == 200


def test_refused_requests_are_timed_under_their_routes_template(dep: Deployment) -> None:
    reader = dep.token("reader")
    refused = [("GET", "/v1/tasks/{task_id}", "401"), ("POST", "/v1/tasks", "403")]

    def counts(client: httpx.Client) -> dict[tuple[str, str, str], float]:
        # The registry is the process's: other requests of this process are counted there too.
        found = {(s.labels["method"], s.labels["route"], s.labels["status"]): s.value
                 for family in text_string_to_metric_families(client.get("/metrics").text)
                 if family.name == HTTP_FAMILY for s in family.samples if s.name.endswith("_count")}
        return {key: found.get(key, 0.0) for key in [*refused, ("GET", "unmatched", "401"),
                                                      ("POST", "unmatched", "403")]}

    with dep.client(reader) as client, dep.client() as anonymous:
        before = counts(client)
        assert anonymous.get("/v1/tasks/t-x").status_code == 401
        assert client.post("/v1/tasks", json={"type": "x"}).status_code == 403
        after = counts(client)
    assert {key: after[key] - before[key] for key in after} == {
        refused[0]: 1, refused[1]: 1, ("GET", "unmatched", "401"): 0, ("POST", "unmatched", "403"): 0}


def test_a_command_is_checked_whichever_route_sends_it(dep: Deployment) -> None:
    # POST /v1/commands is open to agents, but each command still needs its own permission.
    agent = dep.token("agent", agent_id="a1")
    operator = dep.token("operator")
    with dep.client(agent) as client:
        resp = client.post("/v1/commands", json={"type": "SubmitTask", "data": {"task_id": "t", "type": "x"}})
        assert resp.status_code == 403 and resp.json()["permission"] == "tasks:submit"
    with dep.client(operator) as client:
        # An operator cannot mint tokens through the generic route either, nor forge the reactors'.
        resp = client.post("/v1/commands", json={"type": "IssueApiToken", "pool": "_system", "data": {
            "token_id": "forged", "role": "admin", "secret_hash": "0" * 64}})
        assert resp.status_code == 403 and resp.json()["permission"] == "tokens:manage"
        resp = client.post("/v1/commands",
                           json={"type": "AssignTask", "data": {"task_id": "t", "agent_id": "a"}})
        assert resp.status_code == 403 and resp.json()["permission"] == "system"
        ok = client.post("/v1/commands", params={"wait": "true"},
                         json={"type": "SubmitTask", "data": {"task_id": "t", "type": "x"}})
        assert ok.status_code == 201


def test_past_the_rate_a_token_gets_429_with_retry_after_then_passes_again(tmp_path: Path) -> None:
    with deployment(tmp_path, auth_rate=2.0, auth_burst=3) as dep:
        _rate_limited(dep)


def _rate_limited(dep: Deployment) -> None:
    reader, other = dep.token("reader"), dep.token("reader")
    with dep.client(reader) as client:
        statuses = [client.get("/v1/agents").status_code for _ in range(3)]  # the burst
        assert statuses == [200, 200, 200]
        limited = client.get("/v1/agents")
        assert limited.status_code == 429
        assert int(limited.headers["retry-after"]) >= 1
        assert "request rate" in limited.json()["detail"]
        with dep.client(other) as second:  # one bucket per token
            assert second.get("/v1/agents").status_code == 200
        time.sleep(int(limited.headers["retry-after"]))
        assert client.get("/v1/agents").status_code == 200


def test_the_websocket_handshake_is_refused_with_the_same_statuses(dep: Deployment) -> None:
    ws = dep.url.replace("http://", "ws://") + "/ws/v1/events"
    with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
        websockets.sync.client.connect(ws, open_timeout=10)
    assert refused.value.response.status_code == 401
    assert refused.value.response.headers["www-authenticate"].startswith("Bearer")
    with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
        websockets.sync.client.connect(ws, additional_headers={"Authorization": "Bearer abt_x_y"},
                                       open_timeout=10)
    assert refused.value.response.status_code == 401
    reader = dep.token("reader")
    # Browsers cannot set headers on a WebSocket: the token may come as ?access_token=.
    with websockets.sync.client.connect(f"{ws}?access_token={reader}", open_timeout=10) as socket:
        socket.send('{"type": "subscribe", "channels": ["events"]}')
        assert '"subscribed"' in str(socket.recv(timeout=10))


def test_an_open_stream_ends_once_its_token_is_revoked_and_others_go_on(dep: Deployment) -> None:
    admin, reader, other = dep.token("admin"), dep.token("reader"), dep.token("reader")
    parsed = tokens.parse(reader)
    assert parsed is not None
    ws = dep.url.replace("http://", "ws://") + "/ws/v1/events"
    subscribe = '{"type": "subscribe", "channels": ["events"]}'
    with websockets.sync.client.connect(f"{ws}?access_token={reader}", open_timeout=10) as revoked, \
            websockets.sync.client.connect(f"{ws}?access_token={other}", open_timeout=10) as valid, \
            httpx.Client(base_url=dep.url, timeout=10) as client, \
            client.stream("GET", "/v1/events/stream",
                          params={"channels": "events", "access_token": reader}) as sse:
        for socket in (revoked, valid):
            socket.send(subscribe)
            assert '"subscribed"' in str(socket.recv(timeout=10))
        with dep.client(admin) as management:
            assert management.delete(f"/v1/tokens/{parsed[0]}").status_code == 200
            received: list[str] = []
            with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
                while True:
                    received.append(str(revoked.recv(timeout=10)))
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
            assert "revoked" in closed.value.rcvd.reason
            assert '"type":"error"' in received[-1] and "no longer valid" in received[-1]
            lines = list(sse.iter_lines())  # the server ends the response
            assert "no longer valid" in lines[-2] and "revoked" in lines[-2], lines[-3:]
            # A stream whose token still passes was checked as often, and goes on.
            assert management.post("/v1/tasks", json={"task_id": "after", "type": "x"}).status_code == 202
        while '"TaskSubmitted"' not in (got := str(valid.recv(timeout=10))):
            assert '"error"' not in got


def test_sse_takes_the_token_from_the_query_other_routes_only_from_the_header(dep: Deployment) -> None:
    reader = dep.token("reader")
    with httpx.Client(base_url=dep.url, timeout=10) as client:
        with client.stream("GET", "/v1/events/stream",
                           params={"channels": "events", "access_token": reader}) as resp:
            assert resp.status_code == 200
            assert resp.headers["content-type"].startswith("text/event-stream")
        assert client.get("/v1/events/stream", params={"channels": "events"}).status_code == 401
        assert client.get("/v1/agents", params={"access_token": reader}).status_code == 401


def test_the_actor_is_the_principal_never_the_header(dep: Deployment) -> None:
    operator = dep.token("operator")
    operator_id = operator.split("_")[1]
    agent = dep.token("agent", agent_id="a1")
    with dep.client(operator) as op:
        resp = op.post("/v1/agents", params={"wait": "true"}, headers={"X-Agentbus-Actor": "mallory"},
                       json={"agent_id": "a1", "name": "one"})
        assert resp.status_code == 201
        assert {e["actor"] for e in resp.json()["events"]} == {f"token:{operator_id}"}
        # A CloudEvent names its actor too: the principal wins over it as well.
        resp = op.post("/v1/commands", params={"wait": "true"}, json={
            "specversion": "1.0", "id": "ce-1", "source": "urn:x", "type": "SubmitTask", "actor": "mallory",
            "data": {"task_id": "t1", "type": "x"}})
        assert resp.status_code == 201
        assert {e["actor"] for e in resp.json()["events"]} == {f"token:{operator_id}"}
    with dep.client(agent) as client:
        resp = client.post("/v1/agents/a1/heartbeat", params={"wait": "true"},
                           headers={"X-Agentbus-Actor": "mallory"})
        assert resp.status_code == 200
        assert {e["actor"] for e in resp.json()["events"]} == {"agent:a1"}


def test_an_agent_cannot_touch_another_agents_task(dep: Deployment) -> None:
    operator = dep.token("operator")
    mine, theirs = dep.token("agent", agent_id="mine"), dep.token("agent", agent_id="theirs")
    with dep.client(operator) as op:
        for agent_id in ("mine", "theirs"):
            assert op.post("/v1/agents", params={"wait": "true"},
                           json={"agent_id": agent_id, "name": agent_id, "capacity": 2}).status_code == 201
        for task_id in ("t1", "r9.draft"):  # the second as a step's id: <run id>.<step>
            assert op.post("/v1/tasks", params={"wait": "true"},
                           json={"task_id": task_id, "type": "x", "agent_id": "theirs"}).status_code == 201
            _until_status(op, task_id, "assigned")
    with dep.client(mine) as client:
        # Naming the other agent is refused outright.
        for verb in ("start", "complete", "fail"):
            resp = client.post(f"/v1/tasks/t1/{verb}", json={"agent_id": "theirs"})
            assert resp.status_code == 403, verb
        # Without a name, the report is made in its own name, and the decider refuses it.
        resp = client.post("/v1/tasks/t1/complete", params={"wait": "true"}, json={"result": {"x": 1}})
        assert resp.status_code == 409 and resp.json()["code"] == Reason.WRONG_AGENT
        resp = client.post("/v1/commands", params={"wait": "true"},
                           json={"type": "CompleteTask", "data": {"task_id": "t1"}})
        assert resp.status_code == 409 and resp.json()["code"] == Reason.WRONG_AGENT
        resp = client.post("/v1/commands",
                           json={"type": "FailTask", "data": {"task_id": "t1", "agent_id": "theirs"}})
        assert resp.status_code == 403
        # Nor heartbeat, register, record costs or post progress as the other agent.
        assert client.post("/v1/agents/theirs/heartbeat").status_code == 403
        assert client.post("/v1/agents", json={"agent_id": "theirs", "name": "x"}).status_code == 403
        assert client.post("/v1/costs", json={"agent_id": "theirs", "model": "m"}).status_code == 403
        assert client.post("/v1/tasks/t1/progress", json={"message": "hi"}).status_code == 403
        # Registering without an id registers itself.
        resp = client.post("/v1/agents", params={"wait": "true"}, json={"name": "again"})
        assert resp.status_code == 409 and resp.json()["code"] == Reason.AGENT_EXISTS
    with dep.client(theirs) as client:
        assert client.post("/v1/tasks/t1/progress", json={"message": "working"}).status_code == 202
        assert client.post("/v1/tasks/t1/progress", params={"pool": "other"},
                           json={"message": "wrong pool"}).status_code == 403
        # The pool the progress goes to is the body's: the check looks there too.
        assert client.post("/v1/tasks/t1/progress", params={"pool": "default"},
                           json={"pool": "other", "message": "wrong pool"}).status_code == 403
        # Nor may it tell a workflow run its task is no step of.
        resp = client.post("/v1/tasks/t1/progress", json={"workflow_id": "someone-elses-run", "message": "x"})
        assert resp.status_code == 403 and "not a step of workflow run" in resp.json()["detail"]
        resp = client.post("/v1/tasks/t1/progress", json={"pool": "default", "message": "ok"})
        assert resp.status_code == 202
        assert client.post("/v1/tasks/r9.draft/progress", json={"workflow_id": "r9"}).status_code == 202
        assert client.post("/v1/tasks/r9.draft/progress", json={"workflow_id": "r8"}).status_code == 403
        resp = client.post("/v1/tasks/t1/complete", params={"wait": "true"}, json={"result": {"ok": True}})
        assert resp.status_code == 200
        assert resp.json()["events"][0]["data"]["agent_id"] == "theirs"


def _until_status(client: httpx.Client, task_id: str, status: str) -> None:
    deadline = time.monotonic() + 10
    while client.get(f"/v1/tasks/{task_id}").json().get("status") != status:
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_the_openapi_document_says_who_may_call_what(dep: Deployment) -> None:
    with dep.client() as anonymous:
        doc = anonymous.get("/openapi.json").json()  # open, like /docs and /v1/health
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    submit = doc["paths"]["/v1/tasks"]["post"]
    assert submit["security"] == [{"bearer": []}]
    assert submit["x-agentbus-permission"] == "tasks:submit"
    assert {"401", "403", "429"} <= set(submit["responses"])
    assert "security" not in doc["paths"]["/v1/health"]["get"]
