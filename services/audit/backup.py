"""Backups of a deployment taken while it runs, and their listing, verification and restore.

A backup is a directory ``NAME`` (under ``<data dir>/backups`` unless told otherwise) holding
``manifest.json`` and the files it lists, each with its size and SHA-256:

* ``read.db``: the read models. A SQLite read-model file is copied with SQLite's online backup API
  in one step, i.e. inside one read transaction: one consistent state of the file, taken while the
  service goes on writing (WAL lets a reader and the writer run side by side). Read models in
  PostgreSQL are copied table by table through SQLAlchemy, in one REPEATABLE READ transaction, into
  a SQLite file of the same schema, so no ``pg_dump`` of a matching version is needed.
* ``log.db`` (SQLite log): the log file, copied the same way, AFTER the read models. Every projector
  position the read models hold is therefore at most the log copy's end: the copy may be behind the
  log, never ahead of it, and a restored projector resumes from its position and catches up.
* ``events.ndjson.lz4`` and ``commands.ndjson.lz4`` (Kafka log): each partition up to the end
  offset read before copying it, in ``events.export``'s format (the value of each record with its
  chain value in front), again after the read models.
* ``secret.key``: the key sealing the signing secrets the log keeps, when the deployment keeps it
  in its data directory; a restored service needs it to open them. Guard a backup as the data
  directory is guarded.

The manifest records where the backup came from (URLs without passwords), every file, and per topic
partition the end offset, the records copied and the hash chain's head (``events.chain``), which
``verify_backup`` recomputes; ``services.audit.restore`` makes a fresh data directory of one.

This module must never write to the deployment it backs up (it only reads it), nor leave a partial
backup under a backup's name.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import sqlite3
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import lz4.frame
import orjson
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from events import EventLog, LogError, UnknownTopic, open_log
from events.chain import GENESIS, ChainReport, chain_at, verify_export, verify_log
from events.export import ChainedLines
from events.sqlite import SqliteLog
from projections import ProjectionStore, tables
from services.audit.manifest import (
    FORMAT_VERSION,
    MANIFEST,
    NAME,
    BackupError,
    FileEntry,
    Manifest,
    PartitionEntry,
    PositionEntry,
    Source,
    Topic,
    public_url,
    read_manifest,
)
from services.runtime.sealing import KEY_FILE
from services.runtime.settings import Settings

__all__ = [
    "BACKUPS",
    "FORMAT_VERSION",
    "MANIFEST",
    "BackupError",
    "Check",
    "Created",
    "Listed",
    "Manifest",
    "Verification",
    "backups_root",
    "check_name",
    "create_backup",
    "list_backups",
    "read_manifest",
    "verify_backup",
]

BACKUPS = "backups"  # the folder of a data directory that holds its backups
LOG_FILE = "log.db"
READ_FILE = "read.db"
TOPICS: tuple[Topic, ...] = ("commands", "events")  # what a backup copies, by an embedded log's names
EXPORTS = {topic: f"{topic}.ndjson.lz4" for topic in TOPICS}
_READ = 1000  # records per read of an export
_COPY_ROWS = 1000  # rows per insert of a table copy
_CHUNK = 1 << 20
L = TypeVar("L", bound=EventLog)


def check_name(name: str) -> str:
    """``name`` if it can name a backup (a plain directory name, at most 100 characters)."""
    if not NAME.fullmatch(name):
        raise BackupError(f"bad backup name {name!r}: 1 to 100 letters, digits, '.', '_' or '-', "
                          "starting with a letter or a digit (no path separators)")
    return name


def backups_root(settings: Settings) -> Path:
    """Where the backups of the deployment ``settings`` name are kept by default."""
    return settings.data_dir / BACKUPS


# --- files --------------------------------------------------------------------------------------


def _digest(path: Path) -> FileEntry:
    with path.open("rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    return FileEntry(name=path.name, size=path.stat().st_size, sha256=digest)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sqlite_file(url: str, what: str) -> Path:
    """The file of a SQLite URL (the log's or the read models'), which must exist."""
    path = SqliteLog(url).path if url.startswith("sqlite:") else Path(make_url(url).database or "")
    if not path.is_file():
        raise BackupError(f"no {what} at {path} ({url})")
    return path


def _sqlite_copy(source: Path, target: Path) -> None:
    """Copy a SQLite file that may be in use with the online backup API, in one step.

    One step is one read transaction on the source: the copy is one committed state of it, and
    under WAL the service's writer is never blocked meanwhile. The source is opened read-only, so
    this connection never checkpoints or otherwise writes the deployment's file.
    """
    src = sqlite3.connect(f"{source.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
    try:
        dst = sqlite3.connect(target)
        try:
            src.backup(dst, pages=-1)
        finally:
            dst.close()
    finally:
        src.close()


def _seal_sqlite(path: Path) -> None:
    """Make a copied SQLite file self-contained (no -wal beside it) and durable: it is hashed next."""
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA journal_mode = DELETE")
    finally:
        conn.close()
    _fsync(path)


def _positions(path: Path) -> list[PositionEntry]:
    engine = sa.create_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.select(tables.positions)).mappings().all()
    finally:
        engine.dispose()
    return sorted((PositionEntry.model_validate(dict(r)) for r in rows),
                  key=lambda p: (p.projector, p.topic, p.partition))


async def _copy_tables(url: str, target: Path) -> None:
    """Copy every read-model table (positions too) from the database ``url`` into a SQLite file.

    One REPEATABLE READ transaction on PostgreSQL: the tables and positions of one moment. The
    target is created as the service creates its read models, so the copy is a read-model file.
    """
    source = create_async_engine(url, json_deserializer=orjson.loads)
    dest = ProjectionStore(f"sqlite+aiosqlite:///{target}")
    await dest.start()
    try:
        async with source.connect() as conn:
            if source.dialect.name == "postgresql":
                await conn.execution_options(isolation_level="REPEATABLE READ")
            async with conn.begin(), dest.begin_write() as out:
                for table in tables.metadata.sorted_tables:
                    result = await conn.stream(sa.select(table))
                    async for rows in result.mappings().partitions(_COPY_ROWS):
                        await out.execute(table.insert(), [dict(r) for r in rows])
    finally:
        await dest.close()
        await source.dispose()


# --- create -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Created:
    """A backup made: where it is and its manifest."""

    path: Path
    manifest: Manifest


async def create_backup(settings: Settings, name: str, *, to: Path | None = None) -> Created:
    """Back up the deployment ``settings`` name into ``to/NAME`` (default ``<data dir>/backups/NAME``).

    Safe beside the running service. The backup is made under a temporary name and renamed into
    place once complete, so ``NAME`` never holds a partial one; an existing ``NAME`` is refused. A
    backup that fails leaves nothing behind: neither its files nor the folders made to hold it.
    """
    check_name(name)
    _check_sources(settings)
    root = to if to is not None else backups_root(settings)
    made = _first_missing(root)
    staging = None
    try:
        target, staging = _staging(root, name)
        manifest = await _create(settings, name, staging)
        _publish(staging, target, manifest)
    except BaseException as exc:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        _remove_made(root, made)
        if isinstance(exc, sqlite3.Error):  # a file that is not SQLite, a full disk: say which
            raise BackupError(f"the copy failed: {type(exc).__name__}: {exc}") from exc
        raise
    return Created(target, manifest)


def _check_sources(settings: Settings) -> None:
    """The deployment's SQLite files exist (a BackupError naming the first missing), before anything
    is made: a backup of nothing is refused without leaving a folder for it."""
    if settings.database.startswith("sqlite"):
        _sqlite_file(settings.database, "read-model database")
    if not settings.kafka:
        _sqlite_file(settings.broker, "log")


def _first_missing(path: Path) -> Path | None:
    """The outermost of ``path`` and its parents that does not exist yet (None: ``path`` exists)."""
    missing = None
    for p in (path, *path.parents):
        if p.exists():
            break
        missing = p
    return missing


def _remove_made(root: Path, made: Path | None) -> None:
    """Remove ``root`` and its parents up to ``made``, the folders a failed backup created, if empty."""
    if made is None:
        return
    for p in (root, *root.parents):
        try:
            p.rmdir()
        except OSError:
            return  # not empty (another backup is being made there) or already gone
        if p == made:
            return


def _staging(root: Path, name: str) -> tuple[Path, Path]:
    """(where the backup goes, the temporary directory it is made in); refuses an existing name."""
    target = root / name
    if target.exists():
        raise BackupError(f"a backup named {name!r} already exists at {target}")
    try:
        root.mkdir(parents=True, exist_ok=True)
        return target, Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".partial", dir=root))
    except OSError as exc:
        raise BackupError(f"cannot make the backup in {root}: {exc.strerror or exc}") from exc


def _publish(staging: Path, target: Path, manifest: Manifest) -> None:
    """Write the manifest, make everything durable, and rename the complete backup into place."""
    text = orjson.dumps(manifest.model_dump(mode="json"), option=orjson.OPT_INDENT_2)
    (staging / MANIFEST).write_bytes(text)
    _fsync(staging / MANIFEST)
    _fsync(staging)
    if target.exists():
        raise BackupError(f"a backup named {manifest.name!r} appeared at {target} meanwhile")
    staging.rename(target)
    _fsync(target.parent)


async def _create(settings: Settings, name: str, staging: Path) -> Manifest:
    # The read models first, then the log: the read models' positions are then within the log copy.
    if settings.database.startswith("sqlite"):
        source = _sqlite_file(settings.database, "read-model database")
        await asyncio.to_thread(_sqlite_copy, source, staging / READ_FILE)
    else:
        try:
            await _copy_tables(settings.database, staging / READ_FILE)
        except sa.exc.SQLAlchemyError as exc:
            raise BackupError(f"copying the read models from {public_url(settings.database)} failed: "
                              f"{type(exc).__name__}: {exc}") from exc
    await asyncio.to_thread(_seal_sqlite, staging / READ_FILE)
    names = [READ_FILE]
    if settings.kafka:
        partitions = await _export_kafka(settings, staging)
        names += list(EXPORTS.values())
    else:
        source = _sqlite_file(settings.broker, "log")
        await asyncio.to_thread(_sqlite_copy, source, staging / LOG_FILE)
        partitions = await _log_partitions(staging / LOG_FILE)
        await asyncio.to_thread(_seal_sqlite, staging / LOG_FILE)
        names.append(LOG_FILE)
    if settings.secret_key is None and await asyncio.to_thread(_copy_key, settings.data_dir, staging):
        names.append(KEY_FILE)
    files = await asyncio.to_thread(lambda: [_digest(staging / n) for n in names])
    positions = await asyncio.to_thread(_positions, staging / READ_FILE)
    return Manifest(
        format_version=FORMAT_VERSION, name=name, created=datetime.now(UTC),
        source=Source(log="kafka" if settings.kafka else "sqlite", broker=public_url(settings.broker),
                      database=public_url(settings.database), topic_prefix=settings.topic_prefix),
        files=tuple(files), partitions=tuple(partitions), positions=tuple(positions),
    )


def _copy_key(data_dir: Path, staging: Path) -> bool:
    """Copy the deployment's key file, if it has one (it then seals its secrets with it)."""
    if not (data_dir / KEY_FILE).is_file():
        return False
    shutil.copy2(data_dir / KEY_FILE, staging / KEY_FILE)
    _fsync(staging / KEY_FILE)
    return True


