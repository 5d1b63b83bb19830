"""Rebuilding from the log reproduces the live tables exactly, however the history was batched."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contracts import Envelope
from events import open_log
from events.codec import from_record, to_record
from projections import ProjectionStore, Projector, rebuild
from projections.queries import dump_tables

from .history import realistic_history

TOPIC = "events"
HISTORY = realistic_history()


async def test_rebuild_equals_live(
    store: ProjectionStore, second_store: ProjectionStore, tmp_path: Path
) -> None:
    log = open_log("sqlite:///" + str(tmp_path / "log.db"))
    await log.start()
    try:
        await log.ensure_topic(TOPIC, 3)
        # Appended in several calls, routed by pool, as the deciders would.
        for i in range(0, len(HISTORY), 10):
            await log.append(TOPIC, [to_record(e) for e in HISTORY[i : i + 10]])
        partitions = await log.partitions(TOPIC)

        # Live: each partition tailed in small batches, re-delivering a little each time as a
        # restarting consumer would.
        live = Projector(store)
        for p in range(partitions):
            offset, end = 0, await log.end_offset(TOPIC, p)
            while offset < end:
                records = await log.read(TOPIC, p, max(offset - 2, 0), limit=7)
                await live.apply(TOPIC, p, [(r.offset, from_record(r)) for r in records])
                offset = records[-1].offset + 1

        applied = await rebuild(log, second_store, TOPIC)
        assert applied == len(HISTORY)
        rebuilt = Projector(second_store)
        for p in range(partitions):
            end = await log.end_offset(TOPIC, p)
            assert await rebuilt.position(TOPIC, p) == end == await live.position(TOPIC, p)
        live_tables = await dump_tables(store)
        assert live_tables == await dump_tables(second_store)
        assert all(live_tables[t] for t in live_tables), "the history must fill every table"

        # Rebuilding a store that already holds the model starts over (no doubled rows).
        assert await rebuild(log, store, TOPIC) == len(HISTORY)
        assert await dump_tables(store) == live_tables
    finally:
        await log.close()


def _batches(cuts: list[int], replays: list[int]) -> list[list[tuple[int, Envelope]]]:
    """Batches ending at the sorted ``cuts``; each may start up to a few offsets early
    (re-delivery), which the projector must skip."""
    items = list(enumerate(HISTORY))
    ends = [*sorted(set(cuts)), len(items)]
    out, start = [], 0
    for end, replay in zip(ends, replays + [0] * len(ends), strict=False):
        if end > start:
            out.append(items[max(start - replay, 0) : end])
            start = end
    return out


_reference: dict[str, Any] = {}


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    cuts=st.lists(st.integers(min_value=1, max_value=len(HISTORY) - 1), max_size=12),
    replays=st.lists(st.integers(min_value=0, max_value=5), max_size=12),
)
async def test_any_batching_of_a_history_yields_the_same_tables(
    store: ProjectionStore, cuts: list[int], replays: list[int]
) -> None:
    if store.dialect not in _reference:
        await store.reset()
        await Projector(store).apply(TOPIC, 0, list(enumerate(HISTORY)))
        _reference[store.dialect] = await dump_tables(store)
    await store.reset()
    projector = Projector(store)
    for batch in _batches(cuts, replays):
        await projector.apply(TOPIC, 0, batch)
    assert await projector.position(TOPIC, 0) == len(HISTORY)
    assert await dump_tables(store) == _reference[store.dialect]
