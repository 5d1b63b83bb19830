"""Live streams over HTTP: the WebSocket ``/ws/v1/events``, Server-Sent Events at
``GET /v1/events/stream``, and ``POST /v1/tasks/{task_id}/progress`` (ephemeral progress).

Both streams carry the same messages (JSON objects with a ``type``) from one ``Feed`` each
(``services.runtime.feed``) on the process's ``Hub`` (``services.runtime.hub``), which the app's
lifespan starts with the service (``running_hub``). A WebSocket client sends
``{"type": "subscribe", "channels": [...], "after": P}``, ``{"type": "unsubscribe", "channels": [...]}``
and ``{"type": "ping"}``; anything else is answered ``{"type": "error", "message": ...}`` and the
connection stays open. ``"batch": true`` in a subscribe asks for several messages per frame, and
``"compression": "lz4"`` for the frames that carry events as binary frames, each the lz4 frame of
the JSON text it would otherwise be (replies, errors and pings stay text). An
idle connection gets ``{"type": "ping"}`` every ``PING_INTERVAL_S`` (WebSocket) or a comment line
(SSE); uvicorn also pings at the protocol level and answers the client's protocol pings.

With authentication on, an open stream checks the credential it was opened with again every
``--auth-cache-s`` (at least every second): once it no longer passes (a revoked API token, an
expired JWT) the stream sends ``{"type": "error", "message": ...}`` and ends (a WebSocket closes
with 1008, policy violation).

This module must never append anything to the log: progress is handed to the hub and forgotten.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any

import lz4.frame
import orjson
from fastapi import APIRouter, FastAPI, Header, HTTPException, Path, Query, Request, Response, WebSocket
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.requests import HTTPConnection
from starlette.websockets import WebSocketDisconnect

from contracts.values import Id, JSONObject, Text
from services.http.auth import recheck_interval, still_valid
from services.http.bodies import MAX_ID, JSONBodyRoute
from services.http.errors import error_item, invalid
from services.http.responses import Error, ValidationErrors, json_response
from services.runtime.channels import Cursor, cursor_text
from services.runtime.eager import run_eagerly
from services.runtime.feed import BeyondEnd, Feed, FeedError
from services.runtime.hub import Hub, Message
from services.runtime.service import Service, ended

__all__ = ["MAX_PROGRESS_DATA", "Progress", "router", "running_hub"]

MAX_PROGRESS_MESSAGE = 4000
MAX_PROGRESS_DELTA = 16_000
MAX_PROGRESS_DATA = 16 * 1024  # bytes of JSON
_PING = '{"type":"ping"}'
POLICY_VIOLATION = 1008  # the close code when the stream's credential no longer passes
_FIELDS = {"subscribe": {"type", "channels", "after", "batch", "compression"},
           "unsubscribe": {"type", "channels"}, "ping": {"type"}, "pong": {"type"}}
# A client that subscribed with "batch": true gets what is waiting for it as one frame,
# {"type": "batch", "messages": [...]}, of at most this many messages: the cost of a frame (a socket
# write, uvicorn's framing) is paid once per frame, not per event, and a subscriber that falls
# behind catches up in large frames. `agentbus bench --subscribers 100 --rate 1000` on 2 CPUs: a
# frame per message, the service, hub and API used 11.4 s of CPU and the load ran at 371 events/s;
# batched, 4.8 s and 966 events/s (the offered rate), as with a single subscriber.
BATCH_FRAME = 500
COMPRESSIONS = ("lz4", "none")
# Frames built lately, kept to be sent again as they are: subscribers to the same channels are
# handed the same messages (the same objects) by the hub, and pull them as the same frames, so a
# frame is built (and compressed) once, not once per subscriber.
FRAME_CACHE = 16

router = APIRouter(tags=["streams"])


@contextlib.asynccontextmanager
async def running_hub(app: FastAPI, service: Service) -> AsyncIterator[Hub]:
    """Run a hub of ``service`` while the block lasts, as ``app.state.hub``; its options (``bound``,
    ``ping_interval``) are ``app.state.hub_options`` when set before startup (tests, the bench)."""
    hub = Hub.for_service(service, **(getattr(app.state, "hub_options", None) or {}))
    app.state.hub = hub
    app.state.frames = FrameCache()
    await hub.start()
    try:
        yield hub
    finally:
        app.state.hub = None
        await hub.stop()


def _hub(app: Any) -> Hub | None:
    hub: Hub | None = getattr(app.state, "hub", None)
    return hub if hub is not None and hub.partitions else None


# --- WebSocket ----------------------------------------------------------------------------------


class _Frame:
    """One frame's payload, as text and, when first asked for, as an lz4 frame of that text."""

    __slots__ = ("_lz4", "messages", "text")

    def __init__(self, messages: list[Message], batch: bool) -> None:
        self.messages = messages  # held: the cache's key is their ids, valid while they live
        self.text = batch_frame(messages) if batch else messages[0].text
        self._lz4: bytes | None = None

    @property
    def lz4(self) -> bytes:
        if self._lz4 is None:
            self._lz4 = lz4.frame.compress(self.text.encode())
        return self._lz4


