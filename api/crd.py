"""The `Ray` CustomResourceDefinition, generated from the dataclasses in `rayop.api.types`.

Guarantees:
- `build_crd()` returns the complete apiextensions.k8s.io/v1 CRD as a dict: a structural schema with every
  field typed and documented, defaults, CEL rules whose messages name the field, the status subresource, printer
  columns, short names and categories. Pod templates are free-form objects (`x-kubernetes-preserve-unknown-fields`)
  so that the API server never rejects a pod field; every other unknown field is pruned.
- `render_crd()` is the exact text of `manifests/crd.yaml` and of the Helm chart's copy
  (`manifests/chart/rayop/crds/crd.yaml`); `python -m rayop.api.crd --write` regenerates both CRDs' files (as
  `python -m rayop.api.crd > manifests/crd.yaml` the plain one) and unit tests fail when a committed file differs.
- Pure: the same output on every run.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

import yaml

from rayop.api import rayjob as j
from rayop.api import types as t
from rayop.api.schema import FieldInfo, field_types, info, strip_optional

CRD_NAME = f"{t.PLURAL}.{t.GROUP}"
API_APPROVAL = "unapproved, the group ray.k8s.io comes from the rayop proposal and has not been reviewed by Kubernetes"

# CEL rules that relate several fields. (rule, message, fieldPath or None)
Rule = tuple[str, str, str | None]


# `initialWorkers` is checked against the bounds only when the object (or the worker group) is created, or when
# the update changes `initialWorkers` itself: afterwards the bounds clamp the desired count (as KubeRay clamps
# `replicas` to [minReplicas, maxReplicas]), so raising `minWorkers` on a live `Ray` is accepted. These rules are
# transition rules with `optionalOldSelf`: `oldSelf` is empty on create.
_INITIAL_UNCHANGED = (
    "(oldSelf.hasValue() && has(oldSelf.value().initialWorkers) && "
    "oldSelf.value().initialWorkers == self.initialWorkers)"
)

def _range_rules(prefix: str) -> list[Rule]:
    return [
        (
            "!has(self.minWorkers) || !has(self.maxWorkers) || self.minWorkers <= self.maxWorkers",
            f"{prefix}minWorkers must be less than or equal to {prefix}maxWorkers",
            ".minWorkers",
        ),
        (
            f"!has(self.initialWorkers) || {_INITIAL_UNCHANGED} || !has(self.minWorkers) || "
            "self.initialWorkers >= self.minWorkers",
            f"{prefix}initialWorkers must lie within [{prefix}minWorkers, {prefix}maxWorkers]: it is below "
            f"{prefix}minWorkers",
            ".initialWorkers",
        ),
        (
            f"!has(self.initialWorkers) || {_INITIAL_UNCHANGED} || !has(self.maxWorkers) || "
            "self.initialWorkers <= self.maxWorkers",
            f"{prefix}initialWorkers must lie within [{prefix}minWorkers, {prefix}maxWorkers]: it is above "
            f"{prefix}maxWorkers",
            ".initialWorkers",
        ),
    ]


def _spec_rules() -> list[Rule]:
    rules = _range_rules("spec.")
    for name in t.SHAPE_FIELDS:
        rules.append(
            (
                f"!has(self.configuration) || !has(self.{name})",
                f"spec.{name} cannot be combined with spec.configuration: the configuration describes the "
                f"cluster; set it there or drop spec.configuration",
                f".{name}",
            )
        )
    for name in t.SIMPLE_WORKER_FIELDS:
        rules.append(
            (
                f"!has(self.workerGroups) || !has(self.{name})",
                f"spec.{name} cannot be combined with spec.workerGroups: set it on each worker group instead",
                f".{name}",
            )
        )
    return rules


def _root_rules() -> list[Rule]:
    head = t.MAX_NAME_LENGTH
    simple = t.MAX_NAME_PLUS_GROUP_LENGTH - len(t.DEFAULT_WORKER_GROUP)
    both = t.MAX_NAME_PLUS_GROUP_LENGTH
    return [
        (
            f"self.metadata.name.size() <= {head}",
            f"metadata.name must be at most {head} characters: the head pod is named <name>-head-<5 characters> "
            f"and must fit in {t.NAME_LIMIT}",
            None,
        ),
        (
            f"self.metadata.name.matches('{t.DNS_1035_LABEL}')",
            "metadata.name must be a DNS-1035 label (lowercase letters, digits and '-', starting with a letter): "
            "the head Service is named after it",
            None,
        ),
        (
            "!has(self.spec) || has(self.spec.workerGroups) || has(self.spec.configuration) || "
            f"self.metadata.name.size() <= {simple}",
            f"metadata.name must be at most {simple} characters: worker pods are named "
            f"<name>-{t.DEFAULT_WORKER_GROUP}-<5 characters> and must fit in {t.NAME_LIMIT}",
            None,
        ),
        (
            "!has(self.spec) || !has(self.spec.workerGroups) || "
            f"self.spec.workerGroups.all(g, self.metadata.name.size() + g.name.size() <= {both})",
            f"metadata.name and spec.workerGroups[].name together must be at most {both} characters: worker pods "
            f"are named <name>-<group>-<5 characters> and must fit in {t.NAME_LIMIT}",
            None,
        ),
    ]


_CLASS_RULES: dict[type, list[Rule]] = {
    t.RaySpec: _spec_rules(),
    t.WorkerGroupSpec: _range_rules(""),
    t.RollingUpdateSpec: [
        (
            "(has(self.maxSurge) ? self.maxSurge : 1) + (has(self.maxUnavailable) ? self.maxUnavailable : 0) > 0",
            "rollingUpdate.maxSurge and rollingUpdate.maxUnavailable must not both be 0: the update could never "
            "replace a pod",
            None,
        )
    ],
    j.RayJobSpec: [(rule, message, None) for rule, message in j.SPEC_RULES],
}


def _cel(rules: list[Rule]) -> list[dict[str, Any]]:
    out = []
    for rule, message, field_path in rules:
        entry: dict[str, Any] = {"rule": rule, "message": message}
        if field_path:
            entry["fieldPath"] = field_path
        if "oldSelf" in rule:
            entry["optionalOldSelf"] = True
        out.append(entry)
    return out


def _description(cls: type) -> str:
    return " ".join((cls.__doc__ or "").split())


def _scalar(tp: object, meta: FieldInfo, *, for_items: bool = False) -> dict[str, Any]:
    if meta.int_or_string and tp is str:
        return {"x-kubernetes-int-or-string": True}
    if tp is int:
        out: dict[str, Any] = {"type": "integer", "format": "int32" if meta.int32 else "int64"}
        minimum = meta.item_minimum if for_items else meta.minimum
        if minimum is not None:
            out["minimum"] = int(minimum)
        if meta.maximum is not None and not for_items:
            out["maximum"] = int(meta.maximum)
        return out
    if tp is str:
        out = {"type": "string"}
        if for_items:
            if meta.item_max_length is not None:
                out["maxLength"] = meta.item_max_length
            return out
        if meta.enum is not None:
            out["enum"] = list(meta.enum)
        for key, value in (
            ("pattern", meta.pattern),
            ("minLength", meta.min_length),
            ("maxLength", meta.max_length),
            ("format", meta.format),
        ):
            if value is not None:
                out[key] = value
        return out
    if tp is bool:
        return {"type": "boolean"}
    if tp is float:
        return {"type": "number"}
    raise TypeError(f"no schema for {tp!r}")


def _field_schema(tp: object, meta: FieldInfo) -> dict[str, Any]:
    tp = strip_optional(tp)
    origin = typing.get_origin(tp)
    schema: dict[str, Any]
    if meta.preserve_unknown:
        schema = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    elif dataclasses.is_dataclass(tp):
        schema = object_schema(tp)  # type: ignore[arg-type]
    elif origin is tuple:
        item_tp = typing.get_args(tp)[0]
        if isinstance(item_tp, type) and dataclasses.is_dataclass(item_tp):
            items = object_schema(item_tp)
        else:
            items = _scalar(item_tp, meta, for_items=True)
        schema = {"type": "array", "items": items}
        if meta.max_items is not None:
            schema["maxItems"] = meta.max_items
        if meta.list_type:
            schema["x-kubernetes-list-type"] = meta.list_type
        if meta.list_map_keys:
            schema["x-kubernetes-list-map-keys"] = list(meta.list_map_keys)
    elif origin is typing.get_origin(typing.Mapping[str, Any]) or tp is Any:
        args = typing.get_args(tp)
        value_tp = args[1] if args else Any
        schema = {"type": "object"}
        if value_tp is Any:
            schema = {"type": "object"}
        else:
            schema["additionalProperties"] = _scalar(value_tp, meta, for_items=True)
        if meta.max_properties is not None:
            schema["maxProperties"] = meta.max_properties
    else:
        schema = _scalar(tp, meta)
    description = meta.doc
    if dataclasses.is_dataclass(tp) and not description:
        description = _description(tp)  # type: ignore[arg-type]
    schema = {"description": description, **schema}
    if meta.default is not None:
        schema["default"] = meta.default
    if meta.rules:
        schema["x-kubernetes-validations"] = [{"rule": r, "message": m} for r, m in meta.rules]
    return schema


def object_schema(cls: type) -> dict[str, Any]:
    """The structural schema of a dataclass declared with `prop` fields."""
    hints = field_types(cls)
    properties: dict[str, Any] = {}
    required: list[str] = []
    for f in dataclasses.fields(cls):
        meta = info(f)
        properties[meta.json] = _field_schema(hints[f.name], meta)
        if meta.required:
            required.append(meta.json)
    schema: dict[str, Any] = {"type": "object", "description": _description(cls), "properties": properties}
    if required:
        schema["required"] = required
    rules = _CLASS_RULES.get(cls)
    if rules:
        schema["x-kubernetes-validations"] = _cel(rules)
    return schema


def _kind_schema(cls: type) -> dict[str, Any]:
    """The schema of a top-level kind: its dataclass's fields plus apiVersion, kind and metadata."""
    root = object_schema(cls)
    props = root["properties"]
    props["apiVersion"] = {
        "type": "string",
        "description": "APIVersion defines the versioned schema of this representation of an object.",
    }
    props["kind"] = {"type": "string", "description": "Kind is a string value representing the REST resource."}
    props["metadata"] = {"type": "object"}
    return root


