"""agentbus events: the log port, its adapters chosen by URL, the codec, export/import.

``events.log`` is the port: ``EventLog``, what every adapter provides, and ``TransactionalLog``,
what only some do. ``open_log(url)`` picks the adapter by URL scheme (``ADAPTERS``) and imports it
only then, so the embedded default needs no Kafka client. This package never imports ``services``.
"""

from __future__ import annotations

import importlib

from events.log import (
    Appended,
    Commit,
    ConcurrencyError,
    CorruptRecord,
    EventLog,
    Extra,
    FilteringLog,
    LogError,
    Record,
    SalvagingLog,
    StoredRecord,
    TransactionalLog,
    UnknownTopic,
    Unreadable,
    partition_for,
)

# URL scheme -> "module:Class". Adapters import lazily so the embedded default needs no Kafka.
ADAPTERS: dict[str, str] = {
    "sqlite": "events.sqlite:SqliteLog",
    "kafka": "events.kafka:KafkaLog",
}


# Schemes whose adapter writes to its store when it opens it (SQLite: the schema, the one-time chain
# migration), and so takes ``readonly``. Kafka's writes nothing until asked to append.
_WRITES_ON_OPEN = frozenset({"sqlite"})


def open_log(url: str, *, readonly: bool = False) -> EventLog:
    """Create (not start) the log adapter for ``url``, e.g. ``sqlite:///data/log.db``.

    ``readonly``: for commands that only read (verify, replay, export, tail): the adapter opens its
    store without writing to it, so looking at a log never changes it (and any append fails).
    """
    scheme = url.split(":", 1)[0].lower()
    target = ADAPTERS.get(scheme)
    if target is None:
        known = ", ".join(f"{s}://" for s in ADAPTERS)
        raise ValueError(f"unsupported log URL {url!r}; use one of {known}")
    module_name, cls_name = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:  # e.g. aiokafka missing
        raise RuntimeError(
            f"the {scheme} log needs extra packages: pip install 'agentbus[{scheme}]' ({exc})"
        ) from exc
    cls = getattr(module, cls_name)
    log: EventLog = cls(url, readonly=True) if readonly and scheme in _WRITES_ON_OPEN else cls(url)
    return log


__all__ = [
    "ADAPTERS",
    "Appended",
    "Commit",
    "ConcurrencyError",
    "CorruptRecord",
    "EventLog",
    "Extra",
    "FilteringLog",
    "LogError",
    "Record",
    "SalvagingLog",
    "StoredRecord",
    "TransactionalLog",
    "UnknownTopic",
    "Unreadable",
    "open_log",
    "partition_for",
]
