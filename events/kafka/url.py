"""The ``kafka://`` log URL and the connection options every client of one log shares.

URL: ``kafka://host:port[,host2:port2][?client_id=..&transactional_id=..&transactional_id_prefix=..
&replication_factor=..&max_request_size=..]``.

Pure: this module parses and never connects.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

_OPTIONS = frozenset(
    {"client_id", "transactional_id", "transactional_id_prefix", "replication_factor", "max_request_size"}
)


@dataclass(frozen=True, slots=True)
class KafkaURL:
    """A parsed ``kafka://`` URL."""

    bootstrap: tuple[str, ...]
    client_id: str
    transactional_id: str
    transactional_id_prefix: str
    replication_factor: int
    max_request_size: int

    @property
    def servers(self) -> str:
        """The bootstrap servers as aiokafka takes them (``host:port,host:port``)."""
        return ",".join(self.bootstrap)

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments every aiokafka client of this log is created with."""
        return {"bootstrap_servers": self.servers, "client_id": self.client_id}


def parse_url(url: str) -> KafkaURL:
    """``kafka://h:9092[,h2:9092][?client_id=..&transactional_id_prefix=..]`` -> settings."""
    scheme, sep, rest = url.partition("://")
    if scheme.lower() != "kafka" or not sep:
        raise ValueError(f"not a kafka log URL: {url!r}")
    location, _, query = rest.partition("?")
    hosts = tuple(h.strip() for h in location.rstrip("/").split(",") if h.strip())
    if not hosts:
        raise ValueError(f"kafka log URL needs host:port: {url!r}")
    for host in hosts:
        name, colon, port = host.rpartition(":")
        if not colon or not name or not port.isdigit():
            raise ValueError(f"kafka log URL needs host:port, got {host!r} in {url!r}")
    options = dict(parse_qsl(query, keep_blank_values=True))
    unknown = set(options) - _OPTIONS
    if unknown:
        raise ValueError(f"unsupported kafka log URL option(s) {sorted(unknown)} in {url!r}")
    client_id = options.get("client_id") or ""
    prefix = options.get("transactional_id_prefix") or "agentbus"
    # A stable id (from client_id) is what lets a restarted writer fence its zombie.
    tid = options.get("transactional_id") or f"{prefix}-{client_id or uuid.uuid4().hex}"
    try:
        rf = int(options.get("replication_factor", "1"))
        max_request = int(options.get("max_request_size", str(1 << 20)))
    except ValueError:
        raise ValueError(f"replication_factor and max_request_size must be integers: {url!r}") from None
    if rf < 1 or max_request < 1024:
        raise ValueError(f"replication_factor must be >= 1, max_request_size >= 1024: {url!r}")
    return KafkaURL(hosts, client_id or "agentbus", tid, prefix, rf, max_request)
