"""``agentbus prices get|set`` against a real ``agentbus serve``: every change is a command on the
log, and the next cost is priced by it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from services.cli import main
from tests.cli.test_client_server import PortFromEnvironment, cli, events_of
from tests.e2e.test_crash import Server

pytestmark = pytest.mark.slow


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Server]:
    server = PortFromEnvironment(tmp_path)
    try:
        asyncio.run(server.start_healthy())
        yield server
        asyncio.run(server.stop())
    finally:
        server.cleanup()


def answer(server: Server, *args: str) -> dict[str, Any]:
    return dict(json.loads(cli(server, *args).output))


def refused(server: Server, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), env={"AGENTBUS_PORT": str(server.port)})
    return result.exit_code, result.output


def test_prices_get_and_set_act_on_the_running_service(running: Server, tmp_path: Path) -> None:
    table = answer(running, "prices", "get")
    assert table["models"]["gpt-4"] == {"input_per_1k": 0.03, "output_per_1k": 0.06, "source": "built-in"}
    assert table["strict"] is False

    cli(running, "agent", "register", "bot", "--id", "a")
    cli(running, "cost", "record", "--agent", "a", "--model", "gpt-4", "--input-tokens", "1000", "--id", "c1")
    [c1] = [e for e in events_of(running, "c1") if e["type"] == "CostRecorded"]
    assert c1["data"]["cost_usd"] == 0.03

    out = answer(running, "prices", "set", "--model", "gpt-4", "--input-per-1k", "0.01",
                 "--output-per-1k", "0.02", "--default-input", "0.001", "--default-output", "0.002",
                 "--strict", "--command-id", "p-1")
    [event] = out["events"]
    assert event["type"] == "PricesSet" and event["commandid"] == "p-1"
    assert event["data"] == {"models": {"gpt-4": {"input_per_1k": 0.01, "output_per_1k": 0.02}},
                             "default": {"input_per_1k": 0.001, "output_per_1k": 0.002}, "strict": True}
    cli(running, "cost", "record", "--agent", "a", "--model", "gpt-4", "--input-tokens", "1000", "--id", "c2")
    [c2] = [e for e in events_of(running, "c2") if e["type"] == "CostRecorded"]
    assert c2["data"]["cost_usd"] == 0.01
    code, output = refused(running, "cost", "record", "--agent", "a", "--model", "house-llm",
                           "--input-tokens", "1000")
    assert code == 1 and "UNKNOWN_MODEL_PRICE" in output

    # A file: a PUT /v1/prices body, or just the models; the flags win over it.
    body = tmp_path / "prices.json"
    body.write_text(json.dumps({"models": {"house-llm": {"input_per_1k": 0.5, "output_per_1k": 1}},
                                "strict": True}))
    cli(running, "prices", "set", "--file", str(body), "--no-strict", "--remove", "gpt-4")
    plain = tmp_path / "models.json"
    plain.write_text(json.dumps({"other-llm": {"input_per_1k": 0.25, "output_per_1k": 0.5}}))
    written = answer(running, "prices", "set", "--file", str(plain))
    # The read models follow the log a moment later: the read says which write it must reflect.
    table = answer(running, "prices", "get", "--min-position", str(written["position"]))
    assert table["strict"] is False
    assert table["models"]["gpt-4"]["source"] == "built-in"
    assert table["models"]["house-llm"] == {"input_per_1k": 0.5, "output_per_1k": 1.0, "source": "pool"}
    assert table["models"]["other-llm"]["source"] == "pool"
    assert table["default"] == {"input_per_1k": 0.001, "output_per_1k": 0.002, "source": "pool"}

    written = answer(running, "prices", "set", "--reset")
    table = answer(running, "prices", "get", "--min-position", str(written["position"]))
    assert {m["source"] for m in table["models"].values()} == {"built-in"}
    assert table["default"]["source"] == "built-in"


def test_a_read_waits_for_the_position_it_names(running: Server) -> None:
    """``--min-position`` reaches the server: a position no write answered is refused, not ignored."""
    for read in (("prices", "get"), ("agent", "list"), ("task", "list"), ("cost", "summary"),
                 ("cost", "budgets"), ("workflow", "list")):
        code, output = refused(running, *read, "--min-position", "1000000")
        assert code == 1 and "HTTP 409" in output and "beyond the end" in output, (read, output)


def test_prices_set_refuses_what_the_server_would(running: Server) -> None:
    code, output = refused(running, "prices", "set", "--model", "gpt-4", "--input-per-1k", "0.01")
    assert code == 2 and "--model needs both its input and its output price" in output
    code, output = refused(running, "prices", "set", "--model", "gpt-4", "--input-per-1k", "-1",
                           "--output-per-1k", "1")
    assert code == 2 and "--input-per-1k" in output
    code, output = refused(running, "prices", "set", "--default-input", "0.1")
    assert code == 2 and "default price" in output
