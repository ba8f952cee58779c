"""Hypothesis strategies for `Ray` objects, generated from the CRD's own OpenAPI schema (manifests/crd.yaml), plus
mutations of them: wrong types, out-of-range numbers, odd strings, and huge or invalid `configuration` YAML.

`rays()` draws `(ray, kind)`; kind names how the object was made (`schema`, `sample`, `mutated:schema`,
`mutated:sample`, `mutated:not-a-mapping`), so a test can report
the mix with `hypothesis.event`. Objects are plain JSON dicts, as the API server would hand them to the operator
(metadata included); whether admission accepts one is for the API server to say (the live fuzz test asks it).
"""

from __future__ import annotations

import copy
from functools import cache
from typing import Any

import yaml
from hypothesis import strategies as st

from tests.support.cluster import REPO

CRD_PATH = REPO / "manifests" / "crd.yaml"
SAMPLES = REPO / "manifests" / "samples"

# Strings that have broken parsers and name builders elsewhere.
ODD_STRINGS = [
    "", " ", "-", "head", "HEAD", "a" * 64, "a" * 300, "ü", "名字", "\x00", "a\nb", "${HOME}", "$(rm -rf /)",
    "'; DROP TABLE", "0", "-1", "1e400", "NaN", "inf", "true", "null", "~", "[", "{", "*", ":", "a:b", "../..",
    "100Gi", "1.5", "0x10", "1_000", "\u202e", "\ud7ff", "a" * 10_000,
]
ODD_NUMBERS = [-1, -(2**31), 2**31, 2**31 - 1, 2**63, -(2**63), 10**30, 0, 1, 1.5, -0.0, float("inf"),
               float("-inf"), float("nan")]


@cache
def spec_schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD_PATH.read_text())
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    return schema


@cache
def sample_configurations() -> tuple[str, ...]:
    out = []
    for path in sorted(SAMPLES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            config = ((doc or {}).get("spec") or {}).get("configuration")
            if isinstance(config, str):
                out.append(config)
    return tuple(out)


@cache
def sample_specs() -> tuple[dict[str, Any], ...]:
    out = []
    for path in sorted(SAMPLES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and isinstance(doc.get("spec"), dict):
                out.append(doc["spec"])
    return tuple(out)


STATUSES = [
    {},
    {"desiredWorkers": 3, "observedGeneration": 7, "startTime": "2026-01-01T00:00:00Z",
     "conditions": [{"type": "Ready", "status": "True", "reason": "Ready", "message": "",
                     "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 7}],
     "head": {"replicas": 1, "readyReplicas": 1}, "worker": {"replicas": 3},
     "workerGroups": [{"name": "worker", "replicas": 3}, {"name": "gone", "replicas": 1}]},
    {"lastReconcileTime": "2026-05-31T00:00:00Z", "conditions": [{"type": "ConfigurationValid", "status": "False",
                                                                    "reason": "InvalidConfiguration"}]},
]


# -- values --------------------------------------------------------------------------------------------------------

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**40), 2**40),
                         st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)), max_leaves=12)
odd_values = st.one_of(st.sampled_from(ODD_STRINGS), st.sampled_from(ODD_NUMBERS), json_values)

quantities = st.one_of(st.sampled_from(["1", "2", "500m", "0", "2Gi", "512Mi", "1.5", "100", "8", "1e3", "-1",
                                        "abc", "", "1Ti", "0.001"]), st.integers(-2, 64))
container_names = st.sampled_from(["ray-head", "ray-worker", "main", "sidecar", "", "RAY", "x" * 70])


@st.composite
def containers(draw: st.DrawFn) -> dict[str, Any]:
    c: dict[str, Any] = {"name": draw(container_names)}
    if draw(st.booleans()):
        c["image"] = draw(st.sampled_from(["rayproject/ray:2.60.0", "rayproject/ray:2.9.0", "busybox", "",
                                           "rayproject/ray:latest", "example.com/x/ray@sha256:" + "a" * 64]))
    if draw(st.booleans()):
        c["resources"] = {k: {r: draw(quantities) for r in draw(st.sets(st.sampled_from(
            ["cpu", "memory", "nvidia.com/gpu", "ephemeral-storage", "example.com/tpu"]), max_size=3))}
            for k in draw(st.sets(st.sampled_from(["limits", "requests"]), max_size=2))}
    if draw(st.booleans()):
        c["command"] = draw(st.lists(st.sampled_from(["/bin/sh", "-c", "sleep 1", "ray start", ""]), max_size=3))
    if draw(st.booleans()):
        c["env"] = [{"name": draw(st.sampled_from(["A", "RAY_ADDRESS", "PATH"])), "value": draw(st.text(max_size=8))}]
    if draw(st.booleans()):
        c["ports"] = [{"name": draw(st.sampled_from(["gcs", "dashboard", "x"])),
                       "containerPort": draw(st.integers(-1, 70000))}]
    return c


