"""Where users meet executors: ``POST /v1/agents/test`` and ``agentbus executor test`` (one call,
nothing registered), ``agentbus serve --executors`` refusing a bad file before it starts, a
workflow bringing its own executors (``agents:``), and the runnable example end to end."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from contracts import commands as c
from contracts import event_types as e
from contracts.workflows import WorkflowDefinition
from services.cli import main
from services.executors.standins.http_target import create_app
from services.executors.standins.serving import free_port, serving
from services.http.app import create_app as create_api
from tests.api.runtimes import embedded
from tests.executors.test_host import events, hosted, send, until

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "deploy" / "examples" / "executors"


@pytest.fixture(scope="module")
def target() -> Iterator[str]:
    with serving(create_app()) as url:
        yield url


async def test_trying_a_configuration_calls_it_once_and_registers_nothing(
        tmp_path: Path, target: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTBUS_GUARDED_SECRET", "not-for-your-endpoint")
    async with embedded(tmp_path) as service:
        app = create_api(service=service, settings=service.settings)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            before = len(await events(service))
            resp = await client.post("/v1/agents/test", json={
                "agent_config": {"name": "probe", "type": "http_api", "endpoint": target},
                "test_action": "GET", "test_parameters": {"path": "/echo/hello", "query": {"a": "1"}}})
            assert resp.status_code == 200, resp.text
            body = resp.json()
            assert body["agent_name"] == "probe" and body["success"] is True and body["error"] is None
            assert body["result"]["status"] == 200 and body["result"]["body"]["query"] == {"a": "1"}
            assert body["response_time"] > 0
            failed = (await client.post("/v1/agents/test", json={
                "agent_config": {"name": "probe", "type": "http_api", "endpoint": target},
                "test_parameters": {"path": "/status/404"}})).json()
            assert (failed["success"], failed["error_code"], failed["retryable"]) == (
                False, "http_status:404", False)
            # A literal secret is refused, says how to reference it, and is never echoed back.
            refused = await client.post("/v1/agents/test", json={
                "agent_config": {"name": "probe", "type": "http_api", "endpoint": target,
                                 "authentication": {"type": "bearer", "token": "sk-live-123456"}}})
            assert refused.status_code == 422
            assert "${env:NAME}" in refused.text and "sk-live-123456" not in refused.text
            missing = (await client.post("/v1/agents/test", json={
                "agent_config": {"name": "probe", "type": "http_api", "endpoint": target,
                                 "authentication": {"type": "bearer",
                                                    "token": "${env:AGENTBUS_NO_SUCH_VAR}"}},
                "test_parameters": {"path": "/echo"}})).json()
            assert missing["success"] is False and "AGENTBUS_NO_SUCH_VAR" in missing["error"]
            # Over the API, agentbus's own configuration is never resolved (sent to a caller's URL).
            for reference in ("${env:AGENTBUS_GUARDED_SECRET}",
                              f"${{file:{service.settings.data_dir / 'secret.key'}}}"):
                guarded_trial = (await client.post("/v1/agents/test", json={
                    "agent_config": {"name": "probe", "type": "http_api", "endpoint": target,
                                     "authentication": {"type": "bearer", "token": reference}},
                    "test_parameters": {"path": "/echo"}})).json()
                assert guarded_trial["success"] is False and guarded_trial["result"] is None
                assert "of a workflow or a trial may not reference" in guarded_trial["error"]
            assert len(await events(service)) == before  # nothing registered, nothing appended


async def test_a_trial_past_its_limit_is_a_timeout(target: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from contracts.executors import ExecutorsFile
    from services.executors import trial

    monkeypatch.setattr(trial, "TRIAL_TIMEOUT_S", 0.5)
    config = ExecutorsFile.model_validate({"agents": [{"name": "slow", "type": "http_api",
                                                       "endpoint": target}]}).agents[0]
    out = await trial.try_executor(config, "GET", {"path": "/slow", "query": {"seconds": 5}})
    assert (out["success"], out["error_code"], out["retryable"]) == (False, "timeout", True)
    assert "no answer within 0.5 s" in out["error"] and out["response_time"] < 3


def test_executor_test_on_the_command_line(tmp_path: Path, target: str) -> None:
    config = tmp_path / "x.yaml"
    config.write_text(f"agents:\n  - {{name: api, type: http_api, endpoint: '{target}'}}\n")
    ok = CliRunner().invoke(main, ["executor", "test", "--config", str(config), "--action", "GET",
                                   "--parameters", '{"path": "/echo/x"}'])
    assert ok.exit_code == 0, ok.output
    assert '"success": true' in ok.output
    bad = CliRunner().invoke(main, ["executor", "test", "--config", str(config),
                                    "--parameters", '{"path": "/status/500"}'])
    assert bad.exit_code == 1 and '"retryable": true' in bad.output


def test_serve_refuses_a_bad_executors_file_before_it_starts(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("agents:\n  - {name: api, type: http_api, endpoint: 'http://x', "
                      "authentication: {type: bearer, token: plain-secret}}\n")
    out = CliRunner().invoke(main, ["serve", "--data-dir", str(tmp_path / "d"), "--executors", str(config)])
    assert out.exit_code == 1
    assert "literal secret" in out.output and "plain-secret" not in out.output


def test_executor_run_names_a_missing_reference_and_exits_1(tmp_path: Path) -> None:
    config = tmp_path / "x.yaml"
    config.write_text("agents:\n  - {name: api, type: http_api, endpoint: 'http://127.0.0.1:9', "
                      "authentication: {type: bearer, token: '${env:AGENTBUS_NO_SUCH_TOKEN}'}}\n")
    clean = {name: None for name in os.environ if name.startswith("AGENTBUS_")}
    out = CliRunner().invoke(main, ["executor", "run", "--config", str(config),
                                    "--data-dir", str(tmp_path / "d")], env=clean)
    assert out.exit_code == 1, out.output
    assert "an executor did not start: api.authentication.token: ${env:AGENTBUS_NO_SUCH_TOKEN} is not set" \
        in out.output
    assert "Traceback" not in out.output


async def test_a_workflow_brings_its_own_executor(tmp_path: Path, target: str) -> None:
    definition = WorkflowDefinition.model_validate({
        "name": "own", "agents": [{"name": "wf_api", "type": "http_api", "endpoint": target,
                                   "capabilities": ["wf-http"]}],
        "tasks": [{"name": "ping", "agent_name": "wf_api", "action": "GET",
                   "parameters": {"path": "/echo/ping"}},
                  {"name": "pong", "required_capabilities": ["wf-http"], "depends_on": ["ping"],
                   "action": "POST", "parameters": {"path": "/echo/pong",
                                                     "body": {"got": "{{ tasks.ping.result.status }}"}}}]})
    async with embedded(tmp_path) as service, hosted(service, _none(), workflow_agents=True):
        await send(service, c.StartWorkflow(workflow_id="w1", definition=definition))
        envs = await until(service, lambda envs: any(isinstance(x.data, e.WorkflowEnded) for x in envs))
        [ended] = [x.data for x in envs if isinstance(x.data, e.WorkflowEnded)]
        assert ended.status == "completed", [x.data for x in envs if isinstance(x.data, e.TaskFailed)]
        done = {x.data.task_id: x.data for x in envs if isinstance(x.data, e.TaskCompleted)}
        assert done["w1.pong"].agent_id == "wf_api"
        assert done["w1.pong"].result["body"]["body"] == {"got": 200}


async def test_a_workflow_whose_own_executor_cannot_start_is_cancelled_saying_why(
        tmp_path: Path, target: str) -> None:
    definition = WorkflowDefinition.model_validate({
        "name": "keyless", "agents": [{"name": "wf_llm", "type": "ai_agent", "provider": "openai",
                                       "model": "gpt-4o-mini", "api_key": "${env:AGENTBUS_NO_SUCH_KEY}"}],
        "tasks": [{"name": "write", "agent_name": "wf_llm", "parameters": {"prompt": "hi"}}]})
    async with embedded(tmp_path) as service, hosted(service, _none(), workflow_agents=True):
        await send(service, c.StartWorkflow(workflow_id="w1", definition=definition))
        envs = await until(service, lambda envs: any(isinstance(x.data, e.WorkflowEnded) for x in envs))
        [ended] = [x.data for x in envs if isinstance(x.data, e.WorkflowEnded)]
        assert ended.status == "cancelled"
        assert ended.reason is not None and "'wf_llm'" in ended.reason
        assert "AGENTBUS_NO_SUCH_KEY" in ended.reason
        assert not any(isinstance(x.data, e.TaskAssigned) for x in envs)


async def test_a_workflows_own_executor_may_not_reference_agentbus_own_secrets(
        tmp_path: Path, target: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTBUS_GUARDED_SECRET", "not-for-your-endpoint")
    definition = WorkflowDefinition.model_validate({
        "name": "exfiltrate", "agents": [{
            "name": "wf_out", "type": "http_api", "endpoint": target,
            "authentication": {"type": "bearer", "token": "${env:AGENTBUS_GUARDED_SECRET}"}}],
        "tasks": [{"name": "send", "agent_name": "wf_out", "action": "GET",
                   "parameters": {"path": "/echo"}}]})
    async with embedded(tmp_path) as service, hosted(service, _none(), workflow_agents=True):
        await send(service, c.StartWorkflow(workflow_id="w1", definition=definition))
        envs = await until(service, lambda envs: any(isinstance(x.data, e.WorkflowEnded) for x in envs))
        [ended] = [x.data for x in envs if isinstance(x.data, e.WorkflowEnded)]
        assert ended.status == "cancelled" and ended.reason is not None
        assert "AGENTBUS_GUARDED_SECRET" in ended.reason and "may not reference" in ended.reason
        assert not any(isinstance(x.data, e.TaskAssigned) for x in envs)


def _none() -> Any:
    from contracts.executors import ExecutorsFile

    return ExecutorsFile.model_construct(agents=())


@pytest.mark.slow
def test_the_example_runs_end_to_end(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTBUS_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["AGENTBUS_PORT"] = str(free_port())
    assert shutil.which("agentbus", path=env["PATH"]), "the agentbus command is not installed"
    out = subprocess.run(["bash", str(EXAMPLE / "run.sh"), "solar"], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=180)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "completed" in out.stdout
    assert '"agent_id": "tools"' in out.stdout and '"is_error": false' in out.stdout
    assert '"by_model":{"gpt-4o-mini"' in out.stdout  # the LLM call's usage became a recorded cost


def test_workflow_agents_is_a_flag_whose_absence_leaves_the_runtime_default() -> None:
    from services.cli.common import load_settings
    from services.executors.hosting import hosts_workflow_agents

    assert hosts_workflow_agents(load_settings()) is True  # embedded log: on
    assert hosts_workflow_agents(load_settings(broker="kafka://127.0.0.1:1")) is False  # Kafka: off
    assert hosts_workflow_agents(load_settings(broker="kafka://127.0.0.1:1", workflow_agents=True)) is True
    out = CliRunner().invoke(main, ["serve", "--help"])
    assert "--workflow-agents / --no-workflow-agents" in out.output
