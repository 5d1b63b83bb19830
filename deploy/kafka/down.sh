#!/usr/bin/env bash
# Stop the local Kafka broker started by deploy/kafka/up.sh.
#
#   deploy/kafka/down.sh           # SIGTERM, wait up to 30 s, then SIGKILL
#   deploy/kafka/down.sh --purge   # ... and delete the data dir
set -euo pipefail

# shellcheck source=common.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/common.sh"

purge=0
for arg in "$@"; do
  case "${arg}" in
    --purge) purge=1 ;;
    -h|--help) sed -n '2,6p' "$0"; exit 0 ;;
    *) kafka_die "unknown argument: ${arg} (usage: $0 [--purge])" ;;
  esac
done

STOP_TIMEOUT="${AGENTBUS_KAFKA_STOP_TIMEOUT:-30}"

if pid="$(kafka_running_pid)"; then
  kafka_log "stopping broker (pid ${pid}) ..."
  kill -TERM "${pid}" 2>/dev/null || true
  deadline=$((SECONDS + STOP_TIMEOUT))
  while kill -0 "${pid}" 2>/dev/null && ((SECONDS < deadline)); do
    sleep 0.5
  done
  if kill -0 "${pid}" 2>/dev/null; then
    kafka_log "broker did not stop within ${STOP_TIMEOUT}s; sending SIGKILL"
    kill -KILL "${pid}" 2>/dev/null || true
    for _ in $(seq 1 20); do kill -0 "${pid}" 2>/dev/null || break; sleep 0.25; done
  fi
  kafka_log "stopped"
else
  kafka_log "not running"
fi
rm -f "${KAFKA_PID_FILE}"

if ((purge)); then
  # Refuse to delete anything that does not look like our data dir.
  case "${KAFKA_DATA}" in
    ""|"/"|"${HOME:-/root}") kafka_die "refusing to purge suspicious data dir '${KAFKA_DATA}'" ;;
  esac
  if [[ -d "${KAFKA_DATA}" ]]; then
    rm -rf -- "${KAFKA_DATA}"
    kafka_log "purged ${KAFKA_DATA}"
  fi
fi
exit 0
