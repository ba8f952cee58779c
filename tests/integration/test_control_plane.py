"""Smoke tests proving the local control plane is a real Kubernetes: scheduler, controllers, admission, watch."""

from __future__ import annotations

import datetime
import threading
import uuid
from typing import Any

import pytest

from rayop.runtime.kube import ApiError, KubeClient
from tests.support.cluster import LocalCluster, wait_until

PAUSE = {"name": "main", "image": "registry.k8s.io/pause:3.10"}


def pod(name: str, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"metadata": {"name": name}, "spec": {"containers": [dict(PAUSE)]}}
    body["metadata"].update(extra.pop("metadata", {}))
    body["spec"].update(extra)
    return body


def condition(obj: dict[str, Any], kind: str) -> str | None:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c["type"] == kind:
            return str(c["status"])
    return None


def test_server_version_is_stamped(cluster: LocalCluster) -> None:
    out = cluster.kubectl("version", "-o", "json").stdout
    assert '"gitVersion": "v1.36.3"' in out


def test_pod_runs_through_scheduler_and_node_agent(kube: KubeClient, namespace: str) -> None:
    kube.create(f"/api/v1/namespaces/{namespace}/pods", pod("web"))
    path = f"/api/v1/namespaces/{namespace}/pods/web"
    running = wait_until(
        lambda: (p := kube.get(path))["status"].get("phase") == "Running" and condition(p, "Ready") == "True" and p,
        60, message="pod Running and Ready",
    )
    assert running["spec"]["nodeName"].startswith("rayop-node-")  # bound by kube-scheduler
    assert condition(running, "PodScheduled") == "True"
    assert running["status"]["podIP"].startswith("10.244.")
    assert running["status"]["containerStatuses"][0]["state"]["running"]["startedAt"]

    kube.delete(path)
    wait_until(lambda: _missing(kube, path), 30, message="pod finalized by the node agent")


def test_job_completes(kube: KubeClient, namespace: str) -> None:
    job = {
        "metadata": {"name": "once"},
        "spec": {"backoffLimit": 0, "template": {"spec": {"restartPolicy": "Never", "containers": [PAUSE]}}},
    }
    kube.create(f"/apis/batch/v1/namespaces/{namespace}/jobs", job)
    done = wait_until(
        lambda: (j := kube.get(f"/apis/batch/v1/namespaces/{namespace}/jobs/once"))["status"].get("succeeded") and j,
        60, message="job succeeded",
    )
    assert condition(done, "Complete") == "True"


def test_failing_job_fails(kube: KubeClient, namespace: str) -> None:
    job = {
        "metadata": {"name": "doomed"},
        "spec": {"backoffLimit": 0, "template": {
            "metadata": {"annotations": {"sim.rayop.dev/exit-code": "3"}},
            "spec": {"restartPolicy": "Never", "containers": [PAUSE]}}},
    }
    kube.create(f"/apis/batch/v1/namespaces/{namespace}/jobs", job)
    failed = wait_until(
        lambda: condition(j := kube.get(f"/apis/batch/v1/namespaces/{namespace}/jobs/doomed"), "Failed") == "True"
        and j, 60, message="job failed",
    )
    assert failed["status"].get("failed") == 1
    pods = kube.get(f"/api/v1/namespaces/{namespace}/pods", labelSelector="job-name=doomed")["items"]
    assert pods[0]["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 3


def test_garbage_collector_deletes_dependents(kube: KubeClient, namespace: str) -> None:
    owner = kube.create(f"/api/v1/namespaces/{namespace}/configmaps", {"metadata": {"name": "owner"}})
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner["metadata"]["uid"],
           "controller": True, "blockOwnerDeletion": True}
    kube.create(f"/api/v1/namespaces/{namespace}/configmaps",
                {"metadata": {"name": "dependent", "ownerReferences": [ref]}})
    kube.create(f"/api/v1/namespaces/{namespace}/pods", pod("dependent-pod", metadata={"ownerReferences": [ref]}))
    kube.delete(f"/api/v1/namespaces/{namespace}/configmaps/owner")
    wait_until(lambda: _missing(kube, f"/api/v1/namespaces/{namespace}/configmaps/dependent"), 60,
               message="dependent ConfigMap collected")
    wait_until(lambda: _missing(kube, f"/api/v1/namespaces/{namespace}/pods/dependent-pod"), 60,
               message="dependent pod collected")


@pytest.fixture(scope="module")
def widget_crd(cluster: LocalCluster) -> Any:
    kube = cluster.client()
    group = "smoke.rayop.dev"
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": f"widgets.{group}"},
        "spec": {
            "group": group, "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "listKind": "WidgetList"},
            "versions": [{
                "name": "v1", "served": True, "storage": True, "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {
                        "spec": {
                            "type": "object",
                            "properties": {"min": {"type": "integer"}, "max": {"type": "integer"}},
                            "x-kubernetes-validations": [
                                {"rule": "self.min <= self.max", "message": "min must not exceed max",
                                 "fieldPath": ".min"}],
                        },
                        "status": {"type": "object", "properties": {"seen": {"type": "integer"}}},
                    },
                }},
            }],
        },
    }
    try:
        kube.create("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)
    except ApiError as e:
        if not e.already_exists:
            raise
    wait_until(lambda: condition(kube.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/"
                                          f"widgets.{group}"), "Established") == "True", 30,
               message="CRD established")
    # Discovery of a new CRD can lag its Established condition by a moment.
    wait_until(lambda: _served(kube, f"/apis/{group}/v1"), 30, message="CRD served")
    return group


