"""Stable reason codes carried by ``CommandRejected``; clients may switch on them."""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    """Why a command was rejected. Values are part of the public contract: never rename."""

    UNKNOWN_AGENT = "UNKNOWN_AGENT"
    AGENT_EXISTS = "AGENT_EXISTS"
    AGENT_NOT_ACTIVE = "AGENT_NOT_ACTIVE"
    AGENT_OVER_CAPACITY = "AGENT_OVER_CAPACITY"
    CAPABILITY_MISMATCH = "CAPABILITY_MISMATCH"
    UNKNOWN_TASK = "UNKNOWN_TASK"
    TASK_EXISTS = "TASK_EXISTS"
    INVALID_TASK_STATE = "INVALID_TASK_STATE"
    WRONG_AGENT = "WRONG_AGENT"
    UNKNOWN_ALLOCATION = "UNKNOWN_ALLOCATION"
    ALLOCATION_EXISTS = "ALLOCATION_EXISTS"
    RESOURCE_LIMIT_EXCEEDED = "RESOURCE_LIMIT_EXCEEDED"
    COST_EXISTS = "COST_EXISTS"
    UNKNOWN_MODEL_PRICE = "UNKNOWN_MODEL_PRICE"
    BUDGET_EXCEEDED = "BUDGET_EXCEEDED"
    UNKNOWN_COMMAND = "UNKNOWN_COMMAND"
    INVALID_COMMAND = "INVALID_COMMAND"
    UNKNOWN_STRATEGY = "UNKNOWN_STRATEGY"
    AGENT_UNHEALTHY = "AGENT_UNHEALTHY"
    CIRCUIT_OPEN = "CIRCUIT_OPEN"
    UNKNOWN_SCALING_POLICY = "UNKNOWN_SCALING_POLICY"
    SCALING_OUT_OF_BOUNDS = "SCALING_OUT_OF_BOUNDS"
    # A priced cost above the largest one a call may record, or one that would take the pool's
    # recorded costs past what they may add up to (contracts.money).
    COST_OUT_OF_RANGE = "COST_OUT_OF_RANGE"
    # The command would append an event that does not read back as written (a value no store can
    # hold, or one the event's contract refuses): rejected instead of appended (contracts.roundtrip).
    UNREADABLE_EVENT = "UNREADABLE_EVENT"
    # Workflows: no such run; a run with this id exists; the run (or the step) is not in a state
    # the command applies to; a step's dependencies are not done; a definition version exists
    # with other content.
    UNKNOWN_WORKFLOW = "UNKNOWN_WORKFLOW"
    WORKFLOW_EXISTS = "WORKFLOW_EXISTS"
    INVALID_WORKFLOW_STATE = "INVALID_WORKFLOW_STATE"
    UNKNOWN_STEP = "UNKNOWN_STEP"
    STEP_NOT_READY = "STEP_NOT_READY"
    DEFINITION_EXISTS = "DEFINITION_EXISTS"
    # Webhooks: no such source (DeleteWebhookSource).
    UNKNOWN_WEBHOOK_SOURCE = "UNKNOWN_WEBHOOK_SOURCE"
    # API tokens (pool _system): a token with this id exists; no token has it; it is revoked
    # already; the command belongs to the _system pool and was sent to another.
    TOKEN_EXISTS = "TOKEN_EXISTS"
    UNKNOWN_TOKEN = "UNKNOWN_TOKEN"
    TOKEN_REVOKED = "TOKEN_REVOKED"
    NOT_SYSTEM_POOL = "NOT_SYSTEM_POOL"
    # Outbound subscriptions: no subscription has this name (or it was deleted and made anew).
    UNKNOWN_SUBSCRIPTION = "UNKNOWN_SUBSCRIPTION"
