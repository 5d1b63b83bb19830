"""``agentbus workflow``: ``validate`` on files alone, and run/status/list/cancel/signal/register
against a real ``agentbus serve``; ``run --wait`` as a real process, in a pipe and on a terminal
(a pseudo-terminal), and the examples of deploy/examples run to their end by ``agentbus agent run``
agents."""

from __future__ import annotations

import asyncio
import io
import json
import os
import pty
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
from click.testing import CliRunner, Result

from services.cli import main
from services.cli.workflow import Lines, follow
from tests.e2e.test_crash import REPO, Server

EXAMPLES = REPO / "deploy" / "examples"

BROKEN = """\
name: broken
inputs: {topic: {type: string, required: true}}
tasks:
  - name: fetch
    priority: 11
  - name: fetch
  - name: combine
    depends_on: [fetch, ghost]
    parameters: {text: "{{ tasks.summary.result }}"}
"""

# A step no agent can take: the run stays open until it is cancelled.
STUCK = """\
name: stuck
tasks:
  - {name: first, required_capabilities: [nobody-has-this]}
  - {name: second, depends_on: [first]}
"""

APPROVAL_ONLY = """\
name: approval_only
inputs: {who: {type: string, required: true}}
tasks:
  - {name: approve, type: signal}
"""


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_followed_steps_name_their_agent_by_its_registered_name_else_its_id() -> None:
    out = io.StringIO()
    lines = Lines(out)
    step = {"name": "fetch", "status": "running", "agent_id": "01a2-b3", "agent_name": "fetcher"}
    lines.show({"execution_id": "r1", "status": "running", "steps": [step]}, 0.1)
    unnamed = {**step, "name": "merge", "agent_id": "a9", "agent_name": None}
    lines.show({"execution_id": "r1", "status": "running", "steps": [step, unnamed]}, 0.2)
    assert out.getvalue().splitlines() == [
        "workflow r1: running", "step fetch: running (agent fetcher)", "step merge: running (agent a9)"]


@pytest.mark.parametrize("execution_id", ["p%42", "q?x", "r#1", "s/t", "u v"])
def test_an_execution_id_is_one_path_segment_whatever_it_holds(execution_id: str, tmp_path: Path) -> None:
    seen: list[httpx.Request] = []

    def server(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        run = {"execution_id": execution_id, "status": "completed", "steps": []}
        return httpx.Response(200, json=run)

    transport = httpx.MockTransport(server)
    definition = write(tmp_path, "flow.yaml", APPROVAL_ONLY)
    for args in (["status", execution_id], ["show", execution_id], ["cancel", execution_id],
                 ["signal", execution_id, "go/now?"], ["register", str(definition)]):
        result = CliRunner().invoke(main, ["workflow", *args], obj={"transport": transport},
                                    catch_exceptions=False)
        assert result.exit_code == 0, result.output
    with httpx.Client(transport=transport, base_url="http://t") as client:
        follow(client, "default", execution_id, None, None, out=io.StringIO())
    # The segments the server reads from each path: the id (and the signal's name) as given.
    paths = [(r.method, r.url.raw_path.decode().partition("?")[0]) for r in seen]
    segments = [(method, [unquote(part) for part in path.split("/")[3:]]) for method, path in paths]
    assert segments == [
        ("GET", [execution_id, "status"]), ("GET", [execution_id]), ("DELETE", [execution_id]),
        ("POST", [execution_id, "signals", "go/now?"]), ("PUT", ["approval_only"]), ("GET", [execution_id])]


# --- validate: the file alone ---------------------------------------------------------------------


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("*.yaml")))
def test_every_example_validates(example: str) -> None:
    result = invoke("workflow", "validate", str(EXAMPLES / example))
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().endswith("no problems")


def test_validate_lists_every_problem_with_its_path(tmp_path: Path) -> None:
    path = write(tmp_path, "broken.yaml", BROKEN)
    result = invoke("workflow", "validate", str(path))
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert [line.split(": ", 2)[1] for line in lines] == [
        "tasks[0].priority", "tasks[1].name", "tasks[2].depends_on[1]", "tasks[2].parameters.text"]
    assert "duplicate step name 'fetch'" in lines[1] and "'ghost'" in lines[2] and "summary" in lines[3]
    assert f"{path}: 4 problems" in result.stderr


