"""Day-two operations on the real API server (sim mode): scaling by the bounds, deadlines kept without events,
an idle fleet that costs no writes."""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rayop.runtime.kube import ApiError, KubeClient
from tests.integration.test_reconcile import condition, is_true, live, pods, wait_ready, worker_count
from tests.support.cluster import LocalCluster, wait_until
from tests.support.operator import OperatorProcess, load_sample, metrics_text, rays_path

WRITE_VERBS = ("POST", "PUT", "PATCH", "DELETE")


@pytest.fixture(scope="module")
def crd(ray_crd: None) -> None:
    """The `Ray` CRD (the session's `ray_crd`)."""


def start_operator(cluster: LocalCluster, namespaces: list[str], log: Path, *args: str) -> OperatorProcess:
    op = OperatorProcess(cluster, namespaces, log, extra_args=list(args))
    op.start()
    return op


def stop_operator(op: OperatorProcess) -> None:
    op.stop()
    assert "Traceback" not in op.log(), op.log()[-5000:]


def metrics_port(op: OperatorProcess) -> int:
    port: int = wait_until(lambda: (m := re.search(r'"metrics_port": (\d+)', op.log())) and int(m.group(1)), 30,
                           message="the operator's metrics port")
    return port


def counters(port: int) -> tuple[int, int]:
    """(reconciles, API writes) the operator has done so far, from its own metrics."""
    reconciles = writes = 0
    for line in metrics_text(port).splitlines():
        if line.startswith("controller_runtime_reconcile_total{"):
            reconciles += int(float(line.rsplit(" ", 1)[1]))
        elif line.startswith("rayop_api_requests_total{") or line.startswith("rayop_api_requests{"):
            if any(f'verb="{v}"' in line for v in WRITE_VERBS):
                writes += int(float(line.rsplit(" ", 1)[1]))
    return reconciles, writes


def events(kube: KubeClient, namespace: str, name: str) -> list[dict[str, Any]]:
    return list(kube.get(f"/api/v1/namespaces/{namespace}/events",
                         fieldSelector=f"involvedObject.name={name}")["items"])


# -- 1. scaling by the bounds -------------------------------------------------------------------------------------


@pytest.fixture
def operator(cluster: LocalCluster, namespace: str, crd: None, tmp_path: Path) -> Iterator[OperatorProcess]:
    op = start_operator(cluster, [namespace], tmp_path / "operator.log")
    yield op
    stop_operator(op)


def test_raising_min_workers_on_a_live_ray_is_accepted_and_clamps(cluster: LocalCluster, kube: KubeClient,
                                                                   namespace: str,
                                                                   operator: OperatorProcess) -> None:
    kube.create(rays_path(namespace), load_sample("seed-structured.yaml", namespace))
    wait_ready(kube, namespace, "ray-sample")
    assert worker_count(kube, namespace, "ray-sample") == 1

    # The command, as a user runs it.
    patched = cluster.kubectl("patch", "ray", "ray-sample", "-n", namespace, "--type", "merge", "-p",
                              '{"spec":{"minWorkers":2,"maxWorkers":3}}', check=False)
    assert patched.returncode == 0, patched.stderr
    wait_until(lambda: worker_count(kube, namespace, "ray-sample") == 2, 60, message="2 workers")
    ready = wait_ready(kube, namespace, "ray-sample")
    assert ready["spec"]["initialWorkers"] == 1 and ready["status"]["desiredWorkers"] == 2
    assert ready["status"]["worker"]["readyReplicas"] == 2
    clamped = wait_until(lambda: [e for e in events(kube, namespace, "ray-sample") if e["reason"] == "WorkersClamped"],
                         30, message="a WorkersClamped Event")
    assert clamped[0]["type"] == "Normal"
    assert "asks for 1" in clamped[0]["message"] and "clamped to 2" in clamped[0]["message"]

    # Changing initialWorkers itself to a value outside the bounds is still refused.
    refused = cluster.kubectl("patch", "ray", "ray-sample", "-n", namespace, "--type", "merge", "-p",
                              '{"spec":{"initialWorkers":5}}', check=False)
    assert refused.returncode != 0 and "spec.initialWorkers" in refused.stderr, refused.stderr

    # Creating a Ray with initialWorkers below minWorkers is still rejected, naming the field.
    bad = load_sample("seed-structured.yaml", namespace)
    bad["metadata"]["name"] = "bad"
    bad["spec"].update(minWorkers=2, maxWorkers=3, initialWorkers=1)
    with pytest.raises(ApiError) as e:
        kube.create(rays_path(namespace), bad)
    assert e.value.status == 422 and "spec.initialWorkers" in e.value.message, e.value.message
    # So is a new worker group whose initial count is outside its bounds, added to a live Ray.
    groups = load_sample("worker-groups.yaml", namespace)
    kube.create(rays_path(namespace), groups)
    current = kube.get(rays_path(namespace, groups["metadata"]["name"]))
    current["spec"]["workerGroups"].append({"name": "extra", "minWorkers": 2, "maxWorkers": 3, "initialWorkers": 0})
    with pytest.raises(ApiError) as e:
        kube.replace(rays_path(namespace, groups["metadata"]["name"]), current)
    assert e.value.status == 422 and "initialWorkers" in e.value.message, e.value.message


