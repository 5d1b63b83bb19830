"""Retry schedules: how long a failed task waits before it runs again.

Pure and replay-stable: the jitter comes from a hash of (task id, attempt), never from a random
generator or the clock, so replaying the log yields the same delays.
"""

from __future__ import annotations

import hashlib

from contracts.commands import RetryPolicy


def unit(task_id: str, attempt: int) -> float:
    """A number in [0, 1) fixed by ``task_id`` and ``attempt``."""
    digest = hashlib.blake2b(f"{task_id}:{attempt}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def retry_delay(policy: RetryPolicy, task_id: str, attempt: int) -> float:
    """Seconds to wait after run ``attempt`` (1 = the first) failed, within ``max_delay_s``."""
    base = policy.base_delay_s
    match policy.strategy:
        case "exponential":
            delay = base * policy.multiplier ** min(attempt - 1, 60)
        case "linear":
            delay = base * attempt
        case "constant":
            delay = base
        case "immediate":
            return 0.0
    delay = min(delay, policy.max_delay_s)
    if policy.jitter and delay > 0:
        delay *= 1 + policy.jitter * (2 * unit(task_id, attempt) - 1)
        delay = min(max(delay, 0.0), policy.max_delay_s)
    return round(delay, 6)


def attempts_left(policy: RetryPolicy | None, failures: int) -> bool:
    """Whether a task that has failed ``failures`` runs may run again."""
    return policy is not None and failures < policy.max_attempts
