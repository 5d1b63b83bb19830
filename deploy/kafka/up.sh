#!/usr/bin/env bash
# Start a local single-node KRaft Kafka broker for agentbus (no Docker needed).
#
#   deploy/kafka/up.sh            # idempotent; prints kafka://127.0.0.1:9092
#
# Env: AGENTBUS_KAFKA_PORT (9092), AGENTBUS_KAFKA_CONTROLLER_PORT (9093),
#      AGENTBUS_KAFKA_DATA (deploy/kafka/data), AGENTBUS_KAFKA_START_TIMEOUT (90),
#      KAFKA_HEAP_OPTS (-Xmx1G -Xms512m).
set -euo pipefail

# shellcheck source=common.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/common.sh"

START_TIMEOUT="${AGENTBUS_KAFKA_START_TIMEOUT:-90}"
URL="kafka://${KAFKA_BOOTSTRAP}"

kafka_require_java

# --------------------------------------------------------------------------- jars
libs_complete() {
  [[ -d "${KAFKA_LIBS}" ]] || return 1
  [[ -f "${KAFKA_LIBS}/.complete" ]] || return 1
  [[ "$(cat "${KAFKA_LIBS}/.complete")" == "$(sha256sum "${KAFKA_DIR}/pom.xml" | cut -d' ' -f1)" ]] || return 1
  local j
  for j in "${KAFKA_REQUIRED_JARS[@]}"; do
    [[ -s "${KAFKA_LIBS}/${j}" ]] || return 1
  done
}

fetch_libs() {
  command -v mvn >/dev/null 2>&1 || kafka_die "mvn not found (apt-get install -y maven) and ${KAFKA_LIBS} is incomplete"
  kafka_log "fetching Kafka ${KAFKA_VERSION} jars from Maven Central into ${KAFKA_LIBS} ..."
  local tmp="${KAFKA_DIR}/libs.tmp.$$"
  rm -rf "${tmp}"
  trap 'rm -rf "${tmp}"' EXIT
  local start=${SECONDS}
  # A registry that fails for a moment must not fail a fresh machine's set-up: three attempts, the
  # last one without -q so that its error is in the output.
  local attempt quiet
  for attempt in 1 2 3; do
    quiet=-q
    [[ ${attempt} -lt 3 ]] || quiet=
    if mvn -B ${quiet} -Dstyle.color=never -f "${KAFKA_DIR}/pom.xml" dependency:copy-dependencies \
          -DincludeScope=runtime -DoutputDirectory="${tmp}" >&2; then
      break
    fi
    [[ ${attempt} -lt 3 ]] || kafka_die "mvn dependency:copy-dependencies failed 3 times (its output is above)"
    kafka_log "mvn dependency:copy-dependencies failed (attempt ${attempt} of 3); trying again in $((attempt * 10)) s"
    rm -rf "${tmp}"
    sleep $((attempt * 10))
  done
  sha256sum "${KAFKA_DIR}/pom.xml" | cut -d' ' -f1 >"${tmp}/.complete"
  rm -rf "${KAFKA_LIBS}"
  mv "${tmp}" "${KAFKA_LIBS}"
  rm -rf "${KAFKA_DIR}/target"
  trap - EXIT
  kafka_log "fetched $(find "${KAFKA_LIBS}" -name '*.jar' | wc -l) jars in $((SECONDS - start))s"
  libs_complete || kafka_die "jar fetch finished but ${KAFKA_LIBS} is still incomplete"
}

libs_complete || fetch_libs

# ------------------------------------------------------------- already running?
if pid="$(kafka_running_pid)"; then
  kafka_log "broker already running (pid ${pid}); checking it answers on ${KAFKA_BOOTSTRAP} ..."
  deadline=$((SECONDS + START_TIMEOUT))
  until kafka_answers 20; do
    if ((SECONDS >= deadline)) || ! kill -0 "${pid}" 2>/dev/null; then
      kafka_log "broker pid ${pid} does not answer on ${KAFKA_BOOTSTRAP}; last log lines:"
      tail -n 40 "${KAFKA_LOGS}/server.log" >&2 2>/dev/null || true
      kafka_die "broker unhealthy; try: $(dirname "$0")/down.sh && $0"
    fi
    sleep 1
  done
  kafka_log "already running and answering (pid ${pid})"
  echo "${URL}"
  exit 0
fi
rm -f "${KAFKA_PID_FILE}"

