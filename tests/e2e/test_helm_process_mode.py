"""End to end, the Helm chart with real Ray: `helm install`, `helm upgrade` and `helm uninstall` of
manifests/chart/rayop against a process-mode control plane of the test's own (the operator pod runs the
repository's `rayop run`; the image is not pulled).

Proves:
- `helm install rayop manifests/chart/rayop -n rayop-helm --create-namespace` installs both CRDs and the operator in
  the release namespace; its pod becomes Ready (probes pass, Lease held, RayJob controller on) and brings a small
  `Ray` (head and one worker, real Ray processes) to Ready;
- `helm upgrade --reuse-values --set logLevel=debug` rolls the Deployment: the new pod runs with `--log-level=debug`
  (its spec and its process's command line say so) and keeps the install's `--set workers=2`; the Ray stays
  Ready under the new operator;
- `helm uninstall` removes every object of the release (Deployment, ServiceAccount, ClusterRole and binding,
  leader-election Role and binding, metrics Service) and its pod, and keeps both CRDs.

The measured times are printed (run with `-s`). Deselect with `-m "not e2e"`. Needs root, iproute2 with working
`ip netns`, nsenter and unshare, and Helm (hack/build-helm.sh builds it).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from rayop.api import rayjob as j
from rayop.api.types import GROUP, VERSION
from rayop.runtime.kube import KubeClient
from tests.e2e.test_ray_process_mode import (  # noqa: F401 (pm, kube: the shared module-scoped fixtures)
    SMALL,
    _get,
    container_pid,
    is_ready,
    kube,
    live,
    cluster_pods,
    pm,
    record,
    wait_ready,
)
from tests.e2e.test_rayjob_process_mode import operator_pods, rolled_out
from tests.support.cluster import PrivateCluster, delete_namespace, process_mode_unavailable, wait_until
from tests.support.helm import CHART, helm
from tests.support.operator import rays_path

RELEASE = "rayop"
NS = "rayop-helm"  # not the plain manifests' rayop-system: the chart follows the release namespace
CRDS = (f"rays.{GROUP}", f"{j.PLURAL}.{GROUP}")
# Every object the release creates besides the pods: (API path of the collection, name).
RELEASE_OBJECTS = (
    (f"/apis/apps/v1/namespaces/{NS}/deployments", "rayop"),
    (f"/api/v1/namespaces/{NS}/serviceaccounts", "rayop"),
    (f"/api/v1/namespaces/{NS}/services", "rayop-metrics"),
    ("/apis/rbac.authorization.k8s.io/v1/clusterroles", "rayop"),
    ("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", "rayop"),
    (f"/apis/rbac.authorization.k8s.io/v1/namespaces/{NS}/roles", "rayop-leader-election"),
    (f"/apis/rbac.authorization.k8s.io/v1/namespaces/{NS}/rolebindings", "rayop-leader-election"),
)

UNAVAILABLE = process_mode_unavailable()
pytestmark = [pytest.mark.e2e, pytest.mark.slow,
              pytest.mark.skipif(UNAVAILABLE is not None, reason=f"process mode unavailable: {UNAVAILABLE}")]


def helm_in(pm: PrivateCluster, *args: str) -> str:
    """helm against the private cluster (its kubeconfig), in the release namespace."""
    env = dict(os.environ, **pm.env)
    return helm(*args, "--namespace", NS, env=env).stdout


def ready_operator(kube: KubeClient) -> str | None:
    items = operator_pods(kube, NS)
    ready = [p for p in items if is_ready(p) and not p["metadata"].get("deletionTimestamp")]
    return ready[0]["metadata"]["name"] if len(ready) == 1 and len(items) == 1 else None


def process_args(pm: PrivateCluster, kube: KubeClient, name: str) -> list[str]:
    """The command line of the operator's process in pod `name`, as the node agent started it."""
    pod = kube.get(f"/api/v1/namespaces/{NS}/pods/{name}")
    return Path(f"/proc/{container_pid(pm, pod, 'rayop')}/cmdline").read_bytes().decode().split("\0")


