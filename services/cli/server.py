"""``agentbus serve`` and ``agentbus worker``: run the service.

``serve`` runs the HTTP API on the runtime ``services.runtime.service.open_service`` picks from
the settings (the embedded runner, or the cluster service on Kafka). ``worker`` runs one Faust
worker of a Kafka deployment. Both take every setting from one ``Settings``.

Both stop on SIGTERM or SIGINT within ``services.cli.signals.EXIT_WITHIN_S`` in every state
(starting, rebalancing, under load); a second signal exits at once (``services.cli.signals``).
``serve`` first drains HTTP for up to ``HTTP_DRAIN_S`` (requests in flight are answered, the
service still running), then stops the service.

This module must never choose a runtime itself (``open_service`` does) nor decide anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sys
from collections.abc import Iterator
from typing import Any

import click

from events import ConcurrencyError, LogError
from services.cli.common import DEPLOYMENT, fail, log_errors, logging_to_stderr, run, settings_options
from services.cli.executor import check_executors_file
from services.cli.signals import SIGNALS, StopOnSignals
from services.runtime.service import SettingsError, StartCancelled, check_service, ended, open_service
from services.runtime.settings import Settings

_QUIET = ("aiokafka", "faust", "mode")
# How serve authenticates (the JWT secret only from the environment: a flag shows in `ps`).
AUTH = ("auth", "auth_rate", "auth_burst", "auth_cache_s", "jwt_jwks", "jwt_issuer", "jwt_audience",
        "jwt_role_claim", "jwt_agent_claim")
# Requests in flight when the stop begins get this long to be answered before they are cut off
# (a long-poll or a stream would otherwise hold the stop open for ever).
HTTP_DRAIN_S = 5.0
# Where the runtimes log a worker that failed: the embedded runner's, the cluster service's.
_RUNNER_LOGGERS = ("agentbus.runner", "agentbus.faust")


@click.command()
@settings_options("host", "port", *DEPLOYMENT, "session_timeout", "scaling_webhook", "access_log",
                  "executors", "workflow_agents", "allow_origins", *AUTH)
@click.option("--no-worker", is_flag=True,
              help="Kafka: only the API; deciders, coordinator and projector run in `agentbus worker`.")
def serve(settings: Settings, no_worker: bool) -> None:
    """Run the HTTP API with the embedded runner, or on Kafka with an in-process Faust worker.

    Exits with status 1, naming the cause, when the runner fails (e.g. a corrupt log record).
    Stops on SIGTERM/SIGINT within 30 s in any state (requests in flight get 5 s to be answered);
    a second signal exits at once.
    """
    from services.http.app import create_app
    from services.http.auth import check_exposure
    from services.runtime.embedded import tune_gc

    try:
        check_service(settings, worker=not no_worker)  # before anything is opened
        said = check_exposure(settings)
    except SettingsError as exc:
        fail(str(exc))
    if said is not None:
        click.echo(said, err=True)
    if settings.executors is not None:
        check_executors_file(settings.executors)
    tune_gc()
    if settings.kafka:
        logging_to_stderr(*_QUIET)
    app = create_app(settings=settings, open_service=functools.partial(open_service, worker=not no_worker))
    # loop/http "auto": uvloop and httptools when installed (they are dependencies), which cut
    # the per-request cost of the event loop and the HTTP parser several times over.
    server = _server(app, host=settings.host, port=settings.port, log_level="info", lifespan="on",
                     access_log=settings.access_log, loop="auto", http="auto",
                     timeout_graceful_shutdown=HTTP_DRAIN_S,
                     # permessage-deflate compresses each live-stream frame once per subscriber:
                     # with 50 subscribers, as much CPU as all the socket writes (profiled under
                     # `agentbus bench --subscribers`). Not offered, so clients send plain frames.
                     ws_per_message_deflate=False)

    def stop_server(exc: BaseException) -> None:
        # A dead worker means stale reads and undecided commands: stop serving rather than lie.
        server.should_exit = True

    app.state.on_service_failure = stop_server
    exit_code: object = 0
    try:
        with _one_line_for_log_errors(app, server):
            server.run()
    except SystemExit as exc:  # uvicorn exits with its own code when startup fails
        exit_code = exc.code
    service = getattr(app.state, "service", None)
    failure = getattr(service, "failure", None) or getattr(app.state, "startup_error", None)
    if server.signals.requested:
        if failure is not None and not isinstance(failure, StartCancelled):
            click.echo(f"agentbus: stopped while starting; the start had failed: {failure}", err=True)
        elif exit_code not in (0, None):
            click.echo("agentbus: stopped before the service was ready", err=True)
        server.signals.exit_as_signalled()
    if failure is not None:
        fail(f"the service stopped: {failure}")
    if exit_code not in (0, None):
        fail(f"the server did not start on {settings.host}:{settings.port} (exit code {exit_code})")


def _log_error(exc: BaseException | None) -> bool:
    """Whether ``exc`` is, or was raised from, a failure of what the log holds or where it is
    (``events.LogError``: a corrupt record, a missing topic), which its message says all of. A
    ``ConcurrencyError`` is not one: two writers on one partition may be a bug, and keeps its trace."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, LogError) and not isinstance(exc, ConcurrencyError):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


