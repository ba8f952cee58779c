"""The operator end to end against the real API server and the node agent (sim mode)."""

from __future__ import annotations

import datetime
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rayop.api.quantity import parse_quantity
from rayop.objects import LABEL_CLUSTER, LABEL_GROUP, LABEL_ROLE
from rayop.runtime.kube import ApiError, KubeClient
from tests.support.cluster import LocalCluster, wait_until
from tests.support.operator import OperatorProcess, load_sample, rays_path
from tests.support.specseq import replace_spec

CHILD_KINDS = [
    ("/api/v1", "pods"), ("/api/v1", "services"), ("/api/v1", "configmaps"), ("/api/v1", "serviceaccounts"),
    ("/apis/batch/v1", "jobs"), ("/apis/rbac.authorization.k8s.io/v1", "roles"),
    ("/apis/rbac.authorization.k8s.io/v1", "rolebindings"),
]


@pytest.fixture(scope="module")
def crd(ray_crd: None) -> None:
    """The `Ray` CRD (the session's `ray_crd`)."""


@pytest.fixture
def operator(cluster: LocalCluster, namespace: str, crd: None, tmp_path: Path) -> Iterator[OperatorProcess]:
    op = OperatorProcess(cluster, [namespace], tmp_path / "operator.log")
    op.start()
    yield op
    op.stop()
    log = op.log()
    assert "Traceback" not in log, log[-5000:]


def pods(kube: KubeClient, namespace: str, cluster_name: str, kind: str | None = None) -> list[dict[str, Any]]:
    selector = f"{LABEL_CLUSTER}={cluster_name}"
    if kind:
        selector += f",{LABEL_ROLE}={kind}"
    return list(kube.get(f"/api/v1/namespaces/{namespace}/pods", labelSelector=selector)["items"])


