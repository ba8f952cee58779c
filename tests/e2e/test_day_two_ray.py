"""Day-two operations with real Ray in process mode: the operator runs as a local process (`rayop run`) against a
process-mode control plane of the test's own, whose pods are real Ray heads, workers and launchers.

Proves:
- graceful scale-down with the autoscaler off: a driver keeps a long task running on one of two workers; lowering
  maxWorkers removes the idle worker, not the busy one; a worker template change then rolls the busy worker too,
  which drains first (its preStop hook asks Ray's GCS), so the driver's task result is delivered; a watch-recorded
  history never shows more than desired + surge worker pods;
- a launcher whose workers never join fails with its own reason: `SuccessfulLaunch=False`, reason
  `WorkersNotJoined` and the launcher's message (not the Job's `BackoffLimitExceeded`/`DeadlineExceeded`), and a
  Warning Event with the same reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rayop.runtime.kube import KubeClient
from tests.support.cluster import SCRIPT, PrivateCluster, process_mode_unavailable, wait_until
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


# A long task on a worker; says which node runs it (BUSY <ip>), then its result (RESULT <pod name>).
LONG_TASK = """
import os, sys, time
import ray
from ray.util.state import list_tasks
ray.init(address="auto", logging_level="ERROR")
@ray.remote(num_cpus=1)
def long(seconds):
    time.sleep(seconds)
    return os.environ.get("RAY_CLOUD_INSTANCE_ID")
ref = long.remote(float(sys.argv[1]))
while True:
    running = [t for t in list_tasks(filters=[("state", "=", "RUNNING")]) if t.name.endswith("long")]
    if running:
        break
    time.sleep(0.5)
ip = next(n["NodeManagerAddress"] for n in ray.nodes() if n["NodeID"] == running[0].node_id)
print("BUSY", ip, flush=True)
try:
    print("RESULT", ray.get(ref), flush=True)
except Exception as e:
    print("LOST", type(e).__name__, str(e).splitlines()[0], flush=True)
