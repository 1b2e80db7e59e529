#!/usr/bin/env bash
# Installs Debian's Prometheus server and Pushgateway binaries when they are missing (the tests start
# their own servers, on 127.0.0.1 and free ports, with their state in a temporary folder).
set -euo pipefail
if [ -x /usr/bin/prometheus ] && [ -x /usr/bin/prometheus-pushgateway ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "Prometheus binaries (/usr/bin/prometheus, /usr/bin/prometheus-pushgateway) are missing; install Debian's 'prometheus' and 'prometheus-pushgateway' packages as root." >&2
  exit 1
fi
echo "installing Debian's prometheus and prometheus-pushgateway packages ..."
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus prometheus-pushgateway >/dev/null
# The packages start their services where an init system runs; the tests run their own, so stop them.
for service in prometheus prometheus-pushgateway; do
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$service" 2>/dev/null; then
    systemctl stop "$service" || true
  elif command -v service >/dev/null 2>&1; then
    service "$service" stop >/dev/null 2>&1 || true
  fi
done
