"""``agentbus workflow``: check a definition file, run it and follow it to its end, look at runs,
cancel and signal them, store named definitions.

``validate`` works on the file alone, with the same checks the server runs (every problem,
located); the other commands talk to a running server. ``run --wait`` follows the run with
``GET /v1/workflows/{id}``: on a terminal a live table of its steps redrawn in place, otherwise
one line per change, so a log or a CI job reads the same story. It exits 0 only when the run
completed.

This module must never decide anything: the server validates and decides every command (the
local checks only spare a round trip).
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote

import click
import httpx
import orjson

from services.cli.client import FINDS_THE_SERVER, _min_position, _request
from services.cli.common import HTTP_TIMEOUT_S, bearer, dumps, fail, json_object, settings_options, transport
from services.http.workflow_documents import check_definition, inputs_problems, load_document
from services.runtime.settings import Settings
from services.tui.source import reason

_client = settings_options("url", "pool")

FINAL = frozenset({"completed", "partially_completed", "failed", "cancelled", "timed_out"})
POLL_S = 0.25  # between two looks at a run being followed
# How long a run just started may be missing from the read models before that is an error.
APPEAR_S = 10.0
# How each status is shown on a terminal.
COLOURS = {"completed": "green", "running": "cyan", "assigned": "cyan", "queued": "blue",
           "retrying": "yellow", "waiting": "magenta", "failed": "red", "timed_out": "red",
           "cancelled": "yellow", "partially_completed": "yellow", "skipped": "bright_black",
           "pending": "bright_black"}


def _segment(text: str) -> str:
    """``text`` as one segment of a URL path: an id may hold '%', '?', '#' or '/', which would
    otherwise name another run (``p%42`` is ``pB``) or cut the path short."""
    return quote(text, safe="")


# --- reading a definition file --------------------------------------------------------------------


def _is_yaml(path: Path) -> bool:
    return path.suffix.lower() != ".json"


def _read(path: Path) -> tuple[bytes, Any]:
    """The file's bytes and the document in them; exit 1 naming the line and column of what does
    not parse."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        fail(f"cannot read {path}: {exc}")
    try:
        return raw, load_document(raw, as_yaml=_is_yaml(path))
    except ValueError as exc:  # a JSONDecodeError, YAMLDecodeError included
        lineno, colno = getattr(exc, "lineno", 1), getattr(exc, "colno", 1)
        fail(f"{path}:{lineno}:{colno}: {getattr(exc, 'msg', exc)}")


def _where(loc: list[str | int] | tuple[str | int, ...]) -> str:
    """A location as a path into the document: ``tasks[2].depends_on[0]``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out or "(the document)"


def _problem_lines(problems: list[dict[str, Any]], drop: tuple[str, ...] = ()) -> list[str]:
    """One line per problem: where, then what; ``drop`` is a prefix of every location to leave out."""
    lines = []
    for p in problems:
        loc = list(p.get("loc", []))
        if drop and tuple(loc[:len(drop)]) == drop:
            loc = loc[len(drop):]
        lines.append(f"{_where(loc)}: {p.get('msg')}")
    return lines


def _input_value(text: str) -> Any:
    """A ``--input`` value: JSON when it reads as JSON (numbers, true, null, objects), else text."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


def _inputs(pairs: tuple[str, ...], inputs_json: str | None) -> dict[str, Any] | None:
    """The inputs of ``--inputs-json`` with the ``--input k=v`` pairs over them (None: neither given)."""
    if not pairs and inputs_json is None:
        return None
    out = dict(json_object(inputs_json, "--inputs-json") or {})
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--input")
        out[key] = _input_value(value)
    return out


_input_options = [
    click.option("--input", "-i", "pairs", multiple=True, metavar="KEY=VALUE",
                 help="An input (repeatable); VALUE is read as JSON when it is JSON (42, true, [1]), "
                      "else as text."),
    click.option("--inputs-json", help="The inputs as a JSON object; --input pairs win over it."),
]


def _with_inputs(fn: Any) -> Any:
    for option in reversed(_input_options):
        fn = option(fn)
    return fn


# --- the group ------------------------------------------------------------------------------------


@click.group(help="Validate, run and follow workflows; look at, cancel and signal runs; store named "
                  f"definitions. {FINDS_THE_SERVER}")
def workflow() -> None:
    pass


