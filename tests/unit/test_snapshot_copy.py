"""A decider snapshot's copy made in a forked child (services.runtime.snapshot_copy): the state as it
was at the fork, whatever the parent does next, and every way the child can fail reported."""

from __future__ import annotations

import os
import signal

import pytest

from services.domain import snapshot as snap
from services.domain.snapshot import DeciderSnapshot, SnapshotError
from services.domain.state import PoolState
from services.runtime.snapshot_copy import CAN_FORK, finish, start
from tests.unit.test_snapshots import assert_identical, populated

SMAPS = os.path.exists("/proc/self/smaps_rollup")  # Linux: where the child measures its memory

pytestmark = pytest.mark.skipif(not CAN_FORK, reason="no os.fork on this platform: copies are made in place")


async def test_the_copy_is_the_state_as_it_was_at_the_fork() -> None:
    s: DeciderSnapshot = populated(DeciderSnapshot)
    before = snap.decode(snap.encode(s))
    started = start(lambda: s)
    assert started.done is None and started.pid not in (0, os.getpid())
    # The parent goes on changing the state while the child copies it.
    pool = next(iter(s.states.values()))
    pool.sequence += 1
    pool.tasks.clear()
    s.states["new"] = PoolState("new")
    copy = await finish(started)
    assert_identical(snap.decode(copy.body), before)
    assert copy.work_s > 0 and copy.held_s > 0
    if SMAPS:
        assert copy.child_mb > 0  # the pages it copied and the body it built, measured in the child


async def test_without_fork_the_copy_is_made_at_once_and_reads_the_same() -> None:
    s: DeciderSnapshot = populated(DeciderSnapshot)
    in_place = start(lambda: s, fork=False)
    assert in_place.done is not None
    forked = await finish(start(lambda: s))
    assert_identical(snap.decode((await finish(in_place)).body), snap.decode(forked.body))


async def test_a_state_json_cannot_hold_is_refused_with_the_encoders_reason() -> None:
    state = PoolState("p")
    state.sequence = 2**70
    started = start(lambda: DeciderSnapshot(0, 1, {"p": state}))
    with pytest.raises(SnapshotError, match="cannot be written"):
        await finish(started)
    with pytest.raises(SnapshotError, match="cannot be written"):
        start(lambda: DeciderSnapshot(0, 1, {"p": state}), fork=False)


def _raise(exc: BaseException) -> DeciderSnapshot:
    raise exc


@pytest.mark.parametrize("exc", [KeyError("boom"), SystemExit(3), KeyboardInterrupt()])
async def test_any_other_failure_in_the_child_is_reported_and_the_child_never_returns(
    exc: BaseException,
) -> None:
    # Were the child to return from start() (SystemExit, KeyboardInterrupt), it would go on running
    # this test as a second pytest: the parent would then read no report from the pipe.
    with pytest.raises(RuntimeError, match=f"failed in the child: {type(exc).__name__}"):
        await finish(start(lambda: _raise(exc)))


def _die() -> DeciderSnapshot:
    os.kill(os.getpid(), signal.SIGKILL)
    raise AssertionError("unreachable")


async def test_a_child_that_dies_before_writing_is_reported() -> None:
    with pytest.raises(RuntimeError, match="killed by signal 9"):
        await finish(start(_die))


def _interrupted() -> DeciderSnapshot:
    os.kill(os.getpid(), signal.SIGINT)  # as a Ctrl-C reaches the whole process group
    return DeciderSnapshot(0, 5, {"p": PoolState("p", sequence=5)})


async def test_the_child_ignores_an_interrupt_and_finishes_the_copy() -> None:
    copy = await finish(start(_interrupted))
    assert snap.decode(copy.body).states["p"].sequence == 5
