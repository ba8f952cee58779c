#!/usr/bin/env bash
# Builds kube-apiserver, kube-controller-manager, kube-scheduler and etcd from the Go module proxy into a cache
# folder outside the repository, keyed by version. Prints the folder. A warm cache makes this a no-op.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
cache=${RAYOP_CACHE:-$HOME/.cache/rayop}
out="$cache/bin/k8s-$K8S_VERSION-etcd-$ETCD_VERSION"
export GOMODCACHE="$cache/go/mod" GOCACHE="$cache/go/build" GOFLAGS="-mod=mod" CGO_ENABLED=0
export GOTOOLCHAIN=local

need=()
for b in kube-apiserver kube-controller-manager kube-scheduler etcd; do
  [ -x "$out/$b" ] || need+=("$b")
done
if [ ${#need[@]} -eq 0 ]; then
  echo "$out"
  exit 0
fi

mkdir -p "$out" "$cache/locks"
exec 9>"$cache/locks/build.lock"
flock 9
start=$(date +%s)
major=${K8S_VERSION#v}; major=${major%%.*}
minor=${K8S_VERSION#v*.}; minor=${minor%%.*}
staging="v0.${K8S_VERSION#v*.}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if [ ! -x "$out/kube-apiserver" ] || [ ! -x "$out/kube-controller-manager" ] || [ ! -x "$out/kube-scheduler" ]; then
  # A wrapper module: k8s.io/kubernetes pins its staging modules to ./staging/...; point each at its release.
  cp "$here/build/k8s/go.mod" "$work/go.mod"
  [ -f "$here/build/k8s/go.sum" ] && cp "$here/build/k8s/go.sum" "$work/go.sum"
  (
    cd "$work"
    go mod edit -require="k8s.io/kubernetes@$K8S_VERSION"
    for m in $(go mod edit -json | python3 -c 'import json,sys; print(" ".join(r["Old"]["Path"] for r in json.load(sys.stdin).get("Replace") or []))'); do
      go mod edit -replace="$m=$m@$staging"
    done
    ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=$major -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"
    echo "building kubernetes $K8S_VERSION control plane into $out" >&2
    go build -trimpath -tags selinux,notest -ldflags "$ldflags" -o "$out/" \
      k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
      k8s.io/kubernetes/cmd/kube-scheduler >&2
  )
fi

if [ ! -x "$out/etcd" ]; then
  cp "$here/build/etcd/go.mod" "$here/build/etcd/main.go" "$work/"
  [ -f "$here/build/etcd/go.sum" ] && cp "$here/build/etcd/go.sum" "$work/"
  (
    cd "$work"
    rm -f go.mod.k8s
    go mod edit -require="go.etcd.io/etcd/server/v3@$ETCD_VERSION"
    echo "building etcd $ETCD_VERSION into $out" >&2
    go build -trimpath -ldflags "-s -w" -o "$out/etcd" . >&2
  )
fi
echo "control plane built in $(( $(date +%s) - start ))s" >&2
echo "$out"
