"""The ``agentbus`` command line: run the service, talk to a running one, and operate its log.

``serve`` runs the HTTP API with the embedded runner. Entity commands (``agent``, ``task``,
``cost``, ``send``) are HTTP clients of a running server. ``events``, ``projections``,
``replay`` and ``contracts`` work on the log, the read models and the contracts directly.

Options fall back to ``AGENTBUS_*`` environment variables; flags win. This module must never
decide or project anything itself: it only calls the runner, the API, ``events.export`` and
``projections.rebuild``, so the CLI and the service cannot disagree about the rules.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
import httpx
import orjson

from contracts import REGISTRY
from events import EventLog, LogError, UnknownTopic, open_log, partition_for
from events.codec import envelope_dict, from_record
from services.bench.scenario import bench_command
from services.runtime.settings import Settings
from services.runtime.topics import EVENTS

T = TypeVar("T")

DEFAULT_URL = "http://127.0.0.1:8080"
# Long enough for the server's longest outcome wait (60 s) plus the round trip.
HTTP_TIMEOUT_S = 75.0


def _run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def _dumps(obj: Any, *, indent: bool = False) -> str:
    return orjson.dumps(obj, option=orjson.OPT_INDENT_2 if indent else 0).decode()


def _settings(data_dir: Path | None = None, broker: str | None = None, database: str | None = None,
              partitions: int | None = None) -> Settings:
    """Settings from flags; anything not given falls back to AGENTBUS_* and then the defaults."""
    kwargs: dict[str, Any] = {"broker": broker or "", "database": database or ""}
    if data_dir is not None:
        kwargs["data_dir"] = data_dir
    if partitions is not None:
        kwargs["partitions"] = partitions
    return Settings(**kwargs)


def _fail(message: str) -> NoReturn:
    click.echo(f"agentbus: {message}", err=True)
    sys.exit(1)


_data_dir = click.option("--data-dir", type=click.Path(path_type=Path), envvar="AGENTBUS_DATA",
                         show_envvar=True, help="Directory of the default SQLite log and read models.")
_broker = click.option("--broker", envvar="AGENTBUS_BROKER", show_envvar=True,
                       help="Log URL: sqlite:///path/log.db or kafka://host:9092.")
_database = click.option("--database", envvar="AGENTBUS_DATABASE", show_envvar=True,
                         help="Read-model URL: sqlite+aiosqlite:///path/read.db or postgresql+asyncpg://...")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="agentbus")
def main() -> None:
    """agentbus: an event-sourced control plane for fleets of AI agents."""


# --- serve --------------------------------------------------------------------------------------


_topic_prefix = click.option("--topic-prefix", envvar="AGENTBUS_TOPIC_PREFIX", show_envvar=True, default="",
                             help="Kafka: prefix of the topic names (several deployments on one broker).")
_app_id = click.option("--app-id", envvar="AGENTBUS_APP_ID", show_envvar=True, default="agentbus",
                       show_default=True,
                       help="Kafka: the Faust app id (its consumer group; ours derive from it).")
_session_timeout = click.option("--session-timeout", envvar="AGENTBUS_SESSION_TIMEOUT", show_envvar=True,
                                type=click.FloatRange(min=1), default=10.0, show_default=True,
                                help="Kafka: seconds of silence before a worker's partitions move to others.")
_partitions = click.option("--partitions", envvar="AGENTBUS_PARTITIONS", show_envvar=True,
                           type=click.IntRange(min=1),
                           help="Partitions of new topics (existing topics keep theirs).")


@main.command()
@click.option("--host", envvar="AGENTBUS_HOST", show_envvar=True, default="127.0.0.1", show_default=True)
@click.option("--port", envvar="AGENTBUS_PORT", show_envvar=True, type=int, default=8080, show_default=True)
@_data_dir
@_broker
@_database
@_partitions
@click.option("--no-worker", is_flag=True,
              help="Kafka: only the API; deciders, coordinator and projector run in `agentbus worker`.")
@_topic_prefix
@_app_id
@_session_timeout
@click.option("--scaling-webhook", envvar="AGENTBUS_SCALING_WEBHOOK", show_envvar=True,
              help="POST each ScalingDecided event (a CloudEvent) to this URL, at least once.")
@click.option("--access-log/--no-access-log", envvar="AGENTBUS_ACCESS_LOG", show_envvar=True, default=False,
              show_default=True, help="Log every HTTP request (costs throughput; the event log is the audit).")
def serve(host: str, port: int, data_dir: Path | None, broker: str | None, database: str | None,
          partitions: int | None, no_worker: bool, topic_prefix: str, app_id: str,
          session_timeout: float, scaling_webhook: str | None, access_log: bool) -> None:
    """Run the HTTP API with the embedded runner, or on Kafka with an in-process Faust worker.

    Exits with status 1, naming the cause, when the runner fails (e.g. a corrupt log record).
    """
    import uvicorn

    from services.http.app import Service, create_app
    from services.runtime.embedded import Runner, tune_gc
    from services.runtime.topics import Topics

    if scaling_webhook and not scaling_webhook.startswith(("http://", "https://")):
        _fail(f"--scaling-webhook must be an http:// or https:// URL, not {scaling_webhook!r}")
    tune_gc()
    settings = _settings(data_dir, broker, database, partitions)
    settings.host, settings.port = host, port
    factory: Callable[[Settings], Service] | None = None
    if settings.broker.startswith("kafka:"):
        if scaling_webhook:
            _fail("--scaling-webhook runs with the embedded runner only; on Kafka, consume "
                  "ScalingDecided from the events topic")
        _logging()

        def factory(s: Settings) -> Service:
            from services.runtime.cluster import ClusterService

            return ClusterService(s, worker=not no_worker, topics=Topics.prefixed(topic_prefix),
                                  app_id=app_id, session_timeout=session_timeout)
    elif no_worker:
        _fail("--no-worker needs a kafka:// broker (the embedded runner is one process)")
    else:
        def factory(s: Settings) -> Service:
            return Runner(s, scaling_webhook=scaling_webhook)
    app = create_app(settings=settings, open_service=factory)
    # loop/http "auto": uvloop and httptools when installed (they are dependencies), which cut
    # the per-request cost of the event loop and the HTTP parser several times over.
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="info", lifespan="on",
                                           access_log=access_log, loop="auto", http="auto"))

    def stop_server(exc: BaseException) -> None:
        # A dead worker means stale reads and undecided commands: stop serving rather than lie.
        server.should_exit = True

    app.state.on_runner_failure = stop_server
    exit_code: object = 0
    try:
        server.run()
    except SystemExit as exc:  # uvicorn exits with its own code when startup fails
        exit_code = exc.code
    runner = getattr(app.state, "runner", None)
    failure = getattr(runner, "failure", None) or getattr(app.state, "startup_error", None)
    if failure is not None:
        _fail(f"the service stopped: {failure}")
    if exit_code not in (0, None):
        _fail(f"the server did not start on {host}:{port} (exit code {exit_code})")


def _logging() -> None:
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("aiokafka", "faust", "mode"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@main.command()
@_data_dir
@_broker
@_database
@_partitions
@_topic_prefix
@_app_id
@_session_timeout
def worker(data_dir: Path | None, broker: str | None, database: str | None, partitions: int | None,
           topic_prefix: str, app_id: str, session_timeout: float) -> None:
    """Run a Faust worker: deciders, coordinator and projector for the partitions Kafka gives it.

    Start as many as there are partitions; Kafka's group protocol spreads the partitions over them
    and moves them when one stops or dies. Stops on SIGTERM/SIGINT.
    """
    import signal

    from services.runtime.cluster import FaustWorker
    from services.runtime.embedded import tune_gc
    from services.runtime.topics import Topics

    settings = _settings(data_dir, broker, database, partitions)
    if not settings.broker.startswith("kafka:"):
        _fail(f"agentbus worker needs a kafka:// broker (got {settings.broker!r}); "
              "the embedded default runs everything in `agentbus serve`")
    tune_gc()
    _logging()

    async def go() -> None:
        w = FaustWorker(settings, topics=Topics.prefixed(topic_prefix), app_id=app_id,
                        session_timeout=session_timeout)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await w.start()
            click.echo(f"agentbus worker {app_id} running on {settings.broker}", err=True)
            waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(w.failed.wait())]
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for t in waits:
                t.cancel()
        finally:
            await w.stop()
        if w.failure is not None:
            raise w.failure

    try:
        with _log_errors(settings.broker):
            _run(go())
    except LogError:
        raise
    except Exception as exc:
        _fail(f"the worker stopped: {exc}")


# --- HTTP clients of a running server -----------------------------------------------------------


def _client_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--url", envvar="AGENTBUS_URL", show_envvar=True, default=DEFAULT_URL,
                      show_default=True, help="Base URL of a running agentbus server.")(fn)
    fn = click.option("--pool", envvar="AGENTBUS_POOL", show_envvar=True, default="default",
                      show_default=True, help="Pool the command or query is about.")(fn)
    return fn


def _json_arg(text: str | None, what: str) -> Any:
    if text is None:
        return None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint=what) from None


def _transport() -> httpx.BaseTransport | None:
    """A transport the caller injected through ``obj={"transport": ...}`` (tests), else the network."""
    ctx = click.get_current_context(silent=True)
    obj = ctx.find_object(dict) if ctx is not None else None
    transport = obj.get("transport") if obj else None
    return transport if isinstance(transport, httpx.BaseTransport) else None


def _request(url: str, method: str, path: str, *, params: dict[str, Any] | None = None,
             body: dict[str, Any] | None = None) -> None:
    """Send one request, print the JSON answer; exit 1 with the server's message on 4xx/5xx."""
    query = {k: v for k, v in (params or {}).items() if v is not None}
    try:
        with httpx.Client(base_url=url, timeout=HTTP_TIMEOUT_S, transport=_transport()) as client:
            resp = client.request(method, path, params=query, json=body)
    except httpx.HTTPError as exc:
        _fail(f"cannot reach agentbus at {url}: {exc}")
    try:
        payload: Any = resp.json()
    except ValueError:
        payload = resp.text
    click.echo(_dumps(payload, indent=True))
    if resp.status_code >= 400:
        _fail(f"HTTP {resp.status_code}: {_message(payload)}")


