"""The read-model database, chosen by URL: SQLite (embedded default) or PostgreSQL (at scale).

Owns the async engine, creates the tables, and lets readers wait until the projector has
applied a log position (read-your-writes). It must never apply events itself (that is
``projections.projector``) and never import ``services``.

Schema changes. The tables are created at start. Tables left by another version of the read
models (columns added or removed) are dropped with every other read-model table and the
positions, so the projectors rebuild them from offset 0 of the log: the read models are derived
data, and a model half in the old shape would only fail later, event by event.

Writes. ``run_write`` runs a synchronous function (the projector's whole apply) inside one write
transaction. On a SQLite file it runs on a thread of the store's own with a plain pysqlite
connection: one hand-off per transaction, where the async driver (aiosqlite) makes one round trip
through the event loop per statement, each queued behind whatever else the loop runs. Elsewhere
(PostgreSQL, SQLite in memory) it runs under ``AsyncConnection.run_sync`` on the async engine.

Reads. ``run_read`` runs a synchronous function (a query, one read transaction) the same way: on a
SQLite file on one of the store's reader threads (``READ_THREADS``) with a plain pysqlite
connection, in one hand-off; elsewhere under ``AsyncConnection.run_sync``. Through aiosqlite a
point read made five or six round trips (connection, cursor, execute, fetch, close, rollback), each
queued behind the loop's other work: ``GET /v1/tasks/{id}`` answered about 650 requests/s at 64
connections, and about 1,500/s in one hand-off (README, "Measured"). A query of one statement
(``run_statement``) is sent alone, without BEGIN and ROLLBACK: about 2,050-2,140/s.

Every write of agentbus's own to a SQLite file goes that way (the schema at start, the projector,
snapshots, a reset), so the async connections only ever read. A write on one could outlive its
task: cancelled between a SELECT's execute and its fetch, the connection is invalidated and closed
while the cursor still holds an active statement, and SQLite keeps such a connection (and its write
lock) as a "zombie" until the cursor is garbage collected; a runtime restarted on the same file in
the same process then waited out the busy timeout. A transaction on the writer thread always runs
to its end.

Durability. On SQLite the database runs in WAL mode with ``synchronous=NORMAL``: a power cut may
lose the last few committed transactions, but each transaction holds both the rows an apply
changed and the projector's position, so what is lost is lost together. After a restart the
projector resumes from the older stored position and re-applies those events from the log, which
is durable on its own. The read model is therefore never ahead of, or inconsistent with, the log;
at worst it is briefly behind. It can also always be rebuilt from offset 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import orjson
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool
from sqlalchemy.util import greenlet_spawn

from events.settle import settled
from projections import tables
from projections.sql import read_position

DEFAULT_URL = "sqlite+aiosqlite:///agentbus-data/read.db"
# The projector whose position readers wait for (``wait_for_position``).
MAIN_PROJECTOR = "read_models"
SUPPORTED_SCHEMES = ("sqlite+aiosqlite", "postgresql+asyncpg")

PositionKey = tuple[str, str, int]  # (projector, topic, partition)
T = TypeVar("T")

# How long ``close`` waits for write transactions still open (a task its owner did not stop) before
# it closes their connections, which rolls them back and releases SQLite's write lock. The engine's
# dispose alone leaves a checked-out connection open, holding the lock against the next process or
# runtime on the file until the garbage collector finds it.
CLOSE_GRACE_S = 5.0
# Threads that run reads on a SQLite file (``run_read``): a long read (a page of a large table)
# leaves another thread for the point reads; more only contend for the interpreter.
READ_THREADS = 2

log = logging.getLogger(__name__)


def _json_dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


class ProjectionStore:
    """The read-model database: engine, schema, and waiting for projector positions."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        schema: str | None = None,
        poll_interval: float = 0.1,
        echo: bool = False,
    ) -> None:
        parsed = make_url(url)
        if parsed.drivername not in SUPPORTED_SCHEMES:
            raise ValueError(
                f"unsupported read-model URL {url!r}; use sqlite+aiosqlite:///path/read.db "
                "or postgresql+asyncpg://user@host:port/db"
            )
        if schema is not None and parsed.drivername != "postgresql+asyncpg":
            raise ValueError("a schema can only be chosen on PostgreSQL")
        self.url = url
        self.schema = schema
        self.poll_interval = poll_interval
        self._echo = echo
        self._engine: AsyncEngine | None = None
        self._writer: AsyncEngine | None = None
        # SQLite file: the synchronous engine ``run_write`` uses, and the one thread that uses it.
        self._sync: sa.Engine | None = None
        self._thread: ThreadPoolExecutor | None = None
        # SQLite file: the same engine without the write option, and the threads ``run_read`` uses.
        self._reads: sa.Engine | None = None
        self._statements: sa.Engine | None = None  # the same, for one SELECT without BEGIN
        self._readers: ThreadPoolExecutor | None = None
        # ``run_write`` transactions and ``run_read`` reads now running on the threads.
        self._threaded: set[asyncio.Future[Any]] = set()
        # Positions committed by projectors in this process; lets waiters return without a query.
        self._known: dict[PositionKey, int] = {}
        # SQLite has one writer at a time; queueing in-process writers here (e.g. one projector
        # task per partition) beats SQLite's busy handler, which sleeps in steps of up to 100 ms.
        self._write_lock = asyncio.Lock()
        # Replaced on every advance: waiters hold the current one and are woken when it is set.
        self._advanced = asyncio.Event()
        # Write transactions now open, and every connection checked out of the pool, with the task
        # that took each (``close`` closes what is left and names its holder).
        self._writing: dict[AsyncConnection, str] = {}
        self._out: dict[Any, str] = {}

    @property
    def engine(self) -> AsyncEngine:
        """The async engine (after ``start``)."""
        if self._engine is None:
            raise RuntimeError("ProjectionStore is not started")
        return self._engine

    @property
    def dialect(self) -> str:
        """'sqlite' or 'postgresql'."""
        return "sqlite" if self.url.startswith("sqlite") else "postgresql"

    async def start(self) -> None:
        """Create the engine and the tables if absent; idempotent."""
        if self._engine is not None:
            return
        kwargs: dict[str, Any] = {
            "echo": self._echo,
            "json_serializer": _json_dumps,
            "json_deserializer": orjson.loads,
        }
        parsed = make_url(self.url)
        if self.dialect == "sqlite":
            database = parsed.database or ""
            if database in ("", ":memory:"):
                # Every new connection to :memory: is a new, empty database: share one.
                kwargs["poolclass"] = StaticPool
            else:
                Path(database).parent.mkdir(parents=True, exist_ok=True)
        elif self.schema is not None:
            kwargs["connect_args"] = {"server_settings": {"search_path": self.schema}}
        engine = create_async_engine(self.url, **kwargs)
        if self.dialect == "sqlite":
            _configure_sqlite(engine.sync_engine)
            if "poolclass" not in kwargs:  # a file: writes get a thread and a plain connection
                sync = sa.create_engine(parsed.set(drivername="sqlite"), **kwargs)
                _configure_sqlite(sync)
                self._sync = sync.execution_options(agentbus_write=True)
                self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="read-models-writer")
                self._reads = sync
                self._statements = sync.execution_options(agentbus_statement=True)
                self._readers = ThreadPoolExecutor(max_workers=READ_THREADS,
                                                   thread_name_prefix="read-models-reader")
        _track_checkouts(engine, self._out)
        self._engine = engine
        # Writes on SQLite start with BEGIN IMMEDIATE (see _configure_sqlite).
        self._writer = engine.execution_options(agentbus_write=True)
        try:
            await self.run_write(_prepare_schema, self.schema)
        except BaseException:
            await engine.dispose()
            self._engine = self._writer = None
            await self._close_sync()
            raise

    async def close(self) -> None:
        """Dispose of the engine; idempotent.

        Write transactions still open are given ``CLOSE_GRACE_S`` to end. Then every connection
        still checked out of the pool is closed (a write rolled back), each holder named in a
        warning: ``dispose`` alone leaves them open, and on SQLite one left inside a write holds
        the file's write lock against the next process or runtime until the garbage collector
        finds it.
        """
        if self._engine is None:
            return
        engine, self._engine, self._writer = self._engine, None, None  # nothing begins from now on
        loop = asyncio.get_running_loop()
        until = loop.time() + CLOSE_GRACE_S
        # Polled: a Faust worker's roles may write on a loop of another thread, whose tasks could
        # not wake this one.
        while self._writing and loop.time() < until:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        for holder in self._writing.values():
            log.warning("read models closed while %s was inside a write transaction: "
                        "its connection is closed, which rolls the transaction back", holder)
        for record, holder in list(self._out.items()):
            log.warning("read models closed while %s held a connection: it is closed", holder)
            try:
                await greenlet_spawn(record.invalidate)
            except Exception as exc:
                log.warning("closing the connection of %s failed: %r", holder, exc)
        self._out.clear()
        await engine.dispose()
        # Transactions and reads on the threads cannot be cut short (each ends within the busy
        # timeout): wait for them, then close the connections on the writer's thread.
        while self._threaded:  # noqa: ASYNC110  (see above: maybe another loop's)
            await asyncio.sleep(0.01)
        await self._close_sync()

    async def _close_sync(self) -> None:
        sync, thread, self._sync, self._thread = self._sync, self._thread, None, None
        readers, self._reads, self._readers = self._readers, None, None
        self._statements = None
        if sync is not None and thread is not None:
            await asyncio.get_running_loop().run_in_executor(thread, sync.dispose)
        for pool in (thread, readers):
            if pool is not None:
                pool.shutdown(wait=False)

    async def reset(self) -> None:
        """Drop and re-create every table, positions included (the start of a rebuild)."""
        await self.run_write(_recreate_tables)
        self._known.clear()

    @contextlib.asynccontextmanager
    async def begin_write(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction: committed on exit, rolled back on error."""
        if self._writer is None:
            raise RuntimeError("ProjectionStore is not started")
        if self.dialect != "sqlite":
            async with self._transaction() as conn:
                yield conn
            return
        async with self._write_lock, self._transaction() as conn:
            yield conn

    async def run_write(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(conn, *args)`` inside one write transaction on a synchronous ``Connection``:
        committed when it returns, rolled back if it raises. See the module's "Writes"."""
        if self._writer is None:
            raise RuntimeError("ProjectionStore is not started")
        if self._sync is None:
            async with self.begin_write() as conn:
                return await conn.run_sync(fn, *args)
        async with self._write_lock:
            sync, thread = self._sync, self._thread
            if sync is None or thread is None:  # closed while this one queued for the lock
                raise RuntimeError("ProjectionStore is closed")
            # The transaction goes on in its thread through a cancel: it ends (committed or rolled
            # back) before this stops, so the lock is free and close finds it done.
            return await self._on_thread(thread, _in_transaction, sync, fn, args)

    async def run_read(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(conn, *args)`` on a synchronous ``Connection`` of its own (one read transaction
        on SQLite), and what it returns. ``fn`` must only read. See the module's "Reads"."""
        if self._engine is None:
            raise RuntimeError("ProjectionStore is not started")
        reads, readers = self._reads, self._readers
        if reads is None or readers is None:
            async with self._engine.connect() as conn:
                return await conn.run_sync(fn, *args)
        return await self._on_thread(readers, _in_connection, reads, fn, args)

    async def run_statement(self, fn: Callable[..., T], *args: Any) -> T:
        """``run_read`` of a ``fn`` that executes exactly one SELECT: on SQLite without a BEGIN and
        its ROLLBACK around it (one statement reads one snapshot by itself). Two statements the
        less per point read: ``GET /v1/tasks/{id}`` spent a third of its reader thread's time on
        them (README, "Measured")."""
        statements, readers = self._statements, self._readers
        if statements is None or readers is None:
            return await self.run_read(fn, *args)
        return await self._on_thread(readers, _in_connection, statements, fn, args)

    async def _on_thread(self, thread: ThreadPoolExecutor, call: Callable[..., T], *args: Any) -> T:
        """``call(*args)`` on ``thread``, waited for to its end through any cancel (raised after),
        and known to ``close`` meanwhile (it disposes of the engine only once nothing runs)."""
        work = asyncio.get_running_loop().run_in_executor(thread, call, *args)
        self._threaded.add(work)
        try:
            cancelled = await settled(work)
            if cancelled is not None:
                raise cancelled
            return work.result()
        finally:
            self._threaded.discard(work)

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction on a connection ``close`` knows of until it has committed or rolled back."""
        if self._writer is None:  # closed while this one queued for the lock
            raise RuntimeError("ProjectionStore is closed")
        async with self._writer.connect() as conn:
            self._writing[conn] = _holder()
            try:
                async with conn.begin():
                    yield conn
            finally:
                self._writing.pop(conn, None)

    async def read_position(self, projector: str, topic: str, partition: int) -> int:
        """The next offset ``projector`` will apply in the partition (0 if it never applied)."""
        async with self.engine.connect() as conn:
            return await conn.run_sync(read_position, projector, topic, partition)

    def advanced(self, projector: str, topic: str, partition: int, next_offset: int) -> None:
        """Called by a projector in this process after it committed a new position."""
        self._known[(projector, topic, partition)] = next_offset
        woken, self._advanced = self._advanced, asyncio.Event()
        woken.set()

    async def wait_for_position(
        self, topic: str, partition: int, offset: int, timeout: float
    ) -> bool:
        """True once the main projector has applied ``offset`` (its next offset is beyond it).

        Woken at once by a projector in this process; a projector in another process is noticed
        by polling the positions table every ``poll_interval`` seconds.
        """
        key = (MAIN_PROJECTOR, topic, partition)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if self._known.get(key, 0) > offset:
                return True
            woken = self._advanced
            stored = await self.read_position(*key)
            if stored > self._known.get(key, 0):
                self._known[key] = stored
            if stored > offset:
                return True
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(woken.wait(), min(remaining, self.poll_interval))


def _prepare_schema(conn: sa.Connection, schema: str | None) -> None:
    """Create the tables (and the PostgreSQL schema) if absent; drop tables of another version."""
    if schema is not None:
        conn.execute(sa.text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
    stale = _stale_tables(conn)
    if stale:
        # Tables from an older version of the read models: they are derived data, so start them
        # over; the positions go with them and projectors replay the log.
        log.warning("read-model tables %s are from another version of agentbus: "
                    "dropping the read models to rebuild them from the log", stale)
        tables.metadata.drop_all(conn)
    tables.metadata.create_all(conn)


def _recreate_tables(conn: sa.Connection) -> None:
    tables.metadata.drop_all(conn)
    tables.metadata.create_all(conn)


def _in_transaction(engine: sa.Engine, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
    with engine.begin() as conn:
        return fn(conn, *args)


def _in_connection(engine: sa.Engine, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
    with engine.connect() as conn:  # rolled back (the read transaction ended) on the way out
        return fn(conn, *args)


def _stale_tables(conn: sa.Connection) -> list[str]:
    """Existing tables whose columns differ from this version's schema: other names, or a
    length-capped text column (VARCHAR(n)) where this version has unbounded TEXT."""
    inspector = sa.inspect(conn)
    stale = []
    for table in tables.metadata.sorted_tables:
        if inspector.has_table(table.name):
            found = {c["name"]: c for c in inspector.get_columns(table.name)}
            capped = any(type(col.type) is sa.Text and getattr(found[col.name]["type"], "length", None)
                         for col in table.columns if col.name in found)
            if set(found) != set(table.columns.keys()) or capped:
                stale.append(table.name)
    return stale


def _holder() -> str:
    """Who is taking a connection now, for ``close``'s warnings: the running task, by name."""
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no loop running: a synchronous caller
        task = None
    return "a caller" if task is None else f"task {task.get_name()!r}"


def _track_checkouts(engine: AsyncEngine, out: dict[Any, str]) -> None:
    """Keep in ``out`` every connection checked out of the engine's pool, with the task holding it."""

    @event.listens_for(engine.sync_engine, "checkout")
    def _checkout(_dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        out[record] = _holder()

    @event.listens_for(engine.sync_engine, "checkin")
    def _checkin(_dbapi_connection: Any, record: Any) -> None:
        out.pop(record, None)


def _configure_sqlite(engine: sa.Engine) -> None:
    """WAL, and transactions SQLAlchemy controls itself.

    The sqlite3 module normally opens transactions lazily, only before the first write, so the
    reads at the start of an apply would not be in the transaction. Taking BEGIN over makes a
    transaction span all its statements; writers use BEGIN IMMEDIATE so that two projectors
    sharing a file queue on the write lock (busy_timeout) instead of failing with
    SQLITE_BUSY when a read transaction tries to become a write one.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=30000")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        options = conn.get_execution_options()
        if options.get("agentbus_statement", False):
            return  # one SELECT (``run_statement``): SQLite reads it in a snapshot of its own
        conn.exec_driver_sql("BEGIN IMMEDIATE" if options.get("agentbus_write", False) else "BEGIN")
