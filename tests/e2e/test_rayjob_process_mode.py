"""End to end, `RayJob` with real Ray: the operator deployed from manifests/ (both CRDs, RBAC, Deployment) into a
process-mode control plane of the test's own; HTTP submission through Ray's Job Submission REST API.

Proves:
- a `RayJob` with `rayClusterSpec` (the sample manifests/samples/rayjob/every-node.yaml, as shipped) gets a child
  `Ray` owned by it, runs a Python entrypoint with one task on every Ray node, reaches jobStatus SUCCEEDED /
  jobDeploymentStatus Complete, and its cluster is gone within ttlSecondsAfterFinished (5 s) plus one reconcile;
  nothing of it is left (pods, network namespaces);
- a `RayJob` with `clusterSelector` waits (ClusterSelectorNoMatch) while no Ray matches, then runs on the existing
  `Ray` once it is labelled, and that Ray stays (with shutdownAfterJobFinishes); seen from Ray's side there is
  exactly one job with the RayJob's submission id, and it SUCCEEDED;
- a runtimeEnv Ray cannot use ends the job with a reason naming it (no crash, no retry loop).

The measured times are printed (run with `-s`). Needs root, iproute2 with working `ip netns`, nsenter, unshare.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml

from rayop.api import rayjob as j
from rayop.api.types import GROUP, VERSION
from rayop.runtime.kube import ApiError, KubeClient
from tests.e2e.test_ray_process_mode import (
    SMALL,
    _get,
    cluster_pods,
    exec_in,
    head_pod,
    is_ready,
    live,
    netns_names,
    ray_container,
    wait_ready,
)
from tests.support.cluster import REPO, PrivateCluster, process_mode_unavailable, wait_until
from tests.support.operator import rays_path

MANIFESTS = REPO / "manifests"
OPERATOR_NS = "rayop-system"
# The entrypoint's `python`: in process mode the head's shell reads the host's ~/.bashrc, which may put another
# Python (e.g. pyenv's shims) ahead of the virtualenv where Ray is installed. A Ray image has one Python; here the
# entrypoints name the virtualenv's explicitly.
PYTHON = str(REPO / ".venv" / "bin" / "python")
UNAVAILABLE = process_mode_unavailable()
pytestmark = [pytest.mark.e2e, pytest.mark.slow,
              pytest.mark.skipif(UNAVAILABLE is not None, reason=f"process mode unavailable: {UNAVAILABLE}")]


def record(name: str, seconds: float) -> None:
    print(f"e2e time: {name}: {seconds:.1f}s", flush=True)


def jobs_path(ns: str, name: str | None = None) -> str:
    base = f"/apis/{GROUP}/{VERSION}/namespaces/{ns}/{j.PLURAL}"
    return f"{base}/{name}" if name else base


@pytest.fixture(scope="module")
def pm() -> Iterator[PrivateCluster]:
    tmp = Path(tempfile.mkdtemp(prefix="rayop-e2e-rayjob-"))
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
        assert not left, f"network namespaces left after down: {left}"


@pytest.fixture(scope="module")
def kube(pm: PrivateCluster) -> KubeClient:
    return pm.client()


@pytest.fixture(scope="module")
def operator_pod(pm: PrivateCluster, kube: KubeClient) -> Iterator[str]:
    """The operator deployed from manifests/, both CRDs installed first (so `--rayjobs auto` turns the RayJob
    controller on); it must run through every test without a restart."""
    t0 = time.monotonic()
    for manifest in ("namespace.yaml", "crd.yaml", "crd-rayjob.yaml", "rbac.yaml", "deployment.yaml"):
        pm.kubectl("apply", "--server-side", "-f", str(MANIFESTS / manifest))
        if manifest.startswith("crd"):
            crd = yaml.safe_load((MANIFESTS / manifest).read_text())["metadata"]["name"]
            pm.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{crd}")

    def ready_pod() -> str | None:
        items = kube.get(f"/api/v1/namespaces/{OPERATOR_NS}/pods",
                         labelSelector="app.kubernetes.io/name=rayop")["items"]
        ready = [p for p in items if is_ready(p) and not p["metadata"].get("deletionTimestamp")]
        return ready[0]["metadata"]["name"] if len(ready) == 1 and len(items) == 1 else None

    name: str = wait_until(ready_pod, 180, 0.5, message="the operator's pod Ready")
    record("operator deployed from manifests -> Ready", time.monotonic() - t0)
    logs = pm.kubectl("logs", "-n", OPERATOR_NS, name).stdout
    assert '"enabled": true' in logs and "rayjob controller" in logs, logs[-2000:]
    yield name
    pod = kube.get(f"/api/v1/namespaces/{OPERATOR_NS}/pods/{name}")
    status = pod["status"]["containerStatuses"][0]
    assert status["restartCount"] == 0, pm.kubectl("logs", "-n", OPERATOR_NS, name, "--previous",
                                                   check=False).stdout[-3000:]
    errors = [line for line in pm.kubectl("logs", "-n", OPERATOR_NS, name).stdout.splitlines()
              if '"panic' in line or "Traceback" in line]
    assert not errors, errors[:5]


@pytest.fixture
def namespace(request: pytest.FixtureRequest, kube: KubeClient, operator_pod: str) -> Iterator[str]:
    name = f"e2e-rj-{request.node.name[5:20].lower().replace('_', '-').strip('-')}-{uuid.uuid4().hex[:4]}"
    kube.create("/api/v1/namespaces", {"metadata": {"name": name}})
    wait_until(lambda: _get(kube, f"/api/v1/namespaces/{name}/serviceaccounts/default"), 60,
               message="the default ServiceAccount")
    wait_until(lambda: _get(kube, f"/api/v1/namespaces/{name}/configmaps/kube-root-ca.crt"), 60,
               message="kube-root-ca.crt")
    yield name
    kube.delete(f"/api/v1/namespaces/{name}")
    wait_until(lambda: _get(kube, f"/api/v1/namespaces/{name}") is None, 180, 0.5,
               message=f"namespace {name} deleted")


def wait_job(kube: KubeClient, ns: str, name: str, deployment: str | tuple[str, ...],
             timeout: float = 420) -> dict[str, Any]:
    wanted = (deployment,) if isinstance(deployment, str) else deployment
    last: dict[str, Any] = {}

    def done() -> dict[str, Any] | None:
        nonlocal last
        last = _get(kube, jobs_path(ns, name)) or {}
        status = last.get("status") or {}
        if status.get("jobDeploymentStatus") in j.DEPLOY_FINISHED and status.get("jobDeploymentStatus") not in wanted:
            raise AssertionError(f"RayJob {ns}/{name} ended {status}")
        return last if status.get("jobDeploymentStatus") in wanted else None

    try:
        result: dict[str, Any] = wait_until(done, timeout, 0.5, message=f"RayJob {ns}/{name} {wanted}")
    except AssertionError:
        print(json.dumps(last.get("status"), indent=1))
        raise
    return result


def events_of(kube: KubeClient, ns: str, name: str) -> list[str]:
    items = kube.get(f"/api/v1/namespaces/{ns}/events", fieldSelector=f"involvedObject.name={name}")["items"]
    return [e["reason"] for e in sorted(items, key=lambda e: e.get("firstTimestamp") or e.get("eventTime") or "")]


def parse_ts(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp()


RAY_JOBS = """
import json, sys, urllib.request
with urllib.request.urlopen("http://127.0.0.1:8265/api/jobs/", timeout=10) as r:
    jobs = json.loads(r.read())