def _log_url(path: Path) -> str:
    return f"sqlite:///{path.resolve()}"


@contextlib.asynccontextmanager
async def _opened(log: L) -> AsyncIterator[L]:
    await log.start()
    try:
        yield log
    finally:
        await log.close()


async def _log_partitions(path: Path) -> list[PartitionEntry]:
    """End offset and chain head of each partition of the copied SQLite log."""
    out = []
    async with _opened(SqliteLog(_log_url(path))) as log:
        for topic in TOPICS:
            try:
                count = await log.partitions(topic)
            except UnknownTopic:
                continue
            for p in range(count):
                end = await log.end_offset(topic, p)
                head = await chain_at(log, topic, p, end) if end else None
                out.append(PartitionEntry(topic=topic, partition=p, end_offset=end, records=end,
                                          chain_head=None if head is None else head.hex()))
    return out


async def _export_kafka(settings: Settings, staging: Path) -> list[PartitionEntry]:
    """Export the deployment's commands and events topics, each partition up to its end as read first."""
    topics = settings.topics
    out: list[PartitionEntry] = []
    async with _opened(open_log(settings.broker)) as log:
        pairs: tuple[tuple[Topic, str], ...] = (("commands", topics.commands), ("events", topics.events))
        for topic, actual in pairs:
            count = await log.partitions(actual)
            ends = [await log.end_offset(actual, p) for p in range(count)]
            with lz4.frame.open(staging / EXPORTS[topic], mode="wb") as file:
                for p, end in enumerate(ends):
                    lines = ChainedLines(GENESIS)
                    offset = records = 0
                    while offset < end:
                        batch = [r for r in await log.read(actual, p, offset, _READ) if r.offset < end]
                        if not batch:
                            break  # only transaction markers are left below the end
                        if topic == "commands":
                            # Many processes write the commands topic on Kafka (every API process, and
                            # the coordinators' partition writers), so it has no one chain: its export
                            # is chained afresh over the values, which makes the file check itself.
                            batch = [r._replace(chain=None) for r in batch]
                        file.write(lines.ndjson(batch))
                        records += len(batch)
                        offset = batch[-1].offset + 1
                    head = lines.prev.hex() if records else None
                    out.append(PartitionEntry(topic=topic, partition=p, end_offset=end, records=records,
                                              chain_head=head))
            _fsync(staging / EXPORTS[topic])
    return out


