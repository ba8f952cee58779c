"""Acceptance: Ray's own autoscaler, driven by rayop's node provider, scales a `Ray` on the real API server.

Real Ray processes run on this machine (a head and at most two workers, each on its own loopback address so that
Ray's nodes have distinct IPs); the sidecar program `rayop_monitor.py` runs Ray's v1 `Monitor` as a subprocess,
talking to the local API server with the admin credentials (RAYOP_API_* environment). The test plays the operator:
it creates the pods (bound to a node of its own that nothing runs, their status set through /status to match the
Ray processes), starts and stops Ray workers, and deletes the pods the autoscaler names.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml

from rayop.api.convert import effective_cluster
from rayop.autoscaler import build_autoscaler_config, parse_launch_summary
from rayop.runtime.kube import ApiError, KubeClient
from tests.support.cluster import LocalCluster, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_crd")]  # the `Ray` CRD from manifests/ is served

REPO = Path(__file__).resolve().parents[2]
INPOD = REPO / "controller" / "inpod"
# The Python (and so the Ray version) that runs the Ray nodes, the sidecar, the launcher and the driver: this venv's
# by default; point RAYOP_TEST_RAY_PYTHON at another venv's python to check the in-pod programs with another Ray.
RAY_PYTHON = os.environ.get("RAYOP_TEST_RAY_PYTHON") or sys.executable
RAY_BIN = str(Path(RAY_PYTHON).parent / "ray")
OBJECT_STORE_BYTES = "80000000"
MINIMAL_CONFIG = {
    "cluster_name": "probe", "max_workers": 0, "provider": {"type": "external", "module": "x.Y"},
    "available_node_types": {"head": {"resources": {}, "node_config": {}, "max_workers": 0}},
    "head_node_type": "head", "cluster_synced_files": [], "file_mounts": {},
}


# -- helpers: Ray processes on loopback addresses, pods on a node nothing runs -------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        port: int = s.getsockname()[1]
        return port


def now_rfc3339() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class LocalRay:
    """Ray nodes on this machine, one loopback address each, started one at a time, stopped by process group."""

    temp_dir: str
    prefix: str
    hosts: int = 1
    address: str = ""
    nodes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    others: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[Any] = field(default_factory=list)

    @classmethod
    def create(cls) -> LocalRay:
        temp_dir = tempfile.mkdtemp(prefix="rr", dir="/tmp")
        return cls(temp_dir=temp_dir, prefix=f"127.{random.randint(100, 250)}.{random.randint(1, 250)}.")

    def _next_ip(self) -> str:
        self.hosts += 1
        return f"{self.prefix}{self.hosts}"

    def spawn(self, cmd: list[str], env: dict[str, str] | None = None, log: Path | None = None) -> subprocess.Popen[bytes]:
        out = open(log or os.devnull, "wb")
        self.logs.append(out)
        full_env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_enable_autoscaler_v2": "0", **(env or {})}
        proc = subprocess.Popen(cmd, env=full_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.others.append(proc)
        return proc

    def _start_node(self, ip: str, args: list[str], timeout: float = 90) -> None:
        log = Path(self.temp_dir) / f"start-{ip}.log"
        proc = self.spawn(
            [RAY_BIN, "start", "--block", "--node-ip-address", ip, "--object-store-memory", OBJECT_STORE_BYTES,
             "--dashboard-agent-listen-port", str(free_port()), "--temp-dir", self.temp_dir,
             "--disable-usage-stats", *args],
            log=log,
        )
        self.others.remove(proc)
        self.nodes[ip] = proc
        expected_nodes = len(self.nodes)
        probe = Path(self.temp_dir) / "probe.json"
        probe.write_text(json.dumps(MINIMAL_CONFIG))

        def joined() -> bool:
            # Asked through the launcher itself, in the Ray version under test.
            assert proc.poll() is None, log.read_text()[-3000:]
            result = subprocess.run(
                [RAY_PYTHON, str(INPOD / "rayop_launcher.py"), "--config", str(probe), "--address", self.address,
                 "--expect-workers", str(expected_nodes - 1), "--timeout", "10", "--poll", "0.5",
                 "--termination-log", os.devnull],
                capture_output=True, text=True, timeout=60,
            )
            lines = result.stdout.strip().splitlines()
            return bool(lines) and result.returncode == 0 and json.loads(lines[-1]).get("nodes") == expected_nodes

        wait_until(joined, timeout, 0.5, message=f"Ray node {ip} to join")

    def start_head(self) -> str:
        ip = self._next_ip()
        port = free_port()
        self.address = f"{ip}:{port}"
        self._start_node(ip, ["--head", "--port", str(port), "--num-cpus", "0", "--no-monitor",
                              "--include-dashboard", "false", "--dashboard-port", str(free_port())])
        return ip

    def start_worker(self, num_cpus: int) -> str:
        ip = self._next_ip()
        self._start_node(ip, ["--address", self.address, "--num-cpus", str(num_cpus)])
        return ip

    def stop_worker(self, ip: str) -> None:
        _stop_group(self.nodes.pop(ip))

    def stop(self) -> None:
        for proc in [*self.others, *reversed(self.nodes.values())]:
            _stop_group(proc)
        self.nodes.clear()
        self.others.clear()
        _kill_leftovers(self.temp_dir)
        for out in self.logs:
            out.close()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        # The leader is gone; its group may live on briefly.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        break


def _kill_leftovers(temp_dir: str) -> None:
    """Kill processes of ours that escaped their group: those whose command line names our temp dir."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if temp_dir.encode() in cmdline:
            try:
                os.kill(int(entry.name), signal.SIGKILL)
            except ProcessLookupError:
                pass