def _message(payload: Any) -> str:
    if isinstance(payload, dict):
        if "code" in payload:
            return f"{payload['code']}: {payload.get('message', '')}"
        detail = payload.get("detail")
        if isinstance(detail, list):
            return "; ".join(f"{'.'.join(map(str, d.get('loc', [])))}: {d.get('msg')}" for d in detail)
        if detail is not None:
            return str(detail)
    return str(payload)[:500]


def _write(url: str, method: str, path: str, body: dict[str, Any] | None, pool: str,
           command_id: str | None = None) -> None:
    body = {k: v for k, v in (body or {}).items() if v is not None}
    body["pool"] = pool
    if command_id is not None:
        body["command_id"] = command_id
    _request(url, method, path, params={"wait": "true"}, body=body)


@main.group()
def agent() -> None:
    """Register, list, inspect and remove agents (talks to a running server)."""


@agent.command("register")
@click.argument("name")
@click.option("--capability", "-c", "capabilities", multiple=True, help="A capability (repeatable).")
@click.option("--capacity", type=click.IntRange(min=1), default=1, show_default=True,
              help="Tasks it can hold at once.")
@click.option("--kind", default="generic", show_default=True)
@click.option("--id", "agent_id", help="Agent id (default: generated).")
@click.option("--heartbeat-timeout", type=float,
              help="Seconds without a heartbeat before it is presumed gone.")
