"""The `Ray` CRD against the real API server: samples apply, bad objects are rejected naming the field, unknown
fields are pruned, the status subresource and the printer columns work."""

from __future__ import annotations

import copy
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from rayop.api import crd
from rayop.api import types as t
from rayop.api.convert import effective_cluster
from rayop.runtime.kube import ApiError, KubeClient
from tests.support.cluster import LocalCluster, wait_until

SAMPLES = Path(__file__).resolve().parents[2] / "manifests" / "samples"
CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"


def _established(kube: KubeClient) -> bool:
    body = kube.get(f"{CRDS}/{crd.CRD_NAME}")
    conditions = {c["type"]: c["status"] for c in (body.get("status") or {}).get("conditions") or []}
    return conditions.get("Established") == "True" and conditions.get("NamesAccepted") == "True"


@pytest.fixture(scope="module")
def installed(cluster: LocalCluster) -> None:
    """Create or replace the CRD with the generated one and wait until it is served."""
    kube = cluster.client()
    wanted = crd.build_crd()
    try:
        current = kube.get(f"{CRDS}/{crd.CRD_NAME}")
    except ApiError as e:
        if not e.not_found:
            raise
        kube.create(CRDS, wanted)
    else:
        body = copy.deepcopy(wanted)
        body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        kube.replace(f"{CRDS}/{crd.CRD_NAME}", body)
    wait_until(lambda: _established(kube), 60, message="the Ray CRD to be established")

    def served() -> bool:
        try:
            kube.get(f"/apis/{t.GROUP}/{t.VERSION}/{t.PLURAL}")
            return True
        except ApiError as e:
            if e.status in (404, 429, 503):  # 429: the new resource's storage is still initializing
                return False
            raise

    wait_until(served, 60, message="the Ray resource to be served")


def rays(namespace: str) -> str:
    return f"/apis/{t.GROUP}/{t.VERSION}/namespaces/{namespace}/{t.PLURAL}"


