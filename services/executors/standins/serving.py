"""Running an ASGI app on a real local socket, in a thread of its own, for as long as a block lasts.

The stand-in servers (an HTTP target, an OpenAI-compatible and an Anthropic-messages server, an
MCP server) are real servers reached over TCP: tests, the benchmark and the examples talk to them
through the same client code as to the real thing. Each runs its own event loop in a daemon
thread, so a test's loop (or a benchmark's) never shares time with the server it measures.

Never for production traffic: bound to 127.0.0.1 by default, TLS only with the certificate a test
gives (``ssl_certfile``/``ssl_keyfile``, uvicorn's own options).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class _Server(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # a thread cannot take signals; the owner stops it
        pass


@contextlib.contextmanager
def serving(app: Any, *, host: str = "127.0.0.1", port: int | None = None,
            start_timeout: float = 10.0, ssl_certfile: str | None = None,
            ssl_keyfile: str | None = None) -> Iterator[str]:
    """Serve ``app`` on ``host:port`` (a free port when None) until the block ends; yields its
    base URL (``http://127.0.0.1:PORT``, ``https://`` with a certificate)."""
    port = free_port(host) if port is None else port
    server = _Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on",
                                    access_log=False, timeout_graceful_shutdown=1,
                                    ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True,
                              name=f"standin:{port}")
    thread.start()
    deadline = time.monotonic() + start_timeout
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError(f"the server on {host}:{port} did not start")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise TimeoutError(f"the server on {host}:{port} did not start in {start_timeout} s")
        time.sleep(0.01)
    try:
        yield f"{'https' if ssl_certfile else 'http'}://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