def live(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [p for p in items if not p["metadata"].get("deletionTimestamp")
            and p.get("status", {}).get("phase") not in ("Succeeded", "Failed")]


def condition(ray: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for c in (ray.get("status") or {}).get("conditions") or []:
        if c["type"] == kind:
            return dict(c)
    return None


def is_true(ray: dict[str, Any], kind: str) -> bool:
    c = condition(ray, kind)
    return c is not None and c["status"] == "True"


def wait_ready(kube: KubeClient, namespace: str, name: str, timeout: float = 90) -> dict[str, Any]:
    result: dict[str, Any] = wait_until(
        lambda: (r := kube.get(rays_path(namespace, name))) and is_true(r, "Ready")
        and r["status"].get("observedGeneration") == r["metadata"]["generation"] and r,
        timeout, 0.3, message=f"Ray {namespace}/{name} Ready")
    return result


def event_reasons(kube: KubeClient, namespace: str, obj: dict[str, Any]) -> list[str]:
    selector = f"involvedObject.name={obj['metadata']['name']},involvedObject.uid={obj['metadata']['uid']}"
    return [e.get("reason", "") for e in kube.get(f"/api/v1/namespaces/{namespace}/events",
                                                  fieldSelector=selector)["items"]]


def worker_count(kube: KubeClient, namespace: str, name: str) -> int:
    return len(live(pods(kube, namespace, name, "worker")))


@pytest.mark.parametrize("sample", ["seed-structured.yaml", "seed-configuration.yaml"])
def test_seed_samples_reach_ready(kube: KubeClient, namespace: str, operator: OperatorProcess,
                                  sample: str) -> None:
    ray = load_sample(sample, namespace)
    kube.create(rays_path(namespace), ray)
    name = ray["metadata"]["name"]
    ready = wait_ready(kube, namespace, name)
    expected_workers = 1 if sample == "seed-structured.yaml" else 0
    assert len(live(pods(kube, namespace, name, "head"))) == 1
    assert worker_count(kube, namespace, name) == expected_workers
    status = ready["status"]
    assert status["head"]["readyReplicas"] == 1
    assert status["worker"].get("readyReplicas", 0) == expected_workers
    assert is_true(ready, "HeadReady")
    wait_until(lambda: is_true(kube.get(rays_path(namespace, name)), "SuccessfulLaunch"), 60,
               message="SuccessfulLaunch")
    # The launch ran on the head's Node, placed there by the operator (no binding, no scheduler Event).
    (launcher,) = pods(kube, namespace, name, "launcher")
    (head,) = live(pods(kube, namespace, name, "head"))
    assert launcher["spec"]["nodeName"] == head["spec"]["nodeName"]
    wait_until(lambda: "Scheduled" in event_reasons(kube, namespace, head), 30, message="the head's Scheduled Event")
    assert "Scheduled" not in event_reasons(kube, namespace, launcher)
    services = kube.get(f"/api/v1/namespaces/{namespace}/services")["items"]
    assert [s["metadata"]["name"] for s in services] == [f"{name}-head"]


def test_scale_by_editing_the_spec(kube: KubeClient, namespace: str, operator: OperatorProcess) -> None:
    ray = load_sample("static.yaml", namespace)
    kube.create(rays_path(namespace), ray)
    wait_ready(kube, namespace, "static")
    assert worker_count(kube, namespace, "static") == 3

    kube.patch(rays_path(namespace, "static"), {"spec": {"desiredWorkers": {"worker": 5}}})
    ready = wait_ready(kube, namespace, "static")
    wait_until(lambda: worker_count(kube, namespace, "static") == 5, 60, message="5 workers")
    assert ready["status"]["worker"]["readyReplicas"] == 5

    kube.patch(rays_path(namespace, "static"), {"spec": {"desiredWorkers": {"worker": 1}}})
    wait_until(lambda: worker_count(kube, namespace, "static") == 1, 60, message="1 worker")
    wait_ready(kube, namespace, "static")


def test_out_of_band_deletions_are_repaired(kube: KubeClient, namespace: str, operator: OperatorProcess) -> None:
    ray = load_sample("static.yaml", namespace)
    kube.create(rays_path(namespace), ray)
    wait_ready(kube, namespace, "static")
    victim = live(pods(kube, namespace, "static", "worker"))[0]["metadata"]["name"]
    kube.delete(f"/api/v1/namespaces/{namespace}/pods/{victim}")
    wait_until(lambda: victim not in {p["metadata"]["name"] for p in pods(kube, namespace, "static")}
               and worker_count(kube, namespace, "static") == 3, 60, message="worker replaced")

    head = live(pods(kube, namespace, "static", "head"))[0]
    launched_for = {p["metadata"]["name"] for p in pods(kube, namespace, "static", "launcher")}
    kube.delete(f"/api/v1/namespaces/{namespace}/pods/{head['metadata']['name']}")
    wait_until(lambda: (h := live(pods(kube, namespace, "static", "head"))) and
               h[0]["metadata"]["uid"] != head["metadata"]["uid"], 60, message="head recreated")
    wait_ready(kube, namespace, "static")
    # A new head is a new launch: a new launcher pod runs and succeeds, the earlier launch's pod goes.
    wait_until(lambda: {p["metadata"]["name"] for p in pods(kube, namespace, "static", "launcher")
                        if p["metadata"]["annotations"]["ray.k8s.io/head-uid"] != head["metadata"]["uid"]}
               - launched_for, 60, message="a new launcher pod")
    wait_until(lambda: is_true(kube.get(rays_path(namespace, "static")), "SuccessfulLaunch"), 60,
               message="relaunched")
    wait_until(lambda: not {p["metadata"]["name"] for p in pods(kube, namespace, "static", "launcher")} & launched_for,
               60, message="the earlier launch's pod deleted")
    assert not kube.get(f"/apis/batch/v1/namespaces/{namespace}/jobs")["items"]  # launches run as pods


def test_deleting_the_ray_leaves_no_children(kube: KubeClient, namespace: str, operator: OperatorProcess) -> None:
    kube.create(rays_path(namespace), load_sample("worker-groups.yaml", namespace))
    wait_ready(kube, namespace, "groups")
    kube.delete(rays_path(namespace, "groups"))

    def leftovers() -> list[str]:
        out = []
        for prefix, plural in CHILD_KINDS:
            for item in kube.get(f"{prefix}/namespaces/{namespace}/{plural}")["items"]:
                name = item["metadata"]["name"]
                if plural in ("serviceaccounts", "configmaps") and name in ("default", "kube-root-ca.crt"):
                    continue
                out.append(f"{plural}/{name}")
        return out

    wait_until(lambda: not leftovers(), 90, message="no children left")


def test_many_clusters_never_overshoot(cluster: LocalCluster, kube: KubeClient, crd: None, tmp_path: Path,
                                       request: pytest.FixtureRequest) -> None:
    """20 clusters in 5 namespaces at once; a watch records every pod ever created."""
    namespaces = [f"t-many-{i}-{int(time.time()) % 100000}" for i in range(5)]
    for ns in namespaces:
        kube.create("/api/v1/namespaces", {"metadata": {"name": ns, "labels": {"rayop.dev/test": "true"}}})
    created: dict[tuple[str, str], set[str]] = {}
    stop = threading.Event()
    rv = kube.get("/api/v1/pods", limit=1)["metadata"]["resourceVersion"]

    def record() -> None:
        watcher = cluster.client()
        while not stop.is_set():
            for event in watcher.watch("/api/v1/pods", {"resourceVersion": rv, "labelSelector": LABEL_CLUSTER,
                                                        "timeoutSeconds": 5}, timeout=15):
                meta = event["object"]["metadata"]
                if event["type"] == "ADDED" and meta["namespace"] in namespaces:
                    labels = meta.get("labels", {})
                    key = (meta["namespace"], labels.get(LABEL_CLUSTER, ""))
                    created.setdefault(key, set()).add(f"{labels.get(LABEL_ROLE)}/{meta['name']}")

    op = OperatorProcess(cluster, namespaces, tmp_path / "operator.log")
    thread = threading.Thread(target=record, daemon=True)
    thread.start()
    op.start()
    try:
        for i in range(20):
            ns = namespaces[i % 5]
            ray = load_sample("static.yaml", ns)
            ray["metadata"]["name"] = f"c{i}"
            kube.create(rays_path(ns), ray)
        for i in range(20):
            wait_ready(kube, namespaces[i % 5], f"c{i}", timeout=240)
        time.sleep(2)  # let the recorder see the last events
    finally:
        stop.set()
        op.stop()
        thread.join(20)
        for ns in namespaces:
            try:
                kube.delete(f"/api/v1/namespaces/{ns}")
            except ApiError:
                pass
    assert len(created) == 20
    for key, names in created.items():
        heads = [n for n in names if n.startswith("head/")]
        workers = [n for n in names if n.startswith("worker/")]
        assert len(heads) == 1, (key, sorted(names))
        assert len(workers) == 3, (key, sorted(names))
    assert "Traceback" not in op.log()


def test_bad_inputs_give_conditions_not_crashes(kube: KubeClient, namespace: str,
                                                operator: OperatorProcess) -> None:
    ray = load_sample("static.yaml", namespace)
    kube.create(rays_path(namespace), ray)
    good = wait_ready(kube, namespace, "static")
    def ray_pods() -> set[str]:
        return {p["metadata"]["uid"] for kind in ("head", "worker") for p in live(pods(kube, namespace, "static", kind))}

    running = ray_pods()

    # Malformed configuration YAML: accepted by the API server, reported by the operator; pods untouched.
    broken = load_sample("seed-configuration.yaml", namespace)
    broken["metadata"]["name"] = "broken"
    broken["spec"]["configuration"] = "cluster_name: x\nmax_workers: [1,\n"
    kube.create(rays_path(namespace), broken)
    invalid = wait_until(lambda: (c := condition(kube.get(rays_path(namespace, "broken")), "ConfigurationValid"))
                         and c["status"] == "False" and c, 60, message="ConfigurationValid False")
    assert "line" in invalid["message"]
    events = kube.get(f"/api/v1/namespaces/{namespace}/events",
                      fieldSelector="involvedObject.name=broken,type=Warning")["items"]
    assert events

    # An invalid image pull policy in the worker template on a running cluster.
    kube.patch(rays_path(namespace, "static"), {"spec": {"worker": {"spec": {"containers": [
        {"name": "ray-worker", "imagePullPolicy": "Sometimes"}]}}}})
    wait_until(lambda: is_true(kube.get(rays_path(namespace, "static")), "ReplicaFailure")
               or (condition(kube.get(rays_path(namespace, "static")), "ConfigurationValid") or {}).get(
                   "status") == "False", 60, message="the failure reported")
    reconciles_before = operator.log().count('"reconciled"')
    time.sleep(60)
    reconciles = operator.log().count('"reconciled"') - reconciles_before
    assert reconciles < 40, f"{reconciles} reconciles in 60 s: a hot loop"
    assert ray_pods() == running

    # Restoring the previous spec restores the previous state.
    replace_spec(kube, namespace, "static", good["spec"])  # again when a status write got in between
    wait_ready(kube, namespace, "static")
    assert worker_count(kube, namespace, "static") == 3


def summary(kube: KubeClient, namespace: str, name: str) -> dict[str, Any]:
    """What a cluster consists of, with generated names and UIDs left out, for comparing two runs."""
    out: dict[str, Any] = {}
    for prefix, plural in CHILD_KINDS:
        items = kube.get(f"{prefix}/namespaces/{namespace}/{plural}",
                         labelSelector=f"{LABEL_CLUSTER}={name}")["items"]
        if plural == "pods":
            items = live(items)
        out[plural] = sorted(
            f"{i['metadata']['labels'].get(LABEL_ROLE)}/{i['metadata']['labels'].get(LABEL_GROUP)}"
            for i in items if not i["metadata"].get("deletionTimestamp"))
    ray = kube.get(rays_path(namespace, name))
    out["conditions"] = sorted(f"{c['type']}={c['status']}" for c in ray["status"]["conditions"])
    out["replicas"] = {k: ray["status"][k] for k in ("head", "worker")}
    return out


def settled(kube: KubeClient, namespace: str, name: str) -> bool:
    ray = kube.get(rays_path(namespace, name))
    return is_true(ray, "Ready") and is_true(ray, "SuccessfulLaunch") and \
        ray["status"].get("observedGeneration") == ray["metadata"]["generation"]


def test_crash_after_every_write_converges(cluster: LocalCluster, kube: KubeClient, crd: None,
                                           tmp_path: Path) -> None:
    """The operator killed right after its Nth write, for every N, then restarted: same end state as no crash."""
    stamp = int(time.time()) % 100000
    made: list[str] = []

    def fresh(label: str) -> str:
        ns = f"t-crash-{label}-{stamp}"
        kube.create("/api/v1/namespaces", {"metadata": {"name": ns, "labels": {"rayop.dev/test": "true"}}})
        made.append(ns)
        kube.create(rays_path(ns), load_sample("seed-structured.yaml", ns))
        return ns

    try:
        reference_ns = fresh("ref")
        reference = OperatorProcess(cluster, [reference_ns], tmp_path / "ref.log")
        reference.start()
        try:
            wait_until(lambda: settled(kube, reference_ns, "ray-sample"), 90, message="reference settled")
            expected = summary(kube, reference_ns, "ray-sample")
        finally:
            reference.stop()

        n = 0
        while True:
            n += 1
            assert n < 60, "the operator never finished without reaching its write limit"
            ns = fresh(str(n))
            crashing = OperatorProcess(cluster, [ns], tmp_path / f"crash-{n}.log",
                                       faults=["--exit-after-writes", str(n)])
            crashing.start()
            exited = wait_until(lambda: not crashing.running() or settled(kube, ns, "ray-sample"), 90,
                                message=f"run {n} exits or settles")
            if crashing.running():
                crashing.stop()
                break  # reached the fault-free end state in fewer than n writes: every N was covered
            assert exited and crashing.wait_exit() == 17, crashing.log()[-3000:]
            again = OperatorProcess(cluster, [ns], tmp_path / f"restart-{n}.log")
            again.start()
            try:
                wait_until(lambda: settled(kube, ns, "ray-sample"), 90, message=f"run {n} settles after restart")
                time.sleep(1)  # would a duplicate appear?
                assert summary(kube, ns, "ray-sample") == expected, f"crash after write {n}"
            finally:
                again.stop()
            assert "Traceback" not in again.log()
        assert n > 5  # the loop really crashed the operator at several points
    finally:
        for ns in made:
            try:
                kube.delete(f"/api/v1/namespaces/{ns}")
            except ApiError:
                pass


def test_unsatisfiable_template_is_reported_and_recovers(kube: KubeClient, namespace: str,
                                                         operator: OperatorProcess) -> None:
    ray = load_sample("static.yaml", namespace)
    good_head = ray["spec"]["head"]
    ray["spec"]["head"] = {"spec": {**good_head["spec"], "nodeSelector": {"rayop.dev/no-such-node": "x"}}}
    kube.create(rays_path(namespace), ray)
    stuck = wait_until(lambda: (c := condition(kube.get(rays_path(namespace, "static")), "HeadReady"))
                       and c["reason"] == "HeadPodUnschedulable" and c, 60, message="HeadPodUnschedulable")
    assert "nodeSelector" in stuck["message"] or "node affinity" in stuck["message"] or "match" in stuck["message"]
    assert not is_true(kube.get(rays_path(namespace, "static")), "Ready")
    warnings = wait_until(lambda: kube.get(f"/api/v1/namespaces/{namespace}/events",
                                           fieldSelector="involvedObject.name=static,type=Warning")["items"],
                          30, message="a Warning Event on the Ray")
    assert any(e["reason"] == "HeadPodUnschedulable" for e in warnings)
    before = operator.log().count('"reconciled"')
    time.sleep(30)
    assert operator.log().count('"reconciled"') - before < 20, "a hot loop on an unschedulable head"
    # The workers were created with the head and wait for its GCS; none is counted failed or replaced meanwhile.
    waiting = {p["metadata"]["name"] for p in live(pods(kube, namespace, "static", "worker"))}
    assert len(waiting) == 3

    replace_spec(kube, namespace, "static", {**kube.get(rays_path(namespace, "static"))["spec"], "head": good_head})
    wait_ready(kube, namespace, "static")
    assert {p["metadata"]["name"] for p in live(pods(kube, namespace, "static", "worker"))} == waiting


def _requests_on(kube: KubeClient, node: str) -> float:
    """The CPU the pods on `node` that still count request (what the kubelet admitted there)."""
    total = 0.0
    for p in kube.get("/api/v1/pods", fieldSelector=f"spec.nodeName={node}")["items"]:
        if p.get("status", {}).get("phase") in ("Succeeded", "Failed"):
            continue
        for c in p["spec"].get("containers") or []:
            total += float(parse_quantity(((c.get("resources") or {}).get("requests") or {}).get("cpu") or "0"))
    return total


def test_the_launcher_runs_on_the_heads_node_and_is_scheduled_when_that_node_refuses_it(
        kube: KubeClient, namespace: str, operator: OperatorProcess) -> None:
    # The head becomes Ready 5 s after it runs: time to fill its Node before the launch starts.
    template = {"metadata": {"annotations": {"sim.rayop.dev/ready-delay-seconds": "5"}},
                "spec": {"containers": [{"name": "ray-head", "resources": {"requests": {"cpu": "100m"}}}]}}
    kube.create(rays_path(namespace), {
        "apiVersion": "ray.k8s.io/v1alpha1", "kind": "Ray", "metadata": {"name": "pinned", "namespace": namespace},
        "spec": {"autoScalingMode": "disabled", "initialWorkers": 0, "head": template}})
    head = wait_until(lambda: next((p for p in pods(kube, namespace, "pinned", "head")
                                    if p["spec"].get("nodeName")), None), 30, message="head scheduled")
    node = head["spec"]["nodeName"]
    allocatable = kube.get(f"/api/v1/nodes/{node}")["status"]["allocatable"]["cpu"]
    filler_path = f"/api/v1/namespaces/{namespace}/pods"
    for _ in range(5):
        # Leave 50m on the Node: less than the launcher's 100m request. Placed by name, as the launcher is.
        free = float(parse_quantity(allocatable)) - _requests_on(kube, node)
        kube.create(filler_path, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "filler"}, "spec": {
            "nodeName": node, "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "c", "image": "filler", "resources": {
                "requests": {"cpu": f"{int((free - 0.05) * 1000)}m"}}}]}})
        filler = wait_until(lambda: (p := kube.get(f"{filler_path}/filler")).get("status", {}).get("phase")
                            in ("Running", "Failed") and p, 30, message="filler admitted or refused")
        if filler["status"]["phase"] == "Running":
            break
        kube.delete(f"{filler_path}/filler")  # another pod came first: measure again
        wait_until(lambda: not [p for p in kube.get(filler_path)["items"] if p["metadata"]["name"] == "filler"],
                   30, message="filler gone")
    else:
        pytest.fail(f"could not fill Node {node}")
    try:
        wait_until(lambda: is_true(kube.get(rays_path(namespace, "pinned")), "SuccessfulLaunch"), 90,
                   message="SuccessfulLaunch")
        attempts = sorted(pods(kube, namespace, "pinned", "launcher"),
                          key=lambda p: p["metadata"]["annotations"]["ray.k8s.io/launch-attempt"])
        assert [p["metadata"]["annotations"]["ray.k8s.io/launch-attempt"] for p in attempts] == ["0", "1"]
        first, second = attempts
        # The first attempt was placed on the head's Node by the operator (never scheduled) and turned away there.
        assert first["spec"]["nodeName"] == node and "Scheduled" not in event_reasons(kube, namespace, first)
        assert (first["status"]["phase"], first["status"]["reason"]) == ("Failed", "OutOfcpu")
        assert first["status"]["message"].startswith("Pod was rejected: Node didn't have enough resource: cpu")
        # The second was scheduled (elsewhere: the head's Node is full) and completed the launch.
        assert second["status"]["phase"] == "Succeeded" and second["spec"]["nodeName"] != node
        assert any(c["type"] == "PodScheduled" and c["status"] == "True" for c in second["status"]["conditions"])
        # The refusal was not counted as a failure: no back-off between the two (the next attempt followed at once).
        gap = (_ts(second["metadata"]["creationTimestamp"]) - _ts(first["metadata"]["creationTimestamp"]))
        assert gap < 10, gap
    finally:
        kube.delete(f"{filler_path}/filler")


def _ts(value: str) -> float:
    return datetime.datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc).timestamp()