@pytest.fixture
def ray_ns(kube: KubeClient) -> Iterator[str]:
    name = f"e2e-helm-{uuid.uuid4().hex[:4]}"
    kube.create("/api/v1/namespaces", {"metadata": {"name": name}})
    wait_until(lambda: _get(kube, f"/api/v1/namespaces/{name}/serviceaccounts/default"), 60,
               message="the default ServiceAccount")
    wait_until(lambda: _get(kube, f"/api/v1/namespaces/{name}/configmaps/kube-root-ca.crt"), 60,
               message="kube-root-ca.crt")
    yield name
    if _get(kube, f"/api/v1/namespaces/{name}"):
        delete_namespace(kube, name)


def test_helm_install_upgrade_uninstall(pm: PrivateCluster, kube: KubeClient, ray_ns: str) -> None:
    t0 = time.monotonic()
    helm_in(pm, "install", RELEASE, str(CHART), "--create-namespace", "--set", "workers=2")
    for crd in CRDS:
        pm.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{crd}")
    first: str = wait_until(lambda: ready_operator(kube), 180, 0.5, message="the operator's pod Ready")
    record("helm install -> operator Ready", time.monotonic() - t0)
    assert "--workers=2" in process_args(pm, kube, first)
    logs = pm.kubectl("logs", "-n", NS, first).stdout
    assert "acquired lease" in logs and '"enabled": true' in logs and "rayjob controller" in logs, logs[-2000:]
    assert json.loads(helm_in(pm, "status", RELEASE, "-o", "json"))["info"]["status"] == "deployed"

    # A small Ray: a head and one worker, real Ray processes, reconciled by the operator Helm installed.
    t0 = time.monotonic()
    ray = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Ray", "metadata": {"name": "small", "namespace": ray_ns},
           "spec": {"autoScalingMode": "disabled", "minWorkers": 1, "maxWorkers": 1, "initialWorkers": 1,
                    "headRayStartParams": SMALL, "workerRayStartParams": SMALL}}
    kube.create(rays_path(ray_ns), ray)
    ready = wait_ready(kube, ray_ns, "small")
    record("Ray (head + 1 worker) apply -> Ready", time.monotonic() - t0)
    for kind in ("head", "worker"):
        (pod,) = live(cluster_pods(kube, ray_ns, "small", kind))
        assert is_ready(pod), pod["status"]
    generation = ready["metadata"]["generation"]

    # helm upgrade --reuse-values: one flag more, the install's values kept; the Deployment rolls.
    t0 = time.monotonic()
    helm_in(pm, "upgrade", RELEASE, str(CHART), "--reuse-values", "--set", "logLevel=debug")
    second = rolled_out(pm, kube, first, NS)
    record("helm upgrade -> new operator Ready", time.monotonic() - t0)
    (c,) = kube.get(f"/api/v1/namespaces/{NS}/pods/{second}")["spec"]["containers"]
    assert "--log-level=debug" in c["args"] and "--workers=2" in c["args"], c["args"]
    argv = process_args(pm, kube, second)
    assert "--log-level=debug" in argv and "--workers=2" in argv, argv
    assert json.loads(helm_in(pm, "history", RELEASE, "-o", "json"))[-1]["revision"] == 2
    again = wait_ready(kube, ray_ns, "small")
    assert again["metadata"]["generation"] == generation

    # The Ray goes while the operator runs (its children with it); then the release goes, the CRDs stay.
    delete_namespace(kube, ray_ns)
    t0 = time.monotonic()
    helm_in(pm, "uninstall", RELEASE, "--wait", "--timeout", "120s")
    for collection, name in RELEASE_OBJECTS:
        assert _get(kube, f"{collection}/{name}") is None, (collection, name)
    wait_until(lambda: not operator_pods(kube, NS), 120, 0.5, message="the operator's pods gone")
    left = [(collection, o["metadata"]["name"]) for collection, _ in RELEASE_OBJECTS
            for o in kube.get(collection, labelSelector=f"app.kubernetes.io/instance={RELEASE}")["items"]]
    assert not left, left
    record("helm uninstall -> every operator object gone", time.monotonic() - t0)
    for crd in CRDS:
        assert _get(kube, f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd}"), crd
    assert kube.get(f"/apis/{GROUP}/{VERSION}/{j.PLURAL}")["items"] == []
    assert "rayop" not in helm_in(pm, "list", "-q")
