"""End to end, `RayJob` with real Ray: the operator deployed from manifests/ (both CRDs, RBAC, Deployment) into a
process-mode control plane of the test's own (the `pm` and `kube` fixtures of test_ray_process_mode); HTTP
submission through Ray's Job Submission REST API, and K8sJob submission through a submitter Job.

Proves:
- a `RayJob` with `rayClusterSpec` (the sample manifests/samples/rayjob/every-node.yaml, as shipped) gets a child
  `Ray` owned by it, runs a Python entrypoint with one task on every Ray node, reaches jobStatus SUCCEEDED /
  jobDeploymentStatus Complete, and its cluster is gone within ttlSecondsAfterFinished (5 s) plus one reconcile;
  nothing of it is left (pods, network namespaces);
- a `RayJob` with `clusterSelector` waits (ClusterSelectorNoMatch) while no Ray matches, then runs on the existing
  `Ray` once it is labelled, and that Ray stays (with shutdownAfterJobFinishes); seen from Ray's side there is
  exactly one job with the RayJob's submission id, and it SUCCEEDED;
- a runtimeEnv Ray cannot use ends the job with a reason naming it (no crash, no retry loop).
- K8sJob mode (the sample logs-in-kubectl.yaml): a submitter Job owned by the RayJob runs `ray job submit`, its
  `kubectl logs` show the program's output (while it runs), the job completes and its cluster goes after the TTL;
  a submitter pod started again after the submission follows the logs instead of submitting again, and deleting
  the running submitter pod makes the Job controller start another one, which follows the same submission;
- suspend (created suspended: nothing; suspended while running: stopped, cluster deleted; resumed: runs) and
  deletionPolicy DeleteSelf.

The measured times are printed (run with `-s`). Needs root, iproute2 with working `ip netns`, nsenter, unshare.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from typing import Any

import pytest
import yaml

from rayop.api import rayjob as j
from rayop.api.types import GROUP, VERSION
from rayop.runtime.kube import ApiError, KubeClient
from tests.e2e.test_ray_process_mode import (  # noqa: F401 (pm, kube: the shared module-scoped fixtures)
    SMALL,
    _get,
    cluster_pods,
    exec_in,
    head_pod,
    is_ready,
    kube,
    live,
    pm,
    ray_container,
    wait_ready,
)
from tests.support.cluster import REPO, PrivateCluster, delete_namespace, process_mode_unavailable, wait_until
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
    # The crash test rolls the Deployment (twice); the pod that runs now must not have restarted.
    name = wait_until(ready_pod, 180, 0.5, message="the operator's pod Ready")
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
    delete_namespace(kube, name)


def _has_line(text: str, wanted: Callable[[str], bool]) -> bool:
    """Whether a line of `text` (stripped) is one `wanted` accepts: a program's own output line, not an echo of the
    entrypoint that merely contains the same words."""
    return any(wanted(line.strip()) for line in text.splitlines())


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
    # Events are sent by the operator's background queue: the last one may land a moment after the status.
    wanted = ("CreatingCluster", "CreatedCluster", "Submitted", "JobSucceeded", "DeletingCluster", "DeletedCluster")
    reasons = wait_until(lambda: (lambda r: r if all(x in r for x in wanted) else None)(
        events_of(kube, namespace, name)), 30, 0.5, message=f"the Events {wanted}")
    for reason in wanted:
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
    print("bad runtimeEnv:", ended["status"]["jobDeploymentStatus"], ended["status"]["reason"],
          ended["status"]["message"][:200])
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


class History:
    """Every version of one RayJob and every Ray of a namespace, as a watch streams them (in a thread)."""

    def __init__(self, kube: KubeClient, ns: str, name: str):
        self.kube, self.ns, self.name = kube.clone(), ns, name
        self.jobs: list[dict[str, Any]] = []
        self.rays: list[dict[str, Any]] = []
        self._threads = [threading.Thread(target=self._watch, args=(jobs_path(ns), self.jobs, name), daemon=True),
                         threading.Thread(target=self._watch, args=(rays_path(ns), self.rays, None), daemon=True)]
        self._stop = threading.Event()

    def _watch(self, path: str, into: list[dict[str, Any]], name: str | None) -> None:
        params: dict[str, Any] = {"timeoutSeconds": 600, "allowWatchBookmarks": "false"}
        if name:
            params["fieldSelector"] = f"metadata.name={name}"
        while not self._stop.is_set():
            try:
                for event in self.kube.watch(path, params, timeout=2):
                    into.append(event)
                    if self._stop.is_set():
                        return
            except Exception:  # a read timeout ends the stream; watch again (events repeat, we dedupe)
                time.sleep(0.1)

    def __enter__(self) -> History:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(5)

    def submissions(self) -> list[str]:
        """Submission ids the RayJob's status recorded as handed to Ray, in order."""
        out: list[str] = []
        for event in self.jobs:
            status = event["object"].get("status") or {}
            sid = status.get("submissionId")
            if status.get("jobStatus") and sid and sid not in out:
                out.append(sid)
        return out

    def created_rays(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        for event in self.rays:
            meta = event["object"]["metadata"]
            if event["type"] == "ADDED" and (meta["name"], meta["uid"]) not in out:
                out.append((meta["name"], meta["uid"]))
        return out


HEAD_ONLY = {"autoScalingMode": "disabled", "headRayStartParams": SMALL}


def test_failing_entrypoint_is_retried_on_fresh_clusters(pm: PrivateCluster, kube: KubeClient,
                                                        namespace: str) -> None:
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": j.KIND, "metadata": {"name": "flaky"},
            "spec": {"entrypoint": "echo about to fail; exit 1", "backoffLimit": 2, "rayClusterSpec": HEAD_ONLY}}
    t0 = time.monotonic()
    with History(kube, namespace, "flaky") as history:
        time.sleep(1)
        created = kube.create(jobs_path(namespace), body)
        done = wait_job(kube, namespace, "flaky", "Failed", timeout=600)
        time.sleep(2)
    record("RayJob with backoffLimit 2 -> Failed after 3 attempts", time.monotonic() - t0)
    uid = created["metadata"]["uid"]
    status = done["status"]
    for event in history.jobs:
        st = event["object"].get("status") or {}
        print("history:", event["type"], st.get("attempt"), st.get("jobDeploymentStatus"), st.get("reason"),
              st.get("jobStatus"), st.get("submissionId", "")[-2:], (st.get("message") or "")[:90])
    assert (status["reason"], status.get("jobStatus"), status["attempt"], status["failed"]) == ("JobFailed", "FAILED",
                                                                                           3, 3), status
    assert "exit code 1" in status["message"] and "attempt 3 of 3" in status["message"], status["message"]
    # Exactly three submissions, one per attempt, each on a fresh cluster.
    assert history.submissions() == [f"rayjob-{uid}-{n}" for n in (1, 2, 3)], history.submissions()
    rays = history.created_rays()
    assert [name for name, _ in rays] == ["flaky-1", "flaky-2", "flaky-3"], rays
    assert len({u for _, u in rays}) == 3
    deployment = [e["object"].get("status", {}).get("jobDeploymentStatus") for e in history.jobs]
    assert deployment.count("Retrying") >= 2 and "Running" in deployment
    # The failed attempts' clusters were deleted; the last one stays (no shutdownAfterJobFinishes).
    wait_until(lambda: _get(kube, rays_path(namespace, "flaky-1")) is None
               and _get(kube, rays_path(namespace, "flaky-2")) is None, 60, 0.5)
    assert _get(kube, rays_path(namespace, "flaky-3")) is not None
    jobs = [x for x in ray_jobs(pm, kube, namespace, "flaky-3") if x["submission_id"].startswith(f"rayjob-{uid}")]
    assert [(x["submission_id"], x["status"]) for x in jobs] == [(f"rayjob-{uid}-3", "FAILED")], jobs


