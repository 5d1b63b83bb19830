"""The commands that talk to a running server over HTTP: ``agent``, ``task``, ``cost``, ``send``.

Each builds one request from its arguments, sends it to the ``url`` setting for the ``pool``
setting, prints the JSON answer, and exits 1 with the server's message on 4xx/5xx. Writes wait
for their outcome (``?wait=true``). ``agent run`` (a long-running local agent) lives beside the
agent it runs, in ``services.cli.local_agent``.

This module must never decide anything: the server validates and decides every command.
"""

from __future__ import annotations

from typing import Any

import click
import httpx
import orjson

from services.cli.common import HTTP_TIMEOUT_S, dumps, fail, settings_options, transport
from services.cli.local_agent import run_command
from services.runtime.settings import Settings

_client = settings_options("url", "pool")


def _json_arg(text: str | None, what: str) -> Any:
    """The JSON value of an argument; a usage error naming ``what`` when it is not JSON."""
    if text is None:
        return None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint=what) from None


def _request(url: str, method: str, path: str, *, params: dict[str, Any] | None = None,
             body: dict[str, Any] | None = None) -> None:
    """Send one request, print the JSON answer; exit 1 with the server's message on 4xx/5xx."""
    query = {k: v for k, v in (params or {}).items() if v is not None}
    try:
        with httpx.Client(base_url=url, timeout=HTTP_TIMEOUT_S, transport=transport()) as client:
            resp = client.request(method, path, params=query, json=body)
    except httpx.HTTPError as exc:
        fail(f"cannot reach agentbus at {url}: {exc}")
    try:
        payload: Any = resp.json()
    except ValueError:
        payload = resp.text
    click.echo(dumps(payload, indent=True))
    if resp.status_code >= 400:
        fail(f"HTTP {resp.status_code}: {_message(payload)}")


def _message(payload: Any) -> str:
    """The server's reason, from a rejection, a validation error or any other answer."""
    if isinstance(payload, dict):
        if "code" in payload:
            return f"{payload['code']}: {payload.get('message', '')}"
        detail = payload.get("detail")
        if isinstance(detail, list):
            return "; ".join(f"{'.'.join(map(str, d.get('loc', [])))}: {d.get('msg')}" for d in detail)
        if detail is not None:
            return str(detail)
    return str(payload)[:500]


def _write(settings: Settings, method: str, path: str, body: dict[str, Any] | None,
           command_id: str | None = None) -> None:
    """A write to the ``pool`` setting's pool that waits for its outcome."""
    body = {k: v for k, v in (body or {}).items() if v is not None}
    body["pool"] = settings.pool
    if command_id is not None:
        body["command_id"] = command_id
    _request(settings.url, method, path, params={"wait": "true"}, body=body)


@click.group()
def agent() -> None:
    """Register, list, inspect and remove agents (talks to a running server)."""


@agent.command("register")
@click.argument("name")
@click.option("--capability", "-c", "capabilities", multiple=True, help="A capability (repeatable).")
@click.option("--capacity", type=click.IntRange(min=1), default=1, show_default=True,
              help="Tasks it can hold at once.")
@click.option("--kind", default="generic", show_default=True)
@click.option("--id", "agent_id", help="Agent id (default: generated).")
@click.option("--heartbeat-timeout", type=float,
              help="Seconds without a heartbeat before it is presumed gone.")
@click.option("--metadata", help="JSON object of extra facts about the agent.")
@click.option("--command-id", help="Idempotency key: a repeat returns the first outcome.")
@_client
def agent_register(name: str, capabilities: tuple[str, ...], capacity: int, kind: str, agent_id: str | None,
                   heartbeat_timeout: float | None, metadata: str | None, command_id: str | None,
                   settings: Settings) -> None:
    """Register an agent called NAME."""
    _write(settings, "POST", "/v1/agents", {
        "agent_id": agent_id, "name": name, "kind": kind, "capabilities": list(capabilities),
        "capacity": capacity,
        "heartbeat_timeout_s": heartbeat_timeout, "metadata": _json_arg(metadata, "--metadata"),
    }, command_id)


@agent.command("list")
@click.option("--status", type=click.Choice(["active", "deregistered"]))
@_client
def agent_list(status: str | None, settings: Settings) -> None:
    """List the pool's agents."""
    _request(settings.url, "GET", "/v1/agents", params={"pool": settings.pool, "status": status})


@agent.command("show")
@click.argument("agent_id")
@_client
def agent_show(agent_id: str, settings: Settings) -> None:
    """Show one agent."""
    _request(settings.url, "GET", f"/v1/agents/{agent_id}", params={"pool": settings.pool})


@agent.command("heartbeat")
@click.argument("agent_id")
@click.option("--load", type=float)
@click.option("--cpu", type=float)
@click.option("--memory", type=float)
@click.option("--queue", type=int)
@_client
def agent_heartbeat(agent_id: str, load: float | None, cpu: float | None, memory: float | None,
                    queue: int | None, settings: Settings) -> None:
    """Report AGENT_ID alive."""
    _write(settings, "POST", f"/v1/agents/{agent_id}/heartbeat",
           {"load": load, "cpu": cpu, "memory": memory, "queue": queue})


@agent.command("remove")
@click.argument("agent_id")
@click.option("--reason")
@_client
def agent_remove(agent_id: str, reason: str | None, settings: Settings) -> None:
    """Deregister AGENT_ID; its unfinished tasks go back to the queue."""
    _request(settings.url, "DELETE", f"/v1/agents/{agent_id}",
             params={"wait": "true", "pool": settings.pool, "reason": reason})


