"""Reactors of the SQLite log: appends made inside the transaction of the append they react to.

A reactor registered for a partition (``SqliteLog.react``) sees every append to it that is written
on the event loop with its envelopes, while the transaction is open, and may add an append of its
own (a ``Reaction``) to that same transaction: the decider of a commands partition decides a
command as it is appended, so the command, its events and the decider's offset take one COMMIT
(one fsync) instead of two in a row. A reaction that carries its envelopes is seen in turn by the
reactor of its own partition (the coordinator's, which reacts to those events), and so on, all in
that transaction. Whatever a reactor changes in memory must follow the transaction:
``Reaction.written`` tells it, on the loop, whether it committed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from events.log import Appended, Commit, Record
from events.sqlite_records import to_rows
from events.sqlite_writer import Pending

__all__ = ["Reaction", "Reactions", "Reactor"]


@dataclass(frozen=True, slots=True)
class Reaction:
    """What a reactor appends in the transaction of the append it reacted to: ``records`` to
    ``topic[partition]`` with ``commit``; ``written`` is told the positions (or the error) on the
    loop, right after COMMIT and before the appenders hear of theirs. ``envelopes``: what
    ``records`` encode, so the reactor of ``topic[partition]`` reacts to them in turn (None: it
    reads them from the log as usual)."""

    topic: str
    partition: int
    records: list[Record]
    commit: Commit | None
    written: Callable[[list[Appended] | BaseException], None]
    envelopes: Sequence[Any] | None = None


# (positions of an append just numbered, its envelopes, a token naming the transaction) -> a Reaction
# or None. Runs inside the transaction, on the event loop: it must not await, and whatever it
# changes must follow the transaction (``Reaction.written`` says whether it committed).
Reactor = Callable[[list[Appended], Sequence[Any], object], Reaction | None]


class Reactions:
    """The reactors registered on one log, and the appends they add to the transaction being written.

    ``topics`` is the log's own map of topic -> partitions (kept current by the log). A transaction
    written on the loop calls ``begin``, hands ``follow`` to ``sqlite_writer.write_batch`` as its
    ``React``, and ``end`` gives the appends the reactors added; if it is rolled back, ``roll_back``
    tells them so.
    """

    def __init__(self, topics: dict[str, int]) -> None:
        self._topics = topics
        self._reactors: dict[tuple[str, int], Reactor] = {}
        self._reacted: list[Pending] = []
        self._token: object = None
        # The last transaction rolled back held reactions (the log retries its append alone).
        self.rolled_back = False

    def __bool__(self) -> bool:
        """Whether any reactor is registered."""
        return bool(self._reactors)

    def set(self, topic: str, partition: int, reactor: Reactor | None) -> None:
        """``reactor`` sees the appends to ``topic[partition]`` from now on (None: no reactor)."""
        if reactor is None:
            self._reactors.pop((topic, partition), None)
        else:
            self._reactors[(topic, partition)] = reactor

    def begin(self) -> None:
        """A transaction begins: a token of its own, no reaction yet."""
        self._token = object()
        self._reacted = []

    def end(self) -> list[Pending]:
        """The appends the reactors added to the transaction (and no more)."""
        reacted, self._reacted = self._reacted, []
        return reacted

    def follow(self, topic: str, out: list[Appended], envelopes: Sequence[Any]) -> Pending | None:
        """``sqlite_writer.React``: the reactor's append for appends to ``topic`` just numbered at
        ``out`` (all of them in one partition), which carry ``envelopes``."""
        if not out:
            return None
        p = out[0].partition
        if any(a.partition != p for a in out):
            return None
        reactor = self._reactors.get((topic, p))
        if reactor is None:
            return None
        got = reactor(out, envelopes, self._token)
        if got is None:
            return None
        rows = to_rows(got.records, got.partition, self._topics[got.topic])
        follow = Pending(got.topic, rows, got.partition, None, got.commit,
                         asyncio.get_running_loop().create_future(), envelopes=got.envelopes,
                         on_written=got.written)
        self._reacted.append(follow)
        return follow

    def roll_back(self, reacted: list[Pending], exc: BaseException) -> None:
        """Tell the reactors whose appends were in a transaction rolled back: what they decided is
        not in the log."""
        self.rolled_back = bool(reacted)
        for follow in reacted:
            assert follow.on_written is not None
            follow.on_written(exc)
