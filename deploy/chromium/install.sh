#!/usr/bin/env bash
# Headless Chromium and its WebDriver for the dashboard's browser tests (tests/ui), from Debian's
# 'chromium' and 'chromium-driver' packages, installed only when absent. Prints the browser path.
set -euo pipefail
# shellcheck source=../debian.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/debian.sh"

die() { printf '[chromium] ERROR: %s\n' "$*" >&2; exit 1; }
find_browser() { command -v chromium || command -v chromium-browser || return 1; }

if ! find_browser >/dev/null || ! command -v chromedriver >/dev/null; then
  apt_install chromium chromium chromium-driver || exit 1
fi
browser="$(find_browser)" || die "installed, but no chromium binary on PATH"
command -v chromedriver >/dev/null || die "installed, but no chromedriver on PATH"
printf '[chromium] using %s with %s\n' "$("$browser" --version 2>/dev/null || echo "$browser")" \
  "$(chromedriver --version | head -n 1)" >&2
echo "$browser"
