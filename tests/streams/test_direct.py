"""A live WebSocket connection that is waiting for messages is written to in the hub's own step: what
the hub hands out reaches the socket before any other task of the event loop runs. A connection
whose socket buffer is full takes the rest later, in order, and one that falls behind still queues."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import pytest
from websockets.client import ClientProtocol
from websockets.frames import Frame
from websockets.http11 import Response
from websockets.uri import parse_uri

from services.http import streams
from services.runtime.eager import run_eagerly
from services.runtime.hub import Message, Subscriber, publish_progress
from services.runtime.service import Service
from tests.streams.conftest import live, log_events, register, submit
from tests.streams.test_websocket import events_until, flood, recv, slow_client


def _message(n: int) -> Message:
    return Message(json.dumps({"type": "event", "n": n}), partition=0, position=n)


def test_with_nothing_queued_an_offer_goes_to_the_connection_at_once_and_in_order() -> None:
    sub = Subscriber(bound=10)
    sub.set_channels(frozenset({(None, "events")}))
    sent: list[list[Message]] = []
    sub.direct = sent.append
    first = [_message(0), _message(1)]
    assert sub.offer(first)
    assert sent == [first] and sub.pending == 0  # handed over, nothing queued
    # Queued while the connection was busy: what is offered next queues behind it, even once the
    # connection waits again, until it has taken the queue.
    sub.direct = None
    assert sub.offer([_message(2)])
    sub.direct = sent.append
    assert sub.offer([_message(3)])
    assert sent == [first] and sub.pending == 2
    # Not while lagged or closed.
    sub.close("stopping")
    assert not sub.offer([_message(4)]) and sent == [first]


class _BlockingClient:
    """A WebSocket client on a plain blocking socket (websockets' sans-I/O protocol): reading from
    it holds the calling thread, and the event loop with it when called from a coroutine."""

    def __init__(self, base: str) -> None:
        host, port = base.split(":")
        self.sock = socket.create_connection((host, int(port)))
        self.protocol = ClientProtocol(parse_uri(f"ws://{base}/ws/v1/events"), max_size=None)
        self.events: list[Any] = []

    def _flush(self) -> None:
        for data in self.protocol.data_to_send():
            self.sock.sendall(data)

    def next_event(self, timeout: float) -> Any:
        self.sock.settimeout(timeout)
        while not self.events:
            self.protocol.receive_data(self.sock.recv(65536))
            self.events += self.protocol.events_received()
            self._flush()
        return self.events.pop(0)

    def handshake(self) -> None:
        self.protocol.send_request(self.protocol.connect())
        self._flush()
        assert isinstance(self.next_event(5), Response)

    def send(self, body: dict[str, Any]) -> None:
        self.protocol.send_text(json.dumps(body).encode())
        self._flush()

    def message(self, timeout: float) -> dict[str, Any]:
        frame = self.next_event(timeout)
        assert isinstance(frame, Frame)
        decoded: dict[str, Any] = json.loads(frame.data)
        return decoded


async def test_a_waiting_connection_is_written_to_in_the_hubs_own_step(service: Service) -> None:
    async with live(service) as (base, _):
        client = _BlockingClient(base)
        try:
            await asyncio.to_thread(client.handshake)  # the server needs the loop meanwhile
            client.send({"type": "subscribe", "channels": ["task:t1"]})
            assert (await asyncio.to_thread(client.message, 5))["type"] == "subscribed"
            await asyncio.sleep(0.2)  # the connection is back to waiting, its stream live
            assert publish_progress(service, "t1", message="halfway") == 1
            # No await from here on: the event loop runs nothing else while this reads. The frame
            # is on the socket only if it was written within publish_progress.
            got = client.message(2)
            assert got["type"] == "progress" and got["task_id"] == "t1" and got["message"] == "halfway"
        finally:
            client.sock.close()


async def test_a_connection_whose_buffer_fills_gets_every_event_once_in_order(
        service: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    continued: list[bool] = []

    def spied(coro: Any) -> Any:  # the real one, noting when a send had to go on in a task
        rest = run_eagerly(coro)
        continued.append(rest is not None)
        return rest

    monkeypatch.setattr(streams, "run_eagerly", spied)
    await submit(service, register("a1"))
    async with live(service, bound=100_000) as (base, hub):
        # The server's sends to it stop part way and go on once it reads again.
        slow = await slow_client(base)
        await slow.send(json.dumps({"type": "subscribe", "channels": ["events"]}))
        subscribed = await recv(slow)
        assert subscribed["type"] == "subscribed"
        after = subscribed["after"]
        start = after if isinstance(after, int) else after["0"]
        await flood(service)
        await asyncio.sleep(0.5)
        expected = [(p, o) for p, o, _ in await log_events(service) if o > start]
        got = await events_until(slow, len(expected), timeout=60)
        assert [(m["partition"], m["position"]) for m in got] == expected
        assert hub.subscribers == 1  # not lagged: the bound was never reached
        assert any(continued), "no send waited for the client: the test did not fill the buffer"
        await slow.close()
