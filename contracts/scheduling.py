"""What a task's scheduling is chosen by: the coordinator's strategies and the retry policy.

Shared by the commands and the workflow definitions. Pure: data only.
"""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import Field

from contracts.base import Model

MAX_SECONDS = 86_400.0  # one day: heartbeat timeouts, delays, cooldowns


# Selection strategies the coordinator knows. ``least_loaded`` (capability match, then the lowest
# load ratio) is the default when neither the task nor the pool policy names one.
Strategy = Literal[
    "least_loaded",
    "round_robin",
    "least_connections",
    "resource_based",
    "capability_based",
    "weighted",
    "performance_weighted",
]
STRATEGIES: tuple[str, ...] = get_args(Strategy)
RetryStrategy = Literal["exponential", "linear", "constant", "immediate"]


class RetryPolicy(Model):
    """How often and how soon a failed task runs again. ``max_attempts`` counts the first run."""

    max_attempts: int = Field(default=1, ge=1, le=100)
    strategy: RetryStrategy = "exponential"
    base_delay_s: float = Field(default=1.0, ge=0, le=MAX_SECONDS)
    max_delay_s: float = Field(default=300.0, ge=0, le=MAX_SECONDS)
    # The factor between one exponential delay and the next.
    multiplier: float = Field(default=2.0, ge=1, le=10)
    # Fraction of the delay spread either way, derived from (task id, attempt): replay-stable.
    jitter: float = Field(default=0.0, ge=0, le=1)


# Jitter of ``retry_config.jitter: true``: the delay is spread by up to a quarter either way.
RETRY_JITTER = 0.25


class RetryConfig(Model):
    """A step's retry policy in the shape users write (delays in seconds)."""

    max_attempts: int = Field(default=3, ge=1, le=100, description="Runs in all, the first included.")
    initial_delay: float = Field(default=1.0, ge=0, le=MAX_SECONDS)
    max_delay: float = Field(default=60.0, ge=0, le=MAX_SECONDS)
    exponential_base: float = Field(default=2.0, ge=1, le=10)
    jitter: bool = True

    def policy(self) -> RetryPolicy:
        """The task retry policy this configuration means."""
        return RetryPolicy(
            max_attempts=self.max_attempts,
            strategy="exponential",
            base_delay_s=self.initial_delay,
            max_delay_s=self.max_delay,
            multiplier=self.exponential_base,
            jitter=RETRY_JITTER if self.jitter else 0.0,
        )


__all__ = [
    "MAX_SECONDS", "RETRY_JITTER", "STRATEGIES", "RetryConfig", "RetryPolicy", "RetryStrategy", "Strategy",
]
