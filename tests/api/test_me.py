"""``GET /v1/auth/me`` on a server without authentication: it says so, and that all is allowed.

(With authentication required, each role's answer is checked against what the server enforces in
``tests/auth/test_tokens.py``.)"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from services.http.app import create_app
from services.http.permissions import ROLE_PERMISSIONS
from services.runtime.settings import Settings

pytestmark = pytest.mark.http_layer


async def test_me_without_authentication_says_so_and_allows_everything(tmp_path: Path) -> None:
    app = create_app(settings=Settings(data_dir=tmp_path))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        me = await client.get("/v1/auth/me")
    assert me.status_code == 200
    assert me.json() == {"authenticated": False, "kind": None, "id": None, "role": None, "agent_id": None,
                         "permissions": sorted(ROLE_PERMISSIONS["admin"])}
