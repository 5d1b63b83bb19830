"""``agentbus backup``: back up a deployment while it runs, list, verify and restore backups.

``create`` takes the deployment settings ``serve`` takes and reads that deployment (safe beside the
running service); backups are kept in ``<data dir>/backups/NAME`` unless ``--to DIR`` (then
``DIR/NAME``), and ``list``, ``verify`` and ``restore`` find them in the same place (``--from DIR``).
``restore`` writes a new embedded data directory, ``--data-dir DIR``, and says how to start it.

This module must never copy, check or restore anything itself: ``services.audit.backup`` does.
"""

from __future__ import annotations

from pathlib import Path

import click

from services.audit.backup import (
    BackupError,
    Manifest,
    Verification,
    backups_root,
    check_name,
    create_backup,
    list_backups,
    verify_backup,
)
from services.audit.restore import restore_backup
from services.cli.common import DEPLOYMENT, dumps, fail, load_settings, log_errors, run, settings_options
from services.runtime.settings import Settings

_FROM = click.option("--from", "where", type=click.Path(file_okay=False, path_type=Path),
                     help="The folder the backups are in (default: DATA_DIR/backups).")


def _size(n: int) -> str:
    """``n`` bytes for people (``12.3 MiB``)."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def _located(name: str, where: Path | None, settings: Settings) -> Path:
    try:
        check_name(name)
    except BackupError as exc:
        fail(str(exc))
    return (where if where is not None else backups_root(settings)) / name


@click.group("backup")
def backup_group() -> None:
    """Back up a deployment while it runs; list, verify and restore backups."""


@backup_group.command("create")
@click.argument("name")
@click.option("--to", "to", type=click.Path(file_okay=False, path_type=Path),
              help="Keep the backup in DIR/NAME instead of DATA_DIR/backups/NAME.")
@settings_options(*DEPLOYMENT, existing_log=True)
def backup_create(name: str, to: Path | None, settings: Settings) -> None:
    """Back up the deployment as NAME, while it runs.

    Embedded: a consistent copy of the read models, then of the log (SQLite's online backup API).
    Kafka: an lz4 export of the commands and events topics and a copy of the read-model tables.
    """
    try:
        with log_errors(settings.broker):
            created = run(create_backup(settings, name, to=to))
    except BackupError as exc:
        fail(str(exc))
    m = created.manifest
    kind = "Kafka log export" if m.source.log == "kafka" else "embedded log copy"
    click.echo(f"backup {m.name} created at {created.path} ({_size(m.size)}): {kind}, {m.events} events")
    for p in m.partitions:
        head = p.chain_head[:16] if p.chain_head else "none"
        click.echo(f"  {p.topic}[{p.partition}]: {p.records} records, end offset {p.end_offset}, "
                   f"chain head {head}")


@backup_group.command("list")
@_FROM
@click.option("--json", "as_json", is_flag=True, help="Print one JSON array.")
@settings_options("data_dir")
def backup_list(where: Path | None, as_json: bool, settings: Settings) -> None:
    """List the backups: name, created, size, events, location."""
    root = where if where is not None else backups_root(settings)
    found = list_backups(root)
    if as_json:
        click.echo(dumps([b.to_json() for b in found]))
        return
    if not found:
        click.echo(f"no backups in {root}")
        return
    rows = [("NAME", "CREATED", "SIZE", "EVENTS", "LOCATION")]
    for b in found:
        m = b.manifest
        if m is None:
            rows.append((b.name, "-", "-", "-", f"{b.path} ({b.error})"))
        else:
            created = m.created.strftime("%Y-%m-%d %H:%M:%SZ")
            rows.append((b.name, created, _size(m.size), str(m.events), str(b.path)))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(r[:4], widths, strict=True)) + "  " + r[4])


def _print_checks(result: Verification) -> None:
    for c in result.checks:
        click.echo(f"{'ok  ' if c.ok else 'FAIL'}  {c.subject}: {c.detail}")


@backup_group.command("verify")
@click.argument("name")
@_FROM
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@settings_options("data_dir")
def backup_verify(name: str, where: Path | None, as_json: bool, settings: Settings) -> None:
    """Check every file of backup NAME against its manifest, then the hash chain of its log.

    Exit 0 when everything holds, 1 naming what failed.
    """
    path = _located(name, where, settings)
    try:
        result = run(verify_backup(path))
    except BackupError as exc:
        fail(str(exc))
    if as_json:
        click.echo(dumps(result.to_json()))
    else:
        _print_checks(result)
    if not result.ok:
        fail(f"backup {name} does not verify: " + ", ".join(c.subject for c in result.failures))
    if not as_json:
        click.echo(f"backup {name} verifies")


@backup_group.command("restore")
@click.argument("name")
@click.option("--data-dir", "data_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="The new data directory to restore into (absent or empty).")
@_FROM
def backup_restore(name: str, data_dir: Path, where: Path | None) -> None:
    """Restore backup NAME into a new data directory, after verifying it.

    The backup is looked up in --from DIR, else in the backups of the deployment AGENTBUS_DATA names.
    A Kafka backup restores as an embedded data directory: its events in a new SQLite log and the
    read models rebuilt from them (the copied read models hold Kafka offsets, which do not fit).
    """
    path = _located(name, where, load_settings())
    try:
        restored = run(restore_backup(path, data_dir))
    except BackupError as exc:
        fail(str(exc))
    _print_checks_brief(restored.manifest, len(restored.checks))
    origin = "Kafka + " + ("PostgreSQL" if "postgres" in restored.manifest.source.database else "SQLite")
    kind = origin if restored.rebuilt else "embedded"
    click.echo(f"restored backup {name} ({kind}) into {data_dir} as an embedded data directory, "
               f"{restored.events} events")
    for note in restored.notes:
        click.echo(f"  {note}")
    click.echo(f"start the service on it: agentbus serve --data-dir {data_dir}")


def _print_checks_brief(manifest: Manifest, checks: int) -> None:
    click.echo(f"verified: {len(manifest.files)} files against the manifest, the hash chain and its heads "
               f"({checks} checks)")