@dataclass
class FakeNode:
    """A Node object no agent runs: pods bound to it keep the status the test writes. A heartbeat keeps it Ready so
    the node lifecycle controller neither taints it nor marks its pods not ready."""

    kube: KubeClient
    name: str
    stop_event: threading.Event = field(default_factory=threading.Event)

    @classmethod
    def create(cls, kube: KubeClient) -> FakeNode:
        name = f"rayop-fake-{uuid.uuid4().hex[:8]}"
        kube.create("/api/v1/nodes", {"metadata": {"name": name, "labels": {"rayop.dev/test": "true"}}})
        node = cls(kube, name)
        node.heartbeat()
        threading.Thread(target=node._beat, daemon=True).start()
        return node

    def heartbeat(self) -> None:
        now = now_rfc3339()
        ready = {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "test node",
                 "lastHeartbeatTime": now, "lastTransitionTime": now}
        self.kube.patch(f"/api/v1/nodes/{self.name}/status", {"status": {"conditions": [ready]}})

    def _beat(self) -> None:
        while not self.stop_event.wait(5):
            try:
                self.heartbeat()
            except Exception:
                pass

    def delete(self) -> None:
        """Force-delete the pods bound to the node (no kubelet will confirm a graceful deletion), then the node."""
        self.stop_event.set()
        pods = self.kube.get("/api/v1/pods", fieldSelector=f"spec.nodeName={self.name}")
        for pod in pods["items"]:
            meta = pod["metadata"]
            try:
                self.kube.delete(f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}", gracePeriodSeconds=0)
            except ApiError as e:
                if not e.not_found:
                    raise
        try:
            self.kube.delete(f"/api/v1/nodes/{self.name}")
        except ApiError as e:
            if not e.not_found:
                raise


def make_pod(kube: KubeClient, namespace: str, cluster: str, name: str, kind: str, group: str, node: str) -> dict[str, Any]:
    tolerations = [{"key": key, "operator": "Exists", "effect": "NoExecute"}
                   for key in ("node.kubernetes.io/unreachable", "node.kubernetes.io/not-ready")]
    pod: dict[str, Any] = kube.create(f"/api/v1/namespaces/{namespace}/pods", {
        "metadata": {"name": name, "labels": {"ray.k8s.io/cluster": cluster, "ray.k8s.io/node-kind": kind,
                                              "ray.k8s.io/group": group}},
        "spec": {"nodeName": node, "tolerations": tolerations,
                 "containers": [{"name": "ray", "image": "rayproject/ray:2.60.0"}]},
    })
    return pod


def set_pod_running(kube: KubeClient, namespace: str, pod: dict[str, Any], ip: str, ready: bool = True) -> None:
    now = now_rfc3339()
    status = {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "hostIP": "127.0.0.1", "startTime": now,
              "conditions": [{"type": "Ready", "status": "True" if ready else "False", "lastTransitionTime": now}]}
    kube.patch(f"/api/v1/namespaces/{namespace}/pods/{pod['metadata']['name']}/status", {"status": status})


def kube_env(cluster: LocalCluster) -> dict[str, str]:
    """The provider's out-of-pod settings for the admin user of the local control plane."""
    config = yaml.safe_load(Path(cluster.kubeconfig).read_text())
    server = config["clusters"][0]["cluster"]
    user = config["users"][0]["user"]
    return {"RAYOP_API_SERVER": server["server"], "RAYOP_API_CA_FILE": server["certificate-authority"],
            "RAYOP_API_CLIENT_CERT": user["client-certificate"], "RAYOP_API_CLIENT_KEY": user["client-key"]}

RAYS = "/apis/ray.k8s.io/v1alpha1/namespaces/{ns}/rays"

CONFIGURATION = """
cluster_name: ignored
max_workers: 2
upscaling_speed: 1.0
idle_timeout_minutes: 0.1
available_node_types:
  head:
    resources: {CPU: 0}
    node_config: {}
    max_workers: 0
  worker:
    resources: {CPU: 1}
    node_config: {}
    min_workers: 0
    max_workers: 2
head_node_type: head
"""