def test_deadline_stops_the_ray_job(pm: PrivateCluster, kube: KubeClient, namespace: str) -> None:
    kube.create(rays_path(namespace), {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Ray",
                                       "metadata": {"name": "long", "labels": {"use": "deadline"}},
                                       "spec": HEAD_ONLY})
    wait_ready(kube, namespace, "long")
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": j.KIND, "metadata": {"name": "sleeper"},
            "spec": {"entrypoint": "echo sleeping; sleep 300", "activeDeadlineSeconds": 20,
                     "clusterSelector": {"use": "deadline"}}}
    kube.create(jobs_path(namespace), body)
    running = wait_job(kube, namespace, "sleeper", ("Running", "Failed"), timeout=60)
    assert running["status"]["jobDeploymentStatus"] == "Running", running["status"]
    done = wait_job(kube, namespace, "sleeper", "Failed", timeout=60)
    status = done["status"]
    overdue = parse_ts(status["endTime"]) - parse_ts(status["startTime"])
    record("activeDeadlineSeconds 20 -> Failed (endTime - startTime)", overdue)
    assert status["reason"] == "DeadlineExceeded" and "activeDeadlineSeconds (20 s)" in status["message"]
    assert 20 <= overdue <= 20 + 3, status
    # Seen from Ray: the job was stopped; the status follows Ray to STOPPED.
    final = wait_until(lambda: ((_get(kube, jobs_path(namespace, "sleeper")) or {}).get("status") or {}).get(
        "jobStatus") == "STOPPED" and _get(kube, jobs_path(namespace, "sleeper")), 60, 0.5)
    sid = final["status"]["submissionId"]
    mine = [x for x in ray_jobs(pm, kube, namespace, "long") if x["submission_id"] == sid]
    assert [x["status"] for x in mine] == ["STOPPED"], mine
    assert "StoppingJob" in events_of(kube, namespace, "sleeper")
    rv = final["metadata"]["resourceVersion"]
    time.sleep(5)
    assert (_get(kube, jobs_path(namespace, "sleeper")) or {})["metadata"]["resourceVersion"] == rv