# --- list ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Listed:
    """A backup found in a backups folder (``manifest`` None and ``error`` set if unreadable)."""

    name: str
    path: Path
    manifest: Manifest | None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        m = self.manifest
        return {"name": self.name, "location": str(self.path), "error": self.error,
                "created": None if m is None else m.created.isoformat(),
                "size": None if m is None else m.size, "events": None if m is None else m.events,
                "log": None if m is None else m.source.log}


def list_backups(root: Path) -> list[Listed]:
    """The backups in the folder ``root``, oldest first (partial ones, named ``.NAME...``, skipped)."""
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        if not path.is_dir() or path.name.startswith("."):
            continue
        try:
            found.append(Listed(path.name, path, read_manifest(path)))
        except BackupError as exc:
            found.append(Listed(path.name, path, None, str(exc)))
    far = datetime.max.replace(tzinfo=UTC)
    return sorted(found, key=lambda b: (b.manifest.created if b.manifest else far, b.name))


# --- verify -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Check:
    """One thing verified: what, whether it held, and what was found."""

    subject: str
    ok: bool
    detail: str


@dataclass(slots=True)
class Verification:
    """Everything ``verify_backup`` checked of one backup."""

    path: Path
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def to_json(self) -> dict[str, Any]:
        return {"backup": str(self.path), "ok": self.ok,
                "checks": [{"subject": c.subject, "ok": c.ok, "detail": c.detail} for c in self.checks]}