@contextlib.contextmanager
def _one_line_for_log_errors(app: Any, server: Any) -> Iterator[None]:
    """While serving, a failure of the log (a corrupt record, a missing topic) is told without its
    tracebacks: its message names the record and the repair, the traceback only our code.

    The runner logs the worker that failed with its traceback, and uvicorn logs the lifespan's; serve
    then names the failure as it exits. So a LogError that fails the start is told once, by that
    exit; one that stops a running service keeps the runner's line, without the traceback. Every
    other exception keeps its tracebacks: a bug needs them.
    """

    def runner(record: logging.LogRecord) -> bool:
        if record.exc_info is None or not _log_error(record.exc_info[1]):
            return True
        if not server.started:
            return False  # the start's failure, which serve names as it exits
        record.exc_info, record.exc_text = None, None
        return True

    def lifespan(record: logging.LogRecord) -> bool:
        # uvicorn logs the traceback the lifespan sent with its startup failure as the message.
        failed = getattr(app.state, "startup_error", None)
        return not (isinstance(record.msg, str) and record.msg.startswith("Traceback") and _log_error(failed))

    loggers = [*((logging.getLogger(name), runner) for name in _RUNNER_LOGGERS),
               (logging.getLogger("uvicorn.error"), lifespan)]
    for logger, keep in loggers:
        logger.addFilter(keep)
    try:
        yield
    finally:
        for logger, keep in loggers:
            logger.removeFilter(keep)


def _server(app: Any, **config: Any) -> Any:
    """uvicorn's server with the stop of ``services.cli.signals``: a signal while the service is
    still starting cancels the start rather than waiting for it (a Kafka consumer group may take
    a session timeout to rebalance), and a second signal exits at once."""
    import uvicorn  # here, not at the top: the other commands start faster without it

    class Server(uvicorn.Server):
        def __init__(self) -> None:
            super().__init__(uvicorn.Config(app, **config))
            self.signals = StopOnSignals("serve", self._stop)

        def handle_exit(self, sig: int, frame: Any) -> None:
            self.signals.handle(sig, frame)

        def _stop(self, sig: int) -> None:
            super().handle_exit(sig, None)  # should_exit, and the signal re-raised at the end
            if not self.started:
                try:
                    loop = asyncio.get_running_loop()
                except RuntimeError:  # not serving yet, or any more: nothing is starting
                    return
                loop.call_soon_threadsafe(self._cancel_start, 100)

        def _cancel_start(self, tries: int) -> None:
            service = getattr(app.state, "service", None)
            if service is not None:
                service.cancel_start()
            elif tries > 0 and not self.started:  # the lifespan has not opened it yet
                asyncio.get_running_loop().call_later(0.1, self._cancel_start, tries - 1)

    return Server()


@click.command()
@settings_options(*DEPLOYMENT, "session_timeout", "host", "metrics_port")
def worker(settings: Settings) -> None:
    """Run a Faust worker: deciders, coordinator and projector for the partitions Kafka gives it.

    Start as many as there are partitions; Kafka's group protocol spreads the partitions over them
    and moves them when one stops or dies. With --metrics-port it serves Prometheus metrics there
    (on the --host address). Stops on SIGTERM/SIGINT within 30 s in any state; a second signal
    exits at once.
    """
    from services.runtime.cluster import FaustWorker
    from services.runtime.embedded import tune_gc
    from services.runtime.gauges import serve_worker_metrics

    if not settings.kafka:
        fail(f"agentbus worker needs a kafka:// broker (got {settings.broker!r}); "
             "the embedded default runs everything in `agentbus serve`")
    tune_gc()
    logging_to_stderr(*_QUIET)

    stop = asyncio.Event()
    signals = StopOnSignals("worker", lambda sig: stop.set())

    async def go() -> None:
        w = FaustWorker(settings)
        metrics = serve_worker_metrics(w, settings.host, settings.metrics_port)
        loop = asyncio.get_running_loop()
        for sig in SIGNALS:
            loop.add_signal_handler(sig, signals.handle, sig)
        # Started beside the wait for a signal: joining a group that is rebalancing can take a
        # session timeout, and a stop asked for meanwhile must not wait for it.
        starting = asyncio.ensure_future(w.start())
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait([starting, stopping], return_when=asyncio.FIRST_COMPLETED)
            if starting.done():
                starting.result()
                click.echo(f"agentbus worker {w.app_id} running on {settings.broker}", err=True)
                failed = asyncio.ensure_future(w.failed.wait())
                await asyncio.wait([stopping, failed], return_when=asyncio.FIRST_COMPLETED)
                failed.cancel()
            else:
                starting.cancel()
                await ended([starting])
                click.echo("agentbus: worker stopped before it was running", err=True)
        finally:
            stopping.cancel()
            await w.stop()
            if metrics is not None:
                await asyncio.to_thread(metrics.close)
        if w.failure is not None:
            raise w.failure

    try:
        with log_errors(settings.broker):
            run(go())
    except Exception as exc:
        click.echo(f"agentbus: the worker stopped: {exc}", err=True)
        signals.exit_if_threads_linger(1)
        sys.exit(1)
    signals.exit_if_threads_linger(0)