def test_validate_reads_json_and_checks_inputs(tmp_path: Path) -> None:
    doc = {"name": "typed", "inputs": {"n": {"type": "integer", "required": True}, "s": {"type": "string"}},
           "tasks": [{"name": "a", "parameters": {"n": "{{ inputs.n }}"}}]}
    path = write(tmp_path, "typed.json", json.dumps(doc))
    assert invoke("workflow", "validate", str(path)).exit_code == 0
    # --input values are JSON when they read as JSON: 3 is a number, three is text.
    assert invoke("workflow", "validate", str(path), "--input", "n=3", "--input", "s=three").exit_code == 0
    bad = invoke("workflow", "validate", str(path), "--input", "n=three", "--inputs-json", '{"s": 1, "x": 2}')
    assert bad.exit_code == 1
    assert set(bad.stdout.splitlines()) == {
        f"{path}: inputs.n: input n must be of type integer, not string",
        f"{path}: inputs.s: input s must be of type string, not integer",
        f"{path}: inputs.x: no input x is declared"}
    missing = invoke("workflow", "validate", str(path), "--inputs-json", "{}")
    assert missing.exit_code == 1 and "inputs.n: input n is required" in missing.stdout


@pytest.mark.parametrize(("text", "where"), [
    ("name: w\ntasks: [\n", ":3:1:"),
    ("name: w\n  tasks: x\n", ":2:8:"),
])
def test_validate_names_the_line_and_column_of_malformed_yaml(tmp_path: Path, text: str, where: str) -> None:
    path = write(tmp_path, "bad.yaml", text)
    result = invoke("workflow", "validate", str(path))
    assert result.exit_code == 1
    assert f"{path}{where}" in result.stderr, result.stderr


@pytest.mark.parametrize(("name", "text", "where"), [
    ("dup.yaml", "name: dup\ntasks:\n  - {name: a}\ntasks:\n  - {name: b}\n", ":4:1:"),
    ("dup.json", '{"name": "dj",\n "tasks": [{"name": "a"}],\n "tasks": [{"name": "b"}]}', ":3:2:"),
])
def test_validate_refuses_a_key_written_twice(tmp_path: Path, name: str, text: str, where: str) -> None:
    path = write(tmp_path, name, text)
    result = invoke("workflow", "validate", str(path))
    assert result.exit_code == 1
    assert f"{path}{where} duplicate key 'tasks' (first at line 2, column " in result.stderr, result.stderr


def test_bad_input_flags_are_usage_errors(tmp_path: Path) -> None:
    path = write(tmp_path, "ok.yaml", APPROVAL_ONLY)
    assert invoke("workflow", "validate", str(path), "--input", "no-equals-sign").exit_code == 2
    assert invoke("workflow", "validate", str(path), "--inputs-json", "[1]").exit_code == 2
    assert invoke("workflow", "run", "--version", "1").exit_code == 2  # neither FILE nor --stored


# --- against a server -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("workflow-server"))
    try:
        asyncio.run(srv.start_healthy())
        yield srv
        asyncio.run(srv.stop())
    finally:
        srv.cleanup()


def cli(server: Server, *args: str) -> Result:
    return invoke(*args, "--url", server.url)


def get(server: Server, path: str, **params: Any) -> Any:
    resp = httpx.get(f"{server.url}{path}", params=params, timeout=10)
    assert resp.status_code == 200, resp.text
    return resp.json()


def events_of(server: Server, subject: str) -> list[dict[str, Any]]:
    return list(get(server, "/v1/events", subject=subject, limit=1000)["items"])


