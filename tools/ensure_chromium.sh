#!/usr/bin/env bash
# The real-browser tests drive Debian's Chromium. `make test` and CI call this first, so that a
# newcomer's green run has run every test: install it where we can (root with apt), otherwise
# stop and print the one command that fixes it.
set -euo pipefail
chromium="${CKPTLAB_CHROMIUM:-/usr/bin/chromium}"
[ -x "$chromium" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing Debian's chromium for the browser tests (about a minute)..."
  apt-get install -y -q chromium >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; } \
    || { echo "error: could not install chromium with apt-get; run: apt-get update && apt-get install -y chromium" >&2; exit 1; }
  exit 0
fi
echo "error: the browser tests need Chromium at $chromium. Install it with:" >&2
echo "    sudo apt-get install -y chromium" >&2
echo "or point CKPTLAB_CHROMIUM at a Chromium binary (or run 'make test-no-browser' to skip them)." >&2
exit 1
