#!/usr/bin/env bash
# Installs the Debian packages the project's tools need, only those missing (needs root, as CI and the dev
# machines are). Go and Python come with the machine.
set -euo pipefail
need=()
command -v openssl >/dev/null || need+=(openssl)
command -v flock >/dev/null || need+=(util-linux)
command -v ip >/dev/null || need+=(iproute2)
# A real Prometheus scrapes the operator's /metrics in tests/integration/test_runtime_prometheus.py.
command -v prometheus >/dev/null || need+=(prometheus)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing Debian packages: ${need[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
