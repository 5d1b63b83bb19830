"""Signed checkpoints of the events topic's hash chain, and the Ed25519 keys that sign them.

A checkpoint is every partition's head (``{"0": {"position": P, "chain": hex}, ...}``: the chain
value covering every record below offset P, ``events.chain``), signed with an Ed25519 private key
over the canonical JSON of ``{topic, heads, key_id}`` (orjson, sorted keys). The decider records
it as ``AuditCheckpointRecorded`` without seeing the key; ``services.audit.verify`` later checks
the signature with the public key and the heads against the chain recomputed from the log. A
history rewritten with its chain recomputed then passes a plain verification but not this one:
forging the checkpoint needs the private key.

Keys are PEM: the private one PKCS8 (``agentbus audit keygen`` writes a pair), given as a file's
path or as the PEM itself (``AGENTBUS_AUDIT_KEY``). The key id is the hex of the first 16 bytes of
the SHA-256 of the raw 32-byte public key, so a verifier can tell which key signed.

``CheckpointLoop`` is the embedded service's periodic checkpoint: every ``audit_checkpoint_every_s``
seconds, when something other than checkpoints was appended since the last one.

This module must never put a private key on the log, in a message or in a log line, and never
decides anything: the pool ``_system``'s decider records what it sends.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from contracts import SYSTEM_POOL, Envelope
from contracts.system_commands import AuditHead, RecordAuditCheckpoint
from events.chain import GENESIS, chain_at
from events.codec import record_type
from events.log import EventLog, StoredRecord
from services.runtime.ingest import command_envelope

__all__ = [
    "CHECKPOINT_TYPE",
    "PRIVATE_FILE",
    "PUBLIC_FILE",
    "AuditKeyError",
    "CheckpointLoop",
    "canonical",
    "key_id",
    "load_private_key",
    "load_public_key",
    "moved_since",
    "read_heads",
    "sign",
    "signature_valid",
    "write_keypair",
]

CHECKPOINT_TYPE = "AuditCheckpointRecorded"
PRIVATE_FILE = "audit-key.pem"
PUBLIC_FILE = "audit-key.pub.pem"
SOURCE = "urn:agentbus:audit"
_READ_LIMIT = 2000
_PEM_START = "-----BEGIN"
logger = logging.getLogger("agentbus.audit")


class AuditKeyError(ValueError):
    """A key that cannot be used: no such file, not PEM, not Ed25519, encrypted. Never quotes the key."""


# -- keys --------------------------------------------------------------------------------------------


def _pem(source: str, where: str) -> bytes:
    """The PEM bytes of ``source``: the PEM itself, or the file it names."""
    if source.lstrip().startswith(_PEM_START):
        return source.strip().encode()
    path = Path(source).expanduser()
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise AuditKeyError(f"{where}: no such file {str(path)!r}") from None
    except IsADirectoryError:
        raise AuditKeyError(f"{where}: {str(path)!r} is a directory, not a PEM key file") from None
    except OSError as exc:
        raise AuditKeyError(f"{where}: cannot read {str(path)!r}: {exc.strerror or exc}") from None


def load_private_key(source: str, where: str = "the audit key") -> Ed25519PrivateKey:
    """The Ed25519 private key of a PEM (PKCS8) file's path, or of the PEM text itself."""
    data = _pem(source, where)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise AuditKeyError(f"{where}: the private key is encrypted; give it unencrypted (PKCS8 PEM, "
                            "e.g. from `agentbus audit keygen`)") from None
    except (ValueError, binascii.Error):
        raise AuditKeyError(f"{where}: not a PEM private key (PKCS8, \"BEGIN PRIVATE KEY\"); "
                            "`agentbus audit keygen` makes one") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise AuditKeyError(f"{where}: a {type(key).__name__.removeprefix('_')} key, not Ed25519")
    return key


