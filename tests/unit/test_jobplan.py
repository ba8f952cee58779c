"""The RayJob reconciler's pure core: each state's next step, deterministic submission ids, adoption instead of a
second submission, reasons that say why, TTL deletion of the own cluster only, no writes when nothing changed."""

from __future__ import annotations

import copy
import json
from datetime import datetime, timedelta, timezone
from typing import Any

from rayop.api import rayjob as j
from rayop.jobplan import (
    CreateCluster,
    DeleteCluster,
    JobInfo,
    Observed,
    Stop,
    Submit,
    Timing,
    decide,
    submit_refused,
    wants_job_info,
)

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
UID = "0f0e-uid"


def rayjob(spec: dict[str, Any] | None = None, status: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "ray.k8s.io/v1alpha1", "kind": "RayJob",
        "metadata": {"name": "job", "namespace": "ns", "uid": UID, "generation": 1},
        "spec": spec or {"entrypoint": "python x.py", "rayClusterSpec": {"maxWorkers": 1},
                         "runtimeEnv": {"env_vars": {"A": "1"}}, "metadata": {"team": "ml"},
                         "entrypointNumCpus": 0.5, "entrypointResources": {"r": 1}},
    }
    if status is not None:
        body["status"] = status
    return body


def ray(name: str = "job-1", ready: bool = True, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}", "labels": labels or {}},
        "status": {
            "conditions": [{"type": "Ready", "status": "True" if ready else "False",
                            "reason": "Ready" if ready else "HeadPodPending",
                            "message": "" if ready else "the head pod is Pending"}],
            "endpoints": {"dashboard": f"http://{name}-head.ns.svc.cluster.local:8265"},
        },
    }


def step(job: dict[str, Any], observed: Observed, now: datetime = NOW) -> tuple[dict[str, Any], Any]:
    """Decide, then store the status as the API server would."""
    decision = decide(job, observed, now)
    after = copy.deepcopy(job)
    after["status"] = decision.status
    return after, decision


def test_new_job_creates_its_cluster_owned_by_it() -> None:
    job = rayjob()
    after, d = step(job, Observed())
    (create,) = d.actions
    assert isinstance(create, CreateCluster)
    m = create.manifest
    assert m["kind"] == "Ray" and m["metadata"]["name"] == "job-1" and m["spec"] == {"maxWorkers": 1}
    (owner,) = m["metadata"]["ownerReferences"]
    assert owner["kind"] == "RayJob" and owner["uid"] == UID and owner["controller"] is True
    s = after["status"]
    assert (s["jobDeploymentStatus"], s["reason"], s["attempt"]) == ("Initializing", "CreatingCluster", 1)
    assert s["submissionId"] == f"rayjob-{UID}-1" and s["rayClusterName"] == "job-1"
    assert s["startTime"] == "2026-01-01T12:00:00Z"
    assert d.requeue_after is None  # the child Ray's events wake the job up
    assert d.events and d.events[0][1] == "CreatingCluster"


def test_cluster_not_ready_says_why_and_does_not_poll() -> None:
    job, _ = step(rayjob(), Observed())
    after, d = step(job, Observed(cluster=ray(ready=False)))
    s = after["status"]
    assert s["reason"] == "ClusterNotReady"
    assert "HeadPodPending" in s["message"] and "job-1" in s["message"]
    assert not d.actions and d.requeue_after is None
    assert not wants_job_info(job, ray(ready=False))


def test_ready_cluster_gets_exactly_one_submission_with_deterministic_id() -> None:
    job, _ = step(rayjob(), Observed())
    job, _ = step(job, Observed(cluster=ray(ready=False)))
    assert wants_job_info(job, ray())
    after, d = step(job, Observed(cluster=ray(), job_missing=True))
    (submit,) = d.actions
    assert isinstance(submit, Submit)
    assert submit.address == "http://job-1-head.ns.svc.cluster.local:8265"
    assert submit.body == {
        "submission_id": f"rayjob-{UID}-1", "entrypoint": "python x.py",
        "metadata": {"team": "ml", "rayjob.k8s.io/name": "job", "rayjob.k8s.io/namespace": "ns"},
        "runtime_env": {"env_vars": {"A": "1"}}, "entrypoint_num_cpus": 0.5, "entrypoint_resources": {"r": 1.0},
    }
    s = after["status"]
    assert (s["jobDeploymentStatus"], s["jobStatus"], s["reason"]) == ("Running", "PENDING", "Submitted")
    assert d.requeue_after == Timing().poll_interval
    # Once recorded, the same job is polled, never submitted again, whatever Ray answers.
    for info in (JobInfo("PENDING"), JobInfo("RUNNING", job_id="02000000")):
        again, d2 = step(after, Observed(cluster=ray(), job=info))
        assert not d2.actions
    assert again["status"]["jobStatus"] == "RUNNING" and again["status"]["jobId"] == "02000000"


