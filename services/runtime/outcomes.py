"""Where a command's outcome is: command id -> (partition, first event offset, event count, digest).

Lets the API answer ``?wait=true`` and repeated command ids with the first outcome, and refuse a
command id repeated with other parameters (``admit``). Ids are remembered for as long as the
log keeps their events (for ever: the events topic is never compacted or expired), like the
decider's own ``seen`` set, which is what finally keeps a repeat from being decided twice.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterable, Iterator
from itertools import repeat
from typing import NamedTuple

__all__ = ["KeyReused", "OutcomeRef", "Outcomes", "command_digest"]


class OutcomeRef(NamedTuple):
    """The events a command produced: ``count`` records from ``offset`` in ``partition``.

    ``digest`` is the command's ``commanddigest`` (None for commands nobody stamped, e.g. the
    coordinator's, or ones ingested before digests existed). A named tuple: a replay or a snapshot
    makes one per command (a million at 1,000,000 commands), about three times faster than a
    frozen dataclass.
    """

    partition: int
    offset: int
    count: int  # type: ignore[assignment]  # the field shadows tuple.count, which nothing here calls
    digest: str | None = None


# A ref without a digest (the reactors' commands: most of them) is kept as one int: the partition in
# the low 16 bits, the count in the next 20, the offset above them. One int takes 32-36 bytes where
# the named tuple and its offset took about 110: the index holds one entry per command ever decided
# (a million at 1,000,000 commands). A ref whose count or partition does not fit, or with a digest,
# is kept as it is.
_COUNT_BITS, _PARTITION_BITS = 20, 16
_SHIFT_OFFSET = _COUNT_BITS + _PARTITION_BITS
_COUNT_MASK, _PARTITION_MASK = (1 << _COUNT_BITS) - 1, (1 << _PARTITION_BITS) - 1
_Kept = OutcomeRef | int


def _kept(partition: int, offset: int, count: int, digest: str | None) -> _Kept:
    if digest is None and 0 <= count <= _COUNT_MASK and 0 <= partition <= _PARTITION_MASK and offset >= 0:
        return offset << _SHIFT_OFFSET | count << _PARTITION_BITS | partition
    return OutcomeRef(partition, offset, count, digest)


def _kept_columns(partition: int, offsets: list[int], counts: list[int],
                  digests: list[str | None]) -> list[_Kept]:
    """``_kept`` of every entry of a snapshot's columns. When every count and offset fits, the ints
    are made by one list comprehension, and only the entries with a digest are made one by one:
    at a million commands 0.13 s against 0.3 s for ``_kept`` called per entry."""
    n = len(offsets)
    if not n == len(counts) == len(digests):
        raise ValueError(f"the outcome columns differ in length ({n} offsets, {len(counts)} counts, "
                         f"{len(digests)} digests)")
    if n == 0 or not (0 <= partition <= _PARTITION_MASK and min(offsets) >= 0
                      and min(counts) >= 0 and max(counts) <= _COUNT_MASK):
        return list(map(_kept, repeat(partition), offsets, counts, digests))
    kept: list[_Kept] = [offset << _SHIFT_OFFSET | count << _PARTITION_BITS | partition
                         for offset, count in zip(offsets, counts, strict=True)]
    if digests.count(None) != n:
        for i, digest in enumerate(digests):
            if digest is not None:
                kept[i] = OutcomeRef(partition, offsets[i], counts[i], digest)
    return kept


_new = tuple.__new__  # OutcomeRef(...) without the named tuple's Python-level __new__: 40% faster


def _ref(kept: _Kept) -> OutcomeRef:
    if isinstance(kept, int):
        return _new(OutcomeRef, (kept & _PARTITION_MASK, kept >> _SHIFT_OFFSET,
                                 kept >> _PARTITION_BITS & _COUNT_MASK, None))
    return kept


class KeyReused(Exception):
    """A command id already used for a command with other parameters."""

    def __init__(self, command_id: str) -> None:
        super().__init__(f"the key {command_id!r} was already used for a request with other parameters "
                         "(type, pool or body); use a new key for a new request")
        self.command_id = command_id


def command_digest(type_name: str, pool: str, payload_json: bytes) -> str:
    """The digest of a command as its client asked for it: its type, pool and canonical payload.

    The payload is the contract model's JSON (pydantic writes the fields in declaration order, so
    equal payloads give equal bytes). 128 bits: it only has to tell two requests under one key apart.
    """
    h = hashlib.blake2b(digest_size=16)
    h.update(type_name.encode())
    h.update(b"\0")
    h.update(pool.encode())
    h.update(b"\0")
    h.update(payload_json)
    return h.hexdigest()


class Outcomes:
    """Outcome index plus waiters; filled by the decider loop after its events are durable.

    It also holds the digests of the commands this process appended whose outcome is not known
    yet, so a repeat racing its first command is checked too.
    """

    def __init__(self) -> None:
        self._index: dict[str, _Kept] = {}
        self._waiters: dict[str, list[asyncio.Future[OutcomeRef]]] = {}
        self._in_flight: dict[str, str | None] = {}

    def __len__(self) -> int:
        return len(self._index)

    def record(self, command_id: str, ref: OutcomeRef) -> None:
        self._index.setdefault(command_id, _kept(*ref))
        if self._in_flight:
            self._in_flight.pop(command_id, None)
        waiters = self._waiters.pop(command_id, None)
        if waiters:
            first = _ref(self._index[command_id])
            for fut in waiters:
                if not fut.done():
                    fut.set_result(first)

    def get(self, command_id: str) -> OutcomeRef | None:
        kept = self._index.get(command_id)
        return None if kept is None else _ref(kept)

    def restore(self, partition: int, ids: Iterable[str], offsets: Iterable[int], counts: Iterable[int],
                digests: Iterable[str | None]) -> None:
        """``record`` each command of ``partition`` whose outcome a snapshot holds, or a replayed
        batch of events ends, by column, in one pass: an outcome already known is kept, and of an
        id given twice the first is (as ``record`` keeps the first)."""
        ids = ids if isinstance(ids, list) else list(ids)
        kept = _kept_columns(partition, list(offsets), list(counts), list(digests))
        index = self._index
        # Into an empty index (a start's snapshot, a replay's first batch) straight, without a copy.
        new = index if not index else {}
        new.update(zip(ids, kept, strict=True))
        if len(new) != len(ids):  # an id twice (rare): again, one by one
            new.clear()
            for cid, ref in zip(ids, kept, strict=True):
                new.setdefault(cid, ref)
        if new is not index:
            for cid in new.keys() & index.keys():
                del new[cid]
            index.update(new)
        for cid in [c for c in self._in_flight if c in self._index]:
            del self._in_flight[cid]
        for cid in [c for c in self._waiters if c in self._index]:
            for fut in self._waiters.pop(cid):
                if not fut.done():
                    fut.set_result(_ref(self._index[cid]))

    def of_partition(self, partition: int) -> Iterator[tuple[str, OutcomeRef]]:
        """The (command id, outcome) pairs of ``partition``."""
        for cid, kept in self._index.items():
            if isinstance(kept, int):
                if kept & _PARTITION_MASK == partition:
                    yield cid, _ref(kept)
            elif kept.partition == partition:
                yield cid, kept

    def admit(self, command_id: str, digest: str | None) -> tuple[OutcomeRef | None, bool]:
        """Before appending a command: (its first outcome if decided, whether the id was seen).

        Raises ``KeyReused`` when the id was seen with another digest (an unknown digest, on
        either side, is not a difference). A new id is remembered as in flight until
        ``record`` or ``forget``.
        """
        kept = self._index.get(command_id)
        if kept is not None:
            ref = _ref(kept)
            if digest is not None and ref.digest is not None and ref.digest != digest:
                raise KeyReused(command_id)
            return ref, True
        if command_id in self._in_flight:
            seen = self._in_flight[command_id]
            if digest is not None and seen is not None and seen != digest:
                raise KeyReused(command_id)
            return None, True
        self._in_flight[command_id] = digest
        return None, False

    def forget(self, command_id: str) -> None:
        """The append of an admitted command failed: it is not in flight."""
        self._in_flight.pop(command_id, None)

    async def wait(self, command_id: str, timeout: float) -> OutcomeRef | None:
        """The outcome of ``command_id``, waiting up to ``timeout`` seconds; None on timeout."""
        ref = self.get(command_id)
        if ref is not None:
            return ref
        fut: asyncio.Future[OutcomeRef] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(command_id, []).append(fut)
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            return None
        finally:
            waiters = self._waiters.get(command_id)
            if waiters is not None and fut in waiters:
                waiters.remove(fut)
                if not waiters:
                    del self._waiters[command_id]
