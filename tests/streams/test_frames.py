"""The WebSocket's frame cache: a frame is built (and lz4-compressed) once for every subscriber
pulled the same messages, and never reused for different ones."""

from __future__ import annotations

import json

import lz4.frame

from services.http.streams import FrameCache, batch_frame
from services.runtime.hub import Message


def _events(n: int, start: int = 0) -> list[Message]:
    return [Message(json.dumps({"type": "event", "partition": 0, "position": i, "event": {"n": i}}), 0, i)
            for i in range(start, start + n)]


def test_the_same_messages_get_the_same_frame_built_once() -> None:
    cache = FrameCache(size=4)
    messages = _events(3)
    frame = cache.get(messages, True)
    assert json.loads(frame.text) == {"type": "batch", "messages": [json.loads(m.text) for m in messages]}
    assert lz4.frame.decompress(frame.lz4) == frame.text.encode()
    assert frame.lz4 is frame.lz4  # compressed once
    # Another subscriber pulled the same message objects (a new list): the same frame.
    assert cache.get(list(messages), True) is frame
    assert (cache.built, cache.reused) == (1, 1)


def test_other_messages_or_another_shape_get_a_frame_of_their_own() -> None:
    cache = FrameCache(size=4)
    messages = _events(3)
    frame = cache.get(messages, True)
    equal_text = _events(3)  # equal messages, other objects: built again, never mistaken
    assert cache.get(equal_text, True) is not frame
    assert cache.get(messages[:2], True).text == batch_frame(messages[:2])
    single = cache.get(messages[:1], False)
    assert single.text == messages[0].text  # not a batch: the message as it is
    assert cache.get(messages[:1], True).text == batch_frame(messages[:1])
    assert (cache.built, cache.reused) == (5, 0)


def test_messages_that_differ_only_inside_get_a_frame_of_their_own() -> None:
    """Two subscribers' lists with the same first and last message and the same count, another
    message between them (each took the events of its own channels): each gets its own frame."""
    cache = FrameCache(size=4)
    messages = _events(4)
    one = [messages[0], messages[1], messages[3]]
    other = [messages[0], messages[2], messages[3]]
    assert cache.get(one, True).text == batch_frame(one)
    assert cache.get(other, True).text == batch_frame(other)
    assert cache.get(list(other), True).text == batch_frame(other)  # the newest of the two is kept
    assert (cache.built, cache.reused) == (2, 1)


def test_the_cache_keeps_only_the_latest_frames() -> None:
    cache = FrameCache(size=2)
    first, second, third = _events(2), _events(2, 2), _events(2, 4)
    for messages in (first, second, third):
        cache.get(messages, True)
    assert cache.get(third, True) is cache.get(third, True)
    built = cache.built
    cache.get(first, True)  # evicted: built again
    assert cache.built == built + 1


def test_a_batch_frame_is_the_messages_in_order() -> None:
    for n in (1, 2, 7):
        messages = _events(n)
        assert json.loads(batch_frame(messages)) == {"type": "batch",
                                                     "messages": [json.loads(m.text) for m in messages]}