class FrameCache:
    """The last ``size`` frames built, by the identity of the messages they hold (see FRAME_CACHE)."""

    def __init__(self, size: int = FRAME_CACHE) -> None:
        self.size = size
        self.built = self.reused = 0
        self._frames: OrderedDict[tuple[int, ...], _Frame] = OrderedDict()

    def get(self, messages: list[Message], batch: bool) -> _Frame:
        """The frame of ``messages``: a batch frame, or (``batch`` false) the one message's own.

        Looked up by the identity of the first and last message and the count, then checked whole
        (``==`` on the lists: the same objects compare equal without their fields being read; equal
        messages make the same frame): a key of every message's identity cost a tuple of hundreds
        of ids per subscriber and frame."""
        key = (batch, len(messages), id(messages[0]), id(messages[-1]))
        frame = self._frames.get(key)
        if frame is not None and frame.messages == messages:
            self.reused += 1
            return frame
        self.built += 1
        frame = self._frames[key] = _Frame(messages, batch)
        if len(self._frames) > self.size:
            self._frames.popitem(last=False)
        return frame


@dataclass
class _Socket:
    """One WebSocket connection: its feed, whether the client takes batched frames, and whether
    it takes the frames that carry events lz4-compressed (as binary frames).

    ``sending``: the rest of a send the hub began (``_send_now``) that had to wait for the
    connection's buffer to drain; ``error``: what such a send raised at once. The writer deals with
    both before it sends anything else.
    """

    websocket: WebSocket
    feed: Feed
    frames: FrameCache
    batch: bool = False
    lz4: bool = False
    sending: asyncio.Task[None] | None = None
    error: BaseException | None = None


@router.websocket("/ws/v1/events", name="events_socket")
async def events_socket(websocket: WebSocket) -> None:
    """Subscribe to channels, replay from a position, then receive events live (see the module)."""
    hub = _hub(websocket.app)
    await websocket.accept()
    if hub is None:
        await websocket.close(1013, "the event streams are not running")
        return
    frames: FrameCache = websocket.app.state.frames  # set with the hub
    conn = _Socket(websocket, Feed(hub), frames)
    writer = asyncio.create_task(_write(conn))
    tasks: list[asyncio.Task[Any]] = [asyncio.create_task(_read(conn)), writer]
    every = recheck_interval(websocket)
    watch = asyncio.create_task(_watch(websocket, every)) if every is not None else None
    if watch is not None:
        tasks.append(watch)
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        conn.feed.sub.direct = None
        if conn.sending is not None:
            tasks.append(conn.sending)
        for task in tasks:
            task.cancel()
        await ended(tasks)
        conn.feed.close()
    feed = conn.feed
    if watch is not None and watch in done and not watch.cancelled() and watch.exception() is None:
        why = f"the credential is no longer valid: {watch.result()}"
        with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
            await websocket.send_text(orjson.dumps({"type": "error", "message": why}).decode())
            await websocket.close(POLICY_VIOLATION, why.encode()[:120].decode(errors="ignore"))
    elif writer in done and not writer.cancelled() and writer.exception() is None and feed.done:
        with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
            await websocket.close(feed.close_code, feed.close_reason[:120])


