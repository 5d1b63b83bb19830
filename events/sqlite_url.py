"""The URL of a SQLite log: ``sqlite:///rel.db`` / ``sqlite:////abs.db`` and its options, read
before anything is opened. Pure: no I/O."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qsl

__all__ = ["COMMIT_ON_LOOP_MS", "INLINE_ROWS", "parse_url"]

# A transaction of at most this many records is written on the event loop itself, a larger one on
# the writer's thread (URL option ``inline_rows``; 0: always the thread). See ``_transaction``.
INLINE_ROWS = 64
# Its COMMIT runs on the loop too while COMMITs take under this on average (URL option
# ``commit_on_loop_ms``; 0: always the writer's thread). See ``sqlite_writer.CommitPace``.
COMMIT_ON_LOOP_MS = 1.0


def parse_url(url: str) -> tuple[Path, str, int, float]:
    """``sqlite:///rel.db`` / ``sqlite:////abs.db`` (+ ``?synchronous=normal``, ``&inline_rows=N``,
    ``&commit_on_loop_ms=F``) -> path, mode, the largest transaction written on the event loop,
    the mean COMMIT time under which its COMMIT runs there too."""
    scheme, sep, rest = url.partition("://")
    if scheme.lower() != "sqlite" or not sep:
        raise ValueError(f"not a sqlite log URL: {url!r}")
    location, _, query = rest.partition("?")
    if not location.startswith("/"):
        raise ValueError(f"sqlite log URL needs three slashes (sqlite:///path.db): {url!r}")
    path = location[1:]
    if not path or path == ":memory:":
        # The reader and the writer are two connections; they must share a file.
        raise ValueError(f"sqlite log URL needs a file path: {url!r}")
    synchronous = "FULL"
    inline_rows = INLINE_ROWS
    commit_on_loop_ms = COMMIT_ON_LOOP_MS
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name == "synchronous" and value.upper() in {"FULL", "NORMAL", "EXTRA"}:
            synchronous = value.upper()
        elif name == "inline_rows" and value.isdigit() and len(value) <= 6:
            inline_rows = int(value)
        elif name == "commit_on_loop_ms" and (ms := _milliseconds(value)) is not None:
            commit_on_loop_ms = ms
        else:
            raise ValueError(f"unsupported sqlite log URL option {name}={value!r} in {url!r}")
    return Path(path), synchronous, inline_rows, commit_on_loop_ms


def _milliseconds(value: str) -> float | None:
    """A URL option's milliseconds, 0 to 1000 (decimals allowed), or None."""
    try:
        ms = float(value)
    except ValueError:
        return None
    return ms if 0 <= ms <= 1000 else None  # NaN fails both
