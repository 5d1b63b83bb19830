"""Settings from ``AGENTBUS_*`` environment variables; CLI flags override them."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from services.domain.decider import DEFAULT_PRICES, DeciderConfig

MAX_BODY_BYTES = 1024 * 1024


def _prices() -> dict[str, tuple[float, float]]:
    """The model price table: defaults, overlaid by the JSON file named in AGENTBUS_PRICES.

    The file maps a model name to ``{"input_per_1k": x, "output_per_1k": y}``.
    """
    prices = dict(DEFAULT_PRICES)
    path = os.environ.get("AGENTBUS_PRICES")
    if path:
        raw = json.loads(Path(path).read_text())
        for model, p in raw.items():
            prices[model] = (float(p["input_per_1k"]), float(p["output_per_1k"]))
    return prices


@dataclass
class Settings:
    """Where the log and read models live, and how the service listens."""

    data_dir: Path = field(default_factory=lambda: Path(os.environ.get("AGENTBUS_DATA", "agentbus-data")))
    broker: str = ""
    database: str = ""
    host: str = field(default_factory=lambda: os.environ.get("AGENTBUS_HOST", "127.0.0.1"))
    port: int = field(default_factory=lambda: int(os.environ.get("AGENTBUS_PORT", "8080")))
    partitions: int = field(default_factory=lambda: int(os.environ.get("AGENTBUS_PARTITIONS", "1")))
    decider: DeciderConfig = field(default_factory=lambda: DeciderConfig(prices=_prices()))
    max_body_bytes: int = MAX_BODY_BYTES

    def __post_init__(self) -> None:
        self.broker = self.broker or os.environ.get("AGENTBUS_BROKER") or f"sqlite:///{self.data_dir}/log.db"
        self.database = (
            self.database
            or os.environ.get("AGENTBUS_DATABASE")
            or f"sqlite+aiosqlite:///{self.data_dir}/read.db"
        )