def test_a_submission_ray_already_knows_is_adopted_not_repeated() -> None:
    """The operator died after POSTing but before writing the status: Ray knows the id, nothing is submitted."""
    job, _ = step(rayjob(), Observed())
    after, d = step(job, Observed(cluster=ray(), job=JobInfo("RUNNING", job_id="03000000")))
    assert not d.actions
    assert after["status"]["jobStatus"] == "RUNNING" and after["status"]["jobDeploymentStatus"] == "Running"


def test_success_completes_and_the_ttl_deletes_only_the_own_cluster() -> None:
    spec = {"entrypoint": "x", "rayClusterSpec": {}, "shutdownAfterJobFinishes": True, "ttlSecondsAfterFinished": 5}
    job, _ = step(rayjob(spec), Observed())
    job, _ = step(job, Observed(cluster=ray(), job_missing=True))
    job, d = step(job, Observed(cluster=ray(), job=JobInfo("SUCCEEDED", "02", "Job finished successfully.")))
    s = job["status"]
    assert (s["jobDeploymentStatus"], s["jobStatus"], s["reason"]) == ("Complete", "SUCCEEDED", "JobSucceeded")
    assert s["endTime"] == "2026-01-01T12:00:00Z" and d.requeue_after == 5.0
    assert not wants_job_info(job, ray())
    later, d = step(job, Observed(cluster=ray()), NOW + timedelta(seconds=2))
    assert not d.actions and d.requeue_after == 3.0 and later["status"] == job["status"]
    gone, d = step(job, Observed(cluster=ray()), NOW + timedelta(seconds=5))
    assert d.actions == (DeleteCluster("job-1", "uid-job-1"),)
    final, d = step(gone, Observed(cluster=None), NOW + timedelta(seconds=6))
    assert final["status"]["clusterDeleted"] is True and not d.actions and d.requeue_after is None
    assert step(final, Observed(), NOW + timedelta(seconds=60))[0]["status"] == final["status"]


def test_without_shutdown_the_cluster_stays() -> None:
    job, _ = step(rayjob(), Observed())
    job, _ = step(job, Observed(cluster=ray(), job_missing=True))
    job, d = step(job, Observed(cluster=ray(), job=JobInfo("SUCCEEDED")))
    assert d.requeue_after is None
    _, d = step(job, Observed(cluster=ray()), NOW + timedelta(hours=1))
    assert not d.actions and d.requeue_after is None


def test_failed_entrypoint_says_the_exit_code() -> None:
    job, _ = step(rayjob(), Observed())
    job, _ = step(job, Observed(cluster=ray(), job_missing=True))
    msg = "Job entrypoint command failed with exit code 1, last available logs: boom"
    job, d = step(job, Observed(cluster=ray(), job=JobInfo("FAILED", "02", msg, exit_code=1)))
    s = job["status"]
    assert (s["jobDeploymentStatus"], s["jobStatus"], s["reason"]) == ("Failed", "FAILED", "JobFailed")
    assert "exit code 1" in s["message"]
    assert any(e[0] == "Warning" and e[1] == "JobFailed" for e in d.events)


def test_selector_no_match_ambiguous_and_match() -> None:
    spec = {"entrypoint": "x", "clusterSelector": {"team": "ml"}}
    job, d = step(rayjob(spec), Observed())
    assert job["status"]["reason"] == "ClusterSelectorNoMatch" and "team=ml" in job["status"]["message"]
    assert not d.actions and d.requeue_after is None
    job, d = step(job, Observed(selected=("a", "b")))
    assert job["status"]["reason"] == "ClusterSelectorAmbiguous" and not d.actions
    job, d = step(job, Observed(cluster=ray("shared"), selected=("shared",), job_missing=True))
    (submit,) = d.actions
    assert isinstance(submit, Submit) and "shared-head" in submit.address
    assert job["status"]["rayClusterName"] == "shared"
    spec["shutdownAfterJobFinishes"] = True
    job["spec"] = spec
    job, d = step(job, Observed(cluster=ray("shared"), selected=("shared",), job=JobInfo("SUCCEEDED")))
    assert d.requeue_after is None
    _, d = step(job, Observed(cluster=ray("shared"), selected=("shared",)), NOW + timedelta(hours=1))
    assert not d.actions  # a selected cluster is never deleted