def wait_for(what: str, check: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def run_shown(server: Server, run_id: str) -> dict[str, Any] | None:
    resp = httpx.get(f"{server.url}/v1/workflows/{run_id}", timeout=10)
    return resp.json() if resp.status_code == 200 else None




@pytest.mark.slow
def test_run_starts_a_file_with_typed_inputs(server: Server, tmp_path: Path) -> None:
    path = write(tmp_path, "typed.yaml", "name: typed\ninputs: {n: {type: integer}, s: {type: string}}\n"
                                         "tasks: [{name: a, required_capabilities: [nobody-has-this]}]\n")
    result = cli(server, "workflow", "run", str(path), "--id", "typed-1", "--input", "n=3",
                 "--inputs-json", '{"s": "x", "n": 1}')
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert (answer["execution_id"], answer["name"], answer["status"]) == ("typed-1", "typed", "queued")
    [started] = [e for e in events_of(server, "typed-1") if e["type"] == "WorkflowStarted"]
    assert started["data"]["inputs"] == {"n": 3, "s": "x"}


@pytest.mark.slow
def test_a_refused_run_lists_the_servers_problems_as_paths_in_the_file(server: Server,
                                                                      tmp_path: Path) -> None:
    # Sound as a file; only the server knows the pool has no such agent.
    path = write(tmp_path, "pinned.yaml",
                 "name: pinned\ntasks:\n  - {name: a}\n  - {name: b, agent_name: nobody}\n")
    assert invoke("workflow", "validate", str(path)).exit_code == 0
    result = cli(server, "workflow", "run", str(path))
    assert result.exit_code == 1
    assert f"{path}: tasks[1].agent_name: no agent with id or name 'nobody'" in result.stderr
    assert "1 problem" in result.stderr


@pytest.mark.slow
def test_status_show_and_list(server: Server, tmp_path: Path) -> None:
    path = write(tmp_path, "stuck.yaml", STUCK)
    assert cli(server, "workflow", "run", str(path), "--id", "looked-at").exit_code == 0
    status = wait_for("the run in the read models",
                      lambda: (r := cli(server, "workflow", "status", "looked-at")).exit_code == 0 and r)
    assert json.loads(status.stdout)["execution_id"] == "looked-at"
    shown = json.loads(cli(server, "workflow", "show", "looked-at").stdout)
    assert [s["name"] for s in shown["steps"]] == ["first", "second"]
    listed = cli(server, "workflow", "list", "--page-size", "500")
    assert listed.exit_code == 0, listed.output
    assert "looked-at" in {w["execution_id"] for w in json.loads(listed.stdout)["workflows"]}
    missing = cli(server, "workflow", "status", "no-such-run")
    assert missing.exit_code == 1 and "HTTP 404" in missing.stderr


@pytest.mark.slow
def test_cancel_once(server: Server, tmp_path: Path) -> None:
    path = write(tmp_path, "stuck.yaml", STUCK)
    assert cli(server, "workflow", "run", str(path), "--id", "to-cancel").exit_code == 0
    first = cli(server, "workflow", "cancel", "to-cancel", "--reason", "no longer needed")
    assert first.exit_code == 0, first.output
    assert json.loads(first.stdout)["status"] == "applied"
    again = cli(server, "workflow", "cancel", "to-cancel")
    assert again.exit_code == 1 and "HTTP 409: INVALID_WORKFLOW_STATE" in again.stderr
    unknown = cli(server, "workflow", "cancel", "never-started")
    assert unknown.exit_code == 1 and "HTTP 404: UNKNOWN_WORKFLOW" in unknown.stderr


@pytest.mark.slow
def test_signal(server: Server, tmp_path: Path) -> None:
    path = write(tmp_path, "approval.yaml", APPROVAL_ONLY)
    assert cli(server, "workflow", "run", str(path), "--id", "to-signal", "--input", "who=ana").exit_code == 0
    unknown = cli(server, "workflow", "signal", "to-signal", "reject")
    assert unknown.exit_code == 1 and "HTTP 404: UNKNOWN_STEP" in unknown.stderr
    sent = cli(server, "workflow", "signal", "to-signal", "approve", "--data", '{"approver": "ana"}')
    assert sent.exit_code == 0, sent.output
    [signalled] = [e for e in events_of(server, "to-signal") if e["type"] == "WorkflowSignalled"]
    assert signalled["data"]["data"] == {"approver": "ana"}
    # The signal was the run's one step: the run is over, and a second signal is refused.
    again = cli(server, "workflow", "signal", "to-signal", "approve")
    assert again.exit_code == 1 and "HTTP 409: INVALID_WORKFLOW_STATE" in again.stderr


# --- run --wait: a real process ---------------------------------------------------------------------


def cli_process(server: Server, *args: str, **kwargs: Any) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTBUS_")}
    return subprocess.Popen([sys.executable, "-m", "services.cli", *args, "--url", server.url], cwd=REPO,
                            env=env, **kwargs)


@pytest.mark.slow
def test_wait_in_a_pipe_prints_a_line_per_change_and_exits_1_unless_completed(server: Server,
                                                                              tmp_path: Path) -> None:
    path = write(tmp_path, "stuck.yaml", STUCK)
    proc = cli_process(server, "workflow", "run", str(path), "--id", "waited", "--wait",
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for("the run to start", lambda: run_shown(server, "waited"))
        assert cli(server, "workflow", "cancel", "waited", "--reason", "stop waiting").exit_code == 0
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1, err
    lines = out.decode().splitlines()
    assert "\x1b[" not in out.decode()  # no terminal: no redrawing
    assert lines[0] == "workflow waited: queued" or lines[0] == "workflow waited: running"
    assert "workflow waited: cancelled" in lines
    assert lines[-2:] == ["step first: cancelled", "step second: skipped"] or \
        lines[-2:] == ["step first: skipped", "step second: skipped"], lines
    assert "workflow waited cancelled: stop waiting" in err.decode()


@pytest.mark.slow
def test_wait_gives_up_after_its_timeout(server: Server, tmp_path: Path) -> None:
    path = write(tmp_path, "stuck.yaml", STUCK)
    started = time.monotonic()
    result = cli(server, "workflow", "run", str(path), "--id", "timed", "--wait", "--timeout", "1")
    assert result.exit_code == 1
    assert "workflow timed is still" in result.stderr and "after 1s" in result.stderr
    assert time.monotonic() - started < 30
    # The run goes on.
    assert json.loads(cli(server, "workflow", "status", "timed").stdout)["status"] in ("queued", "running")


@pytest.mark.slow
def test_wait_on_a_terminal_redraws_a_table_in_place(server: Server, tmp_path: Path) -> None:
    path = write(tmp_path, "stuck.yaml", STUCK)
    leader, follower = pty.openpty()
    proc = cli_process(server, "workflow", "run", str(path), "--id", "on-a-tty", "--wait", "--timeout", "2",
                       stdin=follower, stdout=follower, stderr=follower)
    os.close(follower)
    shown = b""
    try:
        while True:
            ready, _, _ = select.select([leader], [], [], 60)
            assert ready, "the terminal went quiet"
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the process closed the terminal
                break
            if not chunk:
                break
            shown += chunk
        assert proc.wait(30) == 1
    finally:
        os.close(leader)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = shown.decode(errors="replace")
    # Drawn once, then moved back over (3 lines: the run and its two steps) and drawn again.
    assert "\x1b[3F\x1b[J" in text, text
    assert "stuck" in text and "on-a-tty" in text and "first" in text and "second" in text
    assert "still" in text  # the timeout, said once the table is left as it was


# --- the examples, run to their end by simulated agents ---------------------------------------------


class Agents:
    """``agentbus agent run`` processes."""

    def __init__(self, root: Path, url: str) -> None:
        self.root, self.url = root, url
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, *capabilities: str, capacity: int = 1) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTBUS_")}
        flags = [arg for c in capabilities for arg in ("-c", c)]
        with open(self.root / f"{name}.err", "wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "services.cli", "agent", "run", "--url", self.url, "--name", name,
                 *flags, "--capacity", str(capacity), "--heartbeat-s", "0.5", "--work-s", "0.2"],
                cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=err)
        self.procs.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip(), name  # registered

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            assert proc.stdout is not None
            proc.stdout.close()