@click.group()
def task() -> None:
    """Submit, list, inspect and drive tasks (talks to a running server)."""


@task.command("submit")
@click.argument("type_", metavar="TYPE")
@click.option("--priority", type=click.IntRange(1, 10), default=5, show_default=True)
@click.option("--require", "-r", "required", multiple=True, help="A required capability (repeatable).")
@click.option("--data", help="JSON object: the task's input.")
@click.option("--id", "task_id", help="Task id (default: generated).")
@click.option("--strategy", help="Assignment strategy hint.")
@click.option("--command-id", help="Idempotency key: a repeat returns the first outcome.")
@_client
def task_submit(type_: str, priority: int, required: tuple[str, ...], data: str | None, task_id: str | None,
                strategy: str | None, command_id: str | None, settings: Settings) -> None:
    """Submit a task of type TYPE."""
    _write(settings, "POST", "/v1/tasks", {
        "task_id": task_id, "type": type_, "priority": priority, "required_capabilities": list(required),
        "data": _json_arg(data, "--data"), "strategy": strategy,
    }, command_id)


@task.command("list")
@click.option("--status",
              type=click.Choice(["queued", "assigned", "running", "completed", "failed", "cancelled"]))
@click.option("--agent", "agent_id")
@click.option("--type", "type_")
@click.option("--page", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--page-size", type=click.IntRange(1, 500), default=50, show_default=True)
@_client
def task_list(status: str | None, agent_id: str | None, type_: str | None, page: int, page_size: int,
              settings: Settings) -> None:
    """List the pool's tasks, a page at a time."""
    _request(settings.url, "GET", "/v1/tasks", params={
        "pool": settings.pool, "status": status, "agent_id": agent_id, "type": type_, "page": page,
        "page_size": page_size})


@task.command("show")
@click.argument("task_id")
@_client
def task_show(task_id: str, settings: Settings) -> None:
    """Show one task."""
    _request(settings.url, "GET", f"/v1/tasks/{task_id}", params={"pool": settings.pool})


@task.command("start")
@click.argument("task_id")
@click.option("--agent", "agent_id", help="The agent that holds it (checked by the decider).")
@_client
def task_start(task_id: str, agent_id: str | None, settings: Settings) -> None:
    """Mark TASK_ID as started by its agent."""
    _write(settings, "POST", f"/v1/tasks/{task_id}/start", {"agent_id": agent_id})


@task.command("complete")
@click.argument("task_id")
@click.option("--agent", "agent_id", help="The agent that holds it (checked by the decider).")
@click.option("--result", help="JSON object: the task's output.")
@_client
def task_complete(task_id: str, agent_id: str | None, result: str | None, settings: Settings) -> None:
    """Mark TASK_ID as completed."""
    _write(settings, "POST", f"/v1/tasks/{task_id}/complete",
           {"agent_id": agent_id, "result": _json_arg(result, "--result")})


@task.command("fail")
@click.argument("task_id")
@click.option("--agent", "agent_id", help="The agent that holds it (checked by the decider).")
@click.option("--error", default="failed", show_default=True)
@_client
def task_fail(task_id: str, agent_id: str | None, error: str, settings: Settings) -> None:
    """Mark TASK_ID as failed."""
    _write(settings, "POST", f"/v1/tasks/{task_id}/fail", {"agent_id": agent_id, "error": error})


@task.command("cancel")
@click.argument("task_id")
@click.option("--reason")
@_client
def task_cancel(task_id: str, reason: str | None, settings: Settings) -> None:
    """Cancel TASK_ID."""
    _write(settings, "POST", f"/v1/tasks/{task_id}/cancel", {"reason": reason})


@click.group()
def cost() -> None:
    """Record costs and read the spend (talks to a running server)."""


@cost.command("record")
@click.option("--agent", "agent_id", required=True)
@click.option("--model", required=True)
@click.option("--input-tokens", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--output-tokens", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--cost-usd", type=click.FloatRange(min=0), help="Default: priced from the model price table.")
@click.option("--task", "task_id")
@click.option("--id", "cost_id", help="Cost id (default: generated).")
@_client
def cost_record(agent_id: str, model: str, input_tokens: int, output_tokens: int, cost_usd: float | None,
                task_id: str | None, cost_id: str | None, settings: Settings) -> None:
    """Record what one model call cost."""
    _write(settings, "POST", "/v1/costs", {
        "cost_id": cost_id, "agent_id": agent_id, "task_id": task_id, "model": model,
        "input_tokens": input_tokens, "output_tokens": output_tokens, "cost_usd": cost_usd,
    })


@cost.command("summary")
@_client
def cost_summary(settings: Settings) -> None:
    """Spend by agent, model and task, and the budgets."""
    _request(settings.url, "GET", "/v1/costs/summary", params={"pool": settings.pool})


@click.command()
@click.argument("type_name")
@click.argument("data", default="{}")
@click.option("--command-id", help="Idempotency key: a repeat returns the first outcome.")
@_client
def send(type_name: str, data: str, command_id: str | None, settings: Settings) -> None:
    """Send any command TYPE_NAME with DATA (a JSON object), e.g. SetBudget '{"limit_usd": 5}'."""
    payload = _json_arg(data, "DATA")
    if not isinstance(payload, dict):
        raise click.BadParameter("must be a JSON object", param_hint="DATA")
    body: dict[str, Any] = {"type": type_name, "data": payload, "pool": settings.pool}
    if command_id is not None:
        body["command_id"] = command_id
    _request(settings.url, "POST", "/v1/commands", params={"wait": "true"}, body=body)


agent.add_command(run_command, "run")