def test_dashboard_unreachable_backs_off_without_hot_loop() -> None:
    job, _ = step(rayjob(), Observed())
    waits = []
    for n in range(1, 9):
        after, d = step(job, Observed(cluster=ray(), dashboard_error="connection refused", dashboard_failures=n))
        assert not d.actions and after["status"]["reason"] == "DashboardUnreachable"
        waits.append(d.requeue_after)
    assert waits == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]


def test_unchanged_inputs_give_the_stored_status() -> None:
    job, _ = step(rayjob(), Observed())
    job, _ = step(job, Observed(cluster=ray(), job_missing=True))
    job, _ = step(job, Observed(cluster=ray(), job=JobInfo("RUNNING", "02")))
    again, d = step(job, Observed(cluster=ray(), job=JobInfo("RUNNING", "02")), NOW + timedelta(minutes=3))
    assert again["status"] == job["status"] and not d.events


def test_refused_submission_is_validation_failed() -> None:
    job, _ = step(rayjob(), Observed())
    decision = decide(job, Observed(cluster=ray(), job_missing=True), NOW)
    refused = submit_refused(decision, job, "runtime_env: pip must be a list", NOW)
    s = refused.status
    assert (s["jobDeploymentStatus"], s["reason"]) == ("ValidationFailed", "SubmissionRejected")
    assert "pip must be a list" in s["message"] and "jobStatus" not in s


def test_invalid_spec_and_foreign_cluster_name() -> None:
    bad = rayjob({"entrypoint": "x", "runtimeEnv": "pip", "clusterSelector": {"a": "b"}})
    job, d = step(bad, Observed())
    assert (job["status"]["jobDeploymentStatus"], job["status"]["reason"]) == ("ValidationFailed", "InvalidSpec")
    assert "spec.runtimeEnv" in job["status"]["message"] and not d.actions
    assert step(job, Observed())[0]["status"] == job["status"]
    job, d = step(rayjob(), Observed(foreign=True))
    assert job["status"]["reason"] == "ClusterNameConflict" and not d.actions


def test_cluster_deleted_under_a_running_job_fails_it() -> None:
    job, _ = step(rayjob(), Observed())
    job, _ = step(job, Observed(cluster=ray(), job_missing=True))
    job, _ = step(job, Observed(cluster=None))
    assert (job["status"]["jobDeploymentStatus"], job["status"]["reason"]) == ("Failed", "ClusterLost")


def test_submission_id_is_a_function_of_uid_and_attempt() -> None:
    assert j.submission_id(UID, 1) == f"rayjob-{UID}-1"
    job, _ = step(rayjob(status={"attempt": 3}), Observed())
    assert job["status"]["submissionId"] == f"rayjob-{UID}-3" and job["status"]["rayClusterName"] == "job-3"


def _failing(spec_extra: dict[str, Any]) -> dict[str, Any]:
    return rayjob({"entrypoint": "exit 1", "rayClusterSpec": {}, **spec_extra})


def _fail_attempt(job: dict[str, Any], now: datetime) -> tuple[dict[str, Any], Any]:
    attempt = job.get("status", {}).get("attempt", 1)
    name = f"job-{attempt}"
    job, d = step(job, Observed(), now)
    assert isinstance(d.actions[0], CreateCluster) and d.actions[0].manifest["metadata"]["name"] == name
    job, d = step(job, Observed(cluster=ray(name), job_missing=True), now)
    (submit,) = d.actions
    assert isinstance(submit, Submit) and submit.body["submission_id"] == f"rayjob-{UID}-{attempt}"
    info = JobInfo("FAILED", "02", "Job entrypoint command failed with exit code 1", exit_code=1)
    return step(job, Observed(cluster=ray(name), job=info), now)