# -- 2. deadlines nobody wakes up for -------------------------------------------------------------------------------


def never_ready_ray(namespace: str) -> dict[str, Any]:
    ray = load_sample("static.yaml", namespace)
    ray["metadata"]["name"] = "stuck"
    ray["spec"].update(minWorkers=1, maxWorkers=1, initialWorkers=1)
    ray["spec"]["worker"]["metadata"] = {"annotations": {"sim.rayop.dev/ready": "false"}}
    return ray


def test_a_worker_that_never_becomes_ready_is_replaced_at_its_deadline_without_events(
        cluster: LocalCluster, kube: KubeClient, namespace: str, crd: None, tmp_path: Path) -> None:
    # A 20 s join deadline, no resync: only the deadline's own requeue can wake the operator.
    op = start_operator(cluster, [namespace], tmp_path / "operator.log", "--join-timeout", "20",
                        "--resync-period", "0")
    try:
        kube.create(rays_path(namespace), never_ready_ray(namespace))
        first = wait_until(lambda: (w := live(pods(kube, namespace, "stuck", "worker"))) and
                           w[0].get("status", {}).get("phase") == "Running" and w[0], 60,
                           message="a running worker")
        name = first["metadata"]["name"]
        started = time.monotonic()
        # Nothing else happens to the cluster now: the head is ready, the launcher done, the worker stays unready.
        gone = wait_until(lambda: name not in {p["metadata"]["name"] for p in live(pods(kube, namespace, "stuck",
                                                                                         "worker"))}, 90,
                          interval=0.5, message=f"{name} replaced")
        waited = time.monotonic() - started
        assert gone
        # The deadline (20 s) plus the first replacement back-off (10 s), measured from Running.
        assert 20 <= waited <= 60, waited
        replacement = wait_until(lambda: live(pods(kube, namespace, "stuck", "worker")), 30,
                                 message="a replacement worker")
        assert replacement[0]["metadata"]["annotations"].get("ray.k8s.io/replacements") == "1"
        deleted = [e for e in events(kube, namespace, "stuck")
                   if e["reason"] == "Deleted" and f"Pod {name}" in e["message"]]
        assert deleted and "NeverReady" in deleted[0]["message"], deleted
        assert '"requeue_after"' in op.log()
    finally:
        stop_operator(op)


IDLE_SECONDS = float(os.environ.get("RAYOP_IDLE_SECONDS", "60"))
IDLE_RESYNC = float(os.environ.get("RAYOP_IDLE_RESYNC", "20"))
IDLE_RAYS = 20


