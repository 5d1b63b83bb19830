"""Sealing secrets with the deployment's key, so that a secret the log must keep is never in clear.

A signing secret (an outbound subscription's, an inbound webhook source's) has to be on the log:
every process that signs or verifies rebuilds its settings from the events. What goes there is
``seal(secret, context=...)``: ``sealed:v1:<key id>:<base64url>``, AES-SIV (RFC 5297, the
``cryptography`` package) over the secret with ``context`` as associated data.

* Authenticated: a sealed text that was altered, or moved to another context (another
  subscription's name), does not open.
* Deterministic: the same secret sealed for the same context gives the same text, so a request
  retried with the same Idempotency-Key is the same command (its digest matches). The only thing
  equal texts reveal is that two secrets of one context are equal.
* The key id (8 hex digits of the key's SHA-256) says which key sealed a text, so a process
  holding another key fails naming both instead of failing to verify signatures.

The key (64 random bytes, URL-safe base64): the ``AGENTBUS_SECRET_KEY`` setting, or else the file
``secret.key`` in the data directory, created with mode 0600 on first use. Processes on several
machines (a Kafka cluster) must all be given the same ``AGENTBUS_SECRET_KEY``
(``new_key()`` makes one: ``python -c "from services.runtime.sealing import new_key; print(new_key())"``).
Losing the key loses the secrets: subscriptions and sources must then be given new ones.

This module must never log, print or return a secret except to the caller that opens it.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESSIV

from contracts.commands import SEALED_PREFIX
from services.runtime.settings import Settings

__all__ = ["KEY_FILE", "SEALED_PREFIX", "SealError", "Sealer", "new_key", "sealer_for", "sealer_of"]

KEY_FILE = "secret.key"
_KEY_BYTES = 64  # AES-256-SIV
_VERSION = "v1"


class SealError(ValueError):
    """A sealed text that does not open with this key and context, or a key that is not one."""


def new_key() -> str:
    """A fresh key, as ``AGENTBUS_SECRET_KEY`` and the key file hold it."""
    return base64.urlsafe_b64encode(AESSIV.generate_key(_KEY_BYTES * 8)).decode()


def _decode_key(text: str, where: str) -> bytes:
    try:
        key = base64.urlsafe_b64decode(text.strip().encode())
    except (binascii.Error, ValueError):
        raise SealError(f"{where} is not URL-safe base64") from None
    if len(key) != _KEY_BYTES:
        raise SealError(f"{where} must be {_KEY_BYTES} bytes of URL-safe base64 (see new_key()), "
                        f"not {len(key)}")
    return key


class Sealer:
    """Seals and opens secrets with one key."""

    def __init__(self, key: bytes) -> None:
        if len(key) != _KEY_BYTES:
            raise SealError(f"a sealing key is {_KEY_BYTES} bytes, not {len(key)}")
        self._siv = AESSIV(key)
        self.key_id = hashlib.sha256(key).hexdigest()[:8]

    @classmethod
    def from_text(cls, text: str, where: str = "the secret key") -> Sealer:
        """The sealer of a key written as ``new_key()`` writes it."""
        return cls(_decode_key(text, where))

    def seal(self, secret: str, *, context: str) -> str:
        """``secret`` sealed for ``context`` (what it belongs to, e.g. ``subscription:<name>``)."""
        box = self._siv.encrypt(secret.encode(), [context.encode()])
        return f"{SEALED_PREFIX}{_VERSION}:{self.key_id}:{base64.urlsafe_b64encode(box).decode()}"

    def open(self, sealed: str, *, context: str) -> str:
        """The secret ``sealed`` holds; raises SealError (naming the key ids when they differ)."""
        parts = sealed.split(":")
        if len(parts) != 4 or f"{parts[0]}:" != SEALED_PREFIX or parts[1] != _VERSION:
            raise SealError("not a sealed secret (sealed:v1:<key id>:<base64>)")
        _, _, key_id, body = parts
        if key_id != self.key_id:
            raise SealError(f"sealed with key {key_id}, but this process has key {self.key_id}: give every "
                            "process the same AGENTBUS_SECRET_KEY")
        try:
            return self._siv.decrypt(base64.urlsafe_b64decode(body.encode()), [context.encode()]).decode()
        except (InvalidTag, binascii.Error, ValueError):
            raise SealError(f"the sealed secret does not open for {context!r} (altered, or sealed for "
                            "something else)") from None


def sealer_of(settings: Settings) -> Sealer:
    """The sealer of the deployment ``settings`` name (``secret_key``, else the key file in ``data_dir``)."""
    key = settings.secret_key
    return sealer_for(key.get_secret_value() if key else None, settings.data_dir)


def sealer_for(secret_key: str | None, data_dir: Path) -> Sealer:
    """The deployment's sealer: ``secret_key`` (the AGENTBUS_SECRET_KEY setting) if set, else the
    key file in ``data_dir``, created (mode 0600) if absent."""
    if secret_key:
        return Sealer.from_text(secret_key, "AGENTBUS_SECRET_KEY")
    path = data_dir / KEY_FILE
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        # Written whole under another name, then linked into place: a process starting at the same
        # time either wins the link or reads the winner's complete file, never a half-written one.
        tmp = data_dir / f".{KEY_FILE}.{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "w") as out:
                out.write(new_key() + "\n")
                out.flush()
                os.fsync(out.fileno())
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return Sealer.from_text(path.read_text(), str(path))