print(json.dumps([{k: job.get(k) for k in ("submission_id", "status", "entrypoint", "metadata", "job_id")}
                  for job in jobs]))
"""


def ray_jobs(pm: PrivateCluster, kube: KubeClient, ns: str, cluster: str) -> list[dict[str, Any]]:
    """Every job Ray's dashboard knows, asked from inside the head pod."""
    head = head_pod(kube, ns, cluster)
    out = exec_in(pm, ns, head["metadata"]["name"], ray_container(head), "python", "-c", RAY_JOBS, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    result: list[dict[str, Any]] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_job_on_its_own_cluster_completes_and_the_cluster_goes(pm: PrivateCluster, kube: KubeClient,
                                                              namespace: str) -> None:
    sample = MANIFESTS / "samples" / "rayjob" / "every-node.yaml"
    body = yaml.safe_load(sample.read_text())
    assert body["spec"]["entrypoint"].startswith("python ")
    body["spec"]["entrypoint"] = PYTHON + body["spec"]["entrypoint"].removeprefix("python")
    t0 = time.monotonic()
    pm.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(body))
    name = body["metadata"]["name"]
    job = wait_until(lambda: _get(kube, jobs_path(namespace, name)), 30)
    uid = job["metadata"]["uid"]
    child = j.cluster_name(name, 1)
    ray = wait_until(lambda: _get(kube, rays_path(namespace, child)), 60, 0.5, message="the child Ray")
    (owner,) = ray["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["uid"], owner["controller"]) == ("RayJob", uid, True)
    running = wait_job(kube, namespace, name, ("Running", "Complete"))
    record("RayJob created -> submitted", time.monotonic() - t0)
    assert running["status"]["submissionId"] == f"rayjob-{uid}-1"
    assert running["status"]["dashboardURL"] == f"http://{child}-head.{namespace}.svc:8265"
    done = wait_job(kube, namespace, name, "Complete")
    record("RayJob created -> Complete", time.monotonic() - t0)
    status = done["status"]
    assert status["jobStatus"] == "SUCCEEDED" and status["reason"] == "JobSucceeded", status
    assert status["jobId"] and status["rayClusterName"] == child and status["attempt"] == 1
    assert status["startTime"] <= status["endTime"]
    assert {c["type"]: c["status"] for c in status["conditions"]} == {"ClusterReady": "True", "Submitted": "True",
                                                                     "Finished": "True"}
    # The program's output: the entrypoint asserted that it ran a task on both nodes (head and worker) and printed
    # where; Ray keeps the driver's log on the head until the cluster goes.
    # shutdownAfterJobFinishes + ttlSecondsAfterFinished 5: the child Ray is gone 5 s + one reconcile later.
    wait_until(lambda: _get(kube, rays_path(namespace, child)) is None, 60, 0.2, message="the child Ray deleted")
    gone_after = time.time() - parse_ts(status["endTime"])
    record("job end -> child Ray deleted (ttl 5 s)", gone_after)
    assert gone_after < 5 + 1 + 3, gone_after  # endTime has 1 s resolution; one reconcile and the watch
    wait_until(lambda: not cluster_pods(kube, namespace, child), 120, 0.5, message="the child's pods gone")
    final = wait_until(lambda: (_get(kube, jobs_path(namespace, name)) or {}).get("status", {}).get(
        "clusterDeleted") and _get(kube, jobs_path(namespace, name)), 30, 0.5)
    assert final["status"]["jobDeploymentStatus"] == "Complete"
    reasons = events_of(kube, namespace, name)
    for reason in ("CreatingCluster", "CreatedCluster", "Submitted", "JobSucceeded", "DeletingCluster",
                   "DeletedCluster"):
        assert reason in reasons, reasons
    out = pm.kubectl("get", "rj", "-n", namespace).stdout
    assert "SUCCEEDED" in out and "Complete" in out and child in out, out


SHARED_SPEC = {
    "autoScalingMode": "disabled", "initialWorkers": 1, "maxWorkers": 1,
    "headRayStartParams": SMALL, "workerRayStartParams": SMALL,
}


def test_job_on_an_existing_cluster_by_selector(pm: PrivateCluster, kube: KubeClient, namespace: str) -> None:
    # The job comes first: nothing matches, it waits and says so.
    job_body = {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": j.KIND, "metadata": {"name": "on-shared"},
        "spec": {"clusterSelector": {"team": "ml"}, "shutdownAfterJobFinishes": True,
                 "runtimeEnv": {"env_vars": {"WHO": "rayop"}},
                 "entrypoint": f"{PYTHON} -c 'import os, ray; ray.init(); "
                               "print(\"hello from\", os.environ[\"WHO\"], len(ray.nodes()), \"nodes\")'"},
    }
    kube.create(jobs_path(namespace), job_body)
    waiting = wait_until(lambda: ((_get(kube, jobs_path(namespace, "on-shared")) or {}).get("status") or {}).get(
        "reason") == "ClusterSelectorNoMatch" and _get(kube, jobs_path(namespace, "on-shared")), 60, 0.5)
    assert "team=ml" in waiting["status"]["message"]
    kube.create(rays_path(namespace), {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Ray",
                                       "metadata": {"name": "shared"}, "spec": SHARED_SPEC})
    wait_ready(kube, namespace, "shared")
    t0 = time.monotonic()
    kube.patch(rays_path(namespace, "shared"), {"metadata": {"labels": {"team": "ml"}}})
    done = wait_job(kube, namespace, "on-shared", "Complete", timeout=300)
    record("selector matched -> Complete", time.monotonic() - t0)
    status = done["status"]
    assert status["jobStatus"] == "SUCCEEDED" and status["rayClusterName"] == "shared"
    sid = status["submissionId"]
    # Seen from Ray: exactly one job with that submission id, succeeded, with the operator's metadata.
    mine = [x for x in ray_jobs(pm, kube, namespace, "shared") if x["submission_id"] == sid]
    assert len(mine) == 1 and mine[0]["status"] == "SUCCEEDED", mine
    assert mine[0]["metadata"]["rayjob.k8s.io/name"] == "on-shared"
    # The selected cluster stays, unchanged by the job.
    time.sleep(3)
    ray = _get(kube, rays_path(namespace, "shared"))
    assert ray is not None and not ray["metadata"].get("deletionTimestamp")
    assert len(live(cluster_pods(kube, namespace, "shared"))) >= 2

    # A runtimeEnv Ray cannot use: the job ends with a reason naming it, and stays ended.
    bad = json.loads(json.dumps(job_body))
    bad["metadata"]["name"] = "bad-env"
    bad["spec"]["runtimeEnv"] = {"pip": 5}
    kube.create(jobs_path(namespace), bad)
    ended = wait_job(kube, namespace, "bad-env", ("ValidationFailed", "Failed"), timeout=120)
    print("bad runtimeEnv:", json.dumps(ended["status"]))
    assert "pip" in ended["status"]["message"], ended["status"]
    rv = ended["metadata"]["resourceVersion"]
    time.sleep(5)
    assert (_get(kube, jobs_path(namespace, "bad-env")) or {})["metadata"]["resourceVersion"] == rv


def test_deleting_a_finished_job_leaves_nothing(pm: PrivateCluster, kube: KubeClient, namespace: str) -> None:
    """A RayJob without shutdownAfterJobFinishes keeps its cluster; deleting the RayJob takes the cluster and
    its pods with it (ownerReferences)."""
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": j.KIND, "metadata": {"name": "keep"},
            "spec": {"entrypoint": f"{PYTHON} -c 'print(42)'",
                     "rayClusterSpec": {"autoScalingMode": "disabled", "headRayStartParams": SMALL}}}
    kube.create(jobs_path(namespace), body)
    wait_job(kube, namespace, "keep", "Complete")
    assert _get(kube, rays_path(namespace, "keep-1")) is not None
    kube.delete(jobs_path(namespace, "keep"), {"propagationPolicy": "Foreground"})
    wait_until(lambda: _get(kube, rays_path(namespace, "keep-1")) is None, 120, 0.5, message="child Ray gone")
    wait_until(lambda: not cluster_pods(kube, namespace, "keep-1"), 120, 0.5, message="pods gone")
    with pytest.raises(ApiError):
        kube.get(jobs_path(namespace, "keep"))
