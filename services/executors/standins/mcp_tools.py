"""An MCP server with a few deterministic tools, over streamable HTTP or stdio.

Tools: ``echo(text)``, ``add(a, b)``, ``fail(message)`` (always an ``isError`` result carrying
``message``), ``slow(seconds)``, ``word_count(text)``, ``big(chars)`` (a text of ``chars``
characters, for result-size limits) and ``request_info()`` (the request's ``_meta`` and HTTP
headers, to see what a client sent). Built with the SDK's ``MCPServer`` (mcp 2.x's name for
``FastMCP``), so the executor's client talks to the SDK's own server code.

- HTTP: ``serving(create_app())`` serves ``/mcp`` on a local port (the app's lifespan runs the
  streamable HTTP session manager, which can run once: every ``create_app()`` builds a new
  server), or ``python -m services.executors.standins.mcp_tools --port PORT``. ``GET /_counts``
  says how many requests it answered, how many sessions they used and how many were opened.
- stdio: ``python -m services.executors.standins.mcp_tools --stdio``.

Never for production traffic: no auth, bound to 127.0.0.1.
"""

from __future__ import annotations

import argparse
from typing import Any

import anyio
import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

NAME = "agentbus-standin-tools"
MCP_PATH = "/mcp"


def build_server() -> MCPServer[Any]:
    """A new server with the stand-in tools."""
    server: MCPServer[Any] = MCPServer(NAME, instructions="Deterministic tools for tests and examples.",
                                       log_level="WARNING")

    @server.tool()
    def echo(text: str) -> str:
        """Return ``text`` unchanged."""
        return text

    @server.tool()
    def add(a: float, b: float) -> float:
        """The sum of ``a`` and ``b``."""
        return a + b

    @server.tool()
    def fail(message: str) -> str:
        """Always fails, with ``message`` as the tool's error."""
        raise ToolError(message)

    @server.tool()
    async def slow(seconds: float) -> str:
        """Wait ``seconds``, then say so."""
        await anyio.sleep(seconds)
        return f"slept {seconds} s"

    @server.tool()
    def word_count(text: str) -> int:
        """How many whitespace-separated words ``text`` has."""
        return len(text.split())

    @server.tool()
    def big(chars: int) -> str:
        """A text of ``chars`` characters."""
        return ("0123456789" * (chars // 10 + 1))[:chars]

    @server.tool()
    def request_info(ctx: Context) -> dict[str, Any]:
        """The ``_meta`` of this request and its HTTP headers (none over stdio)."""
        return {"meta": dict(ctx.request_context.meta or {}), "headers": dict(ctx.headers or {})}

    return server


class CountingApp:
    """An MCP app, counting the requests it answers and the sessions they belong to."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.requests = 0
        self.opened = 0  # POSTs without a session id: in stateful mode, only initialize
        self.sessions: set[str] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            if scope["path"] == "/_counts":
                counts = {"requests": self.requests, "sessions": len(self.sessions), "opened": self.opened}
                await JSONResponse(counts)(scope, receive, send)
                return
            self.requests += 1
            session = dict(scope["headers"]).get(b"mcp-session-id")
            if session is not None:
                self.sessions.add(session.decode("latin-1"))
            elif scope["method"] == "POST":
                self.opened += 1
        await self.app(scope, receive, send)


def create_app() -> CountingApp:
    """The stand-in as an ASGI app serving MCP over streamable HTTP at ``/mcp``."""
    return CountingApp(build_server().streamable_http_app(streamable_http_path=MCP_PATH))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m services.executors.standins.mcp_tools",
                                     description="The stand-in MCP server.")
    how = parser.add_mutually_exclusive_group(required=True)
    how.add_argument("--stdio", action="store_true", help="speak MCP over stdin/stdout")
    how.add_argument("--port", type=int, help="serve MCP over streamable HTTP on 127.0.0.1:PORT/mcp")
    args = parser.parse_args(argv)
    if args.stdio:
        build_server().run("stdio")
    else:
        # A client's open event stream would otherwise hold a graceful shutdown forever.
        uvicorn.run(create_app(), host="127.0.0.1", port=args.port, log_level="warning",
                    timeout_graceful_shutdown=1)


if __name__ == "__main__":
    main()
