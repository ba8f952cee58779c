"""The generated CRD: committed file in sync with the generator, schema complete, types round-trip."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml

from rayop.api import crd
from rayop.api import types as t
from rayop.api.schema import DecodeError, info

REPO = Path(__file__).resolve().parents[2]


def test_committed_crd_matches_generator() -> None:
    committed = (REPO / "manifests" / "crd.yaml").read_text()
    assert committed == crd.render_crd(), (
        "manifests/crd.yaml is stale: run python -m rayop.api.crd > manifests/crd.yaml"
    )


def test_render_is_deterministic_and_parses_back() -> None:
    assert crd.render_crd() == crd.render_crd()
    assert yaml.safe_load(crd.render_crd()) == crd.build_crd()


def _walk(schema: dict[str, Any], path: str) -> list[tuple[str, dict[str, Any]]]:
    out = [(path, schema)]
    for name, sub in (schema.get("properties") or {}).items():
        out.extend(_walk(sub, f"{path}.{name}"))
    if "items" in schema:
        out.extend(_walk(schema["items"], f"{path}[]"))
    if isinstance(schema.get("additionalProperties"), dict):
        out.extend(_walk(schema["additionalProperties"], f"{path}{{}}"))
    return out


def test_schema_is_structural_and_documented() -> None:
    root = crd.openapi_schema()
    for path, schema in _walk(root, ""):
        assert "type" in schema or schema.get("x-kubernetes-int-or-string"), f"{path} has no type"
        if path.count(".") >= 1 and not path.endswith("{}") and not path.endswith("[]"):
            if path not in (".apiVersion", ".kind", ".metadata"):
                assert schema.get("description"), f"{path} is undocumented"
        if schema.get("x-kubernetes-preserve-unknown-fields"):
            assert path.endswith((".head", ".worker", ".template")), f"{path} must not preserve unknown fields"


def test_every_type_field_is_documented() -> None:
    for cls in (t.RaySpec, t.WorkerGroupSpec, t.RayStatus, t.ReplicaStatus, t.WorkerGroupStatus, t.RayCondition, t.Ray):
        assert cls.__doc__
        for f in dataclasses.fields(cls):
            assert info(f).doc.strip(), f"{cls.__name__}.{f.name}"


def test_seed_fields_keep_their_json_names() -> None:
    spec = set(crd.openapi_schema()["properties"]["spec"]["properties"])
    assert {
        "minWorkers",
        "maxWorkers",
        "initialWorkers",
        "autoScalingMode",
        "targetUtilization",
        "idleTimeoutMinutes",
        "head",
        "worker",
        "configuration",
    } <= spec
    status = crd.openapi_schema()["properties"]["status"]["properties"]
    assert {"launcher", "head", "worker", "conditions", "startTime", "observedGeneration", "lastReconcileTime"} <= set(
        status
    )
    assert set(status["head"]["properties"]) == {
        "replicas",
        "updatedReplicas",
        "readyReplicas",
        "availableReplicas",
        "unavailableReplicas",
    }


def test_crd_metadata() -> None:
    body = crd.build_crd()
    assert body["metadata"]["name"] == "rays.ray.k8s.io"
    version = body["spec"]["versions"][0]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns["Desired"] == ".status.desiredWorkers"
    assert columns["Ready"] == ".status.worker.readyReplicas"
    assert "HeadReady" in columns["Head"] and "SuccessfulLaunch" in columns["Launched"]
    assert columns["Age"] == ".metadata.creationTimestamp"
    assert body["spec"]["names"]["shortNames"] and body["spec"]["names"]["categories"]


def test_cel_rules_name_their_fields() -> None:
    spec = crd.openapi_schema()["properties"]["spec"]
    for rule in spec["x-kubernetes-validations"]:
        assert "spec." in rule["message"]
        assert rule["fieldPath"].lstrip(".") in rule["message"]
    for rule in crd.openapi_schema()["x-kubernetes-validations"]:
        assert "metadata.name" in rule["message"]


def test_conflict_rules_cover_every_shape_field() -> None:
    rules = [r["rule"] for r in crd.openapi_schema()["properties"]["spec"]["x-kubernetes-validations"]]
    for name in t.SHAPE_FIELDS:
        assert f"!has(self.configuration) || !has(self.{name})" in rules
    for name in t.SIMPLE_WORKER_FIELDS:
        assert f"!has(self.workerGroups) || !has(self.{name})" in rules


def test_status_round_trips() -> None:
    status = {
        "launcher": {"replicas": 1, "readyReplicas": 0},
        "head": {"replicas": 1, "availableReplicas": 1},
        "worker": {"replicas": 2, "readyReplicas": 2},
        "workerGroups": [{"name": "worker", "desiredWorkers": 2, "replicas": 2}],
        "desiredWorkers": 2,
        "conditions": [
            {
                "type": "SuccessfulLaunch",
                "status": "True",
                "reason": "Launched",
                "message": "",
                "lastTransitionTime": "2019-10-25T02:18:13Z",
                "observedGeneration": 3,
            }
        ],
        "startTime": "2019-10-25T02:18:13Z",
        "observedGeneration": 3,
        "headPodName": "ray-sample-head-abcde",
        "endpoints": {"gcs": "ray-sample-head:6379"},
    }
    assert t.RayStatus.from_dict(status).to_dict() == status


def test_ray_from_dict_decodes_spec_and_defaults() -> None:
    ray = t.Ray.from_dict(
        {
            "apiVersion": t.API_VERSION,
            "kind": "Ray",
            "metadata": {"name": "x", "namespace": "ns"},
            "spec": {"workerGroups": [{"name": "a", "rayStartParams": {"num-cpus": 2}}]},
        }
    )
    assert ray.name == "x" and ray.namespace == "ns"
    assert ray.spec is not None and ray.spec.worker_groups is not None
    group = ray.spec.worker_groups[0]
    assert group.min_workers == 0  # the schema's default
    assert group.ray_start_params == {"num-cpus": "2"}  # int-or-string decoded to str


@pytest.mark.parametrize(
    "spec, path",
    [
        ({"minWorkers": -1}, "spec.minWorkers"),
        ({"minWorkers": "1"}, "spec.minWorkers"),
        ({"minWorkers": True}, "spec.minWorkers"),
        ({"targetUtilization": 0}, "spec.targetUtilization"),
        ({"targetUtilization": 101}, "spec.targetUtilization"),
        ({"autoScalingMode": "fast"}, "spec.autoScalingMode"),
        ({"workerGroups": [{"name": "Bad_Name"}]}, "spec.workerGroups[0].name"),
        ({"workerGroups": [{"minWorkers": 1}]}, "spec.workerGroups[0].name"),
        ({"workerGroups": [{"name": "a"}, {"name": "a"}]}, "spec.workerGroups[1]"),
        ({"desiredWorkers": {"a": -2}}, "spec.desiredWorkers.a"),
        ({"workersToDelete": ["a", "a"]}, "spec.workersToDelete"),
        ({"head": []}, "spec.head"),
    ],
)
def test_decode_errors_name_the_field(spec: dict[str, Any], path: str) -> None:
    with pytest.raises(DecodeError) as e:
        t.Ray.from_dict({"metadata": {"name": "x"}, "spec": spec})
    assert e.value.path == path


def test_docs_mention_every_field() -> None:
    docs = (REPO / "docs" / "api.md").read_text()
    for cls in (t.RaySpec, t.WorkerGroupSpec, t.RayStatus, t.ReplicaStatus, t.WorkerGroupStatus, t.RayCondition):
        for f in dataclasses.fields(cls):
            assert f"`{info(f).json}`" in docs or f"{info(f).json}`" in docs, (
                f"docs/api.md misses {cls.__name__}.{info(f).json}"
            )
