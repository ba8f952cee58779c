"""The pure plan: creation, scaling, failure replacement with back-off, rolling updates, drift, launches."""

from __future__ import annotations

import copy
from datetime import timedelta
from typing import Any

import pytest

from rayop.objects import ANNOTATION_REPLACEMENTS, Observed, data_digest, digest_config_map_data
from rayop.defaults import Options
from rayop.plan import (
    REASON_DUPLICATE_HEAD,
    REASON_GROUP_REMOVED,
    REASON_HEAD_CHANGED,
    REASON_LAUNCH,
    REASON_NOT_NEEDED,
    REASON_REPLACE_FAILED,
    REASON_ROLLING_UPDATE,
    REASON_SCALE_DOWN,
    REASON_SCALE_UP,
    REASON_STALE_LAUNCH,
    REASON_WORKERS_TO_DELETE,
    Create,
    Delete,
    Observed,
    Plan,
    plan_cluster,
)
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
    ts,
    with_pods,
)


def kinds(plan: Plan) -> list[tuple[str, str, str]]:
    out = []
    for a in plan.actions:
        if isinstance(a, Create):
            out.append(("create", a.kind, a.group or a.manifest["metadata"].get("name", "")))
        elif isinstance(a, Delete):
            out.append(("delete", a.kind, a.name))
        else:
            out.append(("patch", a.kind, a.name))
    return out


def deleted(plan: Plan) -> list[str]:
    return [a.name for a in plan.deletes]


def created(plan: Plan, group: str) -> int:
    return sum(1 for a in plan.creates if a.group == group)


def test_a_new_cluster_gets_named_children_then_the_head_with_its_workers() -> None:
    d = desired_for(ray(autoscaling()))
    plan = plan_cluster(d, Observed(), NOW)
    assert kinds(plan) == [
        ("create", "ServiceAccount", "demo-autoscaler"),
        ("create", "Role", "demo-autoscaler"),
        ("create", "RoleBinding", "demo-autoscaler"),
        ("create", "ConfigMap", "demo-ray"),
        ("create", "Pod", "head"),
        ("create", "Pod", "worker"),
        ("create", "Pod", "worker"),
    ]
    assert "Service demo-head: created once the head pod has an IP" in plan.notes
    assert plan.requeue_after is None


@pytest.mark.parametrize("phase, ip, creates", [("Pending", None, False), ("Running", None, False),
                                                 ("Running", "10.0.0.9", True)],
                         ids=["pending", "running-without-ip", "with-ip"])
def test_the_head_service_is_created_once_the_head_pod_has_an_ip(phase: str, ip: str | None, creates: bool) -> None:
    d = desired_for(ray(autoscaling()))
    full = healthy(d, workers=0)
    head = pod("demo-head-abcde", role="head", group="head", hash=d.head.template_hash, phase=phase,
               ready=False, node="n1", ip=ip)
    plan = plan_cluster(d, Observed(pods=[head], config_maps=full.config_maps,
                                    service_accounts=full.service_accounts, roles=full.roles,
                                    role_bindings=full.role_bindings), NOW)
    assert (("create", "Service", "demo-head") in kinds(plan)) is creates
    assert not [a for a in plan.creates if a.kind == "Pod" and a.group == "head"], "the head is not created twice"


def test_an_existing_head_service_stays_while_the_head_has_no_ip() -> None:
    d = desired_for(ray(autoscaling()))
    full = healthy(d, workers=0)
    head = pod("demo-head-abcde", role="head", group="head", hash=d.head.template_hash, phase="Pending",
               ready=False, node=None, ip=None)
    plan = plan_cluster(d, Observed(pods=[head], services=full.services, config_maps=full.config_maps,
                                    service_accounts=full.service_accounts, roles=full.roles,
                                    role_bindings=full.role_bindings), NOW)
    assert not [a for a in plan.actions if a.kind == "Service"]
    assert not [n for n in plan.notes if n.startswith("Service")]


@pytest.mark.parametrize("head_phase, ready, workers, launches", [
    ("Pending", False, 2, 0), ("Running", False, 2, 0), ("Running", True, 2, 1)],
    ids=["pending", "running", "ready"])
def test_workers_are_created_with_the_head_and_the_launch_once_it_is_ready(head_phase: str, ready: bool,
                                                                            workers: int, launches: int) -> None:
    d = desired_for(ray(autoscaling(initial=2)))
    full = healthy(d, workers=0)
    head = pod("demo-head-abcde", role="head", group="head", hash=d.head.template_hash, phase=head_phase,
               ready=ready, node="n1")
    plan = plan_cluster(d, Observed(pods=[head], services=full.services, config_maps=full.config_maps,
                                    service_accounts=full.service_accounts, roles=full.roles,
                                    role_bindings=full.role_bindings), NOW)
    assert created(plan, "worker") == workers
    launchers = [a for a in plan.creates if a.reason == REASON_LAUNCH]
    assert [a.kind for a in launchers] == ["Pod"] * launches
    assert [a.manifest["metadata"]["name"] for a in launchers] == [d.launcher_name("uid-demo-head-abcde")] * launches


def test_an_unchanged_cluster_needs_nothing() -> None:
    for spec in (autoscaling(), static(3)):
        d = desired_for(ray(spec))
        observed = healthy(d)
        before = copy.deepcopy(observed)
        plan = plan_cluster(d, observed, NOW)
        assert plan.actions == () and plan.requeue_after is None
        assert observed == before


