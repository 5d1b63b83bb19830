#!/usr/bin/env bash
# The whole test suite on a fresh machine: venv, install, Chromium, start Kafka and PostgreSQL, run every
# test against every backend, stop what this script started. Extra arguments go to pytest.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

# Each step says when it starts (seconds since this script began), so a slow run shows where.
step() { printf '== [%4ds] %s\n' "$SECONDS" "$*" >&2; }

py="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  step "creating .venv with $($py --version)"
  "$py" -m venv .venv
fi
step "installing agentbus[dev]"
.venv/bin/python -m pip install -q --disable-pip-version-check -U pip >&2
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]' >&2

# PostgreSQL runs as the unprivileged postgres user, which must be able to enter its data dir.
if [ "$(id -u)" = 0 ] && id postgres >/dev/null 2>&1 && ! runuser -u postgres -- test -x "$repo/deploy"; then
  export AGENTBUS_PG_DATA="${AGENTBUS_PG_DATA:-/tmp/agentbus-test-pg/data}"
  export AGENTBUS_PG_RUN="${AGENTBUS_PG_RUN:-/tmp/agentbus-test-pg/run}"
fi

started=()
cleanup() {
  step "stopping what this script started"
  for s in "${started[@]}"; do "deploy/$s/down.sh" >&2 || true; done
}
trap cleanup EXIT

step "Chromium for the dashboard's browser tests"
deploy/chromium/install.sh >/dev/null

step "starting Kafka"
kafka_url="$(deploy/kafka/up.sh | tail -n 1)"
started+=(kafka)
step "starting PostgreSQL"
pg_url="$(deploy/postgres/up.sh | tail -n 1)"
started+=(postgres)

export AGENTBUS_TEST_KAFKA="$kafka_url"
export AGENTBUS_TEST_DATABASE="${pg_url%/agentbus}/agentbus_test"
step "pytest (kafka: $AGENTBUS_TEST_KAFKA, postgres: $AGENTBUS_TEST_DATABASE)"
set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
step "pytest exited with $rc"
if [ "$rc" = 5 ]; then
  echo "pytest collected no tests: that is a failure here" >&2
  rc=1
fi
exit "$rc"