def test_deleting_a_running_job_stops_it_first(pm: PrivateCluster, kube: KubeClient, namespace: str) -> None:
    """On an existing Ray (which stays, so Ray can be asked afterwards): deleting the running RayJob stops the Ray
    job, and the RayJob goes once Ray reports it STOPPED. On its own cluster: the RayJob, its Ray and its pods go,
    and the finalizer never sticks."""
    kube.create(rays_path(namespace), {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Ray",
                                       "metadata": {"name": "host", "labels": {"use": "victim"}},
                                       "spec": HEAD_ONLY})
    wait_ready(kube, namespace, "host")
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": j.KIND, "metadata": {"name": "victim"},
            "spec": {"entrypoint": "echo sleeping; sleep 300", "clusterSelector": {"use": "victim"}}}
    kube.create(jobs_path(namespace), body)
    running = wait_until(lambda: ((_get(kube, jobs_path(namespace, "victim")) or {}).get("status") or {}).get(
        "jobStatus") == "RUNNING" and _get(kube, jobs_path(namespace, "victim")), 120, 0.5)
    assert "ray.k8s.io/stop-ray-job" in running["metadata"]["finalizers"]
    sid = running["status"]["submissionId"]
    t0 = time.monotonic()
    kube.delete(jobs_path(namespace, "victim"))
    wait_until(lambda: _get(kube, jobs_path(namespace, "victim")) is None, 90, 0.2, message="RayJob gone")
    record("running RayJob deleted -> gone (Ray job stopped first)", time.monotonic() - t0)
    mine = [x for x in ray_jobs(pm, kube, namespace, "host") if x["submission_id"] == sid]
    assert [x["status"] for x in mine] == ["STOPPED"], mine
    assert _get(kube, rays_path(namespace, "host")) is not None

    own = {"apiVersion": f"{GROUP}/{VERSION}", "kind": j.KIND, "metadata": {"name": "own"},
           "spec": {"entrypoint": "echo sleeping; sleep 300", "rayClusterSpec": HEAD_ONLY}}
    kube.create(jobs_path(namespace), own)
    wait_until(lambda: ((_get(kube, jobs_path(namespace, "own")) or {}).get("status") or {}).get(
        "jobStatus") == "RUNNING", 180, 0.5, message="own job RUNNING")
    t0 = time.monotonic()
    kube.delete(jobs_path(namespace, "own"))
    wait_until(lambda: _get(kube, jobs_path(namespace, "own")) is None, 90, 0.2, message="RayJob gone")
    record("running RayJob on its own cluster deleted -> gone", time.monotonic() - t0)
    wait_until(lambda: _get(kube, rays_path(namespace, "own-1")) is None, 120, 0.5, message="its Ray gone")
    wait_until(lambda: not cluster_pods(kube, namespace, "own-1"), 120, 0.5, message="its pods gone")


