"""End to end, GCS fault tolerance with real Ray and a real Redis: the operator deployed from manifests/ into a
process-mode control plane of the test's own (the `pm`, `kube`, `operator_pod` and `namespace` fixtures of
test_ray_process_mode), Debian's `redis-server` run as a pod (its command runs on the host, in the pod's network
namespace), its password in a Secret.

Proves:
- a `Ray` with gcsFaultTolerance (password from the Secret) comes up with its GCS state in Redis: keys
  `RAY<the Ray's UID>@*` appear there, and the password is nowhere in the pods' specs;
- the head's Ray processes killed (SIGKILL to the container's process group: the container restarts in its pod)
  come back with the cluster's state: a detached named actor created before answers a call after it, with the
  state it had (its process on the worker lived on), and the worker's raylet is alive in Ray under the same node ID
  without its container restarting; how long after the new head was Ready the worker was seen alive is printed;
- the head pod deleted: the operator creates a new one, and the same holds (the actor answers with its state, the
  worker's raylet lives on under the same node ID);
- deleting the `Ray` runs the clean-up Job (Events GcsCleanup, GcsCleanedUp) and its keys are gone from Redis;
  nothing of the `Ray` is left (pods, processes, network namespaces).

The measured times are printed (run with `-s`). Needs root, iproute2 with working `ip netns`, nsenter, unshare, and
redis-server and redis-cli (hack/install-deps.sh installs them).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import time
from typing import Any

import pytest

from rayop.runtime.kube import KubeClient
from tests.e2e.test_ray_process_mode import (  # noqa: F401 (pm, kube, operator_pod, namespace: shared fixtures)
    SMALL,
    _get,
    container_pid,
    create_and_wait_ready,
    delete_and_check_nothing_left,
    exec_in,
    head_pod,
    is_ready,
    kube,
    live,
    cluster_pods,
    namespace,
    operator_pod,
    pm,
    ray_container,
    record,
)
from tests.support.cluster import PrivateCluster, wait_until
from tests.support.operator import rays_path

MISSING = [tool for tool in ("redis-server", "redis-cli") if shutil.which(tool) is None]
pytestmark = [pytest.mark.e2e, pytest.mark.slow,
              pytest.mark.skipif(bool(MISSING), reason=f"{', '.join(MISSING)} not installed (hack/install-deps.sh)")]

PASSWORD = "s3cret-gcs-ft"

# Before the head kill: a detached named actor on the worker (its custom resource), called once; prints the node
# IDs and the actor's answer.
BEFORE = """
import json, ray
ray.init(address="auto", namespace="ft", logging_level="ERROR")

@ray.remote(num_cpus=0, resources={"w": 0.01})
class Counter:
    def __init__(self):
        self.n = 0
    def incr(self):
        self.n += 1
        return self.n, ray.get_runtime_context().get_node_id()

c = Counter.options(name="counter", lifetime="detached").remote()
n, node = ray.get(c.incr.remote(), timeout=120)
nodes = {x["NodeID"]: x["NodeManagerAddress"] for x in ray.nodes() if x["Alive"]}
print(json.dumps({"n": n, "actor_node": node, "alive": nodes}), flush=True)
"""

# After it: waits until the given worker node is alive again (prints when it saw that, as a Unix time), then calls
# the actor by name.
AFTER = """
import json, sys, time
import ray
worker, deadline = sys.argv[1], time.time() + float(sys.argv[2])
ray.init(address="auto", namespace="ft", logging_level="ERROR")
while True:
    alive = {x["NodeID"]: x["NodeManagerAddress"] for x in ray.nodes() if x["Alive"]}
    if worker in alive:
        seen = time.time()
        break
    if time.time() > deadline:
        print(json.dumps({"error": "worker not alive", "alive": alive}), flush=True)
        sys.exit(3)
    time.sleep(0.2)
