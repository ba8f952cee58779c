"""`rayop render FILE`: the manifests rayop would create for the `Ray` objects in a file, offline, as a YAML stream.

Guarantees:
- Offline: no cluster, no kubeconfig, no network. The same builders as the operator produce the output
  (`rayop.build.build_children`), with the same `Options` flags as `rayop run`.
- One document per object the operator would create, in creation order: autoscaler ServiceAccount/Role/RoleBinding
  (when autoscaling is on), ConfigMap, head Service, head pod, each worker group's pods (one document per desired
  pod), launcher pod. Objects that were never stored have no UID, so ownerReferences are left out and the launcher
  pod's name is computed for an unknown head pod; `kubectl create -f -` accepts the stream as it is.
- A `RayJob` with `rayClusterSpec` renders as the `Ray` its first attempt creates (`<name>-1`, labelled with the
  job's name) followed by that Ray's manifests; a `RayJob` with `clusterSelector` creates nothing and is named on
  stderr. The Ray job's submission itself is not rendered (it is a request to Ray's dashboard, not a manifest).
- A `Ray` that cannot be converted is reported on stderr with the offending field, and the exit code is 1; the
  other objects of the file are still rendered.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import yaml

from rayop.api.convert import effective_cluster
from rayop.api.model import ClusterModel, ConfigurationError
from rayop.api.types import API_VERSION, KIND
from rayop.autoscaler import inpod_files
from rayop.build import build_children
from rayop.api import rayjob as j
from rayop.defaults import Options, add_option_arguments, options_from_args
from rayop.jobplan import child_manifest


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (configurations, programs) as literal blocks."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def render_ray(ray: Mapping[str, Any], options: Options, *,
               autoscaler_config: Callable[[ClusterModel], Mapping[str, Any] | str] | None = None,
               programs: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """The manifests for one `Ray` (decoded YAML). Raises ConfigurationError when it cannot be converted."""
    model = effective_cluster(ray).cluster
    config = autoscaler_config(model) if autoscaler_config else None
    desired = build_children(ray, model, options, autoscaler_config=config,
                             programs=inpod_files() if programs is None else programs)
    out: list[dict[str, Any]] = [dict(m) for m in desired.singletons()]
    out.append(dict(desired.head.manifest))
    for group in desired.workers:
        out += [dict(group.manifest) for _ in range(group.desired)]
    out.append(desired.launcher_pod(head_uid=""))
    return out


def _rays(text: str, namespace: str | None) -> Iterator[dict[str, Any]]:
    """The Rays of a file: each `Ray`, and for each `RayJob` with rayClusterSpec its first attempt's child Ray
    (marked with the key `rayJob`, which is not part of the object)."""
    for doc in yaml.safe_load_all(text):
        if not isinstance(doc, dict) or doc.get("apiVersion") != API_VERSION or doc.get("kind") not in (KIND, j.KIND):
            continue
        metadata = dict(doc.get("metadata") or {})
        if not metadata.get("namespace"):
            metadata["namespace"] = namespace or "default"
        if doc.get("kind") == j.KIND:
            if (doc.get("spec") or {}).get("rayClusterSpec") is None:
                print(f"rayop render: RayJob {metadata.get('name')}: runs on an existing Ray (clusterSelector); "
                      "nothing to create", file=sys.stderr)
                continue
            child = child_manifest({**doc, "metadata": {**metadata, "uid": ""}}, 1)
            del child["metadata"]["ownerReferences"]  # the RayJob was never stored: no UID to own it by
            yield {**child, "rayJob": True}
            continue
        yield {**doc, "metadata": metadata}


def add_render_parser(sub: Any) -> None:
    p = sub.add_parser("render", help="print the manifests rayop would create for a Ray file (offline)")
    p.add_argument("file", help="YAML file with one or more Ray objects ('-' reads stdin)")
    p.add_argument("--namespace", "-n", default=None, help="namespace of Ray objects that name none (default: default)")
    add_option_arguments(p)
    p.set_defaults(func=cmd_render)


def cmd_render(args: argparse.Namespace) -> int:
    try:
        text = sys.stdin.read() if args.file == "-" else open(args.file, encoding="utf-8").read()
    except OSError as e:
        print(f"rayop render: {e}", file=sys.stderr)
        return 1
    try:
        rays = list(_rays(text, args.namespace))
    except yaml.YAMLError as e:
        print(f"rayop render: {args.file}: invalid YAML: {e}", file=sys.stderr)
        return 1
    if not rays:
        print(f"rayop render: {args.file}: no {API_VERSION} {KIND} objects (or RayJobs with rayClusterSpec)",
              file=sys.stderr)
        return 1
    options = options_from_args(args)
    code = 0
    documents: list[dict[str, Any]] = []
    for ray in rays:
        try:
            if ray.pop("rayJob", False):
                documents.append(dict(ray))
            documents += render_ray(ray, options)
        except ConfigurationError as e:
            print(f"rayop render: {ray['metadata'].get('name')}: {e.describe()}", file=sys.stderr)
            code = 1
    if documents:
        sys.stdout.write(yaml.dump_all(documents, Dumper=_Dumper, sort_keys=False, width=120))
    return code
