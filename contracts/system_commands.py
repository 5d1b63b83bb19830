"""Commands of the pool ``contracts.SYSTEM_POOL``: deployment-wide settings decided like any pool's
commands: API tokens (their hashes), outbound subscriptions and inbound webhook sources (their
secrets sealed with the deployment's key, never in clear).

Pure: data and rules about data. ``contracts.commands`` re-exports every name, so callers use
``commands.IssueApiToken`` like any command.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal, get_args

from pydantic import Field, model_validator

from contracts.base import Command, Model
from contracts.values import (
    INT32_MAX,
    INT64_MAX,
    MAX_ID_LENGTH,
    Id,
    JSONObject,
    Text,
)
from contracts.webhooks import (
    MAX_RULES,
    MAX_WEBHOOK_ID,
    MappingRule,
    SealedWebhookSecret,
    SourceName,
    WebhookMapping,
    WebhookScheme,
)

_ID = Field(min_length=1, max_length=200)


# -- access: API tokens, in the pool contracts.SYSTEM_POOL -------------------------------------------

Role = Literal["admin", "operator", "agent", "reader"]
ROLES: tuple[str, ...] = get_args(Role)


class IssueApiToken(Command):
    """Create an API token with a role. Only the SHA-256 of the token's secret travels: the secret
    is shown to its creator once and is never on the log."""

    subject_field = "token_id"
    # No '_': a token reads abt_<token id>_<secret>, split at the first '_' after the prefix.
    token_id: str = Field(pattern=r"^[A-Za-z0-9-]{1,64}$")
    role: Role
    agent_id: Id | None = Field(default=None, min_length=1, max_length=MAX_ID_LENGTH,
                                description="agent role only: the agent the token acts as.")
    name: Text | None = Field(default=None, min_length=1, max_length=200,
                              description="What the token is for (shown in listings).")
    secret_hash: str = Field(pattern=r"^[0-9a-f]{64}$", description="Hex SHA-256 of the token's secret.")

    @model_validator(mode="after")
    def _agent_tokens_name_their_agent(self) -> IssueApiToken:
        if (self.role == "agent") != (self.agent_id is not None):
            raise ValueError("an agent token names its agent (agent_id), and only an agent token does")
        return self


class RevokeApiToken(Command):
    """Stop accepting an API token, for good."""

    subject_field = "token_id"
    token_id: str = Field(pattern=r"^[A-Za-z0-9-]{1,64}$")


SYSTEM_COMMANDS: tuple[type[Command], ...] = (IssueApiToken, RevokeApiToken)


# -- outbound subscriptions, in the pool contracts.SYSTEM_POOL ---------------------------------------

# A secret sealed with the deployment's key (services.runtime.sealing), never one in clear: the
# contract refuses any other form, so such a command is a 422 wherever it comes from.
SEALED_PREFIX = "sealed:"
SEALED_PATTERN = r"^sealed:v1:[0-9a-f]{8}:[A-Za-z0-9_-]+={0,2}$"
MAX_CHANNELS = 100
MAX_CHANNEL_LENGTH = 1000  # as services.runtime.channels reads them
MAX_DELIVERY_ATTEMPTS = 100
MAX_EVENT_PARTITIONS = 100_000
ChannelText = Annotated[Text, Field(min_length=1, max_length=MAX_CHANNEL_LENGTH)]
SealedSecret = Annotated[str, Field(min_length=1, max_length=1000, pattern=SEALED_PATTERN,
                                    description="Sealed with the deployment's key (sealed:v1:...).")]


class SubscriptionGenerated(Model):
    """What the server chose for one PUT of a subscription, not what its client asked: left out of
    the command's digest, so a retry with the same Idempotency-Key is the same request."""

    positions: tuple[Annotated[int, Field(ge=0, le=INT64_MAX)], ...] = Field(
        default=(), max_length=MAX_EVENT_PARTITIONS,
        description="The end of each events partition when it was asked for: where 'latest' starts.")
    secret: SealedSecret | None = Field(
        default=None, description="A new secret (sealed), used when the request gave none and the "
                                  "subscription is new.")


class SetSubscription(Command):
    """Create outbound subscription ``name``, or change its URL, channels, secret or attempts
    (its delivery position is kept)."""

    subject_field = "name"
    name: Id = _ID
    url: Text = Field(min_length=1, max_length=2000, description="http:// or https:// URL to POST to.")
    channels: tuple[ChannelText, ...] = Field(min_length=1, max_length=MAX_CHANNELS)
    secret: SealedSecret | None = Field(
        default=None, description="The whsec_ signing secret, sealed; None keeps the subscription's own.")
    start: Literal["latest", "earliest"] = Field(
        default="latest", description="Where a new subscription starts: the end of the log, or its start.")
    max_attempts: int = Field(default=8, ge=1, le=MAX_DELIVERY_ATTEMPTS,
                              description="Deliveries of one event before it becomes a dead letter.")
    generated: SubscriptionGenerated = Field(default_factory=SubscriptionGenerated)


class DeleteSubscription(Command):
    """Stop delivering to subscription ``name``; its position and dead letters go with it."""

    subject_field = "name"
    name: Id = _ID