@pytest.mark.slow
def test_an_idle_fleet_is_resynced_boundedly_and_costs_no_writes(cluster: LocalCluster, kube: KubeClient,
                                                                 crd: None, tmp_path: Path) -> None:
    """20 idle Rays for RAYOP_IDLE_SECONDS (60 s here; 300 s is the documented long run) with a resync every
    RAYOP_IDLE_RESYNC seconds: every Ray is reconciled about once per period, and nothing is written."""
    stamp = int(time.time()) % 100000
    namespaces = [f"t-idle-{i}-{stamp}" for i in range(4)]
    for ns in namespaces:
        kube.create("/api/v1/namespaces", {"metadata": {"name": ns, "labels": {"rayop.dev/test": "true"}}})
    op = start_operator(cluster, namespaces, tmp_path / "operator.log", "--resync-period", str(IDLE_RESYNC))
    try:
        port = metrics_port(op)
        for i in range(IDLE_RAYS):
            ray = load_sample("static.yaml", namespaces[i % 4])
            ray["metadata"]["name"] = f"idle{i}"
            ray["spec"].update(initialWorkers=1)
            kube.create(rays_path(namespaces[i % 4]), ray)
        for i in range(IDLE_RAYS):
            ns = namespaces[i % 4]
            wait_until(lambda: is_true(r := kube.get(rays_path(ns, f"idle{i}")), "Ready")
                       and is_true(r, "SuccessfulLaunch")
                       and r["status"].get("observedGeneration") == r["metadata"]["generation"], 240,
                       message=f"idle{i} settled")
        # Let the last reconciles and Events go out, then measure.
        wait_until(lambda: counters(port)[1] == (time.sleep(3) or counters(port)[1]), 60, message="writes settle")
        versions = {(ns, r["metadata"]["name"]): r["metadata"]["resourceVersion"]
                    for ns in namespaces for r in kube.get(rays_path(ns))["items"]}
        reconciles0, writes0 = counters(port)
        time.sleep(IDLE_SECONDS)
        reconciles1, writes1 = counters(port)
        after = {(ns, r["metadata"]["name"]): r["metadata"]["resourceVersion"]
                 for ns in namespaces for r in kube.get(rays_path(ns))["items"]}
    finally:
        stop_operator(op)
        for ns in namespaces:
            try:
                kube.delete(f"/api/v1/namespaces/{ns}")
            except ApiError:
                pass
    reconciles = reconciles1 - reconciles0
    print(f"idle: {IDLE_RAYS} Rays, {IDLE_SECONDS:g} s, resync {IDLE_RESYNC:g} s: {reconciles} reconciles, "
          f"{writes1 - writes0} writes")
    assert writes1 - writes0 == 0
    assert after == versions
    # About one reconcile per Ray per period (the jitter adds up to 10 %), never a loop.
    periods = IDLE_SECONDS / IDLE_RESYNC
    assert reconciles <= IDLE_RAYS * (periods + 1), reconciles
    assert reconciles >= IDLE_RAYS * int(periods / 1.1 - 1), reconciles


# -- suspend --------------------------------------------------------------------------------------------------------


def test_suspend_and_resume_a_live_ray(kube: KubeClient, namespace: str, operator: OperatorProcess) -> None:
    kube.create(rays_path(namespace), load_sample("static.yaml", namespace))
    before = wait_ready(kube, namespace, "static")
    workers_before = before["status"]["worker"]["readyReplicas"]
    assert workers_before == 3
    service = kube.get(f"/api/v1/namespaces/{namespace}/services/static-head")["metadata"]["uid"]
    config = kube.get(f"/api/v1/namespaces/{namespace}/configmaps/static-ray")["metadata"]["uid"]

    kube.patch(rays_path(namespace, "static"), {"spec": {"suspend": True}})
    t0 = time.monotonic()
    wait_until(lambda: not pods(kube, namespace, "static", "worker") and not pods(kube, namespace, "static", "head"),
               60, message="every pod gone")
    print(f"suspended: pods gone in {time.monotonic() - t0:.1f}s")
    suspended = wait_until(lambda: (r := kube.get(rays_path(namespace, "static"))) and
                           (condition(r, "Suspended") or {}).get("status") == "True" and
                           (condition(r, "Suspended") or {}).get("message") == "no pod runs" and r, 30,
                           message="Suspended")
    assert (condition(suspended, "Ready") or {}).get("reason") == "Suspended"
    assert suspended["status"]["worker"]["replicas"] == 0 and suspended["status"]["head"]["replicas"] == 0
    assert kube.get(f"/api/v1/namespaces/{namespace}/services/static-head")["metadata"]["uid"] == service
    assert kube.get(f"/api/v1/namespaces/{namespace}/configmaps/static-ray")["metadata"]["uid"] == config
    time.sleep(3)
    assert not pods(kube, namespace, "static")  # nothing comes back while suspended

    kube.patch(rays_path(namespace, "static"), {"spec": {"suspend": False}})
    resumed = wait_ready(kube, namespace, "static")
    assert resumed["status"]["worker"]["readyReplicas"] == workers_before == worker_count(kube, namespace, "static")
    c = condition(resumed, "Suspended") or {}
    assert (c.get("status"), c.get("reason")) == ("False", "Resumed")
    wait_until(lambda: is_true(kube.get(rays_path(namespace, "static")), "SuccessfulLaunch"), 60,
               message="relaunched after resume")


