"""The GCS clean-up finalizer of a `Ray` with gcsFaultTolerance, on the real API server, the Job controller, the
garbage collector and the node agent (sim mode: the clean-up Job's pod succeeds after a second, or exits with the
code of the head template's `sim.rayop.dev/exit-code` annotation, which the clean-up pod carries over).

Proves: a `Ray` with the block gets the finalizer, one without it does not; a deleted `Ray` stays (Terminating)
while its pods go and the clean-up Job runs, and goes once the Job succeeded (Normal Event GcsCleanedUp); a Job that
keeps failing (a Redis that does not answer) still ends with the finalizer removed, after the Job's deadline, with a
Warning Event GcsCleanupFailed; nothing of either `Ray` is left. Admission rejects a bad block with 422 naming the
field (the CRD's CEL rules) and accepts the documented address forms.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rayop.gcscleanup import FINALIZER
from rayop.objects import LABEL_CLUSTER
from rayop.runtime.kube import ApiError, KubeClient
from tests.support.cluster import LocalCluster, wait_until
from tests.support.operator import OperatorProcess, rays_path

DEADLINE = 15  # --gcs-cleanup-deadline: the Job's activeDeadlineSeconds


@pytest.fixture
def operator(cluster: LocalCluster, namespace: str, ray_crd: None, tmp_path: Path) -> Iterator[OperatorProcess]:
    op = OperatorProcess(cluster, [namespace], tmp_path / "operator.log",
                         extra_args=["--gcs-cleanup-deadline", str(DEADLINE)])
    op.start()
    yield op
    op.stop()
    # A test that failed may leave a Ray holding the finalizer, which no operator removes now: drop it, so that the
    # namespace can go.
    kube = cluster.client()
    for item in kube.get(f"/apis/ray.k8s.io/v1alpha1/namespaces/{namespace}/rays")["items"]:
        if item["metadata"].get("finalizers"):
            kube.patch(rays_path(namespace, item["metadata"]["name"]), {"metadata": {"finalizers": None}})
    log = op.log()
    assert "Traceback" not in log, log[-5000:]


def get(kube: KubeClient, path: str) -> dict[str, Any] | None:
    try:
        return dict(kube.get(path))
    except ApiError as e:
        if e.not_found:
            return None
        raise


def ray(namespace: str, name: str, annotations: dict[str, str], ft: bool = True) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "minWorkers": 1, "maxWorkers": 1, "autoScalingMode": "disabled",
        "head": {"metadata": {"annotations": annotations},
                 "spec": {"containers": [{"name": "ray-head", "image": "rayproject/ray:2.60.0"}]}},
    }
    if ft:
        spec["gcsFaultTolerance"] = {"redisAddress": "redis.nowhere.svc.cluster.local:6379",
                                     "redisPassword": {"secretKeyRef": {"name": "redis-auth", "key": "password"}}}
    return {"apiVersion": "ray.k8s.io/v1alpha1", "kind": "Ray",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def ready(kube: KubeClient, namespace: str, name: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        r = get(kube, rays_path(namespace, name))
        ok = r and any(c["type"] == "Ready" and c["status"] == "True"
                       for c in (r.get("status") or {}).get("conditions") or [])
        return r if ok else None

    result: dict[str, Any] = wait_until(check, 90, 0.3, message=f"Ray {name} Ready")
    return result


def events(kube: KubeClient, namespace: str, name: str) -> list[tuple[str, str, str]]:
    items = kube.get(f"/api/v1/namespaces/{namespace}/events", fieldSelector=f"involvedObject.name={name}")["items"]
    return [(e["type"], e["reason"], e.get("message", "")) for e in items]


def cluster_objects(kube: KubeClient, namespace: str, name: str, path: str) -> list[dict[str, Any]]:
    return list(kube.get(f"{path}/namespaces/{namespace}/{'pods' if 'batch' not in path else 'jobs'}",
                         labelSelector=f"{LABEL_CLUSTER}={name}")["items"])


def test_only_a_ray_with_the_block_gets_the_finalizer(kube: KubeClient, namespace: str,
                                                      operator: OperatorProcess) -> None:
    kube.create(rays_path(namespace), ray(namespace, "plain", {}, ft=False))
    kube.create(rays_path(namespace), ray(namespace, "ft", {}))
    ready(kube, namespace, "plain")
    wait_until(lambda: FINALIZER in (get(kube, rays_path(namespace, "ft")) or {})["metadata"].get("finalizers", []),
               60, 0.3, message="the finalizer on the Ray with gcsFaultTolerance")
    assert not (get(kube, rays_path(namespace, "plain")) or {})["metadata"].get("finalizers")
    for name in ("plain", "ft"):
        kube.delete(rays_path(namespace, name))
    for name in ("plain", "ft"):
        wait_until(lambda: get(kube, rays_path(namespace, name)) is None, 90, 0.3, message=f"{name} gone")
    assert not [e for e in events(kube, namespace, "plain") if e[1].startswith("Gcs")]


def test_deletion_waits_for_the_cleanup_job_and_its_success_removes_the_finalizer(
        kube: KubeClient, namespace: str, operator: OperatorProcess) -> None:
    name = "ok"
    # Every container of the head (and so of the clean-up pod) starts 3 s after it is first seen.
    kube.create(rays_path(namespace), ray(namespace, name, {"sim.rayop.dev/start-delay-seconds": "3"}))
    ready(kube, namespace, name)
    wait_until(lambda: FINALIZER in (get(kube, rays_path(namespace, name)) or {})["metadata"].get("finalizers", []),
               60, 0.3, message="the finalizer")
    kube.delete(rays_path(namespace, name))
    # The Ray stays, Terminating, while its pods go and then while the clean-up Job runs.
    seen: list[tuple[int, int]] = []

    def job_while_terminating() -> dict[str, Any] | None:
        r = get(kube, rays_path(namespace, name))
        assert r is not None, "the Ray went before its clean-up Job existed"
        assert r["metadata"].get("deletionTimestamp")
        # The Job first, then the pods: pods listed after the Job was seen existed while it did (read the other way
        # round, pods gone between the two reads and a Job created in that gap would look like an overlap).
        job = get(kube, f"/apis/batch/v1/namespaces/{namespace}/jobs/{name}-gcs-cleanup")
        pods = [p for p in cluster_objects(kube, namespace, name, "/api/v1")
                if p["metadata"]["labels"].get("ray.k8s.io/node-kind") in ("head", "worker")]
        seen.append((len(pods), job is not None))
        return job

    job = wait_until(job_while_terminating, 90, 0.2, message="the clean-up Job")
    # The Job was created only once no head or worker pod was left (no head writes to Redis after the clean-up).
    assert all(pods == 0 for pods, has_job in seen if has_job)
    assert job["spec"]["activeDeadlineSeconds"] == DEADLINE
    env = {e["name"]: e.get("valueFrom") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["RAY_REDIS_PASSWORD"] == {"secretKeyRef": {"name": "redis-auth", "key": "password"}}
    assert get(kube, rays_path(namespace, name)) is not None  # still held by the finalizer while the Job runs
    t0 = time.monotonic()
    wait_until(lambda: get(kube, rays_path(namespace, name)) is None, 90, 0.3, message="the Ray gone")
    print(f"clean-up Job seen -> Ray gone: {time.monotonic() - t0:.1f}s")
    reasons = wait_until(lambda: {r for _, r, _ in events(kube, namespace, name)} >= {"GcsCleanup", "GcsCleanedUp"}
                         and events(kube, namespace, name), 30, 0.5, message="the clean-up Events")
    assert not [e for e in reasons if e[1] == "GcsCleanupFailed"]
    # The garbage collector removes the Job (owned by the Ray) once the Ray is gone.
    wait_until(lambda: not cluster_objects(kube, namespace, name, "/apis/batch/v1"), 60, 0.5,
               message="the clean-up Job gone with the Ray")


def test_a_cleanup_job_that_keeps_failing_still_ends_with_the_finalizer_removed(
        kube: KubeClient, namespace: str, operator: OperatorProcess) -> None:
    name = "unreachable"
    # The clean-up pod exits 1 each time, as Ray's helper does when Redis does not answer; the head never exits.
    kube.create(rays_path(namespace), ray(namespace, name, {"sim.rayop.dev/exit-code": "1"}))
    ready(kube, namespace, name)
    wait_until(lambda: FINALIZER in (get(kube, rays_path(namespace, name)) or {})["metadata"].get("finalizers", []),
               60, 0.3, message="the finalizer")
    t0 = time.monotonic()
    kube.delete(rays_path(namespace, name))
    job = wait_until(lambda: get(kube, f"/apis/batch/v1/namespaces/{namespace}/jobs/{name}-gcs-cleanup"), 90, 0.3,
                     message="the clean-up Job")
    wait_until(lambda: (j := get(kube, f"/apis/batch/v1/namespaces/{namespace}/jobs/{name}-gcs-cleanup"))
               and (j.get("status") or {}).get("failed"), 60, 0.3, message="a failed clean-up pod")
    assert get(kube, rays_path(namespace, name)) is not None  # a failed pod is retried: the Ray still waits
    wait_until(lambda: get(kube, rays_path(namespace, name)) is None, DEADLINE + 120, 0.5,
               message="the Ray gone after the clean-up's deadline")
    print(f"delete -> Ray gone with a failing clean-up: {time.monotonic() - t0:.1f}s (Job deadline {DEADLINE}s)")
    failed = wait_until(lambda: [e for e in events(kube, namespace, name) if e[1] == "GcsCleanupFailed"], 30, 0.5,
                        message="the GcsCleanupFailed Warning")
    assert failed[0][0] == "Warning" and "may remain" in failed[0][2] and "redis.nowhere" in failed[0][2], failed
    print(f"Warning GcsCleanupFailed: {failed[0][2]}")
    assert job["metadata"]["ownerReferences"][0]["blockOwnerDeletion"] is False


BAD_BLOCKS = [
    ({"redisAddress": "redis"}, "spec.gcsFaultTolerance.redisAddress"),
    ({"redisAddress": "redis://r:6379"}, "spec.gcsFaultTolerance.redisAddress"),
    ({"redisAddress": "r:1", "redisPassword": {"secretKeyRef": {"name": "Bad_Name", "key": "k"}}},
     "spec.gcsFaultTolerance.redisPassword.secretKeyRef.name"),
    ({"redisAddress": "r:1", "redisPassword": {"secretKeyRef": {"name": "s", "key": "a/b"}}},
     "spec.gcsFaultTolerance.redisPassword.secretKeyRef.key"),
    ({"redisAddress": "r:1", "redisPassword": {"secretKeyRef": {"name": "s"}}},
     "spec.gcsFaultTolerance.redisPassword.secretKeyRef.key"),
    ({"redisAddress": "r:1", "externalStorageNamespace": "two words"},
     "spec.gcsFaultTolerance.externalStorageNamespace"),
]


def test_admission_rejects_a_bad_block_naming_the_field(kube: KubeClient, namespace: str, ray_crd: None) -> None:
    for ft, field in BAD_BLOCKS:
        obj = ray(namespace, "bad", {})
        obj["spec"]["gcsFaultTolerance"] = ft
        with pytest.raises(ApiError) as e:
            kube.create(rays_path(namespace), obj)
        assert e.value.status == 422 and field in e.value.message, (ft, e.value.message)


def test_admission_accepts_the_documented_forms(kube: KubeClient, namespace: str, ray_crd: None) -> None:
    for i, address in enumerate(["redis.redis.svc.cluster.local:6379", "10.0.0.7:6380", "[fd00::1]:6379"]):
        obj = ray(namespace, f"ok{i}", {})
        obj["spec"]["gcsFaultTolerance"] = {"redisAddress": address, "externalStorageNamespace": "team-a:ray.1"}
        kube.create(rays_path(namespace), obj, dryRun="All")
