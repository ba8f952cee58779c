"""Process mode of the node agent, end to end with plain pods: real processes in their own network and mount
namespaces on a private control plane (`hack/local-cluster.sh up --process` in a temporary state folder).

Proves: a pod gets its own IP, its service-account token and CA at the usual path, reaches the API server through
KUBERNETES_SERVICE_HOST and lists pods as its RBAC allows; ConfigMap volumes and downward-API env; two pods talk
through a Service name; a crashing container restarts with its exit code in status; `kubectl logs` (current,
previous, tail) and `hack/local-cluster.sh exec`; deleting pods and bringing the control plane down leaves no
process, network namespace, mount or link behind.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rayop.runtime.kube import ApiError, KubeClient
from tests.support.cluster import PrivateCluster, process_mode_unavailable, wait_until

MARK = f"rayop-pm-{uuid.uuid4().hex[:8]}"  # in every container's argv, to find leftover processes
NS = "pm"


UNAVAILABLE = process_mode_unavailable()
pytestmark = pytest.mark.skipif(UNAVAILABLE is not None, reason=f"process mode unavailable: {UNAVAILABLE}")


def netns_names() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.split()}


def link_names() -> set[str]:
    out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


def marked_processes() -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if MARK in cmdline:
                found.append(f"{entry.name}: {cmdline[:120]}")
    return found


@pytest.fixture(scope="module")
def pm() -> Iterator[PrivateCluster]:
    before = {"netns": netns_names(), "links": link_names(), "secrets": Path("/run/secrets").exists()}
    tmp = Path(tempfile.mkdtemp(prefix="rayop-pm-"))
    t0 = time.monotonic()
    cluster = PrivateCluster.start(tmp / "cluster", "--process", "--nodes", "1")
    print(f"process-mode up took {time.monotonic() - t0:.1f}s")
    cluster.before = before  # type: ignore[attr-defined]
    kube = cluster.client()
    kube.create("/api/v1/namespaces", {"metadata": {"name": NS}})
    wait_until(lambda: _exists(kube, f"/api/v1/namespaces/{NS}/serviceaccounts/default"), 60,
               message="the default ServiceAccount")
    wait_until(lambda: _exists(kube, f"/api/v1/namespaces/{NS}/configmaps/kube-root-ca.crt"), 60,
               message="kube-root-ca.crt")
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def kube(pm: PrivateCluster) -> KubeClient:
    return pm.client()


def _exists(kube: KubeClient, path: str) -> bool:
    try:
        kube.get(path)
        return True
    except ApiError as e:
        if e.not_found:
            return False
        raise


def python_pod(name: str, code: str, restart: str = "Always", **spec: Any) -> dict[str, Any]:
    container = {"name": "main", "image": "python:3.11", "command": ["python", "-c", code, MARK],
                 **spec.pop("container", {})}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS, **spec.pop("meta", {})},
            "spec": {"restartPolicy": restart, "terminationGracePeriodSeconds": 2, "containers": [container],
                     **spec}}


def create(kube: KubeClient, obj: dict[str, Any]) -> dict[str, Any]:
    kind = obj["kind"].lower() + "s"
    group = "/api/v1" if "/" not in obj["apiVersion"] else f"/apis/{obj['apiVersion']}"
    return dict(kube.create(f"{group}/namespaces/{NS}/{kind}", obj))


def pod(kube: KubeClient, name: str) -> dict[str, Any]:
    return dict(kube.get(f"/api/v1/namespaces/{NS}/pods/{name}"))


def is_ready(p: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in p.get("status", {}).get("conditions") or [])


def logs(pm: PrivateCluster, name: str, *extra: str) -> str:
    return pm.kubectl("logs", "-n", NS, name, *extra).stdout


READER = """
import json, os, socket, ssl, time, urllib.request
sa = "/var/run/secrets/kubernetes.io/serviceaccount"
token = open(sa + "/token").read()
ctx = ssl.create_default_context(cafile=sa + "/ca.crt")
host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"]
ns = open(sa + "/namespace").read()
req = urllib.request.Request(f"https://{host}:{port}/api/v1/namespaces/{ns}/pods",
                             headers={"Authorization": "Bearer " + token})
pods = json.load(urllib.request.urlopen(req, context=ctx, timeout=30))
denied = None
try:
    urllib.request.urlopen(urllib.request.Request(f"https://{host}:{port}/api/v1/namespaces/{ns}/secrets",
                           headers={"Authorization": "Bearer " + token}), context=ctx, timeout=30)
except urllib.error.HTTPError as e:
    denied = e.code
