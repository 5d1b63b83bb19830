"""A sender talking to a real agentbus server over TCP (uvicorn), as a webhook provider does: the
app's own body limit answers an oversized delivery 413 before it is read, and nothing is appended."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from services.executors.standins.serving import serving
from services.http.app import create_app
from services.runtime.settings import Settings
from tests.webhooks.conftest import StandardSender, new_secret

LIMIT = 64 * 1024


def _received(client: httpx.Client) -> list[dict[str, Any]]:
    items = client.get("/v1/events", params={"limit": 1000}).json()["items"]
    return [e for e in items if e["type"] == "ExternalEventReceived"]


def test_a_real_server_verifies_deliveries_and_refuses_oversized_ones(tmp_path: Path) -> None:
    sender = StandardSender(new_secret())
    app = create_app(settings=Settings(data_dir=tmp_path, max_body_bytes=LIMIT))
    with serving(app) as url, httpx.Client(base_url=url, timeout=10) as client:
        put = client.put("/v1/webhooks/shop", json={"secret": sender.secret, "scheme": "standard"})
        assert put.status_code == 200, put.text
        small = json.dumps({"type": "note", "text": "hello"})
        ok = client.post("/v1/webhooks/shop", content=small, headers=sender.headers(small))
        assert ok.status_code == 200 and ok.json()["status"] == "received", ok.text
        big = json.dumps({"type": "note", "text": "x" * LIMIT})
        refused = client.post("/v1/webhooks/shop", content=big, headers=sender.headers(big))
        assert refused.status_code == 413, refused.text
        # Streamed without a Content-Length: counted as it arrives, refused all the same.
        chunks = (big[i:i + 4096].encode() for i in range(0, len(big), 4096))
        streamed = client.post("/v1/webhooks/shop", content=chunks, headers=sender.headers(big))
        assert streamed.status_code == 413, streamed.text
        [event] = _received(client)
        assert event["data"]["payload"] == {"type": "note", "text": "hello"}
