#!/usr/bin/env bash
# `make run`: the operator in the foreground against the current kubeconfig. When no cluster answers, the project's
# local control plane is started first (hack/local-cluster.sh). The CRD is installed (or updated) and, on the local
# control plane, the seed's Kubernetes-style sample is applied so there is something to watch.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
export PATH="$repo/.venv/bin:$PATH"
local_cluster=false
if ! kubectl version --request-timeout=5s >/dev/null 2>&1; then
  echo "run: no reachable cluster in ${KUBECONFIG:-~/.kube/config}; starting the local control plane" >&2
  "$here/local-cluster.sh" up ${RAYOP_RUN_ARGS:-}
  eval "$("$here/local-cluster.sh" env)"
  local_cluster=true
fi
echo "run: cluster $(kubectl config view --minify -o jsonpath='{.clusters[0].cluster.server}')" >&2
kubectl apply --server-side --force-conflicts -f "$repo/manifests/crd.yaml" >&2
kubectl wait --for=condition=Established --timeout=60s crd/rays.ray.k8s.io >&2
if $local_cluster; then
  kubectl create namespace ray --dry-run=client -o yaml | kubectl apply -f - >&2
  kubectl apply -f "$repo/manifests/samples/seed-structured.yaml" >&2
  echo "run: applied manifests/samples/seed-structured.yaml; in another shell:" >&2
  echo "       eval \"\$(hack/local-cluster.sh env)\"; kubectl get ray -A -w" >&2
fi
exec rayop run --metrics-bind-address "${RAYOP_METRICS_ADDRESS:-127.0.0.1:8080}" "$@"