def test_crd_status_subresource_and_cel_rule(kube: KubeClient, namespace: str, widget_crd: str) -> None:
    base = f"/apis/{widget_crd}/v1/namespaces/{namespace}/widgets"
    with pytest.raises(ApiError) as rejected:
        kube.create(base, {"apiVersion": f"{widget_crd}/v1", "kind": "Widget", "metadata": {"name": "bad"},
                           "spec": {"min": 3, "max": 1}})
    assert rejected.value.status == 422
    assert "min must not exceed max" in rejected.value.message
    assert "spec.min" in rejected.value.message

    made = kube.create(base, {"apiVersion": f"{widget_crd}/v1", "kind": "Widget", "metadata": {"name": "good"},
                              "spec": {"min": 1, "max": 3}, "status": {"seen": 9}})
    assert "status" not in made or not made["status"]  # status is ignored on create with the subresource
    updated = kube.patch(f"{base}/good/status", {"status": {"seen": 1}})
    assert updated["status"]["seen"] == 1
    assert updated["metadata"]["generation"] == 1  # status writes do not bump the generation


def test_writes_answered_with_metadata_only(kube: KubeClient, namespace: str, widget_crd: str) -> None:
    """The operator's creates and patches ask for the written object's metadata only (PartialObjectMetadata): the
    API server honours it for core kinds and for a custom resource's status subresource, and the write itself is
    whole."""
    data = {"big": "x" * 20000}
    made = kube.create(f"/api/v1/namespaces/{namespace}/configmaps",
                       {"metadata": {"generateName": "meta-"}, "data": data}, metadata_only=True)
    assert made["kind"] == "PartialObjectMetadata" and "data" not in made
    name = made["metadata"]["name"]
    assert name.startswith("meta-") and made["metadata"]["uid"]
    patched = kube.patch(f"/api/v1/namespaces/{namespace}/configmaps/{name}", {"data": {"more": "y"}},
                         metadata_only=True)
    assert patched["kind"] == "PartialObjectMetadata" and "data" not in patched
    assert kube.get(f"/api/v1/namespaces/{namespace}/configmaps/{name}")["data"] == {**data, "more": "y"}
    base = f"/apis/{widget_crd}/v1/namespaces/{namespace}/widgets"
    kube.create(base, {"apiVersion": f"{widget_crd}/v1", "kind": "Widget", "metadata": {"name": "meta"},
                       "spec": {"min": 1, "max": 2}}, metadata_only=True)
    status = kube.patch(f"{base}/meta/status", {"status": {"seen": 4}}, metadata_only=True)
    assert status["kind"] == "PartialObjectMetadata" and "status" not in status
    assert kube.get(f"{base}/meta")["status"] == {"seen": 4}
    # Without the option: the whole object, as before.
    assert kube.patch(f"{base}/meta/status", {"status": {"seen": 5}})["status"] == {"seen": 5}


