"""Day-two operations with real Ray in process mode: the operator runs as a local process (`rayop run`) against a
process-mode control plane of the test's own, whose pods are real Ray heads, workers and launchers.

Proves:
- graceful scale-down with the autoscaler off: a driver keeps a long task running on one of two workers; lowering
  maxWorkers removes the idle worker, not the busy one; a worker template change then rolls the busy worker too,
  which drains first (its preStop hook asks Ray's GCS), so the driver's task result is delivered; a watch-recorded
  history never shows more than desired + surge worker pods;
- a launcher whose workers never join fails with its own reason: `SuccessfulLaunch=False`, reason
  `WorkersNotJoined` and the launcher's message (not the launch's `BackoffLimitExceeded`/`DeadlineExceeded`), and a
  Warning Event with the same reason;
- a worker drained from outside the operator (`ray drain-node` as an idle termination; the v1 autoscaler's own
  `drain_nodes` call) loses its raylet; when its container restarts in the same pod (the kubelet's liveness restart,
  done here at once), Ray does NOT start there again:
  Ray's alive nodes stay one fewer each while the pods stay up; a worker whose processes are killed (SIGKILL) or
  whose container is stopped (SIGTERM, as the kubelet does after a failed liveness probe) rejoins as before;
- suspend and resume a live Ray: every pod gone within one drain deadline, `Suspended` in the status, and after
  resume Ready with the same worker count, the driver seeing head + N workers alive.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rayop.runtime.kube import KubeClient
from tests.support.cluster import SCRIPT, PrivateCluster, delete_namespace, process_mode_unavailable, wait_until
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
    delete_namespace(kube, name)


def condition(ray: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((dict(c) for c in (ray.get("status") or {}).get("conditions") or [] if c["type"] == kind), {})


def test_a_launcher_whose_workers_never_join_reports_workers_not_joined(pm: PrivateCluster, kube: KubeClient,
                                                                        namespace: str, tmp_path: Path) -> None:
    # The launch's deadline is 130 s, so the launcher itself gives up after 70 s; a second attempt starts after a
    # 10 s back-off, and none after that (the deadline has passed when it fails).
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
        # Two attempts ran, each a pod of its own that failed; no third one (the deadline had passed).
        attempts = kube.get(f"/api/v1/namespaces/{namespace}/pods",
                            labelSelector="ray.k8s.io/cluster=nojoin,ray.k8s.io/node-kind=launcher")["items"]
        assert sorted((p["metadata"]["annotations"]["ray.k8s.io/launch-attempt"], p["status"]["phase"])
                      for p in attempts) == [("0", "Failed"), ("1", "Failed")], attempts
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


# Ray's nodes as a driver on the head sees them: one JSON line [{"id", "ip", "alive"}].
NODES = """
import json
import ray
ray.init(address="auto", logging_level="ERROR")
print(json.dumps([{"id": n["NodeID"], "ip": n["NodeManagerAddress"], "alive": n["Alive"]} for n in ray.nodes()]))
"""


def head_exec(pm: PrivateCluster, kube: KubeClient, ns: str, name: str, *cmd: str,
              container: str = "ray-head") -> subprocess.CompletedProcess[str]:
    head = kube.get(f"/api/v1/namespaces/{ns}/pods",
                    labelSelector=f"ray.k8s.io/cluster={name},ray.k8s.io/node-kind=head")["items"][0]
    return pm.script("exec", head["metadata"]["name"], "-n", ns, "-c", container, "--", *cmd, check=False,
                     timeout=300)


def alive_nodes(pm: PrivateCluster, kube: KubeClient, ns: str, name: str) -> dict[str, str]:
    """The alive Ray nodes a driver on the head sees: node id -> IP (the head included)."""
    out = head_exec(pm, kube, ns, name, "python", "-c", NODES)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("[")]
    assert out.returncode == 0 and lines, f"driver failed ({out.returncode}): {out.stdout[-2000:]}{out.stderr[-2000:]}"
    return {n["id"]: n["ip"] for n in json.loads(lines[-1]) if n["alive"]}


def restarts(kube: KubeClient, ns: str, pod: str) -> int:
    p = kube.get(f"/api/v1/namespaces/{ns}/pods/{pod}")
    return sum(c.get("restartCount", 0) for c in p["status"].get("containerStatuses") or [])


def running_again(kube: KubeClient, ns: str, pod: str, before: int) -> bool:
    p = kube.get(f"/api/v1/namespaces/{ns}/pods/{pod}")
    statuses = p["status"].get("containerStatuses") or []
    return bool(statuses) and statuses[0].get("restartCount", 0) > before and "running" in statuses[0].get("state", {})


def container_log(pm: PrivateCluster, kube: KubeClient, ns: str, pod: str, run: int) -> str:
    """The log of one run of the pod's Ray worker container (process mode keeps one file per run)."""
    uid = kube.get(f"/api/v1/namespaces/{ns}/pods/{pod}")["metadata"]["uid"]
    path = pm.state_dir / "nodeagent" / "pods" / uid / "logs" / "ray-worker" / f"{run}.log"
    return path.read_text()[-3000:] if path.exists() else f"(no {path})"


