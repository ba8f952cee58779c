"""`ray up` configurations as users wrote them, against the real API server (sim mode): Ray's own Kubernetes
example and a project's generated config (tests/data) create their pods — no ServiceAccount nobody creates — and
the Services of provider.services, owned by the `Ray`, selecting its pods; a Service name someone else holds is
reported, not adopted; a Service dropped from the configuration is deleted."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rayop.objects import LABEL_CLUSTER, LABEL_ROLE
from rayop.runtime.kube import ApiError, KubeClient
from tests.support.cluster import LocalCluster, wait_until
from tests.support.operator import OperatorProcess, rays_path

DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.fixture
def operator(cluster: LocalCluster, namespace: str, ray_crd: None, tmp_path: Path) -> Iterator[OperatorProcess]:
    op = OperatorProcess(cluster, [namespace], tmp_path / "operator.log")
    op.start()
    yield op
    op.stop()
    assert "Traceback" not in op.log(), op.log()[-5000:]


def configuration(file: str) -> str:
    """The file as given, with only the worker counts raised to 1 (as a user trying it would)."""
    text = (DATA / file).read_text()
    text = re.sub(r"^(\s*)(min_workers|initial_workers): 0$", r"\1\2: 1", text, count=0, flags=re.M)
    # The head node type keeps min_workers 0 (it is the head).
    return re.sub(r"(head_node:\n\s+min_workers:) 1", r"\1 0", text)


def ray(namespace: str, name: str, text: str) -> dict[str, Any]:
    return {"apiVersion": "ray.k8s.io/v1alpha1", "kind": "Ray", "metadata": {"name": name, "namespace": namespace},
            "spec": {"configuration": text}}


def condition(obj: dict[str, Any] | None, kind: str) -> dict[str, Any]:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c["type"] == kind:
            return dict(c)
    return {}


def get(kube: KubeClient, path: str) -> dict[str, Any] | None:
    try:
        return dict(kube.get(path))
    except ApiError as e:
        if e.not_found:
            return None
        raise


def pods(kube: KubeClient, ns: str, name: str, kind: str) -> list[dict[str, Any]]:
    items = kube.get(f"/api/v1/namespaces/{ns}/pods", labelSelector=f"{LABEL_CLUSTER}={name},{LABEL_ROLE}={kind}")
    return [p for p in items["items"] if not p["metadata"].get("deletionTimestamp")]


def endpoint_ips(kube: KubeClient, ns: str, service: str) -> set[str]:
    slices = kube.get(f"/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices",
                      labelSelector=f"kubernetes.io/service-name={service}")["items"]
    return {a for s in slices for e in s.get("endpoints") or [] for a in e.get("addresses") or []}


@pytest.mark.parametrize(
    "file, services",
    [("ray-0.8-example-full.yaml", {"ray-head": "head", "ray-workers": "worker"}),
     ("rayvens-0.2.0-cluster.yaml", {"rayvens-cluster-head": "head"})],
)
def test_example_configs_create_their_pods_and_services(kube: KubeClient, namespace: str,
                                                        operator: OperatorProcess, file: str,
                                                        services: dict[str, str]) -> None:
    name = "legacy"
    created = kube.create(rays_path(namespace), ray(namespace, name, configuration(file)))
    ready = wait_until(lambda: (r := get(kube, rays_path(namespace, name))) and
                       condition(r, "Ready").get("status") == "True" and r, 120, 0.5, message="Ready")
    assert condition(ready, "ReplicaFailure").get("status") != "True", ready["status"]
    (head,) = pods(kube, namespace, name, "head")
    workers = pods(kube, namespace, name, "worker")
    assert len(workers) == 1
    # Pods run as accounts that exist: the operator's autoscaler account on the head, the default on workers.
    assert head["spec"]["serviceAccountName"] == f"{name}-autoscaler"
    assert get(kube, f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}-autoscaler") is not None
    assert workers[0]["spec"].get("serviceAccountName", "default") == "default"
    ray_container = head["spec"]["containers"][0]
    assert ray_container["command"] == ["/bin/bash", "-lc", "--"]
    assert "exec ray start --head" in ray_container["args"][0] and "sleep infinity" not in ray_container["args"][0]

    # Each declared Service exists, belongs to the Ray, and its endpoints are the pods its labels meant.
    ips = {"head": {head["status"]["podIP"]}, "worker": {w["status"]["podIP"] for w in workers}}
    for service, target in services.items():
        svc = wait_until(lambda: get(kube, f"/api/v1/namespaces/{namespace}/services/{service}"), 30,
                         message=f"Service {service}")
        (ref,) = svc["metadata"]["ownerReferences"]
        assert ref["uid"] == created["metadata"]["uid"] and ref["controller"] is True
        assert svc["spec"]["selector"][LABEL_CLUSTER] == name
        wait_until(lambda: endpoint_ips(kube, namespace, service) == ips[target], 60, 0.5,
                   message=f"{service} endpoints = the {target} pods")

    # The status names the ignored keys and says what was translated; a Normal Event says it too.
    valid = condition(ready, "ConfigurationValid")
    assert valid["status"] == "True" and valid["reason"] == "KeysIgnored"
    assert "spec.configuration.provider.autoscaler_service_account" in valid["message"].split(":", 1)[0]
    assert "keep-alive command" in valid["message"]
    events = wait_until(lambda: [e for e in kube.get(f"/api/v1/namespaces/{namespace}/events")["items"]
                                 if e["reason"] == "TranslatedConfiguration"], 30, message="the Event")
    assert events[0]["type"] == "Normal" and "keep-alive command" in events[0]["message"]


def test_a_service_name_held_by_someone_else_is_reported_and_a_dropped_service_deleted(
        kube: KubeClient, namespace: str, operator: OperatorProcess) -> None:
    foreign = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "ray-workers"},
               "spec": {"selector": {"app": "mine"}, "ports": [{"port": 80}]}}
    kube.create(f"/api/v1/namespaces/{namespace}/services", foreign)
    name = "legacy"
    text = configuration("ray-0.8-example-full.yaml")
    kube.create(rays_path(namespace), ray(namespace, name, text))

    def reported() -> dict[str, Any] | None:
        r = get(kube, rays_path(namespace, name))
        failure = condition(r, "ReplicaFailure")
        return r if failure.get("status") == "True" and "ray-workers already exists" in failure["message"] else None

    wait_until(reported, 90, 0.5, message="ReplicaFailure naming the Service")
    svc = kube.get(f"/api/v1/namespaces/{namespace}/services/ray-workers")
    assert svc["spec"]["selector"] == {"app": "mine"} and not svc["metadata"].get("ownerReferences")
    assert get(kube, f"/api/v1/namespaces/{namespace}/services/ray-head") is not None

    # Drop ray-head from the configuration: the operator deletes the Service it created (and only that one).
    start = text.index("      # Service that maps to the head node")
    end = text.index("      # Service that maps to the worker nodes")
    kube.patch(rays_path(namespace, name), {"spec": {"configuration": text[:start] + text[end:]}})
    wait_until(lambda: get(kube, f"/api/v1/namespaces/{namespace}/services/ray-head") is None, 60, 0.5,
               message="ray-head deleted")
    assert kube.get(f"/api/v1/namespaces/{namespace}/services/ray-workers")["spec"]["selector"] == {"app": "mine"}