@st.composite
def pod_templates(draw: st.DrawFn) -> dict[str, Any]:
    """A pod template, mostly pod-shaped, sometimes anything (the schema keeps unknown fields here)."""
    if draw(st.integers(0, 9)) == 0:
        value: dict[str, Any] = draw(st.dictionaries(st.text(max_size=10), json_values, max_size=4))
        return value
    spec: dict[str, Any] = {"containers": draw(st.lists(containers(), min_size=0, max_size=3))}
    if draw(st.booleans()):
        spec["nodeSelector"] = {"k": draw(st.text(max_size=8))}
    if draw(st.booleans()):
        spec["restartPolicy"] = draw(st.sampled_from(["Always", "Never", "OnFailure", "Sometimes"]))
    template: dict[str, Any] = {"spec": spec}
    if draw(st.booleans()):
        template["metadata"] = {"labels": draw(st.dictionaries(st.sampled_from(
            ["app", "ray.k8s.io/cluster", "app.kubernetes.io/managed-by", "a/b/c"]), st.text(max_size=8),
            max_size=3))}
    return template


@st.composite
def configurations(draw: st.DrawFn) -> str:
    """A `configuration` text: a sample, a mutated sample, random YAML, broken YAML, huge text, an alias bomb."""
    kind = draw(st.integers(0, 7))
    samples = sample_configurations()
    if kind <= 1:
        return draw(st.sampled_from(samples))
    if kind == 2:
        base = yaml.safe_load(draw(st.sampled_from(samples)))
        return yaml.safe_dump(mutate_tree(draw, base))
    if kind == 3:
        return yaml.safe_dump(draw(json_values))
    if kind == 4:
        text = draw(st.sampled_from(samples))
        cut = draw(st.integers(0, len(text)))
        return text[:cut] + draw(st.sampled_from(["[", ": :", "\t- x", "&a", "*nope", "!!python/object:os.system",
                                                  "\x00", "}", "%YAML 9.9\n---", ""])) + text[cut:]
    if kind == 5:
        n = draw(st.sampled_from([1_000, 50_000, 500_000]))
        return "cluster_name: x\n" + "# pad\n" * (n // 6) + draw(st.sampled_from(["", "max_workers: 2\n"]))
    if kind == 6:
        levels = draw(st.integers(2, 9))
        lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
        lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, levels)]
        lines.append(f"available_node_types: {{w: {{node_config: *a{levels - 1}, resources: {{}}}}}}")
        return "\n".join(lines) + "\n"
    return draw(st.text(max_size=200))


# -- objects from the schema ---------------------------------------------------------------------------------------