async def _watch(conn: HTTPConnection, every: float) -> str:
    """Check the stream's credential every ``every`` seconds; return why, once it no longer passes."""
    while True:
        await asyncio.sleep(every)
        why = await still_valid(conn)
        if why is not None:
            return why


async def _read(conn: _Socket) -> None:
    """Handle what the client sends until it goes away."""
    while True:
        message = await conn.websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        raw = message.get("text")
        await handle(conn, raw if raw is not None else message.get("bytes") or b"")


async def handle(conn: _Socket, raw: str | bytes) -> None:
    """Act on one client message; every mistake is answered with an error message."""
    feed = conn.feed
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        feed.error(f"Invalid JSON: {exc}")
        return
    kind = body.get("type") if isinstance(body, dict) else None
    if not isinstance(kind, str):
        feed.error('A message is a JSON object with a string "type": subscribe, unsubscribe or ping')
        return
    known = _FIELDS.get(kind)
    if known is None:
        feed.error(f"Unknown message type: {kind}")
        return
    extra = sorted(set(body) - known)
    if extra:
        feed.error(f"{kind}: unknown field(s) {', '.join(extra)}; expected {', '.join(sorted(known))}")
        return
    try:
        if kind == "subscribe":
            batch = body.get("batch", conn.batch)
            if not isinstance(batch, bool):
                raise FeedError("batch: true (several messages per frame) or false")
            compression = body.get("compression", "lz4" if conn.lz4 else "none")
            if compression is None:
                compression = "none"
            if compression not in COMPRESSIONS:
                raise FeedError('compression: "lz4" (events in binary frames, lz4-compressed) or "none"')
            await feed.subscribe(body.get("channels"), body.get("after"))
            conn.batch, conn.lz4 = batch, compression == "lz4"
        elif kind == "unsubscribe":
            feed.unsubscribe(body.get("channels"))
        elif kind == "ping":
            feed.answer({"type": "pong"})
    except FeedError as exc:
        feed.error(str(exc))


async def _write(conn: _Socket) -> None:
    """Send what the feed gives, a ping when idle, until it is done or the client went away.

    While it waits with the stream live, the hub hands what it fans out straight to ``_send_now``,
    which writes it in the hub's step: a batch reaches every such connection's socket in the step
    that fanned it out, not one pass of the event loop later per connection.
    """
    feed = conn.feed
    direct = functools.partial(_send_now, conn)
    interval = feed.hub.ping_interval
    with contextlib.suppress(WebSocketDisconnect, OSError):
        while not feed.done:
            feed.sub.direct = direct if conn.sending is None and feed.live() else None
            try:
                messages = await feed.pull(interval)
            finally:
                feed.sub.direct = None
            began = conn.sending is not None or conn.error is not None
            await _caught_up(conn)  # what the hub began sending goes first
            if not messages and not feed.done and not began:  # idle for the interval
                await conn.websocket.send_text(_PING)
            await _send(conn, messages)


def _send_now(conn: _Socket, messages: list[Message]) -> None:
    """``Subscriber.direct``: send what the hub offers, in its step, as far as the socket takes it;
    the rest (a full send buffer) goes on in a task the writer waits for before sending more."""
    out = conn.feed.take(messages)
    if not out:
        return
    sub = conn.feed.sub
    try:
        conn.sending = run_eagerly(_send(conn, out))
    except Exception as exc:  # the client went away, most likely: the writer raises it
        conn.error = exc
        sub.direct = None
        sub.wake()
        return
    if conn.sending is not None:
        sub.direct = None
        conn.sending.add_done_callback(lambda _: sub.wake())