def test_a_worker_drained_from_outside_never_rejoins_and_a_crashed_one_does(pm: PrivateCluster, kube: KubeClient,
                                                                            namespace: str, tmp_path: Path) -> None:
    from tests.e2e.test_ray_process_mode import container_pid

    op = OperatorProcess(pm, [namespace], tmp_path / "operator.log", extra_args=["--drain-timeout", "60"])
    op.start()
    try:
        ray = {
            "apiVersion": "ray.k8s.io/v1alpha1", "kind": "Ray", "metadata": {"name": "guard", "namespace": namespace},
            "spec": {"autoScalingMode": "disabled", "minWorkers": 3, "maxWorkers": 3, "initialWorkers": 3,
                     "headRayStartParams": {**SMALL, "num-cpus": "0"}, "workerRayStartParams": dict(SMALL)},
        }
        kube.create(rays_path(namespace), ray)
        wait_until(lambda: condition(kube.get(rays_path(namespace, "guard")), "Ready").get("status") == "True", 300,
                   interval=2, message="Ray guard Ready")
        workers = sorted(worker_pods(kube, namespace, "guard"), key=lambda p: p["metadata"]["name"])
        ips = {p["metadata"]["name"]: p["status"]["podIP"] for p in workers}
        nodes = wait_until(lambda: (n := alive_nodes(pm, kube, namespace, "guard")) and len(n) == 4 and n, 120,
                           interval=2, message="head + 3 workers alive in Ray")
        by_ip = {ip: node for node, ip in nodes.items()}
        idle_drained, autoscaler_drained, crashed = (p["metadata"]["name"] for p in workers)
        before = {pod: restarts(kube, namespace, pod) for pod in ips}
        address = f"guard-head.{namespace}.svc.cluster.local:6379"

        # 1. Drained from outside, as Ray's autoscalers do: `ray drain-node` (an idle termination, what autoscaler v2
        #    and users send) and the v1 autoscaler's own call (GcsClient.drain_nodes, what StandardAutoscaler sends
        #    before it asks the node provider to terminate the node).
        out = head_exec(pm, kube, namespace, "guard", "ray", "drain-node", "--address", address, "--node-id",
                        by_ip[ips[idle_drained]], "--reason", "DRAIN_NODE_REASON_IDLE_TERMINATION",
                        "--reason-message", "idle: drained from outside")
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
        v1 = ("import sys; from ray._raylet import GcsClient; "
              "print('DRAINED', GcsClient(address=sys.argv[1]).drain_nodes([bytes.fromhex(sys.argv[2])], timeout=5))")
        out = head_exec(pm, kube, namespace, "guard", "python", "-c", v1, address, by_ip[ips[autoscaler_drained]])
        assert out.returncode == 0 and "DRAINED [b" in out.stdout, out.stdout[-2000:] + out.stderr[-2000:]
        left = sorted(ip for ip in nodes.values() if ip not in (ips[idle_drained], ips[autoscaler_drained]))
        wait_until(lambda: sorted(alive_nodes(pm, kube, namespace, "guard").values()) == left, 120, interval=2,
                   message="the drained raylets gone from Ray")
        # The raylet exits after its drain, but `ray start --block` (the container's process) stays; its dashboard
        # agent went with the raylet, so the liveness probe fails and the kubelet stops and restarts the container
        # (after 30 s + 120 x 5 s). Do now what the kubelet does then: SIGTERM to the container's process.
        for pod in (idle_drained, autoscaler_drained):
            assert restarts(kube, namespace, pod) == before[pod]
            os.kill(container_pid(pm, kube.get(f"/api/v1/namespaces/{namespace}/pods/{pod}"), "ray-worker"),
                    signal.SIGTERM)
        for pod in (idle_drained, autoscaler_drained):  # the container restarts in the same pod
            wait_until(lambda pod=pod: running_again(kube, namespace, pod, before[pod]), 180, interval=1,
                       message=f"{pod}'s container restarted")
        time.sleep(5)
        for pod in (idle_drained, autoscaler_drained):
            print(f"{pod} after its restart:\n{container_log(pm, kube, namespace, pod, before[pod] + 1)}")
        # The drained nodes do not come back: Ray keeps head + the one worker left, well after the restarts, and the
        # pods stay (idle, not Ready) until someone deletes them.
        watch_until = time.monotonic() + 45
        while time.monotonic() < watch_until:  # time enough for a restarted raylet to register, many times over
            after = alive_nodes(pm, kube, namespace, "guard")
            assert sorted(after.values()) == left, (after, ips)
            time.sleep(2)
        for pod in (idle_drained, autoscaler_drained):
            p = kube.get(f"/api/v1/namespaces/{namespace}/pods/{pod}")
            assert p["status"]["phase"] == "Running" and not p["metadata"].get("deletionTimestamp")
            assert restarts(kube, namespace, pod) == before[pod] + 1  # idles; no crash loop
            assert not ready(p)
        markers = {}
        for pod in (idle_drained, autoscaler_drained):
            marker = wait_until(lambda pod=pod: (r := pm.script(
                "exec", pod, "-n", namespace, "-c", "ray-worker", "--", "cat", "/dev/shm/rayop-drained",
                check=False, timeout=60)).returncode == 0 and r.stdout.strip(), 60, interval=1,
                message=f"{pod}'s restart guard leaves the drained marker")
            markers[pod] = marker
        print(f"markers: {markers}")
        assert "AUTOSCALER_DRAIN_IDLE" in markers[idle_drained], markers
        assert "EXPECTED_TERMINATION: Terminated by autoscaler." in markers[autoscaler_drained], markers

        # 2. The third worker's processes killed (a crash, as an OOM kill): the container restarts and its Ray node
        #    rejoins, a new node under the same pod IP.
        crashed_pod = kube.get(f"/api/v1/namespaces/{namespace}/pods/{crashed}")
        os.killpg(container_pid(pm, crashed_pod, "ray-worker"), signal.SIGKILL)
        wait_until(lambda: running_again(kube, namespace, crashed, before[crashed]), 180, interval=1,
                   message=f"{crashed}'s container restarted after the kill")
        rejoined = wait_until(lambda: (n := alive_nodes(pm, kube, namespace, "guard")) and ips[crashed] in
                              n.values() and by_ip[ips[crashed]] not in n and n, 240, interval=3,
                              message=f"{crashed}'s Ray node rejoined after the kill")
        assert len(rejoined) == 2, rejoined
        # 3. Its container stopped by SIGTERM (what the kubelet sends after a failed liveness probe; `ray start`
        #    then drains its own node as a preemption): a restart, not a drain — it rejoins again.
        node_before = next(node for node, ip in rejoined.items() if ip == ips[crashed])
        crashed_pod = kube.get(f"/api/v1/namespaces/{namespace}/pods/{crashed}")
        os.kill(container_pid(pm, crashed_pod, "ray-worker"), signal.SIGTERM)
        wait_until(lambda: running_again(kube, namespace, crashed, before[crashed] + 1), 180, interval=1,
                   message=f"{crashed}'s container restarted after SIGTERM")
        again = wait_until(lambda: (n := alive_nodes(pm, kube, namespace, "guard")) and ips[crashed] in
                           n.values() and node_before not in n and n, 240, interval=3,
                           message=f"{crashed}'s Ray node rejoined after SIGTERM")
        assert len(again) == 2, again
        assert pm.script("exec", crashed, "-n", namespace, "-c", "ray-worker", "--", "test", "-e",
                         "/dev/shm/rayop-drained", check=False, timeout=60).returncode != 0
    finally:
        op.stop()
    assert "Traceback" not in op.log(), op.log()[-5000:]


