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
# A real Redis holds the GCS state in tests/e2e/test_gcs_ft_process_mode.py (redis-cli comes with redis-tools).
command -v redis-server >/dev/null || need+=(redis-server)
command -v redis-cli >/dev/null || need+=(redis-tools)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing Debian packages: ${need[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