# -- rolling updates ----------------------------------------------------------------------------------------------


class PodHistory:
    """Every pod of a namespace the API server showed (watch), and the most alive (not terminated) at once."""

    def __init__(self, cluster: LocalCluster, kube: KubeClient, namespace: str) -> None:
        self.added: list[dict[str, Any]] = []
        self.peak: dict[str, int] = {}
        self._seen: dict[str, dict[str, Any]] = {}
        self._stop = threading.Event()
        self._rv = kube.get(f"/api/v1/namespaces/{namespace}/pods", limit=1)["metadata"]["resourceVersion"]
        self._watcher = cluster.client()
        self._namespace = namespace
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for event in self._watcher.watch(f"/api/v1/namespaces/{self._namespace}/pods",
                                             {"resourceVersion": self._rv, "timeoutSeconds": 5}, timeout=15):
                obj = event["object"]
                meta = obj["metadata"]
                self._rv = meta.get("resourceVersion", self._rv)
                if event["type"] == "ADDED":
                    self.added.append(obj)
                if event["type"] == "DELETED":
                    self._seen.pop(meta["name"], None)
                elif event["type"] in ("ADDED", "MODIFIED"):
                    self._seen[meta["name"]] = obj
                for kind in ("head", "worker"):
                    alive = [p for p in self._seen.values() if (p["metadata"].get("labels") or {}).get(
                        "ray.k8s.io/node-kind") == kind and p.get("status", {}).get("phase") not in (
                        "Succeeded", "Failed")]
                    self.peak[kind] = max(self.peak.get(kind, 0), len(alive))

    def added_of(self, kind: str) -> list[str]:
        return [p["metadata"]["name"] for p in self.added
                if (p["metadata"].get("labels") or {}).get("ray.k8s.io/node-kind") == kind]

    def stop(self) -> None:
        time.sleep(1)
        self._stop.set()
        self._thread.join(20)


def uids(kube: KubeClient, namespace: str, name: str) -> set[str]:
    return {p["metadata"]["uid"] for kind in ("head", "worker") for p in live(pods(kube, namespace, name, kind))}