@click.option("--metadata", help="JSON object of extra facts about the agent.")
@click.option("--command-id", help="Idempotency key: a repeat returns the first outcome.")
@_client_options
def agent_register(name: str, capabilities: tuple[str, ...], capacity: int, kind: str, agent_id: str | None,
                   heartbeat_timeout: float | None, metadata: str | None, command_id: str | None, url: str,
                   pool: str) -> None:
    """Register an agent called NAME."""
    _write(url, "POST", "/v1/agents", {
        "agent_id": agent_id, "name": name, "kind": kind, "capabilities": list(capabilities),
        "capacity": capacity,
        "heartbeat_timeout_s": heartbeat_timeout, "metadata": _json_arg(metadata, "--metadata"),
    }, pool, command_id)


@agent.command("list")
@click.option("--status", type=click.Choice(["active", "deregistered"]))
@_client_options
def agent_list(status: str | None, url: str, pool: str) -> None:
    """List the pool's agents."""
    _request(url, "GET", "/v1/agents", params={"pool": pool, "status": status})


@agent.command("show")
@click.argument("agent_id")
@_client_options
def agent_show(agent_id: str, url: str, pool: str) -> None:
    """Show one agent."""
    _request(url, "GET", f"/v1/agents/{agent_id}", params={"pool": pool})


