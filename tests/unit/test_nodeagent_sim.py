"""The node agent's simulated runtime: container timelines as a pure function of spec, faults and time."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "hack" / "nodeagent"))

from sim import SimRuntime  # noqa: E402

T0 = 1_000_000.0


def make_pod(annotations: dict[str, str] | None = None, restart: str = "Always", job: bool = False,
             image: str = "img") -> dict[str, Any]:
    meta: dict[str, Any] = {"uid": "u1", "name": "p", "namespace": "n", "annotations": annotations or {}}
    if job:
        meta["ownerReferences"] = [{"kind": "Job", "name": "j", "uid": "j1"}]
    return {"metadata": meta, "spec": {"restartPolicy": restart, "containers": [{"name": "c", "image": image}]}}


def test_long_running_pod_runs_and_is_ready() -> None:
    rt = SimRuntime()
    view = rt.observe(make_pod(), T0)
    assert view.phase == "Running"
    assert view.containers[0].ready and "running" in view.containers[0].state
    assert view.next_change is None


def test_start_and_ready_delays_schedule_the_next_change() -> None:
    rt = SimRuntime()
    pod = make_pod({"sim.rayop.dev/start-delay-seconds": "2", "sim.rayop.dev/ready-delay-seconds": "3"})
    first = rt.observe(pod, T0)
    assert first.phase == "Pending" and first.next_change == T0 + 2
    running = rt.observe(pod, T0 + 2)
    assert running.phase == "Running" and not running.containers[0].ready and running.next_change == T0 + 5
    assert rt.observe(pod, T0 + 5).containers[0].ready


@pytest.mark.parametrize(("code", "restart", "phase"), [
    (0, "Never", "Succeeded"), (2, "Never", "Failed"), (0, "OnFailure", "Succeeded"),
])
def test_job_pods_exit(code: int, restart: str, phase: str) -> None:
    rt = SimRuntime()
    pod = make_pod({"sim.rayop.dev/exit-code": str(code)}, restart=restart, job=True)
    assert rt.observe(pod, T0).phase == "Running"
    view = rt.observe(pod, T0 + 1)
    assert view.phase == phase
    assert view.containers[0].state["terminated"]["exitCode"] == code


def test_launcher_pods_run_to_completion_other_bare_pods_run_on() -> None:
    rt = SimRuntime()
    launcher = make_pod(restart="Never")
    launcher["metadata"]["labels"] = {"ray.k8s.io/node-kind": "launcher"}
    assert rt.observe(launcher, T0).phase == "Running"
    assert rt.observe(launcher, T0 + 1).phase == "Succeeded"
    other = make_pod(restart="Never")
    other["metadata"]["uid"] = "u2"
    other["metadata"]["labels"] = {"ray.k8s.io/node-kind": "worker"}
    assert rt.observe(other, T0).phase == rt.observe(other, T0 + 3600).phase == "Running"


def test_crash_backs_off_then_restarts() -> None:
    rt = SimRuntime()
    pod = make_pod({"sim.rayop.dev/restart-backoff-seconds": "10"})
    rt.observe(pod, T0)
    rt.crash(pod, None, 137, T0 + 5)
    waiting = rt.observe(pod, T0 + 6)
    c = waiting.containers[0]
    assert c.state["waiting"]["reason"] == "CrashLoopBackOff" and not c.ready
    assert c.last_state["terminated"]["exitCode"] == 137
    assert waiting.next_change == T0 + 15
    back = rt.observe(pod, T0 + 15).containers[0]
    assert "running" in back.state and back.restart_count == 1 and back.ready


def test_repeated_crashes_double_the_backoff() -> None:
    rt = SimRuntime()
    pod = make_pod({"sim.rayop.dev/restart-backoff-seconds": "10", "sim.rayop.dev/run-seconds": "1"})
    # Runs 1 s, backs off 10 s, runs 1 s, backs off 20 s ...
    rt.observe(pod, T0)
    assert rt.observe(pod, T0 + 1.5).next_change == T0 + 11
    second = rt.observe(pod, T0 + 12.5)
    assert second.containers[0].restart_count == 2 and second.next_change == T0 + 32


def test_crash_with_restart_never_fails_the_pod() -> None:
    rt = SimRuntime()
    pod = make_pod(restart="Never")
    rt.observe(pod, T0)
    rt.crash(pod, "c", 1, T0 + 1)
    assert rt.observe(pod, T0 + 2).phase == "Failed"


def test_fail_fault() -> None:
    rt = SimRuntime()
    pod = make_pod()
    rt.observe(pod, T0)
    rt.fail(pod, "Evicted", "out of memory", T0 + 1)
    view = rt.observe(pod, T0 + 1)
    assert (view.phase, view.reason, view.message) == ("Failed", "Evicted", "out of memory")


def test_unpullable_image_stays_pending() -> None:
    rt = SimRuntime()
    view = rt.observe(make_pod(image="example/does-not-exist:1"), T0 + 11)
    assert view.phase == "Pending"
    assert view.containers[0].state["waiting"]["reason"] in ("ErrImagePull", "ImagePullBackOff")


def test_timeline_survives_an_agent_restart() -> None:
    pod = make_pod()
    pod["status"] = {"startTime": "1970-01-12T13:46:00Z"}  # T0 - 40 s
    view = SimRuntime().observe(pod, T0)
    assert view.containers[0].state["running"]["startedAt"] == "1970-01-12T13:46:00Z"
