#!/usr/bin/env bash
# Renders the plain install manifests from the Helm chart (manifests/chart/rayop), the one source of truth:
#
#   manifests/namespace.yaml    templates/namespace.yaml (namespace.create=true)
#   manifests/rbac.yaml         templates/serviceaccount.yaml, templates/rbac.yaml
#   manifests/deployment.yaml   templates/deployment.yaml, templates/service.yaml
#   manifests/crd.yaml          crds/crd.yaml          (the chart's crds/ are written by python -m rayop.api.crd --write)
#   manifests/crd-rayjob.yaml   crds/crd-rayjob.yaml
#
# with `helm template rayop manifests/chart/rayop --namespace rayop-system --include-crds` and the chart's default
# values (plus namespace.create=true). tests/unit/test_chart.py renders again and fails on any difference.
#
#   hack/render-manifests.sh            write the files
#   hack/render-manifests.sh --stdout   print them instead, each after a line "==> PATH"
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
helm=$("$here/build-helm.sh")
mode=${1:-write}
case "$mode" in write | --stdout) ;; *) echo "usage: $0 [--stdout]" >&2; exit 2 ;; esac

# Splits helm's output into the files (the program is an argument: helm's output is its stdin).
split=$(cat <<'PY'
import re
import sys
from pathlib import Path

repo, mode = Path(sys.argv[1]), sys.argv[2]
FILES = {
    "manifests/namespace.yaml": ["templates/namespace.yaml"],
    "manifests/rbac.yaml": ["templates/serviceaccount.yaml", "templates/rbac.yaml"],
    "manifests/deployment.yaml": ["templates/deployment.yaml", "templates/service.yaml"],
    "manifests/crd.yaml": ["crds/crd.yaml"],
    "manifests/crd-rayjob.yaml": ["crds/crd-rayjob.yaml"],
}
HEADER = ("# Rendered from the Helm chart manifests/chart/rayop by hack/render-manifests.sh (release rayop, namespace\n"
          "# rayop-system, default values). Do not edit: change the chart and render again.\n")
# helm prints every object (and every CRD file) as "---\n# Source: <chart>/<path>\n<text>".
docs: dict[str, list[str]] = {}
for part in re.split(r"^---\n(?=# Source: )", sys.stdin.read(), flags=re.M):
    if not part.strip():
        continue
    first, _, body = part.partition("\n")
    source = first.removeprefix("# Source: ").split("/", 1)[1]
    docs.setdefault(source, []).append(body)
used = {s for sources in FILES.values() for s in sources}
unknown = sorted(set(docs) - used)
if unknown:
    sys.exit(f"render-manifests: the chart rendered {unknown}, which no plain manifest takes")
for path, sources in FILES.items():
    bodies = [b for s in sources for b in docs.get(s, [])]
    if not bodies:
        sys.exit(f"render-manifests: nothing rendered from {sources}")
    if sources[0].startswith("crds/"):
        text = bodies[0].rstrip("\n") + "\n"  # the generated CRD as it is (helm adds a newline)
    else:
        text = HEADER + "---\n".join(b.rstrip("\n") + "\n" for b in bodies)
    if mode == "--stdout":
        sys.stdout.write(f"==> {path}\n{text}")
    else:
        (repo / path).write_text(text)
        print(f"wrote {path}", file=sys.stderr)
PY
)
"$helm" template rayop "$repo/manifests/chart/rayop" --namespace rayop-system --include-crds \
  --set namespace.create=true | python3 -c "$split" "$repo" "$mode"