def new_ray(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": t.API_VERSION, "kind": t.KIND, "metadata": {"name": name}, "spec": spec}


def create(kube: KubeClient, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
    body = copy.deepcopy(body)
    body["metadata"]["namespace"] = namespace
    created: dict[str, Any] = kube.create(rays(namespace), body)
    return created


pytestmark = pytest.mark.usefixtures("installed")


@pytest.fixture(scope="module")
def rejecting_namespace(cluster: LocalCluster, installed: None) -> Iterator[str]:
    """One namespace for the tests whose objects are all rejected (nothing is ever created in it)."""
    kube = cluster.client()
    name = f"t-crd-rejects-{uuid.uuid4().hex[:6]}"
    kube.create("/api/v1/namespaces", {"metadata": {"name": name, "labels": {"rayop.dev/test": "true"}}})
    yield name
    kube.delete(f"/api/v1/namespaces/{name}")


@pytest.mark.parametrize("sample", sorted(p.name for p in SAMPLES.glob("*.yaml")))
def test_every_sample_applies(kube: KubeClient, namespace: str, sample: str) -> None:
    body = yaml.safe_load((SAMPLES / sample).read_text())
    created = create(kube, namespace, body)
    assert created["metadata"]["uid"]
    # What the API server stored converts to the same cluster as the file (defaults do not change its meaning).
    stored = kube.get(f"{rays(namespace)}/{body['metadata']['name']}")
    local = effective_cluster({**body, "metadata": {**body["metadata"], "namespace": namespace}})
    assert effective_cluster(stored).cluster == local.cluster


def test_samples_apply_with_kubectl(cluster: LocalCluster, namespace: str) -> None:
    for sample in ("static.yaml", "autoscaling.yaml", "worker-groups.yaml", "gpu.yaml"):
        cluster.kubectl("apply", "-n", namespace, "-f", str(SAMPLES / sample))
    out = cluster.kubectl("get", "rays", "-n", namespace).stdout
    header = out.splitlines()[0].split()
    assert header == ["NAME", "DESIRED", "READY", "HEAD", "LAUNCHED", "AGE"]
    assert {line.split()[0] for line in out.splitlines()[1:]} == {"static", "autoscaling", "groups", "gpu"}


BAD = [
    ("negative-min", {"minWorkers": -1}, "spec.minWorkers"),
    ("negative-max", {"maxWorkers": -2}, "spec.maxWorkers"),
    ("negative-initial", {"initialWorkers": -1}, "spec.initialWorkers"),
    ("negative-idle", {"idleTimeoutMinutes": -5}, "spec.idleTimeoutMinutes"),
    ("min-above-max", {"minWorkers": 3, "maxWorkers": 2}, "spec.minWorkers"),
    ("initial-below-min", {"minWorkers": 2, "maxWorkers": 4, "initialWorkers": 1}, "spec.initialWorkers"),
    ("initial-above-max", {"minWorkers": 0, "maxWorkers": 4, "initialWorkers": 5}, "spec.initialWorkers"),
    ("utilization-zero", {"targetUtilization": 0}, "spec.targetUtilization"),
    ("utilization-above-100", {"targetUtilization": 101}, "spec.targetUtilization"),
    ("unknown-mode", {"autoScalingMode": "turbo"}, "spec.autoScalingMode"),
    ("configuration-and-min", {"configuration": "max_workers: 2", "minWorkers": 1}, "spec.minWorkers"),
    ("configuration-and-head", {"configuration": "max_workers: 2", "head": {"spec": {}}}, "spec.head"),
    ("configuration-and-groups", {"configuration": "max_workers: 2", "workerGroups": []}, "spec.workerGroups"),
    (
        "configuration-and-mode",
        {"configuration": "max_workers: 2", "autoScalingMode": "default"},
        "spec.autoScalingMode",
    ),
    ("groups-and-worker", {"workerGroups": [{"name": "a"}], "worker": {"spec": {}}}, "spec.worker"),
    ("groups-and-max", {"workerGroups": [{"name": "a"}], "maxWorkers": 3}, "spec.maxWorkers"),
    (
        "group-min-above-max",
        {"workerGroups": [{"name": "a", "minWorkers": 3, "maxWorkers": 1}]},
        "spec.workerGroups[0].minWorkers",
    ),
    (
        "group-initial-above-max",
        {"workerGroups": [{"name": "a", "maxWorkers": 1, "initialWorkers": 2}]},
        "spec.workerGroups[0].initialWorkers",
    ),
    ("group-named-head", {"workerGroups": [{"name": "head"}]}, "spec.workerGroups[0].name"),
    ("group-bad-name", {"workerGroups": [{"name": "GPU_group"}]}, "spec.workerGroups[0].name"),
    ("group-duplicate", {"workerGroups": [{"name": "a"}, {"name": "a"}]}, "spec.workerGroups[1]"),
    ("managed-start-param", {"headRayStartParams": {"address": "1.2.3.4:6379"}}, "spec.headRayStartParams"),
    ("negative-desired", {"desiredWorkers": {"worker": -1}}, "spec.desiredWorkers"),
]


@pytest.mark.parametrize("spec, field", [(s, f) for _, s, f in BAD], ids=[i for i, _, _ in BAD])
def test_bad_objects_are_rejected_naming_the_field(
    kube: KubeClient, rejecting_namespace: str, spec: dict[str, Any], field: str
) -> None:
    with pytest.raises(ApiError) as e:
        create(kube, rejecting_namespace, new_ray("bad", spec))
    assert e.value.status == 422, e.value
    assert field in e.value.message, e.value.message


@pytest.mark.parametrize(
    "name, spec",
    [
        ("h" * 53, {"workerGroups": []}),  # <name>-head-<5> would be 64 characters
        ("w" * 51, {}),  # <name>-worker-<5> would be 64 characters
        ("g" * 45, {"workerGroups": [{"name": "x" * 12}]}),  # <name>-<group>-<5> would be 64 characters
        ("9-starts-with-a-digit", {}),
    ],
    ids=["head-pod", "simple-worker-pod", "group-pod", "dns-1035"],
)
def test_names_that_would_break_child_names_are_rejected(
    kube: KubeClient, rejecting_namespace: str, name: str, spec: dict[str, Any]
) -> None:
    with pytest.raises(ApiError) as e:
        create(kube, rejecting_namespace, new_ray(name, spec))
    assert e.value.status == 422
    assert "metadata.name" in e.value.message


def test_longest_names_are_accepted(kube: KubeClient, namespace: str) -> None:
    create(kube, namespace, new_ray("h" * 52, {"workerGroups": [{"name": "g"}]}))
    create(kube, namespace, new_ray("w" * 50, {}))
    effective_cluster(kube.get(f"{rays(namespace)}/{'w' * 50}"))


def test_unknown_fields_are_pruned_but_pod_templates_kept(kube: KubeClient, namespace: str) -> None:
    body = new_ray(
        "pruned",
        {
            "maxWorkers": 2,
            "bogus": 1,
            "head": {
                "spec": {
                    "containers": [{"name": "ray", "image": "img", "imagePullPolicy": "Sometimes"}],
                    "madeUp": True,
                }
            },
            "workerRayStartParams": {"num-cpus": 2},
        },
    )
    body["bogusTop"] = {"a": 1}
    created = create(kube, namespace, body)
    assert "bogusTop" not in created
    assert "bogus" not in created["spec"]
    # Pod templates are the operator's to judge: an invalid imagePullPolicy and unknown pod fields pass through.
    assert created["spec"]["head"]["spec"]["madeUp"] is True
    assert created["spec"]["head"]["spec"]["containers"][0]["imagePullPolicy"] == "Sometimes"
    assert created["spec"]["workerRayStartParams"] == {"num-cpus": 2}

    groups = create(kube, namespace, new_ray("groups", {"workerGroups": [{"name": "a", "extra": "x"}]}))
    assert groups["spec"]["workerGroups"] == [{"name": "a", "minWorkers": 0}]  # pruned, and defaulted


def test_status_subresource_and_printer_columns(cluster: LocalCluster, kube: KubeClient, namespace: str) -> None:
    create(kube, namespace, new_ray("demo", {"maxWorkers": 3, "initialWorkers": 2}))
    path = f"{rays(namespace)}/demo"
    # Status in a write to the main resource is ignored.
    kube.patch(path, {"status": {"desiredWorkers": 9}})
    assert "status" not in kube.get(path) or "desiredWorkers" not in kube.get(path)["status"]
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    status = {
        "desiredWorkers": 2,
        "head": {"replicas": 1, "readyReplicas": 1},
        "worker": {"replicas": 2, "readyReplicas": 1},
        "workerGroups": [{"name": "worker", "desiredWorkers": 2, "replicas": 2, "readyReplicas": 1}],
        "conditions": [
            {
                "type": "HeadReady",
                "status": "True",
                "reason": "PodReady",
                "lastTransitionTime": now,
                "observedGeneration": 1,
            },
            {
                "type": "SuccessfulLaunch",
                "status": "False",
                "reason": "Waiting",
                "message": "1/2 workers",
                "lastTransitionTime": now,
            },
        ],
        "observedGeneration": 1,
        "startTime": now,
        "lastReconcileTime": now,
        "headPodName": "demo-head-abcde",
        "unknownStatusField": 1,
    }
    updated = kube.patch(f"{path}/status", {"status": status})
    assert "unknownStatusField" not in updated["status"]
    assert t.RayStatus.from_dict(updated["status"]).desired_workers == 2
    out = cluster.kubectl("get", "rays", "demo", "-n", namespace, "--no-headers").stdout.split()
    assert out[:5] == ["demo", "2", "1", "True", "False"]
    wide = cluster.kubectl("get", "rays", "demo", "-n", namespace, "-o", "wide").stdout
    assert "demo-head-abcde" in wide
    # A bad status is rejected too.
    with pytest.raises(ApiError) as e:
        kube.patch(f"{path}/status", {"status": {"conditions": [{"type": "Ready", "status": "Maybe"}]}})
    assert e.value.status == 422 and "status.conditions[0].status" in e.value.message


def test_short_name_and_category(cluster: LocalCluster, kube: KubeClient, namespace: str) -> None:
    create(kube, namespace, new_ray("short", {}))
    for resource in (t.SHORT_NAMES[0], t.CATEGORIES[1], "ray", "rays.ray.k8s.io"):
        out = cluster.kubectl("get", resource, "-n", namespace, "-o", "name").stdout
        assert "short" in out, (resource, out)


def test_autoscaler_can_patch_desired_workers(kube: KubeClient, namespace: str) -> None:
    created = create(kube, namespace, new_ray("scaled", {"minWorkers": 0, "maxWorkers": 5}))
    path = f"{rays(namespace)}/scaled"
    patch = {
        "metadata": {"resourceVersion": created["metadata"]["resourceVersion"]},
        "spec": {"desiredWorkers": {"worker": 4}, "workersToDelete": ["scaled-worker-abcde"]},
    }
    kube.patch(path, patch)
    cluster = effective_cluster(kube.get(path)).cluster
    assert cluster.worker_groups[0].desired_workers == 4
    assert cluster.workers_to_delete == ("scaled-worker-abcde",)
    # A stale resourceVersion conflicts instead of overwriting.
    with pytest.raises(ApiError) as e:
        kube.patch(path, patch)
    assert e.value.status == 409


def test_configuration_with_shared_fields_is_accepted(kube: KubeClient, namespace: str) -> None:
    create(
        kube,
        namespace,
        new_ray(
            "cfg",
            {"configuration": "max_workers: 2\n", "image": "rayproject/ray:2.60.0", "desiredWorkers": {"worker": 1}},
        ),
    )
    # Malformed YAML is the operator's to report, not the API server's.
    create(kube, namespace, new_ray("broken", {"configuration": "max_workers: [2\n"}))