def openapi_schema() -> dict[str, Any]:
    """The openAPIV3Schema of the `Ray` kind."""
    root = _kind_schema(t.Ray)
    root["properties"]["spec"]["default"] = {}
    root["x-kubernetes-validations"] = _cel(_root_rules())
    return root


PRINTER_COLUMNS: list[dict[str, Any]] = [
    {
        "name": "Desired",
        "type": "integer",
        "description": "Worker pods the cluster should have now.",
        "jsonPath": ".status.desiredWorkers",
    },
    {
        "name": "Ready",
        "type": "integer",
        "description": "Ready worker pods.",
        "jsonPath": ".status.worker.readyReplicas",
    },
    {
        "name": "Head",
        "type": "string",
        "description": "Whether the head pod is ready.",
        "jsonPath": f'.status.conditions[?(@.type=="{t.CONDITION_HEAD_READY}")].status',
    },
    {
        "name": "Launched",
        "type": "string",
        "description": "Whether the launcher finished successfully.",
        "jsonPath": f'.status.conditions[?(@.type=="{t.CONDITION_SUCCESSFUL_LAUNCH}")].status',
    },
    {
        "name": "Mode",
        "type": "string",
        "priority": 1,
        "description": "The autoscaling mode.",
        "jsonPath": ".spec.autoScalingMode",
    },
    {
        "name": "Head Pod",
        "type": "string",
        "priority": 1,
        "description": "The current head pod.",
        "jsonPath": ".status.headPodName",
    },
    {
        "name": "Reason",
        "type": "string",
        "priority": 1,
        "description": "Why the cluster is not ready, if it is not.",
        "jsonPath": f'.status.conditions[?(@.type=="{t.CONDITION_READY}")].reason',
    },
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def _names(kind: str, list_kind: str, plural: str, singular: str, short_names: tuple[str, ...]) -> dict[str, Any]:
    """A CRD's `names`; every kind of rayop is in the same categories (`kubectl get rayop` lists them all)."""
    return {
        "kind": kind,
        "listKind": list_kind,
        "plural": plural,
        "singular": singular,
        "shortNames": list(short_names),
        "categories": list(t.CATEGORIES),
    }


def build_crd() -> dict[str, Any]:
    """The `Ray` CustomResourceDefinition."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": CRD_NAME,
            "labels": {"app.kubernetes.io/name": "rayop", "app.kubernetes.io/part-of": "rayop"},
            # *.k8s.io groups are protected: the API server requires this annotation; "unapproved, ..." is the
            # documented value for groups that did not go through Kubernetes API review.
            "annotations": {"api-approved.kubernetes.io": API_APPROVAL},
        },
        "spec": {
            "group": t.GROUP,
            "scope": "Namespaced",
            "names": _names(t.KIND, t.LIST_KIND, t.PLURAL, t.SINGULAR, t.SHORT_NAMES),
            "versions": [
                {
                    "name": t.VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": openapi_schema()},
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                }
            ],
        },
    }


HEADER = "# Generated by `python -m rayop.api.crd > manifests/crd.yaml` from api/types.py. Do not edit.\n"


def render_crd() -> str:
    """The text of manifests/crd.yaml."""
    return HEADER + yaml.safe_dump(build_crd(), sort_keys=False, width=120, allow_unicode=True)


# -- RayJob ---------------------------------------------------------------------------------------------------

RAYJOB_PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Job Status", "type": "string", "description": "The Ray job's state as Ray reports it.",
     "jsonPath": ".status.jobStatus"},
    {"name": "Deployment Status", "type": "string", "description": "What the operator is doing with the job.",
     "jsonPath": ".status.jobDeploymentStatus"},
    {"name": "Cluster", "type": "string", "description": "The Ray the job runs on.",
     "jsonPath": ".status.rayClusterName"},
    {"name": "Start", "type": "date", "description": "When the operator first acted on the job.",
     "jsonPath": ".status.startTime"},
    {"name": "End", "type": "date", "description": "When the job finished.", "jsonPath": ".status.endTime"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    {"name": "Reason", "type": "string", "priority": 1, "description": "Why the job is in this state.",
     "jsonPath": ".status.reason"},
]


def rayjob_openapi_schema() -> dict[str, Any]:
    """The openAPIV3Schema of the `RayJob` kind."""
    root = _kind_schema(j.RayJob)
    root["x-kubernetes-validations"] = _cel([(j.NAME_RULE, j.NAME_MESSAGE, None)])
    return root


def build_rayjob_crd() -> dict[str, Any]:
    """The `RayJob` CustomResourceDefinition."""
    crd = build_crd()
    crd["metadata"]["name"] = j.CRD_NAME
    crd["spec"]["names"] = _names(j.KIND, j.LIST_KIND, j.PLURAL, j.SINGULAR, j.SHORT_NAMES)
    version = crd["spec"]["versions"][0]
    version["schema"] = {"openAPIV3Schema": rayjob_openapi_schema()}
    version["additionalPrinterColumns"] = RAYJOB_PRINTER_COLUMNS
    return crd


RAYJOB_HEADER = (
    "# Generated by `python -m rayop.api.crd rayjob > manifests/crd-rayjob.yaml` from api/rayjob.py. Do not edit.\n"
)


def render_rayjob_crd() -> str:
    """The text of manifests/crd-rayjob.yaml."""
    return RAYJOB_HEADER + yaml.safe_dump(build_rayjob_crd(), sort_keys=False, width=120, allow_unicode=True)


# Where `--write` puts the generated CRDs, relative to the repository: the Helm chart's crds/ (what `helm install`
# applies) and the plain manifests (hack/render-manifests.sh renders those again from the chart; a test compares).
CRD_FILES: dict[str, tuple[str, ...]] = {
    "ray": ("manifests/chart/rayop/crds/crd.yaml", "manifests/crd.yaml"),
    "rayjob": ("manifests/chart/rayop/crds/crd-rayjob.yaml", "manifests/crd-rayjob.yaml"),
}


def rendered_crds() -> dict[str, str]:
    """The text of every file in `CRD_FILES`, by path."""
    texts = {"ray": render_crd(), "rayjob": render_rayjob_crd()}
    return {path: texts[kind] for kind, paths in CRD_FILES.items() for path in paths}


def main() -> None:
    import sys
    from pathlib import Path

    args = sys.argv[1:]
    if args[:1] == ["--write"]:
        # python -m rayop.api.crd --write [REPO]: every CRD file of the repository (default: the current folder).
        repo = Path(args[1] if len(args) > 1 else ".")
        if not (repo / "manifests" / "chart" / "rayop").is_dir():
            sys.exit(f"{repo}: not the repository's top folder (no manifests/chart/rayop)")
        for path, text in rendered_crds().items():
            (repo / path).write_text(text)
            print(f"wrote {path}", file=sys.stderr)
    elif args == ["rayjob"]:
        sys.stdout.write(render_rayjob_crd())
    else:
        sys.stdout.write(render_crd())


if __name__ == "__main__":
    main()
