"""The `RayJob` CRD against the real API server: the samples apply, bad objects are rejected with 422 naming the
field, unknown fields are pruned, `kubectl get rayjob` (and `rj`) shows the printer columns."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from rayop.api import crd
from rayop.api import rayjob as j
from rayop.api.types import GROUP, VERSION
from rayop.runtime.kube import ApiError, KubeClient
from tests.support.cluster import LocalCluster
from tests.support.operator import install_rayjob_crd

SAMPLES = Path(__file__).resolve().parents[2] / "manifests" / "samples" / "rayjob"


@pytest.fixture(scope="module")
def installed(cluster: LocalCluster) -> None:
    install_rayjob_crd(cluster.client())


pytestmark = pytest.mark.usefixtures("installed")


def jobs(namespace: str) -> str:
    return f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{j.PLURAL}"


def new_job(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": j.KIND, "metadata": {"name": name}, "spec": spec}


def create(kube: KubeClient, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
    body = copy.deepcopy(body)
    body["metadata"]["namespace"] = namespace
    created: dict[str, Any] = kube.create(jobs(namespace), body)
    return created


@pytest.fixture(scope="module")
def rejecting_namespace(cluster: LocalCluster, installed: None) -> Iterator[str]:
    kube = cluster.client()
    name = "t-crd-rayjob-rejects"
    try:
        kube.create("/api/v1/namespaces", {"metadata": {"name": name, "labels": {"rayop.dev/test": "true"}}})
    except ApiError as e:
        if not e.already_exists:
            raise
    yield name
    kube.delete(f"/api/v1/namespaces/{name}")


SELECTOR = {"clusterSelector": {"team": "ml"}}
CLUSTER = {"rayClusterSpec": {"maxWorkers": 1}}
BAD = [
    ("no-entrypoint", {**SELECTOR}, "spec.entrypoint"),
    ("empty-entrypoint", {"entrypoint": "", **SELECTOR}, "spec.entrypoint"),
    ("blank-entrypoint", {"entrypoint": "  \n ", **SELECTOR}, "spec.entrypoint"),
    ("both-clusters", {"entrypoint": "x", **SELECTOR, **CLUSTER}, "exactly one of rayClusterSpec and clusterSelector"),
    ("neither-cluster", {"entrypoint": "x"}, "exactly one of rayClusterSpec and clusterSelector"),
    ("empty-selector", {"entrypoint": "x", "clusterSelector": {}}, "spec.clusterSelector"),
    ("runtime-env-not-object", {"entrypoint": "x", "runtimeEnv": "pip", **SELECTOR}, "spec.runtimeEnv"),
    ("negative-cpus", {"entrypoint": "x", "entrypointNumCpus": -1, **SELECTOR}, "spec.entrypointNumCpus"),
    ("negative-resource", {"entrypoint": "x", "entrypointResources": {"a": -1}, **SELECTOR},
     "spec.entrypointResources"),
    ("unknown-mode", {"entrypoint": "x", "submissionMode": "Carrier", **SELECTOR}, "spec.submissionMode"),
    ("negative-ttl", {"entrypoint": "x", "ttlSecondsAfterFinished": -1, **SELECTOR}, "spec.ttlSecondsAfterFinished"),
    ("deadline-zero", {"entrypoint": "x", "activeDeadlineSeconds": 0, **SELECTOR}, "spec.activeDeadlineSeconds"),
    ("backoff-negative", {"entrypoint": "x", "backoffLimit": -1, **SELECTOR}, "spec.backoffLimit"),
    ("backoff-too-high", {"entrypoint": "x", "backoffLimit": 101, **SELECTOR}, "spec.backoffLimit"),
    ("unknown-policy", {"entrypoint": "x", "deletionPolicy": "DeleteWorld", **CLUSTER}, "spec.deletionPolicy"),
    ("policy-and-shutdown", {"entrypoint": "x", "deletionPolicy": "DeleteSelf", "shutdownAfterJobFinishes": True,
                             **CLUSTER}, "deletionPolicy and spec.shutdownAfterJobFinishes"),
    ("delete-selected-cluster", {"entrypoint": "x", "deletionPolicy": "DeleteCluster", **SELECTOR},
     "DeleteCluster needs rayClusterSpec"),
    ("suspend-not-bool", {"entrypoint": "x", "suspend": "yes", **SELECTOR}, "spec.suspend"),
    ("bad-cluster-spec", {"entrypoint": "x", "rayClusterSpec": {"minWorkers": 3, "maxWorkers": 1}},
     "spec.rayClusterSpec.minWorkers"),
]


@pytest.mark.parametrize("spec, field", [(s, f) for _, s, f in BAD], ids=[i for i, _, _ in BAD])
def test_bad_objects_are_rejected_naming_the_field(
    kube: KubeClient, rejecting_namespace: str, spec: dict[str, Any], field: str
) -> None:
    with pytest.raises(ApiError) as e:
        create(kube, rejecting_namespace, new_job("bad", spec))
    assert e.value.status == 422, e.value
    assert field in e.value.message, e.value.message


@pytest.mark.parametrize("name", ["n" * 41, "9-starts-with-a-digit"])
def test_names_that_would_break_the_cluster_name_are_rejected(
    kube: KubeClient, rejecting_namespace: str, name: str
) -> None:
    with pytest.raises(ApiError) as e:
        create(kube, rejecting_namespace, new_job(name, {"entrypoint": "x", **SELECTOR}))
    assert e.value.status == 422
    assert "metadata.name" in e.value.message


def test_good_objects_are_accepted_defaulted_and_pruned(kube: KubeClient, namespace: str) -> None:
    body = new_job("n" * 40, {"entrypoint": "python x.py", "bogus": 1, **CLUSTER,
                              "runtimeEnv": {"pip": ["requests"], "env_vars": {"A": "1"}}})
    created = create(kube, namespace, body)
    assert "bogus" not in created["spec"]
    assert created["spec"]["submissionMode"] == "HTTP"
    assert created["spec"]["runtimeEnv"] == {"pip": ["requests"], "env_vars": {"A": "1"}}
    j.RayJob.from_dict(created)
    policy = create(kube, namespace, new_job("policy", {"entrypoint": "x", "deletionPolicy": "DeleteSelf",
                                                        "suspend": True, "shutdownAfterJobFinishes": False,
                                                        **SELECTOR}))
    assert (policy["spec"]["deletionPolicy"], policy["spec"]["suspend"]) == ("DeleteSelf", True)


def test_samples_apply_and_kubectl_shows_the_columns(cluster: LocalCluster, namespace: str) -> None:
    for path in sorted(SAMPLES.glob("*.yaml")):
        cluster.kubectl("apply", "-n", namespace, "-f", str(path))
    out = cluster.kubectl("get", "rj", "-n", namespace).stdout
    assert out.splitlines()[0].split() == ["NAME", "JOB", "STATUS", "DEPLOYMENT", "STATUS", "CLUSTER", "START",
                                           "END", "AGE"]
    assert {line.split()[0] for line in out.splitlines()[1:]} == {"every-node", "logs-in-kubectl", "on-existing-cluster"}
    assert crd.build_rayjob_crd()["metadata"]["name"] == j.CRD_NAME