print(json.dumps({
    "ip": socket.gethostbyname(socket.gethostname()), "hostname": socket.gethostname(),
    "pods": sorted(p["metadata"]["name"] for p in pods["items"]), "secrets": denied,
    "greeting": open("/etc/greeting/message").read(), "env": {k: os.environ.get(k) for k in (
        "POD_NAME", "POD_NAMESPACE", "POD_IP", "NODE", "TEAM", "CPU_LIMIT", "GREETING", "COMBINED")},
    "python": __import__("sys").prefix,
}), flush=True)
time.sleep(3600)
"""


def test_pod_has_its_ip_token_configmap_and_downward_api(pm: PrivateCluster, kube: KubeClient) -> None:
    create(kube, {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "reader"}})
    create(kube, {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "reader"},
                  "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]})
    create(kube, {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                  "metadata": {"name": "reader"},
                  "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "reader"},
                  "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": NS}]})
    create(kube, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "greeting"},
                  "data": {"message": "hello from a configmap", "word": "hi"}})
    env = [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        {"name": "TEAM", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['team']"}}},
        {"name": "CPU_LIMIT", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
        {"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "greeting", "key": "word"}}},
        {"name": "COMBINED", "value": "$(GREETING)-$(POD_NAME)"},
    ]
    t0 = time.monotonic()
    create(kube, python_pod(
        "reader", READER, serviceAccountName="reader", meta={"labels": {"team": "ray"}},
        container={"env": env, "resources": {"limits": {"cpu": "2"}},
                   "volumeMounts": [{"name": "greeting", "mountPath": "/etc/greeting"}]},
        volumes=[{"name": "greeting", "configMap": {"name": "greeting"}}]))
    p = wait_until(lambda: (lambda x: x if is_ready(x) else None)(pod(kube, "reader")), 120,
                   message="the reader pod Ready")
    print(f"pod start to Ready: {time.monotonic() - t0:.1f}s")
    out = wait_until(lambda: logs(pm, "reader").strip(), 120, message="the reader's output")
    got = json.loads(out.splitlines()[-1])
    ip = p["status"]["podIP"]
    assert got["ip"] == ip and ip.startswith(pm.state()["pod_cidr"].rsplit(".", 2)[0])
    assert got["hostname"] == "reader"
    assert got["pods"] == ["reader"]
    assert got["secrets"] == 403  # RBAC-bound: pods yes, secrets no
    assert got["greeting"] == "hello from a configmap"
    assert got["env"] == {"POD_NAME": "reader", "POD_NAMESPACE": NS, "POD_IP": ip, "NODE": "rayop-node-1",
                          "TEAM": "ray", "CPU_LIMIT": "2", "GREETING": "hi", "COMBINED": "hi-reader"}
    assert got["python"] == str(Path(__file__).resolve().parents[2] / ".venv")
    # The pod's network namespace is its own: the host does not hold its IP.
    assert f" {ip}/" not in subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True).stdout


SERVER = "import http.server, sys; http.server.test(http.server.SimpleHTTPRequestHandler, port=8080, bind='0.0.0.0')"
CLIENT = """
import sys, time, urllib.request
for attempt in range(600):
    try:
        body = urllib.request.urlopen("http://web:8080/index.txt", timeout=5).read().decode()
        full = urllib.request.urlopen("http://web.pm.svc.cluster.local:8080/index.txt", timeout=5).read().decode()
        print("got", body.strip(), full.strip(), flush=True)
        sys.exit(0)
    except OSError as e:
        print("retry", e, flush=True)
        time.sleep(0.5)
