"""Where decider snapshots are kept: a table in the read-model database, and the choice of one to use.

Each row is one partition's decider state (``services.domain.snapshot``) after every event below
``position``, with the chain value of the record just below it (``events.chain``; None where the
log carries none), the format version, the SHA-256 of the body and the time it was written. The
newest ``KEEP`` per events partition are kept.

The table has a ``MetaData`` of its own, not the read models': a read-model rebuild drops and
re-creates those and compares them with the live ones, and must neither drop nor see this one.
Snapshots are only a cache of the log, so any snapshot may be lost or refused: ``newest_valid``
takes the newest one that checks out (its body's checksum, its version, its position within the
log, its chain value equal to the log's at that position) and says in a warning why it passed
over each one it refused; with none the decider replays from offset 0.

This module must never decide or evolve anything (``services.runtime.decider`` does) and never
touches the read-model tables.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from events import EventLog
from events.chain import chain_at
from projections import ProjectionStore
from projections.tables import UTCDateTime
from services.domain.snapshot import FORMAT, DeciderSnapshot, SnapshotError, decode

__all__ = ["KEEP", "SnapshotInfo", "SnapshotStore", "checked_body", "metadata", "newest_valid", "snapshots"]

log = logging.getLogger("agentbus.snapshots")
T = TypeVar("T")

# Snapshots kept per events partition: the newest, and two to fall back on should it be refused.
KEEP = 3

metadata = sa.MetaData()

snapshots = sa.Table(
    "decider_snapshots",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("topic", sa.Text, nullable=False),
    sa.Column("partition", sa.Integer, nullable=False),
    sa.Column("position", sa.BigInteger, nullable=False),  # the next events offset to replay
    sa.Column("chain", sa.LargeBinary, nullable=True),  # chain value of the record at position - 1
    sa.Column("created", UTCDateTime, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),  # hex digest of body
    sa.Column("body", sa.LargeBinary, nullable=False),
    sa.Index("decider_snapshots_by_partition", "topic", "partition", "position"),
)


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    """A stored snapshot, without its body."""

    id: int
    topic: str
    partition: int
    position: int
    chain: bytes | None
    created: datetime
    version: int
    sha256: str
    size: int  # bytes of the body

    def describe(self) -> str:
        return f"snapshot {self.id} of {self.topic}[{self.partition}] at position {self.position}"


class SnapshotStore:
    """The snapshots table, in the read-model database.

    Given the ``ProjectionStore`` of a runtime it shares its engine (and, on SQLite, its queue of
    writers); given a URL it opens an engine of its own (``agentbus replay --from-snapshot``).
    ``readonly``: never create the table (a missing one holds no snapshots).
    """

    def __init__(self, source: ProjectionStore | str, *, keep: int = KEEP, readonly: bool = False) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.source = source
        self.keep = keep
        self.readonly = readonly
        self._own: AsyncEngine | None = None
        self._missing = False
        # Snapshots being written in the background (``track``): a runtime waits for them
        # (``drain``) before it closes the database, so none holds a connection past its close.
        self._writes: set[asyncio.Task[None]] = set()

    @property
    def engine(self) -> AsyncEngine:
        if isinstance(self.source, ProjectionStore):
            return self.source.engine
        if self._own is None:
            raise RuntimeError("SnapshotStore is not started")
        return self._own

    async def start(self, attempts: int = 5) -> None:
        """Open the engine (a URL's) and create the table if absent; idempotent."""
        if isinstance(self.source, str) and self._own is None:
            self._own = _engine(self.source, self.readonly)
            if self._own is None:
                self._missing = True  # no database, so no snapshots (and none is created)
                return
        if self.readonly:
            async with self.engine.connect() as conn:
                self._missing = not await conn.run_sync(lambda c: sa.inspect(c).has_table(snapshots.name))
            return
        for attempt in range(attempts):
            try:
                await self._run_write(_create_table)
                return
            except sa.exc.DBAPIError:
                # PostgreSQL: workers starting together race to create it; the winner did.
                if attempt == attempts - 1:
                    raise
                await asyncio.sleep(0.2 * (attempt + 1))

    def track(self, task: asyncio.Task[None]) -> None:
        """Remember a background write until it ends, for ``drain``."""
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def drain(self) -> None:
        """Wait for the background writes (each logs its own failure).

        Polls rather than awaiting the tasks: a Faust worker's roles may run them on a loop of
        another thread, whose tasks cannot wake this one.
        """
        # An Event set from another loop would not wake this one either: poll.
        while any(not task.done() for task in list(self._writes)):  # noqa: ASYNC110
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        """Dispose of an engine of its own (a shared one is its owner's to close)."""
        if self._own is not None:
            await self._own.dispose()
            self._own = None

    async def _run_write(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(conn, *args)`` in one write transaction: the runtime store's ``run_write`` (on SQLite,
        its writer thread, so no async connection is ever left inside a write), or an engine of its own."""
        if isinstance(self.source, ProjectionStore):
            return await self.source.run_write(fn, *args)
        async with self.engine.begin() as conn:
            return await conn.run_sync(fn, *args)

    async def save(self, topic: str, partition: int, position: int, chain: bytes | None, body: bytes, *,
                   version: int = FORMAT) -> SnapshotInfo:
        """Store a snapshot body and drop all but the newest ``keep`` of the partition, in one transaction."""
        created = datetime.now(UTC)
        new_id, digest = await self.insert(snapshots, self.keep, dict(
            topic=topic, partition=partition, position=position, chain=chain, created=created,
            version=version, body=body))
        return SnapshotInfo(new_id, topic, partition, position, chain, created, version, digest, len(body))

    async def insert(self, table: sa.Table, keep: int, row: dict[str, Any]) -> tuple[int, str]:
        """Store ``row`` with the SHA-256 of its ``body`` (hashed off the loop: a few MB hash in
        10-20 ms) and drop all but the newest ``keep`` of its partition from ``table``, in one
        transaction; (the new id, the digest). The coordinator's snapshots are kept the same way."""
        if self.readonly:
            raise RuntimeError("this SnapshotStore is read-only")
        body: bytes = row["body"]
        digest = await asyncio.to_thread(lambda: hashlib.sha256(body).hexdigest())
        return await self._run_write(save_row, keep, {**row, "sha256": digest}, table), digest

    async def list(self, topic: str, partition: int) -> list[SnapshotInfo]:
        """The partition's snapshots, newest (highest position) first."""
        if self._missing:
            return []
        t = snapshots.c
        stmt = (sa.select(t.id, t.topic, t.partition, t.position, t.chain, t.created, t.version, t.sha256,
                          sa.func.length(t.body))
                .where(t.topic == topic, t.partition == partition)
                .order_by(t.position.desc(), t.id.desc()))
        async with self.engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        return [SnapshotInfo(int(r[0]), r[1], int(r[2]), int(r[3]), None if r[4] is None else bytes(r[4]),
                             r[5], int(r[6]), r[7], int(r[8])) for r in rows]

    async def body(self, snapshot_id: int) -> bytes | None:
        """The body of a stored snapshot (None once it was dropped)."""
        async with self.engine.connect() as conn:
            value = await conn.scalar(sa.select(snapshots.c.body).where(snapshots.c.id == snapshot_id))
        return None if value is None else bytes(value)


def _create_table(conn: sa.Connection) -> None:
    metadata.create_all(conn)


def save_row(conn: sa.Connection, keep: int, row: dict[str, Any], table: sa.Table = snapshots) -> int:
    """Insert one snapshot into ``table`` and drop all but the newest ``keep`` of its partition there;
    the new id (the coordinator's snapshots, ``coordinator_snapshots``, are kept the same way)."""
    t = table.c
    result = conn.execute(table.insert().values(**row))
    [new_id] = result.inserted_primary_key or (None,)
    if new_id is None:  # pragma: no cover - every backend returns the new id
        raise RuntimeError("the database returned no id for the new snapshot")
    kept = (sa.select(t.id).where(t.topic == row["topic"], t.partition == row["partition"])
            .order_by(t.position.desc(), t.id.desc()).limit(keep))
    conn.execute(table.delete().where(t.topic == row["topic"], t.partition == row["partition"],
                                      t.id.not_in(kept.scalar_subquery())))
    return int(new_id)


def _engine(url: str, readonly: bool) -> AsyncEngine | None:
    """An engine of its own on ``url``; None for a read-only SQLite file that does not exist."""
    kwargs: dict[str, Any] = {}
    parsed = make_url(url)
    if parsed.drivername.startswith("sqlite"):
        if parsed.database not in (None, "", ":memory:"):
            path = Path(parsed.database)
            if readonly and not path.exists():
                return None
            path.parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"timeout": 30}  # wait for the service's writers, as they do
    return create_async_engine(url, **kwargs)