c = ray.get_actor("counter", namespace="ft")
n, node = ray.get(c.incr.remote(), timeout=120)
print(json.dumps({"worker_seen": seen, "n": n, "actor_node": node, "alive": alive}), flush=True)
"""


def driver(pm: PrivateCluster, kube: KubeClient, ns: str, name: str, program: str, *args: str) -> dict[str, Any]:
    head = head_pod(kube, ns, name)
    out = exec_in(pm, ns, head["metadata"]["name"], ray_container(head), "python", "-c", program, *args,
                  timeout=400)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    assert out.returncode == 0 and lines, f"driver failed ({out.returncode}): {out.stdout[-3000:]}{out.stderr[-3000:]}"
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def start_redis(kube: KubeClient, ns: str) -> str:
    """A Redis pod (redis-server on the host, in the pod's network namespace; no persistence) and its Service; the
    password reaches it from the Secret through the environment. Returns the pod's IP."""
    kube.create(f"/api/v1/namespaces/{ns}/secrets", {
        "metadata": {"name": "redis-auth"}, "type": "Opaque",
        "data": {"password": base64.b64encode(PASSWORD.encode()).decode()}})
    kube.create(f"/api/v1/namespaces/{ns}/pods", {"metadata": {"name": "redis", "labels": {"app": "redis"}}, "spec": {
        "terminationGracePeriodSeconds": 2,
        "containers": [{
            "name": "redis", "image": "redis:7",
            "command": ["redis-server", "--port", "6379", "--bind", "0.0.0.0", "--protected-mode", "no",
                        "--save", "", "--appendonly", "no", "--dir", "/tmp", "--requirepass", "$(REDIS_PASSWORD)"],
            "env": [{"name": "REDIS_PASSWORD",
                     "valueFrom": {"secretKeyRef": {"name": "redis-auth", "key": "password"}}}],
            "ports": [{"name": "redis", "containerPort": 6379}],
            "readinessProbe": {"tcpSocket": {"port": 6379}, "periodSeconds": 1},
        }]}})
    kube.create(f"/api/v1/namespaces/{ns}/services", {"metadata": {"name": "redis"}, "spec": {
        "selector": {"app": "redis"}, "ports": [{"name": "redis", "port": 6379, "targetPort": 6379}]}})
    pod = wait_until(lambda: (p := _get(kube, f"/api/v1/namespaces/{ns}/pods/redis")) and is_ready(p) and p, 120,
                     0.3, message="the Redis pod Ready")
    return str(pod["status"]["podIP"])


def redis_keys(ip: str, pattern: str) -> list[str]:
    """Keys matching `pattern`, by redis-cli from the host (the password in its environment, not its arguments)."""
    out = subprocess.run(["redis-cli", "-h", ip, "-p", "6379", "--scan", "--pattern", pattern], capture_output=True,
                         text=True, timeout=30, env=dict(os.environ, REDISCLI_AUTH=PASSWORD))
    assert out.returncode == 0 and "NOAUTH" not in out.stdout and "ERR" not in out.stdout, (out.stdout, out.stderr)
    return out.stdout.split()


def test_a_head_crash_keeps_the_clusters_state_and_deletion_cleans_redis(pm: PrivateCluster, kube: KubeClient,
                                                                          namespace: str) -> None:
    ns, name = namespace, "gcs-ft"
    redis_ip = start_redis(kube, ns)
    try:
        check_head_crash_and_cleanup(pm, kube, ns, name, redis_ip)
    finally:
        # A bare pod: the namespace's teardown waits for every running pod to go first.
        kube.delete(f"/api/v1/namespaces/{ns}/pods/redis")


def check_head_crash_and_cleanup(pm: PrivateCluster, kube: KubeClient, ns: str, name: str, redis_ip: str) -> None:
    create_and_wait_ready(pm, kube, {
        "apiVersion": "ray.k8s.io/v1alpha1", "kind": "Ray", "metadata": {"name": name, "namespace": ns},
        "spec": {
            "minWorkers": 1, "maxWorkers": 1, "autoScalingMode": "disabled",
            "headRayStartParams": SMALL,
            "workerRayStartParams": {**SMALL, "resources": '{"w": 1}'},
            "gcsFaultTolerance": {
                "redisAddress": f"redis.{ns}.svc.cluster.local:6379",
                "redisPassword": {"secretKeyRef": {"name": "redis-auth", "key": "password"}},
            },
        }})
    ray_obj = kube.get(rays_path(ns, name))
    uid = ray_obj["metadata"]["uid"]
    assert "ray.k8s.io/gcs-cleanup" in ray_obj["metadata"]["finalizers"]
    pods = live(cluster_pods(kube, ns, name))
    assert PASSWORD not in json.dumps(pods)  # only a reference to the Secret
    prefix = f"RAY{uid}@*"
    keys = redis_keys(redis_ip, prefix)
    assert keys, f"no GCS keys {prefix} in Redis"
    print(f"e2e: {len(keys)} GCS keys {prefix} in Redis", flush=True)

    before = driver(pm, kube, ns, name, BEFORE)
    worker = live(cluster_pods(kube, ns, name, "worker"))[0]
    worker_ip = worker["status"]["podIP"]
    worker_node = next(node for node, ip in before["alive"].items() if ip == worker_ip)
    assert before["n"] == 1 and before["actor_node"] == worker_node
    worker_restarts = worker["status"]["containerStatuses"][0]["restartCount"]

    # The head's Ray processes killed: the container restarts in its pod, a new GCS reads the state from Redis.
    head = head_pod(kube, ns, name)
    head_name = head["metadata"]["name"]
    restarts = {c["name"]: c["restartCount"] for c in head["status"]["containerStatuses"]}["ray-head"]
    t0 = time.monotonic()
    os.killpg(container_pid(pm, head, ray_container(head)), signal.SIGKILL)

    def restarted_and_ready() -> bool:
        p = _get(kube, f"/api/v1/namespaces/{ns}/pods/{head_name}")
        counts = {c["name"]: c["restartCount"] for c in (p or {}).get("status", {}).get("containerStatuses") or []}
        return bool(p and counts.get("ray-head", 0) > restarts and is_ready(p))

    wait_until(restarted_and_ready, 240, 0.2, message="the head restarted and Ready")
    head_ready_at = time.time()
    record(f"{name}: head killed -> new head Ready", time.monotonic() - t0)
    after = driver(pm, kube, ns, name, AFTER, worker_node, "120")
    back = max(0.0, after["worker_seen"] - head_ready_at)
    record(f"{name}: new head Ready -> the worker alive in Ray (same node ID)", back)
    # The detached actor answers with the state it had: its process on the worker lived through the head's crash.
    assert after["n"] == 2 and after["actor_node"] == worker_node
    worker_now = kube.get(f"/api/v1/namespaces/{ns}/pods/{worker['metadata']['name']}")
    assert worker_now["status"]["containerStatuses"][0]["restartCount"] == worker_restarts  # the raylet lived on
    assert len(live(cluster_pods(kube, ns, name, "head"))) == 1

    # The head pod deleted: the operator creates a new one (a new pod behind the same Service name; the Node may give
    # it the old IP again); the worker's raylet finds the new GCS through the name and the actor still answers.
    t0 = time.monotonic()
    kube.delete(f"/api/v1/namespaces/{ns}/pods/{head_name}")
    new_head = wait_until(lambda: (h := live(cluster_pods(kube, ns, name, "head"))) and h[0]["metadata"]["name"]
                          != head_name and is_ready(h[0]) and h[0], 240, 0.2, message="a new head pod Ready")
    head_ready_at = time.time()
    record(f"{name}: head pod deleted -> new head pod Ready", time.monotonic() - t0)
    print(f"e2e: head pod IP {head['status']['podIP']} -> {new_head['status']['podIP']}", flush=True)
    again = driver(pm, kube, ns, name, AFTER, worker_node, "120")
    record(f"{name}: new head pod Ready -> the worker alive in Ray (same node ID)",
           max(0.0, again["worker_seen"] - head_ready_at))
    assert again["n"] == 3 and again["actor_node"] == worker_node
    worker_now = kube.get(f"/api/v1/namespaces/{ns}/pods/{worker['metadata']['name']}")
    assert worker_now["status"]["containerStatuses"][0]["restartCount"] == worker_restarts

    # Deleting the Ray: the pods go, the clean-up Job deletes the keys, then the Ray goes.
    delete_and_check_nothing_left(pm, kube, ns, name)
    assert redis_keys(redis_ip, prefix) == []
    reasons = wait_until(lambda: (r := {e["reason"] for e in kube.get(
        f"/api/v1/namespaces/{ns}/events", fieldSelector=f"involvedObject.name={name}")["items"]})
        >= {"GcsCleanup", "GcsCleanedUp"} and r, 60, 0.5, message="the clean-up Events")
    assert "GcsCleanupFailed" not in reasons
