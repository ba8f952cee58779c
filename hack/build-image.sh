#!/usr/bin/env bash
# `make image`: builds the operator image from the repository's Dockerfile without a Docker engine, then checks it
# by running it the way the Deployment does (docs/image.md).
#
#   hack/build-image.sh                 install the tools, make the base images, build, check
#   hack/build-image.sh --check IMAGE   only check an image that already exists in the local container storage
#
# 1. Debian packages: buildah (build), podman + runc (the check run), mmdebstrap (the base), only those missing.
# 2. The base images: no registry is reachable, so the Dockerfile's BASE/BUILD_BASE are Debian bookworm roots made
#    by mmdebstrap (variant essential plus python3; the build base also python3-venv), kept as tarballs in
#    ${RAYOP_CACHE:-$HOME/.cache/rayop}/image/ and imported into the container storage once. Their names carry a
#    hash of how they were made, so changing the recipe below makes new ones.
# 3. The image: `buildah build --isolation chroot --network host` (pip reaches the package index from the host's
#    network). The host's pip settings that say how to reach the index (index-url, trusted-host, proxy, timeouts,
#    from `pip config list`) and its CA bundle go in as build secrets, never as layers or build args.
# 4. The check: `podman run --read-only --user 65532:65532 --network none` with runc, only /tmp writable (as the
#    Deployment's emptyDir): `rayop --version`, `rayop run --help`, the user, that nothing can be written, that
#    every module the CLI imports has its .pyc, that no pip or compiler is inside. Any failure exits non-zero.
#    crun (podman's default runtime here) cannot start a container on this machine's hybrid cgroup layout, and no
#    runtime can raise the default rlimits without CAP_SYS_RESOURCE, hence runc and the explicit --ulimit.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache="${RAYOP_CACHE:-$HOME/.cache/rayop}/image"
version=$(sed -n 's/^version *= *//p' "$repo/setup.cfg")
image="${RAYOP_IMAGE:-localhost/rayop:$version}"
suite=bookworm
mirror="${RAYOP_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
runtime="${RAYOP_OCI_RUNTIME:-runc}"

step_start=$SECONDS
say() { echo "build-image: $*" >&2; }
took() { say "$1 took $((SECONDS - step_start)) s"; step_start=$SECONDS; }
fail() { say "FAIL: $*"; exit 1; }