def operator_pods(kube: KubeClient, namespace: str = OPERATOR_NS) -> list[dict[str, Any]]:
    return list(kube.get(f"/api/v1/namespaces/{namespace}/pods",
                         labelSelector="app.kubernetes.io/name=rayop")["items"])


def rolled_out(pm: PrivateCluster, kube: KubeClient, before: str, namespace: str = OPERATOR_NS) -> str:
    """Wait until exactly one operator pod (in `namespace`), not `before`, is Ready; its name."""
    def one() -> str | None:
        items = [p for p in operator_pods(kube, namespace) if not p["metadata"].get("deletionTimestamp")]
        ready = [p for p in items if is_ready(p)]
        if len(items) == 1 and len(ready) == 1 and ready[0]["metadata"]["name"] != before:
            return str(ready[0]["metadata"]["name"])
        return None

    name: str = wait_until(one, 180, 0.5, message="the operator rolled out")
    return name


def set_operator_command(pm: PrivateCluster, command: list[str], env: list[dict[str, Any]]) -> None:
    """Replace the command and environment of the operator's container (one rollout)."""
    path = "/spec/template/spec/containers/0"
    patch = [{"op": "replace", "path": f"{path}/command", "value": command},
             {"op": "replace", "path": f"{path}/env", "value": env}]
    pm.kubectl("patch", "-n", OPERATOR_NS, "deployment/rayop", "--type=json", "-p", json.dumps(patch))


def shipped_container() -> dict[str, Any]:
    """The operator's container as manifests/deployment.yaml ships it."""
    deployment = next(d for d in yaml.safe_load_all((MANIFESTS / "deployment.yaml").read_text())
                      if d and d["kind"] == "Deployment")
    container: dict[str, Any] = deployment["spec"]["template"]["spec"]["containers"][0]
    return container


def test_operator_killed_right_after_submitting_never_submits_twice(pm: PrivateCluster, kube: KubeClient,
                                                                     namespace: str, operator_pod: str) -> None:
    """The operator exits (test hook) right after Ray accepted the submission and before its status says so; the
    restarted operator finds the submission in Ray and adopts it: exactly one Ray job with that id runs."""
    kube.create(rays_path(namespace), {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Ray",
                                       "metadata": {"name": "crashhost", "labels": {"use": "crash"}},
                                       "spec": HEAD_ONLY})
    wait_ready(kube, namespace, "crashhost")
    current = next(p["metadata"]["name"] for p in operator_pods(kube) if is_ready(p))
    # The same operator, started through the test entry point that exits right after Ray accepts a submission.
    shipped = shipped_container()
    faulty = ["python", "-m", "tests.support.faulty", "--exit-after-submit", *shipped["command"][1:]]
    set_operator_command(pm, faulty, [*shipped["env"], {"name": "PYTHONPATH", "value": str(REPO)}])
    crashing = rolled_out(pm, kube, current)
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": j.KIND, "metadata": {"name": "once"},
            "spec": {"entrypoint": "echo started; sleep 8; echo finished", "clusterSelector": {"use": "crash"}}}
    created = kube.create(jobs_path(namespace), body)
    sid = j.submission_id(created["metadata"]["uid"], 1)

    def restarted() -> bool:
        pod = kube.get(f"/api/v1/namespaces/{OPERATOR_NS}/pods/{crashing}")
        return any(c.get("restartCount", 0) >= 1 for c in pod["status"].get("containerStatuses") or [])

    wait_until(restarted, 120, 0.5, message="the operator exited after the submission")
    previous = pm.kubectl("logs", "-n", OPERATOR_NS, crashing, "--previous", check=False).stdout
    assert "test hook: exiting after submission" in previous and sid in previous, previous[-2000:]
    done = wait_job(kube, namespace, "once", "Complete", timeout=180)
    assert done["status"]["submissionId"] == sid and done["status"]["jobStatus"] == "SUCCEEDED"
    mine = [x for x in ray_jobs(pm, kube, namespace, "crashhost") if x["submission_id"].startswith("rayjob-")]
    assert [(x["submission_id"], x["status"]) for x in mine] == [(sid, "SUCCEEDED")], mine
    set_operator_command(pm, shipped["command"], shipped["env"])
    rolled_out(pm, kube, crashing)


