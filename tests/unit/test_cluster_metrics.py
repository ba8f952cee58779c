"""The per-cluster series (`rayop.clustermetrics`): what a scrape shows for cached `Ray`s and `RayJob`s, the three
--cluster-metrics modes, and the provisioning histogram and launch counter fed by informer updates (once per
transition, by the leader only, nothing for a restarted operator's first list).

No API server: objects go through the informers' own sink (`Informer.apply`, what a watch event does), which
updates the store and dispatches the handlers; the informers are never started.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from rayop.cli import build_manager, make_parser
from rayop.clustermetrics import MODE_GROUPS, MODE_OFF, ClusterMetrics, image_version, never_ready
from rayop.jobreconciler import RAYJOB
from rayop.reconciler import CHILDREN, MANAGED_BY_SELECTOR, RAY
from rayop.runtime.informer import ADDED, DELETED, MODIFIED
from rayop.runtime.manager import Manager
from rayop.runtime.store import ObjectKey

POD = CHILDREN["Pod"]
T0 = "2026-01-01T00:00:00Z"


def kubeconfig(tmp_path: Path) -> str:
    """A kubeconfig naming a server nobody listens on: the manager is built, never started."""
    path = tmp_path / "kubeconfig"
    path.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: c, cluster: {server: 'http://127.0.0.1:9'}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: c, context: {cluster: c, user: u}}]\n"
    )
    return str(path)


def operator(tmp_path: Path, *flags: str) -> Manager:
    args = make_parser().parse_args(["run", "--kubeconfig", kubeconfig(tmp_path), "--rayjobs", "on", *flags])
    return build_manager(args)


def cond(type_: str, status: str, at: str = T0, reason: str = "R") -> dict[str, Any]:
    return {"type": type_, "status": status, "reason": reason, "message": "", "lastTransitionTime": at}


def ray(name: str, *, rv: str = "1", ready: str | None = None, ready_at: str = T0, spec: dict[str, Any] | None = None,
        launch: tuple[str, str] | None = None, groups: tuple[tuple[str, int, int], ...] = (),
        head: str | None = None, created: str = T0) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "ray.k8s.io/v1alpha1", "kind": "Ray",
        "metadata": {"namespace": "ns", "name": name, "uid": f"uid-{name}", "resourceVersion": rv,
                     "creationTimestamp": created},
        "spec": spec or {},
    }
    if ready is not None:
        conditions = [cond("ConfigurationValid", "True"), cond("HeadReady", ready, ready_at),
                      cond("WorkersReady", ready, ready_at), cond("Ready", ready, ready_at)]
        if launch is not None:
            conditions.append(cond("SuccessfulLaunch", launch[0], ready_at, launch[1]))
        obj["status"] = {
            "startTime": T0, "conditions": conditions,
            "desiredWorkers": sum(g[1] for g in groups),
            "worker": {"readyReplicas": sum(g[2] for g in groups)},
            "workerGroups": [{"name": g[0], "desiredWorkers": g[1], "readyReplicas": g[2]} for g in groups],
        }
        if head:
            obj["status"]["headPodName"] = head
    return obj


def head_pod(name: str, image: str) -> dict[str, Any]:
    return {"metadata": {"namespace": "ns", "name": name, "resourceVersion": "1",
                         "labels": {"app.kubernetes.io/managed-by": "rayop"}},
            "spec": {"containers": [{"name": "autoscaler", "image": "other:9.9"},
                                    {"name": "ray-head", "image": image}]}}


def samples(manager: Manager) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(manager.metrics.exposition().decode()):
        for s in family.samples:
            out.setdefault(s.name, []).append((dict(s.labels), s.value))
    return out


def value(found: dict[str, list[tuple[dict[str, str], float]]], metric: str, **labels: str) -> float | None:
    for got, v in found.get(metric, []):
        if all(got.get(k) == want for k, want in labels.items()):
            return v
    return None


def test_a_scrape_shows_each_cached_ray_with_a_fixed_set_of_series(tmp_path: Path) -> None:
    manager = operator(tmp_path)
    rays = manager.informer(RAY)
    pods = manager.informers[(POD, MANAGED_BY_SELECTOR, None)]
    pods.apply(ADDED, head_pod("a-head-x", "rayproject/ray:2.60.0-py311"))
    rays.apply(ADDED, ray("a", ready="True", groups=(("small", 2, 2), ("big", 3, 1)), head="a-head-x",
                          spec={"workerGroups": [{"name": "small"}, {"name": "big"}]}))
    rays.apply(ADDED, ray("b", ready="False", spec={"image": "rayproject/ray:2.9.3", "configuration": "x: 1"}))
    rays.apply(ADDED, ray("c", spec={"image": "ray@sha256:abc"}))  # not acknowledged yet: no status
    found = samples(manager)

    assert value(found, "rayop_cluster_info", name="a", form="workerGroups", ray_version="2.60.0", owner="none") == 1
    assert value(found, "rayop_cluster_info", name="b", form="configuration", ray_version="2.9.3") == 1
    assert value(found, "rayop_cluster_info", name="c", form="simple", ray_version="unknown") == 1
    assert value(found, "rayop_cluster_condition", name="a", type="Ready", status="True") == 1
    assert value(found, "rayop_cluster_condition", name="b", type="Ready", status="False") == 1
    assert value(found, "rayop_cluster_condition", name="b", type="Ready", status="True") is None
    assert value(found, "rayop_cluster_workers_desired", name="a") == 5
    assert value(found, "rayop_cluster_workers_ready", name="a") == 3
    assert value(found, "rayop_cluster_workers_desired", name="c") is None
    # Per Ray at most: 1 info + 7 conditions + 2 worker gauges; no group series by default.
    for name in ("a", "b", "c"):
        per = sum(1 for series in found.values() for labels, _ in series
                  if labels.get("name") == name and labels.get("namespace") == "ns")
        assert per <= 10, (name, per)
    assert "rayop_cluster_group_workers_desired" not in found
    # Aggregates: every (type, status) of the managed conditions, zeros included.
    assert value(found, "rayop_clusters", type="Ready", status="True") == 1
    assert value(found, "rayop_clusters", type="Ready", status="False") == 1
    assert value(found, "rayop_clusters", type="Suspended", status="True") == 0
    assert value(found, "rayop_workers_desired") == 5
    assert value(found, "rayop_workers_ready") == 3

    rays.apply(DELETED, ray("a"))
    after = samples(manager)
    assert not [labels for labels, _ in after["rayop_cluster_info"] if labels["name"] == "a"]
    assert not [labels for labels, _ in after["rayop_cluster_condition"] if labels["name"] == "a"]


def test_groups_mode_adds_per_group_series_and_off_keeps_only_aggregates(tmp_path: Path) -> None:
    groups = operator(tmp_path, "--cluster-metrics", MODE_GROUPS)
    groups.informer(RAY).apply(ADDED, ray("a", ready="True", groups=(("small", 2, 2), ("big", 3, 1))))
    found = samples(groups)
    assert value(found, "rayop_cluster_group_workers_desired", name="a", group="big") == 3
    assert value(found, "rayop_cluster_group_workers_ready", name="a", group="big") == 1
    assert value(found, "rayop_cluster_group_workers_ready", name="a", group="small") == 2

    off = operator(tmp_path, "--cluster-metrics", MODE_OFF)
    off.informer(RAY).apply(ADDED, ray("a", ready="True", groups=(("small", 2, 2),)))
    found = samples(off)
    assert not [labels for series in found.values() for labels, _ in series if "namespace" in labels]
    assert value(found, "rayop_clusters", type="Ready", status="True") == 1
    assert value(found, "rayop_workers_desired") == 2


def test_rayjobs_by_deployment_status(tmp_path: Path) -> None:
    manager = operator(tmp_path)
    jobs = manager.informers[(RAYJOB, None, None)]
    jobs.apply(ADDED, {"metadata": {"namespace": "ns", "name": "j1", "resourceVersion": "1"},
                       "spec": {"rayClusterSpec": {}, "submissionMode": "K8sJob"},
                       "status": {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"}})
    jobs.apply(ADDED, {"metadata": {"namespace": "ns", "name": "j2", "resourceVersion": "1"},
                       "spec": {"clusterSelector": {"a": "b"}}})
    found = samples(manager)
    assert value(found, "rayop_rayjob_info", name="j1", submission_mode="K8sJob", cluster_source="own") == 1
    assert value(found, "rayop_rayjob_info", name="j2", submission_mode="HTTP", cluster_source="selector") == 1
    assert value(found, "rayop_rayjob_status", name="j1", deployment_status="Running", job_status="RUNNING") == 1
    assert value(found, "rayop_rayjob_status", name="j2", deployment_status="Unset", job_status="Unset") == 1
    assert value(found, "rayop_rayjobs", deployment_status="Running") == 1
    assert value(found, "rayop_rayjobs", deployment_status="Complete") == 0


def provisioned(manager: Manager) -> tuple[float | None, float | None]:
    found = samples(manager)
    return (value(found, "rayop_cluster_provisioned_duration_seconds_count"),
            value(found, "rayop_cluster_provisioned_duration_seconds_sum"))


def test_provisioning_is_observed_once_at_the_first_ready(tmp_path: Path) -> None:
    manager = operator(tmp_path)
    rays = manager.informer(RAY)
    rays.apply(ADDED, ray("a", created=T0))
    rays.apply(MODIFIED, ray("a", rv="2", ready="False"))  # acknowledged: every condition stamped at startTime
    assert provisioned(manager) == (0, 0)
    rays.apply(MODIFIED, ray("a", rv="3", ready="True", ready_at="2026-01-01T00:01:30Z"))
    assert provisioned(manager) == (1, 90)
    # Lost and regained: not a provisioning.
    rays.apply(MODIFIED, ray("a", rv="4", ready="False", ready_at="2026-01-01T00:05:00Z"))
    assert not never_ready(ray("a", rv="4", ready="False", ready_at="2026-01-01T00:05:00Z"))
    rays.apply(MODIFIED, ray("a", rv="5", ready="True", ready_at="2026-01-01T00:06:00Z"))
    assert provisioned(manager) == (1, 90)


def test_a_ready_lost_and_regained_within_the_first_second_is_not_a_second_provisioning(tmp_path: Path) -> None:
    """Status times are whole seconds: in sim mode a Ray can be Ready, and lose it, within the second of its
    startTime, when the status alone looks never Ready again. The process remembers it was Ready."""
    manager = operator(tmp_path)
    rays = manager.informer(RAY)
    rays.apply(ADDED, ray("a"))
    rays.apply(MODIFIED, ray("a", rv="2", ready="False"))
    rays.apply(MODIFIED, ray("a", rv="3", ready="True"))  # Ready at T0, the second of startTime
    rays.apply(MODIFIED, ray("a", rv="4", ready="False"))  # and lost within it: lastTransitionTime == startTime
    assert never_ready(ray("a", rv="4", ready="False"))
    rays.apply(MODIFIED, ray("a", rv="5", ready="True", ready_at="2026-01-01T00:00:01Z"))
    assert provisioned(manager) == (1, 0)
    # Deleted and created again under the same name: a new Ray (a new UID), a new provisioning.
    rays.apply(DELETED, ray("a", rv="5", ready="True"))
    again = ray("a", rv="6")
    again["metadata"]["uid"] = "uid-a-2"
    rays.apply(ADDED, again)
    ready_again = ray("a", rv="7", ready="True", ready_at="2026-01-01T00:00:30Z")
    ready_again["metadata"]["uid"] = "uid-a-2"
    before = ray("a", rv="6", ready="False")
    before["metadata"]["uid"] = "uid-a-2"
    rays.apply(MODIFIED, before)
    rays.apply(MODIFIED, ready_again)
    assert provisioned(manager) == (2, 30)


def test_a_restarted_operator_counts_nothing_already_ready_and_a_standby_counts_nothing(tmp_path: Path) -> None:
    restarted = operator(tmp_path)
    rays = restarted.informer(RAY)
    # The first list: a Ready Ray and a Ray that was Ready before and lost it.
    rays.replace([ray("a", ready="True", ready_at="2026-01-01T00:01:00Z"),
                  ray("b", ready="False", ready_at="2026-01-01T00:09:00Z")], "10", None)
    rays.apply(MODIFIED, ray("b", rv="11", ready="True", ready_at="2026-01-01T00:10:00Z"))
    assert provisioned(restarted) == (0, 0)

    standby = operator(tmp_path, "--leader-elect", "--leader-election-namespace", "default")
    assert not standby.is_leader()
    rays = standby.informer(RAY)
    rays.apply(ADDED, ray("a", ready="False"))
    rays.apply(MODIFIED, ray("a", rv="2", ready="True", ready_at="2026-01-01T00:01:00Z",
                             launch=("True", "Launched")))
    assert provisioned(standby) == (0, 0)
    found = samples(standby)
    assert value(found, "rayop_cluster_launches_total", outcome="succeeded") == 0
    # Nor does it export the gauges: summed over the replicas, each cluster counts once.
    assert "rayop_cluster_info" not in found and "rayop_clusters" not in found


def test_launch_outcomes_count_transitions_of_successful_launch(tmp_path: Path) -> None:
    manager = operator(tmp_path)
    rays = manager.informer(RAY)
    rays.apply(ADDED, ray("a", ready="False", launch=("Unknown", "WaitingForHead")))
    rays.apply(MODIFIED, ray("a", rv="2", ready="False", launch=("Unknown", "Launching")))
    rays.apply(MODIFIED, ray("a", rv="3", ready="False", launch=("False", "WorkersNotJoined")))
    rays.apply(MODIFIED, ray("a", rv="4", ready="False", launch=("False", "WorkersNotJoined")))  # no new outcome
    rays.apply(MODIFIED, ray("a", rv="5", ready="False", launch=("Unknown", "Launching")))
    rays.apply(MODIFIED, ray("a", rv="6", ready="True", launch=("True", "Launched")))
    rays.apply(MODIFIED, ray("a", rv="7", ready="False", launch=("False", "some free text the API server kept")))
    found = samples(manager)
    assert value(found, "rayop_cluster_launches_total", outcome="failed", reason="WorkersNotJoined") == 1
    assert value(found, "rayop_cluster_launches_total", outcome="succeeded", reason="Launched") == 1
    assert value(found, "rayop_cluster_launches_total", outcome="failed", reason="Other") == 1
    assert value(found, "rayop_cluster_launches_total", outcome="failed", reason="LauncherError") == 0


def test_the_scrape_does_not_change_the_cached_objects(tmp_path: Path) -> None:
    manager = operator(tmp_path, "--cluster-metrics", MODE_GROUPS)
    rays = manager.informer(RAY)
    rays.apply(ADDED, ray("a", ready="True", groups=(("small", 2, 2),)))
    before = copy.deepcopy(rays.store.get(ObjectKey("ns", "a")))
    samples(manager)
    assert rays.store.get(ObjectKey("ns", "a")) == before


@pytest.mark.parametrize("image,version", [
    ("rayproject/ray:2.60.0", "2.60.0"), ("rayproject/ray:2.9-gpu", "2.9"), ("registry:5000/ray", None),
    ("rayproject/ray:latest", None), ("ray", None), ("ray@sha256:0123", None),
])
def test_image_version(image: str, version: str | None) -> None:
    assert image_version(image) == version


def test_an_unknown_mode_is_refused(tmp_path: Path) -> None:
    manager = operator(tmp_path)
    with pytest.raises(ValueError, match="one of clusters, groups, off"):
        ClusterMetrics(manager.metrics.registry, manager.informer(RAY).store, mode="all")


def test_label_values_are_escaped_as_the_text_format_wants(tmp_path: Path) -> None:
    manager = operator(tmp_path, "--cluster-metrics", MODE_GROUPS)
    odd = 'a"b\\c\nd'
    manager.informer(RAY).apply(ADDED, ray("a", ready="True", groups=((odd, 1, 1),)))
    assert value(samples(manager), "rayop_cluster_group_workers_ready", name="a", group=odd) == 1