def from_schema(draw: st.DrawFn, schema: dict[str, Any], path: str) -> Any:
    """A value valid for one node of a structural schema (CEL rules are not evaluated: some values break them)."""
    if schema.get("x-kubernetes-preserve-unknown-fields") and schema.get("type") == "object" \
            and not schema.get("properties"):
        return draw(pod_templates())
    if schema.get("x-kubernetes-int-or-string"):
        return draw(st.one_of(st.integers(0, 64), st.sampled_from(["1", "0.0.0.0", "8265", "true", "{\"a\": 1}",
                                                                    "x y", ""])))
    if "enum" in schema:
        return draw(st.sampled_from(schema["enum"]))
    kind = schema.get("type")
    if kind == "integer":
        lo = schema.get("minimum", -(2**31))
        hi = schema.get("maximum", min(2**31 - 1, lo + draw(st.sampled_from([4, 16, 1000, 2**31 - 1]))))
        return draw(st.integers(lo, hi))
    if kind == "number":
        return draw(st.floats(schema.get("minimum", -1e9), schema.get("maximum", 1e9)))
    if kind == "boolean":
        return draw(st.booleans())
    if kind == "string":
        if path.endswith("configuration"):
            return draw(configurations())
        if "pattern" in schema:
            return draw(st.from_regex(schema["pattern"], fullmatch=True).filter(
                lambda s: schema.get("minLength", 0) <= len(s) <= schema.get("maxLength", 253)))
        return draw(st.text(min_size=schema.get("minLength", 0), max_size=min(schema.get("maxLength", 40), 40)))
    if kind == "array":
        items = schema.get("items") or {}
        n = draw(st.integers(0, min(schema.get("maxItems", 4), 4)))
        values = [from_schema(draw, items, path + "[]") for _ in range(n)]
        if items.get("type") == "object" and "name" in (items.get("properties") or {}):
            seen: set[Any] = set()
            values = [v for v in values if not (v.get("name") in seen or seen.add(v.get("name")))]  # list-map keys
        return values
    if kind == "object":
        props: dict[str, Any] = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        out: dict[str, Any] = {}
        if props:
            chosen = draw(st.sets(st.sampled_from(sorted(props)), max_size=len(props)))
            for name in sorted(set(chosen) | set(schema.get("required") or ())):
                out[name] = from_schema(draw, props[name], f"{path}.{name}")
        elif isinstance(extra, dict):
            keys = draw(st.lists(st.sampled_from(["worker", "gpu", "cpu", "num-cpus", "num-gpus", "resources",
                                                  "memory", "object-store-memory", "dashboard-host", "block",
                                                  "x", "metrics-export-port", "port"]), max_size=4, unique=True))
            for key in keys:
                out[key] = from_schema(draw, extra, f"{path}.{key}")
        return out
    return draw(json_values)


# -- mutations -----------------------------------------------------------------------------------------------------


def _paths(tree: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(tree, dict):
        for k, v in tree.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            out += _paths(v, (*prefix, i))
    return out


def mutate_tree(draw: st.DrawFn, tree: Any) -> Any:
    """Replace one node of `tree` (a copy) with an odd value, delete it, or add an odd key next to it."""
    tree = copy.deepcopy(tree)
    paths = _paths(tree)[1:]
    # The whole tree is replaced rarely (a spec that is not a mapping at all), else one node inside it.
    path = draw(st.sampled_from(paths)) if paths and draw(st.integers(0, 19)) else ()
    value = draw(odd_values)
    if not path and isinstance(tree, dict) and not tree and draw(st.integers(0, 9)):
        tree[draw(st.sampled_from(["unknownKey", "minWorkers", "head", "configuration", "workerGroups"]))] = value
        return tree
    if not path:
        return value
    parent = tree
    for step in path[:-1]:
        parent = parent[step]
    action = draw(st.integers(0, 3))
    if action == 0 and isinstance(parent, dict):
        del parent[path[-1]]
    elif action == 1 and isinstance(parent, dict):
        parent[draw(st.sampled_from(["unknownKey", "x-y", "", "minWorkers", "max_workers", "node_config"]))] = value
    else:
        parent[path[-1]] = value
    return tree


@st.composite
def specs(draw: st.DrawFn) -> tuple[dict[str, Any], str]:
    source = draw(st.integers(0, 9))
    if source <= 4:
        spec, kind = from_schema(draw, spec_schema(), "spec"), "schema"
    else:
        spec, kind = copy.deepcopy(draw(st.sampled_from(sample_specs()))), "sample"
    mutations = draw(st.integers(0, 3))
    for _ in range(mutations):
        spec = mutate_tree(draw, spec)
    if mutations:
        kind = f"mutated:{kind}" if isinstance(spec, dict) else "mutated:not-a-mapping"
    return spec, kind


names = st.one_of(st.sampled_from(["fuzz", "a", "ray-sample", "x" * 40]),
                  st.from_regex(r"[a-z]([-a-z0-9]{0,20}[a-z0-9])?", fullmatch=True))


@st.composite
def rays(draw: st.DrawFn) -> tuple[dict[str, Any], str]:
    spec, kind = draw(specs())
    ray: dict[str, Any] = {
        "apiVersion": "ray.k8s.io/v1alpha1", "kind": "Ray",
        "metadata": {"name": draw(names), "namespace": "fuzz", "uid": "00000000-0000-0000-0000-000000000001",
                     "generation": draw(st.integers(1, 5)), "resourceVersion": "1",
                     "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": spec,
    }
    if draw(st.integers(0, 4)) == 0:
        # The status subresource is validated against the CRD's status schema, so only typed statuses reach the
        # operator; an earlier operator's or a stale one is what matters here.
        ray["status"] = draw(st.sampled_from(STATUSES))
    return ray, kind
