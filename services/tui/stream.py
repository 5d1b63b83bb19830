"""The live event tail of ``agentbus top``: the pool's events from the server's WebSocket
(``/ws/v1/events``), followed through disconnections.

``Tail.run`` connects, subscribes to ``pool/<pool>/events`` (replaying the last ``backlog``
positions first, so the tail is not empty on arrival), hands each event to ``on_event`` and every
change of the connection to ``on_state``. When the server goes away it reconnects with exponential
backoff and resumes after the last position it received, so no event is missed or shown twice; a
refused handshake (401/403) is reported in the API's words and retried at the longest delay.

This module must never raise out of ``run`` for anything the network or the server does: the UI
shows the state it reports instead.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus, WebSocketException

from services.tui.source import http_error

__all__ = ["StreamState", "Tail", "socket_url"]

PATH = "/ws/v1/events"
FIRST_DELAY_S = 0.5
LONGEST_DELAY_S = 10.0
OPEN_TIMEOUT_S = 10.0
# Closing waits this long for the server's answer, then drops the connection.
CLOSE_TIMEOUT_S = 2.0

Cursor = dict[int, int]


@dataclass(frozen=True, slots=True)
class StreamState:
    """Where the tail is: ``live``, or not, with the words to show and the seconds to the next try."""

    live: bool
    text: str
    retry_in: float | None = None


def socket_url(url: str) -> str:
    """The WebSocket address of the server at ``url`` (http -> ws, https -> wss, its path kept)."""
    base = url.rstrip("/")
    if base.startswith("https://"):
        return "wss://" + base.removeprefix("https://") + PATH
    return "ws://" + base.removeprefix("http://") + PATH


def _cursor(value: Any) -> Cursor:
    """A cursor of the stream's JSON (an integer for one partition, else an object) as a dict."""
    if isinstance(value, int):
        return {0: value}
    if isinstance(value, dict):
        return {int(p): int(o) for p, o in value.items()}
    return {}


class _Restart(Exception):
    """The server asked the client to come back (lagged) or forgot the position it resumed from."""


class Tail:
    """Follows one pool's events over the WebSocket for as long as ``run`` runs."""

    def __init__(self, url: str, pool: str, headers: dict[str, str], *,
                 on_event: Callable[[dict[str, Any]], None], on_state: Callable[[StreamState], None],
                 backlog: int = 50) -> None:
        self.uri, self.pool, self.headers = socket_url(url), pool, headers
        self.on_event, self.on_state, self.backlog = on_event, on_state, backlog
        # Per partition, the last position received (None until the first subscription answers).
        self.cursor: Cursor | None = None
        self.received = 0
        # This connection's subscription was answered (the server was reached and took it).
        self._live_seen = False
        # Between the subscription and its restart from the backlog: events then are replayed after.
        self._rewinding = False

    @property
    def channel(self) -> str:
        return f"pool/{self.pool}/events"

    async def run(self) -> None:
        """Connect, follow, reconnect with backoff; until cancelled."""
        delay = FIRST_DELAY_S
        while True:
            self.on_state(StreamState(False, f"connecting to {self.uri}"))
            self._live_seen = False
            try:
                async with connect(self.uri, additional_headers=self.headers, open_timeout=OPEN_TIMEOUT_S,
                                   close_timeout=CLOSE_TIMEOUT_S, max_size=2**24) as ws:
                    await self._follow(ws)
                why = "the server closed the stream"
            except _Restart as exc:
                self.on_state(StreamState(False, str(exc)))
                delay = FIRST_DELAY_S
                continue
            except InvalidStatus as exc:
                status = exc.response.status_code
                body: Any
                try:
                    body = orjson.loads(exc.response.body or b"")
                except orjson.JSONDecodeError:
                    body = (exc.response.body or b"").decode(errors="replace")
                why = str(http_error(status, body))
                delay = LONGEST_DELAY_S if status in (401, 403) else delay
            except (OSError, TimeoutError, WebSocketException) as exc:
                why = f"cannot reach agentbus at {self.uri}: {exc or type(exc).__name__}"
            except Exception as exc:  # a message of an unexpected shape: said, and the stream resumed
                why = f"unexpected message: {type(exc).__name__}: {exc}"
            if self._live_seen:  # it was followed until now: the first retry comes soon
                delay = FIRST_DELAY_S
            self.on_state(StreamState(False, f"disconnected: {why}; reconnecting in {delay:g} s", delay))
            await asyncio.sleep(delay)
            delay = min(LONGEST_DELAY_S, delay * 2)

    async def _follow(self, ws: ClientConnection) -> None:
        """Subscribe (resuming after the cursor when there is one), then hand on what arrives."""
        self._rewinding = False
        await self._subscribe(ws, self.cursor)
        async for raw in ws:
            message = orjson.loads(raw)
            for m in message["messages"] if message.get("type") == "batch" else [message]:
                await self._handle(ws, m)

    async def _subscribe(self, ws: ClientConnection, after: Cursor | None) -> None:
        body: dict[str, Any] = {"type": "subscribe", "channels": [self.channel], "batch": True}
        if after is not None:
            body["after"] = {str(p): o for p, o in after.items()}
        await ws.send(orjson.dumps(body).decode())

    async def _handle(self, ws: ClientConnection, m: dict[str, Any]) -> None:
        kind = m.get("type")
        if kind == "event":
            if self.cursor is None or self._rewinding:
                return
            self.cursor[int(m["partition"])] = int(m["position"])
            self.received += 1
            self.on_event(m)
        elif kind == "subscribed":
            first = self.cursor is None
            self.cursor = _cursor(m.get("after"))
            self._live_seen, self._rewinding = True, False
            self.on_state(StreamState(True, f"live: {self.channel}"))
            if first and self.backlog > 0:
                back = {p: max(-1, o - self.backlog) for p, o in self.cursor.items()}
                if back != self.cursor:
                    self._rewinding = True
                    await self._subscribe(ws, back)
        elif kind == "lagged":
            self.cursor = _cursor(m.get("resume_after")) or self.cursor
            raise _Restart("the tail fell behind the server; catching up")
        elif kind == "error":
            text = str(m.get("message", ""))
            if "beyond the end of the log" in text:
                # The server's log is not the one the cursor came from (restored, or replaced).
                self.cursor = None
                raise _Restart(f"the server's log restarted ({text}); following it from its end")
            self.on_state(StreamState(True, f"live: {self.channel} (server said: {text})"))
        elif kind == "ping":
            with contextlib.suppress(WebSocketException):
                await ws.send('{"type":"pong"}')
