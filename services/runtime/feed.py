"""One client's live stream, whatever carries it (WebSocket or SSE): its channels on the hub, the
position it has reached, and the replay from the log that precedes the live events.

A subscribe with ``after`` restarts the stream from that position for all the connection's channels:
the subscriber is first put on the hub (so events from then on are queued), the hub's position at
that instant is the end of the replay, the log is read from ``after`` to there, and then the queue is
drained. Every event sent moves the connection's cursor, and an event at or before it is never sent
again: no gap and no duplicate at the seam, and a client that resumes from the last position it
received gets each event once. A subscribe without ``after`` adds channels live, from the hub's
current position.

This module must never append to the log or send anything itself: it decides what is sent, in order.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.runtime.channels import (
    ChannelError,
    Cursor,
    channel_texts,
    cursor_json,
    parse_channel,
    parse_cursor,
)
from services.runtime.hub import Hub, Message, event_message, reply

__all__ = ["MAX_CHANNELS", "BeyondEnd", "Feed", "FeedError"]

# Channels one connection may hold (each is matched against every event's channels).
MAX_CHANNELS = 1000
REPLAY_PAGE = 1000
# WebSocket close codes: the client fell behind (try again, from resume_after); the server stops.
LAGGED_CLOSE = 1013
GOING_AWAY = 1001
FAILED = 1011


class FeedError(ValueError):
    """A subscribe or unsubscribe the stream cannot follow; the message is the client's answer."""


class BeyondEnd(FeedError):
    """``after`` names a position the log has not reached."""


@dataclass(frozen=True, slots=True)
class _Replay:
    """Queued by a subscribe with ``after``: replay from ``cursor`` to ``stop`` here, then go on."""

    cursor: Cursor
    stop: Cursor
    answer: Message


@dataclass(slots=True)
class _Replaying:
    marker: _Replay
    partitions: list[int]


