"""Coordinator snapshots: a partition's coordinator, workflow and webhook views as a rebuild from the
log makes them, stored with the position they cover, so a start replays only the events after it.

A start of the coordinator (``CoordinatorDriver.rebuild``) folds every event of the partition into
fresh views (about 20 us an event: read, decode, observe; four of the nine seconds of a restart
on the bench's 207,000 events). The live views cannot simply be copied: ``schedule`` changes them
(what was issued and is in flight, rate limits on the process's monotonic clock), so they are not
what a rebuild at that position would give. A snapshot is therefore made apart, by a process of
its own (``python -m services.runtime.coordinator_snapshotter``, run by ``make``): it takes the
newest usable snapshot, folds in the events from there up to the position it was given, as a
rebuild does, and hands the result back to be stored. The driver starts one every ``every`` events
it folds in (at most one at a time); the events are folded once more there, at the lowest CPU
priority (``SCHED_IDLE``: only on a CPU nothing else wants), never on the service's loop. On a
machine kept busy that process may not finish before a stop, so a start that folded in ``every``
events or more stores the views it made itself (``CoordinatorDriver._store_rebuilt``): right after
the fold, nothing has changed them yet.

The body is the three views pickled (protocol 5), lz4-compressed: the views are about forty
classes of plain Python state (heaps, sets, dataclasses, a few pydantic models) that pickle
writes and reads as they are, where a JSON format of their own would be a second description of
every one of them to keep in step. Two rules make that safe:

- a body is loaded only by the code that wrote it: each row carries ``CODE``, a SHA-256 over the
  source of every module whose classes the views hold (a test checks the list against every
  object of real views) and the Python and pydantic versions;
- a body may name only those classes and a few plain types (``_Unpickler``): anything else, a
  function above all, is refused before it is called, so a row written by someone else cannot
  make the service run code. The body's SHA-256 is checked before it is read at all.

Any snapshot may be missing or refused (other code, a corrupt body, a position past the log's end
or a chain value that differs from the log's there): the start then takes the next one, or
replays from 0 as before, and says why in a warning. Embedded runtime only (the Kafka workers
rebuild from the log).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import pickle
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import lz4.frame
import orjson
import pydantic
import sqlalchemy as sa

from events import EventLog
from events.chain import chain_at
from projections.tables import UTCDateTime
from services.coordination.coordinator import Coordinator
from services.runtime.snapshots import KEEP, SnapshotStore, checked_body, metadata
from services.webhooks.reactor import WebhookReactor
from services.workflows.reactor import WorkflowReactor

__all__ = ["CODE", "CODE_MODULES", "CoordinatorSnapshots", "Views", "fresh_views"]

log = logging.getLogger("agentbus.coordinator_snapshots")

Views = tuple[Coordinator, WorkflowReactor, WebhookReactor]

_ROOT = Path(__file__).resolve().parents[2]
# Where the classes of every object the views hold are defined (packages: every module in them).
CODE_MODULES = ("contracts", "services/coordination", "services/workflows", "services/webhooks",
                "projections/performance.py")


def _code() -> str:
    digest = hashlib.sha256(f"{sys.version_info[:3]} pydantic {pydantic.VERSION} pickle 5".encode())
    for name in CODE_MODULES:
        path = _ROOT / name
        for source in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            digest.update(str(source.relative_to(_ROOT)).encode() + b"\0" + source.read_bytes() + b"\0")
    return digest.hexdigest()


CODE = _code()

table = sa.Table(
    "coordinator_snapshots",
    metadata,  # the decider snapshots' own MetaData: created with them, never by a read-model rebuild
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("topic", sa.Text, nullable=False),
    sa.Column("partition", sa.Integer, nullable=False),
    sa.Column("position", sa.BigInteger, nullable=False),  # the next events offset to fold in
    sa.Column("chain", sa.LargeBinary, nullable=True),  # chain value of the record at position - 1
    sa.Column("created", UTCDateTime, nullable=False),
    sa.Column("code", sa.String(64), nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),  # hex digest of body
    sa.Column("body", sa.LargeBinary, nullable=False),
    sa.Index("coordinator_snapshots_by_partition", "topic", "partition", "position"),
)


# The only globals a body may name: the classes of these packages and modules, and these types.
_PACKAGES = tuple(name.removesuffix(".py").replace("/", ".") for name in CODE_MODULES)
_TYPES = frozenset({("collections", n) for n in ("Counter", "deque", "OrderedDict", "defaultdict")}
                   | {("datetime", n) for n in ("datetime", "date", "time", "timedelta", "timezone")}
                   | {("builtins", n) for n in ("set", "frozenset", "list", "dict", "tuple", "int", "float",
                                                "str", "bytes", "bool")})


class _Unpickler(pickle.Unpickler):
    """Loads only objects of the views' own classes (``_PACKAGES``) and plain types: a body that
    names anything else (a function, another module's class) is refused before it is called, so
    a row of the table cannot make the service run code of its choosing."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _TYPES or any(module == p or module.startswith(p + ".") for p in _PACKAGES):
            found = super().find_class(module, name)
            if isinstance(found, type):
                return found
        raise pickle.UnpicklingError(f"it names {module}.{name}, which a coordinator snapshot may not hold")


def fresh_views() -> Views:
    return Coordinator(), WorkflowReactor(), WebhookReactor()


def encode(views: Views) -> bytes:
    body: bytes = lz4.frame.compress(pickle.dumps(views, protocol=5))
    return body


@dataclass(frozen=True, slots=True)
class Row:
    id: int
    position: int
    chain: bytes | None
    code: str
    sha256: str


class CoordinatorSnapshots:
    """The coordinator snapshots of the read-model database (``store``'s engine and writer)."""

    def __init__(self, store: SnapshotStore, keep: int = KEEP) -> None:
        self.store, self.keep = store, keep

    async def save(self, topic: str, partition: int, position: int, chain: bytes | None, body: bytes) -> int:
        """Store a body and drop all but the newest ``keep`` of the partition, in one transaction."""
        row = dict(topic=topic, partition=partition, position=position, chain=chain,
                   created=datetime.now(UTC), code=CODE, body=body)
        new_id, _ = await self.store.insert(table, self.keep, row)
        return new_id

    async def rows(self, topic: str, partition: int) -> list[Row]:
        """The partition's snapshots, newest first (bodies not read)."""
        if self.store._missing:
            return []  # a read-only store on a database that does not exist: no snapshots
        t = table.c
        stmt = (sa.select(t.id, t.position, t.chain, t.code, t.sha256)
                .where(t.topic == topic, t.partition == partition).order_by(t.position.desc(), t.id.desc()))
        async with self.store.engine.connect() as conn:
            if not await conn.run_sync(lambda c: sa.inspect(c).has_table(table.name)):
                return []
            found = (await conn.execute(stmt)).all()
        return [Row(int(r[0]), int(r[1]), None if r[2] is None else bytes(r[2]), r[3], r[4]) for r in found]

    async def newest(self, event_log: EventLog, topic: str, partition: int,
                     until: int) -> tuple[int, Views] | None:
        """The newest usable snapshot at or below ``until`` (position, views); each one passed over
        is named in a warning with the reason; None when there is none."""
        end = await event_log.end_offset(topic, partition)
        for row in await self.rows(topic, partition):
            if row.position > until:
                continue  # later than the committed offset: not refused, just not wanted
            found = await self._load(row, event_log, topic, partition, end)
            if isinstance(found, str):
                log.warning("coordinator snapshot %d of %s[%d] at position %d not used: %s",
                            row.id, topic, partition, row.position, found)
                continue
            return row.position, found
        return None

    async def _load(self, row: Row, event_log: EventLog, topic: str, partition: int, end: int) -> str | Views:
        if row.code != CODE:
            return "written by other code (its classes may differ from these)"
        body = await checked_body(event_log, topic, partition, end, row.position, row.chain, row.sha256,
                                  lambda: self._body(row.id))
        if isinstance(body, str):
            return body
        try:
            views = _Unpickler(io.BytesIO(lz4.frame.decompress(body))).load()
        except Exception as exc:  # a body that checks out but does not load: refused, named
            return f"its body does not load ({type(exc).__name__}: {exc})"
        if not (isinstance(views, tuple) and [type(v) for v in views] == [Coordinator, WorkflowReactor,
                                                                          WebhookReactor]):
            return "its body is not the coordinator's views"
        return views

    async def _body(self, snapshot_id: int) -> bytes | None:
        async with self.store.engine.connect() as conn:
            body = await conn.scalar(sa.select(table.c.body).where(table.c.id == snapshot_id))
        return None if body is None else bytes(body)


async def fold(event_log: EventLog, snapshots: CoordinatorSnapshots, topic: str, partition: int,
               position: int) -> tuple[int, bytes, bytes | None]:
    """Fold the events below ``position`` into the newest usable snapshot (or fresh views), as a
    rebuild does; returns (the position it started from, the body, the chain value at ``position``).
    What the snapshot process runs."""
    from services.runtime.coordinator import _observe_history  # the rebuild's own fold

    found = await snapshots.newest(event_log, topic, partition, position)
    start, views = found if found is not None else (0, fresh_views())
    await _observe_history(event_log, views, topic, partition, position, start=start)
    return start, encode(views), await chain_at(event_log, topic, partition, position)


@dataclass(frozen=True, slots=True)
class Made:
    """A snapshot the process made and ``make`` stored."""

    id: int
    position: int
    start: int  # the position of the snapshot it went on from (0: none)
    size: int  # bytes of the body


async def make(snapshots: CoordinatorSnapshots, urls: tuple[str, str], topic: str, partition: int,
               position: int, *, urgent: bool = False) -> Made:
    """Run the snapshot process (``services.runtime.coordinator_snapshotter``) for ``topic[partition]``
    at ``position`` and store what it hands back. The process only reads; the row is written here,
    through the service's own writer, so the process never holds the database's write lock.
    ``urgent``: at normal CPU priority (a start waits for it), not the lowest.
    Raises RuntimeError naming the exit code when it fails; killed if this is cancelled."""
    broker, database = urls
    config = {"broker": broker, "database": database, "topic": topic, "partition": partition,
              "position": position, "priority": "normal" if urgent else "lowest"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.runtime.coordinator_snapshotter",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    try:
        out, _ = await proc.communicate(orjson.dumps(config) + b"\n")
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"the snapshot process exited with code {proc.returncode} (its error is in the "
                           "log above)")
    head, _, body = out.partition(b"\n")
    said = orjson.loads(head)
    if len(body) != said["size"] or said["position"] != position:
        raise RuntimeError(f"the snapshot process handed back {len(body)} bytes at {said['position']}, "
                           f"not the {said['size']} at {position} it announced")
    chain = None if said["chain"] is None else bytes.fromhex(said["chain"])
    row = await snapshots.save(topic, partition, position, chain, body)
    return Made(row, position, int(said["from"]), len(body))