def test_a_config_map_cached_as_digests_is_compared_by_its_digests() -> None:
    d = desired_for(ray(autoscaling()))
    observed = healthy(d)
    cached = [digest_config_map_data(copy.deepcopy(dict(cm))) for cm in observed.config_maps]
    [cm] = cached
    assert cm["data"] and all(v.startswith("rayop-digest:sha256:") for v in cm["data"].values())
    same = Observed(**{**observed.__dict__, "config_maps": cached})
    assert plan_cluster(d, same, NOW).actions == ()
    # One value changed since: the patch carries the whole desired value of that key only.
    key = sorted(cm["data"])[0]
    stale = copy.deepcopy(cm)
    stale["data"][key] = data_digest("something else")
    plan = plan_cluster(d, Observed(**{**observed.__dict__, "config_maps": [stale]}), NOW)
    [patch] = [a for a in plan.actions if getattr(a, "kind", "") == "ConfigMap"]
    assert patch.patch["data"] == {key: d.config_map["data"][key]}


@pytest.mark.parametrize("spec, want", [(static(2, desiredWorkers={"worker": 5}), 5), (static(4), 4)],
                         ids=["desiredWorkers", "initialWorkers"])
def test_scale_up(spec: dict[str, Any], want: int) -> None:
    d = desired_for(ray(spec))
    plan = plan_cluster(d, healthy(d, workers=2), NOW)
    assert created(plan, "worker") == want - 2
    assert {a.reason for a in plan.creates} == {REASON_SCALE_UP}


def test_creates_per_reconcile_are_bounded_whatever_count_the_spec_asks_for() -> None:
    """maxWorkers and initialWorkers may be 2**31 - 1: one reconcile creates at most `create_burst` pods (a plan of
    two billion creates would take the operator's memory), says what is left, and the next reconciles go on."""
    top = 2**31 - 1
    d = desired_for(ray(static(top, maxWorkers=top)))
    plan = plan_cluster(d, healthy(d, workers=0), NOW)
    assert created(plan, "worker") == Options().create_burst == 500
    assert f"{top - 500} pod(s) left for the next reconciles" in " ".join(plan.notes)
    assert plan.requeue_after is not None
    plan = plan_cluster(d, healthy(d, workers=500), NOW)
    assert created(plan, "worker") == 500
    small = desired_for(ray(static(7)), Options(create_burst=3))
    assert created(plan_cluster(small, healthy(small, workers=0), NOW), "worker") == 3
    assert created(plan_cluster(small, healthy(small, workers=6), NOW), "worker") == 1


def _mixed(d: Any) -> list[dict[str, Any]]:
    h = d.workers[0].template_hash
    return [
        pod("demo-head-abcde", role="head", group="head", hash=d.head.template_hash),
        pod("old-ready", hash=h, age=5000),
        pod("new-ready", hash=h, age=100),
        pod("unready", hash=h, ready=False, age=200),
        pod("pending", hash=h, phase="Pending", age=50),
        pod("unscheduled", hash=h, phase="Pending", node=None, age=40),
    ]


@pytest.mark.parametrize(
    "want, gone",
    [
        (4, ["unscheduled"]),
        (3, ["unscheduled", "pending"]),
        (2, ["unscheduled", "pending", "unready"]),
        (1, ["unscheduled", "pending", "unready", "new-ready"]),
        (0, ["unscheduled", "pending", "unready", "new-ready", "old-ready"]),
    ],
    ids=["to-4", "to-3", "to-2", "to-1", "to-0"],
)
def test_scale_down_removes_unscheduled_then_pending_then_unready_then_newest(want: int, gone: list[str]) -> None:
    d = desired_for(ray(static(want)))
    plan = plan_cluster(d, with_pods(healthy(d), _mixed(d)), NOW)
    assert deleted(plan) == gone
    assert {a.reason for a in plan.deletes} == {REASON_SCALE_DOWN}
    assert not plan.creates


def test_with_the_autoscaler_busy_workers_are_kept_unless_above_max() -> None:
    d = desired_for(ray(autoscaling(minimum=0, maximum=4, initial=0)))
    pods = _mixed(d)
    plan = plan_cluster(d, with_pods(healthy(d), pods), NOW)
    assert deleted(plan) == ["unscheduled", "pending", "unready"]
    assert "autoscaler removes idle ones by name" in " ".join(plan.notes)
    lowered = desired_for(ray(autoscaling(minimum=0, maximum=1, initial=0)))
    pods = [pod("demo-head-abcde", role="head", group="head", hash=lowered.head.template_hash),
            *(pod(f"w{i}", hash=lowered.workers[0].template_hash, age=1000 - i) for i in range(3))]
    plan = plan_cluster(lowered, with_pods(healthy(lowered), pods), NOW)
    assert deleted(plan) == ["w2", "w1"]  # down to maxWorkers, newest first


def test_workers_to_delete_go_first_and_are_not_replaced_when_the_count_drops() -> None:
    spec = autoscaling(initial=3, desiredWorkers={"worker": 2}, workersToDelete=["demo-worker-00001", "gone"])
    d = desired_for(ray(spec))
    observed = healthy(desired_for(ray(autoscaling(initial=3))))  # three pods of the same template
    plan = plan_cluster(d, observed, NOW)
    assert [(a.name, a.reason) for a in plan.deletes] == [("demo-worker-00001", REASON_WORKERS_TO_DELETE)]
    assert not plan.creates


def test_failed_pods_are_replaced_after_their_back_off() -> None:
    d = desired_for(ray(static(2)))
    h = d.workers[0].template_hash
    failed = pod("demo-worker-00001", hash=h, phase="Failed", finished_ago=3)
    pods = [*healthy(d, workers=1).pods, failed]
    early = plan_cluster(d, with_pods(healthy(d), pods), NOW)
    assert early.actions == ()
    assert early.requeue_after == pytest.approx(7.0)
    later = plan_cluster(d, with_pods(healthy(d), pods), NOW + timedelta(seconds=8))
    assert [(a.name, a.reason) for a in later.deletes] == [("demo-worker-00001", REASON_REPLACE_FAILED)]
    (create,) = later.creates
    assert create.reason == REASON_REPLACE_FAILED
    assert create.manifest["metadata"]["annotations"][ANNOTATION_REPLACEMENTS] == "1"