DRIVER = """
import os, sys, time, ray
address, ip, flags = sys.argv[1], sys.argv[2], sys.argv[3]
ray.init(address=address, _node_ip_address=ip, logging_level="ERROR")

@ray.remote(num_cpus=1)
def hold(i):
    node_ip = ray.util.get_node_ip_address()
    with open(os.path.join(flags, f"running-{i}"), "w") as f:
        f.write(node_ip)
    while not os.path.exists(os.path.join(flags, f"release-{i}")):
        time.sleep(0.2)
    return node_ip

print(ray.get([hold.remote(0), hold.remote(1)]), flush=True)
"""


@pytest.fixture
def local_ray(tmp_path: Path) -> Iterator[LocalRay]:
    ray = LocalRay.create()
    try:
        yield ray
    finally:
        ray.stop()


@pytest.fixture
def fake_node(kube: KubeClient) -> Iterator[FakeNode]:
    node = FakeNode.create(kube)
    try:
        yield node
    finally:
        node.delete()


def _ray(kube: KubeClient, namespace: str, name: str) -> dict[str, Any]:
    result: dict[str, Any] = kube.get(f"{RAYS.format(ns=namespace)}/{name}")
    return result


def test_autoscaler_scales_up_on_demand_and_removes_only_idle_workers_by_name(
    cluster: LocalCluster, kube: KubeClient, namespace: str, local_ray: LocalRay, fake_node: FakeNode, tmp_path: Path
) -> None:
    name = "auto"
    ray_obj = kube.create(
        RAYS.format(ns=namespace),
        {
            "apiVersion": "ray.k8s.io/v1alpha1",
            "kind": "Ray",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"configuration": CONFIGURATION},
        },
    )
    model = effective_cluster(ray_obj).cluster
    config = build_autoscaler_config(model)
    assert config["idle_timeout_minutes"] == 0.1
    config_path = tmp_path / "autoscaler.yaml"
    config_path.write_text(yaml.safe_dump(config))

    # The head: a Ray head process and its pod.
    head_ip = local_ray.start_head()
    head_pod = make_pod(kube, namespace, name, f"{name}-head-abcde", "head", "head", fake_node.name)
    set_pod_running(kube, namespace, head_pod, head_ip)

    # The sidecar program, as the head pod runs it.
    monitor_log = tmp_path / "monitor.log"
    monitor = local_ray.spawn(
        [RAY_PYTHON, str(INPOD / "rayop_monitor.py"), "--config", str(config_path), "--address",
         local_ray.address, "--ray-temp-dir", local_ray.temp_dir],
        env={**kube_env(cluster), "AUTOSCALER_UPDATE_INTERVAL_S": "1", "PYTHONPATH": str(INPOD),
             "RAY_CLUSTER_NAME": name, "RAY_CLUSTER_NAMESPACE": namespace},
        log=monitor_log,
    )

    # Demand: two tasks of one CPU each; the head has none.
    flags = tmp_path / "flags"
    flags.mkdir()
    driver_path = tmp_path / "driver.py"
    driver_path.write_text(textwrap.dedent(DRIVER))
    driver = local_ray.spawn(
        [RAY_PYTHON, str(driver_path), local_ray.address, head_ip, str(flags)], log=tmp_path / "driver.log"
    )

    def desired() -> dict[str, int]:
        return dict(_ray(kube, namespace, name)["spec"].get("desiredWorkers") or {})

    def to_delete() -> list[str]:
        return list(_ray(kube, namespace, name)["spec"].get("workersToDelete") or [])

    try:
        wait_until(lambda: desired().get("worker") == 2, 90, 0.5, message=f"desiredWorkers.worker == 2 ({monitor_log})")
        assert to_delete() == []

        # Act as the operator: two worker pods, each one Ray worker process.
        workers: dict[str, str] = {}  # ip -> pod name
        for suffix in ("w0001", "w0002"):
            pod_name = f"{name}-worker-{suffix}"
            pod = make_pod(kube, namespace, name, pod_name, "worker", "worker", fake_node.name)
            ip = local_ray.start_worker(num_cpus=1)
            set_pod_running(kube, namespace, pod, ip)
            workers[ip] = pod_name

        wait_until(lambda: (flags / "running-0").exists() and (flags / "running-1").exists(), 90, 0.5,
                   message="both tasks to run on the new workers")
        ip0 = (flags / "running-0").read_text()
        ip1 = (flags / "running-1").read_text()
        assert {ip0, ip1} == set(workers), "each task runs on its own new worker"

        # Task 0 ends: its worker goes idle; task 1 keeps the other busy.
        (flags / "release-0").touch()
        wait_until(lambda: to_delete() != [], 90, 0.5, message="the autoscaler to name an idle worker")
        assert to_delete() == [workers[ip0]]
        assert desired().get("worker") == 1
        # The busy worker is never named while the autoscaler waits for the operator.
        time.sleep(3)
        assert to_delete() == [workers[ip0]]

        # The operator deletes exactly the named pod; the provider then clears the list.
        kube.delete(f"/api/v1/namespaces/{namespace}/pods/{workers[ip0]}", gracePeriodSeconds=0)
        local_ray.stop_worker(ip0)
        wait_until(lambda: to_delete() == [], 60, 0.5, message="workersToDelete to be cleared")
        assert desired().get("worker") == 1

        # The last task ends: the second worker is removed by name too.
        (flags / "release-1").touch()
        wait_until(lambda: to_delete() == [workers[ip1]], 90, 0.5, message="the second idle worker to be named")
        assert desired().get("worker") == 0
        assert driver.wait(timeout=60) == 0
        assert monitor.poll() is None, "the monitor runs until stopped"
        log = monitor_log.read_text()
        for failure in ("Error during autoscaling", "Execution exception", "Error in monitor loop", "Error parsing config"):
            assert failure not in log, log[-4000:]
    finally:
        for proc in (driver, monitor):
            if proc.poll() is None:
                proc.terminate()


