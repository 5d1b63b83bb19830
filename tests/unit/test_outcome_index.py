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


def test_of_an_id_given_twice_in_one_call_the_first_outcome_wins_as_recording_keeps_it() -> None:
    """A replayed batch's columns are not a dict's: a command id could come twice. ``record`` keeps
    the first; so does ``restore``, and the index keeps the order the ids came in."""
    ids, offsets, counts, digests = ["a", "b", "a", "c"], [1, 2, 3, 4], [1, 1, 1, 1], [None, "x", "y", None]
    one_by_one = Outcomes()
    for cid, offset, count, digest in zip(ids, offsets, counts, digests, strict=True):
        one_by_one.record(cid, OutcomeRef(0, offset, count, digest))
    fresh = Outcomes()
    fresh.restore(0, ids, offsets, counts, digests)
    assert list(fresh.of_partition(0)) == list(one_by_one.of_partition(0))
    assert [cid for cid, _ in fresh.of_partition(0)] == ["a", "b", "c"]
    holding = Outcomes()  # an index that already holds something: what it holds is kept
    holding.record("b", OutcomeRef(0, 99, 1, None))
    holding.restore(0, ids, offsets, counts, digests)
    assert holding.get("a") == one_by_one.get("a") and holding.get("b") == OutcomeRef(0, 99, 1, None)
    assert [cid for cid, _ in holding.of_partition(0)] == ["b", "a", "c"]


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
