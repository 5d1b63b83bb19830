"""The web dashboard: one static page at ``/ui`` (HTML, plain ES modules, CSS and the vendored chart
library under ``static/``), served by the API's own app, and ``/`` sending a browser there.

The page is a client of the public API (``/v1/...``) and of the live stream (``/ws/v1/events``)
with the user's own bearer token, so it shows and does nothing a token could not over HTTP. Its
files are public (``services.http.permissions`` lists the mount as open): they hold no data.

This module must never add an endpoint that answers data, and the page must never load anything
from another host: every asset ships in the package, so the dashboard works offline.
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response
from starlette.types import Scope

__all__ = ["STATIC", "UI_PATH", "install_dashboard"]

UI_PATH = "/ui"
STATIC = files("services.dashboard") / "static"

# What the page may load and connect to: this origin only (its API and its WebSocket). Styles may be
# set inline because the chart library positions its parts with element styles.
CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                           "img-src 'self' data:; connect-src 'self'; object-src 'none'; "
                           "base-uri 'none'; frame-ancestors 'none'")


class _DashboardFiles(StaticFiles):
    """The page's files, each with a policy that keeps the page to this origin."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers["content-security-policy"] = CONTENT_SECURITY_POLICY
        response.headers["x-content-type-options"] = "nosniff"
        response.headers["referrer-policy"] = "no-referrer"
        return response


def install_dashboard(app: FastAPI) -> None:
    """Serve the dashboard at ``/ui/`` and redirect ``/`` to it."""
    app.mount(UI_PATH, _DashboardFiles(directory=str(STATIC), html=True), name="dashboard")

    @app.get("/", include_in_schema=False)
    async def root(request: Request) -> RedirectResponse:
        return RedirectResponse(f"{request.scope.get('root_path', '')}{UI_PATH}/", status_code=307)
