#!/usr/bin/env bash
# Builds the Helm CLI from the Go module proxy into a cache folder outside the repository and prints the binary's
# path. A warm cache makes this a no-op (the binary is only looked up).
#
#   hack/build-helm.sh         build (or reuse) helm; prints the path of the binary
#   hack/build-helm.sh --path  print where the binary goes, building nothing
#
# The version is pinned here, on its own (hack/versions.env pins the control plane, whose cache key covers that
# file; a Helm bump must not rebuild the control plane).
set -euo pipefail
HELM_VERSION=v3.22.0
cache=${RAYOP_CACHE:-$HOME/.cache/rayop}
out="$cache/bin/helm-$HELM_VERSION"
bin="$out/helm"

case "${1:-}" in
  --path)
    echo "$bin"
    exit 0
    ;;
  "") ;;
  *)
    echo "usage: $0 [--path]" >&2
    exit 2
    ;;
esac

# The binary is current when it was built by this very script (its hash is kept beside it), so a change of the
# version or of the build flags here rebuilds.
key=$(sha256sum "${BASH_SOURCE[0]}" | cut -c1-12)
if [ -x "$bin" ] && [ "$(cat "$out/key" 2>/dev/null)" = "$key" ]; then
  echo "$bin"
  exit 0
fi

export GOPATH="$cache/go" GOMODCACHE="${RAYOP_GOMODCACHE:-$cache/go/mod}" GOCACHE="$cache/go/build"
# `go install pkg@version` builds the module as published (its own go.mod, no local one); nothing of the
# environment's GOFLAGS applies to it.
export GOFLAGS="" CGO_ENABLED=0 GOTOOLCHAIN=local

mkdir -p "$cache/locks"
exec 9>"$cache/locks/helm.lock"
flock 9
# Another caller may have built it while this one waited for the lock.
if [ -x "$bin" ] && [ "$(cat "$out/key" 2>/dev/null)" = "$key" ]; then
  echo "$bin"
  exit 0
fi
start=$(date +%s)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "building helm $HELM_VERSION into $out" >&2
# What Helm's own release build sets with -X: the version and commit it reports, and the Kubernetes version that
# `helm template` and `helm lint` assume without a cluster (the minor of the k8s.io/client-go it is built with;
# the source default is 1.20, which charts asking for a newer kubeVersion refuse).
meta=$(go mod download -json "helm.sh/helm/v3@$HELM_VERSION")
read -r commit k8s_minor < <(python3 -c '
import json, re, sys
m = json.loads(sys.stdin.read())
info = json.load(open(m["Info"]))
mod = open(m["GoMod"]).read()
minor = re.search(r"^\s*k8s.io/client-go v0\.(\d+)\.", mod, re.M).group(1)
print(info.get("Origin", {}).get("Hash", "unknown"), minor)' <<<"$meta")
ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
ldflags+=" -X helm.sh/helm/v3/internal/version.gitCommit=$commit -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
for pkg in pkg/lint/rules pkg/chartutil; do
  ldflags+=" -X helm.sh/helm/v3/$pkg.k8sVersionMajor=1 -X helm.sh/helm/v3/$pkg.k8sVersionMinor=$k8s_minor"
done
GOBIN="$work" go install -trimpath -ldflags "$ldflags" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" >&2
# The binary appears in the cache only once built whole, so an interrupted build never looks warm.
mkdir -p "$out"
mv -f "$work/helm" "$bin"
echo "$key" >"$out/key"
echo "helm built in $(( $(date +%s) - start ))s" >&2
echo "$bin"