async def _caught_up(conn: _Socket) -> None:
    """Wait for the rest of a send the hub began; raise what such a send raised."""
    sending, error = conn.sending, conn.error
    conn.sending = conn.error = None
    if sending is not None:
        await sending
    if error is not None:
        raise error


async def _send(conn: _Socket, messages: list[Message]) -> None:
    """Send ``messages`` in order as the client asked: batched frames or one per message, events
    lz4-compressed or as text."""
    frames = conn.frames
    send, send_bytes = conn.websocket.send_text, conn.websocket.send_bytes
    if conn.batch and len(messages) > 1:
        for i in range(0, len(messages), BATCH_FRAME):
            frame = frames.get(messages[i:i + BATCH_FRAME], True)
            if conn.lz4:
                await send_bytes(frame.lz4)
            else:
                await send(frame.text)
        return
    for m in messages:
        if conn.lz4 and m.partition >= 0:
            await send_bytes(frames.get([m], False).lz4)
        else:
            await send(m.text)


def batch_frame(messages: list[Message]) -> str:
    """``{"type": "batch", "messages": [...]}`` of one or more messages, built with one copy of their
    text (the frame's head and tail are joined to the first and last message, not around the whole:
    a frame of 200 events is about 170 kB, built once per subscriber)."""
    texts = [m.text for m in messages]
    texts[0] = '{"type":"batch","messages":[' + texts[0]
    texts[-1] += "]}"
    return ",".join(texts)


# --- Server-Sent Events -------------------------------------------------------------------------


# Not in the OpenAPI document: an endless text/event-stream has no schema to check a response by.
@router.get("/v1/events/stream", include_in_schema=False)
async def events_stream(
    channels: Annotated[str, Query(min_length=1, max_length=100_000,
                                   description="Channels, comma separated (as the WebSocket's).")],
    request: Request,
    after: Annotated[str | None, Query(max_length=100_000, description="Replay after this position.")] = None,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=100_000)] = None,
) -> Response:
    """The WebSocket's messages as Server-Sent Events: each event's ``id`` is the position to resume
    after (``Last-Event-ID``, sent by a reconnecting EventSource, wins over ``after``)."""
    hub = _hub(request.app)
    if hub is None:
        raise HTTPException(503, "the event streams are not running")
    feed = Feed(hub)
    try:
        start = await feed.subscribe([c.strip() for c in channels.split(",")], last_event_id or after)
    except BeyondEnd as exc:
        feed.close()
        return json_response({"detail": str(exc)}, 409)
    except FeedError as exc:
        feed.close()
        if str(exc).startswith("channels"):
            invalid([error_item(("query", "channels"), "value_error", str(exc), channels)])
        if last_event_id:
            invalid([error_item(("header", "Last-Event-ID"), "value_error", str(exc), last_event_id)])
        invalid([error_item(("query", "after"), "value_error", str(exc), after)])
    return StreamingResponse(_events(feed, start, request), media_type="text/event-stream",
                             headers={"cache-control": "no-cache", "x-accel-buffering": "no"})


async def _events(feed: Feed, start: Cursor, request: Request) -> AsyncIterator[str]:
    """The stream's text: events and replies, a keepalive comment when idle for the hub's ping
    interval; with authentication, an error message and the end once its credential fails."""
    cursor = dict(start)
    loop = asyncio.get_running_loop()
    ping = feed.hub.ping_interval
    every = recheck_interval(request)
    check_at = loop.time() + every if every is not None else None
    spoke = loop.time()
    try:
        while not feed.done:
            until = spoke + ping if check_at is None else min(spoke + ping, check_at)
            wait = max(0.0, until - loop.time())
            messages = await feed.pull(wait)
            if check_at is not None and every is not None and loop.time() >= check_at:
                why = await still_valid(request)
                if why is not None:
                    message = {"type": "error", "message": f"the credential is no longer valid: {why}"}
                    yield f"data: {orjson.dumps(message).decode()}\n\n"
                    return
                check_at = loop.time() + every
            if messages:
                spoke = loop.time()
                yield "".join(_sse(m, cursor) for m in messages)
            elif not feed.done and loop.time() - spoke >= ping:
                spoke = loop.time()
                yield ": keepalive\n\n"
    finally:
        feed.close()


