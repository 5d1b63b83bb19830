"""The one-time chain migration of a SQLite log file written before records carried chain values.

``events.sqlite`` runs it when it opens a file; it must never change a stored value, only fill
the chain column.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable
from typing import Any

from events.chain import GENESIS

# PRAGMA user_version of a file whose every record carries its chain value.
_CHAINED_VERSION = 1
# (topic, partition, rows of offset/value/codec/crc) -> (offset, original value) pairs, checked.
ToValues = Callable[[str, int, Iterable[Any]], list[tuple[int, bytes]]]
logger = logging.getLogger("events.sqlite")


def migrate(conn: sqlite3.Connection, to_values: ToValues) -> None:
    """Chain a file written before records carried chain values: add the column, fill it in order.

    One transaction (the file's ``user_version`` marks it done in the same one), so a crash leaves
    the file as it was and the next start runs it again. Synchronous: the log's writer thread runs it.
    """
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version >= _CHAINED_VERSION:
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
            prev, offset = GENESIS, 0
            while True:
                batch = conn.execute(
                    'SELECT "offset", value, codec, crc FROM records WHERE topic = ? AND "partition" = ?'
                    ' AND "offset" >= ? ORDER BY "offset" LIMIT 5000', (topic, partition, offset)).fetchall()
                if not batch:
                    break
                updates = []
                for at, value in to_values(topic, partition, batch):
                    h = hashlib.sha256(prev)
                    h.update(value)
                    prev = h.digest()
                    updates.append((prev, topic, partition, at))
                conn.executemany('UPDATE records SET chain = ? WHERE topic = ? AND "partition" = ?'
                                 ' AND "offset" = ?', updates)
                count += len(updates)
                offset = batch[-1][0] + 1
        conn.execute(f"PRAGMA user_version = {_CHAINED_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    if not count:
        return
    logger.warning("chained %d records written before the log kept a hash chain (%.2f s)",
                   count, time.perf_counter() - started)
