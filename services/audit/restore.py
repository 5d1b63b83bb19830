"""Restoring a backup (``services.audit.backup``) into a fresh embedded data directory: the files
of an embedded backup as they are, or from a Kafka backup a new SQLite log of the exported events
with read models rebuilt from it (its offsets are not Kafka's, so the copied read models do not
fit it). Every file's hash is checked before anything is written, the chain before the restore is
done; a failed restore removes what it wrote.

This module must never restore into a directory that holds anything.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from events.chain import verify_export, verify_log
from events.export import ImportFileError, import_log
from events.sqlite import SqliteLog
from projections import ProjectionStore, rebuild
from services.audit.backup import (
    _CHUNK,
    EXPORTS,
    LOG_FILE,
    READ_FILE,
    Check,
    _check_files,
    _check_log,
    _check_positions,
    _compare_chain,
    _log_url,
    _opened,
)
from services.audit.manifest import BackupError, Manifest, read_manifest
from services.runtime.sealing import KEY_FILE
from services.runtime.topics import COORDINATOR_GROUP, Topics

__all__ = ["Restored", "restore_backup"]



@dataclass(frozen=True, slots=True)
class Restored:
    """A backup restored: into which data directory, what was done, and what to know."""

    data_dir: Path
    manifest: Manifest
    checks: list[Check]
    events: int
    rebuilt: bool  # the read models were rebuilt from the restored log (a Kafka backup)
    notes: list[str]


async def restore_backup(path: Path, data_dir: Path) -> Restored:
    """Restore the backup at ``path`` into ``data_dir``, which must be absent or empty.

    Every file's SHA-256 is checked before anything is written; the log's chain is checked before
    the restore is done (on the copied log, or on the export before its import). On any failure
    the files this wrote are removed again, leaving ``data_dir`` as it was.
    """
    manifest = read_manifest(path)
    created = _fresh(data_dir)
    try:
        checks = await asyncio.to_thread(_check_files, manifest, path)
        _refuse(checks, path)
        if manifest.source.log == "sqlite":
            restored = await _restore_embedded(path, data_dir, manifest, checks)
        else:
            restored = await _restore_kafka(path, data_dir, manifest, checks)
        if manifest.file(KEY_FILE) is not None:
            await asyncio.to_thread(_copy_checked, path / KEY_FILE, data_dir / KEY_FILE, manifest, 0o600)
        else:
            restored.notes.append("the backup holds no secret.key (the deployment had none in its data "
                                  "directory): if it was given AGENTBUS_SECRET_KEY, give the restored "
                                  "service the same one")
        return restored
    except BaseException:
        _clear(data_dir, created)
        raise


def _fresh(data_dir: Path) -> bool:
    """Make sure ``data_dir`` is a new or empty directory; True if it was created here."""
    if data_dir.exists() and (not data_dir.is_dir() or any(data_dir.iterdir())):
        raise BackupError(f"{data_dir} is not empty: restore only into a new or empty directory")
    created = not data_dir.exists()
    data_dir.mkdir(parents=True, exist_ok=True)
    return created


def _clear(data_dir: Path, created: bool) -> None:
    """Remove what a failed restore wrote into ``data_dir`` (empty or absent before it began)."""
    for item in list(data_dir.iterdir()):
        if item.is_dir():
            shutil.rmtree(item)
        else:
            item.unlink()
    if created:
        data_dir.rmdir()


def _refuse(checks: list[Check], path: Path) -> None:
    bad = [c for c in checks if not c.ok]
    if bad:
        raise BackupError(f"backup {path} does not verify, nothing restored: "
                          + "; ".join(f"{c.subject}: {c.detail}" for c in bad))


def _copy_checked(source: Path, target: Path, manifest: Manifest, mode: int = 0o644) -> None:
    """Copy a backup file, hashing what is copied: a file changed since it was checked is refused."""
    entry = manifest.file(source.name)
    assert entry is not None
    digest = hashlib.sha256()
    with source.open("rb") as src, os.fdopen(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode),
                                             "wb") as dst:
        while chunk := src.read(_CHUNK):
            digest.update(chunk)
            dst.write(chunk)
        dst.flush()
        os.fsync(dst.fileno())
    if digest.hexdigest() != entry.sha256:
        raise BackupError(f"{source} changed while it was restored (sha256 {digest.hexdigest()}, "
                          f"manifest {entry.sha256})")


async def _restore_embedded(path: Path, data_dir: Path, manifest: Manifest, checks: list[Check]) -> Restored:
    for name in (LOG_FILE, READ_FILE):
        await asyncio.to_thread(_copy_checked, path / name, data_dir / name, manifest)
    chain = await _check_log(data_dir / LOG_FILE, manifest)
    checks = checks + chain + _check_positions(manifest)
    _refuse(checks, path)
    return Restored(data_dir, manifest, checks, manifest.events, rebuilt=False, notes=[
        "log and read models copied as backed up; the projector resumes from its stored positions "
        "and catches up with the log"])


async def _restore_kafka(path: Path, data_dir: Path, manifest: Manifest, checks: list[Check]) -> Restored:
    exported = path / EXPORTS["events"]
    report = await asyncio.to_thread(verify_export, exported, "events")
    checks = [*checks, _compare_chain("events", report, manifest, dense=False)]
    _refuse(checks, path)
    partitions = max(manifest.of("events"), default=0) + 1
    topics = Topics()  # an embedded log: the plain names, whatever the Kafka prefix was
    async with _opened(SqliteLog(_log_url(data_dir / LOG_FILE))) as log:
        await log.ensure_topic(topics.commands, partitions)
        await log.ensure_topic(topics.events, partitions, retention_ms=-1)
        try:
            result = await import_log(log, topics.events, exported)
        except ImportFileError as exc:
            raise BackupError(f"importing {exported} failed: {exc}") from exc
        # Same values, same partitions (keyed by pool on both logs), same order: the same chain.
        imported = _compare_chain("events", await verify_log(log, topics.events), manifest, dense=False)
        checks.append(Check("imported log", imported.ok, imported.detail))
        _refuse(checks, path)
        for p in range(partitions):
            # The coordinator had reacted to these events on Kafka: it starts after them, with its
            # view rebuilt from them, as after any restart (lost assignments are issued again).
            await log.commit(COORDINATOR_GROUP, topics.events, p, await log.end_offset(topics.events, p))
        store = ProjectionStore(f"sqlite+aiosqlite:///{data_dir / READ_FILE}")
        await store.start()
        try:
            await rebuild(log, store, topics.events)
        finally:
            await store.close()
    commands = sum(p.records for p in manifest.partitions if p.topic == "commands")
    return Restored(data_dir, manifest, checks, result.appended, rebuilt=True, notes=[
        f"{result.appended} events imported into a new SQLite log; the read models were rebuilt from it "
        "(the backup's copy of them is not reused: its positions are Kafka offsets, which differ from "
        "the new log's)",
        f"the {commands} commands of the backup stay in {EXPORTS['commands']} (their outcomes are the "
        "events); the restored log starts with no commands, and its coordinator after the events",
    ])
