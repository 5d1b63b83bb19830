"""Executor configuration: the YAML/JSON users write to have agentbus host agents that call the
outside world (``http_api``, ``ai_agent``, ``mcp_server``), validated field by field.

Each entry of ``agents`` becomes an agent (its ``name`` the agent id) that the executor process
registers, heartbeats and runs tasks for. The configuration is written to the log with the
agent, so **secrets never appear in it as values**: a credential (a bearer token, an API key, a
password, a header or environment value whose name looks sensitive) must be a reference,
``${env:NAME}`` or ``${file:PATH}``, resolved by the executor process when it starts
(``services.executors.secrets``). A literal is refused with a message that says how to reference
it, and inputs are hidden from validation messages so a refused literal is not printed either.

Pure: data and rules about data (reading a file is ``services.executors.files``). Must never
resolve a reference.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from contracts.base import Model
from contracts.envelope import DEFAULT_POOL
from contracts.scheduling import MAX_SECONDS, RetryConfig
from contracts.values import Capabilities, Id, JSONObject, Key, Name, Text

__all__ = [
    "DEFAULT_MAX_RESPONSE_BYTES",
    "DEFAULT_RESULT_HEADERS",
    "MAX_RESPONSE_BYTES",
    "SECRET_REFERENCE",
    "AiAgentConfig",
    "AiDefaults",
    "ApiKeyAuth",
    "Authentication",
    "BasicAuth",
    "BearerAuth",
    "CircuitBreakerConfig",
    "ExecutorConfig",
    "ExecutorType",
    "ExecutorsFile",
    "ExecutorsFileError",
    "HttpApiConfig",
    "McpServerConfig",
    "is_sensitive_name",
]

ExecutorType = Literal["http_api", "ai_agent", "mcp_server"]
MAX_EXECUTORS = 200
MAX_CAPACITY = 1000
MAX_HEADERS = 100
MAX_URL = 2000
# The response body an http_api result keeps. 64 KiB: whatever the body holds, its JSON form (at
# most six bytes per byte, for control characters written as \u00XX) stays far below the 1 MiB
# of a request to the HTTP API and of a Kafka record, and well within MAX_JSON_VALUES.
DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024
# The most it may be set to. The executor also cuts a body whose JSON form would make the result
# larger than this (services.executors.http_api.MAX_RESULT_BYTES), so a result is always storable.
MAX_RESPONSE_BYTES = 256 * 1024
DEFAULT_RESULT_HEADERS = ("content-type", "etag", "location", "retry-after")

# ``${env:NAME}`` (an environment variable) or ``${file:PATH}`` (a file's text, trailing newlines
# dropped), resolved in the executor process; never a value in the log.
SECRET_REFERENCE = re.compile(r"\$\{(env|file):([^}]*)\}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_WHOLE_REFERENCE = r"^\$\{(env:[A-Za-z_][A-Za-z0-9_]*|file:[^}]+)\}$"
_HOW = 'reference it as "${env:NAME}" or "${file:/path}"'
_LITERAL = f"a literal secret cannot be stored (it would be written to the event log); {_HOW}"

# Header and environment names that carry credentials: their values must hold a reference.
_SENSITIVE_NAMES = frozenset({"authorization", "proxy-authorization", "cookie", "x-api-key", "api-key"})
_SENSITIVE_PARTS = ("token", "secret", "password", "passwd", "key", "credential")
# Headers the executor sets itself on every request (or that httpx derives from the request).
_RESERVED_HEADERS = frozenset({"idempotency-key", "host", "content-length", "transfer-encoding"})


def is_sensitive_name(name: str) -> bool:
    """Whether a header or environment variable called ``name`` carries a credential."""
    low = name.lower()
    return low in _SENSITIVE_NAMES or any(part in low for part in _SENSITIVE_PARTS)


def _reference_problem(value: str) -> str | None:
    """Why a ``${...}`` in ``value`` is not a well-formed reference, or None."""
    for found in SECRET_REFERENCE.finditer(value):
        kind, target = found.groups()
        if kind == "env" and not _ENV_NAME.fullmatch(target):
            return f"{found.group()} is not a reference: an environment name is letters, digits and '_'"
        if kind == "file" and not target:
            return f"{found.group()} is not a reference: name the file, as ${{file:/path}}"
    if "${" in SECRET_REFERENCE.sub("", value):
        return '"${" starts no reference; the forms are "${env:NAME}" and "${file:/path}"'
    return None


def _secret(value: str) -> str:
    if SECRET_REFERENCE.fullmatch(value) is None:
        raise PydanticCustomError("secret_literal", _LITERAL)
    problem = _reference_problem(value)
    if problem is not None:
        raise PydanticCustomError("secret_reference", problem)
    return value


# A credential: exactly one reference, never the secret itself.
SecretRef = Annotated[
    str,
    Field(min_length=1, max_length=4096, json_schema_extra={"pattern": _WHOLE_REFERENCE},
          description='A reference resolved by the executor process: "${env:NAME}" or "${file:/path}".'),
    AfterValidator(_secret),
]


def _http_url(value: str) -> str:
    try:
        parts = urlsplit(value)
        host = parts.hostname
        parts.port  # noqa: B018  (raises ValueError for a port that is not a number in 0..65535)
        credentials = parts.username is not None or parts.password is not None
    except ValueError as exc:
        raise PydanticCustomError("url_invalid", "not a URL: {why}", {"why": str(exc)}) from None
    if parts.scheme not in ("http", "https") or not host:
        raise PydanticCustomError("url_invalid", "must be an http:// or https:// URL with a host")
    if credentials:
        raise PydanticCustomError("url_credentials", "must not hold credentials (user:password@): they "
                                  "would be written to the event log; use authentication or headers")
    if parts.fragment or any(ch.isspace() or not ch.isprintable() for ch in value):
        raise PydanticCustomError("url_invalid", "must not hold a fragment (#...), whitespace or "
                                  "control characters")
    return value


HttpUrl = Annotated[str, Field(min_length=1, max_length=MAX_URL), AfterValidator(_http_url)]
HeaderName = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")]
# Printable ASCII (and tab): what HTTP/1.1 and HTTP/2 carry in a header without an encoding.
HeaderValue = Annotated[str, Field(max_length=8192, pattern=r"^[\t\x20-\x7e]*$")]
EnvName = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
Seconds = Annotated[float, Field(gt=0, le=MAX_SECONDS)]


def _values_problem(values: dict[str, str], what: str) -> str | None:
    """Why a header or environment mapping cannot be stored: a sensitive name with a literal
    value, or a malformed reference."""
    for name, value in values.items():
        problem = _reference_problem(value)
        if problem is not None:
            return f"{what} {name!r}: {problem}"
        if is_sensitive_name(name) and SECRET_REFERENCE.search(value) is None:
            return (f"{what} {name!r} carries a credential: a literal secret cannot be stored (it would "
                    f"be written to the event log); {_HOW}, e.g. \"Bearer ${{env:TOKEN}}\"")
    return None


def _headers(headers: dict[str, str]) -> dict[str, str]:
    seen: set[str] = set()
    for name in headers:
        low = name.lower()
        if low in _RESERVED_HEADERS:
            raise PydanticCustomError("header_reserved", "header {name} is set by the executor on every "
                                      "request; remove it", {"name": repr(name)})
        if low in seen:
            raise PydanticCustomError("header_twice", "header {name} is given twice (header names ignore "
                                      "case)", {"name": repr(name)})
        seen.add(low)
    problem = _values_problem(headers, "header")
    if problem is not None:
        raise PydanticCustomError("secret_literal", problem)
    return headers


def _env(env: dict[str, str]) -> dict[str, str]:
    problem = _values_problem(env, "environment variable")
    if problem is not None:
        raise PydanticCustomError("secret_literal", problem)
    return env


# Static headers: a credential among them must be (or embed) a reference.
Headers = Annotated[dict[HeaderName, HeaderValue], Field(max_length=MAX_HEADERS), AfterValidator(_headers)]
Env = Annotated[dict[EnvName, Annotated[Text, Field(max_length=32_768)]], Field(max_length=MAX_HEADERS),
                AfterValidator(_env)]


class _Config(Model):
    # A refused value may be a secret: validation messages never print what was given.
    model_config = ConfigDict(hide_input_in_errors=True)


class BearerAuth(_Config):
    """``Authorization: Bearer <token>``."""

    type: Literal["bearer"]
    token: SecretRef


class ApiKeyAuth(_Config):
    """The key in a header of its own (``X-API-Key`` unless named)."""

    type: Literal["api_key"]
    key: SecretRef
    header: HeaderName = "X-API-Key"


class BasicAuth(_Config):
    """``Authorization: Basic`` with a user name and a password."""

    type: Literal["basic"]
    username: Annotated[str, Field(min_length=1, max_length=1000, pattern=r"^[\x20-\x39\x3b-\x7e]+$",
                                   description="Printable ASCII without ':'.")]
    password: SecretRef


Authentication = Annotated[BearerAuth | ApiKeyAuth | BasicAuth, Field(discriminator="type")]


class CircuitBreakerConfig(_Config):
    """Stop offering the agent work after this many failures in a row, for ``recovery_timeout`` s."""

    failure_threshold: int = Field(default=5, ge=1, le=1000)
    recovery_timeout: Seconds = 60.0


MAX_PROCESSES = 16


class _Executor(_Config):
    """What every executor has: its identity as an agent and how much it takes on."""

    name: Id = Field(description="The agent id the executor registers as.")
    capabilities: Capabilities = ()
    capacity: int = Field(default=4, ge=1, le=MAX_CAPACITY, description="Calls in flight at once.")
    # Left out of a dump when 0, so a workflow definition's snapshot (and digest) is what it was.
    processes: int = Field(default=0, ge=0, le=MAX_PROCESSES, exclude_if=lambda value: value == 0,
                           description=(
        "Worker processes that make the calls (0: the host's own process). A call's client work "
        "then runs beside the log and the decider instead of on their core; the capacity is shared "
        "among them."))
    timeout: Seconds = Field(default=30.0, description="Seconds one call may take (a task's own limit wins).")
    retry_config: RetryConfig | None = None
    circuit_breaker: CircuitBreakerConfig | None = None
    pool: Id = DEFAULT_POOL
    heartbeat_interval: float = Field(default=5.0, ge=0.1, le=3600)
    metadata: JSONObject = Field(default_factory=dict)


class HttpApiConfig(_Executor):
    """Calls an HTTP API: one request per task run (method, path, query, headers and JSON body
    from the task's action and parameters)."""

    type: Literal["http_api"]
    kind: Name = Field(default="http_api", max_length=100)
    endpoint: HttpUrl = Field(description="Base URL; a task's parameters.path is relative to it.")
    authentication: Authentication | None = None
    headers: Headers = Field(default_factory=dict)
    http2: bool = False
    follow_redirects: bool = Field(default=False, description="Off: a redirect is a failure, so no "
                                   "credential header follows it to another host.")
    max_response_bytes: int = Field(default=DEFAULT_MAX_RESPONSE_BYTES, ge=0, le=MAX_RESPONSE_BYTES)
    result_headers: tuple[HeaderName, ...] = Field(default=DEFAULT_RESULT_HEADERS, max_length=50)

    @model_validator(mode="after")
    def _consistent(self) -> HttpApiConfig:
        parts = urlsplit(self.endpoint)
        if parts.query:
            raise ValueError("endpoint must not hold a query (?...): give query parameters per task, "
                             "in parameters.query")
        auth = self.authentication
        if auth is not None:
            auth_header = auth.header if isinstance(auth, ApiKeyAuth) else "Authorization"
            if auth_header.lower() in {h.lower() for h in self.headers}:
                raise ValueError(f"header {auth_header!r} is set by authentication ({auth.type}); "
                                 "give one or the other")
            if auth_header.lower() in _RESERVED_HEADERS:
                raise ValueError(f"header {auth_header!r} is set by the executor on every request")
        return self


class AiDefaults(_Config):
    """Sampling settings of every call (a task's parameters may override them)."""

    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, ge=1, le=1_000_000)
    top_p: float | None = Field(default=None, gt=0, le=1)
    system: Text | None = Field(default=None, max_length=100_000)