async def verify_backup(path: Path) -> Verification:
    """Check every file against the manifest, then recompute the hash chain of the copied log and
    compare each partition's head and end with the manifest's. Never changes the backup.

    What is checked comes from what a backup must hold and what its files hold, never from the
    manifest alone: a manifest that leaves out a file or a topic would otherwise leave it unchecked.
    """
    manifest = read_manifest(path)
    result = Verification(path)
    result.checks += await asyncio.to_thread(_check_files, manifest, path)
    result.checks += _check_required(manifest)
    if manifest.source.log == "sqlite":
        if (path / LOG_FILE).is_file():
            # The chain is read through the log adapter, which opens its file for writing: it reads a
            # scratch copy, so the backup's bytes stay those the manifest hashed.
            with tempfile.TemporaryDirectory(prefix="agentbus-verify-") as scratch:
                copy = Path(scratch) / LOG_FILE
                await asyncio.to_thread(shutil.copyfile, path / LOG_FILE, copy)
                result.checks += await _check_log(copy, manifest)
        result.checks += _check_positions(manifest)
    else:
        for topic, file in EXPORTS.items():
            if (path / file).is_file():
                report = await asyncio.to_thread(verify_export, path / file, topic)
                result.checks.append(_compare_chain(topic, report, manifest, dense=False))
    return result


def _check_files(manifest: Manifest, path: Path) -> list[Check]:
    checks = []
    for entry in manifest.files:
        subject = f"file {entry.name}"
        if not (path / entry.name).is_file():
            checks.append(Check(subject, False, "missing"))
            continue
        found = _digest(path / entry.name)
        if found.sha256 != entry.sha256 or found.size != entry.size:
            checks.append(Check(subject, False, f"sha256 {found.sha256} ({found.size} bytes) differs from "
                                                f"the manifest's {entry.sha256} ({entry.size} bytes): "
                                                "altered or damaged"))
        else:
            checks.append(Check(subject, True, f"sha256 {entry.sha256} ({entry.size} bytes)"))
    return checks


def _check_required(manifest: Manifest) -> list[Check]:
    """The files every backup of its kind holds, listed in the manifest (``_check_files`` checks them)."""
    kafka = manifest.source.log == "kafka"
    required = (READ_FILE, *EXPORTS.values()) if kafka else (READ_FILE, LOG_FILE)
    return [Check(f"file {name}", False, f"not in the manifest: every backup of a {manifest.source.log} log "
                                         "holds it")
            for name in required if manifest.file(name) is None]