@pytest.fixture
def agents(server: Server, tmp_path: Path) -> Iterator[Agents]:
    fleet = Agents(tmp_path, server.url)
    try:
        yield fleet
    finally:
        fleet.stop()


@pytest.mark.slow
def test_the_diamond_example_completes(server: Server, agents: Agents) -> None:
    agents.start("planner", "plan")
    agents.start("researcher", "research", capacity=3)
    agents.start("writer", "write")
    result = cli(server, "workflow", "run", str(EXAMPLES / "diamond.yaml"), "--id", "diamond-1",
                 "--input", "subject=solar panels", "--wait", "--timeout", "120")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    for step in ("plan", "research_history", "research_market", "research_risks", "report"):
        assert f"step {step}: completed" in lines
    assert lines[-1] == "workflow diamond-1 completed"
    run = get(server, "/v1/workflows/diamond-1")
    report = next(s for s in run["steps"] if s["name"] == "report")
    assert report["status"] == "completed" and run["completed_tasks"] == 5
    # Each step names the agent that ran it as it was registered (`agent run --name`).
    assert {s["name"]: s["agent_name"] for s in run["steps"]} == {
        "plan": "planner", "research_history": "researcher", "research_market": "researcher",
        "research_risks": "researcher", "report": "writer"}


def read_until(proc: subprocess.Popen[bytes], line: str, timeout: float = 60.0) -> list[str]:
    """The lines ``proc`` printed up to ``line`` (which must come within ``timeout`` seconds)."""
    assert proc.stdout is not None
    # Straight from the pipe: a buffered readline() may pull several lines in at once, and a
    # select() on the pipe then waits for more while the line sought sits in the buffer.
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    data = b""
    lines: list[str] = []
    while line not in lines:
        ready, _, _ = select.select([fd], [], [], max(deadline - time.monotonic(), 0))
        assert ready, f"no {line!r} within {timeout}s; printed: {lines}"
        chunk = os.read(fd, 65536)
        assert chunk, f"ended before {line!r}; printed: {lines}"
        data += chunk
        *complete, rest = data.split(b"\n")
        data = rest
        lines += [raw.decode() for raw in complete]
    return lines


