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
from tests.unit.test_plan_fixtures import (
    NOW,
    autoscaling,
    desired_for,
    healthy,
    is_launcher_pod,
    launched,
    pod,
    ray,
    static,
    stored,
    with_pods,
)


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
        (dict(phase="Pending", node=None, scheduled=None), "HeadPodPending"),
        (dict(ready=False), "HeadPodNotReady"),
        (dict(phase="Failed"), "HeadPodFailed"),
    ],
    ids=["missing", "unschedulable", "not-seen-by-the-scheduler-yet", "not-ready", "failed"],
)
def test_head_ready(head: dict[str, Any] | None, reason: str) -> None:
    obj = ray(static(0))
    d = desired_for(obj)
    pods = [] if head is None else [pod("demo-head-x", role="head", group="head", hash=d.head.template_hash,
                                        **{k: v for k, v in head.items() if k != "scheduled"})]
    if head is not None and "scheduled" in head:
        # A pod the scheduler has not looked at yet: no PodScheduled condition at all.
        pods[0]["status"]["conditions"] = [c for c in pods[0]["status"]["conditions"] if c["type"] != "PodScheduled"]
    status = compute(obj, with_pods(healthy(d), pods))
    c = conditions(status)
    assert (c["HeadReady"]["status"], c["HeadReady"]["reason"]) == ("False", reason)
    assert (c["Ready"]["status"], c["Ready"]["reason"]) == ("False", "HeadNotReady")


def test_updated_replicas_count_the_current_template_only() -> None:
    obj = ray(static(3))
    d = desired_for(obj)
    observed = healthy(d)
    pods = [*observed.pods[:2], *(pod(p["metadata"]["name"], hash="old") for p in observed.pods[2:]
                                  if not is_launcher_pod(p))]
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


def _with_launchers(observed: Observed, launchers: list[dict[str, Any]]) -> Observed:
    pods = [p for p in observed.pods if not is_launcher_pod(p)] + launchers
    return Observed(**{**observed.__dict__, "pods": pods})


@pytest.mark.parametrize(
    "attempts, expected, live",
    [
        ([("Pending", 0)], ("Unknown", "Launching"), 1),
        ([("Running", 0)], ("Unknown", "Launching"), 1),
        ([("Failed", 1), ("Running", 0)], ("Unknown", "Launching"), 1),
        ([("Failed", 1)], ("Unknown", "Launching"), 0),  # the next attempt waits for its back-off
        ([("Failed", 1), ("Succeeded", 0)], ("True", "Launched"), 0),
        # No attempt left a summary (they exited 1 with an empty log): the reason says so, the message names the
        # exit code and why the launch ended.
        ([("Failed", 1), ("Failed", 1), ("Failed", 1)], ("False", "NoSummary"), 0),
        ([], ("Unknown", "Launching"), 0),  # the head is Ready, the first attempt not in the cache yet
    ],
    ids=["pending", "running", "retrying", "back-off", "complete", "failed", "not-yet-seen"],
)
def test_successful_launch_follows_the_current_launch(attempts: list[tuple[str, int]], expected: tuple[str, str],
                                                     live: int) -> None:
    obj = ray(static(1))
    d = desired_for(obj)
    observed = healthy(d)
    head = observed.pods[0]
    pods = [launched(d, head, attempt=k, phase=ph, exit_code=code, age=300 - 50 * k)
            for k, (ph, code) in enumerate(attempts)]
    # A launch of an earlier head that succeeded changes nothing.
    stale = launched(d, pod("demo-head-old00", role="head", group="head"), age=9999)
    status = compute(obj, _with_launchers(observed, [stale, *pods]))
    c = conditions(status)["SuccessfulLaunch"]
    assert (c["status"], c["reason"]) == expected
    shown = d.launcher_name(head["metadata"]["uid"], len(attempts) - 1 if attempts else 0)
    if expected[0] == "True":
        shown = d.launcher_name(head["metadata"]["uid"], 1)
    if expected[0] == "False":
        assert "BackoffLimitExceeded" in c["message"]
    assert f"launcher pod {shown}" in c["message"]
    if expected[0] == "Unknown" and attempts:
        between = "the next attempt starts after a back-off" in c["message"]
        assert between == (live == 0) and ("is running" in c["message"]) == (live == 1)
    assert status["launcher"]["replicas"] == live
    ready = any(ph == "Running" for ph, _ in attempts)
    assert status["launcher"]["unavailableReplicas"] == (0 if expected[0] != "Unknown" or ready else 1)