def _sse(m: Message, cursor: Cursor) -> str:
    if m.partition >= 0:
        cursor[m.partition] = m.position
        return f"id: {cursor_text(cursor)}\ndata: {m.text}\n\n"
    if m.cursor is not None:  # "subscribed" with after: the stream restarts there
        cursor.clear()
        cursor.update(m.cursor)
        return f"id: {cursor_text(cursor)}\ndata: {m.text}\n\n"
    return f"data: {m.text}\n\n"


# --- progress -----------------------------------------------------------------------------------


class Progress(BaseModel):
    """A task's progress for live subscribers: a status line, a token delta, any small JSON."""

    model_config = ConfigDict(extra="forbid")

    pool: Text | None = Field(None, min_length=1, max_length=MAX_ID,
                              description="The task's pool (default: ?pool=, else default).")
    message: Text | None = Field(None, max_length=MAX_PROGRESS_MESSAGE, description="A status line.")
    delta: Text | None = Field(None, max_length=MAX_PROGRESS_DELTA,
                               description="Text to append to what the task is writing (LLM tokens).")
    data: JSONObject | None = Field(None, description=f"Any JSON object up to {MAX_PROGRESS_DATA} bytes.")
    workflow_id: Id | None = Field(None, description="The workflow run to tell too (default: read from a "
                                                     "step task's id, <run id>.<step>).")

    @field_validator("data")
    @classmethod
    def _small(cls, data: dict[str, Any] | None) -> dict[str, Any] | None:
        if data is not None and len(orjson.dumps(data)) > MAX_PROGRESS_DATA:
            raise ValueError(f"at most {MAX_PROGRESS_DATA} bytes of JSON")
        return data


class ProgressAccepted(BaseModel):
    delivered: int = Field(description="Connections it was handed to (it is stored nowhere).")


async def publish_progress(
    task_id: Annotated[Id, Path(min_length=1, max_length=MAX_ID)],
    body: Progress,
    request: Request,
    pool: Annotated[Text | None, Query(min_length=1, max_length=MAX_ID)] = None,
) -> Response:
    """Hand ``body`` to the ``task:<id>`` and ``workflow:<run>`` subscribers of this server, live.

    Not written to the log and not checked against the read models (a lookup per token delta would
    cost more than the delta): only the task's final result is durable, through its commands.
    """
    hub = _hub(request.app)
    if hub is None:
        raise HTTPException(503, "the event streams are not running")
    delivered = hub.publish_progress(task_id, pool=body.pool or pool, message=body.message,
                                     delta=body.delta, data=body.data, workflow_id=body.workflow_id)
    return json_response({"delivered": delivered}, 202)


# A body read as the writes read theirs (JSONBodyRoute): JSON whatever its Content-Type, and a body
# that is not JSON (not even UTF-8) is a 422 with field errors.
router.add_api_route(
    "/v1/tasks/{task_id}/progress", publish_progress, methods=["POST"], status_code=202,
    response_model=ProgressAccepted, summary="Publish a task's progress to its live subscribers (not stored)",
    responses={400: {"model": Error, "description": "The Content-Length header is not a number."},
               413: {"model": Error, "description": "The body is larger than the configured limit."},
               422: {"model": ValidationErrors, "description": "Invalid input."},
               503: {"model": Error, "description": "The event streams are not running."}},
    route_class_override=JSONBodyRoute, strict_content_type=False,
)
