"""The pure status computation: honest readiness, stable output (no writes for an unchanged cluster), conditions."""

from __future__ import annotations

import copy
import random
from datetime import timedelta
from typing import Any

import pytest

from rayop.api.convert import effective_cluster
from rayop.api.model import ConfigurationError
from rayop.defaults import Options
from rayop.objects import Observed
from rayop.status import WriteFailure, compute_status, format_time
from tests.unit.test_plan_fixtures import NOW, autoscaling, desired_for, healthy, pod, ray, static, stored, with_pods


def conditions(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status["conditions"]}


def compute(obj: dict[str, Any], observed: Observed, now: Any = NOW, **kwargs: Any) -> dict[str, Any]:
    return compute_status(obj, effective_cluster(obj), observed, now, desired=desired_for(obj), **kwargs)


def test_a_ready_cluster() -> None:
    obj = ray(autoscaling(initial=2), generation=4)
    d = desired_for(obj)
    status = compute(obj, healthy(d), failures=[])
    c = conditions(status)
    assert {t: (x["status"], x["reason"]) for t, x in c.items()} == {
        "ConfigurationValid": ("True", "Valid"),
        "HeadReady": ("True", "HeadPodReady"),
        "WorkersReady": ("True", "AllWorkersReady"),
        "Ready": ("True", "ClusterReady"),
        "SuccessfulLaunch": ("True", "Launched"),
        "ReplicaFailure": ("False", "NoFailures"),
    }
    assert all(x["observedGeneration"] == 4 and x["lastTransitionTime"] == "2026-01-02T03:04:05Z" for x in c.values())
    assert status["head"] == {"replicas": 1, "updatedReplicas": 1, "readyReplicas": 1, "availableReplicas": 1,
                              "unavailableReplicas": 0}
    assert status["worker"] == {"replicas": 2, "updatedReplicas": 2, "readyReplicas": 2, "availableReplicas": 2,
                                "unavailableReplicas": 0}
    assert status["launcher"]["unavailableReplicas"] == 0
    assert status["workerGroups"] == [{"name": "worker", "desiredWorkers": 2, "minWorkers": 0, "maxWorkers": 4,
                                       **status["worker"]}]
    assert status["desiredWorkers"] == 2 and status["observedGeneration"] == 4
    assert status["startTime"] == status["lastReconcileTime"] == "2026-01-02T03:04:05Z"
    assert status["headPodName"] == "demo-head-abcde" and status["headPodIP"] == "10.0.0.1"
    assert status["headServiceName"] == "demo-head"
    assert status["endpoints"]["gcs"] == "demo-head.ray.svc:6379"


def test_an_unchanged_cluster_gives_the_same_status_and_no_write() -> None:
    obj = ray(static(3))
    d = desired_for(obj)
    observed = healthy(d)
    first = compute(obj, observed, failures=[])
    stored_obj = {**obj, "status": copy.deepcopy(first)}
    shuffled = list(observed.pods)
    random.Random(7).shuffle(shuffled)
    for later in (timedelta(seconds=1), timedelta(minutes=9), timedelta(days=3)):
        again = compute(stored_obj, with_pods(observed, shuffled), NOW + later, failures=[])
        assert again == first
    # With a refresh period set, lastReconcileTime alone is refreshed once the period has passed.
    refreshing = Options(status_refresh_seconds=600)
    assert compute(stored_obj, observed, NOW + timedelta(minutes=9), failures=[], options=refreshing) == first
    late = compute(stored_obj, observed, NOW + timedelta(minutes=10), failures=[], options=refreshing)
    assert late["lastReconcileTime"] == "2026-01-02T03:14:05Z"
    assert {k: v for k, v in late.items() if k != "lastReconcileTime"} == \
           {k: v for k, v in first.items() if k != "lastReconcileTime"}


def test_transition_times_move_only_when_a_status_flips() -> None:
    obj = ray(static(2))
    d = desired_for(obj)
    observed = healthy(d)
    first = compute(obj, observed)
    later = NOW + timedelta(seconds=30)
    pods = [*observed.pods[:2], pod("demo-worker-00001", hash=d.workers[0].template_hash, ready=False)]
    second = compute({**obj, "status": first}, with_pods(observed, pods), later)
    c1, c2 = conditions(first), conditions(second)
    assert c2["Ready"]["status"] == "False" and c2["Ready"]["lastTransitionTime"] == format_time(later)
    assert c2["HeadReady"]["lastTransitionTime"] == c1["HeadReady"]["lastTransitionTime"]
    assert second["lastReconcileTime"] == format_time(later)