@workflow.command("validate")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_with_inputs
def validate(file: Path, pairs: tuple[str, ...], inputs_json: str | None) -> None:
    """Check the definition in FILE (YAML, or JSON when it ends in .json) without a server.

    Lists every problem with where it is (e.g. tasks[2].depends_on[0]) and exits 1 when there is
    any. With --input/--inputs-json the inputs of a run are checked too. Pinned agents
    (agent_name) are checked by the server, when the workflow is run.
    """
    _, doc = _read(file)
    checked = check_definition(doc)
    inputs = _inputs(pairs, inputs_json)
    problems = checked.problems + ([] if inputs is None else inputs_problems(checked, inputs, ()))
    for line in _problem_lines(problems):
        click.echo(f"{file}: {line}")
    if problems:
        fail(f"{file}: {len(problems)} problem{'s' if len(problems) != 1 else ''}")
    assert checked.definition is not None
    defn = checked.definition
    steps = f"{len(defn.tasks)} step{'s' if len(defn.tasks) != 1 else ''}"
    click.echo(f"{file}: {defn.name} {defn.version}: {steps}, no problems")


@workflow.command("run")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=False)
@click.option("--stored", metavar="NAME", help="Run the stored definition NAME instead of a FILE.")
@click.option("--version", help="With --stored: the version to run (default: the one stored last).")
@_with_inputs
@click.option("--id", "execution_id", help="The run's id (default: generated).")
@click.option("--wait", is_flag=True, help="Follow the run until it ends; exit 0 only if it completed.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True),
              help="With --wait: give up after this many seconds (exit 1; the run goes on).")
@click.option("--command-id", help="Idempotency key: a repeat returns the first outcome.")
@_client
def run(file: Path | None, stored: str | None, version: str | None, pairs: tuple[str, ...],
        inputs_json: str | None, execution_id: str | None, wait: bool, timeout: float | None,
        command_id: str | None, settings: Settings) -> None:
    """Start a run of the definition in FILE (YAML, or JSON when it ends in .json).

    Prints the server's answer; with --wait follows the run instead: a live table of its steps on
    a terminal, else a line per change ("step fetch_a: running"), then its final status.
    """
    if (file is None) == (stored is None):
        raise click.UsageError("give a FILE or --stored NAME (one of them)")
    if version is not None and stored is None:
        raise click.UsageError("--version picks a version of a --stored definition")
    inputs = _inputs(pairs, inputs_json)
    headers = {} if command_id is None else {"Idempotency-Key": command_id}
    params: dict[str, Any] = {"pool": settings.pool, "wait": "true"}
    if file is not None:
        raw, _ = _read(file)  # a file that does not parse is named here, with its line
        headers["Content-Type"] = "application/yaml" if _is_yaml(file) else "application/json"
        params.update(inputs=None if inputs is None else dumps(inputs), execution_id=execution_id)
        body: bytes = raw
    else:
        body = orjson.dumps({k: v for k, v in {"definition": stored, "version": version, "inputs": inputs,
                                               "execution_id": execution_id}.items() if v is not None})
        headers["Content-Type"] = "application/json"
    with _http(settings) as client:
        resp = _send(client, "POST", "/v1/workflows", params=params, content=body, headers=headers)
        answer = _answer(resp, file)
        if not wait:
            click.echo(dumps(answer, indent=True))
            return
        if answer.get("execution_id") is None:  # a retry of a start not decided yet
            fail(f"the run is not started yet ({answer.get('command_status')}); try again shortly")
        final = follow(client, settings.pool, answer["execution_id"], answer["position"], timeout)
    _finish(final)


def _http(settings: Settings) -> httpx.Client:
    return httpx.Client(base_url=settings.url, timeout=HTTP_TIMEOUT_S, transport=transport(),
                        headers=bearer(settings))


def _send(client: httpx.Client, method: str, path: str, **kwargs: Any) -> httpx.Response:
    kwargs["params"] = {k: v for k, v in kwargs.get("params", {}).items() if v is not None}
    try:
        return client.request(method, path, **kwargs)
    except httpx.HTTPError as exc:
        fail(f"cannot reach agentbus at {client.base_url}: {exc}")


def _json(resp: httpx.Response) -> Any:
    try:
        return resp.json()
    except ValueError:
        return resp.text


def _answer(resp: httpx.Response, file: Path | None) -> dict[str, Any]:
    """The answer to a start; exit 1 with every problem listed (422) or the server's reason."""
    payload = _json(resp)
    if resp.status_code == 422 and isinstance(payload, dict) and isinstance(payload.get("detail"), list):
        # Locations in the file itself read as in `workflow validate`.
        where = f"{file}: " if file is not None else ""
        for line in _problem_lines(payload["detail"], drop=("body",) if file is not None else ()):
            click.echo(f"{where}{line}", err=True)
        fail(f"the server refused the workflow: {len(payload['detail'])} problem(s)")
    if resp.status_code >= 400 or not isinstance(payload, dict):
        fail(f"HTTP {resp.status_code}: {reason(payload)}")
    return payload


# --- following a run ------------------------------------------------------------------------------