@pytest.mark.parametrize(
    "replaced_before, wait",
    [(0, 10.0), (1, 20.0), (3, 80.0), (10, 300.0)],
    ids=["first", "second", "fourth", "capped"],
)
def test_back_off_doubles_per_replacement(replaced_before: int, wait: float) -> None:
    d = desired_for(ray(static(1)))
    failed = pod("w", hash=d.workers[0].template_hash, phase="Failed", finished_ago=0, age=60,
                 annotations={ANNOTATION_REPLACEMENTS: str(replaced_before)})
    plan = plan_cluster(d, with_pods(healthy(d), [healthy(d).pods[0], failed]), NOW)
    assert plan.requeue_after == pytest.approx(wait)


def test_back_off_resets_after_a_long_run() -> None:
    d = desired_for(ray(static(1)))
    failed = pod("w", hash=d.workers[0].template_hash, phase="Failed", finished_ago=0, age=3600,
                 annotations={ANNOTATION_REPLACEMENTS: "6"})
    plan = plan_cluster(d, with_pods(healthy(d), [healthy(d).pods[0], failed]), NOW)
    assert plan.requeue_after == pytest.approx(10.0)


@pytest.mark.parametrize("restarts, replaced", [(4, False), (5, True)], ids=["below-threshold", "crash-looping"])
def test_crash_looping_workers_are_replaced_past_a_restart_threshold(restarts: int, replaced: bool) -> None:
    d = desired_for(ray(static(1)))
    looping = pod("w", hash=d.workers[0].template_hash, ready=False, restarts=restarts, waiting="CrashLoopBackOff",
                  finished_ago=60, ready_since=60)
    plan = plan_cluster(d, with_pods(healthy(d), [healthy(d).pods[0], looping]), NOW)
    assert (deleted(plan) == ["w"]) is replaced
    assert created(plan, "worker") == (1 if replaced else 0)


def test_a_worker_that_never_becomes_ready_is_replaced_after_the_join_timeout() -> None:
    d = desired_for(ray(static(1)))
    # Not ready for the join timeout (300 s) plus the first back-off (10 s).
    stuck = pod("w", hash=d.workers[0].template_hash, ready=False, age=311, ready_since=311)
    assert deleted(plan_cluster(d, with_pods(healthy(d), [healthy(d).pods[0], stuck]), NOW)) == ["w"]
    young = pod("w", hash=d.workers[0].template_hash, ready=False, age=100, ready_since=100)
    assert plan_cluster(d, with_pods(healthy(d), [healthy(d).pods[0], young]), NOW).actions == ()


@pytest.mark.parametrize("head", ["failed", "outdated", "terminating"])
def test_workers_wait_while_the_head_is_failed_outdated_or_terminating(head: str) -> None:
    d = desired_for(ray(static(2)))
    full = healthy(d, workers=0)
    h = pod("demo-head-abcde", role="head", group="head", hash=d.head.template_hash, age=30)
    if head == "failed":  # in its back-off (the first replacement waits 10 s after it failed)
        h = pod("demo-head-abcde", role="head", group="head", hash=d.head.template_hash, phase="Failed",
                finished_ago=1)
    elif head == "outdated":
        h = pod("demo-head-abcde", role="head", group="head", hash="old", age=30)
    elif head == "terminating":
        h = pod("demo-head-abcde", role="head", group="head", hash=d.head.template_hash, terminating=True)
    plan = plan_cluster(d, with_pods(full, [h]), NOW)
    assert created(plan, "worker") == 0
    assert "worker group worker: 2 pod(s) wait for a head pod that is not failed, outdated or terminating" in plan.notes


def test_a_worker_waiting_for_a_head_that_is_not_ready_never_counts_as_failed() -> None:
    # Created with the head, a worker waits for its GCS: the join timeout counts from the head turning Ready.
    d = desired_for(ray(static(1)))
    waiting = pod("w", hash=d.workers[0].template_hash, ready=False, age=900, ready_since=900)
    slow_head = pod("demo-head-abcde", role="head", group="head", hash=d.head.template_hash, ready=False, age=900)
    plan = plan_cluster(d, with_pods(healthy(d), [slow_head, waiting]), NOW)
    assert deleted(plan) == [] and created(plan, "worker") == 0
    assert plan.requeue_after is None, "nothing to look again for while the head is not ready"
    # The head Ready for 100 s: the worker has 200 s left, and the plan looks again then.
    head = pod("demo-head-abcde", role="head", group="head", hash=d.head.template_hash, age=900, ready_since=100)
    plan = plan_cluster(d, with_pods(healthy(d), [head, waiting]), NOW)
    assert deleted(plan) == [] and plan.requeue_after == pytest.approx(200.0)
    # Ready for the join timeout plus the first back-off: replaced.
    head = pod("demo-head-abcde", role="head", group="head", hash=d.head.template_hash, age=900, ready_since=311)
    assert deleted(plan_cluster(d, with_pods(healthy(d), [head, waiting]), NOW)) == ["w"]


def _rolled(spec: dict[str, Any]) -> tuple[Any, Any]:
    """(desired with a new worker image, observed cluster running the old one)."""
    old = desired_for(ray(spec))
    new_spec = copy.deepcopy(spec)
    new_spec["image"] = "rayproject/ray:2.61.0"
    new_spec["head"] = {"spec": {"containers": [{"name": "ray-head", "image": "rayproject/ray:2.60.0"}]}}
    new = desired_for(ray(new_spec))
    observed = healthy(old)
    head = pod("demo-head-abcde", role="head", group="head", hash=new.head.template_hash, age=3600)
    return new, with_pods(observed, [head, *observed.pods[1:]])