def _stored_topics(path: Path) -> tuple[dict[str, int], list[tuple[str, int]]]:
    """The topics of the SQLite log file at ``path`` (name -> partitions), and every (topic, partition)
    holding records, whatever the topics table says: one index seek per pair, not a scan."""
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        declared = {str(name): int(n) for name, n in conn.execute("SELECT name, partitions FROM topics")}
        stored: list[tuple[str, int]] = []
        first = 'SELECT topic, "partition" FROM records ORDER BY topic, "partition" LIMIT 1'
        after = ('SELECT topic, "partition" FROM records WHERE (topic, "partition") > (?, ?) '
                 'ORDER BY topic, "partition" LIMIT 1')
        row = conn.execute(first).fetchone()
        while row is not None:
            stored.append((str(row[0]), int(row[1])))
            row = conn.execute(after, row).fetchone()
    finally:
        conn.close()
    return declared, stored


async def _check_log(path: Path, manifest: Manifest) -> list[Check]:
    """The chain of every topic the SQLite log at ``path`` holds, and of every topic the manifest
    lists; the topics a backup lists (commands, events) are compared with the manifest too.

    The topics come from the file, not from the manifest: a manifest that leaves a topic out must
    not leave its records unchecked. A log with no events topic is not a backup of a deployment.
    """
    try:
        declared, stored = await asyncio.to_thread(_stored_topics, path)
        checks = []
        subject = f"topics of {LOG_FILE}"
        if "events" not in declared:
            checks.append(Check(subject, False, "no events topic: the log copy holds no history"))
        stray = [f"{t}[{p}]" for t, p in stored if p >= declared.get(t, 0)]
        if stray:
            checks.append(Check(subject, False, "records of partitions the log's topics do not have: "
                                                + ", ".join(stray[:10])))
        async with _opened(SqliteLog(_log_url(path))) as log:
            for topic in sorted(set(declared) | {p.topic for p in manifest.partitions}):
                if topic not in declared:
                    checks.append(Check(f"chain of {topic}", False, f"in the manifest, not in {LOG_FILE}"))
                elif topic in TOPICS:
                    checks.append(_compare_chain(topic, await verify_log(log, topic), manifest, dense=True))
                else:
                    checks.append(_unlisted(topic, await verify_log(log, topic)))
        return checks
    except (LogError, sqlite3.Error) as exc:
        return [Check(f"chain of {LOG_FILE}", False, f"cannot read the log: {type(exc).__name__}: {exc}")]


def _unlisted(topic: str, report: ChainReport) -> Check:
    """A topic of the log copy that a manifest does not list (dead letters): its chain alone."""
    subject = f"chain of {topic}"
    if report.mismatch is not None:
        return Check(subject, False, report.mismatch.describe())
    return Check(subject, True, f"{report.records} records; not a topic a manifest lists, so the chain only")


def _compare_chain(topic: str, report: ChainReport, manifest: Manifest, *, dense: bool) -> Check:
    """The report's verdict, then its heads (and, on a dense SQLite log, its ends) against the manifest."""
    subject = f"chain of {topic}"
    if report.mismatch is not None:
        return Check(subject, False, report.mismatch.describe())
    want = manifest.of(topic)
    problems = []
    for p in sorted(set(want) | set(report.ends) | set(report.heads)):
        entry = want.get(p)
        if entry is None:
            problems.append(f"partition {p} is not in the manifest")
            continue
        if report.heads.get(p) != entry.chain_head:
            problems.append(f"partition {p}: head {report.heads.get(p)} != manifest's {entry.chain_head}")
        if dense and report.ends.get(p, 0) != entry.end_offset:
            problems.append(f"partition {p}: ends at {report.ends.get(p, 0)}, manifest says "
                            f"{entry.end_offset}")
    records = sum(e.records for e in want.values())
    if report.records != records:
        problems.append(f"{report.records} records, manifest says {records}")
    if problems:
        return Check(subject, False, "; ".join(problems))
    return Check(subject, True, f"{report.records} records; every partition's head matches the manifest")


def _check_positions(manifest: Manifest) -> list[Check]:
    """The copied read models are never ahead of the copied log (what restoring them relies on)."""
    ends: dict[tuple[str, int], int] = {(p.topic, p.partition): p.end_offset for p in manifest.partitions}
    ahead = [f"{q.projector} at {q.topic}[{q.partition}]@{q.next_offset}, the log copy ends at {end}"
             for q in manifest.positions
             if q.next_offset > (end := ends.get((q.topic, q.partition), 0))]
    if ahead:
        return [Check("read-model positions", False, "ahead of the log copy: " + "; ".join(ahead))]
    return [Check("read-model positions", True, f"{len(manifest.positions)} projector position(s), none "
                                                "past the log copy's end")]
