"""The one-time chain migration of a SQLite log file written before records carried chain values.

``events.sqlite`` runs it when it opens a file for writing (never a read-only open: see
``events.sqlite_reader``). It must never change a stored value, nor a chain value already stored:
it fills in the missing ones. A file that says it was never chained (``user_version``) but holds
chain values that differ from the ones recomputed was altered after it was chained (resetting
``user_version`` is how someone would have the migration cover an edit); it is refused, left as it
was, so the evidence stays for ``agentbus audit verify``.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable
from typing import Any

from events.chain import GENESIS
from events.log import LogError

# PRAGMA user_version of a file whose every record carries its chain value.
CHAINED_VERSION = 1
# (topic, partition, rows of offset/value/codec/crc) -> (offset, original value) pairs, checked.
ToValues = Callable[[str, int, Iterable[Any]], list[tuple[int, bytes]]]
logger = logging.getLogger("events.sqlite")


class ChainConflict(LogError):
    """A file to be chained holds a chain value that differs from the one its records give."""


def migrate(conn: sqlite3.Connection, to_values: ToValues) -> None:
    """Chain a file written before records carried chain values: add the column, fill it in order.

    One transaction (the file's ``user_version`` marks it done in the same one), so a crash leaves
    the file as it was and the next start runs it again. A chain value already stored is compared,
    never overwritten: a different one raises ChainConflict and the file is left as it was.
    Synchronous: the log's writer thread runs it.
    """
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version >= CHAINED_VERSION:
        return
    columns = {row[1] for row in conn.execute("PRAGMA table_info(records)").fetchall()}
    started = time.perf_counter()
    conn.execute("BEGIN IMMEDIATE")
    try:
        if "chain" not in columns:
            conn.execute("ALTER TABLE records ADD COLUMN chain BLOB")
        parts = conn.execute('SELECT DISTINCT topic, "partition" FROM records').fetchall()
        count = 0
        for topic, partition in parts:
            count += _chain_partition(conn, to_values, topic, partition)
        conn.execute(f"PRAGMA user_version = {CHAINED_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    if not count:
        return
    logger.warning("chained %d records written before the log kept a hash chain (%.2f s)",
                   count, time.perf_counter() - started)


def _chain_partition(conn: sqlite3.Connection, to_values: ToValues, topic: str, partition: int) -> int:
    """Fill one partition's missing chain values; how many were filled."""
    prev, offset, count = GENESIS, 0, 0
    while True:
        batch = conn.execute(
            'SELECT "offset", value, codec, crc, chain FROM records WHERE topic = ? AND "partition" = ?'
            ' AND "offset" >= ? ORDER BY "offset" LIMIT 5000', (topic, partition, offset)).fetchall()
        if not batch:
            return count
        stored = {row[0]: row[4] for row in batch}
        updates = []
        for at, value in to_values(topic, partition, [row[:4] for row in batch]):
            h = hashlib.sha256(prev)
            h.update(value)
            prev = h.digest()
            found = stored[at]
            if found is None:
                updates.append((prev, topic, partition, at))
            elif found != prev:
                raise ChainConflict(
                    "the log is marked as never chained (its PRAGMA user_version), "
                    f"yet {topic}[{partition}]@{at} stores a chain value that differs from the one its "
                    f"records give (expected {prev.hex()}, found {bytes(found).hex()}): it was altered "
                    "after it was chained; it was left as it was, not chained again (`agentbus audit "
                    "verify` reads it without writing; README: Repairing a log)")
        conn.executemany('UPDATE records SET chain = ? WHERE topic = ? AND "partition" = ?'
                         ' AND "offset" = ?', updates)
        count += len(updates)
        offset = batch[-1][0] + 1