def test_backoff_limit_retries_on_fresh_clusters_then_fails() -> None:
    job = _failing({"backoffLimit": 2})
    now = NOW
    submissions = []
    for attempt in (1, 2):
        job, d = _fail_attempt(job, now)
        s = job["status"]
        assert (s["jobDeploymentStatus"], s["reason"], s["attempt"], s["failed"]) == (
            "Retrying", "Retrying", attempt + 1, attempt)
        assert "exit code 1" in s["message"] and f"attempt {attempt} of 3 failed" in s["message"]
        # The failed attempt's cluster goes; the next one waits for the back-off (2 s, then 4 s).
        assert d.actions == (DeleteCluster(f"job-{attempt}", f"uid-job-{attempt}"),)
        delay = 2.0 * 2 ** (attempt - 1)
        assert d.requeue_after == delay and "jobStatus" not in s
        waiting, d = step(job, Observed(), now + timedelta(seconds=delay / 2))
        assert not d.actions and waiting["status"] == s and d.requeue_after == delay / 2
        submissions.append(s["submissionId"])
        now += timedelta(seconds=delay)
    job, d = _fail_attempt(job, now)
    s = job["status"]
    assert (s["jobDeploymentStatus"], s["reason"], s["attempt"], s["failed"]) == ("Failed", "JobFailed", 3, 3)
    assert "attempt 3 of 3" in s["message"] and "exit code 1" in s["message"]
    assert submissions == [f"rayjob-{UID}-2", f"rayjob-{UID}-3"]


def test_deadline_stops_the_ray_job_and_fails() -> None:
    job = rayjob({"entrypoint": "sleep 300", "rayClusterSpec": {}, "activeDeadlineSeconds": 20})
    job, d = step(job, Observed())
    assert d.requeue_after == 20.0  # woken at the deadline even while nothing else happens
    job, d = step(job, Observed(cluster=ray(), job_missing=True), NOW + timedelta(seconds=5))
    assert d.requeue_after == 2.0
    job, d = step(job, Observed(cluster=ray(), job=JobInfo("RUNNING", "02")), NOW + timedelta(seconds=19))
    assert d.requeue_after == 1.0
    assert wants_job_info(job, ray())
    job, d = step(job, Observed(cluster=ray(), job=JobInfo("RUNNING", "02")), NOW + timedelta(seconds=20))
    s = job["status"]
    assert (s["jobDeploymentStatus"], s["reason"]) == ("Failed", "DeadlineExceeded")
    assert "activeDeadlineSeconds (20 s)" in s["message"]
    assert d.actions == (Stop("http://job-1-head.ns.svc.cluster.local:8265", f"rayjob-{UID}-1"),)
    # Followed, and asked again, until Ray reports it stopped; then nothing more.
    assert wants_job_info(job, ray())
    job, d = step(job, Observed(cluster=ray(), job=JobInfo("RUNNING", "02")), NOW + timedelta(seconds=22))
    assert isinstance(d.actions[0], Stop) and d.requeue_after == 2.0
    job, d = step(job, Observed(cluster=ray(), job=JobInfo("STOPPED", "02")), NOW + timedelta(seconds=24))
    assert job["status"]["jobStatus"] == "STOPPED" and not d.actions and d.requeue_after is None
    assert job["status"]["reason"] == "DeadlineExceeded" and not wants_job_info(job, ray())


def test_deadline_before_submission_fails_without_stop() -> None:
    job = rayjob({"entrypoint": "x", "rayClusterSpec": {}, "activeDeadlineSeconds": 5})
    job, _ = step(job, Observed())
    job, d = step(job, Observed(cluster=ray(ready=False)), NOW + timedelta(seconds=6))
    assert job["status"]["reason"] == "DeadlineExceeded" and not d.actions


def test_the_finalizer_comes_with_the_first_submission() -> None:
    from rayop.jobplan import FINALIZER, needs_finalizer

    job, d = step(rayjob(), Observed())
    assert not needs_finalizer(job, d)
    d = decide(job, Observed(cluster=ray(), job_missing=True), NOW)
    assert needs_finalizer(job, d)
    job["metadata"]["finalizers"] = [FINALIZER]
    assert not needs_finalizer(job, d)


