"""A write a browser sends for a page of another site is refused before anything reads it; the
server's own pages (the dashboard), the origins ``allow_origins`` names, and clients that send no
``Origin`` (everything but a browser) write as before. Over ASGI: the WebSocket handshake is in
tests/streams/test_origins.py."""

from __future__ import annotations

import httpx
import orjson
import pytest

from services.http.app import create_app
from services.http.middleware import parse_origins
from services.runtime.service import Service
from tests.api.conftest import end_offsets

pytestmark = pytest.mark.http_layer

TASK = {"task_id": "t1", "type": "x"}


def _client(service: Service, **settings: str) -> httpx.AsyncClient:
    app = create_app(service=service, settings=service.settings.model_copy(update=settings))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1:8080")


@pytest.mark.parametrize("origin", ["http://evil.example", "null", "http://127.0.0.1:9999",
                                    "https://127.0.0.1.evil.example:8080", "not an origin"])
async def test_a_write_from_another_sites_page_is_refused_and_appends_nothing(
        service: Service, origin: str) -> None:
    async with _client(service) as client:
        before = await end_offsets(service)
        # The form a page can send without a CORS preflight: a text/plain body.
        resp = await client.post("/v1/tasks", params={"wait": "true"}, content=orjson.dumps(TASK),
                                 headers={"origin": origin, "content-type": "text/plain"})
        assert resp.status_code == 403, resp.text
        assert f"a request from a page of {origin!r} is refused" in resp.json()["detail"]
        for method in ("PUT", "DELETE", "PATCH"):
            other = await client.request(method, "/v1/budgets", headers={"origin": origin}, json={})
            assert other.status_code == 403, (method, other.text)
        assert await end_offsets(service) == before


async def test_the_servers_own_pages_and_other_clients_write_and_reads_are_untouched(
        service: Service) -> None:
    async with _client(service) as client:
        own = await client.post("/v1/tasks", params={"wait": "true"}, json=TASK,
                                headers={"origin": "http://127.0.0.1:8080"})
        assert own.status_code == 201, own.text
        cli = await client.post("/v1/tasks", params={"wait": "true"}, json={**TASK, "task_id": "t2"})
        assert cli.status_code == 201, cli.text
        # A read changes nothing, and a browser does not let another site's page see the answer.
        read = await client.get("/v1/tasks/t1", headers={"origin": "http://evil.example"})
        assert read.status_code == 200, read.text


async def test_allowed_origins_may_write(service: Service) -> None:
    allowed = "https://ops.example.com:443/, http://b.example:8081"
    async with _client(service, allow_origins=allowed) as client:
        for n, origin in enumerate(["https://ops.example.com", "HTTP://B.example:8081"]):
            resp = await client.post("/v1/tasks", params={"wait": "true"}, json={**TASK, "task_id": f"a{n}"},
                                     headers={"origin": origin})
            assert resp.status_code == 201, (origin, resp.text)
        refused = await client.post("/v1/tasks", json={**TASK, "task_id": "x"},
                                    headers={"origin": "https://ops.example.com:8443"})
        assert refused.status_code == 403
    async with _client(service, allow_origins="*") as client:
        anyone = await client.post("/v1/tasks", json={**TASK, "task_id": "any"},
                                   headers={"origin": "http://evil.example"})
        assert anyone.status_code == 202, anyone.text


def test_allowed_origins_are_read_as_browsers_send_them() -> None:
    assert parse_origins(" https://A.example:443/ ,http://b:80, http://c:8080,*") == frozenset(
        {"https://a.example", "http://b", "http://c:8080", "*"})
    for bad in ("ftp://x", "https://x/path", "x.example", "https://"):
        with pytest.raises(ValueError, match="is not an origin"):
            parse_origins(bad)
