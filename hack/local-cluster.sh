#!/usr/bin/env bash
# The project's local Kubernetes control plane: up [--process] [--nodes N] | down | status | env |
# restart|stop|start COMPONENT | logs COMPONENT. See hack/cluster/localcluster.py.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
exec python3 "$here/cluster/localcluster.py" "$@"
