"""``GET /metrics`` (Prometheus) and the middleware timing every other HTTP request.

A scrape answers this process's metrics (``services.runtime.metrics.REGISTRY``: decisions,
executor calls, HTTP requests, the process itself) and the values of the app's own service read
at scrape time (``services.runtime.gauges``: lag per partition, counts by pool and status), in
the Prometheus text format, or OpenMetrics when the ``Accept`` header asks for it.

The middleware observes each request once, after its response is sent in full, labelled by the
route's template (``/v1/tasks/{task_id}``, never the path a client sent, so the series stay
bounded). It must never read or change a request or a response, and never time ``/metrics``
itself (a scrape would measure the scrapes).
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.http.auth import ROUTE_TEMPLATE
from services.http.deps import ServiceDep
from services.http.responses import Error
from services.runtime.gauges import Gauges, service_sources
from services.runtime.metrics import HTTP_REQUESTS, encode

__all__ = ["PATH", "MetricsMiddleware", "router"]

PATH = "/metrics"
# Any other method a client makes up is counted as this, so it cannot add series.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_UNMATCHED = "unmatched"

router = APIRouter(tags=["metrics"])


@router.get(PATH, summary="Prometheus metrics", response_class=Response, responses={
    200: {"description": "The Prometheus text format (OpenMetrics when Accept asks for "
                         "application/openmetrics-text).",
          "content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}},
                      OPENMETRICS: {"schema": {"type": "string"}}}},
    503: {"model": Error, "description": "The service is starting."},
})
async def metrics(request: Request, service: ServiceDep) -> Response:
    state = request.app.state
    gauges: Gauges | None = getattr(state, "metrics_gauges", None)
    if gauges is None:  # one per app: it remembers the series it showed
        gauges = state.metrics_gauges = Gauges()
    families = await gauges.read(service_sources(service))
    body, content_type = encode(families, request.headers.get("accept"))
    return Response(body, headers={"Content-Type": content_type})


class MetricsMiddleware:
    """Observe every HTTP request but ``/metrics`` in ``agentbus_http_request_duration_seconds``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # (method, route, status) -> the histogram's child: labels() costs more than observe().
        self._children: dict[tuple[str, str, int], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] == PATH:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets when the app raises before it answers

        async def timed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        finally:
            self._observe(scope, status, time.perf_counter() - started)

    def _observe(self, scope: Scope, status: int, seconds: float) -> None:
        route = scope.get("route")
        template: str = getattr(route, "path", None) or scope.get(ROUTE_TEMPLATE) or _UNMATCHED
        method: str = scope["method"]
        key = (method if method in _METHODS else "other", template, status)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = HTTP_REQUESTS.labels(key[0], template, str(status))
        child.observe(seconds)