def submitter_pods(kube: KubeClient, ns: str, job: str) -> list[dict[str, Any]]:
    items = kube.get(f"/api/v1/namespaces/{ns}/pods", labelSelector=f"batch.kubernetes.io/job-name={job}")["items"]
    return sorted(items, key=lambda p: p["metadata"]["creationTimestamp"])


def test_k8s_job_mode_output_is_in_kubectl_logs(pm: PrivateCluster, kube: KubeClient, namespace: str) -> None:
    """The sample logs-in-kubectl.yaml as shipped (K8sJob mode): a submitter Job owned by the RayJob runs `ray job
    submit` from the head's image (here: the virtualenv's ray); the program's output is in `kubectl logs` of the
    submitter; the state comes from Ray: SUCCEEDED / Complete; the cluster goes 5 s + one reconcile after the end;
    the submitter Job stays until the RayJob goes, then goes with it."""
    sample = MANIFESTS / "samples" / "rayjob" / "logs-in-kubectl.yaml"
    body = yaml.safe_load(sample.read_text())
    assert body["spec"]["submissionMode"] == "K8sJob" and body["spec"]["entrypoint"].startswith("python ")
    body["spec"]["entrypoint"] = PYTHON + body["spec"]["entrypoint"].removeprefix("python")
    t0 = time.monotonic()
    pm.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(body))
    name = body["metadata"]["name"]
    uid = wait_until(lambda: _get(kube, jobs_path(namespace, name)), 30)["metadata"]["uid"]
    child, submitter = j.cluster_name(name, 1), j.submitter_name(name, 1)
    done = wait_job(kube, namespace, name, "Complete")
    record("K8sJob RayJob created -> Complete", time.monotonic() - t0)
    status = done["status"]
    assert status["jobStatus"] == "SUCCEEDED" and status["reason"] == "JobSucceeded", status
    assert status["submissionId"] == f"rayjob-{uid}-1" and status["submitterName"] == submitter
    job = kube.get(f"/apis/batch/v1/namespaces/{namespace}/jobs/{submitter}")
    (owner,) = job["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["uid"], owner["controller"]) == ("RayJob", uid, True)
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["command"][:2] == ["bash", "-c"] and f"rayjob-{uid}-1" in container["command"]
    # The program's output, through the submitter's `ray job logs --follow`.
    # The entrypoint's text, echoed by Ray ("Running entrypoint ..."), holds "program output" too: wait for the line
    # the program prints, not for the words.
    logs = wait_until(lambda: (lambda out: out if _has_line(out, lambda x: x.startswith("program output:")) else None)(
        pm.kubectl("logs", "-n", namespace, f"job/{submitter}", check=False).stdout), 60, 1,
        message="the program's output in kubectl logs")
    print(logs[-1500:])
    assert "program output: ran one task on each of 2 nodes: [True, True]" in logs, logs[-3000:]
    assert f"submitting rayjob-{uid}-1" in logs, logs[-3000:]
    # shutdownAfterJobFinishes + ttlSecondsAfterFinished 5.
    wait_until(lambda: _get(kube, rays_path(namespace, child)) is None, 60, 0.2, message="the child Ray deleted")
    gone_after = time.time() - parse_ts(status["endTime"])
    record("K8sJob: job end -> child Ray deleted (ttl 5 s)", gone_after)
    assert gone_after < 5 + 1 + 3, gone_after  # endTime has 1 s resolution; one reconcile and the watch
    # Exactly one Ray job ran: the submitter Job succeeded with one pod (its `ray job logs --follow` ends after the
    # Ray job; the Job controller counts the pod a moment later, which may come after the cluster is gone).
    job = wait_until(lambda: (j_ := kube.get(f"/apis/batch/v1/namespaces/{namespace}/jobs/{submitter}"))
                     and not j_["status"].get("active") and j_, 60, 0.5, message="the submitter Job finished")
    assert job["status"].get("succeeded") == 1 and not job["status"].get("failed"), job["status"]
    wanted = ("CreatedCluster", "CreatedSubmitter", "SubmitterCreated", "JobSucceeded", "DeletedCluster")
    reasons = wait_until(lambda: (lambda r: r if all(x in r for x in wanted) else None)(
        events_of(kube, namespace, name)), 30, 0.5, message=f"the Events {wanted}")
    for reason in wanted:
        assert reason in reasons, reasons
    # The submitter goes with the RayJob.
    kube.delete(jobs_path(namespace, name))
    wait_until(lambda: _get(kube, f"/apis/batch/v1/namespaces/{namespace}/jobs/{submitter}") is None, 60, 0.5,
               message="the submitter Job deleted with the RayJob")
    wait_until(lambda: not submitter_pods(kube, namespace, submitter), 60, 0.5, message="the submitter pod gone")


def test_k8s_job_mode_retried_submitter_follows_instead_of_resubmitting(pm: PrivateCluster, kube: KubeClient,
                                                                         namespace: str) -> None:
    """A submitter pod started again after Ray accepted the submission (the Job's pod template run once more) finds
    the submission id known to Ray and follows its logs; Ray runs the program exactly once."""
    kube.create(rays_path(namespace), {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Ray",
                                       "metadata": {"name": "subhost", "labels": {"use": "submitter"}},
                                       "spec": HEAD_ONLY})
    wait_ready(kube, namespace, "subhost")
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": j.KIND, "metadata": {"name": "follow"},
            "spec": {"submissionMode": "K8sJob", "clusterSelector": {"use": "submitter"},
                     "entrypoint": "echo started; sleep 40; echo finished"}}
    created = kube.create(jobs_path(namespace), body)
    sid = j.submission_id(created["metadata"]["uid"], 1)
    submitter = j.submitter_name("follow", 1)
    wait_until(lambda: ((_get(kube, jobs_path(namespace, "follow")) or {}).get("status") or {}).get(
        "jobStatus") == "RUNNING", 120, 0.5, message="the Ray job RUNNING")
    wait_until(lambda: (lambda ps: ps[0] if ps and "started" in pm.kubectl(
        "logs", "-n", namespace, ps[0]["metadata"]["name"], check=False).stdout else None)(
        submitter_pods(kube, namespace, submitter)), 60, 0.5, message="the first submitter pod following")
    # A retried submitter pod: the Job's own pod template run once more while the first pod still follows (what
    # the Job controller starts after a pod failure; deleting the pod is not used, since in process mode a
    # deleted pod's process may live on until the Ray job ends).
    job = kube.get(f"/apis/batch/v1/namespaces/{namespace}/jobs/{submitter}")
    template = job["spec"]["template"]
    retry = kube.create(f"/api/v1/namespaces/{namespace}/pods", {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "follow-retry"},
        "spec": {k: v for k, v in template["spec"].items()}})
    second = retry
    done = wait_job(kube, namespace, "follow", "Complete", timeout=180)
    assert done["status"]["submissionId"] == sid and done["status"]["jobStatus"] == "SUCCEEDED"
    logs = wait_until(lambda: (lambda out: out if _has_line(out, lambda x: x == "finished") else None)(
        pm.kubectl("logs", "-n", namespace, second["metadata"]["name"], check=False).stdout), 60, 1,
        message="the second pod's logs")
    print(logs[-1000:])
    assert f"Ray already has the submission {sid}; following its logs" in logs, logs[-2000:]
    assert "submitting" not in logs, logs[-2000:]
    mine = [x for x in ray_jobs(pm, kube, namespace, "subhost") if x["submission_id"].startswith("rayjob-")]
    assert [(x["submission_id"], x["status"]) for x in mine] == [(sid, "SUCCEEDED")], mine


