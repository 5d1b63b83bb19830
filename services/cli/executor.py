"""``agentbus executor``: run executors in a process of their own (``run``), or try one (``test``).

``run`` hosts the executors of a file (``agents:``) on the deployment the settings name: it reads
the events log and appends commands, like the server's own loops, so it works on the embedded
SQLite log (started by ``agentbus serve``) and on Kafka alike. Start more processes with
``--instance`` to scale an executor out (each registers ``NAME@INSTANCE``). It stops on
SIGTERM/SIGINT: runs in flight get ``--grace`` seconds to report, then its agents deregister.

This module must never decide anything: ``services.executors.host`` runs, the decider rules.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from pathlib import Path

import click
import pydantic

from contracts.executors import ExecutorConfig, ExecutorsFile
from events import UnknownTopic, open_log
from services.cli.common import (
    DEPLOYMENT,
    dumps,
    fail,
    json_object,
    log_errors,
    logging_to_stderr,
    run,
    settings_options,
)
from services.executors.files import load_executors
from services.runtime.service import topics_of
from services.runtime.settings import Settings


def check_executors_file(path: Path) -> ExecutorsFile:
    """The executors of ``path``; exits 1 naming every problem when it is not a valid file."""
    try:
        return load_executors(path)
    except (ValueError, pydantic.ValidationError) as exc:  # ExecutorsFileError names the file
        fail(str(exc))
    except OSError as exc:
        fail(f"{path}: {exc}")


@click.group("executor")
def executor() -> None:
    """Executors: agents agentbus hosts, calling HTTP APIs, LLMs and MCP servers."""


@executor.command("run")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              required=True, help="Executors file (YAML or JSON) with an `agents:` list.")
@click.option("--instance", help="Suffix of this process's agent ids (NAME@INSTANCE), to run several.")
@click.option("--workflow-agents/--no-workflow-agents", default=False, show_default=True,
              help="Also host the executors running workflows declare (in one process only).")
@click.option("--grace", type=click.FloatRange(min=0), default=10.0, show_default=True,
              help="Seconds runs in flight get to report when stopping.")
@settings_options(*DEPLOYMENT, "host", "metrics_port")
def executor_run(config_path: Path, instance: str | None, workflow_agents: bool, grace: float,
                 settings: Settings) -> None:
    """Host the executors of --config on the deployment (until SIGTERM/SIGINT)."""
    from services.executors.host import ExecutorHost
    from services.executors.processes import WorkerStartError
    from services.executors.secrets import SecretError
    from services.runtime.metrics import serve_metrics

    configs = check_executors_file(config_path).agents
    logging_to_stderr("aiokafka")

    async def go() -> None:
        # Its calls' latencies and the process's own metrics (the deployment's are the API's).
        port = settings.metrics_port
        metrics = None if port is None else serve_metrics(settings.host, port)
        log = open_log(settings.broker)
        await log.start()
        host = ExecutorHost(log, configs, topics=topics_of(settings), instance=instance,
                            workflow_agents=workflow_agents, grace_s=grace, guard=(settings.data_dir,))
        task = asyncio.create_task(host.run())
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        ready = asyncio.create_task(host.ready.wait())
        try:
            await asyncio.wait([task, ready], return_when=asyncio.FIRST_COMPLETED)
            if ready.done():
                names = ", ".join(a.agent_id for a in host.hosted.values())
                click.echo(f"agentbus executor: hosting {names} on {settings.broker}", err=True)
            with contextlib.suppress(asyncio.CancelledError):
                await task
        except UnknownTopic as exc:
            fail(f"{exc}: start the server first (`agentbus serve`), it creates the topics")
        except (SecretError, WorkerStartError) as exc:  # a reference not set here, a worker that failed
            fail(f"an executor did not start: {exc}")
        finally:
            ready.cancel()
            await log.close()
            if metrics is not None:
                await asyncio.to_thread(metrics.close)

    with log_errors(settings.broker):
        run(go())


@executor.command("test")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              required=True, help="Executors file (YAML or JSON).")
@click.option("--agent", "name", help="Which executor of the file (default: the only one).")
@click.option("--action", help="The task's action (a tool name, an HTTP method...).")
@click.option("--parameters", help="The task's parameters, a JSON object.")
def executor_test(config_path: Path, name: str | None, action: str | None, parameters: str | None) -> None:
    """Call one executor once, without registering it; prints the outcome, exits 1 when it failed."""
    from services.executors.trial import try_executor

    agents = check_executors_file(config_path).agents
    chosen: ExecutorConfig | None
    if name is None:
        if len(agents) != 1:
            fail(f"{config_path} has {len(agents)} executors; name one with --agent "
                 f"({', '.join(a.name for a in agents)})")
        chosen = agents[0]
    else:
        chosen = next((a for a in agents if a.name == name), None)
        if chosen is None:
            fail(f"{config_path} has no executor {name!r} ({', '.join(a.name for a in agents)})")
    outcome = run(try_executor(chosen, action, json_object(parameters, "--parameters") or {}))
    click.echo(dumps(outcome, indent=True))
    sys.exit(0 if outcome["success"] else 1)