def test_launcher_reports_success_invalid_config_and_missing_workers(
    kube: KubeClient, namespace: str, local_ray: LocalRay, tmp_path: Path
) -> None:
    ray_obj = {"metadata": {"name": "launch", "namespace": namespace}, "spec": {"configuration": CONFIGURATION}}
    config = build_autoscaler_config(effective_cluster(ray_obj).cluster)
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(config))
    bad_config = json.loads(json.dumps(config))
    bad_config["max_workers"] = 0
    bad_config["available_node_types"]["worker"]["min_workers"] = 1
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(bad_config))

    def launcher(config_path: Path, address: str, expect: int, timeout: float) -> tuple[int, dict[str, Any], str]:
        log = tmp_path / "termination-log"
        proc = subprocess.run(
            [RAY_PYTHON, str(INPOD / "rayop_launcher.py"), "--config", str(config_path), "--address", address,
             "--expect-workers", str(expect), "--timeout", str(timeout), "--poll", "0.5",
             "--termination-log", str(log)],
            capture_output=True, text=True, timeout=timeout + 60,
        )
        lines = proc.stdout.strip().splitlines()
        assert lines, proc.stderr[-3000:]
        assert log.read_text() == lines[-1]
        return proc.returncode, json.loads(lines[-1]), lines[-1]

    # A config Ray rejects: reported with Ray's reason, before anything waits on the cluster.
    code, summary, line = launcher(bad, "127.0.0.1:1", 1, 5)
    assert (code, summary["succeeded"], summary["reason"]) == (2, False, "InvalidConfig")
    assert "max_workers" in summary["message"]
    outcome = parse_launch_summary(line, exit_code=code)
    assert (outcome.succeeded, outcome.reason) == (False, "InvalidConfig")

    # Nothing answers at the address.
    code, summary, _ = launcher(good, "127.0.0.1:1", 0, 3)
    assert (code, summary["reason"]) == (3, "HeadUnreachable")

    local_ray.start_head()
    # The head answers but the worker has not joined.
    code, summary, _ = launcher(good, local_ray.address, 1, 4)
    assert (code, summary["reason"], summary["workersJoined"]) == (4, "WorkersNotJoined", 0)

    local_ray.start_worker(num_cpus=1)
    code, summary, line = launcher(good, local_ray.address, 1, 60)
    assert (code, summary["succeeded"], summary["reason"]) == (0, True, "Launched")
    assert (summary["workersExpected"], summary["workersJoined"], summary["nodes"]) == (1, 1, 2)
    assert summary["resources"]["CPU"] == 1.0
    assert summary["rayVersion"]
    outcome = parse_launch_summary(line, exit_code=code)
    assert outcome.succeeded and outcome.workers_joined == 1


def test_fake_node_pods_keep_the_status_the_test_sets(
    kube: KubeClient, namespace: str, fake_node: FakeNode
) -> None:
    pod = make_pod(kube, namespace, "x", "x-worker-aaaaa", "worker", "worker", fake_node.name)
    set_pod_running(kube, namespace, pod, "127.0.113.9")
    time.sleep(2)
    got = kube.get(f"/api/v1/namespaces/{namespace}/pods/x-worker-aaaaa")
    assert got["status"]["podIP"] == "127.0.113.9"
    assert got["status"]["phase"] == "Running"
    with pytest.raises(ApiError):
        kube.get(f"/api/v1/namespaces/{namespace}/pods/missing")