def test_deletion_stops_the_job_and_always_removes_the_finalizer() -> None:
    from rayop.jobplan import FINALIZER, deleting, wants_job_info_deleting

    job, _ = step(rayjob(), Observed())
    job, _ = step(job, Observed(cluster=ray(), job_missing=True))
    job, _ = step(job, Observed(cluster=ray(), job=JobInfo("RUNNING", "02")))
    job["metadata"]["finalizers"] = ["other", FINALIZER]
    job["metadata"]["deletionTimestamp"] = "2026-01-01T12:00:00Z"
    assert wants_job_info_deleting(job, ray())
    d = deleting(job, Observed(cluster=ray(), job=JobInfo("RUNNING")), NOW + timedelta(seconds=1))
    assert d.stop == Stop("http://job-1-head.ns.svc.cluster.local:8265", f"rayjob-{UID}-1")
    assert not d.remove_finalizer and d.requeue_after == 2.0
    for observed in (Observed(cluster=ray(), job=JobInfo("STOPPED")), Observed(cluster=None),
                     Observed(cluster=ray(), job_missing=True)):
        d = deleting(job, observed, NOW + timedelta(seconds=3))
        assert d.remove_finalizer and d.stop is None, observed
    # A dashboard that does not answer: back off, then give up; and never hold the deletion past the grace time.
    d = deleting(job, Observed(cluster=ray(), dashboard_error="refused", dashboard_failures=2), NOW)
    assert not d.remove_finalizer and d.requeue_after == 2.0
    d = deleting(job, Observed(cluster=ray(), dashboard_error="refused", dashboard_failures=5), NOW)
    assert d.remove_finalizer
    d = deleting(job, Observed(cluster=ray(), job=JobInfo("RUNNING")), NOW + timedelta(seconds=60))
    assert d.remove_finalizer
    # Never submitted, or finished: nothing to stop.
    done = copy.deepcopy(job)
    done["status"]["jobStatus"] = "SUCCEEDED"
    assert not wants_job_info_deleting(done, ray())
    assert deleting(done, Observed(cluster=ray()), NOW).remove_finalizer
    del job["metadata"]["finalizers"]
    assert deleting(job, Observed(cluster=ray()), NOW) == type(d)()


# -- K8sJob mode ------------------------------------------------------------------------------------------------


def k8s_job(**extra: Any) -> dict[str, Any]:
    spec = {"entrypoint": "python x.py --n 2", "rayClusterSpec": {"maxWorkers": 1}, "submissionMode": "K8sJob",
            "runtimeEnv": {"env_vars": {"A": "1"}}, "entrypointNumCpus": 0.5, **extra}
    return rayjob(spec)


def test_k8s_job_mode_creates_a_submitter_job_instead_of_submitting() -> None:
    from rayop.jobplan import CreateSubmitter, needs_finalizer
    job, _ = step(k8s_job(), Observed())
    after, d = step(job, Observed(cluster=ray(), job_missing=True, head_image="rayproject/ray:2.60.0"))
    (create,) = d.actions
    assert isinstance(create, CreateSubmitter) and needs_finalizer(job, d)
    m = create.manifest
    assert (m["apiVersion"], m["kind"], m["metadata"]["name"]) == ("batch/v1", "Job", "job-submit-1")
    (owner,) = m["metadata"]["ownerReferences"]
    assert owner["kind"] == "RayJob" and owner["uid"] == UID and owner["controller"] is True
    (c,) = m["spec"]["template"]["spec"]["containers"]
    assert c["image"] == "rayproject/ray:2.60.0"
    argv = c["command"]
    assert argv[:2] == ["bash", "-c"]
    assert argv[4:6] == ["http://job-1-head.ns.svc.cluster.local:8265", f"rayjob-{UID}-1"]
    assert argv[argv.index("--"):] == ["--", "python", "x.py", "--n", "2"]
    assert json.loads(argv[argv.index("--runtime-env-json") + 1]) == {"env_vars": {"A": "1"}}
    assert argv[argv.index("--entrypoint-num-cpus") + 1] == "0.5"
    assert json.loads(argv[argv.index("--metadata-json") + 1])["rayjob.k8s.io/name"] == "job"
    s = after["status"]
    assert (s["jobDeploymentStatus"], s["reason"], s["jobStatus"], s["submitterName"]) == (
        "Running", "SubmitterCreated", "PENDING", "job-submit-1")
    assert d.requeue_after == Timing().poll_interval


