"""``Outcomes.restore``: a snapshot's outcome columns give the index that recording each command one
by one gives (what a replay does), the first outcome of an id still wins, and waiters and in-flight
ids are settled as ``record`` settles them."""

from __future__ import annotations

import asyncio

import pytest

from services.domain.snapshot import OutcomeColumns, SnapshotError
from services.runtime.outcomes import OutcomeRef, Outcomes

ENTRIES = [(f"cmd-{i}", (10 * i, 1 + i % 3, None if i % 2 else f"d{i}")) for i in range(1000)]


def restored(partition: int, cols: OutcomeColumns, into: Outcomes | None = None) -> Outcomes:
    out = Outcomes() if into is None else into  # an empty index is falsy (it has a length)
    out.restore(partition, cols.ids, cols.offsets, cols.counts, cols.digests)
    return out


def test_restoring_columns_equals_recording_each_command() -> None:
    one_by_one = Outcomes()
    for cid, (offset, count, digest) in ENTRIES:
        one_by_one.record(cid, OutcomeRef(2, offset, count, digest))
    cols = OutcomeColumns.of(ENTRIES)
    assert list(cols.items()) == ENTRIES
    got = restored(2, cols)
    assert dict(got.of_partition(2)) == dict(one_by_one.of_partition(2)) and len(got) == 1000
    assert got.get("cmd-7") == OutcomeRef(2, 70, 2, None) and list(got.of_partition(1)) == []


def test_an_outcome_already_known_wins_over_the_snapshot() -> None:
    index = Outcomes()
    index.record("cmd-5", OutcomeRef(0, 999, 1, "first"))  # another partition's decider recorded it
    index.record("other", OutcomeRef(0, 1, 1, None))
    restored(2, OutcomeColumns.of(ENTRIES), into=index)
    assert index.get("cmd-5") == OutcomeRef(0, 999, 1, "first")
    assert index.get("cmd-6") == OutcomeRef(2, 60, 1, "d6")
    assert index.get("other") == OutcomeRef(0, 1, 1, None)
    assert len(index) == 1001


async def test_restoring_settles_waiters_and_ids_in_flight() -> None:
    index = Outcomes()
    assert index.admit("cmd-3", None) == (None, False)  # in flight
    waiting = asyncio.ensure_future(index.wait("cmd-4", 5))
    await asyncio.sleep(0)
    restored(2, OutcomeColumns.of(ENTRIES), into=index)
    assert await waiting == OutcomeRef(2, 40, 2, "d4")
    assert index.admit("cmd-3", None) == (OutcomeRef(2, 30, 1, None), True)  # decided, not in flight
    index.forget("cmd-3")
    assert index.get("cmd-3") == OutcomeRef(2, 30, 1, None)


def test_columns_of_unequal_length_are_refused() -> None:
    with pytest.raises(SnapshotError, match="differ in length"):
        OutcomeColumns(["a", "b"], [1, 2], [1], [None, None])


@pytest.mark.parametrize("ref", [
    OutcomeRef(0, 0, 0), OutcomeRef(0, 0, 1), OutcomeRef(65_535, 2**40, 1), OutcomeRef(3, 2**62, 2**20 - 1),
    OutcomeRef(65_536, 5, 1), OutcomeRef(1, 5, 2**20), OutcomeRef(1, 5, 1, "digest"), OutcomeRef(1, 5, 1, ""),
])
def test_every_outcome_comes_back_as_recorded_however_it_is_kept(ref: OutcomeRef) -> None:
    index = Outcomes()
    index.record("c", ref)
    assert index.get("c") == ref and type(index.get("c")) is OutcomeRef
    assert index.admit("c", None) == (ref, True)
    assert dict(index.of_partition(ref.partition)) == {"c": ref}
    other = restored(ref.partition, OutcomeColumns.of([("c", (ref.offset, ref.count, ref.digest))]))
    assert other.get("c") == ref


def test_an_outcome_without_a_digest_is_kept_as_one_int() -> None:
    # The index holds one entry per command ever decided: the reactors' commands (no digest) are
    # kept in a third of the memory of a named tuple and its offset.
    index = Outcomes()
    index.record("plain", OutcomeRef(7, 123_456_789, 3))
    index.record("stamped", OutcomeRef(7, 5, 1, "d"))
    assert type(index._index["plain"]) is int and type(index._index["stamped"]) is OutcomeRef
    assert index.get("plain") == OutcomeRef(7, 123_456_789, 3)
