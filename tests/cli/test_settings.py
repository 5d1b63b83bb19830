"""One settings object (a flag beats ``AGENTBUS_*``, which beats the default); one factory picks the
runtime from the log URL."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from services.bench.scenario import run_namespace
from services.cli import main
from services.runtime.cluster import ClusterService
from services.runtime.embedded import Runner
from services.runtime.service import SettingsError, check_service, open_service, topics_of
from services.runtime.settings import Settings
from services.runtime.topics import Topics


def test_keywords_beat_the_environment_which_beats_the_defaults(monkeypatch: pytest.MonkeyPatch,
                                                                 tmp_path: Path) -> None:
    default = Settings()
    assert (default.data_dir, default.port, default.partitions, default.app_id) == (
        Path("agentbus-data"), 8080, 1, "agentbus")
    assert default.broker == "sqlite:///agentbus-data/log.db"
    assert default.database == "sqlite+aiosqlite:///agentbus-data/read.db"
    assert default.topics == Topics() and default.scaling_webhook is None

    monkeypatch.setenv("AGENTBUS_DATA", str(tmp_path / "env"))
    monkeypatch.setenv("AGENTBUS_PORT", "9001")
    monkeypatch.setenv("AGENTBUS_TOPIC_PREFIX", "blue.")
    monkeypatch.setenv("AGENTBUS_APP_ID", "blue")
    monkeypatch.setenv("AGENTBUS_SCALING_WEBHOOK", "")  # empty is unset
    env = Settings()
    assert env.data_dir == tmp_path / "env" and env.broker == f"sqlite:///{tmp_path}/env/log.db"
    assert (env.port, env.app_id, env.scaling_webhook) == (9001, "blue", None)
    assert env.topics == Topics("blue.commands", "blue.events", "blue.commands.dlq")

    given = Settings(data_dir=tmp_path / "kw", port=9002, app_id="green")
    assert given.data_dir == tmp_path / "kw" and given.database == f"sqlite+aiosqlite:///{tmp_path}/kw/read.db"
    assert (given.port, given.app_id, given.topic_prefix) == (9002, "green", "blue.")


def test_prices_are_no_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Prices are each pool's, changed by commands on the log (``agentbus prices set``): a file named
    by a variable could change under a replay."""
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"house-model": {"input_per_1k": 0.5, "output_per_1k": 1.5}}))
    monkeypatch.setenv("AGENTBUS_PRICES", str(prices))
    assert "prices" not in Settings.model_fields
    assert Settings().decider == Settings(data_dir=tmp_path).decider


def test_a_flag_beats_the_environment_which_beats_the_default(monkeypatch: pytest.MonkeyPatch,
                                                              tmp_path: Path) -> None:
    def broker_named(*args: str) -> str:
        # An empty log has no events topic: the error names the log the settings chose.
        result = CliRunner().invoke(main, ["events", "tail", *args])
        assert result.exit_code == 1, result.output
        return result.output

    monkeypatch.chdir(tmp_path)
    assert "in sqlite:///agentbus-data/log.db" in broker_named()
    monkeypatch.setenv("AGENTBUS_DATA", str(tmp_path / "env"))
    assert f"in sqlite:///{tmp_path}/env/log.db" in broker_named()
    assert f"in sqlite:///{tmp_path}/flag/log.db" in broker_named("--data-dir", str(tmp_path / "flag"))
    monkeypatch.setenv("AGENTBUS_BROKER", f"sqlite:///{tmp_path}/b/log.db")
    assert f"in sqlite:///{tmp_path}/b/log.db" in broker_named("--data-dir", str(tmp_path / "flag"))