install_tools() {
  local need=()
  command -v buildah >/dev/null || need+=(buildah)
  command -v podman >/dev/null || need+=(podman)
  command -v runc >/dev/null || need+=(runc)
  [ "${1:-}" = check ] || command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
  if [ ${#need[@]} -gt 0 ]; then
    say "installing Debian packages: ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
}

# The recipe of both bases: Debian's essential set (no apt: mmdebstrap installs from outside), merged /usr, no
# manuals, docs (but copyrights), locales or info pages.
mm_opts=(--variant=essential --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr --format=tar
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*'
  --dpkgopt='path-include=/usr/share/doc/*/copyright' --dpkgopt='path-exclude=/usr/share/locale/*'
  --dpkgopt='path-exclude=/usr/share/info/*')

# base NAME PACKAGES: prints the tag of a base image with PACKAGES, made (mmdebstrap) and imported when missing.
base() {
  local name=$1 packages=$2 key tag tarball
  key=$(echo "$suite $packages ${mm_opts[*]}" | sha1sum | cut -c1-12)
  tag="localhost/rayop-base:$suite-$name-$key"
  tarball="$cache/base-$suite-$name-$key.tar"
  if ! podman image exists "$tag"; then
    if [ ! -s "$tarball" ]; then
      say "making the $name base ($suite + $packages) with mmdebstrap into $tarball"
      mkdir -p "$cache"
      mmdebstrap -q "${mm_opts[@]}" --include="$packages" "$suite" "$tarball.part" "$mirror" >&2
      mv "$tarball.part" "$tarball"
    fi
    say "importing $tarball as $tag"
    podman import -q --change 'CMD ["/bin/bash"]' \
      --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' "$tarball" "$tag" >/dev/null
  fi
  echo "$tag"
}

# The host's pip settings for reaching the index, as a pip.conf (host paths such as find-links are left out; the
# CA bundle is its own secret, as its path differs inside the build).
pip_secrets() {
  local conf=$1 cert
  python3 - "$conf" <<'EOF'
import subprocess, sys
keep = {"index-url", "extra-index-url", "trusted-host", "timeout", "default-timeout", "retries", "proxy"}
try:
    out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
except OSError:
    out = ""
settings = {}
for line in out.splitlines():  # in pip's load order: later lines override earlier ones
    name, _, value = line.partition("=")
    key = name.rsplit(".", 1)[-1]
    if key in keep:
        settings[key] = value.strip().strip("'\"")
with open(sys.argv[1], "w", encoding="utf-8") as f:
    f.write("[global]\n" + "".join(f"{k} = {v}\n" for k, v in sorted(settings.items())))
EOF
  echo "--secret=id=pipconf,src=$conf"
  cert=${PIP_CERT:-$(python3 -m pip config get global.cert 2>/dev/null || true)}
  [ -n "$cert" ] && [ -f "$cert" ] && echo "--secret=id=pipcert,src=$cert"
  return 0
}

# in_image ENTRYPOINT ARGS...: runs in the image as the Deployment runs it (UID/GID 65532, read-only root, only
# /tmp writable, no network, no capabilities).
in_image() {
  local entrypoint=$1
  shift
  podman --runtime "$runtime" run --rm -i --read-only --read-only-tmpfs=false --tmpfs /tmp:rw,size=64m \
    --user 65532:65532 --network none --cap-drop ALL --security-opt no-new-privileges \
    --ulimit nofile=4096:4096 --ulimit nproc=4096:4096 --entrypoint "$entrypoint" "$image" "$@"
}

check() {
  local out user entrypoint
  user=$(podman image inspect --format '{{.Config.User}}' "$image")
  [ "$user" = 65532:65532 ] || fail "the image's user is '$user', not 65532:65532"
  entrypoint=$(podman image inspect --format '{{json .Config.Entrypoint}}' "$image")
  [ "$entrypoint" = '["rayop","run"]' ] || fail "the image's entrypoint is $entrypoint, not [\"rayop\",\"run\"]"

  out=$(in_image rayop --version 2>&1) || fail "rayop --version exited non-zero: $out"
  [ "$out" = "rayop $version" ] || fail "rayop --version printed '$out', not 'rayop $version'"
  say "ok: rayop --version: $out"

  out=$(in_image rayop run --help 2>&1) || fail "rayop run --help exited non-zero: $out"
  grep -q '^usage: rayop run' <<<"$out" || fail "rayop run --help printed no usage: $out"
  grep -q -- '--leader-elect' <<<"$out" || fail "rayop run --help does not list --leader-elect: $out"
  say "ok: rayop run --help ($(wc -l <<<"$out") lines)"

  out=$(in_image python3 - 2>&1 <<'EOF'
import importlib.util, os, shutil, sys
import rayop.cli, rayop.reconciler, rayop.jobreconciler  # what `rayop run` loads
from rayop.runtime.kube import KubeClient
# The client from a kubeconfig with an inline CA (the config loader writes it to a temporary file: /tmp).
with open("/tmp/kubeconfig", "w") as f:
    f.write("""apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:6443", certificate-authority-data: "LS0tLS0K"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
""")
client = KubeClient.load(kubeconfig="/tmp/kubeconfig")
assert client.configuration.host == "https://127.0.0.1:6443", client.configuration.host
assert client.configuration.ssl_ca_cert.startswith("/tmp/"), client.configuration.ssl_ca_cert
assert (os.getuid(), os.getgid()) == (65532, 65532), (os.getuid(), os.getgid())
for path in ("/", "/opt/rayop", "/etc", "/run", "/var/tmp"):
    try:
        open(os.path.join(path, ".rayop-write-probe"), "w").close()
    except OSError:
        continue
    sys.exit(f"{path} is writable")
open("/tmp/.rayop-write-probe", "w").close()  # the one writable place, as the Deployment's emptyDir
uncompiled = sorted(m.__name__ for m in list(sys.modules.values())
                    if getattr(m, "__cached__", None) and not os.path.exists(m.__cached__))
assert not uncompiled, f"modules without .pyc (would be compiled on every start): {uncompiled}"
for tool in ("pip", "pip3", "gcc", "cc", "make", "apt-get"):
    assert shutil.which(tool) is None, f"{tool} is in the image: {shutil.which(tool)}"
assert importlib.util.find_spec("pip") is None, "pip is importable"
print(f"{len(sys.modules)} modules loaded, all from .pyc")
EOF
) || fail "the in-image checks: $out"
  say "ok: UID 65532, read-only except /tmp, no pip or compilers, $out"
}

if [ "${1:-}" = --check ]; then
  [ $# -eq 2 ] || { echo "usage: $0 [--check IMAGE]" >&2; exit 2; }
  image=$2
  install_tools check
  check
  say "ok: $image"
  exit 0
fi
[ $# -eq 0 ] || { echo "usage: $0 [--check IMAGE]" >&2; exit 2; }

install_tools
took "tools"
run_base=$(base run python3)
build_base=$(base build python3,python3-venv)
took "base images ($run_base, $build_base)"

secrets_dir=$(mktemp -d)
trap 'rm -rf "$secrets_dir"' EXIT
mapfile -t secrets < <(pip_secrets "$secrets_dir/pip.conf")
say "building $image (secrets: ${secrets[*]#--secret=})"
buildah build --isolation chroot --network host --layers --pull=never \
  --build-arg "BASE=$run_base" --build-arg "BUILD_BASE=$build_base" "${secrets[@]}" \
  -f "$repo/Dockerfile" -t "$image" "$repo" >&2
took "image build"

check
took "check"

archive="$cache/rayop-$version.tar.gz"
podman save -q "$image" | gzip -6 >"$archive"
say "ok: $image, $(podman image inspect --format '{{.Size}}' "$image" | numfmt --to=iec) in the container storage," \
  "$(stat -c %s "$archive" | numfmt --to=iec) as $archive (podman save | gzip; podman load -i to use it)"