@agent.command("heartbeat")
@click.argument("agent_id")
@click.option("--load", type=float)
@click.option("--cpu", type=float)
@click.option("--memory", type=float)
@click.option("--queue", type=int)
@_client_options
def agent_heartbeat(agent_id: str, load: float | None, cpu: float | None, memory: float | None,
                    queue: int | None, url: str, pool: str) -> None:
    """Report AGENT_ID alive."""
    _write(url, "POST", f"/v1/agents/{agent_id}/heartbeat",
           {"load": load, "cpu": cpu, "memory": memory, "queue": queue}, pool)


@agent.command("remove")
@click.argument("agent_id")
@click.option("--reason")
@_client_options
def agent_remove(agent_id: str, reason: str | None, url: str, pool: str) -> None:
    """Deregister AGENT_ID; its unfinished tasks go back to the queue."""
    _request(url, "DELETE", f"/v1/agents/{agent_id}", params={"wait": "true", "pool": pool, "reason": reason})


@agent.command("run")
@click.option("--name", required=True, help="The agent's name.")
@click.option("--capability", "-c", "capabilities", multiple=True, help="A capability (repeatable).")
@click.option("--capacity", type=click.IntRange(min=1), default=1, show_default=True,
              help="Tasks it works at once.")
@click.option("--kind", default="generic", show_default=True, help="Agent kind (what scaling policies name).")
@click.option("--id", "agent_id", help="Agent id (default: generated).")
@click.option("--heartbeat-s", type=click.FloatRange(min=0.05), default=5.0, show_default=True,
              help="Seconds between heartbeats (the server presumes it gone after three missed).")
@click.option("--work-s", type=click.FloatRange(min=0), default=0.1, show_default=True,
              help="Seconds each task takes.")
