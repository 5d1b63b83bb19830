# shellcheck shell=bash
# Shared settings for deploy/postgres/{up,down}.sh. Source it; do not run it.

PG_DEPLOY_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DEPLOY_DIR="$(dirname "${PG_DEPLOY_DIR}")"

AGENTBUS_PG_PORT="${AGENTBUS_PG_PORT:-5433}"
AGENTBUS_PG_DATA="${AGENTBUS_PG_DATA:-${PG_DEPLOY_DIR}/data}"
AGENTBUS_PG_RUN="${AGENTBUS_PG_RUN:-${DEPLOY_DIR}/.run/postgres}"
AGENTBUS_PG_USER="${AGENTBUS_PG_USER:-agentbus}"
# Make dirs absolute (they may be given relative to the caller's cwd).
case "${AGENTBUS_PG_DATA}" in /*) ;; *) AGENTBUS_PG_DATA="$(pwd)/${AGENTBUS_PG_DATA}" ;; esac
case "${AGENTBUS_PG_RUN}" in /*) ;; *) AGENTBUS_PG_RUN="$(pwd)/${AGENTBUS_PG_RUN}" ;; esac

# Server programs run as another user who may not be able to read the
# caller's cwd (e.g. /root), which makes initdb/pg_ctl fail; use a neutral cwd.
cd /

PGDATA_DIR="${AGENTBUS_PG_DATA}"
PG_SOCKET_DIR="${AGENTBUS_PG_RUN}"
PG_LOG_FILE="${PGDATA_DIR}/server.log"
PG_DATABASES=(agentbus agentbus_test)

pg_log() { printf '[postgres] %s\n' "$*" >&2; }
pg_die() { printf '[postgres] ERROR: %s\n' "$*" >&2; exit 1; }

# Newest /usr/lib/postgresql/<ver>/bin that has initdb + pg_ctl (Debian layout),
# else the directory of an initdb on PATH.
pg_find_bindir() {
  local d
  while IFS= read -r d; do
    if [[ -x "${d}/initdb" && -x "${d}/pg_ctl" && -x "${d}/postgres" ]]; then
      printf '%s\n' "${d}"; return 0
    fi
  done < <(ls -d /usr/lib/postgresql/*/bin /usr/pgsql-*/bin 2>/dev/null | sort -t/ -k4 -V -r)
  if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
    dirname "$(command -v initdb)"; return 0
  fi
  return 1
}

# Server-side commands (initdb, pg_ctl) must not run as root.
if [[ "$(id -u)" == "0" ]]; then
  PG_OS_USER="${AGENTBUS_PG_OS_USER:-postgres}"
else
  PG_OS_USER="$(id -un)"
fi

pg_as_owner() {
  if [[ "$(id -u)" == "0" ]]; then
    runuser -u "${PG_OS_USER}" -- "$@"
  else
    "$@"
  fi
}

# pg_ctl status: 0 = running, 3 = not running, 4 = no/invalid data dir.
pg_is_running() {
  [[ -f "${PGDATA_DIR}/PG_VERSION" ]] || return 1
  pg_as_owner "${PG_BIN}/pg_ctl" -D "${PGDATA_DIR}" status >/dev/null 2>&1
}