def test_lease_created_and_renewed(kube: KubeClient, namespace: str) -> None:
    leases = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    lease = kube.create(leases, {"metadata": {"name": "smoke"}, "spec": {
        "holderIdentity": "me", "leaseDurationSeconds": 15, "acquireTime": stamp, "renewTime": stamp}})
    lease["spec"]["renewTime"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    renewed = kube.replace(f"{leases}/smoke", lease)
    assert renewed["spec"]["renewTime"] > stamp
    # A write with a stale resourceVersion is refused: that is what makes a Lease a lock.
    with pytest.raises(ApiError) as stale:
        kube.replace(f"{leases}/smoke", lease)
    assert stale.value.status == 409

    # The node agent renews its nodes' leases as a kubelet does.
    node_lease = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/rayop-node-1"
    first = kube.get(node_lease)["spec"]["renewTime"]
    wait_until(lambda: kube.get(node_lease)["spec"]["renewTime"] != first, 30, message="node lease renewed")


def test_watch_resumes_then_gets_410_after_compaction(cluster: LocalCluster, kube: KubeClient,
                                                      namespace: str) -> None:
    # PodTemplates are served without the watch cache (see hack/cluster/localcluster.py), so etcd answers.
    base = f"/api/v1/namespaces/{namespace}/podtemplates"
    template = {"metadata": {"name": "t0"}, "template": {"spec": {"containers": [PAUSE]}}}
    first = kube.create(base, template)
    rv = first["metadata"]["resourceVersion"]
    for i in range(1, 4):
        kube.create(base, {**template, "metadata": {"name": f"t{i}"}})
    names = [e["object"]["metadata"]["name"] for e in kube.watch(base, {"resourceVersion": rv,
                                                                         "timeoutSeconds": 2}, timeout=10)]
    assert names == ["t1", "t2", "t3"]

    cluster.compact_etcd()
    with pytest.raises(ApiError) as gone:
        for _ in kube.watch(base, {"resourceVersion": rv, "timeoutSeconds": 5}, timeout=10):
            pass
    assert gone.value.status == 410


def test_watch_on_cached_resource_sees_events_in_order(kube: KubeClient, namespace: str) -> None:
    base = f"/api/v1/namespaces/{namespace}/configmaps"
    rv = kube.get(base)["metadata"]["resourceVersion"]
    seen: list[tuple[str, str]] = []

    def watch() -> None:
        for event in kube.watch(base, {"resourceVersion": rv, "timeoutSeconds": 5}, timeout=10):
            seen.append((event["type"], event["object"]["metadata"]["name"]))
            if len(seen) == 3:
                return

    thread = threading.Thread(target=watch)
    thread.start()
    kube.create(base, {"metadata": {"name": "a"}})
    kube.patch(f"{base}/a", {"data": {"k": "v"}})
    kube.delete(f"{base}/a")
    thread.join(15)
    assert seen == [("ADDED", "a"), ("MODIFIED", "a"), ("DELETED", "a")]


def test_crashed_container_restarts(cluster: LocalCluster, kube: KubeClient, namespace: str) -> None:
    kube.create(f"/api/v1/namespaces/{namespace}/pods",
                pod("crashy", metadata={"annotations": {"sim.rayop.dev/restart-backoff-seconds": "1"}}))
    path = f"/api/v1/namespaces/{namespace}/pods/crashy"
    wait_until(lambda: condition(kube.get(path), "Ready") == "True", 60, message="pod ready")
    cluster.fault("/pods/crash", namespace=namespace, name="crashy", exitCode=137)
    after = wait_until(lambda: (p := kube.get(path))["status"]["containerStatuses"][0]["restartCount"] == 1
                       and condition(p, "Ready") == "True" and p, 30, message="container restarted")
    last = after["status"]["containerStatuses"][0]["lastState"]["terminated"]
    assert last["exitCode"] == 137


def test_failed_pod_and_never_restart(cluster: LocalCluster, kube: KubeClient, namespace: str) -> None:
    kube.create(f"/api/v1/namespaces/{namespace}/pods", pod("once", restartPolicy="Never"))
    path = f"/api/v1/namespaces/{namespace}/pods/once"
    wait_until(lambda: condition(kube.get(path), "Ready") == "True", 60, message="pod ready")
    cluster.fault("/pods/fail", namespace=namespace, name="once", reason="Evicted", message="test eviction")
    failed = wait_until(lambda: (p := kube.get(path))["status"]["phase"] == "Failed" and p, 30,
                        message="pod failed")
    assert failed["status"]["reason"] == "Evicted"


def test_node_not_ready_and_back(cluster: LocalCluster, kube: KubeClient) -> None:
    node = "/api/v1/nodes/rayop-node-2"
    try:
        cluster.fault("/nodes/ready", node="rayop-node-2", ready=False)
        wait_until(lambda: condition(kube.get(node), "Ready") == "False", 30, message="node NotReady")
        # The node lifecycle controller reacts to it like on a real cluster: the node gets the not-ready taint.
        wait_until(lambda: any(t["key"] == "node.kubernetes.io/not-ready"
                               for t in kube.get(node)["spec"].get("taints") or []), 60,
                   message="not-ready taint")
    finally:
        cluster.fault("/nodes/ready", node="rayop-node-2", ready=True)
    wait_until(lambda: condition(kube.get(node), "Ready") == "True", 30, message="node Ready again")
    wait_until(lambda: not any(t["key"].startswith("node.kubernetes.io/")
                               for t in kube.get(node)["spec"].get("taints") or []), 60,
               message="taint removed")


def test_rbac_is_enforced(cluster: LocalCluster, kube: KubeClient, namespace: str) -> None:
    sa = f"smoke-{uuid.uuid4().hex[:5]}"
    kube.create(f"/api/v1/namespaces/{namespace}/serviceaccounts", {"metadata": {"name": sa}})
    token = kube.create(f"/api/v1/namespaces/{namespace}/serviceaccounts/{sa}/token",
                        {"spec": {"expirationSeconds": 600}})["status"]["token"]
    review = kube.create("/apis/authorization.k8s.io/v1/subjectaccessreviews", {"spec": {
        "user": f"system:serviceaccount:{namespace}:{sa}", "resourceAttributes": {
            "namespace": namespace, "verb": "list", "resource": "pods"}}})
    assert review["status"]["allowed"] is False
    assert token.count(".") == 2  # a signed JWT from the service-account issuer


def _missing(kube: KubeClient, path: str) -> bool:
    try:
        kube.get(path)
        return False
    except ApiError as e:
        if e.not_found:
            return True
        raise


def _served(kube: KubeClient, path: str) -> bool:
    try:
        kube.get(path)
        return True
    except ApiError:
        return False