def test_k8s_job_mode_waits_for_the_head_image() -> None:
    job, _ = step(k8s_job(), Observed())
    after, d = step(job, Observed(cluster=ray(), job_missing=True))
    assert not d.actions and after["status"]["reason"] == "HeadPodUnknown"


def test_k8s_job_mode_adopts_a_known_submission_without_a_submitter() -> None:
    job, _ = step(k8s_job(), Observed())
    after, d = step(job, Observed(cluster=ray(), job=JobInfo(j.JOB_RUNNING, "02000000"), head_image="img"))
    assert not d.actions and after["status"]["jobStatus"] == "RUNNING"


def submitter(condition: str | None) -> dict[str, Any]:
    conditions = [{"type": condition, "status": "True", "reason": "BackoffLimitExceeded",
                   "message": "Job has reached the specified backoff limit"}] if condition else []
    return {"metadata": {"name": "job-submit-1"}, "status": {"conditions": conditions}}


def test_k8s_job_mode_waits_for_the_submitter_then_fails_with_it() -> None:
    from rayop.jobplan import CreateSubmitter
    job, _ = step(k8s_job(), Observed())
    job, _ = step(job, Observed(cluster=ray(), job_missing=True, head_image="img"))
    # Ray does not know the submission yet: the submitter is starting (never JobLost).
    waiting, d = step(job, Observed(cluster=ray(), job_missing=True, submitter=submitter(None)))
    assert (waiting["status"]["jobDeploymentStatus"], waiting["status"]["reason"]) == ("Running",
                                                                                       "WaitingForSubmitter")
    assert not d.actions and d.requeue_after == Timing().poll_interval
    # The cache has not seen the submitter: it is created again (AlreadyExists is fine).
    _, d = step(job, Observed(cluster=ray(), job_missing=True, head_image="img"))
    assert [type(a) for a in d.actions] == [CreateSubmitter]
    # The submitter failed and Ray never got the submission: the RayJob fails and says where to look.
    failed, d = step(job, Observed(cluster=ray(), job_missing=True, submitter=submitter("Failed")))
    s = failed["status"]
    assert (s["jobDeploymentStatus"], s["reason"]) == ("Failed", "SubmitterFailed")
    assert "kubectl logs job/job-submit-1" in s["message"] and "BackoffLimitExceeded" in s["message"]
    # The submitter completed but Ray forgot the job: lost, as in HTTP mode.
    lost, _ = step(job, Observed(cluster=ray(), job_missing=True, submitter=submitter("Complete")))
    assert lost["status"]["reason"] == "JobLost"
    # Ray got it: followed through the REST API as in HTTP mode.
    done, _ = step(job, Observed(cluster=ray(), job=JobInfo(j.JOB_SUCCEEDED, "02000000"),
                                 submitter=submitter(None)))
    assert (done["status"]["jobDeploymentStatus"], done["status"]["submitterName"]) == ("Complete", "job-submit-1")


def test_entrypoint_argv_keeps_what_ray_runs() -> None:
    import shlex
    from rayop.jobplan import entrypoint_argv
    for plain in ("python x.py", "python -c 'import ray; print(1)'", "echo"):
        assert shlex.join(entrypoint_argv(plain)) == plain
    for shell in ("python a.py && echo done", "echo $HOME", 'python -c "print(1)"', "a | b", "'unclosed"):
        assert entrypoint_argv(shell) == ["sh", "-c", shell]


# -- suspend --------------------------------------------------------------------------------------------------


def test_suspended_at_creation_creates_nothing_and_resumes_as_usual() -> None:
    spec = dict(rayjob()["spec"], suspend=True)
    job, d = step(rayjob(spec), Observed())
    s = job["status"]
    assert not d.actions and (s["jobDeploymentStatus"], s["reason"], s["attempt"]) == ("Suspended", "Suspended", 1)
    assert "startTime" not in s and "rayClusterName" not in s
    again, d2 = step(job, Observed(), NOW + timedelta(seconds=30))
    assert not d2.actions and again["status"] == s  # unchanged: nothing written
    job["spec"]["suspend"] = False
    resumed, d3 = step(job, Observed(), NOW + timedelta(seconds=60))
    (create,) = d3.actions
    assert isinstance(create, CreateCluster) and create.manifest["metadata"]["name"] == "job-1"
    assert resumed["status"]["jobDeploymentStatus"] == "Initializing"
    assert resumed["status"]["startTime"] == "2026-01-01T12:01:00Z"


