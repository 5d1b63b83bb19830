"""The commands that talk to a running server over HTTP: ``agent``, ``task``, ``cost``, ``prices``,
``send``.

Each builds one request from its arguments, sends it to the ``url`` setting for the ``pool``
setting, prints the JSON answer, and exits 1 with the server's message on 4xx/5xx. Writes wait
for their outcome (``?wait=true``). The ``url`` setting defaults to the server the ``host`` and
``port`` settings name, so a shell that runs ``serve`` with ``AGENTBUS_PORT`` finds it without more.
``agent run`` (a long-running local agent) lives beside the agent it runs, in
``services.cli.local_agent``.

A write's flags are its command's fields (``contracts.commands``), each typed and bounded by the
contract's own field (``field_option``), so a flag the server would refuse is a usage error here.

This module must never decide anything: the server validates and decides every command.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import httpx
from pydantic import BaseModel

from contracts import commands as c
from services.cli.common import (
    HTTP_TIMEOUT_S,
    bearer,
    dumps,
    fail,
    field_type,
    json_object,
    settings_options,
    transport,
)
from services.cli.local_agent import run_command
from services.runtime.settings import Settings
from services.tui.source import reason  # the one wording of the server's reasons, for every client

_client = settings_options("url", "pool")
F = TypeVar("F", bound=Callable[..., Any])

# Said once in every group's help: how a client command finds the server.
FINDS_THE_SERVER = ("Talks to a running server: --url or AGENTBUS_URL; without them "
                    "http://AGENTBUS_HOST:AGENTBUS_PORT (the address `agentbus serve` listens on, "
                    "default http://127.0.0.1:8080).")


def field_option(model: type[BaseModel], name: str, flag: str, *, dest: str | None = None,
                 **kwargs: Any) -> Callable[[F], F]:
    """``flag`` for the field ``name`` of a command contract, typed and bounded by that field; the
    command receives it as ``dest`` (default: the field's name)."""
    return click.option(flag, dest or name, type=field_type(model, name), **kwargs)


_command_id = click.option("--command-id", help="Idempotency key: a repeat returns the first outcome.")

# Read-your-write: a read answers once the read models reflect the write that printed this position.
_min_position = click.option(
    "--min-position", type=click.IntRange(min=0),
    help="Answer only once the read models reflect this position (the \"position\" a write printed); "
         "without it a read may not yet show a write just made.")


def _request(url: str, method: str, path: str, *, params: dict[str, Any] | None = None,
             body: dict[str, Any] | None = None, headers: dict[str, str] | None = None) -> None:
    """Send one request, print the JSON answer; exit 1 with the server's message on 4xx/5xx."""
    query = {k: v for k, v in (params or {}).items() if v is not None}
    try:
        with httpx.Client(base_url=url, timeout=HTTP_TIMEOUT_S, transport=transport(),
                          headers=bearer()) as client:
            resp = client.request(method, path, params=query, json=body, headers=headers)
    except httpx.HTTPError as exc:
        fail(f"cannot reach agentbus at {url}: {exc}")
    try:
        payload: Any = resp.json()
    except ValueError:
        payload = resp.text
    click.echo(dumps(payload, indent=True))
    if resp.status_code >= 400:
        fail(f"HTTP {resp.status_code}: {reason(payload)}")


def _write(settings: Settings, method: str, path: str, body: dict[str, Any] | None,
           command_id: str | None = None) -> None:
    """A write to the ``pool`` setting's pool that waits for its outcome."""
    body = {k: v for k, v in (body or {}).items() if v is not None}
    body["pool"] = settings.pool
    if command_id is not None:
        body["command_id"] = command_id
    _request(settings.url, method, path, params={"wait": "true"}, body=body)


def _retry(policy: str | None, **fields: Any) -> dict[str, Any] | None:
    """The retry policy: the ``--retry`` JSON object, with the single-field flags over it."""
    merged = {**(json_object(policy, "--retry") or {}), **{k: v for k, v in fields.items() if v is not None}}
    return merged or None


@click.group(help=f"Register, list, inspect and remove agents. {FINDS_THE_SERVER}")
def agent() -> None:
    pass


@agent.command("register")
@click.argument("name")
@click.option("--capability", "-c", "capabilities", multiple=True, help="A capability (repeatable).")
@field_option(c.RegisterAgent, "capacity", "--capacity", default=1, show_default=True,
              help="Tasks it can hold at once.")
@click.option("--kind", default="generic", show_default=True, help="Agent kind (what scaling policies name).")
@click.option("--id", "agent_id", help="Agent id (default: generated).")
@field_option(c.RegisterAgent, "heartbeat_timeout_s", "--heartbeat-timeout",
              help="Seconds without a heartbeat before it is presumed gone (server default: 30).")
@field_option(c.RegisterAgent, "weight", "--weight",
              help="Share of work under the weighted strategy, relative to other agents (server default: 1).")
@click.option("--metadata", help="JSON object of extra facts about the agent.")
@click.option("--retry", "retry_json",
              help="Retry policy (JSON object) for its tasks that have none of their own.")
@field_option(c.RegisterAgent, "breaker_threshold", "--breaker-threshold",
              help="Failed runs in a row that open its circuit breaker (overrides the pool policy's).")
@field_option(c.RegisterAgent, "breaker_cooldown_s", "--breaker-cooldown",
              help="Seconds its open breaker waits before a trial run (overrides the pool policy's).")
@_command_id
@_client
def agent_register(name: str, capabilities: tuple[str, ...], capacity: int, kind: str, agent_id: str | None,
                   heartbeat_timeout_s: float | None, weight: float | None, metadata: str | None,
                   retry_json: str | None, breaker_threshold: int | None, breaker_cooldown_s: float | None,
                   command_id: str | None, settings: Settings) -> None:
    """Register an agent called NAME."""
    _write(settings, "POST", "/v1/agents", {
        "agent_id": agent_id, "name": name, "kind": kind, "capabilities": list(capabilities),
        "capacity": capacity, "heartbeat_timeout_s": heartbeat_timeout_s, "weight": weight,
        "metadata": json_object(metadata, "--metadata"), "retry": json_object(retry_json, "--retry"),
        "breaker_threshold": breaker_threshold, "breaker_cooldown_s": breaker_cooldown_s,
    }, command_id)


@agent.command("list")
@click.option("--status", type=click.Choice(["active", "deregistered"]))
@_min_position
@_client
def agent_list(status: str | None, min_position: int | None, settings: Settings) -> None:
    """List the pool's agents."""
    _request(settings.url, "GET", "/v1/agents", params={"pool": settings.pool, "status": status,
                                                          "min_position": min_position})


@agent.command("show")
@click.argument("agent_id")
@_min_position
@_client
def agent_show(agent_id: str, min_position: int | None, settings: Settings) -> None:
    """Show one agent."""
    _request(settings.url, "GET", f"/v1/agents/{agent_id}",
             params={"pool": settings.pool, "min_position": min_position})


@agent.command("heartbeat")
@click.argument("agent_id")
@field_option(c.AgentHeartbeat, "load", "--load", help="Share of its capacity in use.")
@field_option(c.AgentHeartbeat, "cpu", "--cpu", help="CPU use it reports.")
@field_option(c.AgentHeartbeat, "memory", "--memory", help="Memory use it reports.")
@field_option(c.AgentHeartbeat, "queue", "--queue", help="Tasks waiting on its side.")
@_command_id
@_client
def agent_heartbeat(agent_id: str, load: float | None, cpu: float | None, memory: float | None,
                    queue: int | None, command_id: str | None, settings: Settings) -> None:
    """Report AGENT_ID alive."""
    _write(settings, "POST", f"/v1/agents/{agent_id}/heartbeat",
           {"load": load, "cpu": cpu, "memory": memory, "queue": queue}, command_id)


@agent.command("remove")
@click.argument("agent_id")
@click.option("--reason")
@_command_id
@_client
def agent_remove(agent_id: str, reason: str | None, command_id: str | None, settings: Settings) -> None:
    """Deregister AGENT_ID; its unfinished tasks go back to the queue."""
    _request(settings.url, "DELETE", f"/v1/agents/{agent_id}",
             params={"wait": "true", "pool": settings.pool, "reason": reason},
             headers=None if command_id is None else {"Idempotency-Key": command_id})


@click.group(help=f"Submit, list, inspect and drive tasks. {FINDS_THE_SERVER}")
def task() -> None:
    pass


@task.command("submit")
@click.argument("type_", metavar="TYPE")
@field_option(c.SubmitTask, "priority", "--priority", default=5, show_default=True,
              help="Higher goes first.")
@click.option("--require", "-r", "required", multiple=True, help="A required capability (repeatable).")
@click.option("--data", help="JSON object: the task's input.")
@click.option("--id", "task_id", help="Task id (default: generated).")
@click.option("--strategy", type=click.Choice(c.STRATEGIES),
              help="How the coordinator picks its agent (default: the pool policy's).")
@field_option(c.SubmitTask, "timeout_s", "--timeout",
              help="Seconds an assignment may run before it counts as failed (and is retried per the "
                   "retry policy).")
@click.option("--retry", "retry_json",
              help='Retry policy as a JSON object, e.g. \'{"max_attempts": 3, "strategy": "linear"}\'; '
                   "the --max-attempts and --retry-* flags override its fields.")
@field_option(c.RetryPolicy, "max_attempts", "--max-attempts", help="Runs in all, the first included.")
@field_option(c.RetryPolicy, "strategy", "--retry-strategy", dest="retry_strategy",
              help="How the delay between runs grows.")
@field_option(c.RetryPolicy, "base_delay_s", "--retry-base-delay", help="Seconds before the first retry.")
@field_option(c.RetryPolicy, "max_delay_s", "--retry-max-delay", help="Longest delay between runs, seconds.")
@field_option(c.RetryPolicy, "jitter", "--retry-jitter", help="Share of the delay spread either way.")
@click.option("--action", help="What the agent is asked to do (an executor's call: an HTTP method, a tool).")
@click.option("--parameters", help="JSON object: the call's parameters.")
@click.option("--agent", "agent_name", help="Pin the task to this agent (its id or name).")
@_command_id
@_client
def task_submit(type_: str, priority: int, required: tuple[str, ...], data: str | None, task_id: str | None,
                strategy: str | None, timeout_s: float | None, retry_json: str | None,
                max_attempts: int | None, retry_strategy: str | None, base_delay_s: float | None,
                max_delay_s: float | None, jitter: float | None, action: str | None, parameters: str | None,
                agent_name: str | None, command_id: str | None, settings: Settings) -> None:
    """Submit a task of type TYPE."""
    retry = _retry(retry_json, max_attempts=max_attempts, strategy=retry_strategy,
                   base_delay_s=base_delay_s, max_delay_s=max_delay_s, jitter=jitter)
    _write(settings, "POST", "/v1/tasks", {
        "task_id": task_id, "type": type_, "priority": priority, "required_capabilities": list(required),
        "data": json_object(data, "--data"), "strategy": strategy, "timeout_s": timeout_s, "retry": retry,
        "action": action, "parameters": json_object(parameters, "--parameters"), "agent_name": agent_name,
    }, command_id)


@task.command("list")
@click.option("--status",
              type=click.Choice(["queued", "assigned", "running", "completed", "failed", "cancelled"]))
@click.option("--agent", "agent_id")
@click.option("--type", "type_")
@click.option("--page", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--page-size", type=click.IntRange(1, 500), default=50, show_default=True)
@_min_position
@_client
def task_list(status: str | None, agent_id: str | None, type_: str | None, page: int, page_size: int,
              min_position: int | None, settings: Settings) -> None:
    """List the pool's tasks, a page at a time."""
    _request(settings.url, "GET", "/v1/tasks", params={
        "pool": settings.pool, "status": status, "agent_id": agent_id, "type": type_, "page": page,
        "page_size": page_size, "min_position": min_position})


_as_of = click.option("--as-of", help="As it was then: a position of the events topic (an integer, or "
                                       "<partition>:<position> pairs) or an RFC 3339 time.")


@task.command("show")
@click.argument("task_id")
@_as_of
@_min_position
@_client
def task_show(task_id: str, as_of: str | None, min_position: int | None, settings: Settings) -> None:
    """Show one task (now, or --as-of a position or time)."""
    _request(settings.url, "GET", f"/v1/tasks/{task_id}", params={"pool": settings.pool, "as_of": as_of,
                                                                  "min_position": min_position})


@task.command("history")
@click.argument("task_id")
@click.option("--after", type=click.IntRange(min=-1), help="Continue after this position (next_after).")
@_client
def task_history(task_id: str, after: int | None, settings: Settings) -> None:
    """Every event about a task, each with the command, decision and timer that caused it."""
    _request(settings.url, "GET", f"/v1/tasks/{task_id}/history",
             params={"pool": settings.pool, "after": after})


_holder = click.option("--agent", "agent_id", help="The agent that holds it (checked by the decider).")


@task.command("start")
@click.argument("task_id")
@_holder
@_command_id
@_client
def task_start(task_id: str, agent_id: str | None, command_id: str | None, settings: Settings) -> None:
    """Mark TASK_ID as started by its agent."""
    _write(settings, "POST", f"/v1/tasks/{task_id}/start", {"agent_id": agent_id}, command_id)


@task.command("complete")
@click.argument("task_id")
@_holder
@click.option("--result", help="JSON object: the task's output.")
@_command_id
@_client
def task_complete(task_id: str, agent_id: str | None, result: str | None, command_id: str | None,
                  settings: Settings) -> None:
    """Mark TASK_ID as completed."""
    _write(settings, "POST", f"/v1/tasks/{task_id}/complete",
           {"agent_id": agent_id, "result": json_object(result, "--result")}, command_id)


@task.command("fail")
@click.argument("task_id")
@_holder
@click.option("--error", default="failed", show_default=True)
@click.option("--error-code", help="A short code for the failure, e.g. http_status:404.")
@click.option("--retryable/--not-retryable", default=True, show_default=True,
              help="--not-retryable ends the task at once, whatever its retry policy.")
@_command_id
@_client
def task_fail(task_id: str, agent_id: str | None, error: str, error_code: str | None, retryable: bool,
              command_id: str | None, settings: Settings) -> None:
    """Mark TASK_ID as failed."""
    _write(settings, "POST", f"/v1/tasks/{task_id}/fail",
           {"agent_id": agent_id, "error": error, "error_code": error_code, "retryable": retryable},
           command_id)


@task.command("cancel")
@click.argument("task_id")
@click.option("--reason")
@_command_id
@_client
def task_cancel(task_id: str, reason: str | None, command_id: str | None, settings: Settings) -> None:
    """Cancel TASK_ID."""
    _write(settings, "POST", f"/v1/tasks/{task_id}/cancel", {"reason": reason}, command_id)


@click.group(help=f"Record costs and read the spend. {FINDS_THE_SERVER}")
def cost() -> None:
    pass


@cost.command("record")
@click.option("--agent", "agent_id", required=True)
@click.option("--model", required=True)
@field_option(c.RecordCost, "input_tokens", "--input-tokens", default=0, show_default=True)
@field_option(c.RecordCost, "output_tokens", "--output-tokens", default=0, show_default=True)
@field_option(c.RecordCost, "cost_usd", "--cost-usd",
              help="Default: priced from the pool's prices (`agentbus prices get`).")
@click.option("--task", "task_id")
@click.option("--id", "cost_id", help="Cost id (default: generated).")
@_command_id
@_client
def cost_record(agent_id: str, model: str, input_tokens: int, output_tokens: int, cost_usd: float | None,
                task_id: str | None, cost_id: str | None, command_id: str | None, settings: Settings) -> None:
    """Record what one model call cost."""
    _write(settings, "POST", "/v1/costs", {
        "cost_id": cost_id, "agent_id": agent_id, "task_id": task_id, "model": model,
        "input_tokens": input_tokens, "output_tokens": output_tokens, "cost_usd": cost_usd,
    }, command_id)


@cost.command("summary")
@_min_position
@_client
def cost_summary(min_position: int | None, settings: Settings) -> None:
    """Spend by agent, model and task, and the budgets."""
    _request(settings.url, "GET", "/v1/costs/summary",
             params={"pool": settings.pool, "min_position": min_position})


@cost.command("budgets")
@_min_position
@_client
def cost_budgets(min_position: int | None, settings: Settings) -> None:
    """The pool's budgets, with what is spent and left."""
    _request(settings.url, "GET", "/v1/budgets", params={"pool": settings.pool, "min_position": min_position})


@click.group(help="Read and change the model prices costs are priced at: the built-in table (list "
                  "prices, USD per 1K input and output tokens) with the pool's own changes over it. "
                  f"Every change is a command on the log. {FINDS_THE_SERVER}")
def prices() -> None:
    pass


@prices.command("get")
@_min_position
@_client
def prices_get(min_position: int | None, settings: Settings) -> None:
    """The pool's effective prices: every model, the default for a model in no table, strict."""
    _request(settings.url, "GET", "/v1/prices", params={"pool": settings.pool, "min_position": min_position})


def _price(input_per_1k: float | None, output_per_1k: float | None, what: str) -> dict[str, float] | None:
    """A price from its two flags: both or neither."""
    if input_per_1k is None and output_per_1k is None:
        return None
    if input_per_1k is None or output_per_1k is None:
        raise click.UsageError(f"{what} needs both its input and its output price")
    return {"input_per_1k": input_per_1k, "output_per_1k": output_per_1k}


def _prices_file(path: str) -> dict[str, Any]:
    """A prices file: a PUT /v1/prices body, or a plain map of model name to price."""
    try:
        body = json_object(Path(path).read_text(), "--file")
    except OSError as exc:
        raise click.BadParameter(str(exc), param_hint="--file") from None
    assert body is not None
    known = {"models", "default", "strict", "reset"}
    return body if set(body) & known else {"models": body}


@prices.command("set")
@click.option("--model", help="A model to price (with --input-per-1k and --output-per-1k).")
@field_option(c.ModelPrice, "input_per_1k", "--input-per-1k", help="USD per 1,000 input tokens of --model.")
@field_option(c.ModelPrice, "output_per_1k", "--output-per-1k",
              help="USD per 1,000 output tokens of --model.")
@click.option("--remove", "removed", multiple=True,
              help="A model to give back its built-in price (or none) (repeatable).")
@field_option(c.ModelPrice, "input_per_1k", "--default-input", dest="default_input",
              help="USD per 1,000 input tokens of a model in no table.")
@field_option(c.ModelPrice, "output_per_1k", "--default-output", dest="default_output",
              help="USD per 1,000 output tokens of a model in no table.")
@click.option("--strict/--no-strict", default=None,
              help="Reject a cost of a model in no table (UNKNOWN_MODEL_PRICE) instead of pricing it at "
                   "the default. Unchanged when not given.")
@click.option("--reset", is_flag=True, help="Forget the pool's earlier changes first.")
@click.option("--file", "file_", type=click.Path(exists=True, dir_okay=False),
              help='JSON file: {"models": {"gpt-4": {"input_per_1k": 0.03, "output_per_1k": 0.06}}, '
                   '"default": ..., "strict": ...}, or just the "models" object. The flags win over it.')
@_command_id
@_client
def prices_set(model: str | None, input_per_1k: float | None, output_per_1k: float | None,
               removed: tuple[str, ...], default_input: float | None, default_output: float | None,
               strict: bool | None, reset: bool, file_: str | None, command_id: str | None,
               settings: Settings) -> None:
    """Change the pool's prices; models not named keep theirs."""
    body: dict[str, Any] = _prices_file(file_) if file_ is not None else {}
    models: dict[str, Any] = dict(body.get("models") or {})
    if model is not None:
        price = _price(input_per_1k, output_per_1k, "--model")
        if price is None:
            raise click.UsageError("--model needs --input-per-1k and --output-per-1k")
        models[model] = price
    elif input_per_1k is not None or output_per_1k is not None:
        raise click.UsageError("--input-per-1k and --output-per-1k price the --model")
    models.update(dict.fromkeys(removed))
    body["models"] = models
    default = _price(default_input, default_output, "the default price")
    if default is not None:
        body["default"] = default
    if strict is not None:
        body["strict"] = strict
    if reset:
        body["reset"] = True
    _write(settings, "PUT", "/v1/prices", body, command_id)


@click.command(epilog=FINDS_THE_SERVER)
@click.argument("type_name")
@click.argument("data", default="{}")
@_command_id
@_client
def send(type_name: str, data: str, command_id: str | None, settings: Settings) -> None:
    """Send any command TYPE_NAME with DATA (a JSON object), e.g. SetBudget '{"limit_usd": 5}'."""
    body: dict[str, Any] = {"type": type_name, "data": json_object(data, "DATA"), "pool": settings.pool}
    if command_id is not None:
        body["command_id"] = command_id
    _request(settings.url, "POST", "/v1/commands", params={"wait": "true"}, body=body)


agent.add_command(run_command, "run")
