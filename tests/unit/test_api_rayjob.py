"""The `RayJob` API: the committed CRD matches the generator, the schema carries the admission rules, decoding
names bad fields, ids and names are deterministic."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from rayop.api import crd
from rayop.api import rayjob as j
from rayop.api.schema import DecodeError

REPO = Path(__file__).resolve().parents[2]


def test_committed_rayjob_crd_matches_generator() -> None:
    committed = (REPO / "manifests" / "crd-rayjob.yaml").read_text()
    assert committed == crd.render_rayjob_crd(), (
        "manifests/crd-rayjob.yaml is stale: run python -m rayop.api.crd rayjob > manifests/crd-rayjob.yaml"
    )
    assert yaml.safe_load(committed) == crd.build_rayjob_crd()


def test_names_columns_and_status_subresource() -> None:
    body = crd.build_rayjob_crd()
    assert body["metadata"]["name"] == "rayjobs.ray.k8s.io"
    assert body["spec"]["names"]["kind"] == "RayJob"
    assert body["spec"]["names"]["shortNames"] == ["rj"]
    version = body["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"] if not c.get("priority")]
    assert columns == ["Job Status", "Deployment Status", "Cluster", "Start", "End", "Age"]


def _schema() -> dict[str, Any]:
    schema: dict[str, Any] = crd.build_rayjob_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def test_schema_rules() -> None:
    root = _schema()
    spec = root["properties"]["spec"]
    assert root["required"] == ["spec"]
    assert spec["required"] == ["entrypoint"]
    assert {"rule": j.ONE_CLUSTER_RULE, "message": j.ONE_CLUSTER_MESSAGE} in spec["x-kubernetes-validations"]
    assert spec["properties"]["entrypoint"]["minLength"] == 1
    assert spec["properties"]["entrypoint"]["x-kubernetes-validations"]
    assert spec["properties"]["runtimeEnv"]["x-kubernetes-preserve-unknown-fields"] is True
    assert spec["properties"]["submissionMode"]["enum"] == ["HTTP", "K8sJob"]
    assert spec["properties"]["submissionMode"]["default"] == "HTTP"
    for rule, message in j.SPEC_RULES:
        assert {"rule": rule, "message": message} in spec["x-kubernetes-validations"]
    assert spec["properties"]["deletionPolicy"]["enum"] == ["DeleteNone", "DeleteCluster", "DeleteSelf"]
    assert spec["properties"]["suspend"]["type"] == "boolean"
    # The cluster spec is the Ray kind's own spec schema, rules included.
    ray_spec = crd.openapi_schema()["properties"]["spec"]
    cluster = spec["properties"]["rayClusterSpec"]
    assert cluster["properties"] == ray_spec["properties"]
    assert cluster["x-kubernetes-validations"] == ray_spec["x-kubernetes-validations"]


def _job(spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "ray.k8s.io/v1alpha1", "kind": "RayJob", "metadata": {"name": "j", "uid": "u"},
            "spec": spec}


def test_decode() -> None:
    job = j.RayJob.from_dict(_job({"entrypoint": "python x.py", "clusterSelector": {"a": "b"},
                                   "entrypointNumCpus": 1, "runtimeEnv": {"pip": ["requests"]}}))
    assert job.spec is not None
    assert job.spec.entrypoint_num_cpus == 1.0
    assert job.spec.runtime_env == {"pip": ["requests"]}
    with pytest.raises(DecodeError, match="spec.runtimeEnv"):
        j.RayJob.from_dict(_job({"entrypoint": "x", "runtimeEnv": "pip"}))
    with pytest.raises(DecodeError, match="spec.entrypoint"):
        j.RayJob.from_dict(_job({}))


def test_ids_are_deterministic() -> None:
    assert j.submission_id("abc", 1) == j.submission_id("abc", 1) == "rayjob-abc-1"
    assert j.submission_id("abc", 2) != j.submission_id("abc", 1)
    assert j.cluster_name("job", 3) == "job-3"


def test_samples_decode() -> None:
    samples = sorted((REPO / "manifests" / "samples" / "rayjob").glob("*.yaml"))
    assert samples
    for path in samples:
        body = yaml.safe_load(path.read_text())
        assert body["kind"] == "RayJob"
        j.RayJob.from_dict(body)
