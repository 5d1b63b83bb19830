# shellcheck shell=bash
# Shared settings for deploy/kafka/{up,down,topics}.sh. Source it; do not run it.

KAFKA_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
KAFKA_VERSION="3.9.1"
KAFKA_LIBS="${KAFKA_DIR}/libs"

AGENTBUS_KAFKA_PORT="${AGENTBUS_KAFKA_PORT:-9092}"
AGENTBUS_KAFKA_CONTROLLER_PORT="${AGENTBUS_KAFKA_CONTROLLER_PORT:-9093}"
AGENTBUS_KAFKA_DATA="${AGENTBUS_KAFKA_DATA:-${KAFKA_DIR}/data}"
# Make the data dir absolute (it may be given relative to the caller's cwd).
case "${AGENTBUS_KAFKA_DATA}" in
  /*) ;;
  *) AGENTBUS_KAFKA_DATA="$(pwd)/${AGENTBUS_KAFKA_DATA}" ;;
esac

KAFKA_DATA="${AGENTBUS_KAFKA_DATA}"
KAFKA_CONFIG="${KAFKA_DATA}/server.properties"
KAFKA_LOG_DIRS="${KAFKA_DATA}/kraft"
KAFKA_LOGS="${KAFKA_DATA}/logs"
KAFKA_PID_FILE="${KAFKA_DATA}/kafka.pid"
KAFKA_BOOTSTRAP="127.0.0.1:${AGENTBUS_KAFKA_PORT}"

# JVM options for the broker and for the short-lived CLI tools.
KAFKA_HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xmx1G -Xms512m}"
KAFKA_JVM_PERFORMANCE_OPTS="${KAFKA_JVM_PERFORMANCE_OPTS:--server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent -XX:MaxInlineLevel=15 -Djava.awt.headless=true}"
KAFKA_TOOLS_OPTS="${KAFKA_TOOLS_OPTS:--Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true}"

# Jars whose presence means libs/ is complete (besides the stamp file).
KAFKA_REQUIRED_JARS=(
  "kafka_2.13-${KAFKA_VERSION}.jar"
  "kafka-clients-${KAFKA_VERSION}.jar"
  "kafka-server-${KAFKA_VERSION}.jar"
  "kafka-metadata-${KAFKA_VERSION}.jar"
  "kafka-raft-${KAFKA_VERSION}.jar"
  "kafka-storage-${KAFKA_VERSION}.jar"
  "kafka-tools-${KAFKA_VERSION}.jar"
  "slf4j-reload4j-1.7.36.jar"
)

kafka_log() { printf '[kafka] %s\n' "$*" >&2; }
kafka_die() { printf '[kafka] ERROR: %s\n' "$*" >&2; exit 1; }

kafka_require_java() {
  command -v java >/dev/null 2>&1 || kafka_die "java not found (need Java 11+; e.g. apt-get install -y openjdk-17-jre-headless)"
}

# Run a Kafka CLI main class with the tools JVM options.
#   kafka_tool [--timeout SECONDS] <main-class> [args...]
kafka_tool() {
  local -a prefix=()
  if [[ "${1:-}" == "--timeout" ]]; then
    prefix=(timeout --kill-after=5 "$2"); shift 2
  fi
  local main="$1"; shift
  local -a opts
  read -r -a opts <<<"${KAFKA_TOOLS_OPTS}"
  "${prefix[@]}" java "${opts[@]}" \
    -Dlog4j.configuration="file:${KAFKA_DIR}/tools-log4j.properties" \
    -cp "${KAFKA_LIBS}/*" "${main}" "$@"
}

# Prints the broker pid if our broker (for this data dir) is alive.
kafka_running_pid() {
  local pid
  [[ -f "${KAFKA_PID_FILE}" ]] || return 1
  pid="$(tr -dc '0-9' <"${KAFKA_PID_FILE}")"
  [[ -n "${pid}" ]] || return 1
  kill -0 "${pid}" 2>/dev/null || return 1
  # Guard against pid reuse: the process must be kafka.Kafka with our config.
  if [[ -r "/proc/${pid}/cmdline" ]]; then
    local cmd
    cmd="$(tr '\0' ' ' <"/proc/${pid}/cmdline" 2>/dev/null || true)"
    [[ "${cmd}" == *"kafka.Kafka"*"${KAFKA_CONFIG}"* ]] || return 1
  fi
  printf '%s\n' "${pid}"
}

# True if something accepts TCP connections on 127.0.0.1:$1.
kafka_port_open() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# True if the broker answers a real Admin API call (list topics).
kafka_answers() {
  local t="${1:-30}"
  kafka_port_open "${AGENTBUS_KAFKA_PORT}" || return 1
  kafka_tool --timeout "${t}" org.apache.kafka.tools.TopicCommand \
    --bootstrap-server "${KAFKA_BOOTSTRAP}" --list >/dev/null 2>&1
}
