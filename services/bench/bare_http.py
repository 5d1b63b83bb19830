"""A bare FastAPI + uvicorn ``POST /v1/tasks``: the floor ``agentbus bench --compare`` sets
agentbus's HTTP write path beside.

It reads and validates the body exactly as agentbus does (the same body model, built from the
SubmitTask contract by ``services.http.bodies``, the same orjson body reading and the same
check against the contract itself) and answers 202, on the same uvicorn settings as
``agentbus serve`` (uvloop and httptools when installed, no access log). What agentbus adds on
top (idempotency, the log append, auth, metrics) is then the difference between the two.

Run it as ``python -m services.bench.bare_http --port N``. This module must never touch a log,
a service or any state: a request leaves nothing behind.
"""

from __future__ import annotations

from typing import Annotated

import click
from fastapi import APIRouter, Body, FastAPI, Response

from contracts import Command, new_id
from contracts.commands import SubmitTask
from services.http.bodies import JSONBodyRoute, body_model, command_from
from services.http.responses import json_response

PATH = "/v1/tasks"
SubmitTaskBody = body_model("SubmitTask", generated="task_id")


def create_bare_app() -> FastAPI:
    """The app: one route, validated as agentbus validates it, answering 202."""
    # As agentbus's write router: every body is JSON, whatever its Content-Type.
    router = APIRouter(route_class=JSONBodyRoute, strict_content_type=False)

    @router.post(PATH, status_code=202)
    async def submit_task(body: Annotated[SubmitTaskBody, Body()]) -> Response:  # type: ignore[valid-type]
        sent: Command = body
        values = {} if getattr(sent, "task_id", None) is not None else {"task_id": new_id()}
        cmd = command_from(sent, SubmitTask, **values)
        return json_response({"command_id": new_id(), "status": "accepted", "task_id": cmd.task_id}, 202)

    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    app.include_router(router)
    return app


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, required=True)
def main(host: str, port: int) -> None:
    """Serve the bare endpoint until SIGTERM or SIGINT."""
    import uvicorn

    # The options `agentbus serve` gives uvicorn (services.cli.server.serve), but its log level:
    # nothing is logged per request either way (access_log off).
    uvicorn.run(create_bare_app(), host=host, port=port, log_level="warning", lifespan="on",
                access_log=False, loop="auto", http="auto")


if __name__ == "__main__":
    main()
