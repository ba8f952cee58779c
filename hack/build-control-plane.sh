#!/usr/bin/env bash
# Builds kube-apiserver, kube-controller-manager, kube-scheduler and etcd from the Go module proxy into a cache
# folder outside the repository, and prints the folder. A warm cache makes this a no-op.
#
# The cache folder is keyed by the versions and by a hash of every input of the build (this script,
# hack/versions.env and the wrapper modules under hack/build/), so a changed input always rebuilds. Every input
# must exist before the cache is even looked at: a missing file fails here, naming it, however warm the cache.
#
#   hack/build-control-plane.sh           build (or reuse) the binaries; prints the folder
#   hack/build-control-plane.sh --check   resolve the wrapper modules in a fresh temporary folder from the files
#                                         git tracks (no binary cache); fails in seconds on a missing or broken input
#   hack/build-control-plane.sh --dir     print the folder the binaries go to, building nothing
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
cache=${RAYOP_CACHE:-$HOME/.cache/rayop}

# The build's inputs, relative to hack/. Keep in sync with what the steps below read.
inputs=(build-control-plane.sh versions.env build/k8s/go.mod build/etcd/go.mod build/etcd/main.go)
missing=()
for f in "${inputs[@]}"; do
  [ -f "$here/$f" ] || missing+=("hack/$f")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "build-control-plane: missing build input(s): ${missing[*]} (are they committed? see .gitignore)" >&2
  exit 1
fi
key=$(cd "$here" && cat "${inputs[@]}" | sha256sum | cut -c1-12)
out="$cache/bin/k8s-$K8S_VERSION-etcd-$ETCD_VERSION-$key"

major=${K8S_VERSION#v}; major=${major%%.*}
minor=${K8S_VERSION#v*.}; minor=${minor%%.*}
staging="v0.${K8S_VERSION#v*.}"

export GOMODCACHE="${RAYOP_GOMODCACHE:-$cache/go/mod}" GOCACHE="$cache/go/build" GOFLAGS="-mod=mod" CGO_ENABLED=0
export GOTOOLCHAIN=local

# prepare_k8s DIR / prepare_etcd DIR: copy a wrapper module into DIR and pin it to hack/versions.env.
prepare_k8s() {
  cp "$2/build/k8s/go.mod" "$1/go.mod"
  (
    cd "$1"
    go mod edit -require="k8s.io/kubernetes@$K8S_VERSION"
    local olds
    olds=$(go mod edit -json | python3 -c 'import json,sys; print(" ".join(r["Old"]["Path"] for r in json.load(sys.stdin).get("Replace") or []))')
    if [ -z "$olds" ]; then
      echo "build-control-plane: hack/build/k8s/go.mod lists no staging replacements" >&2
      exit 1
    fi
    for m in $olds; do
      go mod edit -replace="$m=$m@$staging"
    done
  )
}
prepare_etcd() {
  cp "$2/build/etcd/go.mod" "$2/build/etcd/main.go" "$1/"
  (cd "$1" && go mod edit -require="go.etcd.io/etcd/server/v3@$ETCD_VERSION")
}

case "${1:-}" in
  --dir)
    echo "$out"
    exit 0
    ;;
  --check)
    # From the tracked files alone: export hack/ as git has it into a fresh folder and resolve both modules there.
    top=$(git -C "$here" rev-parse --show-toplevel)
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    mkdir -p "$tmp/src" "$tmp/k8s" "$tmp/etcd"
    (cd "$top" && git ls-files -z -- hack | tar --null -T - -cf - 2>/dev/null) | tar -xf - -C "$tmp/src"
    for f in "${inputs[@]}"; do
      if [ ! -f "$tmp/src/hack/$f" ]; then
        echo "build-control-plane --check: hack/$f is not tracked by git" >&2
        exit 1
      fi
    done
    prepare_k8s "$tmp/k8s" "$tmp/src/hack"
    prepare_etcd "$tmp/etcd" "$tmp/src/hack"
    # Resolving the module graph and the packages of the three commands fetches only go.mod files and metadata
    # (cached in GOMODCACHE, never in the binary cache); a broken require or replace fails here.
    (cd "$tmp/k8s" && go list -m all >/dev/null)
    (cd "$tmp/k8s" && go list -m k8s.io/kubernetes k8s.io/api k8s.io/apiserver >/dev/null)
    (cd "$tmp/etcd" && go list -m all >/dev/null)
    echo "build-control-plane --check: wrapper modules resolve from tracked files (k8s $K8S_VERSION, etcd $ETCD_VERSION)"
    exit 0
    ;;
  "") ;;
  *)
    echo "usage: $0 [--check|--dir]" >&2
    exit 2
    ;;
esac

need=()
for b in kube-apiserver kube-controller-manager kube-scheduler etcd; do
  [ -x "$out/$b" ] || need+=("$b")
done
if [ ${#need[@]} -eq 0 ]; then
  echo "$out"
  exit 0
fi

mkdir -p "$cache/locks"
exec 9>"$cache/locks/build.lock"
flock 9
start=$(date +%s)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/k8s" "$work/etcd" "$work/out"

if [ ! -x "$out/kube-apiserver" ] || [ ! -x "$out/kube-controller-manager" ] || [ ! -x "$out/kube-scheduler" ]; then
  prepare_k8s "$work/k8s" "$here"
  (
    cd "$work/k8s"
    ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=$major -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"
    echo "building kubernetes $K8S_VERSION control plane into $out" >&2
    go build -trimpath -tags selinux,notest -ldflags "$ldflags" -o "$work/out/" \
      k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
      k8s.io/kubernetes/cmd/kube-scheduler >&2
  )
fi

if [ ! -x "$out/etcd" ]; then
  prepare_etcd "$work/etcd" "$here"
  (
    cd "$work/etcd"
    echo "building etcd $ETCD_VERSION into $out" >&2
    go build -trimpath -ldflags "-s -w" -o "$work/out/etcd" . >&2
  )
fi
# Binaries appear in the cache folder only once built whole, so an interrupted build never looks warm.
mkdir -p "$out"
for b in "$work"/out/*; do
  mv -f "$b" "$out/"
done
echo "control plane built in $(( $(date +%s) - start ))s" >&2
echo "$out"
