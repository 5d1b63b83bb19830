"""Read-model comparisons that say where two dumps differ, not only that they do.

pytest's own diff of two ``dump_tables`` results prints thousands of lines and, in CI's tail,
rarely the table and row that differ. ``assert_same_tables`` names them.
"""

from __future__ import annotations

from typing import Any

import orjson


def _key(row: Any) -> bytes:
    return orjson.dumps(row, option=orjson.OPT_SORT_KEYS, default=str)


def table_differences(left: dict[str, list[Any]], right: dict[str, list[Any]], limit: int = 5) -> list[str]:
    """One line per table whose rows differ: rows only on the left, rows only on the right."""
    lines: list[str] = []
    for table in sorted(set(left) | set(right)):
        a, b = left.get(table), right.get(table)
        if a == b:
            continue
        if a is None or b is None:
            lines.append(f"{table}: only in {'right' if a is None else 'left'}")
            continue
        ka, kb = [_key(r) for r in a], [_key(r) for r in b]
        only_a = [r for r, k in zip(a, ka, strict=True) if k not in set(kb)]
        only_b = [r for r, k in zip(b, kb, strict=True) if k not in set(ka)]
        if not only_a and not only_b:
            lines.append(f"{table}: same rows, different order or multiplicity ({len(a)} vs {len(b)})")
            continue
        lines.append(f"{table}: {len(only_a)} row(s) only left, e.g. {only_a[:limit]}; "
                     f"{len(only_b)} only right, e.g. {only_b[:limit]}")
    return lines


def assert_same_tables(left: dict[str, list[Any]], right: dict[str, list[Any]],
                       names: tuple[str, str] = ("live", "rebuilt")) -> None:
    diff = table_differences(left, right)
    assert not diff, f"{names[0]} (left) != {names[1]} (right):\n" + "\n".join(diff)