def load_public_key(source: str, where: str = "the audit public key") -> Ed25519PublicKey:
    """The Ed25519 public key of a PEM file's path or PEM text (a private key gives its public one)."""
    data = _pem(source, where)
    if b"PRIVATE KEY-----" in data:
        return load_private_key(source, where).public_key()
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, binascii.Error):
        raise AuditKeyError(f"{where}: not a PEM public key (\"BEGIN PUBLIC KEY\"); "
                            "`agentbus audit keygen` writes one beside the private key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise AuditKeyError(f"{where}: a {type(key).__name__.removeprefix('_')} key, not Ed25519")
    return key


def key_id(key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    """Hex of the first 16 bytes of the SHA-256 of the raw public key."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:32]


def write_keypair(directory: Path) -> tuple[Path, Path]:
    """A new key pair as PEM files in ``directory`` (the private one mode 0600); never overwrites."""
    directory.mkdir(parents=True, exist_ok=True)
    private, public = directory / PRIVATE_FILE, directory / PUBLIC_FILE
    for path in (private, public):
        if path.exists():
            raise AuditKeyError(f"{path} exists; keygen never overwrites a key (move it away first)")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    # Created 0600 from the start: the key is never readable by others, not even for a moment.
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


# -- signing and checking ----------------------------------------------------------------------------


def canonical(topic: str, heads: Mapping[str, AuditHead], signer: str) -> bytes:
    """The bytes a checkpoint's signature covers: ``{topic, heads, key_id}`` as sorted-key JSON."""
    doc = {"topic": topic, "key_id": signer,
           "heads": {p: {"position": h.position, "chain": h.chain} for p, h in heads.items()}}
    return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)


def sign(key: Ed25519PrivateKey, topic: str, heads: Mapping[str, AuditHead]) -> RecordAuditCheckpoint:
    """The command recording ``heads`` of ``topic``, signed with ``key``."""
    signer = key_id(key)
    signature = base64.b64encode(key.sign(canonical(topic, heads, signer))).decode()
    return RecordAuditCheckpoint(topic=topic, heads=dict(heads), key_id=signer, algorithm="ed25519",
                                 signature=signature)


def signature_valid(key: Ed25519PublicKey, topic: str, heads: Mapping[str, AuditHead], signer: str,
                    signature: str) -> bool:
    """Whether ``signature`` is ``key``'s over the checkpoint (``signer`` being the id it names)."""
    try:
        raw = base64.b64decode(signature.encode(), validate=True)
        key.verify(raw, canonical(topic, heads, signer))
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True


# -- the log's heads ---------------------------------------------------------------------------------


async def _last_below(log: EventLog, topic: str, partition: int, end: int) -> StoredRecord | None:
    """The partition's last record below offset ``end`` (Kafka's offsets skip transaction markers)."""
    start, step = end - 1, 1
    while start >= 0:
        batch = [r for r in await log.read(topic, partition, start, min(end - start, _READ_LIMIT))
                 if r.offset < end]
        if batch:
            return batch[-1]
        if start == 0:
            return None
        step = min(step * 8, _READ_LIMIT)
        start = max(0, start - step)
    return None


async def read_heads(log: EventLog, topic: str) -> dict[str, AuditHead]:
    """Every partition's head now: the chain value at its last record, ``position`` just after it.

    The position is the last record's offset + 1 rather than the end offset, so that on Kafka (whose
    offsets skip transaction markers) a verifier finds a record at ``position - 1``.
    """
    heads: dict[str, AuditHead] = {}
    for p in range(await log.partitions(topic)):
        last = await _last_below(log, topic, p, await log.end_offset(topic, p))
        if last is None:
            heads[str(p)] = AuditHead(position=0, chain=GENESIS.hex())
            continue
        chain = last.chain if last.chain is not None else await chain_at(log, topic, p, last.offset + 1)
        heads[str(p)] = AuditHead(position=last.offset + 1, chain=chain.hex())
    return heads


async def moved_since(log: EventLog, topic: str, heads: Mapping[str, AuditHead]) -> bool:
    """Whether anything but checkpoints was appended to ``topic`` after ``heads``."""
    for p in range(await log.partitions(topic)):
        head = heads.get(str(p))
        offset = 0 if head is None else head.position
        while batch := await log.read(topic, p, offset, 16):
            if any(record_type(r) != CHECKPOINT_TYPE for r in batch):
                return True
            offset = batch[-1].offset + 1
    return False


class CheckpointLoop:
    """Signs and appends a checkpoint every ``every_s`` seconds, when the log moved since the last.

    ``submit`` appends a command envelope (the runner's). The first checkpoint after a start is
    made at the first tick if the log holds anything: this process does not know what an earlier
    one signed.
    """

    def __init__(self, log: EventLog, topic: str, key: Ed25519PrivateKey, every_s: float,
                 submit: Callable[[Envelope], Awaitable[Any]]) -> None:
        self.log, self.topic, self.key, self.every_s, self.submit = log, topic, key, every_s, submit
        self.last: dict[str, AuditHead] | None = None
        self.count = 0

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.every_s)
            await self.tick()

    async def tick(self) -> RecordAuditCheckpoint | None:
        """Append a checkpoint now if the log moved; the command appended, or None."""
        if self.last is not None and not await moved_since(self.log, self.topic, self.last):
            return None
        heads = await read_heads(self.log, self.topic)
        if all(h.position == 0 for h in heads.values()):
            return None
        cmd = sign(self.key, self.topic, heads)
        await self.submit(command_envelope(cmd, pool=SYSTEM_POOL, source=SOURCE, actor="audit"))
        self.last = heads
        self.count += 1
        logger.info("audit checkpoint %d signed by key %s", self.count, cmd.key_id)
        return cmd
