"""The node provider against the real API server, with the autoscaler's own ServiceAccount token and the Role from
`autoscaler_role_rules`: what it reads, what it writes, the resourceVersion guard, and what it may not do."""

from __future__ import annotations

import logging
import ssl
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from rayop.api.convert import effective_cluster
from rayop.autoscaler import autoscaler_role_rules, build_autoscaler_config, validate_with_ray
from rayop.runtime.kube import ApiError, KubeClient
from tests.integration.test_autoscaler_ray import INPOD, FakeNode, make_pod, set_pod_running
from tests.integration.test_autoscaler_ray import fake_node  # noqa: F401 - the shared fixture
from tests.support.cluster import LocalCluster

sys.path.insert(0, str(INPOD))
import rayop_provider as rp  # noqa: E402
from ray.autoscaler.tags import TAG_RAY_USER_NODE_TYPE  # noqa: E402

pytestmark = pytest.mark.usefixtures("ray_crd")  # the `Ray` CRD from manifests/ is served

RAYS = "/apis/ray.k8s.io/v1alpha1/namespaces/{ns}/rays"
NAME = "demo"


def create_ray(kube: KubeClient, namespace: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    ray: dict[str, Any] = kube.create(RAYS.format(ns=namespace), {
        "apiVersion": "ray.k8s.io/v1alpha1", "kind": "Ray", "metadata": {"name": name}, "spec": spec})
    return ray


def service_account_api(cluster: LocalCluster, kube: KubeClient, namespace: str, tmp_path: Path) -> rp.KubeApi:
    """A client that is the autoscaler: its ServiceAccount, Role and RoleBinding, and a token from TokenRequest."""
    sa = f"{NAME}-autoscaler"
    base = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}"
    kube.create(f"/api/v1/namespaces/{namespace}/serviceaccounts", {"metadata": {"name": sa}})
    kube.create(f"{base}/roles", {"metadata": {"name": sa}, "rules": autoscaler_role_rules(NAME)})
    kube.create(f"{base}/rolebindings", {
        "metadata": {"name": sa},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": sa},
        "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": namespace}],
    })
    token = kube.create(f"/api/v1/namespaces/{namespace}/serviceaccounts/{sa}/token",
                        {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                         "spec": {"expirationSeconds": 3600}})["status"]["token"]
    token_file = tmp_path / "token"
    token_file.write_text(token)
    config = yaml.safe_load(Path(cluster.kubeconfig).read_text())["clusters"][0]["cluster"]
    context = ssl.create_default_context(cafile=config["certificate-authority"])
    return rp.KubeApi(config["server"], context, str(token_file))


@pytest.fixture
def sa_provider(cluster: LocalCluster, kube: KubeClient, namespace: str, fake_node: FakeNode,
                tmp_path: Path) -> Iterator[tuple[rp.RayopNodeProvider, rp.KubeApi]]:
    ray = create_ray(kube, namespace, NAME, {"minWorkers": 0, "maxWorkers": 3})
    create_ray(kube, namespace, "other", {"minWorkers": 0, "maxWorkers": 3})
    head = make_pod(kube, namespace, NAME, f"{NAME}-head-aaaaa", "head", "head", fake_node.name)
    set_pod_running(kube, namespace, head, "10.244.0.10")
    worker = make_pod(kube, namespace, NAME, f"{NAME}-worker-bbbbb", "worker", "worker", fake_node.name)
    set_pod_running(kube, namespace, worker, "10.244.0.11")
    make_pod(kube, namespace, NAME, f"{NAME}-worker-ccccc", "worker", "worker", fake_node.name)  # still pending
    make_pod(kube, namespace, "other", "other-worker-ddddd", "worker", "worker", fake_node.name)
    api = service_account_api(cluster, kube, namespace, tmp_path)
    config = build_autoscaler_config(effective_cluster(ray).cluster)
    rp.RayopNodeProvider.api_factory = lambda provider_config: api
    try:
        yield rp.RayopNodeProvider(config["provider"], config["cluster_name"]), api
    finally:
        rp.RayopNodeProvider.api_factory = None


def spec_of(kube: KubeClient, namespace: str, name: str = NAME) -> dict[str, Any]:
    spec: dict[str, Any] = kube.get(f"{RAYS.format(ns=namespace)}/{name}")["spec"]
    return spec


