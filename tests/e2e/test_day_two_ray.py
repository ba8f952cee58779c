"""Day-two operations with real Ray in process mode: the operator runs as a local process (`rayop run`) against a
process-mode control plane of the test's own, whose pods are real Ray heads, workers and launchers.

Proves:
- a launcher whose workers never join fails with its own reason: `SuccessfulLaunch=False`, reason
  `WorkersNotJoined` and the launcher's message (not the Job's `BackoffLimitExceeded`/`DeadlineExceeded`), and a
  Warning Event with the same reason.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rayop.runtime.kube import KubeClient
from tests.support.cluster import PrivateCluster, process_mode_unavailable, wait_until
from tests.support.operator import OperatorProcess, install_crd, rays_path

SMALL = {"num-cpus": "1", "object-store-memory": "100000000"}
UNAVAILABLE = process_mode_unavailable()
pytestmark = [pytest.mark.e2e, pytest.mark.slow,
              pytest.mark.skipif(UNAVAILABLE is not None, reason=f"process mode unavailable: {UNAVAILABLE}")]


@pytest.fixture(scope="module")
def pm() -> Iterator[PrivateCluster]:
    tmp = Path(tempfile.mkdtemp(prefix="rayop-e2e-day2-"))
    cluster = PrivateCluster.start(tmp / "cluster", "--process", "--nodes", "1")
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def kube(pm: PrivateCluster) -> KubeClient:
    client = pm.client()
    install_crd(client)
    return client


@pytest.fixture
def namespace(kube: KubeClient) -> Iterator[str]:
    name = f"day2-{int(time.time() * 1000) % 10**8}"
    kube.create("/api/v1/namespaces", {"metadata": {"name": name}})
    wait_until(lambda: kube.get(f"/api/v1/namespaces/{name}/serviceaccounts")["items"], 30,
               message="default ServiceAccount")
    yield name
    kube.delete(f"/api/v1/namespaces/{name}")


def condition(ray: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((dict(c) for c in (ray.get("status") or {}).get("conditions") or [] if c["type"] == kind), {})


def test_a_launcher_whose_workers_never_join_reports_workers_not_joined(pm: PrivateCluster, kube: KubeClient,
                                                                        namespace: str, tmp_path: Path) -> None:
    # The launcher Job's deadline is 130 s, so the launcher itself gives up after 70 s.
    op = OperatorProcess(pm, [namespace], tmp_path / "operator.log", extra_args=["--launcher-deadline", "130"])
    op.start()
    try:
        ray = {
            "apiVersion": "ray.k8s.io/v1alpha1", "kind": "Ray", "metadata": {"name": "nojoin", "namespace": namespace},
            "spec": {
                "autoScalingMode": "disabled", "minWorkers": 1, "maxWorkers": 1, "initialWorkers": 1,
                "headRayStartParams": dict(SMALL), "workerRayStartParams": dict(SMALL),
                # The worker's own command never starts Ray: its node never joins.
                "worker": {"spec": {"containers": [{"name": "ray-worker", "command": ["sleep", "100000"]}]}},
            },
        }
        kube.create(rays_path(namespace), ray)
        started = time.monotonic()
        failed = wait_until(lambda: (c := condition(kube.get(rays_path(namespace, "nojoin")), "SuccessfulLaunch"))
                            and c.get("status") == "False" and c, 300, interval=2,
                            message="SuccessfulLaunch False")
        print(f"SuccessfulLaunch False after {time.monotonic() - started:.0f}s: {failed['reason']}: "
              f"{failed['message']}")
        assert failed["reason"] == "WorkersNotJoined", failed
        assert "0 of 1 worker(s) joined Ray within 70 s" in failed["message"], failed
        warnings = wait_until(lambda: [e for e in kube.get(f"/api/v1/namespaces/{namespace}/events",
                                                           fieldSelector="involvedObject.name=nojoin,type=Warning")[
            "items"] if e["reason"] == "WorkersNotJoined"], 30, message="a WorkersNotJoined Warning Event")
        assert "joined Ray" in warnings[0]["message"]
    finally:
        op.stop()
    assert "Traceback" not in op.log(), op.log()[-5000:]