class Lines:
    """Progress as plain lines: the run's status and each step's, whenever one changes."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.seen: dict[str, str] = {}

    def show(self, run: dict[str, Any], elapsed: float) -> None:
        changes = [("", f"workflow {run['execution_id']}: {run['status']}")]
        for step in run.get("steps", []):
            text = f"step {step['name']}: {step['status']}"
            if step.get("agent_id") and step["status"] in ("assigned", "running"):
                text += f" (agent {_agent(step)})"
            if step.get("error") and step["status"] in ("failed", "retrying"):
                text += f": {_error(step['error'])}"
            changes.append((step["name"], text))
        for key, text in changes:
            if self.seen.get(key) != text:
                self.seen[key] = text
                click.echo(text, file=self.out)

    def close(self) -> None:
        pass


class Live:
    """Progress on a terminal: a table of the steps, redrawn in place on every look."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.drawn = 0  # lines of the last drawing, to move back over

    def show(self, run: dict[str, Any], elapsed: float) -> None:
        steps = run.get("steps", [])
        done = sum(1 for s in steps if s["status"] == "completed")
        width = max([len(s["name"]) for s in steps] + [4])
        # A line wider than the terminal wraps, and the redraw would then move back too little.
        columns = shutil.get_terminal_size().columns - 1
        lines = [_fit(f"{click.style(run.get('name', ''), bold=True)} {run.get('version', '')}  "
                      f"{_status(run['status'])}  {done}/{len(steps)} steps completed  {elapsed:.1f}s  ",
                      run["execution_id"], columns)]
        for s in steps:
            detail = []
            if s.get("agent_id"):
                detail.append(f"agent {_agent(s)}")
            if s.get("attempts", 0) > 1:
                detail.append(f"attempt {s['attempts']}")
            if s.get("error"):
                detail.append(_error(s["error"]))
            elif s["status"] == "skipped" and s.get("reason"):
                detail.append(str(s["reason"]))
            status = _status(s["status"]) + " " * (11 - len(s["status"]))
            lines.append(_fit(f"  {s['name']:<{width}}  {status} ", ", ".join(detail), columns).rstrip())
        # Back to the first line of the last drawing, clear below, draw again.
        prefix = f"\x1b[{self.drawn}F\x1b[J" if self.drawn else ""
        self.out.write(prefix + "\n".join(lines) + "\n")
        self.out.flush()
        self.drawn = len(lines)

    def close(self) -> None:
        self.out.flush()


def _fit(styled: str, plain: str, columns: int) -> str:
    """``styled`` then as much of ``plain`` as fits in ``columns`` visible characters."""
    room = max(columns - len(click.unstyle(styled)), 0)
    return styled + (plain if len(plain) <= room else (plain[:max(room - 3, 0)] + "...")[:room])


def _status(status: str) -> str:
    return click.style(status, fg=COLOURS.get(status))


def _agent(step: dict[str, Any]) -> str:
    """A step's agent as a person reads it: its registered name, else its id."""
    return str(step.get("agent_name") or step["agent_id"])


def _error(error: Any) -> str:
    if isinstance(error, dict):
        return str(error.get("message") or error.get("code") or dumps(error))
    return str(error)


def follow(client: httpx.Client, pool: str, execution_id: str, position: int | None,
           timeout: float | None, out: TextIO | None = None) -> dict[str, Any]:
    """Follow run ``execution_id`` until it ends (or ``timeout`` seconds pass): its last state.

    ``position`` (the start's) is passed once as ``min_position``, so the first look already sees
    the run."""
    out = out or sys.stdout
    display: Lines | Live = Live(out) if out.isatty() else Lines(out)
    started = time.monotonic()
    params: dict[str, Any] = {"pool": pool, "min_position": position}
    run: dict[str, Any] | None = None
    try:
        while True:
            resp = _send(client, "GET", f"/v1/workflows/{_segment(execution_id)}", params=params)
            elapsed = time.monotonic() - started
            if resp.status_code == 200:
                run = resp.json()
                params.pop("min_position", None)
                display.show(run, elapsed)
                if run["status"] in FINAL:
                    return run
            elif resp.status_code == 404 and run is None and elapsed < APPEAR_S:
                pass  # the read models may not hold the run yet
            elif resp.status_code not in (502, 503, 504):
                fail(f"cannot follow workflow {execution_id}: HTTP {resp.status_code}: "
                     f"{reason(_json(resp))}")
            if timeout is not None and elapsed >= timeout:
                status = run["status"] if run is not None else "not seen"
                fail(f"workflow {execution_id} is still {status} after {timeout:g}s (it goes on; "
                     f"`agentbus workflow status {execution_id}` to look again)")
            time.sleep(POLL_S)
    finally:
        display.close()