sys.exit(1)
"""


def test_two_pods_talk_through_a_service_name(pm: PrivateCluster, kube: KubeClient) -> None:
    create(kube, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "site"},
                  "data": {"index.txt": "served by web\n"}})
    create(kube, python_pod(
        "web", SERVER, meta={"labels": {"app": "web"}},
        container={"workingDir": "/srv", "volumeMounts": [{"name": "site", "mountPath": "/srv"}],
                   "ports": [{"name": "http", "containerPort": 8080}],
                   "readinessProbe": {"httpGet": {"path": "/index.txt", "port": "http"}, "periodSeconds": 1}},
        volumes=[{"name": "site", "configMap": {"name": "site"}}]))
    create(kube, {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
                  "spec": {"selector": {"app": "web"}, "ports": [{"port": 8080, "targetPort": 8080}]}})
    wait_until(lambda: is_ready(pod(kube, "web")), 120, message="web Ready (readiness probe)")
    create(kube, python_pod("client", CLIENT, restart="Never"))
    done = wait_until(lambda: (lambda x: x if x["status"].get("phase") in ("Succeeded", "Failed") else None)(
        pod(kube, "client")), 180, message="the client to finish")
    assert done["status"]["phase"] == "Succeeded", logs(pm, "client")
    assert done["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 0
    assert "got served by web served by web" in logs(pm, "client")


def test_crashing_container_restarts_with_its_exit_code(pm: PrivateCluster, kube: KubeClient) -> None:
    create(kube, python_pod("crasher", "import sys; print('crashing', flush=True); sys.exit(3)"))
    create(kube, python_pod("once", "import sys; sys.exit(5)", restart="Never"))

    def restarted() -> dict[str, Any] | None:
        cs = (pod(kube, "crasher")["status"].get("containerStatuses") or [{}])[0]
        term = (cs.get("lastState") or {}).get("terminated") or (cs.get("state") or {}).get("terminated") or {}
        return cs if cs.get("restartCount", 0) >= 1 and term.get("exitCode") == 3 else None

    cs = wait_until(restarted, 120, message="the crasher restarted with exit code 3")
    assert cs["lastState"]["terminated"]["reason"] == "Error"
    wait_until(lambda: (pod(kube, "crasher")["status"]["containerStatuses"][0].get("state") or {}).get(
        "waiting", {}).get("reason") == "CrashLoopBackOff", 120, message="CrashLoopBackOff")
    assert "crashing" in logs(pm, "crasher", "--previous")
    once = wait_until(lambda: (lambda x: x if x["status"].get("phase") == "Failed" else None)(pod(kube, "once")),
                      120, message="the Never pod Failed")
    assert once["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 5


TALKER = """
import sys, time
for i in range(5):
    print(f"line {i}", flush=True)
print("to stderr", file=sys.stderr, flush=True)
time.sleep(3600)
"""


def test_kubectl_logs_and_local_cluster_exec(pm: PrivateCluster, kube: KubeClient) -> None:
    create(kube, python_pod("talker", TALKER, container={"env": [{"name": "WHO", "value": "talker"}]}))
    wait_until(lambda: "to stderr" in logs(pm, "talker"), 120, message="the talker's logs")
    assert logs(pm, "talker").splitlines() == [f"line {i}" for i in range(5)] + ["to stderr"]
    assert logs(pm, "talker", "--tail=2").splitlines() == ["line 4", "to stderr"]
    stamped = logs(pm, "talker", "--timestamps", "--tail=1").strip()
    assert stamped.endswith(" to stderr") and stamped[:4].isdigit()
    missing = pm.kubectl("logs", "-n", NS, "talker", "--previous", check=False)
    assert missing.returncode != 0
    out = pm.script("exec", "talker", "-n", NS, "--", "sh", "-c", "hostname; echo $WHO; cat /etc/hosts").stdout
    host, who, hosts = out.split("\n", 2)
    assert (host, who) == ("talker", "talker")
    assert "kubernetes.default.svc.cluster.local" in hosts
    py = pm.script("exec", "talker", "-n", NS, "--", "python", "-c",
                   "import os; print(os.path.exists('/var/run/secrets/kubernetes.io/serviceaccount/token'))")
    assert py.stdout.strip() == "True"


def test_deleting_pods_then_down_leaves_nothing(pm: PrivateCluster, kube: KubeClient) -> None:
    state = pm.state()
    prefix = state["netns_prefix"]
    pods_dir = Path(state["dir"]) / "nodeagent" / "pods"
    assert [n for n in netns_names() if n.startswith(prefix)]
    kube.delete(f"/api/v1/namespaces/{NS}/pods", gracePeriodSeconds=2)
    wait_until(lambda: not kube.get(f"/api/v1/namespaces/{NS}/pods")["items"], 120, message="pods gone")
    wait_until(lambda: not [n for n in netns_names() if n.startswith(prefix)], 60, message="namespaces removed")
    wait_until(lambda: not marked_processes(), 60, message="container processes gone")
    wait_until(lambda: not list(pods_dir.iterdir()), 60, message="pod folders removed")
    assert str(pm.state_dir) not in Path("/proc/mounts").read_text()

    # A pod running at `down` goes too.
    create(kube, python_pod("last", "import time; time.sleep(3600)"))
    wait_until(lambda: is_ready(pod(kube, "last")), 120, message="the last pod Ready")
    pm.stop()
    before = pm.before  # type: ignore[attr-defined]
    assert not marked_processes()
    assert not [n for n in netns_names() - before["netns"] if n.startswith(prefix)]
    veth = f"rv{prefix[5:-1]}"
    assert not [n for n in link_names() - before["links"] if n == state["bridge"] or n.startswith(veth)]
    assert str(pm.state_dir) not in Path("/proc/mounts").read_text()
    assert Path("/run/secrets").exists() == before["secrets"]
    assert not pm.state_dir.exists()