@click.option("--fail-rate", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Share of tasks it fails.")
@click.option("--model", default="gpt-4o-mini", show_default=True, help="Model whose cost each task records.")
@click.option("--input-tokens", type=click.IntRange(min=0), default=500, show_default=True)
@click.option("--output-tokens", type=click.IntRange(min=0), default=200, show_default=True)
@click.option("--seed", type=int, help="Seed of the simulated failures (default: random).")
@_client_options
def agent_run(name: str, capabilities: tuple[str, ...], capacity: int, kind: str, agent_id: str | None,
              heartbeat_s: float, work_s: float, fail_rate: float, model: str, input_tokens: int,
              output_tokens: int, seed: int | None, url: str, pool: str) -> None:
    """Run a local agent process: register (its id is printed), heartbeat, work assigned tasks.

    Stops on SIGTERM/SIGINT: deregisters (its unfinished tasks go back to the queue), exits 0.
    """
    import logging
    import signal

    from services.cli.local_agent import AgentConfig, AgentError, LocalAgent

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    config = AgentConfig(url=url, name=name, capabilities=capabilities, capacity=capacity, kind=kind,
                         pool=pool, agent_id=agent_id, heartbeat_s=heartbeat_s, work_s=work_s,
                         fail_rate=fail_rate, model=model, input_tokens=input_tokens,
                         output_tokens=output_tokens, seed=seed)

    def registered(agent: str) -> None:
        click.echo(agent)  # first line of stdout: the id, for scripts
        sys.stdout.flush()
        click.echo(f"agent {agent} ({name}, kind {kind}, capacity {capacity}) working for {url}", err=True)

    async def go() -> LocalAgent:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        transport = _async_transport()
        async with httpx.AsyncClient(base_url=url, timeout=HTTP_TIMEOUT_S, transport=transport) as client:
            worker = LocalAgent(config, client)
            await worker.run(stop, on_registered=registered)
            return worker

    try:
        worker = _run(go())
    except httpx.HTTPError as exc:
        _fail(f"cannot reach agentbus at {url}: {exc}")
    except AgentError as exc:
        _fail(str(exc))
    click.echo(f"agent {worker.agent_id} deregistered after {worker.completed} completed and "
               f"{worker.failed} failed task(s)", err=True)


def _async_transport() -> httpx.AsyncBaseTransport | None:
    """An async transport the caller injected through ``obj={"async_transport": ...}`` (tests)."""
    ctx = click.get_current_context(silent=True)
    obj = ctx.find_object(dict) if ctx is not None else None
    transport = obj.get("async_transport") if obj else None
    return transport if isinstance(transport, httpx.AsyncBaseTransport) else None


@main.group()
def task() -> None:
    """Submit, list, inspect and drive tasks (talks to a running server)."""


@task.command("submit")
@click.argument("type_", metavar="TYPE")
@click.option("--priority", type=click.IntRange(1, 10), default=5, show_default=True)
@click.option("--require", "-r", "required", multiple=True, help="A required capability (repeatable).")
@click.option("--data", help="JSON object: the task's input.")
@click.option("--id", "task_id", help="Task id (default: generated).")
@click.option("--strategy", help="Assignment strategy hint.")
@click.option("--command-id", help="Idempotency key: a repeat returns the first outcome.")
@_client_options
def task_submit(type_: str, priority: int, required: tuple[str, ...], data: str | None, task_id: str | None,
                strategy: str | None, command_id: str | None, url: str, pool: str) -> None:
    """Submit a task of type TYPE."""
    _write(url, "POST", "/v1/tasks", {
        "task_id": task_id, "type": type_, "priority": priority, "required_capabilities": list(required),
        "data": _json_arg(data, "--data"), "strategy": strategy,
    }, pool, command_id)


@task.command("list")
@click.option("--status",
              type=click.Choice(["queued", "assigned", "running", "completed", "failed", "cancelled"]))
@click.option("--agent", "agent_id")
@click.option("--type", "type_")
@click.option("--page", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--page-size", type=click.IntRange(1, 500), default=50, show_default=True)
@_client_options
def task_list(status: str | None, agent_id: str | None, type_: str | None, page: int, page_size: int,
              url: str, pool: str) -> None:
    """List the pool's tasks, a page at a time."""
    _request(url, "GET", "/v1/tasks", params={"pool": pool, "status": status, "agent_id": agent_id,
                                              "type": type_, "page": page, "page_size": page_size})


@task.command("show")
@click.argument("task_id")
@_client_options
def task_show(task_id: str, url: str, pool: str) -> None:
    """Show one task."""
    _request(url, "GET", f"/v1/tasks/{task_id}", params={"pool": pool})


@task.command("start")
@click.argument("task_id")
@click.option("--agent", "agent_id", help="The agent that holds it (checked by the decider).")
@_client_options
def task_start(task_id: str, agent_id: str | None, url: str, pool: str) -> None:
    """Mark TASK_ID as started by its agent."""
    _write(url, "POST", f"/v1/tasks/{task_id}/start", {"agent_id": agent_id}, pool)


@task.command("complete")
@click.argument("task_id")
@click.option("--agent", "agent_id", help="The agent that holds it (checked by the decider).")
@click.option("--result", help="JSON object: the task's output.")
@_client_options
def task_complete(task_id: str, agent_id: str | None, result: str | None, url: str, pool: str) -> None:
    """Mark TASK_ID as completed."""
    _write(url, "POST", f"/v1/tasks/{task_id}/complete",
           {"agent_id": agent_id, "result": _json_arg(result, "--result")}, pool)


@task.command("fail")
@click.argument("task_id")
@click.option("--agent", "agent_id", help="The agent that holds it (checked by the decider).")
@click.option("--error", default="failed", show_default=True)
@_client_options
def task_fail(task_id: str, agent_id: str | None, error: str, url: str, pool: str) -> None:
    """Mark TASK_ID as failed."""
    _write(url, "POST", f"/v1/tasks/{task_id}/fail", {"agent_id": agent_id, "error": error}, pool)


@task.command("cancel")
@click.argument("task_id")
@click.option("--reason")
@_client_options
def task_cancel(task_id: str, reason: str | None, url: str, pool: str) -> None:
    """Cancel TASK_ID."""
    _write(url, "POST", f"/v1/tasks/{task_id}/cancel", {"reason": reason}, pool)


@main.group()
def cost() -> None:
    """Record costs and read the spend (talks to a running server)."""


@cost.command("record")
@click.option("--agent", "agent_id", required=True)
@click.option("--model", required=True)
@click.option("--input-tokens", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--output-tokens", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--cost-usd", type=click.FloatRange(min=0), help="Default: priced from the model price table.")
@click.option("--task", "task_id")
@click.option("--id", "cost_id", help="Cost id (default: generated).")
@_client_options
def cost_record(agent_id: str, model: str, input_tokens: int, output_tokens: int, cost_usd: float | None,
                task_id: str | None, cost_id: str | None, url: str, pool: str) -> None:
    """Record what one model call cost."""
    _write(url, "POST", "/v1/costs", {
        "cost_id": cost_id, "agent_id": agent_id, "task_id": task_id, "model": model,
        "input_tokens": input_tokens, "output_tokens": output_tokens, "cost_usd": cost_usd,
    }, pool)


@cost.command("summary")
@_client_options
def cost_summary(url: str, pool: str) -> None:
    """Spend by agent, model and task, and the budgets."""
    _request(url, "GET", "/v1/costs/summary", params={"pool": pool})


@main.command()
@click.argument("type_name")
@click.argument("data", default="{}")
@click.option("--command-id", help="Idempotency key: a repeat returns the first outcome.")
@_client_options
def send(type_name: str, data: str, command_id: str | None, url: str, pool: str) -> None:
    """Send any command TYPE_NAME with DATA (a JSON object), e.g. SetBudget '{"limit_usd": 5}'."""
    payload = _json_arg(data, "DATA")
    if not isinstance(payload, dict):
        raise click.BadParameter("must be a JSON object", param_hint="DATA")
    body: dict[str, Any] = {"type": type_name, "data": payload, "pool": pool}
    if command_id is not None:
        body["command_id"] = command_id
    _request(url, "POST", "/v1/commands", params={"wait": "true"}, body=body)


# --- the log ------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _open_log(broker: str) -> Any:
    log = open_log(broker)
    await log.start()
    try:
        yield log
    finally:
        await log.close()


def _log_errors(broker: str) -> contextlib.AbstractContextManager[None]:
    """LogError (corrupt record, missing topic) -> exit 1 naming it, not a traceback."""

    @contextlib.contextmanager
    def handler() -> Iterator[None]:
        try:
            yield
        except UnknownTopic as exc:
            _fail(f"no topic {exc} in {broker}: nothing was written there yet (check --broker/--data-dir)")
        except LogError as exc:
            _fail(str(exc) or type(exc).__name__)

    return handler()


@main.group("events")
def events_group() -> None:
    """Read, export and import the event log directly (no server needed)."""


@events_group.command("tail")
@click.option("--from", "from_offset", type=click.IntRange(min=0), default=0, show_default=True,
              help="First offset to print (in each partition).")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new events until interrupted.")
@click.option("--type", "type_", help="Only events of this type.")
@click.option("--pool", help="Only this pool's events (reads just its partition).")
@_data_dir
@_broker
def events_tail(from_offset: int, follow: bool, type_: str | None, pool: str | None, data_dir: Path | None,
                broker: str | None) -> None:
    """Print events as JSON lines, each with its partition and position."""
    settings = _settings(data_dir, broker)

    async def go() -> None:
        async with _open_log(settings.broker) as log:
            count = await log.partitions(EVENTS)
            parts = [partition_for(pool, count)] if pool is not None else list(range(count))
            await asyncio.gather(*(_tail(log, p, from_offset, follow, type_, pool) for p in parts))

    with _log_errors(settings.broker), contextlib.suppress(KeyboardInterrupt):
        _run(go())


async def _tail(log: EventLog, partition: int, offset: int, follow: bool, type_: str | None,
                pool: str | None) -> None:
    def emit(batch: list[Any]) -> None:
        for rec in batch:
            env = from_record(rec)
            if (type_ is None or env.type == type_) and (pool is None or env.pool == pool):
                click.echo(_dumps({"position": rec.offset, "partition": partition, **envelope_dict(env)}))

    if follow:
        async for batch in log.subscribe(EVENTS, partition, offset):
            emit(batch)
        return
    while batch := await log.read(EVENTS, partition, offset, 1000):
        emit(batch)
        offset = batch[-1].offset + 1


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


@events_group.command("export")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--from", "from_offset", type=click.IntRange(min=0), default=0, show_default=True,
              help="First offset to export (in each partition).")
@_data_dir
@_broker
def events_export(file: Path, from_offset: int, data_dir: Path | None, broker: str | None) -> None:
    """Write the events topic to FILE (lz4-compressed NDJSON, one CloudEvent per line)."""
    from events.export import export_log

    settings = _settings(data_dir, broker)

    async def go() -> tuple[int, float]:
        async with _open_log(settings.broker) as log:
            total = 0
            for p in range(await log.partitions(EVENTS)):
                total += max(0, await log.end_offset(EVENTS, p) - from_offset)
            started = time.perf_counter()
            with _progress("exporting", total) as progress:
                n = await export_log(log, EVENTS, file, from_offset=from_offset, progress=progress)
            return n, time.perf_counter() - started

    with _log_errors(settings.broker):
        n, seconds = _run(go())
    click.echo(f"exported {n} events to {file} in {seconds:.2f} s")


@events_group.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_data_dir
@_broker
def events_import(file: Path, data_dir: Path | None, broker: str | None) -> None:
    """Append the events in FILE (from ``events export``); events already present are skipped.

    Import into a stopped service (or a fresh log): a running decider does not see imported events.
    """
    from events.export import ImportFileError, import_log

    settings = _settings(data_dir, broker)

    async def go() -> Any:
        async with _open_log(settings.broker) as log:
            # A fresh log has no topics yet: create them as the service would.
            await log.ensure_topic("commands", settings.partitions)
            await log.ensure_topic(EVENTS, settings.partitions, retention_ms=-1)
            with _progress("importing", None) as progress:
                return await import_log(log, EVENTS, file, progress=progress)

    try:
        with _log_errors(settings.broker):
            result = _run(go())
    except ImportFileError as exc:
        _fail(str(exc))
    click.echo(f"imported {result.appended} events from {file} ({result.duplicates} already present)")


# --- read models and replay ---------------------------------------------------------------------


@main.group("projections")
def projections_group() -> None:
    """Maintain the read models."""


@projections_group.command("rebuild")
@_data_dir
@_broker
@_database
def projections_rebuild(data_dir: Path | None, broker: str | None, database: str | None) -> None:
    """Drop the read models and rebuild them from offset 0 of the event log.

    Stop the service first: the rebuild drops the tables a live projector writes to.
    """
    from projections import ProjectionStore, rebuild

    settings = _settings(data_dir, broker, database)

    async def go() -> tuple[int, float]:
        store = ProjectionStore(settings.database)
        await store.start()
        try:
            async with _open_log(settings.broker) as log:
                started = time.perf_counter()
                n = await rebuild(log, store, EVENTS)
                return n, time.perf_counter() - started
        finally:
            await store.close()

    with _log_errors(settings.broker):
        n, seconds = _run(go())
    click.echo(f"rebuilt the read models: {n} events applied in {seconds:.2f} s")


@main.command()
@_data_dir
@_broker
@click.option("--pool", help="Only report this pool.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def replay(data_dir: Path | None, broker: str | None, pool: str | None, as_json: bool) -> None:
    """Rebuild the deciders' state from the log and report how fast, and what it holds.

    Read-only: safe beside a running service.
    """
    from services.runtime.decider import PartitionDecider
    from services.runtime.outcomes import Outcomes

    settings = _settings(data_dir, broker)

    async def go() -> dict[str, Any]:
        pools: dict[str, dict[str, Any]] = {}
        total, seconds = 0, 0.0
        async with _open_log(settings.broker) as log:
            for p in range(await log.partitions(EVENTS)):
                decider = PartitionDecider(log, p, Outcomes(), settings.decider)
                await decider.rebuild()
                total += decider.replay.events
                seconds += decider.replay.seconds
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
                "pools": {k: v for k, v in sorted(pools.items()) if pool is None or k == pool}}

    with _log_errors(settings.broker):
        result = _run(go())
    if as_json:
        click.echo(_dumps(result))
        return
    click.echo(f"replayed {result['events']} events in {result['seconds']:.3f} s "
               f"({result['events_per_s']:,.0f} events/s)")
    for name, p in result["pools"].items():
        tasks = ", ".join(f"{k} {v}" for k, v in p["tasks"].items()) or "none"
        click.echo(f"pool {name}: {p['agents_active']} agents active ({p['agents_total']} registered); "
                   f"tasks: {tasks}")


# --- contracts ----------------------------------------------------------------------------------


@main.group("contracts")
def contracts_group() -> None:
    """Publish the public contracts."""


@contracts_group.command("export")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
def contracts_export(directory: Path) -> None:
    """Write one JSON Schema per command and event type, plus index.json, into DIRECTORY."""
    directory.mkdir(parents=True, exist_ok=True)
    index = []
    for name, schema in sorted(REGISTRY.json_schemas().items()):
        (directory / f"{name}.json").write_bytes(orjson.dumps(schema, option=orjson.OPT_INDENT_2))
        contract = REGISTRY[name]
        index.append({"type": name, "kind": contract.kind, "version": contract.version,
                      "dataschema": contract.dataschema, "file": f"{name}.json"})
    (directory / "index.json").write_bytes(orjson.dumps({"types": index}, option=orjson.OPT_INDENT_2))
    click.echo(f"wrote {len(index)} schemas and index.json to {directory}")


main.add_command(bench_command, "bench")


if __name__ == "__main__":
    main()
