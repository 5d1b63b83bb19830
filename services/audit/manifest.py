"""The manifest of a backup (``manifest.json``): what it holds, where from, and how to check it.

Pure data and its reading; ``services.audit.backup`` makes, verifies and restores backups with it.
This module must never touch a deployment.
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import Literal

import orjson
import pydantic
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.engine import make_url

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST",
    "NAME",
    "BackupError",
    "FileEntry",
    "Manifest",
    "PartitionEntry",
    "PositionEntry",
    "Source",
    "Topic",
    "public_url",
    "read_manifest",
]

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
Topic = Literal["commands", "events"]
# What may name a backup: a plain directory name.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


class BackupError(Exception):
    """A backup that cannot be made, read, verified or restored; the message says why."""


# --- the manifest -------------------------------------------------------------------------------


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FileEntry(_Frozen):
    """A file of the backup: its name in the backup directory, size and SHA-256 (hex)."""

    name: str = Field(pattern=NAME.pattern)
    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class PartitionEntry(_Frozen):
    """One topic partition as copied: ``[0, end_offset)``, its record count and its chain head."""

    topic: Topic
    partition: int = Field(ge=0)
    end_offset: int = Field(ge=0)  # Kafka's offsets skip transaction markers: records <= end_offset
    records: int = Field(ge=0)
    # The chain value of the last record copied (None: no records). On Kafka the commands topic
    # has many writers and no chain of its own: there it is the export's chain over the values.
    chain_head: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")


class PositionEntry(_Frozen):
    """A projector position held by the copied read models (the next offset it applies)."""

    projector: str
    topic: str
    partition: int
    next_offset: int


class Source(_Frozen):
    """The deployment a backup was taken from (URLs with any password masked)."""

    log: Literal["sqlite", "kafka"]
    broker: str
    database: str
    topic_prefix: str


class Manifest(_Frozen):
    """What a backup holds: ``manifest.json``."""

    format_version: int
    name: str = Field(pattern=NAME.pattern)
    created: datetime
    source: Source
    files: tuple[FileEntry, ...]
    partitions: tuple[PartitionEntry, ...]
    positions: tuple[PositionEntry, ...]

    @property
    def events(self) -> int:
        """Events in the backup."""
        return sum(p.records for p in self.partitions if p.topic == "events")

    @property
    def size(self) -> int:
        """Bytes of the backup's files."""
        return sum(f.size for f in self.files)

    def file(self, name: str) -> FileEntry | None:
        return next((f for f in self.files if f.name == name), None)

    def of(self, topic: str) -> dict[int, PartitionEntry]:
        """The partitions of ``topic``, by number."""
        return {p.partition: p for p in self.partitions if p.topic == topic}


def read_manifest(path: Path) -> Manifest:
    """The manifest of the backup directory ``path``; BackupError if absent, damaged or too new."""
    file = path / MANIFEST
    try:
        raw = orjson.loads(file.read_bytes())
    except FileNotFoundError:
        raise BackupError(f"no backup at {path} (no {MANIFEST})") from None
    except (OSError, orjson.JSONDecodeError) as exc:
        raise BackupError(f"{file} cannot be read: {exc}") from None
    version = raw.get("format_version") if isinstance(raw, dict) else None
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise BackupError(f"{file} has format version {version}: made by a newer agentbus (this one reads "
                          f"up to {FORMAT_VERSION})")
    try:
        return Manifest.model_validate(raw)
    except pydantic.ValidationError as exc:
        raise BackupError(f"{file} is not a backup manifest: {exc}") from None


def public_url(url: str) -> str:
    """``url`` with any password masked, for the manifest."""
    if url.split(":", 1)[0].lower() in ("sqlite", "kafka"):
        return url
    return make_url(url).render_as_string(hide_password=True)