def _finish(run: dict[str, Any]) -> None:
    """Print how the run ended; exit 1 unless it completed."""
    status, reason = run["status"], run.get("reason")
    line = f"workflow {run['execution_id']} {status}" + (f": {reason}" if reason else "")
    failed = [s for s in run.get("steps", []) if s["status"] == "failed"]
    if status == "completed":
        click.echo(line)
        return
    click.echo(line, err=True)
    for s in failed:
        click.echo(f"  step {s['name']} failed: {_error(s.get('error'))}", err=True)
    sys.exit(1)


# --- runs and definitions on the server -----------------------------------------------------------


@workflow.command("status")
@click.argument("execution_id")
@_min_position
@_client
def status(execution_id: str, min_position: int | None, settings: Settings) -> None:
    """Where run EXECUTION_ID is: status, progress, open steps, a summary."""
    _request(settings.url, "GET", f"/v1/workflows/{_segment(execution_id)}/status",
             params={"pool": settings.pool, "min_position": min_position})


@workflow.command("show")
@click.argument("execution_id")
@_min_position
@_client
def show(execution_id: str, min_position: int | None, settings: Settings) -> None:
    """Run EXECUTION_ID in full: inputs, definition, each step with its agent, attempts and result."""
    _request(settings.url, "GET", f"/v1/workflows/{_segment(execution_id)}",
             params={"pool": settings.pool, "min_position": min_position})


@workflow.command("list")
@click.option("--status", type=click.Choice(sorted(FINAL | {"queued", "running"})))
@click.option("--name", help="Only runs of this definition.")
@click.option("--page", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--page-size", type=click.IntRange(1, 500), default=50, show_default=True)
@_min_position
@_client
def list_runs(status: str | None, name: str | None, page: int, page_size: int, min_position: int | None,
              settings: Settings) -> None:
    """List the pool's runs, newest first, a page at a time."""
    _request(settings.url, "GET", "/v1/workflows", params={
        "pool": settings.pool, "status": status, "name": name, "page": page, "page_size": page_size,
        "min_position": min_position})


@workflow.command("cancel")
@click.argument("execution_id")
@click.option("--reason", help="Why (kept with the run).")
@click.option("--command-id", help="Idempotency key: a repeat returns the first outcome.")
@_client
def cancel(execution_id: str, reason: str | None, command_id: str | None, settings: Settings) -> None:
    """Cancel run EXECUTION_ID: its open steps are cancelled, those not started skipped."""
    _request(settings.url, "DELETE", f"/v1/workflows/{_segment(execution_id)}",
             params={"wait": "true", "pool": settings.pool, "reason": reason},
             headers=None if command_id is None else {"Idempotency-Key": command_id})


@workflow.command("signal")
@click.argument("execution_id")
@click.argument("name")
@click.option("--data", help="JSON object: the signal's data, the signal step's result.")
@click.option("--command-id", help="Idempotency key: a repeat returns the first outcome.")
@_client
def signal(execution_id: str, name: str, data: str | None, command_id: str | None,
           settings: Settings) -> None:
    """Send signal NAME (a `type: signal` step) to run EXECUTION_ID."""
    body: dict[str, Any] = {"data": json_object(data, "--data") or {}, "pool": settings.pool}
    if command_id is not None:
        body["command_id"] = command_id
    _request(settings.url, "POST", f"/v1/workflows/{_segment(execution_id)}/signals/{_segment(name)}",
             params={"wait": "true"}, body=body)


@workflow.command("register")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_client
def register(file: Path, settings: Settings) -> None:
    """Store the definition in FILE under its name and version, to run later with --stored.

    A version never changes: the same content again changes nothing, other content is refused
    (DEFINITION_EXISTS); store it as a new version.
    """
    raw, doc = _read(file)
    name = doc.get("name") if isinstance(doc, dict) else None
    if not isinstance(name, str) or not name:
        fail(f"{file}: the definition has no name")
    with _http(settings) as client:
        resp = _send(client, "PUT", f"/v1/workflow-definitions/{_segment(name)}",
                     params={"pool": settings.pool}, content=raw,
                     headers={"Content-Type": "application/yaml" if _is_yaml(file) else "application/json"})
    payload = _json(resp)
    if resp.status_code == 422 and isinstance(payload, dict) and isinstance(payload.get("detail"), list):
        for line in _problem_lines(payload["detail"], drop=("body",)):
            click.echo(f"{file}: {line}", err=True)
        fail(f"the server refused the definition: {len(payload['detail'])} problem(s)")
    click.echo(dumps(payload, indent=True))
    if resp.status_code >= 400:
        fail(f"HTTP {resp.status_code}: {reason(payload)}")
