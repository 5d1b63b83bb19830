"""Opening the SQLite log read-only, for the commands that only read it (verify, replay, export).

Such a command must leave the file as it found it: it is how an auditor looks at a log, and a look
that wrote (created the schema, or ran the one-time chain migration, which recomputes chain values)
could change or destroy what it was meant to find. So the file is opened with SQLite's read-only
mode (a missing file is an error, not a new log), nothing is created in it, and a file written
before chains is read as it is: its records carry no chain value, which verification reports.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

import aiosqlite

from events.log import LogError
from events.sqlite_chain import CHAINED_VERSION
from events.sqlite_writer import SYSTEM_INDEX

# Reads name the chain column; a file from before chains has none, so a view in the connection's
# own TEMP schema (which shadows ``main``, and writes nothing to the file) gives it one, empty.
_UNCHAINED_VIEW = (
    'CREATE TEMP VIEW records AS SELECT topic, "partition", "offset", id, key, value, codec, headers,'
    " crc, ts, NULL AS chain FROM main.records"
)


@dataclass(frozen=True, slots=True)
class ReadOnlyFile:
    """The read-only connection, and what it found in the file."""

    conn: aiosqlite.Connection
    # The file was written before chains and has not been chained since: its records (some or all)
    # carry no chain value until a process opens it for writing and chains it.
    pending_chain: bool
    # The system pool's partial index exists (an older file may predate it), so a read may name it.
    indexed: bool


def _uri(path: Path, url: str) -> str:
    """The read-only URI of the file at ``path``; LogError when there is none (SQLite would make one)."""
    if not path.is_file():
        raise LogError(f"no log in {url} ({path} does not exist): nothing was written there yet "
                       "(check --broker/--data-dir)")
    return f"{path.resolve().as_uri()}?mode=ro"


async def open_reader(path: Path, url: str) -> ReadOnlyFile:
    """Open the log at ``path`` (``url``, to name it) read-only; LogError when there is no log there."""
    conn = await aiosqlite.connect(_uri(path, url), uri=True, isolation_level=None)
    try:
        await conn.execute("PRAGMA busy_timeout = 10000")
        tables = {str(r[0]) for r in await conn.execute_fetchall(
            "SELECT name FROM sqlite_master WHERE type IN ('table', 'index')")}
        if "records" not in tables or "topics" not in tables:
            raise LogError(f"{path} is not an agentbus log (it has no records or topics table)")
        columns = {str(r[1]) for r in await conn.execute_fetchall("PRAGMA table_info(records)")}
        version = int(next(iter(await conn.execute_fetchall("PRAGMA user_version")))[0])
        if "chain" not in columns:
            await conn.execute(_UNCHAINED_VIEW)
        # Only now: the view above is the one write this connection makes (to its own TEMP schema).
        await conn.execute("PRAGMA query_only = 1")
    except sqlite3.Error as exc:
        await conn.close()
        raise LogError(f"cannot read the log at {path}: {exc}") from exc
    except BaseException:
        await conn.close()
        raise
    return ReadOnlyFile(conn, pending_chain=version < CHAINED_VERSION,
                        indexed=SYSTEM_INDEX in tables and "chain" in columns)