def test_k8s_job_mode_deleted_submitter_pod_is_replaced_and_follows(pm: PrivateCluster, kube: KubeClient,
                                                                     namespace: str) -> None:
    """The running submitter pod is deleted after Ray accepted the submission: its process stops on SIGTERM and
    exits 143, so the Job counts a failure and its controller starts another pod, which finds the submission id
    known to Ray and follows its logs; Ray runs the program once, and the RayJob ends Complete / SUCCEEDED."""
    kube.create(rays_path(namespace), {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Ray",
                                       "metadata": {"name": "delhost", "labels": {"use": "deleted-submitter"}},
                                       "spec": HEAD_ONLY})
    wait_ready(kube, namespace, "delhost")
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": j.KIND, "metadata": {"name": "redo"},
            "spec": {"submissionMode": "K8sJob", "clusterSelector": {"use": "deleted-submitter"},
                     "entrypoint": "echo started; sleep 45; echo finished"}}
    created = kube.create(jobs_path(namespace), body)
    sid = j.submission_id(created["metadata"]["uid"], 1)
    submitter = j.submitter_name("redo", 1)
    job_path = f"/apis/batch/v1/namespaces/{namespace}/jobs/{submitter}"
    wait_until(lambda: ((_get(kube, jobs_path(namespace, "redo")) or {}).get("status") or {}).get(
        "jobStatus") == "RUNNING", 120, 0.5, message="the Ray job RUNNING")
    first = wait_until(lambda: (lambda ps: ps[0] if ps and "started" in pm.kubectl(
        "logs", "-n", namespace, ps[0]["metadata"]["name"], check=False).stdout else None)(
        submitter_pods(kube, namespace, submitter)), 90, 0.5, message="the first submitter pod following")
    # The program's first line is in `kubectl logs` while it runs (it sleeps 45 s after it), as Ray itself says:
    # the submitter's `ray job logs` output is live, not held in Python's buffer until the job ends.
    print(pm.kubectl("logs", "--timestamps", "-n", namespace, first["metadata"]["name"], check=False).stdout[-1500:])
    seen_by_ray = {x["submission_id"]: x["status"] for x in ray_jobs(pm, kube, namespace, "delhost")}
    assert seen_by_ray.get(sid) == "RUNNING", seen_by_ray
    kube.delete(f"/api/v1/namespaces/{namespace}/pods/{first['metadata']['name']}", {"gracePeriodSeconds": 5})
    try:
        # The deleted pod's process stopped on SIGTERM, the Job counted a failure, and its controller starts
        # another pod (after its back-off, 10 s) while the Ray job still runs.
        failed = wait_until(lambda: (lambda st: st if st.get("failed") else None)(
            (_get(kube, job_path) or {}).get("status") or {}), 60, 0.5, message="the Job counting the failure")
        assert not failed.get("succeeded"), failed
        second = wait_until(lambda: next((p for p in submitter_pods(kube, namespace, submitter)
                                          if p["metadata"]["name"] != first["metadata"]["name"]), None), 90, 0.5,
                            message="a second submitter pod")
    except AssertionError:
        print(json.dumps((_get(kube, job_path) or {}).get("status"), indent=1))
        print(json.dumps([(p["metadata"]["name"], p["status"]) for p in submitter_pods(kube, namespace, submitter)],
                         indent=1)[:4000])
        agent_log = pm.state_dir / "logs" / "node-agent.log"
        if agent_log.exists():
            print("\n".join(x for x in agent_log.read_text(errors="replace").splitlines()
                            if first["metadata"]["name"] in x)[-4000:])
        raise
    done = wait_job(kube, namespace, "redo", "Complete", timeout=180)
    assert done["status"]["submissionId"] == sid and done["status"]["jobStatus"] == "SUCCEEDED"
    assert parse_ts(second["metadata"]["creationTimestamp"]) < parse_ts(done["status"]["endTime"]), done["status"]
    logs = wait_until(lambda: (lambda out: out if _has_line(out, lambda x: x == "finished") else None)(
        pm.kubectl("logs", "-n", namespace, second["metadata"]["name"], check=False).stdout), 60, 1,
        message="the second pod's logs")
    print(logs[-1000:])
    assert f"Ray already has the submission {sid}; following its logs" in logs, logs[-2000:]
    assert "submitting" not in logs, logs[-2000:]
    status = wait_until(lambda: (lambda st: st if st.get("succeeded") else None)(
        (_get(kube, job_path) or {}).get("status") or {}), 60, 0.5, message="the Job's success")
    assert status["succeeded"] == 1 and status["failed"] == 1, status
    mine = [x for x in ray_jobs(pm, kube, namespace, "delhost") if x["submission_id"].startswith("rayjob-")]
    assert [(x["submission_id"], x["status"]) for x in mine] == [(sid, "SUCCEEDED")], mine