def test_the_provider_reads_pods_and_writes_the_ray_with_least_privilege(
    sa_provider: tuple[rp.RayopNodeProvider, rp.KubeApi], kube: KubeClient, namespace: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=rp.__name__)
    provider, api = sa_provider
    nodes = sorted(provider.non_terminated_nodes({}))
    assert nodes == [f"{NAME}-head-aaaaa", f"{NAME}-worker-bbbbb", f"{NAME}-worker-ccccc"]
    data = provider.node_data_dict
    assert (data[f"{NAME}-head-aaaaa"].kind, data[f"{NAME}-head-aaaaa"].ip) == ("head", "10.244.0.10")
    assert data[f"{NAME}-worker-bbbbb"].status == "up-to-date"
    assert (data[f"{NAME}-worker-ccccc"].status, data[f"{NAME}-worker-ccccc"].ip) == ("pending", None)

    # Scale up: desiredWorkers written with the SA's own rights.
    provider.create_node({}, {TAG_RAY_USER_NODE_TYPE: "worker"}, 1)
    provider.post_process()
    assert spec_of(kube, namespace)["desiredWorkers"] == {"worker": 3}

    # The operator writes status meanwhile (a new resourceVersion): the guarded patch conflicts, re-reads, succeeds.
    provider.non_terminated_nodes({})
    kube.patch(f"{RAYS.format(ns=namespace)}/{NAME}/status", {"status": {"desiredWorkers": 3}})
    provider.terminate_node(f"{NAME}-worker-bbbbb")
    provider.post_process()
    spec = spec_of(kube, namespace)
    assert "reading it again" in caplog.text
    # It saw two worker pods and named one: one is left, whatever the operator was still aiming for.
    assert (spec["desiredWorkers"], spec["workersToDelete"]) == ({"worker": 1}, [f"{NAME}-worker-bbbbb"])

    # The guard is real: a stale resourceVersion is refused.
    with pytest.raises(rp.ApiError) as conflict:
        api.patch(provider.ray_path, {"metadata": {"resourceVersion": "1"}, "spec": {"desiredWorkers": {"worker": 9}}})
    assert conflict.value.status == 409

    # Until the operator deletes the named pod, the autoscaler backs off; then the list is cleared.
    provider.non_terminated_nodes({})
    assert provider.safe_to_scale() is False
    assert spec_of(kube, namespace)["workersToDelete"] == [f"{NAME}-worker-bbbbb"]
    kube.delete(f"/api/v1/namespaces/{namespace}/pods/{NAME}-worker-bbbbb", gracePeriodSeconds=0)
    provider.non_terminated_nodes({})
    assert provider.safe_to_scale() is True
    spec = spec_of(kube, namespace)
    assert "workersToDelete" not in spec and spec["desiredWorkers"] == {"worker": 1}

    # Least privilege: nothing beyond reading pods and getting/patching its own Ray.
    other = f"{RAYS.format(ns=namespace)}/other"
    forbidden = [
        lambda: api.get(other),
        lambda: api.patch(other, {"spec": {"desiredWorkers": {"worker": 1}}}),
        lambda: api.get(RAYS.format(ns=namespace)),
        lambda: api.request("DELETE", f"/api/v1/namespaces/{namespace}/pods/{NAME}-worker-ccccc"),
        lambda: api.patch(f"/api/v1/namespaces/{namespace}/pods/{NAME}-worker-ccccc", {"metadata": {"labels": {"x": "y"}}}),
        lambda: api.get("/api/v1/namespaces/default/pods"),
        lambda: api.patch(f"{provider.ray_path}/status", {"status": {"desiredWorkers": 0}}),
        lambda: api.request("DELETE", provider.ray_path),
    ]
    for attempt in forbidden:
        with pytest.raises(rp.ApiError) as denied:
            attempt()
        assert denied.value.status == 403
    assert spec_of(kube, namespace, "other").get("desiredWorkers") is None


@pytest.mark.parametrize(
    "spec",
    [
        {"minWorkers": 1, "maxWorkers": 4, "autoScalingMode": "aggressive", "idleTimeoutMinutes": 3,
         "workerRayStartParams": {"num-cpus": "2"}},
        {"configuration": "max_workers: 4\nidle_timeout_minutes: 0.5\navailable_node_types:\n"
                          "  h: {resources: {CPU: 1}, node_config: {}, max_workers: 0}\n"
                          "  w: {resources: {CPU: 2}, node_config: {}, min_workers: 1, max_workers: 4}\n"
                          "head_node_type: h\n"},
        {"configuration": "min_workers: 1\nmax_workers: 2\ntarget_utilization_fraction: 0.5\n"},
    ],
    ids=["structured", "available_node_types", "legacy"],
)
def test_both_forms_stored_by_the_api_server_give_configs_ray_accepts(
    kube: KubeClient, namespace: str, spec: dict[str, Any]
) -> None:
    stored = create_ray(kube, namespace, "form", spec)
    config = build_autoscaler_config(effective_cluster(stored).cluster)
    assert validate_with_ray(config) is None
    assert config["provider"]["namespace"] == namespace


def test_a_stale_token_file_is_re_read(cluster: LocalCluster, kube: KubeClient, namespace: str,
                                       tmp_path: Path) -> None:
    create_ray(kube, namespace, NAME, {})
    api = service_account_api(cluster, kube, namespace, tmp_path)
    good = (tmp_path / "token").read_text()
    (tmp_path / "token").write_text("not-a-token")
    with pytest.raises(rp.ApiError) as denied:
        api.get(f"{RAYS.format(ns=namespace)}/{NAME}")
    assert denied.value.status == 401
    (tmp_path / "token").write_text(good)
    assert api.get(f"{RAYS.format(ns=namespace)}/{NAME}")["metadata"]["name"] == NAME
    with pytest.raises(ApiError):
        kube.get(f"{RAYS.format(ns=namespace)}/missing")
