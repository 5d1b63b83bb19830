"""Command handlers for the pool's policies: coordination policy, rate limits, scaling policies and
the scaling decisions checked against them.

Pure: handlers read the state and return events (or raise ``Rejected``); they never change the
state, do no I/O and read no clock.
"""

from __future__ import annotations

from contracts import Payload, Reason
from contracts import commands as c
from contracts import event_types as e
from services.domain.decision import DeciderConfig, Rejected
from services.domain.state import PoolState


def set_pool_policy(state: PoolState, cmd: c.SetPoolPolicy, config: DeciderConfig) -> list[Payload]:
    """The pool's coordination policy from now on, replaced whole."""
    return [e.PoolPolicySet(**cmd.model_dump())]


def set_rate_limit(state: PoolState, cmd: c.SetRateLimit, config: DeciderConfig) -> list[Payload]:
    """Token buckets the coordinator enforces (the decider only records them)."""
    return [e.RateLimitSet(**cmd.model_dump())]


def set_scaling_policy(state: PoolState, cmd: c.SetScalingPolicy, config: DeciderConfig) -> list[Payload]:
    """How many agents of a kind the fleet should have."""
    return [e.ScalingPolicySet(**cmd.model_dump())]


def decide_scaling(state: PoolState, cmd: c.DecideScaling, config: DeciderConfig) -> list[Payload]:
    """A scaling decision stands only within the bounds of its kind's policy."""
    policy = state.scaling.get(cmd.agent_kind)
    if policy is None:
        raise Rejected(Reason.UNKNOWN_SCALING_POLICY,
                       f"no scaling policy for agent kind {cmd.agent_kind!r}",
                       agent_kind=cmd.agent_kind)
    if not policy.min_agents <= cmd.to_agents <= policy.max_agents:
        raise Rejected(Reason.SCALING_OUT_OF_BOUNDS,
                       f"{cmd.to_agents} agents is outside [{policy.min_agents}, {policy.max_agents}]",
                       agent_kind=cmd.agent_kind, to_agents=cmd.to_agents)
    return [e.ScalingDecided(**cmd.model_dump())]