class RecordDeliveryFailure(Command):
    """Issued by the deliveries: an event was not delivered in ``attempts`` tries (a dead letter);
    delivery goes on with the next one."""

    subject_field = "name"
    name: Id = _ID
    incarnation: int = Field(ge=1, le=INT64_MAX)
    event_id: Text = Field(min_length=1, max_length=200)
    event_type: Text = Field(min_length=1, max_length=200)
    partition: int = Field(ge=0, le=INT32_MAX)
    position: int = Field(ge=0, le=INT64_MAX)
    attempts: int = Field(ge=1, le=MAX_DELIVERY_ATTEMPTS)
    last_error: Text = Field(max_length=2000)
    last_status: int | None = Field(default=None, ge=100, le=599)


SYSTEM_COMMANDS = (*SYSTEM_COMMANDS, SetSubscription, DeleteSubscription, RecordDeliveryFailure)


# -- inbound webhooks (contracts.webhooks) -----------------------------------------------------------


class SetWebhookSource(Command):
    """Create or replace a webhook source (pool ``_system``): its scheme, sealed secret, the pool its
    deliveries go to and their mapping."""

    subject_field = "source"
    source: SourceName
    scheme: WebhookScheme
    secret: SealedWebhookSecret
    pool: Id = Field(default="default", description="The pool its deliveries become events of.")
    mapping: WebhookMapping = Field(default_factory=WebhookMapping)


class DeleteWebhookSource(Command):
    """Remove a webhook source (pool ``_system``): its deliveries are refused from then on."""

    subject_field = "source"
    source: SourceName


class ReceiveExternalEvent(Command):
    """A delivery of a webhook source, its signature verified at ingest, with the rules of the
    source's mapping that apply to it. Its command id is derived from (source, webhook id), so the
    log refuses the same delivery twice."""

    subject_field = "source"
    source: SourceName
    webhook_id: Text = Field(min_length=1, max_length=MAX_WEBHOOK_ID)
    event_type: Text = Field(min_length=1, max_length=200)
    payload: JSONObject
    received_at: datetime
    rules: tuple[MappingRule, ...] = Field(default=(), max_length=MAX_RULES)


class RecordWebhookMappingFailure(Command):
    """Issued by the webhook reactor: a rule (or a workflow trigger) could not be turned into a
    command for a delivery; why, in ``error``."""

    subject_field = "source"
    source: SourceName
    webhook_id: Text = Field(min_length=1, max_length=MAX_WEBHOOK_ID)
    rule: int | None = Field(default=None, ge=0, le=MAX_RULES)
    workflow: Text | None = Field(default=None, max_length=200)
    error: Text = Field(min_length=1, max_length=10_000)


SYSTEM_COMMANDS = (*SYSTEM_COMMANDS, SetWebhookSource, DeleteWebhookSource, ReceiveExternalEvent,
                   RecordWebhookMappingFailure)


# -- audit: signed checkpoints of the events topic's hash chain (events.chain) ----------------------

# Heads per checkpoint: one per partition of the events topic. ~100 bytes each, so the largest
# checkpoint stays far below a Kafka record's default 1 MB limit.
MAX_AUDIT_PARTITIONS = 4096
AuditAlgorithm = Literal["ed25519"]
HEX_SHA256 = r"^[0-9a-f]{64}$"
# The key id: the first 16 bytes of the SHA-256 of the raw public key, in hex.
AUDIT_KEY_ID = r"^[0-9a-f]{32}$"
# An Ed25519 signature is 64 bytes: 88 characters of standard base64, padded.
AUDIT_SIGNATURE = r"^[A-Za-z0-9+/]{86}==$"
# Kafka's rule for topic names (the events topic may carry a deployment's prefix).
AUDIT_TOPIC = r"^[A-Za-z0-9._-]{1,249}$"


class AuditHead(Model):
    """A partition's chain head as signed: the chain value covering every record below ``position``."""

    position: int = Field(ge=0, le=INT64_MAX, description="The next offset: the head covers every "
                                                          "record below it (0: none, the chain's start).")
    chain: str = Field(pattern=HEX_SHA256, description="Hex SHA-256 chain value after the record at "
                                                       "position - 1 (64 zeros at position 0).")


class RecordAuditCheckpoint(Command):
    """Record a signed checkpoint of the events topic's hash chain (pool ``_system``): every
    partition's head, signed with an Ed25519 key the log never holds. Whoever holds the public key
    can then tell this history from one rewritten with its chain recomputed."""

    subject_field = "key_id"
    topic: str = Field(pattern=AUDIT_TOPIC, description="The events topic whose heads are signed.")
    # Keys are partition numbers ("0", "1", ...); the decider checks there is one per partition.
    heads: dict[Annotated[str, Field(max_length=10)], AuditHead] = Field(
        min_length=1, max_length=MAX_AUDIT_PARTITIONS,
        description="Every partition's head, by partition number: {\"0\": {position, chain}, ...}.")
    key_id: str = Field(pattern=AUDIT_KEY_ID, description="Hex of the first 16 bytes of the SHA-256 of "
                                                          "the raw Ed25519 public key.")
    algorithm: AuditAlgorithm = "ed25519"
    signature: str = Field(pattern=AUDIT_SIGNATURE, description="Base64 Ed25519 signature over the "
                                                                "canonical JSON of {topic, heads, key_id} "
                                                                "(sorted keys, no spaces).")


SYSTEM_COMMANDS = (*SYSTEM_COMMANDS, RecordAuditCheckpoint)