def test_rolling_update_surges_one_pod_then_replaces_old_ones_as_new_ones_get_ready() -> None:
    new, observed = _rolled(static(3))
    h = new.workers[0].template_hash
    step1 = plan_cluster(new, observed, NOW)
    assert not step1.deletes and created(step1, "worker") == 1
    assert {a.reason for a in step1.creates} == {REASON_ROLLING_UPDATE}
    surge_pending = pod("n1", hash=h, phase="Pending", age=1)
    step2 = plan_cluster(new, with_pods(observed, [*observed.pods, surge_pending]), NOW)
    assert step2.actions == ()
    surge_ready = pod("n1", hash=h, age=1)
    step3 = plan_cluster(new, with_pods(observed, [*observed.pods, surge_ready]), NOW)
    # The old pod deleted now drains: with it, 3 + 1 pods exist, so the next new pod waits until it is gone.
    assert len(step3.deletes) == 1 and created(step3, "worker") == 0
    assert {a.reason for a in step3.actions} == {REASON_ROLLING_UPDATE}
    (victim,) = step3.deletes
    rest = [p for p in observed.pods if p["metadata"]["name"] != victim.name]
    gone = next(p for p in observed.pods if p["metadata"]["name"] == victim.name)
    draining = {**gone, "metadata": {**gone["metadata"], "deletionTimestamp": "2026-01-02T03:04:05Z"}}
    step4 = plan_cluster(new, with_pods(observed, [*rest, draining, surge_ready]), NOW)
    assert step4.actions == ()
    step5 = plan_cluster(new, with_pods(observed, [*rest, surge_ready]), NOW)
    assert not step5.deletes and created(step5, "worker") == 1


def test_rolling_update_never_deletes_the_last_ready_old_pod_first() -> None:
    new, observed = _rolled(static(1))
    h = new.workers[0].template_hash
    plan = plan_cluster(new, with_pods(observed, [*observed.pods, pod("n1", hash=h, ready=False, age=10)]), NOW)
    assert plan.actions == ()
    plan = plan_cluster(new, with_pods(observed, [*observed.pods, pod("n1", hash=h, age=10)]), NOW)
    assert deleted(plan) == ["demo-worker-00000"] and not plan.creates


def test_unready_old_pods_are_replaced_without_waiting() -> None:
    new, observed = _rolled(static(2))
    pods = [observed.pods[0], *(pod(p["metadata"]["name"], hash="old", ready=False, age=100)
                                for p in observed.pods[1:] if not is_launcher_pod(p))]
    plan = plan_cluster(new, with_pods(observed, pods), NOW)
    # Both go at once; the two deleted pods still exist while they terminate, so desired 2 + maxSurge 1 leaves room
    # for one new pod now.
    assert len([a for a in plan.deletes if a.group == "worker"]) == 2 and created(plan, "worker") == 1


def test_rolling_updates_go_one_group_at_a_time() -> None:
    def spec(image: str) -> dict[str, Any]:
        tpl = {"spec": {"containers": [{"name": "ray-worker", "image": image}]}}
        return {"autoScalingMode": "disabled", "workerGroups": [
            {"name": "a", "minWorkers": 1, "maxWorkers": 1, "template": tpl},
            {"name": "b", "minWorkers": 1, "maxWorkers": 1, "template": tpl}]}

    old = desired_for(ray(spec("rayproject/ray:2.60.0")))
    new = desired_for(ray(spec("rayproject/ray:2.61.0")))
    observed = healthy(old)
    plan = plan_cluster(new, observed, NOW)
    assert created(plan, "a") == 1 and created(plan, "b") == 0
    assert "b waits for the rolling update of a" in " ".join(plan.notes)


def test_head_is_recreated_only_when_its_own_template_changes() -> None:
    base = static(2)
    d = desired_for(ray(base))
    worker_changed = desired_for(ray({**base, "worker": {"metadata": {"labels": {"x": "y"}}}}))
    assert worker_changed.head.template_hash == d.head.template_hash
    head_changed = desired_for(ray({**base, "head": {"metadata": {"labels": {"x": "y"}}}}))
    plan = plan_cluster(head_changed, healthy(d), NOW)
    assert [(a.name, a.reason) for a in plan.deletes] == [("demo-head-abcde", REASON_HEAD_CHANGED)]
    assert not [a for a in plan.creates if a.group == "head"]
    assert created(plan, "worker") == 0
    # While the old head terminates nothing new starts; once it is gone the new head is created.
    terminating = pod("demo-head-abcde", role="head", group="head", hash=d.head.template_hash, terminating=True)
    pods = [terminating, *healthy(d).pods[1:]]
    plan = plan_cluster(head_changed, with_pods(healthy(d), pods), NOW)
    assert not plan.creates and not plan.deletes
    plan = plan_cluster(head_changed, with_pods(healthy(d), healthy(d).pods[1:]), NOW)
    assert [a.group for a in plan.creates] == ["head"]


def test_a_failed_head_is_replaced_at_once_after_back_off() -> None:
    d = desired_for(ray(static(1)))
    failed = pod("demo-head-abcde", role="head", group="head", hash=d.head.template_hash, phase="Failed",
                 finished_ago=60)
    plan = plan_cluster(d, with_pods(healthy(d), [failed, *healthy(d).pods[1:]]), NOW)
    assert [a.reason for a in plan.deletes] == [REASON_REPLACE_FAILED]
    assert [a.group for a in plan.creates] == ["head"]


