"""Commands that work on a deployment's log and read models directly, with no server running.

``events tail|export|import`` read and write the events topic, ``projections rebuild`` rebuilds
the read models from it, ``replay`` rebuilds the deciders' state and reports it, and
``contracts export`` publishes the schemas. Each takes the deployment settings ``serve`` takes,
and reads the topics the runtime those settings choose writes (``services.runtime.service.topics_of``:
the prefixed names on Kafka).

This module must never decide or project anything itself: it calls ``events.export``,
``projections.rebuild`` and the runtime's ``PartitionDecider``, so it cannot disagree with the
service about the rules.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import click
import orjson

from contracts import REGISTRY
from events import EventLog, open_log, partition_for
from events.codec import envelope_dict, from_record
from services.cli.common import DEPLOYMENT, dumps, fail, log_errors, run, settings_options
from services.runtime.service import topics_of
from services.runtime.settings import Settings


@contextlib.asynccontextmanager
async def _open_log(broker: str, *, readonly: bool = False) -> AsyncIterator[EventLog]:
    """The deployment's log, started; ``readonly`` for the commands that only read it, which must
    leave it as they found it (no schema created, no one-time chain migration run)."""
    log = open_log(broker, readonly=readonly)
    await log.start()
    try:
        yield log
    finally:
        await log.close()


def _progress(label: str, total: int | None) -> contextlib.AbstractContextManager[Callable[[int], object]]:
    """Progress on a terminal (a bar when the total is known, a counter otherwise); silent when piped."""

    @contextlib.contextmanager
    def bar() -> Iterator[Callable[[int], object]]:
        if not sys.stdout.isatty():
            yield lambda n: None  # logs and pipes get the one-line summary only
            return
        if total:
            with click.progressbar(length=total, label=label, show_pos=True) as pb:
                yield pb.update
            return
        done = 0

        def count(n: int) -> None:
            nonlocal done
            done += n
            click.echo(f"\r{label} {done}", nl=False)

        yield count
        if done:
            click.echo()

    return bar()


# --- events -------------------------------------------------------------------------------------


@click.group("events")
def events_group() -> None:
    """Read, export and import the event log directly (no server needed)."""


@events_group.command("tail")
@click.option("--from", "from_offset", type=click.IntRange(min=0), default=0, show_default=True,
              help="First offset to print (in each partition).")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new events until interrupted.")
@click.option("--type", "type_", help="Only events of this type.")
@click.option("--pool", help="Only this pool's events (reads just its partition).")
@settings_options(*DEPLOYMENT)
def events_tail(from_offset: int, follow: bool, type_: str | None, pool: str | None,
                settings: Settings) -> None:
    """Print events as JSON lines, each with its partition and position."""
    events = topics_of(settings).events

    async def go() -> None:
        async with _open_log(settings.broker, readonly=True) as log:
            count = await log.partitions(events)
            parts = [partition_for(pool, count)] if pool is not None else list(range(count))
            await asyncio.gather(*(_tail(log, events, p, from_offset, follow, type_, pool) for p in parts))

    with log_errors(settings.broker), contextlib.suppress(KeyboardInterrupt):
        run(go())


async def _tail(log: EventLog, topic: str, partition: int, offset: int, follow: bool, type_: str | None,
                pool: str | None) -> None:
    def emit(batch: list[Any]) -> None:
        for rec in batch:
            env = from_record(rec)
            if (type_ is None or env.type == type_) and (pool is None or env.pool == pool):
                click.echo(dumps({"position": rec.offset, "partition": partition, **envelope_dict(env)}))

    if follow:
        async for batch in log.subscribe(topic, partition, offset):
            emit(batch)
        return
    while batch := await log.read(topic, partition, offset, 1000):
        emit(batch)
        offset = batch[-1].offset + 1


@events_group.command("export")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--from", "from_offset", type=click.IntRange(min=0), default=0, show_default=True,
              help="First offset to export (in each partition).")
@settings_options(*DEPLOYMENT)
def events_export(file: Path, from_offset: int, settings: Settings) -> None:
    """Write the events topic to FILE (lz4-compressed NDJSON, one CloudEvent per line).

    Every record as stored: one that cannot be read back is written too, marked "chaincorrupt",
    so that the file can repair the log (README: Repairing a log). A failed export leaves no file.
    """
    from events.export import export_log

    events = topics_of(settings).events
    if not file.parent.is_dir():
        fail(f"cannot write {file}: no directory {file.parent}")

    async def go() -> tuple[int, float]:
        async with _open_log(settings.broker, readonly=True) as log:
            ends = [await log.end_offset(events, p) for p in range(await log.partitions(events))]
            if from_offset > max(ends, default=0):
                at = ", ".join(f"partition {p} at offset {end}" for p, end in enumerate(ends))
                fail(f"--from {from_offset} is past the end of the log ({at}): nothing to export, "
                     f"{file} not written")
            total = sum(max(0, end - from_offset) for end in ends)
            started = time.perf_counter()
            with _progress("exporting", total) as progress:
                n = await export_log(log, events, file, from_offset=from_offset, progress=progress)
            return n, time.perf_counter() - started

    try:
        with log_errors(settings.broker):
            n, seconds = run(go())
    except OSError as exc:
        fail(f"cannot write {file}: {exc.strerror or exc}; nothing was written")
    click.echo(f"exported {n} events to {file} in {seconds:.2f} s")


@events_group.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--force", is_flag=True,
              help="Import even if the file's hash chain does not verify (an edited file) or its records "
                   "do not continue the log's; an `agentbus.import` record after the events says so.")
@settings_options(*DEPLOYMENT)
def events_import(file: Path, force: bool, settings: Settings) -> None:
    """Append the events in FILE (from ``events export``); events already present are skipped.

    The file's hash chain is verified first: a file altered since its export is refused, naming
    the first record that does not match, unless --force. So is a file whose records do not
    continue the log (each partition's first record must follow the log's last one there: offset 0
    for an empty log), such as a partial export (--from) into an empty log. Import into a stopped
    service (or a fresh log): a running decider does not see imported events.
    """
    from events.export import ImportFileError, import_log

    topics = topics_of(settings)

    async def go() -> Any:
        async with _open_log(settings.broker) as log:
            # A fresh log has no topics yet: create them as the service would.
            await log.ensure_topic(topics.commands, settings.partitions)
            await log.ensure_topic(topics.events, settings.partitions, retention_ms=-1)
            with _progress("importing", None) as progress:
                return await import_log(log, topics.events, file, progress=progress, force=force)

    try:
        with log_errors(settings.broker):
            result = run(go())
    except ImportFileError as exc:
        fail(str(exc))
    if result.forced is not None:
        click.echo(f"warning: imported anyway (--force): {result.forced}", err=True)
    click.echo(f"imported {result.appended} events from {file} ({result.duplicates} already present)"
               + (", forced: recorded as an agentbus.import record" if result.forced is not None else ""))


# --- read models and replay ---------------------------------------------------------------------


@click.group("projections")
def projections_group() -> None:
    """Maintain the read models."""


@projections_group.command("rebuild")
@settings_options(*DEPLOYMENT)
def projections_rebuild(settings: Settings) -> None:
    """Drop the read models and rebuild them from offset 0 of the event log.

    Stop the service first: the rebuild drops the tables a live projector writes to.
    """
    from projections import ProjectionStore, rebuild

    events = topics_of(settings).events

    async def go() -> tuple[int, float]:
        store = ProjectionStore(settings.database)
        await store.start()
        try:
            async with _open_log(settings.broker, readonly=True) as log:
                started = time.perf_counter()
                n = await rebuild(log, store, events)
                return n, time.perf_counter() - started
        finally:
            await store.close()

    with log_errors(settings.broker):
        n, seconds = run(go())
    click.echo(f"rebuilt the read models: {n} events applied in {seconds:.2f} s")


@click.command()
@settings_options(*DEPLOYMENT)
@click.option("--pool", help="Only report this pool.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--from-snapshot", is_flag=True,
              help="Start each partition from its newest valid decider snapshot (in the read-model "
                   "database) and replay only the events after it; default: every event from offset 0.")
@click.option("--until", help="The state as of this point: a position of the events topic (an integer, or "
                              "<partition>:<position> pairs such as 0:41,1:7; the event there included) "
                              "or an RFC 3339 time (every event stamped at or before it).")
def replay(settings: Settings, pool: str | None, as_json: bool, from_snapshot: bool,
           until: str | None) -> None:
    """Rebuild the deciders' state from the log and report how fast, and what it holds.

    Read-only: safe beside a running service.
    """
    from services.audit.as_of import AsOfBeyondEnd, AsOfError, parse_as_of, resolve
    from services.runtime.decider import PartitionDecider
    from services.runtime.embedded import tune_gc
    from services.runtime.outcomes import Outcomes
    from services.runtime.snapshots import SnapshotStore

    tune_gc()  # as serve and bench do: the rebuilt state is long-lived, and collections would walk it
    topics = topics_of(settings)

    async def go() -> dict[str, Any]:
        pools: dict[str, dict[str, Any]] = {}
        total, seconds, loading = 0, 0.0, 0.0
        used: dict[str, int | None] = {}
        last: dict[str, int] = {}  # with --until: the last position replayed per partition (-1: none)
        snapshots = SnapshotStore(settings.database, readonly=True) if from_snapshot else None
        async with _open_log(settings.broker, readonly=True) as log, contextlib.AsyncExitStack() as stack:
            if snapshots is not None:
                stack.push_async_callback(snapshots.close)
                await snapshots.start()
            count = await log.partitions(topics.events)
            for p in range(count):
                decider = PartitionDecider(log, p, Outcomes(), settings.decider, topics=topics,
                                           snapshots=snapshots)
                if until is None:
                    await decider.rebuild()
                else:
                    try:
                        last[str(p)] = await resolve(log, topics.events, p, parse_as_of(until, count))
                    except (AsOfError, AsOfBeyondEnd) as exc:
                        fail(f"--until: {exc}")
                    await decider.rebuild(until=last[str(p)] + 1)
                total += decider.replay.events
                seconds += decider.replay.seconds
                loading += decider.replay.snapshot_seconds
                used[str(p)] = decider.replay.start if decider.replay.snapshot is not None else None
                for name, state in decider.states.items():
                    statuses: dict[str, int] = {}
                    for t in state.tasks.values():
                        statuses[t.status] = statuses.get(t.status, 0) + 1
                    pools[name] = {
                        "partition": p,
                        "events": state.sequence,
                        "agents_active": sum(1 for a in state.agents.values() if a.active),
                        "agents_total": len(state.agents),
                        "tasks": dict(sorted(statuses.items())),
                    }
        return {"events": total, "seconds": round(seconds, 6),
                "events_per_s": round(total / seconds, 1) if seconds > 0 else 0.0,
                **({"snapshot_positions": used, "snapshot_seconds": round(loading, 6)}
                   if from_snapshot else {}),
                **({"until": last} if until is not None else {}),
                "pools": {k: v for k, v in sorted(pools.items()) if pool is None or k == pool}}

    with log_errors(settings.broker):
        result = run(go())
    if pool is not None and not result["pools"]:
        fail(f"pool {pool!r} has no events in this log")  # not silence: a mistyped pool is no empty one
    if as_json:
        click.echo(dumps(result))
        return
    click.echo(f"replayed {result['events']} events in {result['seconds']:.3f} s "
               f"({result['events_per_s']:,.0f} events/s)")
    if until is not None:
        click.echo("as of position " + ", ".join(f"{p}:{at}" for p, at in result["until"].items()))
    for p, at in result.get("snapshot_positions", {}).items():
        click.echo(f"partition {p}: " + ("no usable snapshot, replayed from 0" if at is None
                                         else f"from the snapshot at position {at}"))
    if "snapshot_seconds" in result:
        click.echo(f"finding, checking and loading the snapshots took {result['snapshot_seconds']:.3f} s")
    for name, p in result["pools"].items():
        tasks = ", ".join(f"{k} {v}" for k, v in p["tasks"].items()) or "none"
        click.echo(f"pool {name}: {p['agents_active']} agents active ({p['agents_total']} registered); "
                   f"tasks: {tasks}")


# --- contracts ----------------------------------------------------------------------------------


@click.group("contracts")
def contracts_group() -> None:
    """Publish the public contracts."""


@contracts_group.command("export")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
def contracts_export(directory: Path) -> None:
    """Write one JSON Schema per command and event type, the workflow definition's
    (workflow-definition.json: what `agentbus workflow validate` checks), the executors file's
    (executors.json), plus index.json."""
    directory.mkdir(parents=True, exist_ok=True)
    index = []
    for name, schema in sorted(REGISTRY.json_schemas().items()):
        (directory / f"{name}.json").write_bytes(orjson.dumps(schema, option=orjson.OPT_INDENT_2))
        contract = REGISTRY[name]
        index.append({"type": name, "kind": contract.kind, "version": contract.version,
                      "dataschema": contract.dataschema, "file": f"{name}.json"})
    from contracts.workflows import WorkflowDefinition

    definition = WorkflowDefinition.model_json_schema()
    definition["$id"] = "urn:agentbus:schema:WorkflowDefinition:1"
    (directory / "workflow-definition.json").write_bytes(orjson.dumps(definition, option=orjson.OPT_INDENT_2))
    from contracts.executors import ExecutorsFile

    executors = ExecutorsFile.model_json_schema()
    executors["$id"] = "urn:agentbus:schema:ExecutorsFile:1"
    (directory / "executors.json").write_bytes(orjson.dumps(executors, option=orjson.OPT_INDENT_2))
    (directory / "index.json").write_bytes(orjson.dumps(
        {"types": index, "definitions": [{"name": "WorkflowDefinition", "file": "workflow-definition.json"},
                                         {"name": "ExecutorsFile", "file": "executors.json"}]},
        option=orjson.OPT_INDENT_2))
    click.echo(f"wrote {len(index) + 2} schemas and index.json to {directory}")