def test_suspend_then_resume_then_delete_self(pm: PrivateCluster, kube: KubeClient, namespace: str) -> None:
    """Created suspended: no cluster, no pods, Suspended. Resumed: it runs. Suspended while running: Ray is asked
    to stop the job, its cluster is deleted, Suspended (attempt 2 next). Resumed again: it runs to Complete on a
    fresh cluster, and deletionPolicy DeleteSelf deletes the RayJob (and with it its cluster) ttl later."""
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": j.KIND, "metadata": {"name": "queued"},
            "spec": {"suspend": True, "deletionPolicy": "DeleteSelf", "ttlSecondsAfterFinished": 3,
                     "entrypoint": "echo started; sleep 12; echo finished", "rayClusterSpec": HEAD_ONLY}}
    kube.create(jobs_path(namespace), body)
    job = wait_job(kube, namespace, "queued", "Suspended", timeout=60)
    assert job["status"]["reason"] == "Suspended" and job["status"]["attempt"] == 1
    time.sleep(3)
    assert not kube.get(rays_path(namespace), labelSelector=f"{j.LABEL_RAYJOB}=queued")["items"]
    assert not kube.get(f"/api/v1/namespaces/{namespace}/pods")["items"]
    assert (_get(kube, jobs_path(namespace, "queued")) or {})["status"]["jobDeploymentStatus"] == "Suspended"

    kube.patch(jobs_path(namespace, "queued"), {"spec": {"suspend": False}})
    wait_until(lambda: ((_get(kube, jobs_path(namespace, "queued")) or {}).get("status") or {}).get(
        "jobStatus") == "RUNNING", 180, 0.5, message="attempt 1 RUNNING")
    assert _get(kube, rays_path(namespace, "queued-1")) is not None
    kube.patch(jobs_path(namespace, "queued"), {"spec": {"suspend": True}})
    suspended = wait_job(kube, namespace, "queued", "Suspended", timeout=60)
    status = suspended["status"]
    assert status["attempt"] == 2 and not status.get("failed") and "jobStatus" not in status, status
    assert "attempt 1 was stopped" in status["message"], status
    wait_until(lambda: _get(kube, rays_path(namespace, "queued-1")) is None, 120, 0.5, message="queued-1 deleted")
    reasons = events_of(kube, namespace, "queued")
    assert "StoppingJob" in reasons and "Suspended" in reasons, reasons

    kube.patch(jobs_path(namespace, "queued"), {"spec": {"suspend": False}})
    done = wait_job(kube, namespace, "queued", "Complete", timeout=300)
    assert done["status"]["jobStatus"] == "SUCCEEDED" and done["status"]["rayClusterName"] == "queued-2"
    assert done["status"]["submissionId"].endswith("-2")
    t_end = parse_ts(done["status"]["endTime"])
    wait_until(lambda: _get(kube, jobs_path(namespace, "queued")) is None, 60, 0.2,
               message="the RayJob deleted (DeleteSelf)")
    record("job end -> RayJob deleted (DeleteSelf, ttl 3 s)", time.time() - t_end)
    wait_until(lambda: _get(kube, rays_path(namespace, "queued-2")) is None, 120, 0.5,
               message="its Ray deleted with it")
