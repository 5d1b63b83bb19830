#!/usr/bin/env bash
# Convenience wrapper around Kafka's topic admin tool
# (org.apache.kafka.tools.TopicCommand, i.e. `kafka-topics.sh`) for the local
# broker; --bootstrap-server is filled in.
#
#   deploy/kafka/topics.sh --list
#   deploy/kafka/topics.sh --create --topic t1 --partitions 3
#   deploy/kafka/topics.sh --describe --topic t1
set -euo pipefail

# shellcheck source=common.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/common.sh"
kafka_require_java
[[ -f "${KAFKA_LIBS}/.complete" ]] || kafka_die "jars missing; run $(dirname "$0")/up.sh first"
exec java ${KAFKA_TOOLS_OPTS} \
  -Dlog4j.configuration="file:${KAFKA_DIR}/tools-log4j.properties" \
  -cp "${KAFKA_LIBS}/*" org.apache.kafka.tools.TopicCommand \
  --bootstrap-server "${KAFKA_BOOTSTRAP}" "$@"