def test_extra_heads_are_deleted_keeping_the_ready_current_one() -> None:
    d = desired_for(ray(static(0)))
    keep = pod("demo-head-aaaaa", role="head", group="head", hash=d.head.template_hash, age=100)
    extra = pod("demo-head-bbbbb", role="head", group="head", hash=d.head.template_hash, ready=False, age=10)
    plan = plan_cluster(d, with_pods(healthy(d), [extra, keep]), NOW)
    # (The launch of the healthy cluster's head, demo-head-abcde, is stale now: its pod goes too.)
    assert [(a.name, a.reason) for a in plan.deletes if a.kind == "Pod" and a.reason != REASON_STALE_LAUNCH] == [
        ("demo-head-bbbbb", REASON_DUPLICATE_HEAD)]


def test_paused_groups_are_left_alone() -> None:
    d = desired_for(ray(static(3)))
    observed = healthy(d, workers=1)
    assert created(plan_cluster(d, observed, NOW), "worker") == 2
    assert created(plan_cluster(d, observed, NOW, paused={"worker"}), "worker") == 0
    no_head = with_pods(observed, observed.pods[1:])
    assert not plan_cluster(d, no_head, NOW, paused={"head"}).creates


def test_pods_of_a_removed_group_are_deleted() -> None:
    d = desired_for(ray(static(1)))
    pods = [*healthy(d).pods, pod("demo-old-00000", group="old")]
    plan = plan_cluster(d, with_pods(healthy(d), pods), NOW)
    assert [(a.name, a.reason, a.group) for a in plan.deletes] == [("demo-old-00000", REASON_GROUP_REMOVED, "old")]


def test_config_change_patches_the_config_map_with_removed_keys_as_null() -> None:
    d = desired_for(ray(autoscaling(maximum=4)))
    observed = healthy(d)
    cm = copy.deepcopy(observed.config_maps[0])
    cm["data"]["stale.py"] = "x"
    changed = desired_for(ray(autoscaling(maximum=8)))
    plan = plan_cluster(changed, Observed(**{**observed.__dict__, "config_maps": [cm]}), NOW)
    patches = plan.patches
    assert [(p.kind, p.name) for p in patches] == [("ConfigMap", "demo-ray")]
    assert set(patches[0].patch["data"]) == {"autoscaler.yaml", "stale.py"} and patches[0].patch["data"][
        "stale.py"] is None
    # A new config is a new launch; the earlier launch's pod goes.
    assert [a.reason for a in plan.creates] == [REASON_LAUNCH]
    assert [(a.kind, a.reason) for a in plan.deletes] == [("Pod", REASON_STALE_LAUNCH)]
    # Scaling knobs do not roll pods.
    assert not [a for a in plan.actions if getattr(a, "kind", "") == "Pod"
                and a.reason not in (REASON_LAUNCH, REASON_STALE_LAUNCH)]


def test_drifted_labels_service_and_role_are_patched() -> None:
    d = desired_for(ray(autoscaling()))
    observed = healthy(d)
    svc = copy.deepcopy(observed.services[0])
    svc["metadata"]["labels"]["ray.k8s.io/cluster"] = "other"
    svc["spec"]["ports"] = svc["spec"]["ports"][:1]
    role = copy.deepcopy(observed.roles[0])
    role["rules"] = role["rules"][:1]
    plan = plan_cluster(d, Observed(**{**observed.__dict__, "services": [svc], "roles": [role]}), NOW)
    by_kind = {p.kind: p.patch for p in plan.patches}
    assert by_kind["Service"]["metadata"]["labels"] == {"ray.k8s.io/cluster": "demo"}
    assert by_kind["Service"]["spec"]["ports"] == d.service["spec"]["ports"]
    assert by_kind["Role"] == {"rules": d.autoscaler[1]["rules"]}


def test_server_defaulted_fields_are_not_drift() -> None:
    d = desired_for(ray(static(1)))
    observed = healthy(d)
    svc = copy.deepcopy(observed.services[0])
    svc["spec"].update(type="ClusterIP", sessionAffinity="None", clusterIPs=["None"], ipFamilies=["IPv4"])
    assert plan_cluster(d, Observed(**{**observed.__dict__, "services": [svc]}), NOW).actions == ()


def test_immutable_drift_recreates() -> None:
    d = desired_for(ray(static(1)))
    observed = healthy(d)
    svc = copy.deepcopy(observed.services[0])
    svc["spec"]["clusterIP"] = "10.0.0.9"
    plan = plan_cluster(d, Observed(**{**observed.__dict__, "services": [svc]}), NOW)
    assert [(a.kind, a.name) for a in plan.deletes] == [("Service", "demo-head")]


def test_autoscaler_rbac_goes_when_autoscaling_is_turned_off() -> None:
    on = desired_for(ray(autoscaling()))
    off = desired_for(ray(static(2)))
    observed = healthy(on)
    plan = plan_cluster(off, observed, NOW)
    gone = [(a.kind, a.reason) for a in plan.deletes if a.kind != "Pod" and a.kind != "Job"]
    assert gone == [("ServiceAccount", REASON_NOT_NEEDED), ("Role", REASON_NOT_NEEDED),
                    ("RoleBinding", REASON_NOT_NEEDED)]
    # The head changes (no sidecar), so it is recreated.
    assert [a.reason for a in plan.deletes if a.kind == "Pod"] == [REASON_HEAD_CHANGED]


def test_objects_of_another_owner_are_never_touched() -> None:
    d = desired_for(ray(static(0)))
    observed = healthy(d)
    foreign = pod("demo-worker-zzzzz", owner_uid="someone-else")
    svc = stored(d.service)
    svc["metadata"]["ownerReferences"][0]["uid"] = "someone-else"
    svc["spec"]["ports"] = []
    plan = plan_cluster(d, Observed(**{**observed.__dict__, "pods": [*observed.pods, foreign], "services": [svc]}),
                        NOW)
    assert plan.actions == ()
    assert "belongs to another owner" in " ".join(plan.notes)


