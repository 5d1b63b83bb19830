"""``agentbus tokens``: create, list and revoke API tokens on the deployment the settings name.

``create`` and ``revoke`` append their command straight to the deployment's log (like
``agentbus executor run``), not through the HTTP API, so they work before any token exists: that
is how the first admin token is made. The running server decides them; ``create`` waits up to
``--wait`` seconds for the read model to hold the token and prints the token as its last line,
the only time it is shown. ``list`` reads the read model and never shows a secret or its hash.

This module must never write a token's secret anywhere but stdout, and never decide anything.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import click
import pydantic

from contracts.commands import ROLES, RevokeApiToken
from events import open_log
from projections import ProjectionStore, access
from services.cli.common import DEPLOYMENT, dumps, fail, log_errors, run, settings_options
from services.runtime.service import topics_of
from services.runtime.settings import Settings
from services.runtime.tokens import append_command, cli_actor, mint

__all__ = ["tokens_group"]

_POLL_S = 0.05
_wait = click.option("--wait", type=click.FloatRange(min=0), default=5.0, show_default=True,
                     help="Seconds to wait for the running server to apply it (0: do not wait).")


@click.group("tokens")
def tokens_group() -> None:
    """API tokens: create (shown once), list, revoke. Acts on the deployment's log and read models
    directly (--data-dir, --broker, --database), so it works before any token exists."""


async def _append(settings: Settings, cmd: Any) -> tuple[int, int]:
    log = open_log(settings.broker)
    await log.start()
    try:
        topics = topics_of(settings)
        # A fresh deployment has no topics yet (the first admin token comes before the first start).
        await log.ensure_topic(topics.commands, settings.partitions)
        await log.ensure_topic(topics.events, settings.partitions, retention_ms=-1)
        _, partition, position = await append_command(log, topics, cmd, actor=cli_actor())
        return partition, position
    finally:
        await log.close()


async def _row(settings: Settings, token_id: str, until: Callable[[dict[str, Any] | None], bool],
               wait: float) -> dict[str, Any] | None:
    """The token's read-model row once ``until`` holds of it, or as it is after ``wait`` seconds."""
    store = ProjectionStore(settings.database)
    await store.start()
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            row = await access.token(store, token_id)
            if until(row) or loop.time() >= deadline:
                return row
            await asyncio.sleep(_POLL_S)
    finally:
        await store.close()


@tokens_group.command("create")
@click.option("--role", type=click.Choice(ROLES), required=True, help="What the token may do.")
@click.option("--agent-id", help="agent role: the agent the token acts as (required for it).")
@click.option("--name", help="What the token is for (shown by `tokens list`).")
@_wait
@settings_options(*DEPLOYMENT)
def tokens_create(role: str, agent_id: str | None, name: str | None, wait: float, settings: Settings) -> None:
    """Create an API token; prints it as the last line (it is never shown again)."""
    try:
        minted = mint(role, agent_id, name)
    except pydantic.ValidationError as exc:
        problems = "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())
        raise click.UsageError(problems) from None
    cmd = minted.command

    async def go() -> tuple[int, dict[str, Any] | None]:
        _, position = await _append(settings, cmd)
        row = await _row(settings, cmd.token_id, lambda r: r is not None, wait) if wait > 0 else None
        return position, row

    with log_errors(settings.broker):
        position, row = run(go())
    status = "applied" if row is not None else "pending"
    click.echo(f"token_id: {cmd.token_id}\nrole: {role}" + (f"\nagent_id: {agent_id}" if agent_id else "")
               + f"\nstatus: {status}")
    if row is None:
        click.echo(f"agentbus: the token is on the log (commands position {position}); it works once "
                   "`agentbus serve` on this deployment has applied it", err=True)
    click.echo(minted.token)


@tokens_group.command("list")
@click.option("--active", is_flag=True, help="Only tokens not revoked.")
@settings_options(*DEPLOYMENT)
def tokens_list(active: bool, settings: Settings) -> None:
    """List API tokens (id, role, agent, name, created, revoked), never their secrets."""

    async def go() -> list[dict[str, Any]]:
        store = ProjectionStore(settings.database)
        await store.start()
        try:
            return await access.tokens(store, revoked=not active)
        finally:
            await store.close()

    click.echo(dumps(run(go()), indent=True))


@tokens_group.command("revoke")
@click.argument("token_id")
@_wait
@settings_options(*DEPLOYMENT)
def tokens_revoke(token_id: str, wait: float, settings: Settings) -> None:
    """Revoke an API token for good (refused from the next request once the server has applied it)."""
    try:
        cmd = RevokeApiToken(token_id=token_id)
    except pydantic.ValidationError:
        fail(f"{token_id!r} is not a token id")
    row = run(_row(settings, token_id, lambda r: True, 0))
    if row is None:
        fail(f"no API token {token_id!r} (see `agentbus tokens list`)")
    if row["revoked_at"] is not None:
        fail(f"API token {token_id!r} was revoked at {row['revoked_at']}")

    async def go() -> dict[str, Any] | None:
        await _append(settings, cmd)
        return await _row(settings, token_id, lambda r: r is not None and r["revoked_at"] is not None, wait)

    with log_errors(settings.broker):
        row = run(go())
    if row is None or row["revoked_at"] is None:
        click.echo("agentbus: the revocation is on the log; it applies once `agentbus serve` on this "
                   "deployment has applied it", err=True)
        click.echo(f"{token_id}: revocation pending")
    else:
        click.echo(f"{token_id}: revoked at {row['revoked_at']}")
