"""End to end with real Ray (process mode): Ray's own Kubernetes cluster configs, pasted unchanged into
`spec.configuration` with only the worker counts raised to 1, run as `ray up` ran them.

- `ray-0.8-example-full.yaml` (Ray 0.8, head_node/worker_nodes) and `ray-1.x-kubernetes-defaults.yaml` (Ray 1.x,
  available_node_types), kept in tests/data with their source in the header;
- and a user's generated config of the same era (rayvens, its own ServiceAccount and head Service);
- each becomes Ready, the launcher completes (`SuccessfulLaunch=True`), a driver in the head pod runs a task on every
  node, the status names the ignored keys; the Services of provider.services exist and a Ray Client program in a
  worker pod reaches the cluster through the config's own head Service (`ray://<service>:10001`).

Uses the module fixtures of test_ray_process_mode (a process-mode control plane of its own, the operator deployed
from manifests/). Deselect with `-m "not e2e"`.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from rayop.objects import LABEL_CLUSTER
from rayop.runtime.kube import KubeClient
from tests.e2e.test_ray_process_mode import (  # noqa: F401 - fixtures
    UNAVAILABLE,
    condition,
    delete_and_check_nothing_left,
    exec_in,
    kube,
    live,
    cluster_pods,
    namespace,
    operator_pod,
    pm,
    ray_container,
    record,
    run_on_every_node,
    wait_ready,
)
from tests.support.cluster import PrivateCluster, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow,
              pytest.mark.skipif(UNAVAILABLE is not None, reason=f"process mode unavailable: {UNAVAILABLE}")]

DATA = Path(__file__).resolve().parents[1] / "data"

# A Ray Client program: connects through the given address, runs one task, prints where it ran.
CLIENT = """
import json, socket, sys
import ray
ray.init(sys.argv[1], logging_level="ERROR")
@ray.remote(num_cpus=0)
def where():
    return socket.gethostname()
print(json.dumps({"ran_on": ray.get(where.remote(), timeout=120), "nodes": len(ray.nodes())}), flush=True)
"""


def pasted(file: str) -> str:
    """The file unchanged except for the worker counts, raised from 0 to 1."""
    text = (DATA / file).read_text()
    changed = re.sub(r"^(\s*)(min_workers|initial_workers): 0$", r"\1\2: 1", text, flags=re.M)
    # A head node type's min_workers stays 0: it is the head.
    changed = re.sub(r"(\n(\s+)head_node:\n\2\s+min_workers:) 1", r"\1 0", changed)
    assert changed != text
    return changed


def create_and_wait_ready(pm: PrivateCluster, kube: KubeClient, ray: dict[str, Any]) -> dict[str, Any]:
    """Create the Ray; wait until it is Ready and `SuccessfulLaunch` is True, its one launcher pod Succeeded."""
    ns, name = ray["metadata"]["namespace"], ray["metadata"]["name"]
    t0 = time.monotonic()
    kube.create(f"/apis/ray.k8s.io/v1alpha1/namespaces/{ns}/rays", ray)
    ready = wait_ready(kube, ns, name)
    record(f"{name}: apply -> Ready", time.monotonic() - t0)
    path = f"/apis/ray.k8s.io/v1alpha1/namespaces/{ns}/rays/{name}"
    launched = wait_until(lambda: condition(r := kube.get(path), "SuccessfulLaunch").get("status") == "True" and r,
                          300, 0.5, message="SuccessfulLaunch True")
    record(f"{name}: apply -> SuccessfulLaunch", time.monotonic() - t0)
    assert condition(launched, "SuccessfulLaunch")["reason"] == "Launched"

    launchers = kube.get(f"/api/v1/namespaces/{ns}/pods",
                         labelSelector=f"{LABEL_CLUSTER}={name},ray.k8s.io/node-kind=launcher")["items"]
    assert [p["status"]["phase"] for p in launchers] == ["Succeeded"], launchers
    return ready


def ignored_keys(ready: dict[str, Any]) -> str:
    valid = condition(ready, "ConfigurationValid")
    assert valid["status"] == "True" and valid["reason"] == "KeysIgnored", valid
    return str(valid["message"]).split(":", 1)[0]


@pytest.mark.parametrize(
    "name, file, service, client_port",
    [("legacy", "ray-0.8-example-full.yaml", "ray-head", None),
     ("redisport", "ray-0.8-example-full-redis-port.yaml", None, None),
     ("nodetypes", "ray-1.x-kubernetes-defaults.yaml", "example-cluster-ray-head", 10001),
     ("rayvens", "rayvens-0.2.0-cluster.yaml", "rayvens-cluster-head", 10001)],
    ids=["ray-0.8-example-full", "ray-0.8-example-full-redis-port", "ray-1.x-available-node-types",
         "rayvens-generated"],
)
def test_ray_example_config_runs_unchanged(pm: PrivateCluster, kube: KubeClient, namespace: str, name: str,
                                           file: str, service: str | None, client_port: int | None) -> None:
    ns = namespace
    ray = {"apiVersion": "ray.k8s.io/v1alpha1", "kind": "Ray", "metadata": {"name": name, "namespace": ns},
           "spec": {"configuration": pasted(file)}}
    ready = create_and_wait_ready(pm, kube, ray)
    assert ready["status"]["head"]["readyReplicas"] == 1 and ready["status"]["worker"]["readyReplicas"] == 1
    keys = ignored_keys(ready)
    for key in ("cluster_name", "provider.namespace", "provider.autoscaler_service_account",
                "provider.autoscaler_role", "provider.autoscaler_role_binding"):
        assert f"spec.configuration.{key}" in keys
    result = run_on_every_node(pm, kube, ns, name)
    assert len(result["alive"]) == 2

    # The head ran the configuration's own start command (its flags), not the keep-alive command.
    head = live(cluster_pods(kube, ns, name, "head"))[0]
    script = head["spec"]["containers"][0]["args"][0]
    assert "sleep infinity" not in script and "exec ray start --head" in script
    if "0.8" in file:  # --num-cpus=$MY_CPU_REQUEST resolved; --redis-port / --port 6379 is the operator's --port
        assert "--object-manager-port=8076" in script and "--num-cpus=1" in script and "--port=6379" in script

    if service is not None:
        svc = kube.get(f"/api/v1/namespaces/{ns}/services/{service}")
        assert svc["metadata"]["ownerReferences"][0]["name"] == name
    if service is not None and client_port is not None:
        # A user's program connects through the Service the configuration declared, from another pod.
        worker = live(cluster_pods(kube, ns, name, "worker"))[0]
        for attempt in range(3):
            out = exec_in(pm, ns, worker["metadata"]["name"], ray_container(worker), "python", "-c", CLIENT,
                          f"ray://{service}:{client_port}", timeout=300)
            # Ray's client proxy starts a server process per client and gives up when it is slow to come (seen on
            # a loaded machine), or fails on it when that process died before it was reaped (psutil's ZombieProcess
            # in the proxier, seen once): the connection reached the head through the Service; a user would try
            # again.
            said = out.stdout + out.stderr
            if "Starting Ray client server failed" not in said and "psutil.ZombieProcess" not in said:
                break
            print(f"attempt {attempt + 1}: Ray's client server did not start; trying again")
        lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
        assert out.returncode == 0 and lines, out.stdout[-3000:] + out.stderr[-3000:]
        got = yaml.safe_load(lines[-1])
        assert got["nodes"] == 2 and got["ran_on"] in {p["metadata"]["name"] for p in live(cluster_pods(kube, ns, name))}
    wait_ready(kube, ns, name)
    delete_and_check_nothing_left(pm, kube, ns, name)
