"""``agentbus bench``: run the fixed scenario (``services.bench.scenario``) and print its figures.

Takes the deployment settings every command takes; the log and read models default to fresh
files in a temporary directory, and on Kafka each run's topics and consumer groups are its own,
nested under the deployment's topic prefix and app id (``services.bench.scenario.run_namespace``).

This module must never measure anything itself: it builds the settings and prints the result.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import click

from services.cli.common import fail, load_settings, setting_option


@click.command("bench")
@click.option("--agents", default=1000, show_default=True, help="Agents registered.")
@click.option("--tasks", default=50_000, show_default=True, help="Tasks through submit->assign->complete.")
@click.option("--rate", default=1000.0, show_default=True, help="Offered commands/s in the latency phase.")
@click.option("--paced-seconds", default=5.0, show_default=True, help="Length of the latency phase.")
@click.option("--http/--no-http", default=True, show_default=True, help="Also measure the HTTP path.")
@click.option("--http-requests", default=20_000, show_default=True)
@click.option("--http-clients", default=64, show_default=True)
@setting_option("broker")
@setting_option("database")
@setting_option("topic_prefix")
@setting_option("app_id")
@setting_option("partitions")
@click.option("--workers", default=0, show_default=True,
              help="Kafka: separate `agentbus worker` processes (0: one worker in the bench process).")
@click.option("--raw-records", default=200_000, show_default=True,
              help="Kafka: records the raw aiokafka producer->consumer baseline moves.")
@click.option("--coordinator-agents", default=0, show_default=True,
              help="Also time the coordinator's decision per assignment, per strategy, at this many "
                   "agents (e.g. 10000); 0 skips it.")
@click.option("--workflows", default=0, show_default=True,
              help="Instead of the task scenario: this many diamond workflow runs (1 -> 3 parallel -> 1), "
                   "steps/s and step transition latency, beside the same steps as plain tasks.")
@click.option("--workflow-rate", default=200.0, show_default=True,
              help="Offered steps/s in the workflows' latency phase.")
@click.option("--executor", "executor_kind", type=click.Choice(["http"]),
              help="Instead of the task scenario: --tasks tasks through the http_api executor against a "
                   "local server (default 2,000), beside raw httpx calls to it; --rate is the offered "
                   "tasks/s of the added-latency phase (default 200).")
@click.option("--capacity", default=8, show_default=True, help="--executor: the executor's concurrent calls.")
@click.option("--processes", default=1, show_default=True, type=click.IntRange(1, 16),
              help="--executor: worker processes of the second executor run (the first calls from the "
                   "host's process).")
@click.option("--subscribers", default=0, show_default=True,
              help="Instead of the task scenario: this many WebSocket subscribers to `events` while --rate "
                   "commands/s of it run for --paced-seconds: events/s delivered, append->delivery p99.")
@click.option("--subscriber-processes", default=2, show_default=True,
              help="--subscribers: client processes the subscribers are spread over.")
@click.option("--subscriber-batch/--no-subscriber-batch", default=True, show_default=True,
              help="--subscribers: ask for batched frames (several messages per frame) or one per message.")
@click.option("--subscriber-compression", type=click.Choice(["lz4", "none"]), default="lz4",
              show_default=True,
              help="--subscribers: ask for the frames that carry events lz4-compressed (binary frames) or "
                   "as text.")
@click.option("--subscriber-parser", type=click.Choice(["simdjson", "orjson"]), default="simdjson",
              show_default=True,
              help="--subscribers: how the clients read a frame: simdjson parses it whole and reads each "
                   "message's type, partition and position; orjson builds every message as Python objects.")
@click.option("--audit", is_flag=True,
              help="Only the audit figures: appends/s with and without the hash chain (same run), "
                   "and how fast a log and its export verify.")
@click.option("--audit-records", default=300_000, show_default=True, help="--audit: records appended.")
@click.option("--compare", is_flag=True,
              help="Instead of the task scenario: the scenario beside the same one on the eventsourcing "
                   "library (commands/s, replay events/s), and `agentbus serve` beside a bare FastAPI "
                   "endpoint under the same wrk load, POST /v1/tasks then GET /v1/tasks/{id} "
                   "(requests/s, p50/p99); prints each ratio.")
@click.option("--wrk-options", default="-t2 -c64 -d10s", show_default=True,
              help="--compare: the wrk options of every HTTP run.")
@click.option("--loop", type=click.Choice(["served", "asyncio"]), default="served", show_default=True,
              help="The event loop the in-process runtime runs on: the one `agentbus serve` runs on "
                   "(uvloop, installed with agentbus), or the standard library's.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def bench_command(agents: int, tasks: int, rate: float, paced_seconds: float, http: bool,
                  http_requests: int, http_clients: int, broker: str | None, database: str | None,
                  topic_prefix: str | None, app_id: str | None, partitions: int | None, workers: int,
                  raw_records: int, coordinator_agents: int, workflows: int, workflow_rate: float,
                  executor_kind: str | None, capacity: int, processes: int, subscribers: int,
                  subscriber_processes: int,
                  subscriber_batch: bool, subscriber_compression: str, subscriber_parser: str, audit: bool,
                  audit_records: int, compare: bool, wrk_options: str,
                  loop: str, as_json: bool) -> None:
    """Run the fixed benchmark scenario and report throughput, latency, replay and memory.

    The log and read models default to fresh SQLite files in a temporary directory; a SQLite log
    that already holds records is refused (the embedded runner has no topic prefix). On Kafka
    (--broker kafka://...) each run uses topics and consumer groups of its own, nested under the
    deployment's --topic-prefix and --app-id (reported as topic_prefix and app_id), so a run never
    touches a deployment's topics nor another run's. It also moves the same number of records with
    a raw aiokafka producer -> consumer on the same broker and reports the ratio (the client's limit).
    """
    from services.bench.scenario import UsedLog, measure
    from services.runtime.embedded import tune_gc

    tune_gc()  # as `agentbus serve` does
    tmp = Path(tempfile.mkdtemp(prefix="agentbus-bench-"))
    try:
        # Flags over AGENTBUS_* over the defaults, as every command; the data always in a fresh directory.
        settings = load_settings(data_dir=tmp, broker=broker, database=database, partitions=partitions,
                                 topic_prefix=topic_prefix, app_id=app_id)
        if workflows > 0:
            _workflows(settings, workflows, workflow_rate, paced_seconds, workers, loop, as_json)
            return
        if subscribers > 0:
            _subscribers(settings, subscribers, subscriber_processes, subscriber_batch,
                         subscriber_compression, subscriber_parser, rate, paced_seconds, loop, as_json)
            return
        if audit:
            _audit(tmp, audit_records, as_json)
            return
        if compare:
            _compare(settings, tmp, agents, tasks, rate, paced_seconds, wrk_options, loop, as_json)
            return
        if executor_kind is not None:
            explicit = click.get_current_context().get_parameter_source
            default = click.core.ParameterSource.DEFAULT
            _executor(settings, tasks if explicit("tasks") != default else 2000, capacity, processes,
                      rate if explicit("rate") != default else 200.0, paced_seconds, loop, as_json)
            return
        result = measure(settings, tmp, agents=agents, tasks=tasks, rate=rate, paced_seconds=paced_seconds,
                         workers=workers, http=http, http_requests=http_requests, http_clients=http_clients,
                         raw_records=raw_records, coordinator_agents=coordinator_agents, loop=loop)
    except UsedLog as exc:
        fail(str(exc))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if as_json:
        click.echo(json.dumps(result))
        return
    click.echo(f"backend           {result['broker']} (event loop: {result['loop']})")
    if "topic_prefix" in result:
        click.echo(f"topics            {result['topic_prefix']}* (app id {result['app_id']})")
    click.echo(f"scenario          {agents} agents, {tasks} tasks, {result['commands']} commands")
    click.echo(f"throughput        {result['commands_per_s']:,.0f} commands/s end to end "
               f"({result['seconds']} s, read models caught up)")
    click.echo(f"submit->assigned  p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms at "
               f"{rate:,.0f} commands/s offered (saturated: p50 {result['saturated_p50_ms']} ms, "
               f"p99 {result['saturated_p99_ms']} ms)")
    click.echo(f"replay            {result['replay_events_per_s']:,.0f} events/s "
               f"({result['replay_events']} events)")
    if "restart_s" in result:
        click.echo(f"restart           {result['restart_s']} s from `agentbus serve` to /v1/health 200 "
                   f"on the scenario's log ({result['replay_events']} events; the first start on it: "
                   f"{result['first_start_s']} s)")
    click.echo(_peak_rss(result))
    if "raw_records_per_s" in result:
        click.echo(f"raw aiokafka      {result['raw_records_per_s']:,.0f} records/s producer->consumer; "
                   f"agentbus moves 2 records per command (command + event): "
                   f"{result['ratio_to_raw']:.0%} of the raw rate")
    if "http_commands_per_s" in result:
        click.echo(f"HTTP              {result['http_commands_per_s']:,.0f} commands/s with "
                   f"{http_clients} clients (p50 {result['http_p50_ms']} ms, p99 {result['http_p99_ms']} ms, "
                   f"{result['http_errors']} errors)")
    for row in result.get("coordinator", []):
        click.echo(f"decision time     {row['strategy']:<21} p50 {row['p50_us']:7.1f} us, "
                   f"p99 {row['p99_us']:7.1f} us per assignment at {coordinator_agents:,} agents")


def _audit(scratch: Path, records: int, as_json: bool) -> None:
    from services.bench.audit import bench_audit

    result = bench_audit(scratch, records)
    if as_json:
        click.echo(json.dumps(result))
        return
    click.echo(f"scenario          {result['records']:,} records appended {result['batch']} per append "
               f"to one SQLite partition, chained and unchained logs alternating")
    for key, label in (("durable", "durable (fsync)"), ("no_fsync", "no fsync")):
        r = result[key]
        click.echo(f"{label:<17} chained {r['chained_appends_per_s']:,.0f} records/s "
                   f"(p50 {r['chained_p50_ms']} ms, p99 {r['chained_p99_ms']} ms per append); unchained "
                   f"{r['unchained_appends_per_s']:,.0f} records/s (p50 {r['unchained_p50_ms']} ms, p99 "
                   f"{r['unchained_p99_ms']} ms): chain cost {r['chain_cost']:.1%} (target <= 10%)")
    v = result["verify"]
    click.echo(f"audit verify      {v['log_events_per_s']:,.0f} events/s over the log with {v['processes']} "
               f"processes ({v['log_one_process_events_per_s']:,.0f} with one, x{v['log_speedup']}); "
               f"{v['export_events_per_s']:,.0f} over its lz4 export "
               f"({v['export_one_process_events_per_s']:,.0f} with one, x{v['export_speedup']}); "
               f"ok: {v['ok']}; target >= 500,000")
    click.echo(_peak_rss(result))


def _compare(settings: Any, scratch: Path, agents: int, tasks: int, rate: float, paced_seconds: float,
             wrk_options: str, loop: str, as_json: bool) -> None:
    from services.bench.compare import compare

    result = compare(settings, scratch, agents=agents, tasks=tasks, rate=rate, paced_seconds=paced_seconds,
                     wrk_options=wrk_options, loop=loop)
    if as_json:
        click.echo(json.dumps(result))
        if "skipped" in result["http"]:
            click.echo(result["http"]["skipped"], err=True)
        return
    ours, peer, http = result["agentbus"], result["peer"], result["http"]
    click.echo(f"scenario          {agents} agents, {tasks} tasks, {ours['commands']} commands; "
               f"{result['cpus']} CPUs, load average {result['load_average_at_start'][0]} at the start")
    backend = ours["broker"].split(":")[0]
    click.echo(f"end to end        agentbus {ours['commands_per_s']:,.0f} commands/s ({backend}), "
               f"{peer['library']} {peer['commands_per_s']:,.0f} commands/s (SQLite): "
               f"ratio {result['end_to_end_ratio']} (agentbus / peer)")
    click.echo(f"replay            agentbus {ours['replay_events_per_s']:,.0f} events/s "
               f"({ours['replay_events']} events), peer {peer['replay_events_per_s']:,.0f} events/s "
               f"({peer['replay_events']} events): ratio {result['replay_ratio']} (agentbus / peer)")
    if "restart_s" in ours:
        click.echo(f"restart           agentbus {ours['restart_s']} s from `agentbus serve` to "
                   f"/v1/health 200 on the scenario's log ({ours['replay_events']} events; the first "
                   f"start on it: {ours['first_start_s']} s)")
    if "skipped" in http:
        click.echo(f"HTTP              skipped: {http['skipped']}")
        return
    _http_pair(http, "agentbus", "bare", "HTTP ", "http_ratio", "POST /v1/tasks")
    _http_pair(http, "agentbus_read", "bare_read", "HTTP read ", "read_ratio", f"GET {http['read_path']}")


def _http_pair(http: dict[str, Any], ours: str, bare: str, prefix: str, ratio: str, what: str) -> None:
    """Two wrk runs, agentbus's and the bare endpoint's, and their ratio."""
    for name, label in ((ours, "agentbus"), (bare, "bare FastAPI")):
        row = http[name]
        click.echo(f"{prefix + label:<17} {row['requests_per_s']:,.0f} requests/s, p50 {row['p50_ms']} ms, "
                   f"p99 {row['p99_ms']} ms ({row['errors']} errors, {row['non_2xx']} not 2xx)")
    click.echo(f"{prefix + 'ratio':<17} {http[ratio]} (agentbus / bare; wrk {http['wrk_options']}, {what})")


def _workflows(settings: Any, workflows: int, rate: float, paced_seconds: float, workers: int, loop: str,
               as_json: bool) -> None:
    import asyncio

    from services.bench.scenario import loop_name, refuse_a_used_log, run_on
    from services.bench.workflows import bench_workflows

    if not settings.kafka:
        asyncio.run(refuse_a_used_log(settings))
    result = run_on(loop, bench_workflows(settings, workflows, rate=rate, paced_seconds=paced_seconds,
                                          workers=workers))
    result["broker"] = settings.broker.split("?")[0]
    result["loop"] = loop_name(loop)
    if as_json:
        click.echo(json.dumps(result))
        return
    click.echo(f"backend           {result['broker']} (event loop: {result['loop']})")
    click.echo(f"scenario          {workflows} diamond workflows (1 -> 3 parallel -> 1), "
               f"{result['steps']} steps, {result['agents']} agents")
    click.echo(f"throughput        {result['steps_per_s']:,.0f} steps/s end to end ({result['seconds']} s, "
               f"read models caught up); the same steps as plain tasks {result['plain_tasks_per_s']:,.0f}/s "
               f"(ratio {result['steps_to_plain_ratio']:.2f})")
    click.echo(f"transition        p50 {result['transition_p50_ms']} ms, "
               f"p99 {result['transition_p99_ms']} ms (predecessor TaskCompleted -> successor TaskAssigned) "
               f"at {rate:,.0f} steps/s offered "
               f"(saturated: p50 {result['saturated_transition_p50_ms']} ms, "
               f"p99 {result['saturated_transition_p99_ms']} ms)")
    click.echo(_peak_rss(result))


def _executor(settings: Any, tasks: int, capacity: int, processes: int, rate: float, paced_seconds: float,
              loop: str, as_json: bool) -> None:
    from services.bench.executors import bench_executor, queueing_note
    from services.bench.scenario import loop_name, run_on

    if settings.kafka:
        fail("--executor runs on the embedded log (the executor's cost is what it measures)")
    result = run_on(loop, bench_executor(settings, tasks, capacity=capacity, rate=rate,
                                         paced_seconds=paced_seconds, processes=processes))
    result["loop"] = loop_name(loop)
    if as_json:
        click.echo(json.dumps(result))
        return
    click.echo(f"scenario          {tasks} GET calls, http_api executor of capacity {capacity}, "
               f"stand-in server in its own process (event loop: {result['loop']})")
    click.echo(f"raw httpx2        {result['raw_calls_per_s']:,.0f} calls/s; at {rate:,.0f}/s p50 "
               f"{result['raw_p50_ms']} ms, p99 {result['raw_p99_ms']} ms (the executor's client)")
    click.echo(f"raw httpx         {result['raw_httpx_calls_per_s']:,.0f} calls/s; at {rate:,.0f}/s p50 "
               f"{result['raw_httpx_p50_ms']} ms, p99 {result['raw_httpx_p99_ms']} ms")
    for run in result["runs"]:
        where = (f"calls in {run['processes']} worker process{'es' if run['processes'] > 1 else ''}"
                 if run["processes"] else "calls in the host's process")
        click.echo(f"executor          {where}: {run['tasks_per_s']:,.0f} tasks/s end to end "
                   f"({run['seconds']} s, {run['failed']} failed): {run['ratio_to_raw']:.0%} of raw httpx2, "
                   f"{run['ratio_to_raw_httpx']:.0%} of raw httpx")
        click.echo(f"  added latency   p50 {run['added_p50_ms']} ms, p99 {run['added_p99_ms']} ms at "
                   f"{rate:,.0f} tasks/s offered (submit -> completed minus the call; whole task p50 "
                   f"{run['task_p50_ms']} ms, p99 {run['task_p99_ms']} ms)")
        cyc = run["cycle"]
        click.echo(f"  a slot's cycle  p50 {cyc['cycle_ms']} ms saturated: assignment decided "
                   f"{cyc['assignment_decided_ms']}, seen and called {cyc['seen_and_called_ms']}, call "
                   f"{cyc['call_ms']}, reported {cyc['reported_ms']}, decided {cyc['report_decided_ms']} ms; "
                   f"completion -> next assignment {cyc['next_assignment_ms']} ms")
        note = queueing_note(run["offered_load"])
        if note is not None:
            click.echo(f"  note            {note}")
    click.echo(_peak_rss(result))


def _subscribers(settings: Any, subscribers: int, processes: int, batch: bool, compression: str, parser: str,
                 rate: float, seconds: float, loop: str, as_json: bool) -> None:
    import asyncio
    import importlib.util

    from services.bench.scenario import loop_name, refuse_a_used_log, run_on
    from services.bench.subscribers import bench_subscribers

    if parser == "simdjson" and importlib.util.find_spec("simdjson") is None:
        fail("--subscriber-parser simdjson needs pysimdjson (pip install pysimdjson; it comes with "
             "agentbus[dev]), or read the frames with --subscriber-parser orjson")
    if not settings.kafka:
        asyncio.run(refuse_a_used_log(settings))
    result = run_on(loop, bench_subscribers(settings, subscribers, rate=rate, seconds=seconds,
                                            processes=max(1, min(processes, subscribers)), batch=batch,
                                            compression=compression, parser=parser))
    result["loop"] = loop_name(loop)
    if as_json:
        click.echo(json.dumps(result))
        return
    click.echo(f"backend           {result['broker']}")
    frames = "batched frames" if batch else "a frame per message"
    frames += ", lz4" if compression == "lz4" else ", text"
    click.echo(f"scenario          {subscribers} WebSocket subscribers to `events` ({frames}, read with "
               f"{parser}, {result['subscriber_processes']} client processes); {rate:,.0f} commands/s "
               f"offered for "
               f"{result['load_seconds']} s: "
               f"{result['events']} events ({result['events_appended_per_s']:,.0f}/s appended); "
               f"{result['tasks_completed']} of {result['commands'] // 4} tasks completed in "
               f"{result['run_seconds']} s")
    click.echo(f"delivered         {result['delivered_per_subscriber_per_s']:,.0f} events/s per subscriber "
               f"(slowest {result['delivered_per_subscriber_min_per_s']:,.0f}), "
               f"{result['delivered_per_s']:,.0f} events/s overall; {result['complete_subscribers']} of "
               f"{subscribers} got every event, "
               f"{result['lagged']} lagged")
    click.echo(f"append->delivery  p50 {result['latency_p50_ms']} ms, p99 {result['latency_p99_ms']} ms, "
               f"max {result['latency_max_ms']} ms (event appended -> received; from the command's "
               f"append: p50 {result['command_to_delivery_p50_ms']} ms, "
               f"p99 {result['command_to_delivery_p99_ms']} ms)")
    click.echo(f"frames            {result['frames_per_subscriber_per_s']:,.0f}/s per subscriber, "
               f"{result['events_per_frame']:,.1f} events each; the server built {result['frames_built']:,} "
               f"and sent {result['frames_reused']:,} again as built")
    projector = ("" if result["projector_cpu_s"] is None
                 else f"; the projector process {result['projector_cpu_s']} s")
    click.echo(f"CPU               service, hub and API {result['server_cpu_s']} s{projector}; subscribers "
               f"{result['clients_cpu_s']} s, {result['clients_cpu_us_per_event']} us per event delivered "
               f"({result['cpus']} CPUs)")
    click.echo(_peak_rss(result, " (the bench process: service, hub and API)"))


def _peak_rss(result: dict[str, Any], what: str = "") -> str:
    """The peak RSS line: the bench process, and the projector's own process when it ran in one."""
    line = f"peak RSS          {result['peak_rss_mb']} MB{what}"
    projector = result.get("projector_peak_rss_mb") or 0.0
    if projector:
        line += f" + {projector} MB the projector process = {result['peak_rss_mb'] + projector:.1f} MB"
    if result.get("peak_rss_with_replay_mb", 0.0) > result["peak_rss_mb"]:
        line += (f"; the bench's replay (a second decider state beside the service's) then took this "
                 f"process to {result['peak_rss_with_replay_mb']} MB")
    return line
