"""``python -m services.executors.standins``: start stand-in servers on 127.0.0.1 and keep them up
until SIGINT or SIGTERM.

    python -m services.executors.standins [--http PORT] [--openai PORT] [--anthropic PORT] [--mcp PORT]

Each server started prints one line, ``<name> <url>``, with the URL a configuration points at:
``http`` a base URL (an ``http_api`` endpoint), ``openai`` the ``base_url`` with ``/v1``,
``anthropic`` the ``base_url``, ``mcp`` the endpoint with ``/mcp``. PORT 0 takes a free port; with
no option, all four start on free ports. Factories are imported only for the servers asked for.

Never for production traffic: no TLS, no auth, bound to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import signal
import sys
import threading
from types import FrameType

from services.executors.standins.serving import serving

# name: (module of its create_app, what to add to the base URL for a configuration)
SERVERS = {
    "http": ("services.executors.standins.http_target", ""),
    "openai": ("services.executors.standins.openai_compat", "/v1"),
    "anthropic": ("services.executors.standins.anthropic_compat", ""),
    "mcp": ("services.executors.standins.mcp_tools", "/mcp"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.executors.standins",
                                     description="Start stand-in servers on 127.0.0.1 until interrupted.")
    for name in SERVERS:
        parser.add_argument(f"--{name}", type=int, metavar="PORT", help=f"start the {name} stand-in on PORT "
                            "(0: a free port)")
    args = parser.parse_args(argv)
    chosen = {name: getattr(args, name) for name in SERVERS if getattr(args, name) is not None}
    if not chosen:
        chosen = dict.fromkeys(SERVERS, 0)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    with contextlib.ExitStack() as stack:
        for name, port in chosen.items():
            module, suffix = SERVERS[name]
            app = importlib.import_module(module).create_app()
            try:
                url = stack.enter_context(serving(app, port=port or None))
            except (RuntimeError, TimeoutError) as exc:
                print(f"{name}: {exc}", file=sys.stderr)
                return 1
            print(f"{name} {url}{suffix}", flush=True)
        stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
