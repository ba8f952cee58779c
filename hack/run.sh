#!/usr/bin/env bash
# `make run`: the operator in the foreground against the current kubeconfig. When no cluster answers, the project's
# local control plane is started first (hack/local-cluster.sh): in process mode where the machine allows it (root,
# working `ip netns`), so the sample becomes a real Ray cluster, else in sim mode (pods are timelines). Force one
# with RAYOP_RUN_MODE=process|sim. The CRD is installed (or updated) and, on the local control plane, the seed's
# Kubernetes-style sample is applied so there is something to watch.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
export PATH="$repo/.venv/bin:$PATH"
local_cluster=false
if ! kubectl version --request-timeout=5s >/dev/null 2>&1; then
  if "$here/local-cluster.sh" status >/dev/null 2>&1; then
    mode=$("$here/local-cluster.sh" status | awk '$1 == "mode" {print $2}')
    echo "run: no reachable cluster in ${KUBECONFIG:-~/.kube/config}; using the local control plane already up ($mode mode)" >&2
    "$here/local-cluster.sh" up ${RAYOP_RUN_ARGS:-} >&2
  else
    mode=${RAYOP_RUN_MODE:-auto}
    why=""
    if [ "$mode" = auto ]; then
      if why=$("$here/local-cluster.sh" can-process 2>&1); then mode=process; else mode=sim; fi
    fi
    case "$mode" in
      process) echo "run: no reachable cluster in ${KUBECONFIG:-~/.kube/config}; starting the local control plane in process mode (Ray pods run as real processes)" >&2
               "$here/local-cluster.sh" up --process ${RAYOP_RUN_ARGS:-} >&2 ;;
      sim) echo "run: no reachable cluster in ${KUBECONFIG:-~/.kube/config}; starting the local control plane in sim mode (pods are simulated${why:+; process mode: $why})" >&2
           "$here/local-cluster.sh" up ${RAYOP_RUN_ARGS:-} >&2 ;;
      *) echo "run: RAYOP_RUN_MODE must be process, sim or auto, not '$mode'" >&2; exit 2 ;;
    esac
  fi
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
  if [ "${mode:-}" = process ]; then
    echo "       hack/local-cluster.sh exec -n ray \$(kubectl -n ray get pod -l ray.k8s.io/node-kind=head -o name | cut -d/ -f2) -- python -c 'import ray; ray.init(address=\"auto\"); print(ray.cluster_resources())'" >&2
  fi
fi
exec rayop run --metrics-bind-address "${RAYOP_METRICS_ADDRESS:-127.0.0.1:8080}" "$@"