def test_suspending_a_running_job_stops_it_and_deletes_its_cluster() -> None:
    job, _ = step(rayjob(), Observed())
    job, _ = step(job, Observed(cluster=ray(), job_missing=True))
    job, _ = step(job, Observed(cluster=ray(), job=JobInfo(j.JOB_RUNNING, "02000000")))
    job["spec"]["suspend"] = True
    after, d = step(job, Observed(cluster=ray(), job=JobInfo(j.JOB_RUNNING, "02000000")))
    assert [type(a) for a in d.actions] == [Stop, DeleteCluster]
    assert d.actions[0].submission_id == f"rayjob-{UID}-1"  # type: ignore[union-attr]
    assert d.actions[1].name == "job-1"  # type: ignore[union-attr]
    s = after["status"]
    assert (s["jobDeploymentStatus"], s["reason"], s["attempt"], s["submissionId"]) == (
        "Suspended", "Suspended", 2, f"rayjob-{UID}-2")
    assert "jobStatus" not in s and "rayClusterName" not in s and not s.get("failed")
    assert "attempt 1 was stopped" in s["message"] and "job-1 deleted" in s["message"]
    # Woken by its cluster going: nothing more to do.
    again, d2 = step(after, Observed())
    assert not d2.actions and again["status"] == s
    # Resumed: a fresh cluster for attempt 2; the suspension did not use up a retry.
    after["spec"]["suspend"] = False
    after["spec"]["backoffLimit"] = 1
    resumed, d3 = step(after, Observed())
    assert [a.manifest["metadata"]["name"] for a in d3.actions] == ["job-2"]  # type: ignore[union-attr]
    job2, _ = step(resumed, Observed(cluster=ray("job-2"), job_missing=True))
    failed, d4 = step(job2, Observed(cluster=ray("job-2"), job=JobInfo(j.JOB_FAILED, "03", "boom", 1)))
    assert failed["status"]["jobDeploymentStatus"] == "Retrying", failed["status"]


def test_suspend_is_ignored_once_finished() -> None:
    job, _ = step(rayjob(), Observed())
    job, _ = step(job, Observed(cluster=ray(), job_missing=True))
    done, _ = step(job, Observed(cluster=ray(), job=JobInfo(j.JOB_SUCCEEDED, "02")))
    done["spec"]["suspend"] = True
    after, d = step(done, Observed(cluster=ray()))
    assert not d.actions and after["status"]["jobDeploymentStatus"] == "Complete"


# -- deletionPolicy -------------------------------------------------------------------------------------------


def finished_with(**spec_extra: Any) -> dict[str, Any]:
    spec = {"entrypoint": "x", "rayClusterSpec": {}, "ttlSecondsAfterFinished": 5, **spec_extra}
    job, _ = step(rayjob(spec), Observed())
    job, _ = step(job, Observed(cluster=ray(), job_missing=True))
    done, d = step(job, Observed(cluster=ray(), job=JobInfo(j.JOB_SUCCEEDED, "02")))
    return done


def test_deletion_policy_delete_self_deletes_the_rayjob_after_the_ttl() -> None:
    from rayop.jobplan import DeleteSelf
    done = finished_with(deletionPolicy="DeleteSelf")
    _, d = step(done, Observed(cluster=ray()), NOW + timedelta(seconds=2))
    assert not d.actions and d.requeue_after == 3.0
    _, d = step(done, Observed(cluster=ray()), NOW + timedelta(seconds=5))
    assert d.actions == (DeleteSelf(UID),)


def test_deletion_policy_delete_cluster_and_delete_none() -> None:
    done = finished_with(deletionPolicy="DeleteCluster")
    _, d = step(done, Observed(cluster=ray()), NOW + timedelta(seconds=5))
    assert [type(a) for a in d.actions] == [DeleteCluster]
    kept = finished_with(deletionPolicy="DeleteNone")
    _, d = step(kept, Observed(cluster=ray()), NOW + timedelta(seconds=500))
    assert not d.actions and d.requeue_after is None
    legacy = finished_with(shutdownAfterJobFinishes=True)
    _, d = step(legacy, Observed(cluster=ray()), NOW + timedelta(seconds=5))
    assert [type(a) for a in d.actions] == [DeleteCluster]