def test_a_new_head_starts_a_new_launch() -> None:
    d = desired_for(ray(static(1)))
    observed = healthy(d)
    new_head = pod("demo-head-fffff", role="head", group="head", hash=d.head.template_hash, age=5)
    plan = plan_cluster(d, with_pods(observed, [new_head, *observed.pods[1:]]), NOW)
    assert [a.manifest["metadata"]["name"] for a in plan.creates] == [d.launcher_name("uid-demo-head-fffff")]
    assert [a.reason for a in plan.deletes] == [REASON_STALE_LAUNCH]


def _launch_plan(d: Any, attempts: list[dict[str, Any]], now: Any = NOW) -> Plan:
    observed = healthy(d)
    pods = [p for p in observed.pods if not is_launcher_pod(p)] + attempts
    return plan_cluster(d, Observed(**{**observed.__dict__, "pods": pods}), now)


def test_a_failed_launch_attempt_is_retried_after_a_back_off_up_to_the_backoff_limit() -> None:
    d = desired_for(ray(static(1)))
    head = healthy(d).pods[0]
    # Attempt 0 failed 7 s ago: the next one waits out the rest of the 10 s back-off.
    first = launched(d, head, phase="Failed", exit_code=1, age=12)  # it finished 5 s after its creation
    plan = _launch_plan(d, [first])
    assert not plan.creates and plan.requeue_after == pytest.approx(3)
    plan = _launch_plan(d, [launched(d, head, phase="Failed", exit_code=1, age=40)])
    assert [(a.kind, a.manifest["metadata"]["name"]) for a in plan.creates] == [("Pod", d.launcher_name(
        head["metadata"]["uid"], 1))]
    assert plan.creates[0].manifest["metadata"]["annotations"]["ray.k8s.io/launch-attempt"] == "1"
    # Attempts 0 and 1 failed long ago: the back-off doubles (20 s after the last failure), then attempt 2.
    two = [launched(d, head, attempt=0, phase="Failed", exit_code=1, age=300),
           launched(d, head, attempt=1, phase="Failed", exit_code=1, age=20)]
    assert not _launch_plan(d, two).creates
    two[1] = launched(d, head, attempt=1, phase="Failed", exit_code=1, age=30)
    assert [a.manifest["metadata"]["name"] for a in _launch_plan(d, two).creates] == [
        d.launcher_name(head["metadata"]["uid"], 2)]
    # Three failed (backoffLimit 2): the launch failed, nothing more is created and nothing is deleted.
    three = [launched(d, head, attempt=k, phase="Failed", exit_code=1, age=400 - k * 100) for k in range(3)]
    plan = _launch_plan(d, three)
    assert plan.actions == () and plan.requeue_after is None
    # A running attempt, or one that succeeded: nothing to do.
    assert _launch_plan(d, [launched(d, head, phase="Running")]).actions == ()
    assert _launch_plan(d, [first, launched(d, head, attempt=1)]).actions == ()


def refused(d: Any, head: dict[str, Any], *, reason: str = "OutOfcpu", age: float = 2) -> dict[str, Any]:
    """The first attempt as the kubelet leaves a pod its admission turned away: Failed, a reason and a message,
    no container status."""
    pod_ = launched(d, head, phase="Running", age=age)
    pod_["spec"]["nodeName"] = head["spec"]["nodeName"]
    pod_["status"] = {"phase": "Failed", "reason": reason, "startTime": ts(age),
                      "message": "Pod was rejected: Node didn't have enough resource: cpu, requested: 100, "
                                 "used: 3999000, capacity: 4000000"}
    return pod_


def test_the_first_launch_attempt_runs_on_the_heads_node_with_its_tolerations() -> None:
    tolerations = [{"key": "dedicated", "operator": "Equal", "value": "ray", "effect": "NoExecute"}]
    d = desired_for(ray(static(1, head={"spec": {"tolerations": tolerations,
                                                 "containers": [{"name": "ray-head"}]}})))
    head = healthy(d).pods[0]
    plan = _launch_plan(d, [])
    (create,) = plan.creates
    spec = create.manifest["spec"]
    assert spec["nodeName"] == head["spec"]["nodeName"] == "node-1"
    assert spec["tolerations"] == tolerations
    # A later attempt (after a failure of the first) is scheduled like any pod.
    plan = _launch_plan(d, [launched(d, head, phase="Failed", exit_code=1, age=40)])
    (create,) = plan.creates
    assert "nodeName" not in create.manifest["spec"] and "tolerations" not in create.manifest["spec"]


def test_a_refusal_by_the_heads_node_is_no_failure_the_next_attempt_follows_at_once_scheduled() -> None:
    d = desired_for(ray(static(1)))
    head = healthy(d).pods[0]
    plan = _launch_plan(d, [refused(d, head)])
    (create,) = plan.creates
    assert create.manifest["metadata"]["name"] == d.launcher_name(head["metadata"]["uid"], 1)
    assert "nodeName" not in create.manifest["spec"] and plan.requeue_after is None
    # The refusal does not count against the backoff limit: after it, three real failures still get no fourth try,
    # but two leave room for a third.
    two = [refused(d, head, age=500), *(launched(d, head, attempt=k, phase="Failed", exit_code=1, age=400 - k * 100)
                                        for k in (1, 2))]
    assert [a.manifest["metadata"]["name"] for a in _launch_plan(d, two).creates] == [
        d.launcher_name(head["metadata"]["uid"], 3)]
    three = [*two, launched(d, head, attempt=3, phase="Failed", exit_code=1, age=100)]
    assert _launch_plan(d, three).actions == ()
    # A later attempt that fails the same way is an ordinary failure (back-off), not a free retry.
    later = refused(d, head, age=3)
    later["metadata"]["annotations"]["ray.k8s.io/launch-attempt"] = "1"
    assert not _launch_plan(d, [refused(d, head, age=500), later]).creates