@pytest.mark.parametrize(
    "make, reason, fragment",
    [
        (lambda h: pod("w1", hash=h, phase="Pending", node=None), "WorkersNotReady", "0/2 nodes are available"),
        (lambda h: pod("w1", hash=h, phase="Pending", waiting="ImagePullBackOff"), "WorkersNotReady",
         "ImagePullBackOff"),
        (lambda h: pod("w1", hash=h, ready=False, age=30), "WorkersNotReady", "health check"),
        (lambda h: pod("w1", hash=h, terminating=True), "WorkersNotReady", "1/2 ready"),
    ],
    ids=["unschedulable", "image-pull", "unready", "terminating"],
)
def test_ready_is_false_while_a_desired_worker_is_not_ready(make: Any, reason: str, fragment: str) -> None:
    obj = ray(static(2))
    d = desired_for(obj)
    observed = healthy(d, workers=1)
    status = compute(obj, with_pods(observed, [*observed.pods, make(d.workers[0].template_hash)]))
    c = conditions(status)
    assert c["Ready"]["status"] == "False" and c["Ready"]["reason"] == reason
    assert fragment in c["Ready"]["message"] and fragment in c["WorkersReady"]["message"]
    assert status["worker"]["readyReplicas"] == 1 and status["worker"]["unavailableReplicas"] == 1


@pytest.mark.parametrize(
    "head, reason",
    [
        (None, "HeadPodMissing"),
        (dict(phase="Pending", node=None), "HeadPodUnschedulable"),
        (dict(ready=False), "HeadPodNotReady"),
        (dict(phase="Failed"), "HeadPodFailed"),
    ],
    ids=["missing", "unschedulable", "not-ready", "failed"],
)
def test_head_ready(head: dict[str, Any] | None, reason: str) -> None:
    obj = ray(static(0))
    d = desired_for(obj)
    pods = [] if head is None else [pod("demo-head-x", role="head", group="head", hash=d.head.template_hash,
                                        **head)]
    status = compute(obj, with_pods(healthy(d), pods))
    c = conditions(status)
    assert (c["HeadReady"]["status"], c["HeadReady"]["reason"]) == ("False", reason)
    assert (c["Ready"]["status"], c["Ready"]["reason"]) == ("False", "HeadNotReady")


def test_updated_replicas_count_the_current_template_only() -> None:
    obj = ray(static(3))
    d = desired_for(obj)
    observed = healthy(d)
    pods = [*observed.pods[:2], *(pod(p["metadata"]["name"], hash="old") for p in observed.pods[2:])]
    status = compute(obj, with_pods(observed, pods))
    assert status["worker"]["replicas"] == 3 and status["worker"]["updatedReplicas"] == 1
    assert conditions(status)["Ready"]["status"] == "True"  # old pods that are ready still serve


def test_an_invalid_configuration_is_reported_and_pods_still_counted() -> None:
    obj = ray(static(2))
    d = desired_for(obj)
    good = compute(obj, healthy(d))
    bad = {**obj, "spec": {"minWorkers": 5, "maxWorkers": 1}, "metadata": {**obj["metadata"], "generation": 2},
           "status": good}
    error = ConfigurationError("must be less than or equal to maxWorkers (1)", field="spec.minWorkers")
    status = compute_status(bad, error, healthy(d), NOW + timedelta(seconds=5))
    c = conditions(status)
    assert (c["ConfigurationValid"]["status"], c["ConfigurationValid"]["reason"]) == ("False", "InvalidConfiguration")
    assert "spec.minWorkers" in c["ConfigurationValid"]["message"]
    assert (c["Ready"]["status"], c["Ready"]["reason"]) == ("False", "InvalidConfiguration")
    assert c["WorkersReady"]["status"] == "Unknown"
    assert status["worker"]["replicas"] == 2 and status["workerGroups"][0]["desiredWorkers"] == 2
    assert status["worker"]["updatedReplicas"] == 2 and status["observedGeneration"] == 2


