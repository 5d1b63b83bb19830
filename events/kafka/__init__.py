"""The Kafka adapter of the EventLog port (aiokafka), split along its moving parts.

``KafkaLog`` (``log``) is the facade and a ``TransactionalLog``: transactional group commit,
read_committed reads, one fenced writer per claimed partition, records for other topics in an
append's transaction. Behind it: ``url`` (the ``kafka://`` URL), ``admin`` (topics), ``writer``
(transactional producers, group commit, fencing) and ``transaction`` (one transaction),
``reader`` (read_committed consumers), ``offsets`` (consumer-group offsets), ``visibility``
(reading this log's own writes) and ``records`` (the wire format: plain Kafka records any tool
reads, lz4-compressed by Kafka itself).

Nothing outside this package reaches past these names; the package never imports ``services``.
"""

from events.kafka.log import KafkaLog
from events.kafka.reader import read_committed_consumer
from events.kafka.url import KafkaURL, parse_url
from events.kafka.writer import Fenced

__all__ = ["Fenced", "KafkaLog", "KafkaURL", "parse_url", "read_committed_consumer"]
