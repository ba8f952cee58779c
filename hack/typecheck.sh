#!/usr/bin/env bash
# `make lint`: mypy over the operator's packages as Python imports them. setup.cfg maps `rayop` onto controller/ and
# `rayop.api` onto api/ (package_dir), which mypy cannot follow, so a tree of symlinks under .mypy_cache/tree/ lays
# the packages out under their import names, made anew on every run (new modules are never missed), and mypy checks
# `rayop` from there, strictly (setup.cfg's [mypy] sections); then the tools under hack/, looser (hack/mypy.ini). Extra files given as arguments are checked
# together with the packages (tests/unit/test_typecheck.py uses that to prove a cross-module error fails the run).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tree="$repo/.mypy_cache/tree"
rm -rf "$tree"
mkdir -p "$tree/rayop"
for entry in "$repo"/controller/*; do
  name=$(basename "$entry")
  [ "$name" = __pycache__ ] && continue
  ln -s "$entry" "$tree/rayop/$name"
done
[ -e "$tree/rayop/api" ] && { echo "typecheck: controller/api would shadow api/" >&2; exit 1; }
ln -s "$repo/api" "$tree/rayop/api"
cd "$repo"
# RAYOP_TYPECHECK_SRC / RAYOP_TYPECHECK_PATH point mypy elsewhere (e.g. "controller api" and "", the invocation that
# could not resolve the packages), to show the check in tests/unit/test_typecheck.py failing.
# shellcheck disable=SC2086
MYPYPATH="${RAYOP_TYPECHECK_PATH-$tree}" "$repo/.venv/bin/mypy" --config-file "$repo/setup.cfg" \
  --cache-dir "$repo/.mypy_cache" ${RAYOP_TYPECHECK_SRC:-"$tree/rayop"} "$@"
# The development tools, looser (hack/mypy.ini); they import the operator's runtime, found through the same tree.
MYPYPATH="$tree:$repo/hack/nodeagent:$repo/hack/cluster" "$repo/.venv/bin/mypy" --config-file "$repo/hack/mypy.ini" \
  --cache-dir "$repo/.mypy_cache/hack" hack/nodeagent/*.py hack/cluster/*.py
