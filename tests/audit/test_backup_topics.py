"""`agentbus backup verify` checks what a backup holds, not only what its manifest lists.

Someone holding a backup alters a record of the copied events log and then makes the manifest agree
with everything it still lists: the events topic's partitions removed, the positions emptied, the
file hashes recomputed. The log copy then fails `agentbus audit verify`, so `backup verify` must fail
too, and `backup restore` must refuse it. Likewise a manifest that leaves out a file every backup
holds. The backups are made by `agentbus backup create` from a log a real Runner wrote.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from events import Record, open_log
from services.runtime.settings import ENV_PREFIX
from tests.audit.conftest import rehash, rewrite_manifest
from tests.cli.conftest import invoke, produce


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's AGENTBUS_* must not reach these deployments (AGENTBUS_TEST_* stays)."""
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX) and not name.startswith(f"{ENV_PREFIX}TEST_"):
            monkeypatch.delenv(name)


@pytest.fixture
def backed_up(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A data directory written by a real Runner, with a dead letter, and a backup of it."""
    data = tmp_path / "data"
    asyncio.run(produce(data))
    asyncio.run(_dead_letter(data))
    result = invoke("backup", "create", "b1", "--data-dir", str(data))
    assert result.exit_code == 0, result.output
    yield data, data / "backups" / "b1"


async def _dead_letter(data: Path) -> None:
    # A topic a manifest does not list (the commands refused before deciding): checked all the same.
    log = open_log(f"sqlite:///{data}/log.db")
    await log.start()
    try:
        await log.ensure_topic("commands.dlq", 1)
        await log.append("commands.dlq", [Record(key="default", value=b'{"refused":true}')])
    finally:
        await log.close()


def _alter(db: Path, topic: str, offset: int) -> None:
    """A stored value changed and its crc32 recomputed: only the chain can tell."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        value, codec = conn.execute('SELECT value, codec FROM records WHERE topic = ? AND "partition" = 0 '
                                    'AND "offset" = ?', (topic, offset)).fetchone()
        assert codec == 0
        altered = bytes(value).replace(b'"specversion":"1.0"', b'"specversion":"1.1"')
        altered = altered if altered != value else bytes(value) + b" "
        conn.execute('UPDATE records SET value = ?, crc = ? WHERE topic = ? AND "partition" = 0 AND '
                     '"offset" = ?', (altered, zlib.crc32(altered), topic, offset))
        conn.commit()


def test_a_healthy_backup_checks_every_topic_of_its_log(backed_up: tuple[Path, Path]) -> None:
    data, _ = backed_up
    ok = invoke("backup", "verify", "b1", "--data-dir", str(data))
    assert ok.exit_code == 0, ok.output
    assert "ok    chain of events" in ok.output and "ok    chain of commands" in ok.output
    assert "ok    chain of commands.dlq: 1 records" in ok.output


def test_an_altered_events_log_left_out_of_the_manifest_does_not_verify(backed_up: tuple[Path, Path],
                                                                        tmp_path: Path) -> None:
    data, path = backed_up
    _alter(path / "log.db", "events", 3)

    def drop_events(raw: dict[str, Any]) -> None:
        raw["partitions"] = [p for p in raw["partitions"] if p["topic"] != "events"]
        raw["positions"] = []

    rewrite_manifest(path, drop_events)
    rehash(path, "log.db")
    # What the backup holds fails the audit...
    restored_copy = tmp_path / "copy"
    restored_copy.mkdir()
    (restored_copy / "log.db").write_bytes((path / "log.db").read_bytes())
    assert invoke("audit", "verify", "--data-dir", str(restored_copy)).exit_code == 1
    # ... so the backup does not verify, naming the record, and is not restored.
    result = invoke("backup", "verify", "b1", "--data-dir", str(data))
    assert result.exit_code == 1, result.output
    assert "ok    file log.db" in result.output
    assert "FAIL  chain of events: events[0]@3" in result.output
    fresh = tmp_path / "fresh"
    refused = invoke("backup", "restore", "b1", "--data-dir", str(fresh), "--from", str(path.parent))
    assert refused.exit_code == 1 and "chain of events" in refused.output
    assert not fresh.exists()


def test_an_events_topic_left_out_of_the_manifest_does_not_verify(backed_up: tuple[Path, Path]) -> None:
    """Unaltered, but the manifest no longer says what the log holds: its heads cannot be compared."""
    data, path = backed_up
    rewrite_manifest(path, lambda raw: raw.update(
        partitions=[p for p in raw["partitions"] if p["topic"] != "events"], positions=[]))
    result = invoke("backup", "verify", "b1", "--data-dir", str(data))
    assert result.exit_code == 1, result.output
    assert "FAIL  chain of events: partition 0 is not in the manifest" in result.output


def test_an_unlisted_topic_of_the_log_copy_is_checked_too(backed_up: tuple[Path, Path]) -> None:
    data, path = backed_up
    _alter(path / "log.db", "commands.dlq", 0)
    rehash(path, "log.db")
    result = invoke("backup", "verify", "b1", "--data-dir", str(data))
    assert result.exit_code == 1, result.output
    assert "FAIL  chain of commands.dlq: commands.dlq[0]@0" in result.output


def test_a_log_file_left_out_of_the_manifest_does_not_verify(backed_up: tuple[Path, Path]) -> None:
    data, path = backed_up
    (path / "log.db").unlink()
    rewrite_manifest(path, lambda raw: raw.update(files=[f for f in raw["files"] if f["name"] != "log.db"],
                                           partitions=[], positions=[]))
    result = invoke("backup", "verify", "b1", "--data-dir", str(data))
    assert result.exit_code == 1, result.output
    assert "FAIL  file log.db: not in the manifest" in result.output
