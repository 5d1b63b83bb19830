"""A decider snapshot's copy of the state, made in a forked child so the event loop is held only for
the fork.

Copying the state to JSON reads every object of it: 47, 129 and 141 ms at 10,000, 20,000 and 35,000
events of workflow history (``agentbus bench --workflows 1000``), all of it on the decider's loop,
where every command in flight waited meanwhile (most of the step transition p99). ``os.fork``
gives a child the state as it is at that instant (copy-on-write pages, so nothing is copied
up front): the child builds the snapshot, encodes and compresses it and writes the body to a
pipe, and the parent goes on deciding. The loop is held for the fork alone, a few ms (it grows
with the process's mapped memory, not with the number of objects).

What runs in the child is pure code: the snapshot's encoders (orjson and the standard library's
``array``, or pickle for the coordinator's views), lz4 and ``os.write``, then ``os._exit``. No
lock another thread might have held at the fork is taken there, no atexit handler or finaliser
runs, and nothing of the parent's event loop. The child ignores SIGINT (a
Ctrl-C reaches the whole process group; the parent's stop waits for the copy) and does not
collect garbage (a collection would touch, and so copy, every page of the state). While it runs
it holds copies of the pages it touched: at most about the size of the state, for the fraction
of a second the copy takes.

Where there is no fork (Windows), or with ``fork=False``, the copy is made on the loop as before.

The coordinator's driver copies its views the same way, with an ``encode`` of their own
(``services.runtime.coordinator_snapshots.encode``), right after a start that folded in many events.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import struct
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

from services.domain.snapshot import DeciderSnapshot, SnapshotError, dump, pack

__all__ = ["CAN_FORK", "Copy", "Started", "finish", "start"]

CAN_FORK = hasattr(os, "fork")

_OK, _REFUSED, _FAILED = b"OK", b"NO", b"EX"
_HEADER = struct.Struct("!dQ")  # the copy's seconds, the child's private memory in KiB


@dataclass(frozen=True, slots=True)
class Copy:
    """The stored body of a snapshot (lz4-compressed), what it held the loop for, how long the
    copy took (in the child, or on the loop without one), and the memory the child had of its own
    at the end (the pages it copied plus what it allocated; 0 without a child or where Linux's
    ``/proc/self/smaps_rollup`` is missing)."""

    body: bytes
    held_s: float
    work_s: float
    child_mb: float = 0.0


@dataclass(frozen=True, slots=True)
class Started:
    """A copy under way in child ``pid`` (reading ``fd``), or one already made (``done``)."""

    pid: int
    fd: int
    held_s: float
    done: Copy | None = None


def _decider_body(snapshot: DeciderSnapshot) -> bytes:
    return pack(dump(snapshot))


def start(make: Callable[[], Any], *, fork: bool = CAN_FORK,
          encode: Callable[[Any], bytes] = _decider_body) -> Started:
    """Begin copying ``encode(make())``, the state as it is now (by default a decider snapshot's
    body); call between batches, on the state's loop.

    Raises ``SnapshotError`` at once when the copy is made here (no fork) and fails.
    """
    began = time.perf_counter()
    if not fork:
        body = encode(make())
        took = time.perf_counter() - began
        return Started(0, -1, took, Copy(body, took, took))
    r, w = os.pipe()
    with warnings.catch_warnings():
        # Python 3.12+ warns about fork() in a process with threads; what the child runs takes
        # no lock (see the module's docstring).
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:
        _child(make, encode, r, w)
    os.close(w)
    return Started(pid, r, time.perf_counter() - began)


async def finish(started: Started) -> Copy:
    """The copy's body once the child wrote it; ``SnapshotError`` if the state could not be written,
    ``RuntimeError`` if the child failed otherwise or died before writing it."""
    if started.done is not None:
        return started.done
    out, status = await asyncio.to_thread(_collect, started.pid, started.fd)
    kind = bytes(out[:2])
    if kind == _OK and len(out) >= 2 + _HEADER.size:
        work_s, private_kb = _HEADER.unpack_from(out, 2)
        # One copy of the body (the whole message is as large): its peak is the process's.
        body = bytes(memoryview(out)[2 + _HEADER.size:])
        return Copy(body, started.held_s, work_s, round(private_kb / 1024, 1))
    rest = bytes(out[2:])
    if kind == _REFUSED:
        raise SnapshotError(rest.decode(errors="replace"))
    if kind == _FAILED:
        raise RuntimeError(f"copying the state failed in the child: {rest.decode(errors='replace')}")
    raise RuntimeError(f"the child copying the state ended ({_describe(status)}) before writing it")


def _collect(pid: int, fd: int) -> tuple[bytearray, int]:
    """Read the child's pipe to its end, then reap the child (on a thread: both block)."""
    out = bytearray()
    try:
        while chunk := os.read(fd, 1 << 20):
            out += chunk
    finally:
        os.close(fd)
        _, status = os.waitpid(pid, 0)
    return out, status


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)}"
    return f"exit status {os.WEXITSTATUS(status)}"


def _private_kb() -> int:
    """This process's private dirty memory, KiB (0 where it cannot be read)."""
    try:
        with open("/proc/self/smaps_rollup", "rb") as f:
            for line in f:
                if line.startswith(b"Private_Dirty:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _child(make: Callable[[], Any], encode: Callable[[Any], bytes], r: int, w: int) -> NoReturn:
    """In the forked child: write the snapshot's body (or why there is none) to ``w``, then leave."""
    try:
        gc.disable()
        os.close(r)
        with contextlib.suppress(ValueError, OSError):
            signal.set_wakeup_fd(-1)  # the parent's loop reads that one
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        began = time.perf_counter()
        try:
            body = encode(make())
            out = _OK + _HEADER.pack(time.perf_counter() - began, _private_kb()) + body
        except SnapshotError as exc:
            out = _REFUSED + str(exc).encode()
        except BaseException as exc:  # reported to the parent, which logs it
            out = _FAILED + repr(exc).encode()
        view = memoryview(out)
        while view:
            view = view[os.write(w, view):]
    finally:
        os._exit(0)