@pytest.mark.slow
def test_the_approval_example_waits_for_its_signal(server: Server, agents: Agents) -> None:
    agents.start("writer", "write")
    agents.start("publisher", "publish")
    proc = cli_process(server, "workflow", "run", str(EXAMPLES / "approval.yaml"), "--id", "approval-1",
                       "--input", "document=q3-report", "--wait", "--timeout", "120",
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        # What the person following the run sees before they approve.
        seen = read_until(proc, "step approve: waiting")
        sent = cli(server, "workflow", "signal", "approval-1", "approve", "--data", '{"approver": "ana"}')
        assert sent.exit_code == 0, sent.output
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert "step draft: completed" in seen
    assert "step publish: completed" in out.decode() and "workflow approval-1 completed" in out.decode()
    publish = next(e for e in events_of(server, "approval-1.publish") if e["type"] == "TaskSubmitted")
    assert publish["data"]["data"]["parameters"]["approved_by"] == "ana"


@pytest.mark.slow
def test_the_research_digest_example_runs_as_written_with_simulated_agents(server: Server,
                                                                             agents: Agents) -> None:
    agents.start("fetcher", "http", capacity=2)
    agents.start("writer", "llm")
    result = cli(server, "workflow", "run", str(EXAMPLES / "research_digest.yaml"), "--id", "digest-1",
                 "--input", "topic=rust", "--wait", "--timeout", "120")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert "step fetch_a: completed" in result.stdout and "step combine: completed" in result.stdout
    fetch = next(e for e in events_of(server, "digest-1.fetch_a") if e["type"] == "TaskSubmitted")
    assert fetch["data"]["data"]["parameters"] == {"url": "https://example.org/rust"}
    combine = next(e for e in events_of(server, "digest-1.combine") if e["type"] == "TaskSubmitted")
    # The simulated fetcher's result body, read through the template.
    text = combine["data"]["data"]["parameters"]["text"]
    assert text.startswith("fetch digest-1.fetch_a done by "), text


# --- stored definitions (a server of its own) -------------------------------------------------------


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[Server]:
    srv = Server(tmp_path / "own")
    srv.root.mkdir()
    try:
        asyncio.run(srv.start_healthy())
        yield srv
        asyncio.run(srv.stop())
    finally:
        srv.cleanup()


@pytest.mark.slow
def test_register_then_run_a_stored_definition(own_server: Server, tmp_path: Path) -> None:
    path = write(tmp_path, "approval.yaml", APPROVAL_ONLY)
    first = cli(own_server, "workflow", "register", str(path))
    assert first.exit_code == 0, first.output
    assert json.loads(first.stdout)["status"] == "applied"
    same = cli(own_server, "workflow", "register", str(path))
    assert same.exit_code == 0, same.output
    assert json.loads(same.stdout)["status"] == "unchanged"
    path.write_text(APPROVAL_ONLY.replace("name: approval_only", "name: approval_only\ndescription: other"))
    changed = cli(own_server, "workflow", "register", str(path))
    assert changed.exit_code == 1 and "DEFINITION_EXISTS" in changed.stderr
    ran = cli(own_server, "workflow", "run", "--stored", "approval_only", "--version", "1.0.0",
              "--input", "who=bo", "--id", "from-stored")
    assert ran.exit_code == 0, ran.output
    assert json.loads(ran.stdout)["name"] == "approval_only"
    missing = cli(own_server, "workflow", "run", "--stored", "nothing_stored")
    assert missing.exit_code == 1 and "HTTP 404" in missing.stderr
