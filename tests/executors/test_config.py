"""Executor configuration: the documented file parses as written, every rule refuses what it should
with a message that says what to do, literal secrets never get in (nor into a message), the
schema is exported, and references resolve in the executor process."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
import yaml
from click.testing import CliRunner
from pydantic import ValidationError

from contracts import commands as c
from contracts.executors import (
    DEFAULT_MAX_RESPONSE_BYTES,
    MAX_RESPONSE_BYTES,
    AiAgentConfig,
    ExecutorsFile,
    ExecutorsFileError,
    HttpApiConfig,
    McpServerConfig,
    is_sensitive_name,
)
from services.cli import main
from services.executors.files import load_executors, parse_executors
from services.executors.secrets import REDACTED, Redactor, SecretError, guarded, resolve, resolve_values

EXAMPLE = """\
agents:
  - name: search_api
    type: http_api                 # | ai_agent | mcp_server
    endpoint: https://api.example.com
    timeout: 30
    capacity: 8                    # concurrent calls
    capabilities: [http, search]
    authentication: {type: bearer, token: "${env:SEARCH_TOKEN}"}   # | api_key (key, header) | basic
    retry_config: {max_attempts: 3, initial_delay: 1.0, max_delay: 60, exponential_base: 2, jitter: true}
    circuit_breaker: {failure_threshold: 5, recovery_timeout: 60}
  - name: writer
    type: ai_agent
    provider: openai               # | anthropic
    base_url: https://api.openai.com/v1   # optional
    model: gpt-4o-mini
    api_key: "${env:OPENAI_API_KEY}"
    defaults: {temperature: 0.3, max_tokens: 1000}
  - name: tools
    type: mcp_server
    transport: streamable_http     # | stdio (command, args, env)
    url: http://127.0.0.1:9000/mcp
