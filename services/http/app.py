"""The HTTP API's composition: ``create_app`` wires the routers, middleware and error handlers to a
service, and its lifespan starts and stops a service of its own when it was given none.

Where things are: ``writes`` (commands in), ``workflow_writes`` (workflow runs and definitions
in), ``reads`` (read models out), ``workflow_reads`` (runs, definitions, system status out),
``exports`` (the log's events and the audit trail out), ``audit_reads`` (reads ``?as_of=`` a
point of the log, and a task's causation history), ``streams`` (live events over WebSocket
and SSE, task progress; its hub runs while the app does), ``event_export`` (the log as an lz4
NDJSON stream), ``executors`` (POST /v1/agents/test), ``webhooks`` and ``webhook_deliveries``
(inbound signed webhooks), ``subscriptions`` (outbound), ``bodies`` (request models from the
contract registry) and ``commands`` (the body of POST /v1/commands), ``responses`` and
``read_schemas`` (what is answered), ``deps`` (the service, write options, the min_position
wait), ``docs`` (/docs and
/redoc with their assets, no CDN), ``middleware`` (the body size limit), ``errors`` (422 and 503
shapes), ``auth`` (bearer tokens on every route: ``permissions`` says who may do what,
``credentials`` checks API tokens and JWTs), ``tokens`` (/v1/tokens), ``metrics`` (/metrics
for Prometheus, and the middleware timing every request) and ``audit`` (/v1/audit/verify: the hash
chain and its signed checkpoints). The web dashboard at ``/ui`` is ``services.dashboard``.

This module must never hold an endpoint or a rule of its own: it only puts the parts together.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.openapi.utils import get_openapi

from services.dashboard import install_dashboard
from services.executors.hosting import hosted_executors
from services.http import (
    audit,
    audit_reads,
    costs,
    executors,
    exports,
    metrics,
    reads,
    webhook_deliveries,
    webhooks,
    workflow_reads,
    workflow_writes,
    writes,
)
from services.http.auth import document_auth, install_auth
from services.http.bodies import inline_request_bodies
from services.http.deps import PositionBeyondEnd
from services.http.docs import install_docs
from services.http.errors import install_error_handlers
from services.http.event_export import router as export_router
from services.http.middleware import BodyLimitMiddleware, OriginMiddleware, parse_origins
from services.http.responses import JSONBytesResponse, json_response
from services.http.streams import router as streams_router
from services.http.streams import running_hub
from services.http.subscriptions import router as subscriptions_router
from services.http.tokens import router as tokens_router
from services.runtime.embedded import Runner
from services.runtime.service import Service
from services.runtime.settings import Settings

__all__ = ["Service", "create_app"]


def create_app(service: Service | None = None, settings: Settings | None = None,
               open_service: Callable[[Settings], Service] | None = None) -> FastAPI:
    """The FastAPI app on a running ``service``; without one its lifespan starts (and stops)
    ``open_service(settings)`` (default: the embedded ``Runner``).

    ``app.state.service`` is the service the API runs on (None until the lifespan opened it);
    a callable set as ``app.state.on_service_failure`` before startup is called when the service
    fails after it started (``serve`` stops the server then).
    """
    if settings is None:
        settings = service.settings if service is not None else Settings()
    own_settings = settings

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if service is not None:
            async with running_hub(app, service):
                yield
            return
        own: Service = open_service(own_settings) if open_service is not None else Runner(own_settings)
        app.state.service = own
        hook: Callable[[BaseException], Awaitable[None] | None] | None = getattr(
            app.state, "on_service_failure", None)
        own.on_failure = hook
        try:
            await own.start()
            await own.ready()
        except BaseException as exc:
            app.state.startup_error = exc
            await own.stop()
            raise
        try:
            executors = hosted_executors(own, own_settings)
            try:
                await executors.__aenter__()
            except BaseException as exc:
                app.state.startup_error = exc
                raise
            try:
                async with running_hub(app, own):
                    yield
            finally:
                await executors.__aexit__(None, None, None)
        finally:
            await own.stop()

    app = FastAPI(
        title="agentbus",
        version="0.1.0",
        summary="Event-sourced control plane for fleets of AI agents",
        description="Writes append commands (202, or the outcome with ?wait=true); reads come from the "
                    "read models. Pass the position a write answered as min_position to any read of its "
                    "pool to read your own writes.",
        default_response_class=JSONBytesResponse,
        lifespan=lifespan,
        # Served by install_docs from the package: FastAPI's own pages load a CDN.
        docs_url=None,
        redoc_url=None,
    )
    app.state.service = service
    app.state.settings = settings
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    install_auth(app, settings)  # every route, WebSockets included: before the limit, inside metrics
    # Before authentication: a page of another site learns nothing, not even whether it needs a token.
    app.add_middleware(OriginMiddleware, allowed=parse_origins(settings.allow_origins))
    app.add_middleware(metrics.MetricsMiddleware)  # outermost: times what the limit refuses too
    install_error_handlers(app)
    app.add_exception_handler(PositionBeyondEnd, _beyond_end)
    install_docs(app)
    install_dashboard(app)  # /ui: the web dashboard, a client of the routes below
    # The routers' routes join the app's own list rather than app.include_router(): FastAPI 0.165
    # matches an included router's routes through a context switch per route tried, which took
    # 1,327 against 1,118 Python function calls per POST /v1/tasks through the ASGI app (cProfile,
    # service stubbed). The routers set everything their routes need themselves (tags,
    # responses, route class, content type rule).
    for router in (writes.router, workflow_writes.router, reads.router, workflow_reads.router, costs.router,
                   tokens_router, webhooks.router, webhook_deliveries.router,
                   exports.router, executors.router, reads.health_router, metrics.router,
                   streams_router, export_router, subscriptions_router, audit_reads.router,
                   audit.router):
        app.router.routes.extend(router.routes)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document_auth(inline_request_bodies(get_openapi(
                title=app.title, version=app.version, summary=app.summary, description=app.description,
                routes=app.routes)), settings)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


async def _beyond_end(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, PositionBeyondEnd)
    return json_response({"detail": str(exc), "position": exc.position, "partition": exc.partition,
                          "end": exc.end}, 409)