class AiAgentConfig(_Executor):
    """Calls a language model: OpenAI's chat API (or any server that speaks it) or Anthropic's."""

    type: Literal["ai_agent"]
    kind: Name = Field(default="ai_agent", max_length=100)
    provider: Literal["openai", "anthropic"]
    base_url: HttpUrl | None = Field(default=None, description="None: the provider's own API.")
    model: Key
    api_key: SecretRef | None = Field(default=None, description="None: a local server that needs none.")
    defaults: AiDefaults = Field(default_factory=AiDefaults)
    prompt: Text | None = Field(default=None, min_length=1, max_length=100_000,
                                description="A template rendered from the task's parameters.")

    @model_validator(mode="after")
    def _key_for_cloud(self) -> AiAgentConfig:
        if self.base_url is None and self.api_key is None:
            raise ValueError(f"provider {self.provider} without base_url is the provider's own API, which "
                             f'needs api_key ({_HOW}); give base_url for a local server that needs none')
        return self


class McpServerConfig(_Executor):
    """Calls the tools of an MCP server, over streamable HTTP or a child process's stdio."""

    type: Literal["mcp_server"]
    kind: Name = Field(default="mcp_server", max_length=100)
    transport: Literal["streamable_http", "stdio"] = "streamable_http"
    url: HttpUrl | None = None
    headers: Headers = Field(default_factory=dict)
    command: Text | None = Field(default=None, min_length=1, max_length=4096)
    args: tuple[Annotated[Text, Field(max_length=4096)], ...] = Field(default=(), max_length=100)
    env: Env = Field(default_factory=dict)

    @model_validator(mode="after")
    def _transport_fields(self) -> McpServerConfig:
        if self.transport == "streamable_http":
            if self.url is None:
                raise ValueError("transport streamable_http needs url (e.g. http://127.0.0.1:9000/mcp)")
            stray = [f for f in ("command", "args", "env") if getattr(self, f)]
            if stray:
                raise ValueError(f"transport streamable_http takes no {', '.join(stray)} (those are stdio's)")
        else:
            if self.command is None:
                raise ValueError("transport stdio needs command (the program that serves MCP on stdio)")
            stray = [f for f in ("url", "headers") if getattr(self, f)]
            if stray:
                raise ValueError(f"transport stdio takes no {', '.join(stray)} (those are streamable_http's)")
        return self


ExecutorConfig = Annotated[HttpApiConfig | AiAgentConfig | McpServerConfig, Field(discriminator="type")]


class ExecutorsFile(_Config):
    """An executors file: the agents one executor process hosts."""

    agents: tuple[ExecutorConfig, ...] = Field(min_length=1, max_length=MAX_EXECUTORS)

    @field_validator("agents")
    @classmethod
    def _unique(cls, agents: tuple[ExecutorConfig, ...]) -> tuple[ExecutorConfig, ...]:
        seen: set[tuple[str, str]] = set()
        for i, agent in enumerate(agents):
            if (agent.pool, agent.name) in seen:
                raise ValueError(f"two agents are named {agent.name!r} in pool {agent.pool!r} "
                                 f"(the second is agents[{i}]); a name is the agent's id")
            seen.add((agent.pool, agent.name))
        return agents


class ExecutorsFileError(ValueError):
    """An executors file that does not parse or validate; ``problems`` lists each one, located."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source, self.problems = source, problems
        super().__init__(f"{source}: {len(problems)} problem(s)\n" + "\n".join(f"  {p}" for p in problems))