"""
LITERAL = 'a literal secret cannot be stored (it would be written to the event log); reference it as'
HOW = '"${env:NAME}" or "${file:/path}"'
SECRET = "sk-live-0123456789abcdef"


def _doc() -> dict[str, Any]:
    return copy.deepcopy(yaml.safe_load(EXAMPLE))


def _refused(doc: dict[str, Any]) -> str:
    """The problems of ``doc``, as load_executors words them (one per line)."""
    with pytest.raises(ExecutorsFileError) as info:
        parse_executors(json.dumps(doc))
    return str(info.value)


# --- the documented file --------------------------------------------------------------------------


def test_the_documented_file_parses_as_written() -> None:
    parsed = load_executors(EXAMPLE)
    api, writer, tools = parsed.agents
    assert isinstance(api, HttpApiConfig) and isinstance(writer, AiAgentConfig)
    assert isinstance(tools, McpServerConfig)
    assert (api.name, api.kind, api.pool) == ("search_api", "http_api", "default")
    assert (api.capacity, api.timeout) == (8, 30)
    assert api.capabilities == ("http", "search") and api.heartbeat_interval == 5.0
    assert api.authentication is not None and api.authentication.type == "bearer"
    assert api.authentication.token == "${env:SEARCH_TOKEN}"  # kept as the reference, never resolved
    assert api.retry_config is not None and api.retry_config.policy().max_attempts == 3
    assert api.circuit_breaker is not None and api.circuit_breaker.failure_threshold == 5
    assert api.max_response_bytes == DEFAULT_MAX_RESPONSE_BYTES and api.http2 is False
    assert api.result_headers == ("content-type", "etag", "location", "retry-after")
    assert (writer.provider, writer.model) == ("openai", "gpt-4o-mini")
    assert writer.api_key == "${env:OPENAI_API_KEY}"
    assert writer.defaults.temperature == 0.3 and writer.defaults.max_tokens == 1000
    assert writer.capacity == 4 and writer.kind == "ai_agent"
    assert tools.transport == "streamable_http" and tools.url == "http://127.0.0.1:9000/mcp"


def test_the_registration_it_becomes_is_a_valid_command() -> None:
    api = load_executors(EXAMPLE).agents[0]
    cmd = c.RegisterAgent(agent_id=api.name, name=api.name, kind=api.kind, capabilities=api.capabilities,
                          capacity=api.capacity, metadata=api.metadata)
    assert cmd.agent_id == "search_api"


def test_json_and_files_read_the_same(tmp_path: Path) -> None:
    as_yaml = tmp_path / "executors.yaml"
    as_yaml.write_text(EXAMPLE)
    as_json = tmp_path / "executors.json"
    as_json.write_text(json.dumps(_doc()))
    expected = load_executors(EXAMPLE)
    assert load_executors(as_yaml) == expected
    assert load_executors(str(as_json)) == expected
    assert parse_executors(json.dumps(_doc())) == expected


def test_every_header_value_may_embed_a_reference_and_other_values_stay_literal() -> None:
    doc = _doc()
    doc["agents"][0]["authentication"] = None
    doc["agents"][0]["headers"] = {"Authorization": "Bearer ${env:TOKEN}", "X-Tenant": "acme",
                                   "Cookie": "session=${file:/run/secrets/session}"}
    api = ExecutorsFile.model_validate(doc).agents[0]
    assert isinstance(api, HttpApiConfig) and api.headers["X-Tenant"] == "acme"


# --- rules ------------------------------------------------------------------------------------------

SECRET_FIELDS = [
    ("bearer token", lambda d: d["agents"][0].update(authentication={"type": "bearer", "token": SECRET}),
     "agents[0].authentication.token"),
    ("api_key key", lambda d: d["agents"][0].update(authentication={"type": "api_key", "key": SECRET}),
     "agents[0].authentication.key"),
    ("basic password", lambda d: d["agents"][0].update(
        authentication={"type": "basic", "username": "me", "password": SECRET}),
     "agents[0].authentication.password"),
    ("ai api_key", lambda d: d["agents"][1].update(api_key=SECRET), "agents[1].api_key"),
    ("authorization header", lambda d: d["agents"][0].update(
        authentication=None, headers={"authorization": f"Bearer {SECRET}"}), "agents[0].headers"),
    ("a header named *token*", lambda d: d["agents"][0].update(headers={"X-Upstream-Token": SECRET}),
     "agents[0].headers"),
    ("cookie on an mcp server", lambda d: d["agents"][2].update(headers={"Cookie": f"s={SECRET}"}),
     "agents[2].headers"),
    ("stdio env *_API_KEY", lambda d: d["agents"][2].update(
        transport="stdio", url=None, command="mcp-tools", env={"GITHUB_API_KEY": SECRET}), "agents[2].env"),
]


@pytest.mark.parametrize(("what", "change", "where"), SECRET_FIELDS, ids=[s[0] for s in SECRET_FIELDS])
def test_a_literal_secret_is_refused_with_how_to_reference_it(what: str, change: Any, where: str) -> None:
    doc = _doc()
    change(doc)
    message = _refused(doc)
    assert where in message and LITERAL in message and HOW in message
    assert SECRET not in message  # the refused value is never printed
    with pytest.raises(ValidationError) as info:  # nor by pydantic's own rendering
        ExecutorsFile.model_validate(doc)
    assert SECRET not in str(info.value)


@pytest.mark.parametrize("value", ["${env:}", "${env:1ABC}", "${ENV:X}", "${file:}", "x${env:A}", "${env:A"])
def test_a_credential_must_be_exactly_one_well_formed_reference(value: str) -> None:
    doc = _doc()
    doc["agents"][0]["authentication"]["token"] = value
    assert "agents[0].authentication.token" in _refused(doc)


RULES = [
    ("name with a slash", lambda d: d["agents"][0].update(name="a/b"), "agents[0].name", "'/'"),
    ("two agents, one name", lambda d: d["agents"][1].update(name="search_api"), "agents",
     "two agents are named 'search_api'"),
    ("no agents", lambda d: d.update(agents=[]), "agents", "at least 1"),
    ("unknown type", lambda d: d["agents"][0].update(type="ftp"), "agents[0]", "http_api"),
    ("unknown field", lambda d: d["agents"][0].update(endpiont="x"), "agents[0].endpiont", "not permitted"),
    ("capacity 0", lambda d: d["agents"][0].update(capacity=0), "agents[0].capacity", "greater than"),
    ("capacity 1001", lambda d: d["agents"][0].update(capacity=1001), "agents[0].capacity", "less than"),
    ("timeout 0", lambda d: d["agents"][0].update(timeout=0), "agents[0].timeout", "greater than"),
    ("breaker threshold 0", lambda d: d["agents"][0].update(circuit_breaker={"failure_threshold": 0}),
     "agents[0].circuit_breaker.failure_threshold", "greater than"),
    ("ftp endpoint", lambda d: d["agents"][0].update(endpoint="ftp://x.example"), "agents[0].endpoint",
     "http:// or https://"),
    ("a port out of range", lambda d: d["agents"][0].update(endpoint="https://x.example:70000"),
     "agents[0].endpoint", "Port out of range"),
    ("credentials in the endpoint", lambda d: d["agents"][0].update(endpoint="https://u:p@x.example"),
     "agents[0].endpoint", "must not hold credentials"),
    ("query in the endpoint", lambda d: d["agents"][0].update(endpoint="https://x.example/?k=1"),
     "agents[0]", "parameters.query"),
    ("max_response_bytes too large",
     lambda d: d["agents"][0].update(max_response_bytes=MAX_RESPONSE_BYTES + 1),
     "agents[0].max_response_bytes", "less than"),
    ("Idempotency-Key as a static header", lambda d: d["agents"][0].update(headers={"Idempotency-Key": "k"}),
     "agents[0].headers", "set by the executor"),
    ("a header twice", lambda d: d["agents"][0].update(headers={"X-A": "1", "x-a": "2"}),
     "agents[0].headers", "given twice"),
    ("a header value with a line break", lambda d: d["agents"][0].update(headers={"X-A": "1\r\nX-B: 2"}),
     "agents[0].headers.X-A", "pattern"),
    ("authentication and an Authorization header", lambda d: d["agents"][0].update(
        headers={"Authorization": "Bearer ${env:T}"}), "agents[0]", "give one or the other"),
    ("api_key header also static", lambda d: d["agents"][0].update(
        authentication={"type": "api_key", "key": "${env:K}", "header": "X-Key"},
        headers={"x-key": "${env:K2}"}), "agents[0]", "give one or the other"),
    ("unknown provider", lambda d: d["agents"][1].update(provider="mistral"), "agents[1].provider", "openai"),
    ("provider cloud without a key", lambda d: d["agents"][1].update(base_url=None, api_key=None),
     "agents[1]", "needs api_key"),
    ("temperature 3", lambda d: d["agents"][1].update(defaults={"temperature": 3}),
     "agents[1].defaults.temperature", "less than"),
    ("streamable_http without url", lambda d: d["agents"][2].update(url=None), "agents[2]", "needs url"),
    ("streamable_http with command", lambda d: d["agents"][2].update(command="x"), "agents[2]",
     "takes no command"),
    ("stdio without command", lambda d: d["agents"][2].update(transport="stdio", url=None), "agents[2]",
     "needs command"),
    ("stdio with url", lambda d: d["agents"][2].update(transport="stdio", command="x"), "agents[2]",
     "takes no url"),
]


@pytest.mark.parametrize(("what", "change", "where", "says"), RULES, ids=[r[0] for r in RULES])
def test_each_rule_refuses_with_a_located_message(what: str, change: Any, where: str, says: str) -> None:
    doc = _doc()
    change(doc)
    message = _refused(doc)
    assert f"{where}: " in message and says in message, message


def test_what_the_rules_allow() -> None:
    doc = _doc()
    doc["agents"][1].update(base_url="http://127.0.0.1:8000/v1", api_key=None)  # a local server, no key
    doc["agents"][2].update(transport="stdio", url=None, command="python", args=["-m", "tools"],
                            env={"GITHUB_TOKEN": "${env:GITHUB_TOKEN}", "LOG_LEVEL": "debug"})
    doc["agents"][0]["authentication"] = {"type": "basic", "username": "me", "password": "${file:~/pw}"}
    parsed = ExecutorsFile.model_validate(doc)
    assert parsed.agents[2].kind == "mcp_server"
    # The same name in two pools is two agents.
    doc["agents"][1].update(name="search_api", pool="other")
    assert ExecutorsFile.model_validate(doc).agents[1].pool == "other"


def test_sensitive_names() -> None:
    for name in ("Authorization", "Proxy-Authorization", "cookie", "X-API-Key", "api-key", "X-Auth-Token",
                 "CLIENT_SECRET", "DB_PASSWORD", "OPENAI_API_KEY"):
        assert is_sensitive_name(name), name
    for name in ("Accept", "X-Tenant", "LOG_LEVEL", "Content-Type"):
        assert not is_sensitive_name(name), name


def test_problems_are_located_by_line_and_parse_errors_by_column() -> None:
    text = EXAMPLE.replace("capacity: 8", "capacity: 0")
    with pytest.raises(ExecutorsFileError) as info:
        load_executors(text)
    line = 1 + text.splitlines().index("    capacity: 0                    # concurrent calls")
    assert info.value.problems == [
        f"line {line}: agents[0].capacity: Input should be greater than or equal to 1"]
    with pytest.raises(ExecutorsFileError) as info:
        load_executors("agents:\n  - name: [a\n")
    assert info.value.problems[0].startswith("line 3, column 1:")
    with pytest.raises(ExecutorsFileError, match="line 1, column 12"):
        load_executors('{"agents": ]}')
    with pytest.raises(ExecutorsFileError, match="a mapping with agents"):
        load_executors("- 1\n- 2\n")


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ExecutorsFileError, match="cannot be read") as info:
        load_executors(tmp_path / "nope.yaml")
    assert info.value.source.endswith("nope.yaml")


# --- the exported schema ------------------------------------------------------------------------------


def test_contracts_export_writes_the_executors_schema(tmp_path: Path) -> None:
    out = tmp_path / "schemas"
    result = CliRunner().invoke(main, ["contracts", "export", str(out)])
    assert result.exit_code == 0, result.output
    definitions = json.loads((out / "index.json").read_text())["definitions"]
    assert {"name": "ExecutorsFile", "file": "executors.json"} in definitions
    schema = json.loads((out / "executors.json").read_text())
    assert schema["$id"] == "urn:agentbus:schema:ExecutorsFile:1"
    jsonschema.validate(_doc(), schema)  # the documented file is valid against it
    bad = _doc()
    bad["agents"][0]["capacity"] = 0
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)
    literal = _doc()
    literal["agents"][0]["authentication"]["token"] = SECRET
    with pytest.raises(jsonschema.ValidationError):  # the schema's pattern refuses a literal too
        jsonschema.validate(literal, schema)


# --- resolving references -----------------------------------------------------------------------------


def test_env_and_file_references_resolve(tmp_path: Path) -> None:
    secret_file = tmp_path / "token"
    secret_file.write_text("from-a-file\n")
    env = {"TOKEN": "from-env"}
    assert resolve("${env:TOKEN}", "a.token", env) == "from-env"
    assert resolve(f"${{file:{secret_file}}}", "a.token", env) == "from-a-file"  # trailing newline dropped
    assert resolve("Bearer ${env:TOKEN}", "a.headers.Authorization", env) == "Bearer from-env"
    assert resolve("plain", "a.headers.X", env) == "plain"
    assert resolve_values({"A": "${env:TOKEN}", "B": "b"}, "a.headers", env) == {"A": "from-env", "B": "b"}


def test_a_guarded_configuration_may_not_reference_agentbus_own_secrets(tmp_path: Path) -> None:
    data, outside = tmp_path / "data", tmp_path / "outside"
    data.mkdir()
    outside.mkdir()
    (data / "secret.key").write_text("the sealing key")
    (outside / "token").write_text("a token")
    (outside / "link").symlink_to(data / "secret.key")  # a way into the data directory from outside
    env = {"AGENTBUS_SECRET_KEY": "k", "AGENTBUS_JWT_SECRET": "j", "OPENAI_API_KEY": "sk"}
    refused = [("${env:AGENTBUS_SECRET_KEY}", "own configuration"), ("${env:agentbus_jwt_secret}", "own"),
               (f"${{file:{data / 'secret.key'}}}", "data directory"),
               (f"${{file:{outside / '..' / 'data' / 'secret.key'}}}", "data directory"),
               (f"${{file:{outside / 'link'}}}", "data directory")]
    with guarded([data]):
        for reference, says in refused:
            with pytest.raises(SecretError, match=says):
                resolve(reference, "wf.authentication.token", env)
        assert resolve("${env:OPENAI_API_KEY}", "wf.api_key", env) == "sk"
        assert resolve(f"${{file:{outside / 'token'}}}", "wf.authentication.token", env) == "a token"
    # The deployment's own configuration is not guarded.
    assert resolve("${env:AGENTBUS_SECRET_KEY}", "api.authentication.token", env) == "k"
    assert resolve(f"${{file:{data / 'secret.key'}}}", "api.authentication.token", env) == "the sealing key"


def test_an_unresolvable_reference_names_the_reference_and_the_field(tmp_path: Path) -> None:
    with pytest.raises(SecretError) as info:
        resolve("Bearer ${env:NOT_SET_ANYWHERE}", "search_api.headers.Authorization", {"OTHER": SECRET})
    assert str(info.value) == ("search_api.headers.Authorization: ${env:NOT_SET_ANYWHERE} is not set in the "
                               "executor's environment")
    missing = tmp_path / "absent"
    with pytest.raises(SecretError) as info:
        resolve(f"${{file:{missing}}}", "search_api.authentication.token", {})
    assert str(info.value).startswith(f"search_api.authentication.token: ${{file:{missing}}} cannot be read")


def test_resolving_reads_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTBUS_TEST_SECRET", SECRET)
    assert resolve("${env:AGENTBUS_TEST_SECRET}", "x") == SECRET


def test_the_redactor_scrubs_secrets_from_text_and_json() -> None:
    redact = Redactor([SECRET, "abc"])  # too short to scrub: "abc" stays
    assert redact.text(f"Bearer {SECRET}, abc") == f"Bearer {REDACTED}, abc"
    scrubbed = redact.json({"h": [f"x{SECRET}"], SECRET: 1, "n": 2})
    assert scrubbed == {"h": [f"x{REDACTED}"], REDACTED: 1, "n": 2}
    assert Redactor().json({"a": SECRET}) == {"a": SECRET}
