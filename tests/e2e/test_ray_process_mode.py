"""End to end with real Ray: the operator deployed from manifests/ into a process-mode control plane of the test's
own (`hack/local-cluster.sh up --process` in a temporary state folder), running real Ray heads, workers, the
autoscaler sidecar and the launcher pod as processes in their own network namespaces.

Proves (issue 7's acceptance):
- the operator runs in the cluster from manifests/ (namespace, CRD, RBAC, Deployment): the Deployment's `rayop run`
  is the repository's, it talks to the API server with its in-cluster config as its ServiceAccount (and is denied
  what its ClusterRole does not grant), holds the leader-election Lease, and its probes pass;
- each form of the `Ray` (Kubernetes style and `configuration`) brings up a real Ray head and workers; a driver in
  the head pod runs a task on every node; the launcher pod completes and `SuccessfulLaunch` is True;
- work beyond capacity makes Ray's autoscaler ask for a worker, the operator creates it, it joins and the work
  completes; after the idle timeout the autoscaler names idle workers and the operator removes exactly those;
- a killed worker process restarts and its Ray node rejoins; a killed head comes back, and the status shows the
  outage and the recovery;
- deleting a `Ray` leaves no pod, process, network namespace or mount behind.

The measured times are printed (run with `-s`) and, with RAYOP_E2E_TIMES=FILE, written there as JSON.
Deselect with `-m "not e2e"`. Needs root, iproute2 with working `ip netns`, nsenter and unshare.
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
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from rayop.objects import LABEL_CLUSTER, LABEL_ROLE
from rayop.runtime.kube import ApiError, KubeClient
from tests.support.cluster import (
    REPO,
    SCRIPT,
    PrivateCluster,
    delete_namespace,
    process_mode_unavailable,
    wait_until,
)
from tests.support.operator import rays_path

MANIFESTS = REPO / "manifests"
OPERATOR_NS = "rayop-system"
# Small Ray nodes: one CPU each, a 100 MB object store (the machine has 2 cores; a head takes ~670 MiB).
SMALL = {"num-cpus": "1", "object-store-memory": "100000000"}
TIMES: dict[str, float] = {}


UNAVAILABLE = process_mode_unavailable()
pytestmark = [pytest.mark.e2e, pytest.mark.slow,
              pytest.mark.skipif(UNAVAILABLE is not None, reason=f"process mode unavailable: {UNAVAILABLE}")]


def record(name: str, seconds: float) -> None:
    TIMES[name] = round(seconds, 1)
    print(f"e2e time: {name}: {seconds:.1f}s", flush=True)


# -- the machine: network namespaces, processes, mounts ----------------------------------------------------------


def netns_names() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.split()}


def netns_pids(name: str) -> set[int]:
    out = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True)
    return {int(x) for x in out.stdout.split()} if out.returncode == 0 else set()


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def mounts() -> str:
    return Path("/proc/mounts").read_text()


# -- the cluster ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pm() -> Iterator[PrivateCluster]:
    tmp = Path(tempfile.mkdtemp(prefix="rayop-e2e-"))
    t0 = time.monotonic()
    cluster = PrivateCluster.start(tmp / "cluster", "--process", "--nodes", "1")
    record("control plane up (process mode, 1 node)", time.monotonic() - t0)
    prefix = cluster.state()["netns_prefix"]
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(tmp, ignore_errors=True)
        left = [n for n in netns_names() if n.startswith(prefix)]
        report = os.environ.get("RAYOP_E2E_TIMES")
        if report:
            Path(report).write_text(json.dumps(TIMES, indent=2) + "\n")
        print("e2e times: " + json.dumps(TIMES), flush=True)
        assert not left, f"network namespaces left after down: {left}"


@pytest.fixture(scope="module")
def kube(pm: PrivateCluster) -> KubeClient:
    return pm.client()


def _get(kube: KubeClient, path: str) -> dict[str, Any] | None:
    try:
        return dict(kube.get(path))
    except ApiError as e:
        if e.not_found:
            return None
        raise


def is_ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions") or [])


@pytest.fixture(scope="module")
def operator_pod(pm: PrivateCluster, kube: KubeClient) -> Iterator[str]:
    """The operator, deployed into the cluster from manifests/ as a user would; yields its pod's name. It must run
    through every test without a restart (a lost token, a failed probe or a lost Lease would restart it)."""
    t0 = time.monotonic()
    for manifest in ("namespace.yaml", "crd.yaml", "rbac.yaml", "deployment.yaml"):
        pm.kubectl("apply", "--server-side", "-f", str(MANIFESTS / manifest))
        if manifest == "crd.yaml":
            pm.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/rays.ray.k8s.io")

    def ready_pod() -> str | None:
        items = kube.get(f"/api/v1/namespaces/{OPERATOR_NS}/pods",
                         labelSelector="app.kubernetes.io/name=rayop")["items"]
        ready = [p for p in items if is_ready(p) and not p["metadata"].get("deletionTimestamp")]
        return ready[0]["metadata"]["name"] if len(ready) == 1 and len(items) == 1 else None

    name: str = wait_until(ready_pod, 180, 0.5, message="the operator's pod Ready")
    record("operator deployed from manifests -> Ready", time.monotonic() - t0)
    yield name
    pod = kube.get(f"/api/v1/namespaces/{OPERATOR_NS}/pods/{name}")
    status = pod["status"]["containerStatuses"][0]
    assert status["restartCount"] == 0, (status, pm.kubectl("logs", "-n", OPERATOR_NS, name, "--previous",
                                                            check=False).stdout[-3000:])


@pytest.fixture
def namespace(request: pytest.FixtureRequest, kube: KubeClient, operator_pod: str) -> Iterator[str]:
    name = f"e2e-{request.node.name[5:25].lower().replace('_', '-').strip('-')}-{uuid.uuid4().hex[:4]}"
    kube.create("/api/v1/namespaces", {"metadata": {"name": name}})
    wait_until(lambda: _get(kube, f"/api/v1/namespaces/{name}/serviceaccounts/default"), 60,
               message="the default ServiceAccount")
    wait_until(lambda: _get(kube, f"/api/v1/namespaces/{name}/configmaps/kube-root-ca.crt"), 60,
               message="kube-root-ca.crt")
    yield name
    delete_namespace(kube, name)


# -- pods, exec, drivers -------------------------------------------------------------------------------------------


def cluster_pods(kube: KubeClient, ns: str, name: str, kind: str | None = None) -> list[dict[str, Any]]:
    selector = f"{LABEL_CLUSTER}={name}" + (f",{LABEL_ROLE}={kind}" if kind else "")
    return list(kube.get(f"/api/v1/namespaces/{ns}/pods", labelSelector=selector)["items"])


def live(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [p for p in items if not p["metadata"].get("deletionTimestamp")
            and p.get("status", {}).get("phase") not in ("Succeeded", "Failed")]


def head_pod(kube: KubeClient, ns: str, name: str) -> dict[str, Any]:
    (head,) = live(cluster_pods(kube, ns, name, "head"))
    return head


def pod_ips(kube: KubeClient, ns: str, name: str) -> list[str]:
    return sorted(p["status"]["podIP"] for p in live(cluster_pods(kube, ns, name))
                  if p["metadata"]["labels"].get(LABEL_ROLE) in ("head", "worker"))


def condition(ray: dict[str, Any] | None, kind: str) -> dict[str, Any]:
    for c in ((ray or {}).get("status") or {}).get("conditions") or []:
        if c["type"] == kind:
            return dict(c)
    return {}


def wait_ready(kube: KubeClient, ns: str, name: str, timeout: float = 420) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        ray = _get(kube, rays_path(ns, name))
        ok = ray and condition(ray, "Ready").get("status") == "True" \
            and ray["status"].get("observedGeneration") == ray["metadata"]["generation"]
        return ray if ok else None

    result: dict[str, Any] = wait_until(ready, timeout, 0.5, message=f"Ray {ns}/{name} Ready")
    return result


def ray_container(pod: dict[str, Any]) -> str:
    """The Ray container's name: ray-head/ray-worker, else the first container (the sidecar comes after it)."""
    names = [c["name"] for c in pod["spec"]["containers"]]
    return next((n for n in names if n in ("ray-head", "ray-worker")), names[0])


