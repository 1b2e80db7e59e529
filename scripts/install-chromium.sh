#!/usr/bin/env bash
# Installs Debian's Chromium when it is missing: the HTML report (and later the UI) is checked in a
# real browser through Playwright with executable_path=/usr/bin/chromium (no browser download).
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "Chromium is missing; install Debian's 'chromium' package as root (browser tests will skip)." >&2
  exit 0
fi
echo "installing Debian's chromium package ..."
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
