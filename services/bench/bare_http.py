"""A bare FastAPI + uvicorn ``POST /v1/tasks`` and ``GET /v1/tasks/{id}``: the floors
``agentbus bench --compare`` sets agentbus's HTTP write and read paths beside.

It reads and validates the body exactly as agentbus does (the same body model, built from the
SubmitTask contract by ``services.http.bodies``, the same orjson body reading and the same
check against the contract itself) and answers 202, on the same uvicorn settings as
``agentbus serve`` (uvloop and httptools when installed, no access log). What agentbus adds on
top (idempotency, the log append, auth, metrics) is then the difference between the two. The
read answers a task document held in memory (``--task-file``: one task as agentbus's
``GET /v1/tasks/{id}`` answered it), through the same JSON response; what agentbus adds there is
the read model's query.

Run it as ``python -m services.bench.bare_http --port N [--task-file F]``. This module must never touch a log,
a service or any state: a request leaves nothing behind.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import click
import orjson
from fastapi import APIRouter, Body, FastAPI, HTTPException, Response

from contracts import Command, new_id
from contracts.commands import SubmitTask
from services.http.bodies import JSONBodyRoute, body_model, command_from
from services.http.responses import json_response

PATH = "/v1/tasks"
SubmitTaskBody = body_model("SubmitTask", generated="task_id")


def create_bare_app(tasks: dict[str, dict[str, Any]] | None = None) -> FastAPI:
    """The app: the write, validated as agentbus validates it, answering 202; the read of
    ``tasks`` (task id -> its document)."""
    known = dict(tasks or {})
    # As agentbus's write router: every body is JSON, whatever its Content-Type.
    router = APIRouter(route_class=JSONBodyRoute, strict_content_type=False)

    @router.post(PATH, status_code=202)
    async def submit_task(body: Annotated[SubmitTaskBody, Body()]) -> Response:  # type: ignore[valid-type]
        sent: Command = body
        values = {} if getattr(sent, "task_id", None) is not None else {"task_id": new_id()}
        cmd = command_from(sent, SubmitTask, **values)
        return json_response({"command_id": new_id(), "status": "accepted", "task_id": cmd.task_id}, 202)

    @router.get(PATH + "/{task_id}")
    async def get_task(task_id: str) -> Response:
        task = known.get(task_id)
        if task is None:
            raise HTTPException(404, f"task {task_id!r} not found")
        return json_response(task)

    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    app.include_router(router)
    return app


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, required=True)
@click.option("--task-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A task's JSON document, answered by GET /v1/tasks/{its task_id}.")
def main(host: str, port: int, task_file: Path | None) -> None:
    """Serve the bare endpoint until SIGTERM or SIGINT."""
    import uvicorn

    tasks: dict[str, dict[str, Any]] = {}
    if task_file is not None:
        task = orjson.loads(task_file.read_bytes())
        tasks[task["task_id"]] = task
    # The options `agentbus serve` gives uvicorn (services.cli.server.serve), but its log level:
    # nothing is logged per request either way (access_log off).
    uvicorn.run(create_bare_app(tasks), host=host, port=port, log_level="warning", lifespan="on",
                access_log=False, loop="auto", http="auto")


if __name__ == "__main__":
    main()
