"""The log fixture, parameterized over every backend: contract tests are written once.

Add a backend by adding its name to BACKENDS and a factory to FACTORIES. A factory returns an
unstarted log for a fresh, isolated namespace; the fixture starts and closes it.

Kafka runs when ``AGENTBUS_TEST_KAFKA`` names a broker (``kafka://127.0.0.1:9092``, started by
``deploy/kafka/up.sh``). Without one the kafka cases skip locally and fail in CI (``CI=true``).
Kafka topics are shared by every test on the broker, so each test gets unique topic names from
the ``topic`` fixture and deletes them afterwards.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import NoReturn

import pytest

from events import EventLog, LogError, open_log

KAFKA_ENV = "AGENTBUS_TEST_KAFKA"
KAFKA_HINT = (
    "Kafka not running: start it with deploy/kafka/up.sh and set "
    f"{KAFKA_ENV}=kafka://127.0.0.1:9092"
)


def _sqlite(tmp_path: Path) -> EventLog:
    return open_log(f"sqlite:///{tmp_path / 'log.db'}")


def kafka_url() -> str:
    """The test broker's URL; skips (fails in CI) when none is configured."""
    url = os.environ.get(KAFKA_ENV, "").strip()
    if not url:
        unavailable(f"{KAFKA_ENV} is not set")
    return url


def unavailable(why: str) -> NoReturn:
    """No broker: a failure in CI (it must never silently skip Kafka), a skip on a laptop."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{KAFKA_HINT} ({why})", pytrace=False)
    pytest.skip(f"{KAFKA_HINT} ({why})")


def _kafka(tmp_path: Path) -> EventLog:
    # A fresh transactional.id per log: tests never fence each other.
    return open_log(f"{kafka_url()}?client_id=test-{uuid.uuid4().hex[:12]}")


FACTORIES: dict[str, Callable[[Path], EventLog]] = {"sqlite": _sqlite, "kafka": _kafka}
BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("kafka", id="kafka", marks=pytest.mark.kafka),
]
# Once a broker failed to answer, later kafka cases skip at once instead of timing out again.
_broker_down: str | None = None


async def start_log(instance: EventLog) -> None:
    """Start ``instance``; a Kafka log whose broker does not answer skips (fails in CI)."""
    global _broker_down
    if instance.url.startswith("kafka:"):
        if _broker_down is not None:
            unavailable(_broker_down)
        try:
            await instance.start()
        except LogError as exc:
            _broker_down = str(exc)
            unavailable(_broker_down)
    else:
        await instance.start()


async def _drop_topics(instance: EventLog, prefix: str) -> None:
    """Delete the test's Kafka topics (``prefix`` and ``prefix-*``); best effort."""
    from aiokafka.admin import AIOKafkaAdminClient

    from events.kafka import KafkaLog

    if not isinstance(instance, KafkaLog):
        return
    admin = AIOKafkaAdminClient(bootstrap_servers=instance.bootstrap)
    try:
        await admin.start()
        names = [t for t in await admin.list_topics() if t == prefix or t.startswith(f"{prefix}-")]
        if names:
            await admin.delete_topics(names)
    except Exception:  # cleanup must never hide the test's own result
        pass
    finally:
        await admin.close()


@pytest.fixture(params=BACKENDS)
async def log(
    request: pytest.FixtureRequest, tmp_path: Path, topic: str
) -> AsyncIterator[EventLog]:
    """A started, empty log of each backend."""
    instance = FACTORIES[request.param](tmp_path)
    await start_log(instance)
    try:
        yield instance
    finally:
        await instance.close()
        if request.param == "kafka":
            await _drop_topics(instance, topic)


@pytest.fixture
def topic() -> str:
    """A topic name unique to the test, so shared brokers need no cleanup between tests."""
    return f"t-{uuid.uuid4().hex[:12]}"
