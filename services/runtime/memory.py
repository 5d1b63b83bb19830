"""Memory the service hands back to the operating system (glibc's allocator, Linux).

CPython asks the C allocator for every object larger than 512 bytes (its own small-object
arenas are mapped apart). glibc serves a request of at least its mmap threshold (128 KiB) with a
mapping of its own, given back when freed, but raises that threshold to the size of any such
block freed (up to 32 MiB): after the first snapshot body of a few MB is freed, every later body,
batch of records or decoded page of the log comes from the heap, and the heap keeps what is freed
in holes it rarely returns.
Measured on ``agentbus bench --no-http`` (the service's process at the end of its throughput
phase, 304 MB resident): ``malloc_trim(0)`` gave back 35.6 MB that glibc held free.

``keep_large_blocks_apart`` fixes the threshold where it starts (which also ends its dynamic
raising), so large transient buffers never land in the heap; ``give_back`` returns the heap's free
pages, called after the rare events that free many MB at once (a snapshot stored). Both do nothing
where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import sys

__all__ = ["GC_THRESHOLDS", "MMAP_THRESHOLD", "give_back", "keep_large_blocks_apart"]

log = logging.getLogger("agentbus.memory")

MMAP_THRESHOLD = 128 * 1024  # glibc's own starting value
# The collector's thresholds in agentbus's long-running processes (``gc.set_threshold``): a young
# collection every 100,000 allocations, not 700 (``services.runtime.embedded.tune_gc`` says why).
GC_THRESHOLDS = (100_000, 50, 1000)
_M_MMAP_THRESHOLD = -3  # <malloc.h>


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - glibc only: musl has no such symbol
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
    except (OSError, AttributeError):
        return None
    return libc


def keep_large_blocks_apart(threshold: int = MMAP_THRESHOLD) -> bool:
    """Serve every allocation of ``threshold`` bytes or more with a mapping of its own, returned to
    the system when freed, from now on; False where that cannot be set (not glibc)."""
    libc = _glibc()
    return libc is not None and bool(libc.mallopt(_M_MMAP_THRESHOLD, threshold))


def give_back() -> bool:
    """Return the free pages of the allocator's heaps to the system (``malloc_trim(0)``: a few ms
    on a heap of hundreds of MB; the interpreter lock is released meanwhile, so call it on a
    thread); whether any was returned."""
    libc = _glibc()
    return libc is not None and bool(libc.malloc_trim(0))
