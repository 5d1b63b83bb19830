"""The bookkeeping a SQLite log reactor keeps about reactions waiting for their COMMIT
(``services.runtime.uncommitted``): who may react in which transaction, waiting for a COMMIT, and
stopping once a transaction holding reactions was rolled back. The whole paths (a real SQLite
file, a real rolled-back transaction) are in test_inline_decisions.py and
test_inline_coordination.py."""

from __future__ import annotations

import asyncio

import pytest

from services.runtime.uncommitted import Uncommitted


async def test_reactions_join_only_the_transaction_that_holds_the_waiting_ones() -> None:
    u = Uncommitted()
    first, second = object(), object()
    assert u.idle(0) and u.admits(0, first, busy=False)
    assert not u.admits(0, first, busy=True)  # the reactor is appending something of its own
    u.add(0, first)
    assert u(0) == 1 and not u.idle(0)
    assert u.admits(0, first, busy=True)  # the same transaction: numbered after the earlier one
    assert not u.admits(0, second, busy=False)  # another: the first may yet be rolled back
    assert u.admits(1, second, busy=False)  # another key is its own
    u.add(0, first)
    assert not u.committed(0) and u.committed(0)
    assert u.idle(0) and u.admits(0, second, busy=False)


async def test_settle_waits_for_the_commit_and_returns() -> None:
    u = Uncommitted()
    u.add(3, object())
    waiter = asyncio.create_task(u.settle(3, "reactor[3]"))
    await asyncio.sleep(0.01)
    assert not waiter.done()
    await u.settle(4, "reactor[4]")  # nothing waits on another key
    u.committed(3)
    await asyncio.wait_for(waiter, 1)


async def test_a_rolled_back_transaction_breaks_the_reactor_for_good() -> None:
    u = Uncommitted()
    token = object()
    u.add(0, token)
    waiter = asyncio.create_task(u.settle(0, "decider[0]"))
    await asyncio.sleep(0.01)
    error = RuntimeError("disk I/O error")
    u.fail(error)
    with pytest.raises(RuntimeError, match=r"decider\[0\]: .*ahead of the log") as raised:
        await asyncio.wait_for(waiter, 1)
    assert raised.value.__cause__ is error
    assert not u.admits(0, object(), busy=False) and not u.admits(1, object(), busy=False)
    assert not u.idle(1)
    with pytest.raises(RuntimeError, match="ahead of the log"):
        await u.settle(1, "decider[1]")
