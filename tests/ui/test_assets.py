"""The dashboard's files as the server hands them out: open at /ui with authentication on (they hold
no data), kept to their own origin by their content security policy, naming no other host (so the
page works offline), and the vendored libraries exactly the files VENDORED.md records."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import httpx

from services.dashboard import STATIC
from tests.ui.conftest import AuthServer, Server

STATIC_DIR = Path(str(STATIC))
SVG_NAMESPACE = "http://www.w3.org/2000/svg"


def test_root_sends_a_browser_to_the_dashboard(server: Server) -> None:
    resp = httpx.get(f"{server.url}/", follow_redirects=False)
    assert resp.status_code == 307 and resp.headers["location"].endswith("/ui/")
    page = httpx.get(f"{server.url}/ui", follow_redirects=True)
    assert page.status_code == 200 and page.url.path == "/ui/"
    assert page.headers["content-type"].startswith("text/html") and '<main id="view"' in page.text
    policy = page.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "connect-src 'self'" in policy
    module = httpx.get(f"{server.url}/ui/js/main.js")
    assert module.status_code == 200 and "javascript" in module.headers["content-type"]


def test_the_files_are_open_with_auth_on_but_the_data_is_not(auth_server: AuthServer) -> None:
    url = auth_server.server.url
    for path in ("/", "/ui/", "/ui/js/api.js", "/ui/vendor/uplot/uPlot.esm.js", "/ui/css/app.css"):
        assert httpx.get(f"{url}{path}", follow_redirects=True).status_code == 200, path
    assert httpx.get(f"{url}/v1/system/status").status_code == 401


def test_no_file_names_another_host() -> None:
    own = [p for p in STATIC_DIR.rglob("*") if p.is_file() and "vendor" not in p.parts]
    assert {p.suffix for p in own} >= {".html", ".js", ".css", ".svg"}
    for path in own:
        text = path.read_text().replace(SVG_NAMESPACE, "")  # a name, never fetched
        assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", text, re.IGNORECASE), path
    # Every module the page imports is in the package.
    for path in STATIC_DIR.joinpath("js").rglob("*.js"):
        for target in re.findall(r"from '(\.[^']+)'", path.read_text()):
            assert (path.parent / target).resolve().is_file(), f"{path.name} imports missing {target}"


def test_the_vendored_files_are_those_vendored_md_records() -> None:
    record = (STATIC_DIR / "vendor" / "VENDORED.md").read_text()
    rows = re.findall(r"\| `([^`]+)` \| `[^`]+` \| `([0-9a-f]{64})` \|", record)
    assert rows, "VENDORED.md lists no file"
    vendored = {p.relative_to(STATIC_DIR / "vendor").as_posix()
                for p in (STATIC_DIR / "vendor").rglob("*") if p.is_file() and p.name != "VENDORED.md"}
    assert {name for name, _ in rows} == vendored
    for name, digest in rows:
        assert hashlib.sha256((STATIC_DIR / "vendor" / name).read_bytes()).hexdigest() == digest, name