def container_pid(pm: PrivateCluster, pod: dict[str, Any], container: str) -> int:
    path = (pm.state_dir / "nodeagent" / "pods" / pod["metadata"]["uid"] / "containers" / container / "pid")
    return int(path.read_text())


def exec_in(pm: PrivateCluster, ns: str, pod: str, container: str, *cmd: str,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return pm.script("exec", pod, "-n", ns, "-c", container, "--", *cmd, check=False, timeout=timeout)


# Connects to the head's Ray (address 'auto': the pod's own /tmp/ray), waits until the alive Ray nodes are exactly
# the expected pod IPs, then runs one task pinned to each node and reports where each ran.
EVERY_NODE = """
import json, socket, sys, time
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
expected = sorted(sys.argv[1].split(","))
deadline = time.time() + float(sys.argv[2])
ray.init(address="auto", logging_level="ERROR")
while True:
    nodes = [n for n in ray.nodes() if n["Alive"]]
    ips = sorted(n["NodeManagerAddress"] for n in nodes)
    if ips == expected:
        break
    if time.time() > deadline:
        print(json.dumps({"error": "nodes", "alive": ips, "expected": expected}), flush=True)
        sys.exit(3)
    time.sleep(1)

@ray.remote(num_cpus=0)
def where():
    return {"ip": ray.util.get_node_ip_address(), "host": socket.gethostname(),
            "node": ray.get_runtime_context().get_node_id()}

refs = [where.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote()
        for n in nodes]
print(json.dumps({"alive": ips, "nodes": sorted(n["NodeID"] for n in nodes),
                  "ran": ray.get(refs, timeout=180)}), flush=True)
"""

# More CPU-bound tasks than the cluster has CPUs; reports (with timestamps) when they are submitted, each change of
# the alive Ray nodes, and when all are done.
LOAD = """
import json, socket, sys, time
import ray
tasks, seconds = int(sys.argv[1]), float(sys.argv[2])
ray.init(address="auto", logging_level="ERROR")

def emit(event, **kw):
    print(json.dumps({"event": event, "t": time.time(), **kw}), flush=True)

def alive():
    return sorted(n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"])

@ray.remote(num_cpus=1)
def busy(s):
    time.sleep(s)
    return socket.gethostname()

nodes = alive()
emit("submit", nodes=nodes)
refs = [busy.remote(seconds) for _ in range(tasks)]
pending = list(refs)
while pending:
    _, pending = ray.wait(pending, num_returns=len(pending), timeout=0.5)
    now = alive()
    if now != nodes:
        nodes = now
        emit("nodes", nodes=nodes)
emit("done", hosts=ray.get(refs), nodes=alive())
"""


def run_on_every_node(pm: PrivateCluster, kube: KubeClient, ns: str, name: str,
                      wait_nodes: float = 240) -> dict[str, Any]:
    head = head_pod(kube, ns, name)
    expected = pod_ips(kube, ns, name)
    out = exec_in(pm, ns, head["metadata"]["name"], ray_container(head), "python", "-c", EVERY_NODE, ",".join(expected),
                  str(wait_nodes), timeout=wait_nodes + 300)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    assert out.returncode == 0 and lines, f"driver failed ({out.returncode}): {out.stdout[-3000:]}{out.stderr[-3000:]}"
    result: dict[str, Any] = json.loads(lines[-1])
    pods = {p["status"]["podIP"]: p["metadata"]["name"] for p in live(cluster_pods(kube, ns, name))}
    # One task ran on each Ray node, and each Ray node is one of the cluster's pods (its IP and hostname).
    assert sorted(r["node"] for r in result["ran"]) == result["nodes"]
    assert sorted(r["ip"] for r in result["ran"]) == expected
    assert {r["ip"]: r["host"] for r in result["ran"]} == {ip: pods[ip] for ip in expected}
    return result


class Watcher:
    """Samples the Ray object and its worker pods every half second, in a thread."""

    def __init__(self, kube: KubeClient, ns: str, name: str):
        self.kube, self.ns, self.name = kube.clone(), ns, name
        self.samples: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Watcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(10)
        self.kube.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                ray = _get(self.kube, rays_path(self.ns, self.name)) or {}
                workers = live(cluster_pods(self.kube, self.ns, self.name, "worker"))
                ready = condition(ray, "Ready")
                self.samples.append({
                    "t": time.time(), "ready": ready.get("status"), "reason": ready.get("reason"),
                    "head_ready": condition(ray, "HeadReady").get("status"),
                    "to_delete": list((ray.get("spec") or {}).get("workersToDelete") or []),
                    "desired": dict((ray.get("spec") or {}).get("desiredWorkers") or {}),
                    "workers": sorted(p["metadata"]["name"] for p in workers),
                })
            except Exception:  # noqa: BLE001 - a sample lost to a loaded API server is retried
                pass
            self._stop.wait(0.5)


def delete_and_check_nothing_left(pm: PrivateCluster, kube: KubeClient, ns: str, name: str) -> None:
    """Delete the Ray; its pods, their processes, network namespaces, mounts and folders must all go."""
    state = pm.state()
    prefix, pods_dir = state["netns_prefix"], pm.state_dir / "nodeagent" / "pods"
    uids = [p["metadata"]["uid"] for p in cluster_pods(kube, ns, name)]
    assert uids
    netns = {prefix + uid[:8] for uid in uids} & netns_names()
    pids: set[int] = set()
    for n in netns:
        pids |= netns_pids(n)
    assert pids, "the Ray's pods should have processes before the deletion"
    t0 = time.monotonic()
    kube.delete(rays_path(ns, name))
    wait_until(lambda: _get(kube, rays_path(ns, name)) is None, 120, 0.5, message="the Ray object gone")
    wait_until(lambda: not cluster_pods(kube, ns, name), 240, 0.5, message="the Ray's pods gone")
    wait_until(lambda: not netns & netns_names(), 120, 0.5, message="the pods' network namespaces removed")
    wait_until(lambda: not [p for p in pids if alive(p)], 120, 0.5, message="the pods' processes gone")
    wait_until(lambda: not [u for u in uids if u in mounts() or f"rayop-{u[:8]}" in mounts()], 60, 0.5,
               message="the pods' mounts gone")
    wait_until(lambda: not [u for u in uids if (pods_dir / u).exists()], 60, 0.5, message="pod folders removed")
    record(f"{name}: delete -> every pod, process and namespace gone", time.monotonic() - t0)
    for kind in ("/api/v1/namespaces/{ns}/services", "/api/v1/namespaces/{ns}/configmaps",
                 "/apis/batch/v1/namespaces/{ns}/jobs", "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles"):
        path = kind.format(ns=ns)
        wait_until(lambda: not kube.get(path, labelSelector=f"{LABEL_CLUSTER}={name}")["items"], 120, 0.5,
                   message=f"no {path.rsplit('/', 1)[1]} of {name} left")


def create_and_wait_ready(pm: PrivateCluster, kube: KubeClient, ray: dict[str, Any]) -> dict[str, Any]:
    ns, name = ray["metadata"]["namespace"], ray["metadata"]["name"]
    t0 = time.monotonic()
    kube.create(rays_path(ns), ray)
    ready = wait_ready(kube, ns, name)
    record(f"{name}: apply -> Ready", time.monotonic() - t0)
    # The launcher pod completes (it waited for the head's GCS and the initial workers in Ray) -> SuccessfulLaunch.
    launched = wait_until(lambda: (r := _get(kube, rays_path(ns, name))) and
                          condition(r, "SuccessfulLaunch").get("status") == "True" and r, 300, 0.5,
                          message="SuccessfulLaunch True")
    record(f"{name}: apply -> SuccessfulLaunch", time.monotonic() - t0)
    assert condition(launched, "SuccessfulLaunch")["reason"] == "Launched"
    launchers = kube.get(f"/api/v1/namespaces/{ns}/pods",
                         labelSelector=f"{LABEL_CLUSTER}={name},ray.k8s.io/node-kind=launcher")["items"]
    assert [p["status"]["phase"] for p in launchers] == ["Succeeded"], launchers
    assert launchers[0]["metadata"]["name"] in condition(launched, "SuccessfulLaunch")["message"]
    assert not kube.get(f"/apis/batch/v1/namespaces/{ns}/jobs", labelSelector=f"{LABEL_CLUSTER}={name}")["items"]
    return ready


# -- the tests -----------------------------------------------------------------------------------------------------


def test_operator_runs_in_the_cluster_from_manifests(pm: PrivateCluster, kube: KubeClient,
                                                      operator_pod: str) -> None:
    pod = kube.get(f"/api/v1/namespaces/{OPERATOR_NS}/pods/{operator_pod}")
    (container,) = pod["spec"]["containers"]
    assert container["command"] == ["rayop", "run"] and "--leader-elect" in container["args"]
    assert pod["spec"]["serviceAccountName"] == "rayop"
    # The node agent ran the Deployment's command with the repository's virtualenv first on PATH.
    which = exec_in(pm, OPERATOR_NS, operator_pod, "rayop", "sh", "-c", "command -v rayop")
    assert which.stdout.strip() == str(REPO / ".venv" / "bin" / "rayop"), which
    pid = container_pid(pm, pod, "rayop")
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    assert argv[1].endswith("/rayop") and argv[2:5] == ["run", "--leader-elect", "--metrics-bind-address=:8080"]
    env = dict(e.split("=", 1) for e in Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0") if "=" in e)
    assert "KUBECONFIG" not in env and env["KUBERNETES_SERVICE_HOST"] == pm.state()["gateway"]
    assert env["POD_NAMESPACE"] == OPERATOR_NS

    # Its in-cluster config authenticates as its ServiceAccount, with what rbac.yaml grants and nothing more.
    probe = exec_in(pm, OPERATOR_NS, operator_pod, "rayop", "python", "-c", """
import json
from rayop.runtime.kube import ApiError, KubeClient
kube = KubeClient.load()
me = kube.create("/apis/authentication.k8s.io/v1/selfsubjectreviews",
                 {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
def code(path):
    try:
        kube.get(path)
        return 200
    except ApiError as e:
        return e.status
print(json.dumps({"user": me["status"]["userInfo"]["username"], "rays": code("/apis/ray.k8s.io/v1alpha1/rays"),
                  "pods": code("/api/v1/pods"), "secrets": code("/api/v1/secrets"),
                  "nodes": code("/api/v1/nodes")}))
""")
    got = json.loads(probe.stdout.strip().splitlines()[-1])
    assert got == {"user": f"system:serviceaccount:{OPERATOR_NS}:rayop", "rays": 200, "pods": 200,
                   "secrets": 403, "nodes": 403}, probe

    # Leader election: it holds the Lease in its namespace.
    lease = wait_until(lambda: _get(kube, f"/apis/coordination.k8s.io/v1/namespaces/{OPERATOR_NS}/leases/rayop-leader"),
                       60, message="the leader Lease")
    assert lease["spec"]["holderIdentity"].startswith(operator_pod)

    # Probes: Ready through /readyz, alive through /healthz (no restarts), both served on the pod's IP.
    ip = pod["status"]["podIP"]
    for path in ("/healthz", "/readyz"):
        with urllib.request.urlopen(f"http://{ip}:8080{path}", timeout=10) as response:
            assert response.status == 200
    with urllib.request.urlopen(f"http://{ip}:8080/metrics", timeout=10) as response:
        assert b"rayop" in response.read()
    time.sleep(12)  # past the liveness probe's initial delay and a period
    pod = kube.get(f"/api/v1/namespaces/{OPERATOR_NS}/pods/{operator_pod}")
    assert is_ready(pod) and pod["status"]["containerStatuses"][0]["restartCount"] == 0
    logs = pm.kubectl("logs", "-n", OPERATOR_NS, operator_pod).stdout
    assert "acquired lease" in logs and "Traceback" not in logs


def structured(ns: str) -> dict[str, Any]:
    return {
        "apiVersion": "ray.k8s.io/v1alpha1", "kind": "Ray", "metadata": {"name": "kstyle", "namespace": ns},
        "spec": {"minWorkers": 2, "maxWorkers": 3, "initialWorkers": 2, "autoScalingMode": "default",
                 "idleTimeoutMinutes": 1, "headRayStartParams": SMALL, "workerRayStartParams": SMALL},
    }


def test_kubernetes_style_ray_runs_tasks_on_every_node_and_survives_killed_processes(
        pm: PrivateCluster, kube: KubeClient, namespace: str) -> None:
    ns, name = namespace, "kstyle"
    ready = create_and_wait_ready(pm, kube, structured(ns))
    assert ready["status"]["head"]["readyReplicas"] == 1 and ready["status"]["worker"]["readyReplicas"] == 2
    result = run_on_every_node(pm, kube, ns, name)
    assert len(result["alive"]) == 3

    # A worker's processes killed (as an OOM kill of its container would): the container restarts in the same pod
    # and its Ray node rejoins.
    worker = live(cluster_pods(kube, ns, name, "worker"))[0]
    wname = worker["metadata"]["name"]
    restarts = worker["status"]["containerStatuses"][0]["restartCount"]
    t0 = time.monotonic()
    os.killpg(container_pid(pm, worker, ray_container(worker)), signal.SIGKILL)

    def worker_back() -> bool:
        p = _get(kube, f"/api/v1/namespaces/{ns}/pods/{wname}")
        return bool(p and is_ready(p) and p["status"]["containerStatuses"][0]["restartCount"] > restarts)

    wait_until(worker_back, 240, 0.5, message=f"worker {wname} restarted and Ready")
    after = run_on_every_node(pm, kube, ns, name)
    record(f"{name}: worker killed -> its Ray node rejoined", time.monotonic() - t0)
    old_node = next(r["node"] for r in result["ran"] if r["host"] == wname)
    new_node = next(r["node"] for r in after["ran"] if r["host"] == wname)
    assert len(after["alive"]) == 3 and new_node != old_node  # a new raylet, registered under the same pod IP

    # The head's processes killed: the status shows the outage, then the recovery; every worker rejoins.
    head = head_pod(kube, ns, name)
    with Watcher(kube, ns, name) as watch:
        time.sleep(1.5)
        t0 = time.monotonic()
        killed_at = time.time()
        os.killpg(container_pid(pm, head, ray_container(head)), signal.SIGKILL)
        wait_until(lambda: any(s["t"] > killed_at and s["ready"] == "False" for s in watch.samples), 120, 0.5,
                   message="the status showing the outage")
        wait_until(lambda: any(s["t"] > killed_at and s["ready"] == "False" for s in watch.samples)
                   and watch.samples[-1]["ready"] == "True", 300, 0.5, message="Ready again")
        record(f"{name}: head killed -> Ready again", time.monotonic() - t0)
        final = run_on_every_node(pm, kube, ns, name, wait_nodes=300)
        record(f"{name}: head killed -> every Ray node back", time.monotonic() - t0)
        wait_ready(kube, ns, name)
    outage = [s for s in watch.samples if s["t"] > killed_at and s["ready"] == "False"]
    assert outage and outage[0]["reason"] == "HeadNotReady" and outage[0]["head_ready"] == "False"
    assert len(final["alive"]) == 3
    head_after = kube.get(f"/api/v1/namespaces/{ns}/pods/{head['metadata']['name']}")
    assert {c["name"]: c["restartCount"] for c in head_after["status"]["containerStatuses"]}["ray-head"] >= 1
    delete_and_check_nothing_left(pm, kube, ns, name)


CONFIGURATION = """\
cluster_name: config
min_workers: 1
max_workers: 2
initial_workers: 1
autoscaling_mode: default
idle_timeout_minutes: 0.25
provider:
    type: kubernetes
head_node:
    apiVersion: v1
    kind: Pod
    spec:
        containers:
        - name: ray-node
          image: rayproject/ray:2.60.0
          resources:
              limits: {cpu: 1, memory: 2Gi}
worker_nodes:
    apiVersion: v1
    kind: Pod
    spec:
        containers:
        - name: ray-node
          image: rayproject/ray:2.60.0
          resources:
              limits: {cpu: 1, memory: 2Gi}
head_start_ray_commands:
    - ray stop
    - ray start --head --port=6379 --num-cpus=1 --object-store-memory=100000000
worker_start_ray_commands:
    - ray stop
    - ray start --num-cpus=1 --object-store-memory=100000000
"""


def test_configuration_ray_runs_tasks_and_autoscales_up_and_down(pm: PrivateCluster, kube: KubeClient,
                                                                   namespace: str) -> None:
    ns, name = namespace, "config"
    ray = {"apiVersion": "ray.k8s.io/v1alpha1", "kind": "Ray", "metadata": {"name": name, "namespace": ns},
           "spec": {"configuration": CONFIGURATION}}
    ready = create_and_wait_ready(pm, kube, ray)
    assert condition(ready, "ConfigurationValid")["status"] == "True"
    config = yaml.safe_load(kube.get(f"/api/v1/namespaces/{ns}/configmaps/{name}-ray")["data"]["autoscaler.yaml"])
    assert config["idle_timeout_minutes"] == 0.25
    result = run_on_every_node(pm, kube, ns, name)
    assert len(result["alive"]) == 2
    first = [p["metadata"]["name"] for p in live(cluster_pods(kube, ns, name, "worker"))]
    assert len(first) == 1

    # Three one-CPU tasks on two CPUs: Ray's autoscaler asks for a worker, the operator creates it, it joins.
    head = head_pod(kube, ns, name)["metadata"]["name"]
    env = dict(os.environ, RAYOP_CLUSTER_DIR=str(pm.state_dir))
    with Watcher(kube, ns, name) as watch:
        load = subprocess.Popen([str(SCRIPT), "exec", head, "-n", ns, "--", "python", "-c", LOAD,
                                 "3", "30"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out, err = load.communicate(timeout=600)
        finally:
            if load.poll() is None:
                load.kill()
        events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        assert load.returncode == 0 and events and events[-1]["event"] == "done", out[-3000:] + err[-3000:]
        submit = events[0]
        grown = next(e for e in events if e["event"] == "nodes" and len(e["nodes"]) == 3)
        record(f"{name}: demand -> new worker joined Ray", grown["t"] - submit["t"])
        scaled = next(s for s in watch.samples if s["desired"].get("worker") == 2)
        record(f"{name}: demand -> autoscaler's scale request", scaled["t"] - submit["t"])
        done = events[-1]
        assert len(done["hosts"]) == 3 and len(set(done["hosts"])) >= 2
        grown_pods = next(s["workers"] for s in watch.samples if len(s["workers"]) == 2)
        assert len(set(grown_pods) - set(first)) == 1 and len(done["nodes"]) == 3

        # Idle: after the idle timeout the autoscaler names an idle worker; the operator deletes exactly that pod.
        removed = wait_until(lambda: next((s for s in watch.samples if s["t"] > done["t"]
                                           and len(s["workers"]) == 1 and not s["to_delete"]), None),
                             300, 0.5, message="an idle worker removed")
        record(f"{name}: work done -> idle worker removed (idle timeout 15 s)", removed["t"] - done["t"])
        time.sleep(20)  # one more idle timeout: the last worker (min_workers 1) stays
    named = {n for s in watch.samples for n in s["to_delete"]}
    gone = set(grown_pods) - set(removed["workers"])
    assert len(named) == 1 and gone == named, (named, gone, grown_pods)
    assert watch.samples[-1]["workers"] == removed["workers"] and len(removed["workers"]) == 1
    assert all(set(s["workers"]) <= set(grown_pods) for s in watch.samples), "no other worker pod was created"
    final = run_on_every_node(pm, kube, ns, name)
    assert len(final["alive"]) == 2
    wait_ready(kube, ns, name)
    delete_and_check_nothing_left(pm, kube, ns, name)