"""


def worker_pods(kube: KubeClient, ns: str, name: str) -> list[dict[str, Any]]:
    return [p for p in kube.get(f"/api/v1/namespaces/{ns}/pods",
                                labelSelector=f"ray.k8s.io/cluster={name},ray.k8s.io/node-kind=worker")["items"]
            if p.get("status", {}).get("phase") not in ("Succeeded", "Failed")]


def ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions") or [])


def test_scale_down_and_rolling_update_drain_busy_workers_last(pm: PrivateCluster, kube: KubeClient,
                                                                namespace: str, tmp_path: Path) -> None:
    op = OperatorProcess(pm, [namespace], tmp_path / "operator.log", extra_args=["--drain-timeout", "240"])
    op.start()
    # Every worker pod the API server ever showed, and the most alive (not terminated) at once.
    seen: dict[str, dict[str, Any]] = {}
    peak = [0]
    stop = threading.Event()

    def record() -> None:
        watcher = pm.client()
        rv = kube.get(f"/api/v1/namespaces/{namespace}/pods", limit=1)["metadata"]["resourceVersion"]
        while not stop.is_set():
            for event in watcher.watch(f"/api/v1/namespaces/{namespace}/pods",
                                       {"resourceVersion": rv, "timeoutSeconds": 5,
                                        "labelSelector": "ray.k8s.io/node-kind=worker"}, timeout=15):
                obj = event["object"]
                rv = obj["metadata"].get("resourceVersion", rv)
                if event["type"] == "DELETED":
                    seen.pop(obj["metadata"]["name"], None)
                elif event["type"] in ("ADDED", "MODIFIED"):
                    seen[obj["metadata"]["name"]] = obj
                alive = [p for p in seen.values() if p.get("status", {}).get("phase") not in ("Succeeded", "Failed")]
                peak[0] = max(peak[0], len(alive))

    recorder = threading.Thread(target=record, daemon=True)
    recorder.start()
    driver: subprocess.Popen[str] | None = None
    try:
        ray = {
            "apiVersion": "ray.k8s.io/v1alpha1", "kind": "Ray", "metadata": {"name": "drain", "namespace": namespace},
            "spec": {"autoScalingMode": "disabled", "minWorkers": 0, "maxWorkers": 2, "initialWorkers": 2,
                     "headRayStartParams": {**SMALL, "num-cpus": "0"}, "workerRayStartParams": dict(SMALL)},
        }
        kube.create(rays_path(namespace), ray)
        wait_until(lambda: (r := kube.get(rays_path(namespace, "drain"))) and
                   condition(r, "Ready").get("status") == "True", 300, interval=2, message="Ray drain Ready")
        assert len(worker_pods(kube, namespace, "drain")) == 2
        head = kube.get(f"/api/v1/namespaces/{namespace}/pods",
                        labelSelector="ray.k8s.io/cluster=drain,ray.k8s.io/node-kind=head")["items"][0]
        env = dict(os.environ, RAYOP_CLUSTER_DIR=str(pm.state_dir))
        driver = subprocess.Popen([str(SCRIPT), "exec", head["metadata"]["name"], "-n", namespace, "-c", "ray-head",
                                   "--", "python", "-c", LONG_TASK, "150"], stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, env=env)
        lines: list[str] = []
        threading.Thread(target=lambda: lines.extend(iter(driver.stdout.readline, "")), daemon=True).start()  # type: ignore[union-attr]
        busy_ip = wait_until(lambda: next((ln.split()[1] for ln in lines if ln.startswith("BUSY")), None), 120,
                             interval=0.5, message=f"the long task runs (driver: {lines[-5:]})")
        workers = worker_pods(kube, namespace, "drain")
        busy = next(p["metadata"]["name"] for p in workers if p["status"].get("podIP") == busy_ip)
        idle = next(p["metadata"]["name"] for p in workers if p["metadata"]["name"] != busy)
        print(f"busy worker {busy} ({busy_ip}), idle worker {idle}")

        # 1. Lower maxWorkers: the idle worker goes, the busy one stays and keeps running its task.
        kube.patch(rays_path(namespace, "drain"), {"spec": {"maxWorkers": 1}})
        wait_until(lambda: idle not in {p["metadata"]["name"] for p in worker_pods(kube, namespace, "drain")}, 120,
                   interval=1, message=f"idle worker {idle} removed")
        left = worker_pods(kube, namespace, "drain")
        assert [p["metadata"]["name"] for p in left] == [busy], left
        assert not left[0]["metadata"].get("deletionTimestamp")
        assert not any(ln.startswith(("RESULT", "LOST")) for ln in lines), lines

        # 2. A worker template change rolls the busy worker too: it drains first, so its task finishes.
        t0 = time.monotonic()
        kube.patch(rays_path(namespace, "drain"), {"spec": {"worker": {"metadata": {"labels": {"rolled": "yes"}}}}})
        wait_until(lambda: (p := next((p for p in worker_pods(kube, namespace, "drain")
                                       if p["metadata"]["name"] == busy), None)) is not None
                   and p["metadata"].get("deletionTimestamp"), 180, interval=1,
                   message=f"the busy worker {busy} deleted by the rolling update")
        result = wait_until(lambda: next((ln for ln in lines if ln.startswith(("RESULT", "LOST"))), None), 240,
                            interval=1, message="the driver's result")
        print(f"driver: {result.strip()} {time.monotonic() - t0:.0f}s after the template change")
        assert result.split() == ["RESULT", busy], lines
        wait_until(lambda: busy not in {p["metadata"]["name"] for p in worker_pods(kube, namespace, "drain")}, 120,
                   interval=1, message=f"{busy} gone after its drain")
        final = wait_until(lambda: (r := kube.get(rays_path(namespace, "drain"))) and
                           condition(r, "Ready").get("status") == "True" and
                           r["status"]["worker"].get("updatedReplicas") == 1 and r, 180, interval=2,
                           message="rolled and Ready")
        assert final["status"]["worker"]["replicas"] == 1
        assert all(p["metadata"]["labels"].get("rolled") == "yes" for p in worker_pods(kube, namespace, "drain"))
        assert peak[0] <= 2, peak[0]  # desired (1) + surge (1) after the scale-down; 2 before it
    finally:
        stop.set()
        if driver is not None and driver.poll() is None:
            driver.kill()
        op.stop()
    assert "Traceback" not in op.log(), op.log()[-5000:]


def test_an_image_tag_change_rolls_the_workers_within_the_surge_and_a_knob_restarts_nothing(
        pm: PrivateCluster, kube: KubeClient, namespace: str, tmp_path: Path) -> None:
    from tests.integration.test_day_two import PodHistory, events, uids

    op = OperatorProcess(pm, [namespace], tmp_path / "operator.log", extra_args=["--drain-timeout", "60"])
    op.start()
    history: PodHistory | None = None
    try:
        worker = {"spec": {"containers": [{"name": "ray-worker", "image": "rayproject/ray:2.60.0"}]}}
        ray = {
            "apiVersion": "ray.k8s.io/v1alpha1", "kind": "Ray", "metadata": {"name": "roll", "namespace": namespace},
            "spec": {"minWorkers": 2, "maxWorkers": 3, "initialWorkers": 2, "idleTimeoutMinutes": 5,
                     "headRayStartParams": {**SMALL, "num-cpus": "0"}, "workerRayStartParams": dict(SMALL),
                     "worker": worker},
        }
        kube.create(rays_path(namespace), ray)

        def settled() -> dict[str, Any] | None:
            r = kube.get(rays_path(namespace, "roll"))
            ok = condition(r, "Ready").get("status") == "True" and \
                condition(r, "SuccessfulLaunch").get("status") == "True" and \
                r["status"].get("observedGeneration") == r["metadata"]["generation"]
            return r if ok else None

        wait_until(settled, 300, interval=2, message="Ray roll Ready and launched")
        history = PodHistory(pm, kube, namespace)
        before = uids(kube, namespace, "roll")

        # Only idleTimeoutMinutes: Ray's monitor re-reads the ConfigMap; no pod restarts.
        kube.patch(rays_path(namespace, "roll"), {"spec": {"idleTimeoutMinutes": 7}})
        wait_until(lambda: '"idle_timeout_minutes":7' in kube.get(
            f"/api/v1/namespaces/{namespace}/configmaps/roll-ray")["data"]["autoscaler.yaml"], 60,
            message="the ConfigMap follows")
        time.sleep(15)
        assert uids(kube, namespace, "roll") == before
        assert history.added_of("worker") == [] and history.added_of("head") == []

        # The worker image tag: the workers roll, never more than desired (2) + maxSurge (1) at once.
        t0 = time.monotonic()
        kube.patch(rays_path(namespace, "roll"), {"spec": {"worker": {"spec": {"containers": [
            {"name": "ray-worker", "image": "rayproject/ray:2.60.0-py311"}]}}}})
        progress: list[tuple[int, int]] = []

        def rolled() -> bool:
            r = kube.get(rays_path(namespace, "roll"))
            g = r["status"]["workerGroups"][0]
            if not progress or progress[-1] != (g.get("updatedReplicas", 0), g.get("replicas", 0)):
                progress.append((g.get("updatedReplicas", 0), g.get("replicas", 0)))
            return bool(settled()) and g.get("updatedReplicas") == 2 and g.get("replicas") == 2

        wait_until(rolled, 400, interval=1, message="workers rolled")
        print(f"image rolled in {time.monotonic() - t0:.0f}s; status progress (updated, replicas): {progress}; "
              f"peak worker pods {history.peak.get('worker')}")
        workers = [p for p in kube.get(f"/api/v1/namespaces/{namespace}/pods",
                                       labelSelector="ray.k8s.io/cluster=roll,ray.k8s.io/node-kind=worker")["items"]
                   if not p["metadata"].get("deletionTimestamp")]
        assert {c["image"] for p in workers for c in p["spec"]["containers"]} == {"rayproject/ray:2.60.0-py311"}
        assert history.peak["worker"] <= 3, history.peak
        assert len(history.added_of("worker")) >= 2 and history.added_of("head") == []
        assert any(u > 0 for u, _ in progress[:-1]) or len(progress) > 1, progress
        assert [e for e in events(kube, namespace, "roll") if e["reason"] == "RollingUpdate"]
    finally:
        if history is not None:
            history.stop()
        op.stop()
    assert "Traceback" not in op.log(), op.log()[-5000:]