def test_a_launch_past_its_deadline_failed() -> None:
    obj = ray(static(1))
    d = desired_for(obj, Options(launcher_deadline_seconds=120))
    observed = healthy(d)
    head = observed.pods[0]
    late = launched(d, head, phase="Failed", exit_code=1, age=200)
    status = compute_status(obj, effective_cluster(obj), _with_launchers(observed, [late]), NOW, desired=d)
    c = conditions(status)["SuccessfulLaunch"]
    assert (c["status"], c["reason"]) == ("False", "NoSummary") and "DeadlineExceeded" in c["message"]
    # An attempt that never ran (its container never started) leaves nothing to read: the launch's own reason.
    unstarted = launched(d, head, phase="Failed", age=200)
    del unstarted["status"]["containerStatuses"]
    status = compute_status(obj, effective_cluster(obj), _with_launchers(observed, [unstarted]), NOW, desired=d)
    c = conditions(status)["SuccessfulLaunch"]
    assert (c["status"], c["reason"]) == ("False", "DeadlineExceeded") and "120s" in c["message"]


def test_a_first_attempt_the_heads_node_refused_is_reported_as_such_while_the_next_is_created() -> None:
    obj = ray(static(1))
    d = desired_for(obj)
    observed = healthy(d)
    head = observed.pods[0]
    turned_away = launched(d, head, phase="Failed", age=2)
    turned_away["spec"]["nodeName"] = "node-1"
    turned_away["status"] = {"phase": "Failed", "reason": "OutOfcpu",
                             "message": "Pod was rejected: Node didn't have enough resource: cpu"}
    status = compute_status(obj, effective_cluster(obj), _with_launchers(observed, [turned_away]), NOW, desired=d)
    c = conditions(status)["SuccessfulLaunch"]
    assert (c["status"], c["reason"]) == ("Unknown", "Launching")
    assert "refused by Node node-1 (OutOfcpu: Pod was rejected" in c["message"] and "scheduled" in c["message"]
    assert "back-off" not in c["message"]


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


def test_a_failed_launch_reports_the_launchers_own_reason_and_message() -> None:
    import json as _json

    obj = ray(static(1))
    d = desired_for(obj)
    observed = healthy(d)
    head = observed.pods[0]
    summary = {"succeeded": False, "reason": "WorkersNotJoined", "message": "0 of 1 worker(s) joined Ray within 60 s",
               "workersExpected": 1, "workersJoined": 0}

    def attempt(k: int, message: str, code: int, age: float) -> dict[str, Any]:
        return launched(d, head, attempt=k, phase="Failed", exit_code=code, message=message, age=age)

    older = attempt(0, _json.dumps({**summary, "reason": "HeadUnreachable", "message": "no GCS"}), 3, 300)
    newer = attempt(1, _json.dumps(summary), 4, 200)
    other_head = launched(d, pod("demo-head-old00", role="head", group="head"), phase="Failed", exit_code=2,
                          message=_json.dumps({**summary, "reason": "InvalidConfig"}), age=100)
    running = compute(obj, _with_launchers(observed, [older, newer, other_head,
                                                      launched(d, head, attempt=2, phase="Running", age=50)]))
    c = conditions(running)["SuccessfulLaunch"]
    assert (c["status"], c["reason"]) == ("Unknown", "Launching") and "WorkersNotJoined" in c["message"]
    last = attempt(2, _json.dumps(summary), 4, 50)
    c = conditions(compute(obj, _with_launchers(observed, [older, newer, other_head, last])))["SuccessfulLaunch"]
    assert (c["status"], c["reason"]) == ("False", "WorkersNotJoined")
    assert "0 of 1 worker(s) joined Ray within 60 s" in c["message"] and "BackoffLimitExceeded" in c["message"]
    # The last attempt killed at the deadline without a summary: the attempt before it says why.
    killed = attempt(2, "INFO waiting for 1 worker(s)", 143, 50)
    killed["status"]["reason"] = "DeadlineExceeded"
    c = conditions(compute(obj, _with_launchers(observed, [newer, killed])))["SuccessfulLaunch"]
    assert (c["status"], c["reason"]) == ("False", "WorkersNotJoined") and "DeadlineExceeded" in c["message"]
    # No summary (pods killed before they wrote one, with an empty log): the exit code and the launch say why.
    bare = [attempt(k, "", 137, 300 - 100 * k) for k in range(3)]
    c = conditions(compute(obj, _with_launchers(observed, bare)))["SuccessfulLaunch"]
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