def test_no_launch_attempt_after_the_deadline_or_a_deadline_kill() -> None:
    d = desired_for(ray(static(1)), Options(launcher_deadline_seconds=120))
    head = healthy(d).pods[0]
    late = launched(d, head, phase="Failed", exit_code=1, age=200)
    assert _launch_plan(d, [late]).actions == ()
    killed = launched(d, head, phase="Failed", exit_code=137, age=60)
    killed["status"]["reason"] = "DeadlineExceeded"
    assert _launch_plan(d, [killed]).actions == ()


def test_an_attempt_deleted_by_someone_else_is_started_again_under_the_same_name() -> None:
    d = desired_for(ray(static(1)))
    head = healthy(d).pods[0]
    gone = launched(d, head, phase="Running")
    gone["metadata"]["deletionTimestamp"] = "2026-01-02T03:04:05Z"
    assert _launch_plan(d, [gone]).actions == ()  # it ends first
    # Vanished: the same attempt again, by name (a create from a stale cache meets the pod that exists).
    assert [a.manifest["metadata"]["name"] for a in _launch_plan(d, []).creates] == [
        d.launcher_name(head["metadata"]["uid"])]


def test_launcher_jobs_of_earlier_versions_go_and_the_launch_runs_as_a_pod() -> None:
    d = desired_for(ray(static(1)))
    observed = healthy(d)
    job = stored({"apiVersion": "batch/v1", "kind": "Job", "metadata": {
        "name": "demo-launcher-0badc0de", "namespace": "ray",
        "labels": {"ray.k8s.io/node-kind": "launcher", "ray.k8s.io/cluster": "demo",
                   "app.kubernetes.io/managed-by": "rayop"},
        "ownerReferences": [{"kind": "Ray", "uid": observed.pods[0]["metadata"]["ownerReferences"][0]["uid"],
                             "controller": True}]}})
    plan = plan_cluster(d, Observed(**{**observed.__dict__, "jobs": [job]}), NOW)
    assert [(a.kind, a.name, a.reason, a.propagation) for a in plan.actions] == [
        ("Job", "demo-launcher-0badc0de", REASON_STALE_LAUNCH, "Background")]


def test_options_steer_the_planner() -> None:
    d = desired_for(ray(static(1)), Options(replace_backoff_seconds=1, crash_loop_restarts=1))
    looping = pod("w", hash=d.workers[0].template_hash, ready=False, restarts=1, waiting="CrashLoopBackOff",
                  finished_ago=0)
    plan = plan_cluster(d, with_pods(healthy(d), [healthy(d).pods[0], looping]), NOW)
    assert plan.requeue_after == pytest.approx(1.0)


def test_a_running_worker_that_is_not_ready_gets_a_requeue_for_its_join_deadline() -> None:
    d = desired_for(ray(static(1)))
    young = pod("w", hash=d.workers[0].template_hash, ready=False, age=100, ready_since=100)
    plan = plan_cluster(d, with_pods(healthy(d), [healthy(d).pods[0], young]), NOW)
    assert plan.actions == ()
    assert plan.requeue_after == pytest.approx(200.0)  # 300 s join timeout, 100 s gone
    # At the deadline it counts as failed; its replacement waits for the first back-off (10 s) from then.
    due = pod("w", hash=d.workers[0].template_hash, ready=False, age=300, ready_since=300)
    plan = plan_cluster(d, with_pods(healthy(d), [healthy(d).pods[0], due]), NOW)
    assert plan.actions == () and plan.requeue_after == pytest.approx(10.0)
    ready = plan_cluster(d, healthy(d), NOW)
    assert ready.requeue_after is None


def test_scale_down_removes_idle_ready_workers_before_busy_ones() -> None:
    d = desired_for(ray(static(1)))
    h = d.workers[0].template_hash
    old_busy = pod("busy", hash=h, age=100, ip="10.0.0.7")
    new_idle = pod("idle", hash=h, age=50, ip="10.0.0.8")
    observed = with_pods(healthy(d), [healthy(d).pods[0], old_busy, new_idle])
    assert deleted(plan_cluster(d, observed, NOW)) == ["idle"]  # newest first without Ray's view
    newest_busy = pod("busy", hash=h, age=10, ip="10.0.0.7")
    observed = with_pods(healthy(d), [healthy(d).pods[0], newest_busy, new_idle])
    assert deleted(plan_cluster(d, observed, NOW)) == ["busy"]
    assert deleted(plan_cluster(d, observed, NOW, busy={"10.0.0.7"})) == ["idle"]
    # Pending and not-ready pods still go before any running ready one, busy or not.
    pending = pod("pending", hash=h, phase="Pending", age=5)
    observed = with_pods(healthy(d), [healthy(d).pods[0], newest_busy, new_idle, pending])
    assert deleted(plan_cluster(d, observed, NOW, busy={"10.0.0.7"})) == ["pending", "idle"]


def test_a_rolling_update_replaces_busy_workers_last() -> None:
    new, observed = _rolled(static(2))
    h = new.workers[0].template_hash
    others = [p for p in observed.pods if p["metadata"]["labels"].get("ray.k8s.io/node-kind") != "worker"]
    old = [p for p in observed.pods if p["metadata"]["labels"].get("ray.k8s.io/node-kind") == "worker"]
    old = [{**p, "status": {**p["status"], "podIP": f"10.0.1.{i}"}} for i, p in enumerate(old)]
    fresh = pod("n1", hash=h, age=1, ip="10.0.9.1")
    pods_now = [*others, *old, fresh]
    # Without Ray's view the newest old pod goes first; with it, the busy one (the newest) waits.
    assert [a.name for a in plan_cluster(new, with_pods(observed, pods_now), NOW).deletes] == [
        old[-1]["metadata"]["name"]]
    step = plan_cluster(new, with_pods(observed, pods_now), NOW, busy={old[-1]["status"]["podIP"]})
    assert [a.name for a in step.deletes] == [old[0]["metadata"]["name"]]


