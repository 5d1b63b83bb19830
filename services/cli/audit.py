"""``agentbus audit``: verify the event log's hash chain and its signed checkpoints, sign checkpoints.

``verify`` recomputes the chain over the deployment's log (the settings ``serve`` takes) or over an
export file, and with ``--key`` checks the signed checkpoints of that public key (those of other
keys are listed, not checked); it exits 1 naming the first record or checkpoint that does not
match. ``checkpoint`` reads the events topic's heads, signs them with the private key (``--key`` or
``AGENTBUS_AUDIT_KEY``) and appends the ``RecordAuditCheckpoint`` command straight to the log, as
``agentbus tokens`` does, so it needs no token; the running server decides it. ``keygen`` writes a
key pair. Neither ``verify`` nor ``checkpoint`` makes a log where none is.

This module must never print, log or append a private key, and never decides anything: the checks
are ``services.audit``'s, the decision the ``_system`` pool's decider's.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import click
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from contracts import SYSTEM_POOL
from events import EventLog, open_log, partition_for
from events.codec import envelope_dict, from_record
from services.audit.checkpoints import (
    AuditKeyError,
    key_id,
    load_private_key,
    load_public_key,
    read_heads,
    sign,
    write_keypair,
)
from services.audit.verify import AuditReport, verify_export_audit, verify_log_audit
from services.cli.common import DEPLOYMENT, dumps, fail, log_errors, require_log, run, settings_options
from services.runtime.service import topics_of
from services.runtime.settings import Settings
from services.runtime.tokens import append_command, cli_actor

__all__ = ["audit_group"]

_POLL_S = 0.05


@click.group("audit")
def audit_group() -> None:
    """Verify the event log's hash chain and signed checkpoints; sign checkpoints; make keys."""


# --- verify -------------------------------------------------------------------------------------


@audit_group.command("verify")
@click.option("--from", "from_offset", type=click.IntRange(min=0), default=None,
              help="First offset to check in each partition (the chain below it is taken as stored). "
                   "[default: 0]")
@click.option("--file", "file", type=click.Path(dir_okay=False, path_type=Path),
              help="Verify this export file (`agentbus events export`) instead of the log.")
@click.option("--key", "key_file", help="Public key (PEM file) to check the checkpoints it signed with "
                                        "(other keys' are listed); fails when none of them verifies.")
@click.option("--processes", type=click.IntRange(min=1), default=None,
              help="Processes to check a long partition or a big export with (1: this one alone, e.g. on "
                   "a busy server). [default: one per core]")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@settings_options(*DEPLOYMENT)
def audit_verify(from_offset: int | None, file: Path | None, key_file: str | None, processes: int | None,
                 as_json: bool, settings: Settings) -> None:
    """Recompute the hash chain; exit 1 naming the first record or checkpoint that does not match."""
    key = None
    if key_file is not None:
        try:
            key = load_public_key(key_file, "--key")
        except AuditKeyError as exc:
            fail(str(exc))
    if file is not None:
        if from_offset is not None:
            raise click.UsageError("--from applies to the log; an export file is checked from its first line")
        if not file.is_file():
            fail(f"--file: no such file {str(file)!r}")
        report = run(verify_export_audit(file, key, processes=processes))
    else:
        require_log(settings)  # a check never makes the log it was pointed at
        events = topics_of(settings).events

        async def go() -> AuditReport:
            log = await _open(settings, readonly=True)  # a check never changes what it checks
            try:
                if from_offset:
                    ends = [await log.end_offset(events, p) for p in range(await log.partitions(events))]
                    if from_offset > max(ends, default=0):  # at the end: nothing new, which is ok
                        # Not "ok, 0 records": a mistyped offset must not pass for a check.
                        fail(f"--from {from_offset} is past the end of the log: its events partitions end "
                             f"at {', '.join(f'{p}:{e}' for p, e in enumerate(ends))} (the next offset)")
                return await verify_log_audit(log, events, from_offset=from_offset or 0, key=key,
                                              processes=processes)
            finally:
                await log.close()

        with log_errors(settings.broker):
            report = run(go())
    if as_json:
        click.echo(dumps(report.to_json()))
    else:
        _print(report, "file " + str(file) if file is not None else settings.broker)
    if not report.ok:
        sys.exit(1)


async def _open(settings: Settings, *, readonly: bool = False) -> EventLog:
    log = open_log(settings.broker, readonly=readonly)
    await log.start()
    return log