def test_ignored_keys_are_listed() -> None:
    obj = ray({"configuration": "cluster_name: x\nmax_workers: 1\nprovider: {type: aws}\n"})
    status = compute(obj, Observed())
    c = conditions(status)["ConfigurationValid"]
    assert (c["status"], c["reason"]) == ("True", "KeysIgnored") and "provider.type" in c["message"]


@pytest.mark.parametrize(
    "job_status, expected",
    [
        ({"active": 1, "ready": 1}, ("Unknown", "Launching")),
        ({"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}, ("True", "Launched")),
        ({"failed": 3, "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                                       "message": "Job has reached the specified backoff limit"}]},
         ("False", "BackoffLimitExceeded")),
    ],
    ids=["running", "complete", "failed"],
)
def test_successful_launch_follows_the_current_launcher_job(job_status: dict[str, Any],
                                                            expected: tuple[str, str]) -> None:
    obj = ray(static(1))
    d = desired_for(obj)
    observed = healthy(d)
    job = stored(d.launcher_job("uid-demo-head-abcde"))
    job["status"] = job_status
    stale = stored(d.launcher_job("an-old-head"), age=9999)
    stale["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}
    status = compute(obj, Observed(**{**observed.__dict__, "jobs": [stale, job]}))
    c = conditions(status)["SuccessfulLaunch"]
    assert (c["status"], c["reason"]) == expected
    if expected[0] == "False":
        assert "backoff limit" in c["message"]
    assert status["launcher"]["replicas"] == job_status.get("active", 0)


def test_no_launch_before_the_head() -> None:
    status = compute(ray(static(1)), Observed())
    assert conditions(status)["SuccessfulLaunch"]["reason"] == "WaitingForHead"
    assert "headPodName" not in status


def test_replica_failure_carries_the_servers_message_and_persists_without_writes() -> None:
    obj = ray(static(1))
    d = desired_for(obj)
    failure = WriteFailure("create", "Pod", "demo-worker-", 'pods "demo-worker-" is forbidden: exceeded quota',
                           "Forbidden")
    status = compute(obj, healthy(d), failures=[failure])
    c = conditions(status)["ReplicaFailure"]
    assert (c["status"], c["reason"]) == ("True", "FailedCreate") and "exceeded quota" in c["message"]
    kept = compute({**obj, "status": status}, healthy(d), NOW + timedelta(seconds=1), failures=None)
    assert conditions(kept)["ReplicaFailure"] == c
    cleared = compute({**obj, "status": status}, healthy(d), NOW + timedelta(seconds=2), failures=[])
    assert conditions(cleared)["ReplicaFailure"]["status"] == "False"


def test_foreign_conditions_are_kept() -> None:
    obj = ray(static(0), status={"conditions": [{"type": "Custom", "status": "True", "reason": "Mine"}]})
    status = compute(obj, Observed())
    assert status["conditions"][-1] == {"type": "Custom", "status": "True", "reason": "Mine"}


def test_times_are_rfc3339_utc() -> None:
    from datetime import datetime, timezone

    assert format_time(datetime(2026, 5, 6, 7, 8, 9, 123456, tzinfo=timezone.utc)) == "2026-05-06T07:08:09Z"
    assert format_time(datetime(2026, 5, 6, 9, 8, 9, tzinfo=timezone(timedelta(hours=2)))) == "2026-05-06T07:08:09Z"


def test_clamp_notices_name_what_was_asked_and_what_runs() -> None:
    from rayop.status import clamp_notices

    obj = ray({"minWorkers": 2, "maxWorkers": 3, "initialWorkers": 1})
    obj["metadata"]["generation"] = 2
    (notice,) = clamp_notices(obj, effective_cluster(obj).cluster)
    assert "asks for 1" in notice and "clamped to 2" in notice and "minWorkers 2" in notice
    obj["spec"]["desiredWorkers"] = {"worker": 7}
    (notice,) = clamp_notices(obj, effective_cluster(obj).cluster)
    assert "spec.desiredWorkers asks for 7" in notice and "clamped to 3" in notice and "maxWorkers 3" in notice
    obj["spec"]["desiredWorkers"] = {"worker": 3}
    assert clamp_notices(obj, effective_cluster(obj).cluster) == []


def _launcher_pod(job: dict[str, Any], name: str, message: str, exit_code: int, finished: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "ray", "uid": f"uid-{name}",
                     "labels": {"ray.k8s.io/node-kind": "launcher"},
                     "ownerReferences": [{"kind": "Job", "name": job["metadata"]["name"],
                                          "uid": job["metadata"]["uid"], "controller": True}]},
        "status": {"phase": "Failed", "containerStatuses": [{"name": "launcher", "state": {"terminated": {
            "exitCode": exit_code, "reason": "Error", "message": message, "finishedAt": finished}}}]},
    }


def test_a_failed_launch_reports_the_launchers_own_reason_and_message() -> None:
    import json as _json

    obj = ray(static(1))
    d = desired_for(obj)
    observed = healthy(d)
    job = stored(d.launcher_job("uid-demo-head-abcde"))
    summary = {"succeeded": False, "reason": "WorkersNotJoined", "message": "0 of 1 worker(s) joined Ray within 60 s",
               "workersExpected": 1, "workersJoined": 0}
    older = _launcher_pod(job, "l-1", _json.dumps({**summary, "reason": "HeadUnreachable", "message": "no GCS"}), 3,
                          "2026-01-02T03:00:00Z")
    newer = _launcher_pod(job, "l-2", _json.dumps(summary), 4, "2026-01-02T03:02:00Z")
    other_job = _launcher_pod({"metadata": {"name": "x", "uid": "another-job"}}, "l-9",
                              _json.dumps({**summary, "reason": "InvalidConfig"}), 2, "2026-01-02T03:03:00Z")
    job["status"] = {"active": 1}
    running = compute(obj, Observed(**{**observed.__dict__, "jobs": [job], "launcher_pods": [older, newer, other_job]}))
    c = conditions(running)["SuccessfulLaunch"]
    assert (c["status"], c["reason"]) == ("Unknown", "Launching") and "WorkersNotJoined" in c["message"]
    job["status"] = {"failed": 3, "conditions": [{"type": "Failed", "status": "True",
                                                  "reason": "BackoffLimitExceeded", "message": "backoff limit"}]}
    failed = compute(obj, Observed(**{**observed.__dict__, "jobs": [job], "launcher_pods": [older, newer, other_job]}))
    c = conditions(failed)["SuccessfulLaunch"]
    assert (c["status"], c["reason"]) == ("False", "WorkersNotJoined")
    assert "0 of 1 worker(s) joined Ray within 60 s" in c["message"] and "BackoffLimitExceeded" in c["message"]
    # The last attempt killed at the Job's deadline without a summary: the attempt before it says why.
    killed = _launcher_pod(job, "l-4", "INFO waiting for 1 worker(s)", 143, "2026-01-02T03:05:00Z")
    c = conditions(compute(obj, Observed(**{**observed.__dict__, "jobs": [job], "launcher_pods": [newer, killed]})))[
        "SuccessfulLaunch"]
    assert (c["status"], c["reason"]) == ("False", "WorkersNotJoined")
    # No summary (a pod killed before it wrote one, with an empty log): the exit code and the Job say why.
    bare = _launcher_pod(job, "l-3", "", 137, "2026-01-02T03:04:00Z")
    c = conditions(compute(obj, Observed(**{**observed.__dict__, "jobs": [job], "launcher_pods": [bare]})))[
        "SuccessfulLaunch"]
    assert (c["status"], c["reason"]) == ("False", "NoSummary") and "137" in c["message"]


def test_a_suspended_cluster_says_so_and_resuming_flips_the_condition() -> None:
    obj = ray(static(1))
    d = desired_for(obj)
    running = compute(obj, healthy(d))
    assert "Suspended" not in conditions(running)
    obj["spec"]["suspend"] = True
    going = compute({**obj, "status": running}, healthy(d))
    c = conditions(going)
    assert (c["Suspended"]["status"], c["Suspended"]["reason"]) == ("True", "Suspended")
    assert (c["Ready"]["status"], c["Ready"]["reason"]) == ("False", "Suspended")
    gone = compute({**obj, "status": going}, Observed())
    assert conditions(gone)["Suspended"]["message"] == "no pod runs"
    obj["spec"]["suspend"] = False
    resumed = compute({**obj, "status": gone}, healthy(d))
    c = conditions(resumed)
    assert (c["Suspended"]["status"], c["Suspended"]["reason"]) == ("False", "Resumed")
    assert c["Ready"]["status"] == "True"
