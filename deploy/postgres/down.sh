#!/usr/bin/env bash
# Stop the private PostgreSQL cluster started by deploy/postgres/up.sh.
#
#   deploy/postgres/down.sh           # pg_ctl stop -m fast
#   deploy/postgres/down.sh --purge   # ... and delete the data dir
set -euo pipefail

# shellcheck source=common.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/common.sh"

purge=0
for arg in "$@"; do
  case "${arg}" in
    --purge) purge=1 ;;
    -h|--help) sed -n '2,5p' "$0"; exit 0 ;;
    *) pg_die "unknown argument: ${arg} (usage: $0 [--purge])" ;;
  esac
done

if PG_BIN="$(pg_find_bindir)" && pg_is_running; then
  pg_log "stopping (data ${PGDATA_DIR})"
  if ! pg_as_owner "${PG_BIN}/pg_ctl" -D "${PGDATA_DIR}" -m fast -w -t 60 stop >&2; then
    pg_log "fast shutdown timed out; trying immediate"
    pg_as_owner "${PG_BIN}/pg_ctl" -D "${PGDATA_DIR}" -m immediate -w -t 30 stop >&2 || true
  fi
else
  pg_log "not running"
fi

if ((purge)); then
  case "${PGDATA_DIR}" in
    ""|"/"|"${HOME:-/root}") pg_die "refusing to purge suspicious data dir '${PGDATA_DIR}'" ;;
  esac
  if [[ -d "${PGDATA_DIR}" ]]; then
    rm -rf -- "${PGDATA_DIR}"
    pg_log "purged ${PGDATA_DIR}"
  fi
fi
exit 0
