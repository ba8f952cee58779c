"""rayop.objects: the one classification of a Ray's pods and the one head choice, which the plan and the status
share."""

from __future__ import annotations

from typing import Any

import pytest

from rayop.api.convert import effective_cluster
from rayop.build import head_address
from rayop.defaults import Options
from rayop.objects import (
    GCS_PORT,
    choose_head,
    classify,
    condition,
    head_service_host,
    parse_time,
    pod_failure,
)
from rayop.plan import REASON_DUPLICATE_HEAD, plan_cluster
from rayop.status import compute_status
from tests.unit.test_plan_fixtures import NOW, UID, desired_for, healthy, pod, ray, static, with_pods


def two_heads(*, new_is_older: bool) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """A Ray with two live head pods: one on the current template that is not ready, one ready on an old one."""
    obj = ray(static(1))
    d = desired_for(obj)
    new = pod("demo-head-new00", role="head", group="head", hash=d.head.template_hash, ready=False,
              age=900 if new_is_older else 60)
    old = pod("demo-head-old00", role="head", group="head", hash="an-old-template", ready=True,
              age=60 if new_is_older else 900)
    return obj, new, old


@pytest.mark.parametrize("new_is_older", [False, True])
def test_plan_and_status_agree_on_the_head_when_two_live_heads_exist(new_is_older: bool) -> None:
    obj, new, old = two_heads(new_is_older=new_is_older)
    d = desired_for(obj)
    observed = with_pods(healthy(d), [old, new, *healthy(d).pods[1:]])

    plan = plan_cluster(d, observed, NOW)
    deleted = {a.name: a.reason for a in plan.deletes if a.kind == "Pod" and a.group == "head"}
    # The plan keeps the head on the current template and deletes the other one.
    assert deleted == {"demo-head-old00": REASON_DUPLICATE_HEAD}

    status = compute_status(obj, effective_cluster(obj), observed, NOW, desired=d)
    # ... and the status reports the same pod as the head (not the ready old one the plan is deleting).
    assert status["headPodName"] == "demo-head-new00"
    head_ready = next(c for c in status["conditions"] if c["type"] == "HeadReady")
    assert head_ready["status"] == "False" and "demo-head-new00" in head_ready["message"]
    assert choose_head([old, new], d.head.template_hash) is new


def test_without_a_current_template_readiness_decides() -> None:
    _, new, old = two_heads(new_is_older=True)
    assert choose_head([new, old], None) is old
    assert choose_head([], None) is None
    assert choose_head([pod("h", role="head", group="head", terminating=True)], None) is None


def test_classify_keeps_the_operators_head_and_worker_pods_by_group() -> None:
    head = pod("demo-head-a", role="head", group="head")
    cpu = [pod("demo-cpu-a", group="cpu"), pod("demo-cpu-b", group="cpu", terminating=True)]
    gpu = pod("demo-gpu-a", group="gpu")
    launcher = pod("demo-launcher-a", role="launcher", group="launcher")
    foreign = pod("demo-cpu-x", group="cpu", owner_uid="someone-else")
    unmanaged = pod("demo-cpu-y", group="cpu")
    unmanaged["metadata"]["labels"]["app.kubernetes.io/managed-by"] = "someone"
    pods = classify([gpu, head, *cpu, launcher, foreign, unmanaged], UID)
    assert pods.heads == (head,)
    assert pods.workers == (gpu, *cpu)
    assert dict(pods.groups) == {"gpu": (gpu,), "cpu": tuple(cpu)}
    assert pods.scopes() == {"head": [head], "gpu": [gpu], "cpu": cpu}
    # Without an owner UID nothing is left out for its owner.
    assert foreign in classify([foreign]).workers


def test_the_status_endpoints_and_the_pods_address_name_the_same_service() -> None:
    obj = ray(static(1))
    d = desired_for(obj)
    status = compute_status(obj, effective_cluster(obj), healthy(d), NOW, desired=d)
    host = head_service_host("demo", "ray")
    assert status["endpoints"]["gcs"] == f"{host}:{GCS_PORT}"
    assert head_address(d.model, Options()) == f"{host}.cluster.local:{GCS_PORT}"


def test_reads_never_raise_on_malformed_objects() -> None:
    broken: dict[str, Any] = {"metadata": "x", "status": {"conditions": ["x", {"type": "Ready"}], "phase": None}}
    assert condition(broken, "Ready") == {"type": "Ready"}
    assert classify([broken]).heads == ()
    assert pod_failure(broken, Options()) is None
    assert parse_time("not a time") is None and parse_time(3) is None
    assert parse_time("2026-01-02T03:04:05Z") == NOW