def test_client_commands_take_url_and_pool_from_flags_then_environment_then_defaults(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def sent(*args: str) -> httpx.Request:
        seen: list[httpx.Request] = []
        transport = httpx.MockTransport(lambda r: seen.append(r) or httpx.Response(200, json={"items": []}))
        result = CliRunner().invoke(main, ["agent", "list", *args], obj={"transport": transport})
        assert result.exit_code == 0, result.output
        return seen[0]

    req = sent()
    assert (req.url.host, req.url.port, req.url.params["pool"]) == ("127.0.0.1", 8080, "default")
    monkeypatch.setenv("AGENTBUS_URL", "http://env.test:1")
    monkeypatch.setenv("AGENTBUS_POOL", "gpu")
    req = sent()
    assert (req.url.host, req.url.params["pool"]) == ("env.test", "gpu")
    req = sent("--url", "http://flag.test:2", "--pool", "cpu")
    assert (req.url.host, req.url.port, req.url.params["pool"]) == ("flag.test", 2, "cpu")


def test_without_a_url_the_client_looks_where_host_and_port_say_the_server_listens(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def sent() -> httpx.URL:
        seen: list[httpx.Request] = []
        transport = httpx.MockTransport(lambda r: seen.append(r) or httpx.Response(200, json={"items": []}))
        result = CliRunner().invoke(main, ["agent", "list"], obj={"transport": transport})
        assert result.exit_code == 0, result.output
        return seen[0].url

    monkeypatch.setenv("AGENTBUS_PORT", "18080")
    assert (sent().host, sent().port) == ("127.0.0.1", 18080)
    monkeypatch.setenv("AGENTBUS_HOST", "agentbus.internal")
    assert (sent().host, sent().port) == ("agentbus.internal", 18080)
    # A server listening on every interface is reached on the loopback one.
    monkeypatch.setenv("AGENTBUS_HOST", "0.0.0.0")
    assert sent().host == "127.0.0.1"
    monkeypatch.setenv("AGENTBUS_HOST", "::")
    assert (sent().host, sent().port) == ("::1", 18080)
    assert Settings(host="10.0.0.5", port=9).url == "http://10.0.0.5:9"
    monkeypatch.setenv("AGENTBUS_URL", "http://given.test:1")
    assert (sent().host, sent().port) == ("given.test", 1)
    assert "AGENTBUS_HOST" in CliRunner().invoke(main, ["task", "--help"]).output


def test_a_bad_setting_is_named_with_its_flag_and_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTBUS_PARTITIONS", "0")
    result = CliRunner().invoke(main, ["replay"])
    assert result.exit_code == 1
    assert "invalid settings: --partitions / AGENTBUS_PARTITIONS" in result.output
    result = CliRunner().invoke(main, ["replay", "--partitions", "0"])
    assert result.exit_code == 2  # a bad flag is a usage error: click checks the field's bounds


def test_every_deployment_command_takes_the_same_settings() -> None:
    for command in (("serve",), ("worker",), ("events", "tail"), ("events", "export"), ("events", "import"),
                    ("projections", "rebuild"), ("replay",)):
        out = CliRunner().invoke(main, [*command, "--help"]).output
        for flag, env in (("--broker", "AGENTBUS_BROKER"), ("--database", "AGENTBUS_DATABASE"),
                          ("--data-dir", "AGENTBUS_DATA"), ("--topic-prefix", "AGENTBUS_TOPIC_PREFIX"),
                          ("--app-id", "AGENTBUS_APP_ID")):
            assert flag in out and env in out, (command, flag)


def test_bench_takes_the_deployment_settings_and_nests_its_run_under_them(tmp_path: Path) -> None:
    out = CliRunner().invoke(main, ["bench", "--help"]).output
    for flag, env in (("--broker", "AGENTBUS_BROKER"), ("--database", "AGENTBUS_DATABASE"),
                      ("--topic-prefix", "AGENTBUS_TOPIC_PREFIX"), ("--app-id", "AGENTBUS_APP_ID"),
                      ("--partitions", "AGENTBUS_PARTITIONS")):
        assert flag in out and env in out, flag
    run = run_namespace(Settings(broker="kafka://127.0.0.1:9", topic_prefix="blue.", app_id="blue"))
    assert run.topic_prefix.startswith("blue.bench-") and run.topic_prefix.endswith(".")
    assert run.app_id.startswith("blue-bench-")
    assert run.topics.commands == f"{run.topic_prefix}commands"


def test_bench_refuses_an_embedded_log_that_holds_records(history: tuple[Path, object]) -> None:
    data, _ = history
    result = CliRunner().invoke(main, ["bench", "--broker", f"sqlite:///{data}/log.db", "--agents", "1",
                                       "--tasks", "1", "--no-http"])
    assert result.exit_code == 1, result.output
    assert "already holds records" in result.output


def test_the_factory_picks_the_runtime_from_the_log_url(tmp_path: Path) -> None:
    embedded = open_service(Settings(data_dir=tmp_path))
    assert isinstance(embedded, Runner) and embedded.topics == Topics()

    kafka = Settings(data_dir=tmp_path, broker="kafka://127.0.0.1:9", topic_prefix="p.", app_id="a",
                     session_timeout=3)
    api_only = open_service(kafka, worker=False)
    assert isinstance(api_only, ClusterService) and api_only.worker is None
    assert api_only.topics == Topics.prefixed("p.") == topics_of(kafka)
    with_worker = open_service(kafka)
    assert isinstance(with_worker, ClusterService) and with_worker.worker is not None
    worker = with_worker.worker
    try:
        assert (worker.app_id, worker.decider_group, worker.session_timeout) == ("a", "a-decider", 3)
        assert worker.topics == Topics.prefixed("p.")
    finally:
        asyncio.run(with_worker.stop())  # never started: only removes the worker's scratch directory


def test_the_embedded_runner_reads_the_plain_topics_whatever_the_prefix(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, topic_prefix="p.")
    assert topics_of(settings) == Topics() == open_service(settings).topics


def test_the_factory_refuses_settings_its_runtime_cannot_honour(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="needs a kafka:// broker"):
        check_service(Settings(data_dir=tmp_path), worker=False)
    hooked = Settings(broker="kafka://127.0.0.1:9", scaling_webhook="http://127.0.0.1:9/hook")
    with pytest.raises(SettingsError, match="embedded runner only"):
        open_service(hooked)
    result = CliRunner().invoke(main, ["serve", "--data-dir", str(tmp_path), "--no-worker"])
    assert result.exit_code == 1 and "needs a kafka:// broker" in result.output
