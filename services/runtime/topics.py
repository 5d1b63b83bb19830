"""The topics one deployment uses, and the consumer groups and batch size of its loops.

A prefix keeps deployments apart on one broker: every command of the CLI and every runtime takes
its topic names from ``Topics``, never from a literal.
"""

from __future__ import annotations

from dataclasses import dataclass

COMMANDS = "commands"
EVENTS = "events"
DEAD_LETTERS = f"{COMMANDS}.dlq"
DECIDER_GROUP = "decider"
COORDINATOR_GROUP = "coordinator"
BATCH = 1000
# Headers of a dead letter: why it was refused and where it came from.
DLQ_ERROR = "agentbus_error"
DLQ_TOPIC = "agentbus_source_topic"
DLQ_PARTITION = "agentbus_source_partition"
DLQ_OFFSET = "agentbus_source_offset"



@dataclass(frozen=True, slots=True)
class Topics:
    """The names of the topics one deployment uses (a prefix keeps deployments apart on one broker)."""

    commands: str = COMMANDS
    events: str = EVENTS
    dead_letters: str = DEAD_LETTERS

    @classmethod
    def prefixed(cls, prefix: str) -> Topics:
        return cls(f"{prefix}{COMMANDS}", f"{prefix}{EVENTS}", f"{prefix}{DEAD_LETTERS}")
