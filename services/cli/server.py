"""``agentbus serve`` and ``agentbus worker``: run the service.

``serve`` runs the HTTP API on the runtime ``services.runtime.service.open_service`` picks from
the settings (the embedded runner, or the cluster service on Kafka). ``worker`` runs one Faust
worker of a Kafka deployment. Both take every setting from one ``Settings``.

This module must never choose a runtime itself (``open_service`` does) nor decide anything.
"""

from __future__ import annotations

import asyncio
import functools

import click

from services.cli.common import DEPLOYMENT, fail, log_errors, logging_to_stderr, run, settings_options
from services.runtime.service import SettingsError, check_service, open_service
from services.runtime.settings import Settings

_QUIET = ("aiokafka", "faust", "mode")


@click.command()
@settings_options("host", "port", *DEPLOYMENT, "session_timeout", "scaling_webhook", "access_log")
@click.option("--no-worker", is_flag=True,
              help="Kafka: only the API; deciders, coordinator and projector run in `agentbus worker`.")
def serve(settings: Settings, no_worker: bool) -> None:
    """Run the HTTP API with the embedded runner, or on Kafka with an in-process Faust worker.

    Exits with status 1, naming the cause, when the runner fails (e.g. a corrupt log record).
    """
    import uvicorn

    from services.http.app import create_app
    from services.runtime.embedded import tune_gc

    try:
        check_service(settings, worker=not no_worker)  # before anything is opened
    except SettingsError as exc:
        fail(str(exc))
    tune_gc()
    if settings.kafka:
        logging_to_stderr(*_QUIET)
    app = create_app(settings=settings, open_service=functools.partial(open_service, worker=not no_worker))
    # loop/http "auto": uvloop and httptools when installed (they are dependencies), which cut
    # the per-request cost of the event loop and the HTTP parser several times over.
    server = uvicorn.Server(uvicorn.Config(app, host=settings.host, port=settings.port, log_level="info",
                                           lifespan="on", access_log=settings.access_log, loop="auto",
                                           http="auto"))

    def stop_server(exc: BaseException) -> None:
        # A dead worker means stale reads and undecided commands: stop serving rather than lie.
        server.should_exit = True

    # Both names while the HTTP app moves from "runner" to "service".
    app.state.on_service_failure = app.state.on_runner_failure = stop_server
    exit_code: object = 0
    try:
        server.run()
    except SystemExit as exc:  # uvicorn exits with its own code when startup fails
        exit_code = exc.code
    service = getattr(app.state, "service", None) or getattr(app.state, "runner", None)
    failure = getattr(service, "failure", None) or getattr(app.state, "startup_error", None)
    if failure is not None:
        fail(f"the service stopped: {failure}")
    if exit_code not in (0, None):
        fail(f"the server did not start on {settings.host}:{settings.port} (exit code {exit_code})")


@click.command()
@settings_options(*DEPLOYMENT, "session_timeout")
def worker(settings: Settings) -> None:
    """Run a Faust worker: deciders, coordinator and projector for the partitions Kafka gives it.

    Start as many as there are partitions; Kafka's group protocol spreads the partitions over them
    and moves them when one stops or dies. Stops on SIGTERM/SIGINT.
    """
    import signal

    from services.runtime.cluster import FaustWorker
    from services.runtime.embedded import tune_gc

    if not settings.kafka:
        fail(f"agentbus worker needs a kafka:// broker (got {settings.broker!r}); "
             "the embedded default runs everything in `agentbus serve`")
    tune_gc()
    logging_to_stderr(*_QUIET)

    async def go() -> None:
        w = FaustWorker(settings)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await w.start()
            click.echo(f"agentbus worker {w.app_id} running on {settings.broker}", err=True)
            waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(w.failed.wait())]
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for t in waits:
                t.cancel()
        finally:
            await w.stop()
        if w.failure is not None:
            raise w.failure

    try:
        with log_errors(settings.broker):
            run(go())
    except Exception as exc:
        fail(f"the worker stopped: {exc}")