def test_suspend_and_resume_a_live_ray(pm: PrivateCluster, kube: KubeClient, namespace: str, tmp_path: Path) -> None:
    drain_deadline = 120
    op = OperatorProcess(pm, [namespace], tmp_path / "operator.log",
                         extra_args=["--drain-timeout", str(drain_deadline)])
    op.start()
    try:
        ray = {
            "apiVersion": "ray.k8s.io/v1alpha1", "kind": "Ray", "metadata": {"name": "pause", "namespace": namespace},
            "spec": {"autoScalingMode": "disabled", "minWorkers": 2, "maxWorkers": 2, "initialWorkers": 2,
                     "headRayStartParams": {**SMALL, "num-cpus": "0"}, "workerRayStartParams": dict(SMALL)},
        }
        kube.create(rays_path(namespace), ray)
        before = wait_until(lambda: (r := kube.get(rays_path(namespace, "pause"))) and
                            condition(r, "Ready").get("status") == "True" and r, 300, interval=2,
                            message="Ray pause Ready")
        workers_before = before["status"]["worker"]["readyReplicas"]
        assert workers_before == 2
        nodes_before = wait_until(lambda: (n := alive_nodes(pm, kube, namespace, "pause")) and len(n) == 3 and n,
                                  120, interval=2, message="head + 2 workers alive in Ray")

        def pods() -> list[dict[str, Any]]:
            return kube.get(f"/api/v1/namespaces/{namespace}/pods", labelSelector="ray.k8s.io/cluster=pause")["items"]

        kube.patch(rays_path(namespace, "pause"), {"spec": {"suspend": True}})
        t0 = time.monotonic()
        wait_until(lambda: not pods(), drain_deadline, interval=1, message="every pod gone within one drain deadline")
        print(f"suspended: every pod gone in {time.monotonic() - t0:.0f}s (drain deadline {drain_deadline}s)")
        suspended = wait_until(lambda: (r := kube.get(rays_path(namespace, "pause"))) and
                               condition(r, "Suspended").get("status") == "True" and
                               condition(r, "Suspended").get("message") == "no pod runs" and r, 60, interval=1,
                               message="Suspended")
        assert condition(suspended, "Ready").get("status") == "False"
        assert condition(suspended, "Ready").get("reason") == "Suspended"
        time.sleep(5)
        assert not pods()  # nothing comes back while suspended

        kube.patch(rays_path(namespace, "pause"), {"spec": {"suspend": False}})
        t0 = time.monotonic()
        resumed = wait_until(lambda: (r := kube.get(rays_path(namespace, "pause"))) and
                             condition(r, "Ready").get("status") == "True" and r, 300, interval=2,
                             message="Ready after resume")
        print(f"resumed: Ready {time.monotonic() - t0:.0f}s after the resume")
        assert resumed["status"]["worker"]["readyReplicas"] == workers_before
        assert (condition(resumed, "Suspended").get("status"), condition(resumed, "Suspended").get("reason")) == \
            ("False", "Resumed")
        # A driver on the new head sees head + the same number of workers alive, on the new worker pods.
        nodes = wait_until(lambda: (n := alive_nodes(pm, kube, namespace, "pause")) and len(n) == 3 and n, 120,
                           interval=2, message="head + 2 workers alive in Ray after resume")
        worker_ips = {p["status"]["podIP"] for p in worker_pods(kube, namespace, "pause")}
        assert worker_ips <= set(nodes.values()) and len(worker_ips) == workers_before, (nodes, worker_ips)
        assert not set(nodes) & set(nodes_before)  # a new Ray: every node is new
    finally:
        op.stop()
    assert "Traceback" not in op.log(), op.log()[-5000:]