for p in "${AGENTBUS_KAFKA_PORT}" "${AGENTBUS_KAFKA_CONTROLLER_PORT}"; do
  if kafka_port_open "${p}"; then
    kafka_die "port 127.0.0.1:${p} is already in use by another process (set AGENTBUS_KAFKA_PORT / AGENTBUS_KAFKA_CONTROLLER_PORT)"
  fi
done

# ------------------------------------------------------------------ config
mkdir -p "${KAFKA_DATA}" "${KAFKA_LOG_DIRS}" "${KAFKA_LOGS}"
sed -e "s|@KAFKA_PORT@|${AGENTBUS_KAFKA_PORT}|g" \
    -e "s|@KAFKA_CONTROLLER_PORT@|${AGENTBUS_KAFKA_CONTROLLER_PORT}|g" \
    -e "s|@KAFKA_LOG_DIRS@|${KAFKA_LOG_DIRS}|g" \
    "${KAFKA_DIR}/server.properties.template" >"${KAFKA_CONFIG}.tmp"
mv "${KAFKA_CONFIG}.tmp" "${KAFKA_CONFIG}"

# ------------------------------------------------------------ format (once)
if [[ ! -f "${KAFKA_LOG_DIRS}/meta.properties" ]]; then
  cluster_id="$(kafka_tool kafka.tools.StorageTool random-uuid | tail -n 1 | tr -d '[:space:]')"
  [[ -n "${cluster_id}" ]] || kafka_die "StorageTool random-uuid returned nothing"
  kafka_log "formatting ${KAFKA_LOG_DIRS} (cluster id ${cluster_id})"
  kafka_tool kafka.tools.StorageTool format -t "${cluster_id}" -c "${KAFKA_CONFIG}" >&2 \
    || kafka_die "StorageTool format failed"
else
  kafka_log "storage already formatted ($(grep -E '^cluster.id=' "${KAFKA_LOG_DIRS}/meta.properties" || true))"
fi

# ------------------------------------------------------------------- start
read -r -a heap_opts <<<"${KAFKA_HEAP_OPTS}"
read -r -a perf_opts <<<"${KAFKA_JVM_PERFORMANCE_OPTS}"
kafka_log "starting broker on ${KAFKA_BOOTSTRAP} (controller 127.0.0.1:${AGENTBUS_KAFKA_CONTROLLER_PORT}, data ${KAFKA_DATA})"
# Console appender output (stdout) duplicates server.log, so drop it; keep
# stderr (JVM errors, log4j init problems) in logs/stderr.log.
# setsid: detach from the caller's process group / terminal so the broker
# survives the shell (or CI step) that started it.
setsid java "${heap_opts[@]}" "${perf_opts[@]}" \
  -Dkafka.logs.dir="${KAFKA_LOGS}" \
  -Dlog4j.configuration="file:${KAFKA_DIR}/log4j.properties" \
  -cp "${KAFKA_LIBS}/*" \
  kafka.Kafka "${KAFKA_CONFIG}" \
  >/dev/null 2>>"${KAFKA_LOGS}/stderr.log" </dev/null &
pid=$!
echo "${pid}" >"${KAFKA_PID_FILE}"

fail() {
  kafka_log "$1; last lines of ${KAFKA_LOGS}/server.log:"
  tail -n 60 "${KAFKA_LOGS}/server.log" >&2 2>/dev/null \
    || tail -n 60 "${KAFKA_LOGS}/stderr.log" >&2 2>/dev/null || true
  if kill -0 "${pid}" 2>/dev/null; then
    kill -TERM "${pid}" 2>/dev/null || true
    for _ in $(seq 1 20); do kill -0 "${pid}" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "${pid}" 2>/dev/null || true
  fi
  rm -f "${KAFKA_PID_FILE}"
  exit 1
}

deadline=$((SECONDS + START_TIMEOUT))
while :; do
  kill -0 "${pid}" 2>/dev/null || fail "broker process ${pid} exited during startup"
  if kafka_port_open "${AGENTBUS_KAFKA_PORT}" && kafka_answers 20; then
    break
  fi
  ((SECONDS < deadline)) || fail "broker did not answer on ${KAFKA_BOOTSTRAP} within ${START_TIMEOUT}s"
  sleep 1
done

kafka_log "broker up (pid ${pid}, log ${KAFKA_LOGS}/server.log)"
echo "${URL}"
