"""``services.runtime.memory`` on this machine's real C library, in processes of their own (an
allocator's state is per process): large blocks kept apart are returned to the system when freed,
and ``give_back`` returns what the heap holds free. The control run (neither called) shows the
memory staying without them, so the test fails if either does nothing."""

from __future__ import annotations

import subprocess
import sys

import pytest

from services.runtime import memory

_PROGRAM = """
import sys
from services.runtime import memory

def rss_mb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) // 1024 for line in f if line.startswith("VmRSS"))

mode = sys.argv[1]
if mode == "apart":
    assert memory.keep_large_blocks_apart()
block = bytes(8 << 20)
del block  # freeing a mapped 8 MB block raises glibc's mmap threshold past 2 MB (unless fixed)
big, small = [], []
for _ in range(64):
    big.append(bytearray(2 << 20))  # 128 MB in 2 MB blocks, every page touched
    small.append(bytearray(1000))  # a small object after each: the heap cannot simply shrink
held = rss_mb()
del big
if mode == "give_back":
    assert memory.give_back()
print(held, rss_mb())
"""


def _run(mode: str) -> tuple[int, int]:
    out = subprocess.run([sys.executable, "-c", _PROGRAM, mode], capture_output=True, text=True, check=True)
    held, after = map(int, out.stdout.split())
    return held, after


@pytest.mark.skipif(memory._glibc() is None, reason="glibc's allocator only (Linux with glibc)")
def test_large_blocks_kept_apart_and_the_free_heap_go_back_to_the_system() -> None:
    held, after = _run("default")
    assert held >= 128 and after >= 128, "the control run: freed 2 MB blocks stay in the heap"
    held, after = _run("apart")
    assert held >= 128 and after < 64
    held, after = _run("give_back")
    assert held >= 128 and after < 64


def test_on_a_c_library_that_is_not_glibc_both_do_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "_glibc", lambda: None)
    assert memory.keep_large_blocks_apart() is False and memory.give_back() is False
