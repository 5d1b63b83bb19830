"""What a reactor of the SQLite log keeps about its reactions made in transactions not yet committed.

A reactor (``events.sqlite_reactions``: the decider, the coordinator's driver) changes its state at
once when it reacts inside an appender's transaction, before that transaction's COMMIT, which runs
on the log's writer thread. Until the COMMIT is known, the state is ahead of the log: a batch read
from the log must wait for it (``settle``), and a reaction may only join the very transaction that
holds the earlier ones (``admits``). If such a transaction is rolled back the state stays ahead of
the log for good (``broken``): the reactor stops, and a restart rebuilds it from the log.
"""

from __future__ import annotations

import asyncio

__all__ = ["Uncommitted"]


class Uncommitted:
    """Per key (a partition), how many reactions wait for their COMMIT and in which transaction
    (the log's token for it); and the error that broke the reactor, if any."""

    def __init__(self) -> None:
        self._count: dict[int, int] = {}
        self._token: dict[int, object] = {}
        self.broken: BaseException | None = None
        self._settled = asyncio.Event()  # set whenever a key's count reaches 0, or on a failure

    def __call__(self, key: int) -> int:
        """How many reactions for ``key`` wait for their COMMIT."""
        return self._count.get(key, 0)

    def idle(self, key: int) -> bool:
        """No reaction for ``key`` waits for its COMMIT, and the reactor is not broken."""
        return not self._count.get(key) and self.broken is None

    def admits(self, key: int, token: object, busy: bool) -> bool:
        """Whether a reaction for ``key`` may be made in the transaction ``token``. With reactions
        waiting, only in theirs (another token: theirs was rolled back); else when the reactor is
        not ``busy`` with work of its own and not broken."""
        if self._count.get(key):
            return token is self._token[key]
        return not busy and self.broken is None

    def add(self, key: int, token: object) -> None:
        """A reaction for ``key`` was made in the transaction ``token``."""
        self._count[key] = self._count.get(key, 0) + 1
        self._token[key] = token

    def committed(self, key: int) -> bool:
        """One reaction for ``key`` committed; whether none waits any more."""
        left = self._count[key] = self._count[key] - 1
        if not left:
            self._settled.set()
        return not left

    def fail(self, exc: BaseException) -> None:
        """The state is no longer the log's: a reaction was made in part, or its transaction was
        rolled back."""
        self.broken = exc
        self._settled.set()

    async def settle(self, key: int, what: str) -> None:
        """Wait until no reaction for ``key`` waits for its COMMIT; RuntimeError if the reactor is
        broken (``what`` names it and what of it is ahead of the log)."""
        while self._count.get(key) and self.broken is None:
            self._settled.clear()
            await self._settled.wait()
        if self.broken is not None or self._count.get(key):
            raise RuntimeError(f"{what}: a transaction holding its reactions failed, so its state is ahead "
                               f"of the log; a restart rebuilds it") from self.broken
