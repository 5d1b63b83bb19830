"""A page of another site cannot read the live streams through its user's browser: browsers apply
no CORS to WebSockets, so the handshake's ``Origin`` is checked (403 before the upgrade). The
server's own pages (the dashboard) and clients that send no ``Origin`` subscribe as before. A
real uvicorn and the ``websockets`` client."""

from __future__ import annotations

import json

import pytest
import websockets
from websockets.exceptions import InvalidStatus

from services.runtime.service import Service
from tests.streams.conftest import live


async def test_a_handshake_from_another_sites_page_is_refused(service: Service) -> None:
    async with live(service) as (base, _):
        for origin in ("http://evil.example", "null"):
            with pytest.raises(InvalidStatus) as refused:
                await websockets.connect(f"ws://{base}/ws/v1/events", origin=origin)  # type: ignore[arg-type]
            assert refused.value.response.status_code == 403
        for origin in (f"http://{base}", None):
            async with websockets.connect(f"ws://{base}/ws/v1/events", origin=origin) as ws:  # type: ignore[arg-type]
                await ws.send(json.dumps({"type": "subscribe", "channels": ["tasks"]}))
                assert json.loads(await ws.recv())["type"] == "subscribed"
