"""Every setting of a deployment, each with its one default: ``AGENTBUS_*`` variables, flags override.

``Settings`` is the only place a default is written. The CLI, the HTTP app, the runtimes and the
bench read it; a command-line flag only overrides what the user passed (flag > environment >
default), so every command points at the same deployment as ``serve`` and ``worker``.

This module must never open anything (log, database, network): it only names where things are.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url

from contracts import DEFAULT_POOL
from services.domain.decider import DeciderConfig
from services.runtime.topics import Topics

ENV_PREFIX = "AGENTBUS_"
MAX_BODY_BYTES = 1024 * 1024
# Named once: the server listens here and a client looks for it here unless told otherwise.
_HOST, _PORT = "127.0.0.1", 8080
# A server bound to every interface is reached on the loopback one.
_ANY_ADDRESS = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1", "[::]": "::1"}


_DECIDER = DeciderConfig()


def server_url(host: str, port: int) -> str:
    """Where a client reaches a server listening on ``host``:``port``."""
    host = _ANY_ADDRESS.get(host.strip(), host.strip())
    if ":" in host and not host.startswith("["):  # an IPv6 address
        host = f"[{host}]"
    return f"http://{host}:{port}"


class Settings(BaseSettings):
    """Where the log and read models live, how the service listens, and how a client finds it.

    Construct with keywords (``Settings(data_dir=..., broker=...)``): they win over the
    environment. An empty ``broker`` or ``database`` means the SQLite file in ``data_dir``.
    """

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, populate_by_name=True, env_ignore_empty=True)

    data_dir: Path = Field(Path("agentbus-data"), validation_alias=f"{ENV_PREFIX}DATA",
                           description="Directory of the default SQLite log and read models.")
    broker: str = Field("", description="Log URL: sqlite:///path/log.db or kafka://host:9092 "
                                        "(default: sqlite:///DATA_DIR/log.db).")
    database: str = Field("", description="Read-model URL: sqlite+aiosqlite:///path/read.db or "
                                          "postgresql+asyncpg://... (default: beside the log in DATA_DIR).")
    host: str = Field(_HOST, description="Address the HTTP API listens on.")
    port: int = Field(_PORT, ge=0, le=65535, description="Port the HTTP API listens on.")
    partitions: int = Field(1, ge=1, description="Partitions of new topics (existing topics keep theirs).")
    snapshot_every: int = Field(10_000, ge=0, description="Each decider snapshots its state (in the "
                                                          "read-model database) every this many events, so "
                                                          "a restart replays only the events after it; "
                                                          "spaced so copying the state takes at most 2% of "
                                                          "the decider's time (0: no snapshots, written or "
                                                          "read).")
    coordinator_snapshot_every: int = Field(
        50_000, ge=0, description="Embedded, with snapshot_every on: every this many events a process of "
                                  "its own stores the coordinator's views as a rebuild makes them, so a "
                                  "start folds in only the events after them (0: none written or read).")
    projector_linger_ms: int = Field(30, ge=0, le=10_000,
                                     description="Embedded: after applying a partial batch the projector "
                                                 "waits this long for more events before the next, so the "
                                                 "read models commit fewer, larger transactions beside the "
                                                 "deciders (the read models may lag the log by about this "
                                                 "much; 0: apply as soon as anything arrives).")
    projector_process: bool | None = Field(None, description="Embedded: run the projector in a "
                                                             "process of its own, so it works on a "
                                                             "second CPU beside the deciders and the "
                                                             "API (default: when the machine has more "
                                                             "than one CPU and the read models are not "
                                                             "in memory).")
    topic_prefix: str = Field("", description="Kafka: prefix of the topic names (several deployments on "
                                              "one broker).")
    app_id: str = Field("agentbus", min_length=1,
                        description="Kafka: the Faust app id (its consumer group; ours derive from it).")
    session_timeout: float = Field(10.0, ge=1, description="Kafka: seconds of silence before a worker's "
                                                           "partitions move to others.")
    scaling_webhook: str | None = Field(None, description="POST each ScalingDecided event (a CloudEvent) "
                                                          "to this URL, at least once, signed: the "
                                                          "subscription scaling-webhook.")
    secret_key: SecretStr | None = Field(None, description="Key sealing the signing secrets the log keeps "
                                                           "(64 bytes, URL-safe base64; default: the file "
                                                           "secret.key in DATA_DIR, made on first use). "
                                                           "Every process of a cluster needs the same one.")
    # Signed audit checkpoints (services.audit.checkpoints): the key signs, it never enters the log.
    audit_key: SecretStr | None = Field(None, description="Ed25519 private key signing audit checkpoints: "
                                                          "a PEM (PKCS8) file's path, or the PEM itself "
                                                          "(`agentbus audit keygen` makes a pair).")
    audit_public_key: str = Field("", description="Ed25519 public key (a PEM file's path, or the PEM) "
                                                  "GET /v1/audit/verify checks checkpoints' signatures "
                                                  "with (empty: checkpoints are not checked).")
    audit_checkpoint_every_s: float = Field(0.0, ge=0, le=366 * 86400,
                                            description="Embedded service: sign and append an audit "
                                                        "checkpoint this often, when the log moved, with "
                                                        "AGENTBUS_AUDIT_KEY (0: never).")
    access_log: bool = Field(False, description="Log every HTTP request (costs throughput; the event log "
                                                "is the audit).")
    metrics_port: int | None = Field(None, ge=0, le=65535,
                                     description="agentbus worker and agentbus executor run: serve "
                                                 "Prometheus metrics on this port of the --host address "
                                                 "(0: any free port); unset: none. The API serves them "
                                                 "at /metrics.")
    url: str = Field("", description="Base URL of a running agentbus server (default: the server the host "
                                      "and port settings name, http://AGENTBUS_HOST:AGENTBUS_PORT).")
    pool: str = Field(DEFAULT_POOL, description="Pool the command or query is about.")
    max_body_bytes: int = Field(MAX_BODY_BYTES, ge=1, description="Largest request body the HTTP API "
                                                                  "accepts, in bytes.")
    executors: Path | None = Field(None, description="Executors file (YAML or JSON, `agents:`) to run in "
                                                     "this process: agentbus calls HTTP APIs, LLMs and MCP "
                                                     "servers itself.")
    workflow_agents: bool | None = Field(None, description="Host the executors running workflows declare "
                                                           "(`agents:`). Default: on with the embedded log, "
                                                           "off on Kafka (turn it on in one process only).")
    # Authentication (services.http.auth). None: not configured; ``serve`` then runs open on a
    # loopback address only (and says so), and refuses to listen on any other.
    auth: Literal["required", "off"] | None = Field(
        None, description="required: every request but /v1/health, the docs and signed webhooks needs a "
                          "bearer token (an API token from `agentbus tokens create`, or a JWT); off: open "
                          "to anyone who can connect. Unset: off on a loopback address, refused on others.")
    allow_origins: str = Field("", description="Origins besides the server's own whose web pages may write "
                                               "or open a live stream through a browser (comma-separated, "
                                               "e.g. https://ops.example.com; * for any). Requests without "
                                               "an Origin header (every client but a browser) are not "
                                               "concerned.")
    auth_rate: float = Field(100.0, ge=0, description="Requests per second each token may make (a token "
                                                      "bucket per token, per API process; 0: unlimited).")
    auth_burst: int = Field(200, ge=1, description="Requests a token may make at once before --auth-rate "
                                                   "applies.")
    auth_cache_s: float = Field(1.0, ge=0, le=3600, description="Seconds an API process trusts a token it "
                                                                "checked (a revocation made elsewhere "
                                                                "applies after at most this long; 0: "
                                                                "checked on every request).")
    jwt_secret: SecretStr | None = Field(None, description="Shared secret verifying HS256 JWT bearer "
                                                           "tokens (environment only: AGENTBUS_JWT_SECRET).")
    jwt_jwks: str = Field("", description="JWKS verifying RS/ES/PS/EdDSA JWT bearer tokens: a file path or "
                                          "an http(s):// URL (e.g. your identity provider's jwks_uri).")
    jwt_issuer: str = Field("", description="JWTs must carry this `iss` (empty: not checked).")
    jwt_audience: str = Field("", description="JWTs must carry this `aud` (empty: JWTs with an `aud` are "
                                              "refused).")
    jwt_role_claim: str = Field("role", min_length=1, description="The JWT claim holding the agentbus role "
                                                                 "(admin, operator, agent, reader).")
    jwt_agent_claim: str = Field("agent_id", min_length=1, description="The JWT claim naming the agent "
                                                                      "an agent-role JWT acts as (absent: "
                                                                      "`sub`).")
    token: SecretStr | None = Field(None, description="Bearer token the CLI sends to the server "
                                                      "(environment only: AGENTBUS_TOKEN).")

    @field_validator("scaling_webhook")
    @classmethod
    def _http_only(cls, url: str | None) -> str | None:
        if not url:
            return None
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"must be an http:// or https:// URL, not {url!r}")
        return url

    @field_validator("allow_origins")
    @classmethod
    def _origins(cls, text: str) -> str:
        from services.http.middleware import parse_origins  # the format is the middleware's

        parse_origins(text)  # ValueError naming the item that is not an origin
        return text

    def model_post_init(self, context: Any, /) -> None:
        self.broker = self.broker or f"sqlite:///{self.data_dir}/log.db"
        self.database = self.database or f"sqlite+aiosqlite:///{self.data_dir}/read.db"
        self.url = self.url or server_url(self.host, self.port)

    @classmethod
    def env_name(cls, name: str) -> str:
        """The environment variable of the setting ``name``, e.g. ``data_dir`` -> ``AGENTBUS_DATA``."""
        alias = cls.model_fields[name].validation_alias
        return alias if isinstance(alias, str) else f"{ENV_PREFIX}{name.upper()}"

    @property
    def kafka(self) -> bool:
        """True when the log is Kafka, which the cluster runtime runs on."""
        return self.broker.split(":", 1)[0].lower() == "kafka"

    @property
    def projector_own_process(self) -> bool:
        """Whether the embedded runner runs its projector in a process of its own (``projector_process``)."""
        url = make_url(self.database)
        in_memory = url.drivername.startswith("sqlite") and url.database in (None, "", ":memory:")
        if self.projector_process is not None:
            if self.projector_process and in_memory:
                raise ValueError("projector_process needs read models another process can open, "
                                 f"not {self.database!r}")
            return self.projector_process
        return not in_memory and (os.cpu_count() or 1) > 1

    @property
    def topics(self) -> Topics:
        """The topic names this deployment's prefix gives."""
        return Topics.prefixed(self.topic_prefix)

    @property
    def decider(self) -> DeciderConfig:
        """What the decider reads besides the log: nothing a deployment sets. Model prices are
        each pool's, changed by SetPrices commands (``agentbus prices set``), never by a setting,
        so replay decides as the live service did."""
        return _DECIDER