def test_suspending_deletes_workers_then_the_head_and_creates_nothing() -> None:
    d = desired_for(ray(static(2)))
    observed = healthy(d)
    step1 = plan_cluster(d, observed, NOW, suspended=True)
    assert not step1.creates and not step1.patches
    head = [p for p in observed.pods if p["metadata"]["labels"]["ray.k8s.io/node-kind"] == "head"]
    pod_deletes = sorted(a.name for a in step1.deletes if a.kind == "Pod")
    assert pod_deletes == sorted(p["metadata"]["name"] for p in observed.pods if p not in head)
    assert not [a for a in step1.deletes if a.kind != "Pod"]
    assert {a.reason for a in step1.deletes} == {"Suspended"}
    # The launcher pod goes with the workers.
    assert any(a.name.startswith("demo-launcher-") for a in step1.deletes)
    observed = Observed(**{**observed.__dict__, "pods": [p for p in observed.pods if not is_launcher_pod(p)]})
    # Workers still terminating: the head stays (their drains need its GCS); gone: the head goes.
    draining = [{**p, "metadata": {**p["metadata"], "deletionTimestamp": "2026-01-02T03:04:05Z"}}
                for p in observed.pods if p not in head]
    assert plan_cluster(d, with_pods(observed, [*head, *draining]), NOW, suspended=True).actions == ()
    step3 = plan_cluster(d, with_pods(observed, head), NOW, suspended=True)
    assert deleted(step3) == [head[0]["metadata"]["name"]] and not step3.creates
    # Nothing left: no launcher is created, the named children stay.
    empty = with_pods(observed, [])
    assert plan_cluster(d, empty, NOW, suspended=True).actions == ()


def test_rolling_update_bounds_per_group_and_terminating_pods_count_against_the_surge() -> None:
    spec = static(3)
    spec["rollingUpdate"] = {"maxSurge": 2, "maxUnavailable": 1}
    new, observed = _rolled(spec)
    step = plan_cluster(new, observed, NOW)
    # maxUnavailable 1: one ready old pod may go at once; maxSurge 2: up to 3 + 2 pods, the one deleted now
    # (terminating) included, so two new ones.
    assert len(step.deletes) == 1 and created(step, "worker") == 2
    (progress,) = step.progress
    assert (progress.updated, progress.total, progress.max_surge, progress.max_unavailable) == (0, 2, 2, 1)
    assert "0 of 2 pod(s) updated" in progress.describe()
    # The default bounds (1, 0) with a draining old pod still terminating: nothing more is created.
    new, observed = _rolled(static(2))
    h = new.workers[0].template_hash
    old = [p for p in observed.pods if p["metadata"]["labels"].get("ray.k8s.io/node-kind") == "worker"]
    draining = {**old[0], "metadata": {**old[0]["metadata"], "deletionTimestamp": "2026-01-02T03:04:05Z"}}
    fresh = pod("n1", hash=h, age=1)
    step = plan_cluster(new, with_pods(observed, [*[p for p in observed.pods if p not in old], draining, old[1],
                                                  fresh]), NOW)
    assert created(step, "worker") == 0  # 1 terminating + 2 live = desired 2 + surge 1


def test_rolling_update_bounds_must_let_it_progress() -> None:
    from rayop.api.convert import effective_cluster
    from rayop.api.model import ConfigurationError

    with pytest.raises(ConfigurationError):
        effective_cluster(ray({**static(2), "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 0}}))


def test_rolling_update_counts_the_pods_it_deletes_and_old_pods_draining_after_the_last_delete() -> None:
    """At most desired + maxSurge pods of a group exist at once during a rolling update, terminating ones included:
    the pods a step deletes count in that same step, and old pods still draining after the last one was deleted
    count until they are gone."""
    spec = static(2)
    spec["rollingUpdate"] = {"maxSurge": 0, "maxUnavailable": 1}
    new, observed = _rolled(spec)
    h = new.workers[0].template_hash
    head = [p for p in observed.pods if p["metadata"]["labels"].get("ray.k8s.io/node-kind") == "head"]
    old = [p for p in observed.pods if p["metadata"]["labels"].get("ray.k8s.io/node-kind") == "worker"]

    def terminating(p: dict[str, Any]) -> dict[str, Any]:
        return {**p, "metadata": {**p["metadata"], "deletionTimestamp": "2026-01-02T03:04:05Z"}}

    step = plan_cluster(new, observed, NOW)
    assert len(step.deletes) == 1 and created(step, "worker") == 0  # maxSurge 0: 2 pods, the deleted one included
    first = next(p for p in old if p["metadata"]["name"] == step.deletes[0].name)
    second = next(p for p in old if p is not first)
    assert created(plan_cluster(new, with_pods(observed, [*head, terminating(first), second]), NOW), "worker") == 0
    step = plan_cluster(new, with_pods(observed, [*head, second]), NOW)
    assert created(step, "worker") == 1
    fresh = pod("n1", hash=h, age=1)
    step = plan_cluster(new, with_pods(observed, [*head, second, fresh]), NOW)
    assert deleted(step) == [second["metadata"]["name"]] and created(step, "worker") == 0
    # The last old pod drains: no old pod is live any more, and it still counts.
    tail = plan_cluster(new, with_pods(observed, [*head, terminating(second), fresh]), NOW)
    assert created(tail, "worker") == 0
    done = plan_cluster(new, with_pods(observed, [*head, fresh]), NOW)
    assert created(done, "worker") == 1
