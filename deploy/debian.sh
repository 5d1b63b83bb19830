# Sourced by the deploy scripts: install Debian packages a script needs when they are absent.
#
#   apt_install LABEL PACKAGE...   # as root, or through sudo; fails with what to install by hand

apt_install() {
  local label="$1"; shift
  if ! command -v apt-get >/dev/null 2>&1; then
    printf '[%s] ERROR: apt-get not available; install %s manually\n' "$label" "$*" >&2
    return 1
  fi
  local sudo=()
  if [[ "$(id -u)" != "0" ]]; then
    if ! command -v sudo >/dev/null 2>&1; then
      printf '[%s] ERROR: not root and no sudo; install %s manually\n' "$label" "$*" >&2
      return 1
    fi
    sudo=(sudo)
  fi
  printf '[%s] installing the Debian packages: %s\n' "$label" "$*" >&2
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get -o Acquire::Retries=3 update >&2
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get -o Acquire::Retries=3 install -y --no-install-recommends "$@" >&2
}