async def newest_valid(store: SnapshotStore, event_log: EventLog, topic: str, partition: int, *,
                       until: int | None = None) -> tuple[SnapshotInfo, DeciderSnapshot] | None:
    """The newest snapshot of ``topic[partition]`` that may be used on ``event_log``, decoded.

    ``until``: only one at or below that position (a replay that stops there). Each snapshot
    passed over is named in a warning with the reason; None when no snapshot is usable.
    """
    candidates = await store.list(topic, partition)
    if not candidates:
        return None
    end = await event_log.end_offset(topic, partition)
    for info in candidates:
        if until is not None and info.position > until:
            continue  # a later state than the replay asks for: not refused, just not wanted
        why = await _refusal(info, store, event_log, end)
        if isinstance(why, str):
            log.warning("%s not used: %s", info.describe(), why)
            continue
        return info, why
    return None


async def _refusal(info: SnapshotInfo, store: SnapshotStore, event_log: EventLog,
                   end: int) -> str | DeciderSnapshot:
    """Why ``info`` cannot be used (a sentence), or its decoded snapshot."""
    if info.version != FORMAT:
        return f"format version {info.version}, this version of agentbus reads {FORMAT}"
    body = await checked_body(event_log, info.topic, info.partition, end, info.position, info.chain,
                              info.sha256, lambda: store.body(info.id))
    if isinstance(body, str):
        return body
    try:
        snap = decode(body)
    except SnapshotError as exc:
        return str(exc)
    if snap.partition != info.partition or snap.position != info.position:
        return (f"its body is of partition {snap.partition} at position {snap.position}, not what its row "
                "says")
    return snap


async def checked_body(event_log: EventLog, topic: str, partition: int, end: int, position: int,
                       chain: bytes | None, sha256: str,
                       read: Callable[[], Awaitable[bytes | None]]) -> bytes | str:
    """What every snapshot row (a decider's or a coordinator's) must pass before its body is
    decoded: its position within the log (``end``), its chain value equal to the log's there, its
    body still stored and matching its SHA-256. The body (``read``), or why not (a sentence)."""
    if position > end:
        return (f"it covers events up to position {position} but the log ends at {end} "
                "(a snapshot of another or a truncated log)")
    if chain is not None:
        found = await chain_at(event_log, topic, partition, position)
        if found != chain:
            return (f"its chain value differs from the log's at that position ({chain.hex()} against "
                    f"{found.hex()}): a snapshot of another or a rewritten log")
    body = await read()
    if body is None:
        return "it was dropped meanwhile"
    digest = hashlib.sha256(body).hexdigest()
    if digest != sha256:
        return f"its body's SHA-256 is {digest}, not the {sha256} stored with it (a corrupt body)"
    return body
