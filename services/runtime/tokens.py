"""API tokens: how one is made, read back and checked, and how the CLI issues and revokes them
by appending the commands straight to a deployment's log.

A token reads ``abt_<token id>_<secret>``: the id names the token in the log, the read models
and the audit; the secret (32 random bytes, URL-safe base64) is shown once to whoever created
it. Only the secret's SHA-256 is stored: the secret has 256 bits of entropy, so no slow,
salted hash is needed against guessing, and a leaked log or read model reveals no usable token.
A presented secret is compared with the stored hash in constant time.

This module must never write a secret anywhere (log, read model, logs) and never decide
anything: the pool ``_system``'s decider accepts or refuses the commands.
"""

from __future__ import annotations

import getpass
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from contracts import SYSTEM_POOL, Command, new_id
from contracts.commands import IssueApiToken
from events import EventLog
from events.codec import to_record
from services.runtime.ingest import command_envelope
from services.runtime.topics import Topics

__all__ = ["PREFIX", "Minted", "append_command", "cli_actor", "hash_secret", "mint", "parse", "verify"]

PREFIX = "abt_"
_SECRET_BYTES = 32
SOURCE = "urn:agentbus:cli"


@dataclass(frozen=True, slots=True)
class Minted:
    """A new token: what to tell its creator (``token``, once) and what to issue."""

    token: str
    command: IssueApiToken


def hash_secret(secret: str) -> str:
    """The hex SHA-256 of a token's secret, as stored."""
    return hashlib.sha256(secret.encode()).hexdigest()


def mint(role: str, agent_id: str | None = None, name: str | None = None) -> Minted:
    """A new token and the command that issues it (validated: a bad role or agent id raises)."""
    token_id = new_id()
    secret = secrets.token_urlsafe(_SECRET_BYTES)
    cmd = IssueApiToken.model_validate({"token_id": token_id, "role": role, "agent_id": agent_id,
                                        "name": name, "secret_hash": hash_secret(secret)})
    return Minted(f"{PREFIX}{token_id}_{secret}", cmd)


def parse(token: str) -> tuple[str, str] | None:
    """(token id, secret) of something shaped as an API token, else None."""
    if not token.startswith(PREFIX):
        return None
    token_id, sep, secret = token[len(PREFIX):].partition("_")
    if not sep or not token_id or not secret:
        return None
    return token_id, secret


def verify(secret: str, stored_hash: str) -> bool:
    """Whether ``secret`` is the one ``stored_hash`` was made from (constant time)."""
    return hmac.compare_digest(hash_secret(secret).encode(), stored_hash.encode())


def cli_actor() -> str:
    """The ``actor`` of a command the CLI appends: the local user."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no user name (a container without one)
        return "cli"


async def append_command(log: EventLog, topics: Topics, cmd: Command,
                         *, actor: str) -> tuple[str, int, int]:
    """Append ``cmd`` to the commands of the _system pool; (command id, partition, position)."""
    env = command_envelope(cmd, pool=SYSTEM_POOL, source=SOURCE, actor=actor)
    appended = await log.append(topics.commands, [to_record(env)])
    return env.id, appended[0].partition, appended[0].offset
