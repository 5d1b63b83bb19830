"""/docs and /redoc work without internet: their pages name no other host, and the app serves
every asset they load itself, with the right content type."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from services.http.app import create_app
from services.runtime.settings import Settings

BASE = "http://t"
# Where a page loads or links something: src/href attributes, and the URLs its script hands on.
REFERENCE = re.compile(r"""(?:src|href|spec-url)\s*=\s*["']([^"']+)["']|\burl:\s*["']([^"']+)["']""")
ABSOLUTE = re.compile(r"""(?:https?:)?//[^\s"'<>)]+""")
CONTENT_TYPES = {".js": "javascript", ".css": "text/css", ".png": "image/png", ".json": "application/json"}

pytestmark = pytest.mark.http_layer


@pytest.fixture
def docs_client(tmp_path: Path) -> httpx.AsyncClient:
    # No service is needed: the pages and assets are answered by the HTTP layer alone.
    app = create_app(settings=Settings(data_dir=tmp_path))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE)


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_docs_pages_load_nothing_from_another_host(docs_client: httpx.AsyncClient, page: str) -> None:
    async with docs_client as client:
        resp = await client.get(page)
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/html")
        html = resp.text
        foreign = [url for url in ABSOLUTE.findall(html) if not url.startswith(f"{BASE}/")]
        assert foreign == [], f"{page} names other hosts: {foreign}"
        references = [a or b for a, b in REFERENCE.findall(html)]
        assets = [ref for ref in references if not ref.startswith("#")]
        # The script, the stylesheet (Swagger UI), the icon and the OpenAPI document.
        assert len(assets) >= (4 if page == "/docs" else 3), assets
        for ref in assets:
            assert ref.startswith("/"), f"{ref} is not served by the app"
            got = await client.get(ref)
            assert got.status_code == 200, ref
            suffix = Path(ref).suffix
            assert CONTENT_TYPES[suffix] in got.headers["content-type"], (ref, got.headers["content-type"])
            assert len(got.content) > 0
            if suffix == ".css":  # what a stylesheet loads in turn: inline data only
                loaded = re.findall(r"""url\(\s*["']?([^"')]+)""", got.text)
                assert [u for u in loaded if not u.startswith("data:")] == [], ref


async def test_swagger_ui_asks_no_validator_and_has_its_oauth2_redirect(
    docs_client: httpx.AsyncClient,
) -> None:
    async with docs_client as client:
        html = (await client.get("/docs")).text
        assert '"validatorUrl": null' in html
        assert (await client.get("/docs/oauth2-redirect")).status_code == 200


async def test_the_docs_are_not_in_the_openapi_document(docs_client: httpx.AsyncClient) -> None:
    async with docs_client as client:
        paths = (await client.get("/openapi.json")).json()["paths"]
        assert not [p for p in paths if p.startswith(("/docs", "/redoc"))]
