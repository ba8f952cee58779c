"""The benchmark's stand-in for Ray's Job Submission API (bench/jobstub.py), spoken to by the operator's own client
(rayop.jobsubmit) routed as bench/rayjob_operator.py routes it: states over time, one job per submission id,
every submission counted, the dashboard meant recorded."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench.jobstub import PENDING, RUNNING, STOPPED, SUCCEEDED, JobStub, StubJobs
from bench.rayjob_operator import StubRoutedClient, resource_of
from rayop.jobplan import JobInfo


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def stub(clock: Clock) -> Iterator[JobStub]:
    served = JobStub(StubJobs(pending_seconds=1.0, run_seconds=2.0, clock=clock))
    yield served
    served.close()


DASHBOARD = "http://job-a-1-head.ns.svc:8265"


def body(sid: str) -> dict[str, object]:
    return {"submission_id": sid, "entrypoint": "python -c 'print(1)'",
            "metadata": {"rayjob.k8s.io/name": "job-a", "rayjob.k8s.io/namespace": "ns"}}


def test_a_job_is_pending_then_running_then_succeeded_by_the_clock(stub: JobStub, clock: Clock) -> None:
    client = StubRoutedClient(stub.url)
    assert client.get_job(DASHBOARD, "rayjob-u-1") is None
    assert client.submit(DASHBOARD, body("rayjob-u-1")) == "rayjob-u-1"
    seen = []
    for t in (0.0, 0.99, 1.0, 2.99, 3.0, 60.0):
        clock.now = 1000.0 + t
        info = client.get_job(DASHBOARD, "rayjob-u-1")
        assert info is not None and info["submission_id"] == "rayjob-u-1"
        seen.append(JobInfo.from_json(info).status)
    assert seen == [PENDING, PENDING, RUNNING, RUNNING, SUCCEEDED, SUCCEEDED]
    assert info["driver_exit_code"] == 0 and info["job_id"] and info["end_time"] >= info["start_time"]
    # A finished job cannot be stopped; its state stays.
    assert client.stop(DASHBOARD, "rayjob-u-1") is False
    assert JobInfo.from_json(client.get_job(DASHBOARD, "rayjob-u-1") or {}).status == SUCCEEDED


def test_every_submission_is_counted_and_a_repeated_id_is_refused_as_ray_does(stub: JobStub) -> None:
    client = StubRoutedClient(stub.url)
    client.submit(DASHBOARD, body("rayjob-u-1"))
    # Ray answers 400 "... already exists"; the operator's client takes that as submitted before.
    assert client.submit(DASHBOARD, body("rayjob-u-1")) == "rayjob-u-1"
    client.submit("http://job-b-1-head.ns.svc:8265", body("rayjob-v-1"))
    stats = stub.jobs.stats()
    assert stats["jobs"] == 2
    assert stats["submissions"] == {"rayjob-u-1": 2, "rayjob-v-1": 1}
    assert stats["by_submission"]["rayjob-u-1"]["dashboard"] == "job-a-1-head.ns.svc:8265"
    assert stats["by_submission"]["rayjob-v-1"]["dashboard"] == "job-b-1-head.ns.svc:8265"
    assert stats["by_submission"]["rayjob-u-1"]["metadata"]["rayjob.k8s.io/name"] == "job-a"
    assert stats["requests"] == {"POST submit": 3}


def test_stop_ends_a_running_job_and_unknown_ids_are_404(stub: JobStub, clock: Clock) -> None:
    client = StubRoutedClient(stub.url)
    assert client.stop(DASHBOARD, "rayjob-none-1") is False
    client.submit(DASHBOARD, body("rayjob-u-1"))
    clock.now += 1.5
    assert client.stop(DASHBOARD, "rayjob-u-1") is True
    clock.now += 60
    assert JobInfo.from_json(client.get_job(DASHBOARD, "rayjob-u-1") or {}).status == STOPPED
    assert client.stop(DASHBOARD, "rayjob-u-1") is False


def test_request_paths_are_named_as_the_api_server_counts_them() -> None:
    assert resource_of("GET", "/apis/ray.k8s.io/v1alpha1/namespaces/ns/rayjobs") == ("LIST", "rayjobs", "")
    assert resource_of("GET", "/apis/ray.k8s.io/v1alpha1/rays") == ("LIST", "rays", "")
    assert resource_of("GET", "/apis/ray.k8s.io/v1alpha1/namespaces/ns/rayjobs/a") == ("GET", "rayjobs", "")
    assert resource_of("PATCH", "/apis/ray.k8s.io/v1alpha1/namespaces/ns/rayjobs/a/status") == \
        ("PATCH", "rayjobs", "status")
    assert resource_of("POST", "/api/v1/namespaces/ns/events") == ("POST", "events", "")
    assert resource_of("POST", "/apis/batch/v1/namespaces/ns/jobs") == ("POST", "jobs", "")
    assert resource_of("GET", "/api/v1/namespaces/ns") == ("GET", "namespaces", "")
    assert resource_of("GET", "/api/v1/namespaces") == ("LIST", "namespaces", "")