def _print(report: AuditReport, where: str) -> None:
    chain = report.chain
    rate = f"{chain.records / report.seconds:,.0f} events/s" if report.seconds > 0 else "-"
    legacy = f", {chain.legacy} from before the chain" if chain.legacy else ""
    click.echo(f"checked {chain.records} records of {chain.topic} ({where}) in {report.seconds:.3f} s "
               f"({rate}){legacy}")
    for p, head in sorted(chain.heads.items()):
        click.echo(f"  partition {p}: head {head} (the records below offset {chain.ends.get(p, 0)})")
    if report.key_id is not None:
        line = (f"checkpoints signed by key {report.key_id}: {report.verified} verified of "
                f"{report.found} found")
        if report.last is not None:
            positions = ", ".join(f"{p}:{n}" for p, n in report.last["positions"].items())
            line += f"; the last covers positions {positions}"
        if report.unchecked_heads:
            line += f"; {report.unchecked_heads} heads before the file's first records not checked"
        click.echo(line)
        if report.below_from is not None:
            click.echo(f"  none verifies at or after --from: the nearest below it, at "
                       f"{_at(chain.topic, report.below_from)}, was checked against the chain as stored")
        for signer, seen in sorted(report.other_keys.items()):
            span = _at(chain.topic, seen["first"])
            if seen["count"] > 1:
                span += f" to {_at(chain.topic, seen['last'])}"
            click.echo(f"  {seen['count']} signed by another key, {signer} (not checked: this key cannot "
                       f"vouch for them): {span}")
        for ignored in report.ignored:
            click.echo(f"  ignored: the checkpoint at {_at(chain.topic, ignored)}: {ignored['reason']}")
        if report.ignored_count > len(report.ignored):
            click.echo(f"  ... and {report.ignored_count - len(report.ignored)} more ignored")
    failure = report.first_failure
    if failure is None:
        click.echo("ok: the chain verifies" + (" and every checkpoint holds" if report.key_id else ""))
        return
    at = "" if failure.partition < 0 else f" at {failure.topic}[{failure.partition}]@{failure.offset}"
    click.echo(f"FAILED{at}: {failure.reason}")
    if failure.expected is not None or failure.found is not None:
        click.echo(f"  expected: {failure.expected}\n  found:    {failure.found}")


def _at(topic: str, where: dict[str, Any]) -> str:
    """Where a report found a checkpoint, as the failures name records: ``events[0]@41`` (line 7)."""
    at = f"{topic}[{where['partition']}]@{where['offset']}"
    return at if where.get("line") is None else f"{at} (line {where['line']})"


# --- checkpoint ---------------------------------------------------------------------------------


@audit_group.command("checkpoint")
@click.option("--key", "key_file", help="Private key (PEM, PKCS8) to sign with [default: AGENTBUS_AUDIT_KEY: "
                                        "a PEM file's path, or the PEM].")
@click.option("--wait", type=click.FloatRange(min=0), default=5.0, show_default=True,
              help="Seconds to wait for the running server to record it (0: do not wait).")
@settings_options(*DEPLOYMENT, existing_log=True)
def audit_checkpoint(key_file: str | None, wait: float, settings: Settings) -> None:
    """Sign the events topic's chain heads and append the checkpoint; prints the recorded event."""
    key = _private_key(key_file, settings)
    topics = topics_of(settings)

    async def go() -> tuple[str, int, dict[str, Any] | None]:
        log = await _open(settings)
        try:
            heads = await read_heads(log, topics.events)
            cmd = sign(key, topics.events, heads)
            system = partition_for(SYSTEM_POOL, await log.partitions(topics.events))
            start = await log.end_offset(topics.events, system)
            command_id, _, position = await append_command(log, topics, cmd, actor=cli_actor())
            event = await _outcome(log, topics.events, system, start, command_id, wait)
            return cmd.key_id, position, event
        finally:
            await log.close()

    with log_errors(settings.broker):
        signer, position, event = run(go())
    if event is None:
        click.echo(f"agentbus: the checkpoint (key {signer}) is on the log (commands position {position}); "
                   "it is recorded once `agentbus serve` on this deployment has decided it", err=True)
        click.echo(dumps({"status": "pending", "key_id": signer, "position": position}, indent=True))
        return
    click.echo(dumps(event, indent=True))
    if event.get("type") != "AuditCheckpointRecorded":
        fail(f"the checkpoint was rejected: {event.get('data', {}).get('message', event.get('type'))}")


def _private_key(key_file: str | None, settings: Settings) -> Ed25519PrivateKey:
    try:
        if key_file is not None:
            return load_private_key(key_file, "--key")
        if settings.audit_key is not None:
            return load_private_key(settings.audit_key.get_secret_value(), Settings.env_name("audit_key"))
    except AuditKeyError as exc:
        fail(str(exc))
    raise click.UsageError(f"no key to sign with: pass --key FILE or set {Settings.env_name('audit_key')}")


async def _outcome(log: EventLog, topic: str, partition: int, start: int, command_id: str,
                   wait: float) -> dict[str, Any] | None:
    """The event the decider appended for ``command_id`` (at or after ``start``), within ``wait`` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    offset = start
    while True:
        batch = await log.read(topic, partition, offset, 1000)
        for rec in batch:
            env = from_record(rec)
            if env.commandid == command_id:
                return {"position": rec.offset, "partition": partition, **envelope_dict(env)}
        if batch:
            offset = batch[-1].offset + 1
            continue
        if loop.time() >= deadline:
            return None
        await asyncio.sleep(_POLL_S)


# --- keygen -------------------------------------------------------------------------------------


@audit_group.command("keygen")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Directory to write audit-key.pem (private, mode 0600) and audit-key.pub.pem into.")
def audit_keygen(out: Path) -> None:
    """Make an Ed25519 key pair for signing checkpoints (keep the private one off the servers'
    data directories: whoever holds it can sign a rewritten history)."""
    try:
        private, public = write_keypair(out)
    except AuditKeyError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"--out {out}: {exc.strerror or exc}")
    click.echo(f"private key: {private} (mode 0600; sign with --key or AGENTBUS_AUDIT_KEY)\n"
               f"public key:  {public} (verify with `agentbus audit verify --key`)\n"
               f"key id:      {key_id(load_public_key(str(public)))}")