def test_rolling_updates_of_workers_head_and_knobs(cluster: LocalCluster, kube: KubeClient, namespace: str,
                                                  operator: OperatorProcess) -> None:
    kube.create(rays_path(namespace), load_sample("static.yaml", namespace))
    wait_ready(kube, namespace, "static")
    wait_until(lambda: is_true(kube.get(rays_path(namespace, "static")), "SuccessfulLaunch"), 60,
               message="launched")

    # A knob-only change restarts nothing (the ConfigMap follows).
    before = uids(kube, namespace, "static")
    history = PodHistory(cluster, kube, namespace)
    kube.patch(rays_path(namespace, "static"), {"spec": {"idleTimeoutMinutes": 9, "maxWorkers": 6,
                                                         "rollingUpdate": {"maxSurge": 1}}})
    wait_ready(kube, namespace, "static")
    time.sleep(3)
    assert uids(kube, namespace, "static") == before
    assert history.added_of("head") == [] and history.added_of("worker") == []

    # A worker template change rolls the workers within desired (3) + maxSurge (1), with an Event per step.
    kube.patch(rays_path(namespace, "static"), {"spec": {"worker": {"metadata": {"labels": {"rolled": "yes"}}}}})
    rolled = wait_until(lambda: (r := kube.get(rays_path(namespace, "static"))) and is_true(r, "Ready")
                        and r["status"]["observedGeneration"] == r["metadata"]["generation"]
                        and r["status"]["workerGroups"][0]["updatedReplicas"] == 3
                        and r["status"]["workerGroups"][0]["replicas"] == 3 and r, 120,
                        message="workers rolled")
    workers = live(pods(kube, namespace, "static", "worker"))
    assert len(workers) == 3 and all(p["metadata"]["labels"].get("rolled") == "yes" for p in workers)
    assert len(history.added_of("worker")) == 3
    assert history.peak["worker"] <= 3 + 1, history.peak
    steps = [e for e in events(kube, namespace, "static") if e["reason"] == "RollingUpdate"]
    assert steps and all("maxSurge 1, maxUnavailable 0" in e["message"] for e in steps), steps
    assert history.added_of("head") == []
    assert rolled["status"]["head"]["updatedReplicas"] == 1

    # A head template change recreates the head once; the workers stay.
    worker_uids = {p["metadata"]["uid"] for p in workers}
    kube.patch(rays_path(namespace, "static"), {"spec": {"head": {"metadata": {"labels": {"rolled": "yes"}}}}})
    wait_until(lambda: (h := live(pods(kube, namespace, "static", "head"))) and
               h[0]["metadata"]["labels"].get("rolled") == "yes", 60, message="a new head")
    wait_ready(kube, namespace, "static")
    history.stop()
    assert len(history.added_of("head")) == 1, history.added_of("head")
    assert history.peak["head"] == 1
    assert {p["metadata"]["uid"] for p in live(pods(kube, namespace, "static", "worker"))} == worker_uids


# -- deleting a namespace -------------------------------------------------------------------------------------------


def test_deleting_a_namespace_costs_no_refused_creates_retries_or_warnings(cluster: LocalCluster, kube: KubeClient,
                                                                          crd: None, tmp_path: Path) -> None:
    """The namespace controller deletes a namespace's pods first and the `Ray`s only once no pod is left (ordered
    namespace deletion), so the operator sees its pods go while their `Ray` stays. Its first create is refused
    (NamespaceTerminating); it then tries nothing more for that reconcile, records no Warning (Events are refused
    too), writes no status and does not retry; each later watch event of a pod costs at most one refused create."""
    ns = f"t-nsdel-{int(time.time() * 1000) % 10**8}"
    kube.create("/api/v1/namespaces", {"metadata": {"name": ns, "labels": {"rayop.dev/test": "true"}}})
    # A short drain timeout: the namespace controller looks again after half the pods' grace period (40 s here).
    op = start_operator(cluster, [ns], tmp_path / "operator.log", "--drain-timeout", "10")
    try:
        port = metrics_port(op)
        kube.create(rays_path(ns), load_sample("static.yaml", ns))
        wait_until(lambda: is_true(kube.get(rays_path(ns, "static")), "Ready"), 120, message="static Ready")
        pods = len(kube.get(f"/api/v1/namespaces/{ns}/pods")["items"])
        _, writes0 = counters(port)
        kube.delete(f"/api/v1/namespaces/{ns}")
        wait_until(lambda: not kube.get("/api/v1/namespaces", fieldSelector=f"metadata.name={ns}")["items"], 180,
                   0.5, message=f"namespace {ns} deleted")
        _, writes1 = counters(port)
        log = op.log()
    finally:
        stop_operator(op)
    refused = log.count("namespace being deleted: nothing created")
    print(f"{pods} pods; namespace deleted; {refused} refused creates, {writes1 - writes0} operator writes")
    assert "create refused" not in log and not re.search(r'"outcome": "(error|panic)"', log), log[-3000:]
    # At most one per reconcile a pod's watch event starts (its deletion begun, then gone: two per pod) plus the
    # Ray's own events; never a retry (the log check above: no "create refused" warning, no error outcome).
    assert 1 <= refused <= 2 * pods + 2, refused
    assert writes1 - writes0 <= 2 * pods + 4, writes1 - writes0
