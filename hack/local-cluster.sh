#!/usr/bin/env bash
# The project's local Kubernetes control plane: up [--process] [--nodes N] | down | status | env |
# restart|stop|start|pause|resume COMPONENT | logs COMPONENT; up --apiservers 2 adds a second API server. See hack/cluster/localcluster.py.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
exec python3 "$here/cluster/localcluster.py" "$@"
