"""Importing the command line (every ``agentbus`` command's start, ``agentbus serve``'s included)
runs no cyclic collection, and leaves the collector as it found it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

_PROBE = """
import gc
collections = []
gc.callbacks.append(lambda phase, info: collections.append(info["generation"]) if phase == "start" else None)
{before}
import services.cli
print(len(collections), gc.isenabled(), len(gc.get_objects()))
"""


def _probe(before: str = "") -> tuple[int, bool, int]:
    done = subprocess.run([sys.executable, "-c", _PROBE.format(before=before)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=True)
    count, enabled, objects = done.stdout.split()
    return int(count), enabled == "True", int(objects)


def test_the_cli_imports_without_collections_and_turns_the_collector_back_on() -> None:
    collections, enabled, objects = _probe()
    assert objects > 50_000  # what the collector would have walked: the import is not trivial
    # With the collector on throughout it ran about 400 times. A few may run before the package's
    # first line does (finding and compiling ``services`` and ``services.cli`` themselves).
    assert collections <= 3, collections
    assert enabled


def test_a_collector_turned_off_before_the_import_stays_off() -> None:
    collections, enabled, _ = _probe("gc.disable()")
    assert collections == 0
    assert not enabled