class Feed:
    """What one connection sends: replies, replayed events, then live events and progress."""

    def __init__(self, hub: Hub, bound: int | None = None) -> None:
        self.hub = hub
        self.sub = hub.subscriber(bound)
        # Per partition, the position of the last event sent (None before the first subscribe).
        self.sent: Cursor | None = None
        self.done = False
        self.close_code = GOING_AWAY
        self.close_reason = ""
        self._replay: _Replaying | None = None

    def close(self) -> None:
        self.hub.remove(self.sub)

    def answer(self, body: dict[str, object]) -> None:
        """Queue a reply (pong, an error) in order with what is being sent."""
        self.sub.put(reply(body))

    def error(self, message: str) -> None:
        self.answer({"type": "error", "message": message})

    def _channels(self, channels: object) -> frozenset[tuple[str | None, str]]:
        if not isinstance(channels, list) or not channels:
            raise FeedError("channels: a non-empty list of channel names, e.g. [\"events\"]")
        try:
            return frozenset(parse_channel(c) for c in channels)
        except ChannelError as exc:
            raise FeedError(f"channels: {exc}") from None

    async def subscribe(self, channels: object, after: object = None) -> Cursor:
        """Add ``channels``; with ``after``, restart the stream from there. Returns the position the
        new channels start after. FeedError (nothing changed) for what cannot be followed."""
        if self.sub.closed is not None:
            raise FeedError(self.sub.closed)
        wanted = self.sub.channels | self._channels(channels)
        if len(wanted) > MAX_CHANNELS:
            raise FeedError(f"channels: at most {MAX_CHANNELS} per connection")
        if after is None:
            start = dict(self.hub.last)
            self.sub.set_channels(wanted)
            first = self.sent is None
            if first:
                self.sent = dict(start)
            self.sub.put(reply({"type": "subscribed", "channels": channel_texts(set(wanted)),
                                "after": cursor_json(start)}, dict(start) if first else None))
            return start
        try:
            cursor = parse_cursor(after, self.hub.partitions)
        except ChannelError as exc:
            raise FeedError(f"after: {exc}") from None
        for p, position in cursor.items():
            end = await self.hub.log.end_offset(self.hub.topic, p)
            if position >= end:
                raise BeyondEnd(f"after: position {position} of partition {p} is beyond the end of the "
                                f"log (its last position is {end - 1})")
        # From here to the marker, nothing awaits: the hub cannot hand out an event in between.
        self.sub.set_channels(wanted)
        self._replay = None
        self.sub.drop_events()
        answer = reply({"type": "subscribed", "channels": channel_texts(set(wanted)),
                        "after": cursor_json(cursor)}, cursor)
        self.sub.put(_Replay(dict(cursor), dict(self.hub.last), answer))
        return cursor

    def unsubscribe(self, channels: object) -> None:
        """Drop ``channels`` (those not held are ignored); events already queued still go."""
        left = self.sub.channels - self._channels(channels)
        self.sub.set_channels(left)
        self.answer({"type": "unsubscribed", "channels": channel_texts(set(left))})

    async def pull(self, timeout: float) -> list[Message]:
        """The next messages to send, in order; [] after ``timeout`` idle seconds, or once ``done``
        (lagged: the last message says where to resume; closed by the server)."""
        while not self.done:
            if self.sub.lagged:
                return [self._lagged()]
            if self.sub.closed is not None:
                self.done, self.close_reason = True, self.sub.closed
                self.close_code = GOING_AWAY if self.hub.failure is None else FAILED
                return []
            if self._replay is not None:
                page = await self._replay_page(self._replay)
                if page:
                    return page
                continue
            items = await self.sub.take(timeout, lambda item: isinstance(item, _Replay))
            if not items and not self.sub.lagged and self.sub.closed is None:
                return []
            out = self._unpack(items)
            if out:
                return out
        return []

    def live(self) -> bool:
        """Whether what the hub offers now may be sent as it comes (``Subscriber.direct``):
        subscribed, no replay under way, not done."""
        return self.sent is not None and self._replay is None and not self.done

    def take(self, messages: list[Message]) -> list[Message]:
        """What ``pull`` would return for ``messages``, offered by the hub while nothing was queued:
        those still to send, the cursor moved past them. Only while ``live``."""
        return self._unpack([messages])

    def _unpack(self, items: list[object]) -> list[Message]:
        out: list[Message] = []
        sent = self.sent
        for item in items:
            if isinstance(item, _Replay):
                sent = self.sent = dict(item.cursor)
                self._replay = _Replaying(item, sorted(item.stop))
                out.append(item.answer)
                continue
            assert isinstance(item, list)
            first = item[0]
            if first.partition >= 0 and sent is not None and first.position > sent.get(first.partition, -1):
                # A batch of the hub: one partition, in order, all of it new (the usual case).
                out.extend(item)
                sent[first.partition] = item[-1].position
                continue
            for m in item:
                if m.partition >= 0:
                    if sent is None or m.position <= sent.get(m.partition, -1):
                        continue  # sent already (replayed, or before the cursor the client gave)
                    sent[m.partition] = m.position
                out.append(m)
        return out

    def _lagged(self) -> Message:
        self.done = True
        self.close_code, self.close_reason = LAGGED_CLOSE, "lagged"
        return reply({"type": "lagged", "resume_after": cursor_json(self.sent or dict(self.hub.last)),
                      "bound": self.sub.bound})

    async def _replay_page(self, state: _Replaying) -> list[Message]:
        """The next replayed messages of the channels, read from the log; [] when the replay ended."""
        hub, sent = self.hub, self.sent
        assert sent is not None
        while state.partitions:
            p = state.partitions[0]
            start, stop = sent[p] + 1, state.marker.stop[p]
            if start > stop:
                state.partitions.pop(0)
                continue
            records = await hub.log.read(hub.topic, p, start, min(REPLAY_PAGE, stop - start + 1))
            if self._replay is not state or self.sent is not sent:
                return []  # a newer subscribe restarted the stream meanwhile
            if not records:
                state.partitions.pop(0)
                continue
            everything = self.sub.everything
            decode = None if everything else hub.decoder()
            out: list[Message] = []
            for rec in records:
                if rec.offset > stop:
                    break
                sent[p] = rec.offset
                m = event_message(p, rec.offset, rec, decode)
                if self.sub.wants(m):
                    out.append(m)
            if sent[p] >= stop or records[-1].offset >= stop:
                state.partitions.pop(0)
            if out:
                return out
            if self.sub.lagged:
                return []
        self._replay = None
        return []
