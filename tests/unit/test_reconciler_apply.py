"""The Ray reconciler's writes on an in-memory writer: every branch of `apply` (creates, deletes, patches, the
answers the API server may give to each), the expectations it records, the status write, and whole reconciles on
in-memory caches (a cache that lags behind the writes never doubles a pod)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import pytest

from rayop.api.types import HEAD_GROUP
from rayop.defaults import Options
from rayop.objects import LABEL_ROLE
from rayop.plan import Create, Delete, Patch, Plan
from rayop.reconciler import CHILDREN, Done, RayReconciler, report_messages
from rayop.runtime.kube import ApiError
from rayop.runtime.manager import ReconcileError
from rayop.runtime.store import ObjectKey, Store
from tests.support.fakes import FakeRecorder, FakeWriter, forbidden, invalid, namespace_terminating
from tests.support.operator import load_sample

NS = "ns"
KEY = ObjectKey(NS, "r")
RAY: dict[str, Any] = {"apiVersion": "ray.k8s.io/v1alpha1", "kind": "Ray",
                       "metadata": {"namespace": NS, "name": "r", "uid": "ray-uid", "generation": 1}}


def owned(uid: str = "ray-uid") -> list[dict[str, Any]]:
    return [{"apiVersion": "ray.k8s.io/v1alpha1", "kind": "Ray", "name": "r", "uid": uid, "controller": True}]


def pod(group: str, name: str | None = None) -> Create:
    meta: dict[str, Any] = {"name": name} if name else {"generateName": f"r-{group}-"}
    return Create({"apiVersion": "v1", "kind": "Pod", "metadata": {**meta, "ownerReferences": owned()}},
                  "Missing", "for the test", group=group)


def named(kind: str, name: str, group: str | None = None) -> Create:
    return Create({"kind": kind, "metadata": {"name": name, "ownerReferences": owned()}}, "Missing", group=group)


@dataclass
class Rig:
    """A reconciler on an in-memory writer and recorder and real (in-memory) caches that only change when told."""

    writer: FakeWriter = field(default_factory=FakeWriter)
    recorder: FakeRecorder = field(default_factory=FakeRecorder)
    rays: Store = field(default_factory=Store)
    children: dict[str, Store] = field(default_factory=lambda: {kind: Store() for kind in CHILDREN})
    options: Options = field(default_factory=Options)
    clock: list[float] = field(default_factory=lambda: [1000.0])  # the reconciler's monotonic clock, set by tests

    def __post_init__(self) -> None:
        self.reconciler = RayReconciler(writer=self.writer, recorder=self.recorder, rays=self.rays,
                                        children=self.children, options=self.options,
                                        busy_nodes=lambda host, port: None, monotonic=lambda: self.clock[0])

    def catch_up(self) -> None:
        """The caches show what the writer holds."""
        for (kind, _, _), obj in self.writer.objects.items():
            self.children[kind].upsert(copy.deepcopy(obj))


def make() -> tuple[RayReconciler, FakeWriter, FakeRecorder]:
    rig = Rig()
    return rig.reconciler, rig.writer, rig.recorder


def apply(reconciler: RayReconciler, *actions: Create | Delete | Patch) -> list[Any]:
    return list(reconciler.apply(RAY, KEY, Plan(actions=tuple(actions))))


# -- creates ----------------------------------------------------------------------------------------------------


def test_a_create_records_an_expectation_and_a_normal_event() -> None:
    reconciler, writer, recorder = make()
    assert apply(reconciler, pod("small")) == []
    [name] = writer.names("Pod")
    assert name.startswith("r-small-")
    assert reconciler.expectations.pending((KEY, "small")) == (1, 0)
    assert not reconciler.expectations.satisfied((KEY, "small"), [])
    assert reconciler.expectations.satisfied((KEY, "small"), [(name, "any", False)])
    [event] = recorder.events
    assert (event.type, event.reason, event.message, event.name) == ("Normal", "Created",
                                                                     f"Pod {name}: for the test", "r")


def test_one_normal_event_per_verb_names_every_child_of_the_reconcile() -> None:
    reconciler, writer, recorder = make()
    old = writer.put("Pod", NS, {"metadata": {"name": "r-small-old"}})["metadata"]["uid"]
    assert apply(reconciler, named("ConfigMap", "r-config"), named("Service", "r-head"), pod("small"), pod("small"),
                 Delete("Pod", "r-small-old", old, "ScaleDown", "one too many", group="small")) == []
    small = sorted(n for n in writer.names("Pod") if n != "r-small-old")
    assert [(e.type, e.reason) for e in recorder.events] == [("Normal", "Created"), ("Normal", "Deleted")]
    created, deleted = (e.message for e in recorder.events)
    assert created.startswith("ConfigMap r-config; Service r-head; Pod ")
    assert created.endswith(": for the test") and all(n in created for n in small)
    assert deleted == "Pod r-small-old: one too many"


def test_a_reconcile_that_wrote_nothing_records_no_normal_event() -> None:
    reconciler, writer, recorder = make()
    assert apply(reconciler) == []
    assert recorder.events == []


def test_a_report_of_many_children_is_shortened_to_the_limit_and_says_how_many() -> None:
    done = [Done("Created", "Pod", f"r-small-{i:05d}", "worker group small: 200 desired") for i in range(200)]
    [(reason, message)] = report_messages(done + [Done("Created", "Service", "r-head")], limit=200)
    assert reason == "Created" and len(message) <= 200
    assert message.startswith("Pod r-small-00000, ") and " and 195 more: " in message and message.endswith("; Service r-head")
    # Short enough: every name.
    [(_, whole)] = report_messages(done[:3])
    assert whole == "Pod r-small-00000, r-small-00001, r-small-00002: worker group small: 200 desired"


def test_a_child_outside_the_pod_groups_has_no_expectation() -> None:
    reconciler, writer, recorder = make()
    assert apply(reconciler, named("ConfigMap", "r-config")) == []
    assert writer.names("ConfigMap") == ["r-config"]
    assert reconciler.expectations.pending((KEY, None)) == (0, 0)
    assert [(e.reason, e.message) for e in recorder.events] == [("Created", "ConfigMap r-config")]


@pytest.mark.parametrize("error", [forbidden("pods is forbidden: exceeded quota"), invalid("spec.containers: Required")])
def test_a_refused_create_is_a_failure_with_a_warning_and_no_expectation(error: ApiError) -> None:
    reconciler, writer, recorder = make()
    writer.refuse("create", "Pod", error)
    [failure] = apply(reconciler, pod("small"))
    assert (failure.verb, failure.kind, failure.name, failure.message, failure.reason) == (
        "create", "Pod", "r-small-", error.message, error.reason)
    assert writer.names("Pod") == []
    assert reconciler.expectations.pending((KEY, "small")) == (0, 0)
    [event] = recorder.events
    assert (event.type, event.reason, event.message) == ("Warning", "FailedCreatePod", f"r-small-: {error.message}")


def test_the_generated_name_in_a_refusal_is_left_out_so_repeats_aggregate() -> None:
    reconciler, writer, recorder = make()
    writer.refuse("create", "Pod", ApiError(403, "Forbidden", 'pods "r-small-x7k2p" is forbidden: quota',
                                            {"details": {"name": "r-small-x7k2p", "kind": "pods"}}))
    [failure] = apply(reconciler, pod("small"))
    assert failure.message == 'pods "r-small-*" is forbidden: quota'
    assert recorder.events[0].message == 'r-small-: pods "r-small-*" is forbidden: quota'


def test_creates_of_a_group_stop_at_its_first_refusal_and_nothing_else_does() -> None:
    reconciler, writer, recorder = make()
    writer.refuse("create", "Pod", forbidden(), times=1)
    writer.refuse("create", "Service", forbidden())
    failures = apply(reconciler, pod("small"), pod("small"), pod("big"), named("Service", "r-head"),
                     named("ConfigMap", "r-config"), named("Service", "r-dashboard"), pod("small"))
    # The group "small" was tried once; "big" and the ungrouped children after the refusals still were.
    assert writer.calls == [("create", "Pod", "r-small-"), ("create", "Pod", "r-big-"),
                            ("create", "Service", "r-head"), ("create", "ConfigMap", "r-config"),
                            ("create", "Service", "r-dashboard")]
    assert [(f.kind, f.name) for f in failures] == [("Pod", "r-small-"), ("Service", "r-head"),
                                                  ("Service", "r-dashboard")]
    assert reconciler.expectations.pending((KEY, "small")) == (0, 0)
    assert reconciler.expectations.pending((KEY, "big")) == (1, 0)
    assert [e.type for e in recorder.events].count("Warning") == 3


def test_in_a_namespace_being_deleted_creates_stop_without_warnings() -> None:
    reconciler, writer, recorder = make()
    writer.refuse("create", "Pod", namespace_terminating(NS))
    writer.refuse("create", "ConfigMap", namespace_terminating(NS))
    failures = apply(reconciler, named("ConfigMap", "r-config"), pod("small"), pod("big"), named("Service", "r-head"))
    # The first refusal says the namespace is going: nothing else is tried, and no Warning Event is recorded.
    assert writer.calls == [("create", "ConfigMap", "r-config")]
    assert [(f.kind, f.reason) for f in failures] == [("ConfigMap", "NamespaceTerminating")]
    assert recorder.events == []
    # A plain 403 is still a failure with its Warning.
    assert not forbidden().namespace_terminating and namespace_terminating().namespace_terminating


def test_already_exists_counts_as_created() -> None:
    reconciler, writer, recorder = make()
    writer.put("Pod", NS, {"metadata": {"name": "r-head", "ownerReferences": owned()}})
    writer.put("ConfigMap", NS, {"metadata": {"name": "r-config", "ownerReferences": owned()}})
    assert apply(reconciler, pod(HEAD_GROUP, "r-head"), named("ConfigMap", "r-config")) == []
    assert recorder.events == []
    # No Service: nothing is read back.
    assert [c[0] for c in writer.calls] == ["create", "create"]


def test_an_existing_service_of_this_ray_is_fine() -> None:
    reconciler, writer, recorder = make()
    writer.put("Service", NS, {"metadata": {"name": "r-head", "ownerReferences": owned()}})
    assert apply(reconciler, named("Service", "r-head")) == []
    assert writer.calls == [("create", "Service", "r-head"), ("get", "Service", "r-head")]
    assert recorder.events == []


@pytest.mark.parametrize("owners", [[], owned("another-uid"),
                                    [{**owned()[0], "controller": False}]], ids=["none", "other", "not-controller"])
def test_an_existing_service_of_someone_else_is_never_adopted(owners: list[dict[str, Any]]) -> None:
    reconciler, writer, recorder = make()
    theirs = writer.put("Service", NS, {"metadata": {"name": "my-svc", "ownerReferences": owners}})
    before = copy.deepcopy(theirs)
    [failure] = apply(reconciler, named("Service", "my-svc"))
    assert (failure.verb, failure.kind, failure.name, failure.reason) == ("create", "Service", "my-svc",
                                                                          "AlreadyExists")
    assert "does not belong to this Ray" in failure.message
    assert writer.objects[("Service", NS, "my-svc")] == before
    assert [(e.type, e.reason) for e in recorder.events] == [("Warning", "FailedCreateService")]


def test_a_service_that_cannot_be_read_back_counts_as_created() -> None:
    reconciler, writer, recorder = make()
    writer.put("Service", NS, {"metadata": {"name": "my-svc"}})
    writer.refuse("get", "Service", forbidden())
    assert apply(reconciler, named("Service", "my-svc")) == []
    assert recorder.events == []


def test_a_grouped_child_of_a_taken_name_is_not_read_back() -> None:
    reconciler, writer, _ = make()
    writer.put("Service", NS, {"metadata": {"name": "r-x"}})
    assert apply(reconciler, named("Service", "r-x", group="small")) == []
    assert writer.calls == [("create", "Service", "r-x")]


# -- deletes ----------------------------------------------------------------------------------------------------


def test_a_delete_carries_the_uid_precondition_and_records_an_expectation() -> None:
    reconciler, writer, recorder = make()
    victim = writer.put("Pod", NS, {"metadata": {"name": "r-small-1"}})
    uid = victim["metadata"]["uid"]
    assert apply(reconciler, Delete("Pod", "r-small-1", uid, "ScaleDown", "one too many", group="small")) == []
    assert writer.deletes == [(("Pod", NS, "r-small-1"), {"preconditions": {"uid": uid}})]
    assert writer.names("Pod") == []
    assert reconciler.expectations.pending((KEY, "small")) == (0, 1)
    assert not reconciler.expectations.satisfied((KEY, "small"), [("r-small-1", uid, False)])
    assert reconciler.expectations.satisfied((KEY, "small"), [])
    assert [(e.type, e.reason, e.message) for e in recorder.events] == [
        ("Normal", "Deleted", "Pod r-small-1: one too many")]


def test_a_delete_with_propagation_says_so() -> None:
    reconciler, writer, _ = make()
    job = writer.put("Job", NS, {"metadata": {"name": "r-launcher"}})
    assert apply(reconciler, Delete("Job", "r-launcher", job["metadata"]["uid"], "Outdated",
                                    propagation="Background")) == []
    assert writer.deletes[0][1] == {"preconditions": {"uid": job["metadata"]["uid"]}, "propagationPolicy": "Background"}


def test_a_newer_object_of_the_same_name_is_never_deleted() -> None:
    reconciler, writer, recorder = make()
    writer.put("Pod", NS, {"metadata": {"name": "r-head", "uid": "newer"}})
    assert apply(reconciler, Delete("Pod", "r-head", "older", "Failed", group=HEAD_GROUP)) == []
    assert writer.names("Pod") == ["r-head"]
    assert recorder.events == []


def test_a_delete_answered_not_found_counts_as_done() -> None:
    reconciler, writer, recorder = make()
    assert apply(reconciler, Delete("Pod", "r-small-1", "gone-uid", "ScaleDown", group="small")) == []
    assert writer.calls == [("delete", "Pod", "r-small-1")]
    assert recorder.events == []
    # The cache will not show it: its expectation is met.
    assert reconciler.expectations.satisfied((KEY, "small"), [])


def test_a_refused_delete_is_a_failure_and_forgets_its_expectation_and_the_rest_goes_on() -> None:
    reconciler, writer, recorder = make()
    a = writer.put("Pod", NS, {"metadata": {"name": "r-small-1"}})["metadata"]["uid"]
    b = writer.put("Pod", NS, {"metadata": {"name": "r-small-2"}})["metadata"]["uid"]
    writer.refuse("delete", "Pod", forbidden("pods is forbidden"), name="r-small-1")
    failures = apply(reconciler, Delete("Pod", "r-small-1", a, "ScaleDown", group="small"),
                     Delete("Pod", "r-small-2", b, "ScaleDown", group="small"))
    assert [(f.verb, f.name, f.message, f.reason) for f in failures] == [
        ("delete", "r-small-1", "pods is forbidden", "Forbidden")]
    assert writer.names("Pod") == ["r-small-1"]
    assert reconciler.expectations.pending((KEY, "small")) == (0, 1)
    assert reconciler.expectations.satisfied((KEY, "small"), [("r-small-1", a, False)])
    assert [(e.type, e.reason) for e in recorder.events] == [("Warning", "FailedDeletePod"), ("Normal", "Deleted")]


# -- patches ----------------------------------------------------------------------------------------------------


def test_a_patch_is_a_merge_patch_with_a_normal_event() -> None:
    reconciler, writer, recorder = make()
    writer.put("ConfigMap", NS, {"metadata": {"name": "r-config"}, "data": {"a": "1", "b": "2"}})
    assert apply(reconciler, Patch("ConfigMap", "r-config", {"data": {"a": "3", "b": None}}, "Outdated",
                                   "new config")) == []
    assert writer.objects[("ConfigMap", NS, "r-config")]["data"] == {"a": "3"}
    assert [(e.type, e.reason, e.message) for e in recorder.events] == [
        ("Normal", "Updated", "ConfigMap r-config: new config")]


def test_a_patch_of_a_missing_object_waits_for_the_next_reconcile() -> None:
    reconciler, writer, recorder = make()
    assert apply(reconciler, Patch("Service", "r-head", {"spec": {}}, "Outdated")) == []
    assert recorder.events == []


def test_a_refused_patch_is_a_failure() -> None:
    reconciler, writer, recorder = make()
    writer.put("Service", NS, {"metadata": {"name": "r-head"}})
    writer.refuse("patch", "Service", invalid("spec.ports: Invalid"))
    [failure] = apply(reconciler, Patch("Service", "r-head", {"spec": {"ports": []}}, "Outdated"),
                      named("ConfigMap", "r-config"))
    assert (failure.verb, failure.kind, failure.name, failure.reason) == ("patch", "Service", "r-head", "Invalid")
    assert writer.names("ConfigMap") == ["r-config"]
    assert [(e.type, e.reason) for e in recorder.events] == [("Warning", "FailedUpdateService"),
                                                             ("Normal", "Created")]


# -- status -----------------------------------------------------------------------------------------------------


def test_the_status_is_written_only_when_it_changes() -> None:
    rig = Rig(options=Options(status_batch_seconds=0))
    ray = {**RAY, "status": {"phase": "Running", "workers": 2}}
    assert rig.reconciler.write_status(ray, {"phase": "Running", "workers": 2}) is None
    assert rig.writer.statuses == {}
    assert rig.reconciler.write_status(ray, {"phase": "Running"}) is None
    assert rig.writer.statuses == {(NS, "r"): [{"workers": None}]}


def cond(type_: str, status: str, reason: str = "R", message: str = "") -> dict[str, Any]:
    return {"type": type_, "status": status, "reason": reason, "message": message}


PENDING = {"observedGeneration": 1, "head": {"replicas": 1},
           "conditions": [cond("HeadReady", "False", "HeadPodPending"), cond("Ready", "False", "HeadPodPending")]}


def test_a_progress_only_change_is_held_back_until_the_window_passes() -> None:
    rig = Rig()  # the default window, 2 s
    ray = {**RAY, "status": PENDING}
    progress = {**PENDING, "head": {"replicas": 1, "readyReplicas": 0},
                "conditions": [cond("HeadReady", "False", "HeadPodNotReady"), cond("Ready", "False", "HeadPodNotReady")]}
    assert rig.reconciler.write_status(ray, progress) == 2.0
    rig.clock[0] += 1.5
    assert rig.reconciler.write_status(ray, progress) == pytest.approx(0.5)  # counted from the first one held
    assert rig.writer.statuses == {}
    rig.clock[0] += 0.5
    assert rig.reconciler.write_status(ray, progress) is None
    [patch] = rig.writer.statuses[(NS, "r")]
    assert patch["head"] == {"readyReplicas": 0}


@pytest.mark.parametrize("change", [
    {"conditions": [cond("HeadReady", "True", "HeadPodReady"), cond("Ready", "True", "AllPodsReady")]},
    {"observedGeneration": 2},
    {"conditions": [cond("HeadReady", "False", "HeadPodUnschedulable", "0/2 nodes"), cond("Ready", "False", "X")]},
    {"conditions": [*PENDING["conditions"], cond("ReplicaFailure", "True", "Forbidden")]},
], ids=["ready-flips", "a-new-generation", "a-problem-raised", "a-new-condition"])
def test_a_change_a_watcher_acts_on_is_written_at_once_and_carries_what_was_held(change: dict[str, Any]) -> None:
    rig = Rig()
    ray = {**RAY, "status": PENDING}
    held = {**PENDING, "head": {"replicas": 1, "readyReplicas": 0}}
    assert rig.reconciler.write_status(ray, held) is not None
    assert rig.reconciler.write_status(ray, {**held, **change}) is None
    [patch] = rig.writer.statuses[(NS, "r")]
    assert patch["head"] == {"readyReplicas": 0}
    # Nothing is held any more: the next progress change starts a new window.
    assert rig.reconciler.write_status({**RAY, "status": {**held, **change}}, {**held, **change, "x": 1}) == 2.0


HEAD_UP = {"observedGeneration": 1, "conditions": [
    cond("HeadReady", "True", "HeadPodReady"), cond("WorkersReady", "False", "WorkersNotReady"),
    cond("Ready", "False", "WorkersNotReady"), cond("SuccessfulLaunch", "Unknown", "Launching")]}


def test_a_step_towards_ready_turning_true_is_progress_turning_false_or_another_condition_is_not() -> None:
    rig = Rig()
    ray = {**RAY, "status": PENDING}
    # The head became Ready while Ready stays False (its workers come next): held, like replica counts.
    assert rig.reconciler.write_status(ray, {**PENDING, "conditions": [
        cond("HeadReady", "True", "HeadPodReady"), cond("Ready", "False", "WorkersNotReady")]}) == 2.0
    assert rig.writer.statuses == {}
    # A step going back to False, or a condition outside the steps changing, is written at once.
    for change in ([cond("HeadReady", "False", "HeadPodNotReady"), *HEAD_UP["conditions"][1:]],
                   [*HEAD_UP["conditions"][:3], cond("SuccessfulLaunch", "True", "Launched")]):
        rig = Rig()
        assert rig.reconciler.write_status({**RAY, "status": HEAD_UP}, {**HEAD_UP, "conditions": change}) is None
        assert len(rig.writer.statuses[(NS, "r")]) == 1


LAUNCHING = {**PENDING, "launcher": {"replicas": 1, "readyReplicas": 0}}
LAUNCHER_READY = {**PENDING, "launcher": {"replicas": 1, "readyReplicas": 1}}


def test_a_change_undone_before_the_cache_shows_its_write_is_written_back() -> None:
    """The launcher pod went Ready (written), then finished before the Ray's watch event brought that write: the
    cache still holds the status from before, which equals the new one. The server holds the written status, so
    the change back is written too (without the memo of the write nothing was, and the status said 1 ready for
    minutes: a Ray's own status events start no reconcile)."""
    rig = Rig(options=Options(status_batch_seconds=0))
    cached = {**RAY, "metadata": {**RAY["metadata"], "resourceVersion": "7"}, "status": LAUNCHING}
    assert rig.reconciler.write_status(cached, LAUNCHER_READY) is None
    assert rig.reconciler.write_status(cached, LAUNCHING) is None
    assert rig.writer.statuses[(NS, "r")] == [{"launcher": {"readyReplicas": 1}}, {"launcher": {"readyReplicas": 0}}]
    # Written once: the same status again, with the cache still behind, is no write.
    assert rig.reconciler.write_status(cached, LAUNCHING) is None
    assert len(rig.writer.statuses[(NS, "r")]) == 2


def test_the_cache_is_the_base_again_once_it_shows_the_write_or_a_later_change() -> None:
    rig = Rig(options=Options(status_batch_seconds=0))
    meta = {**RAY["metadata"], "resourceVersion": "7"}
    assert rig.reconciler.write_status({**RAY, "metadata": meta, "status": LAUNCHING}, LAUNCHER_READY) is None
    assert len(rig.reconciler._written) == 1
    # The cache shows some later version of the Ray (here: with the status as written): nothing to write, the
    # memo is gone.
    later = {**RAY, "metadata": {**meta, "resourceVersion": "9"}, "status": LAUNCHER_READY}
    assert rig.reconciler.write_status(later, LAUNCHER_READY) is None
    assert len(rig.writer.statuses[(NS, "r")]) == 1 and len(rig.reconciler._written) == 0
    # A write the server refused leaves no memo: the cache stays the base.
    rig.writer.refuse("patch_status", "Ray", forbidden(), times=1)
    with pytest.raises(ApiError):
        rig.reconciler.write_status(later, LAUNCHING)
    assert len(rig.reconciler._written) == 0


def test_the_memo_of_a_write_goes_with_the_ray() -> None:
    rig, key = reconciling()
    rig.reconciler(key)
    assert len(rig.reconciler._written) == 1
    rig.rays.delete(key)
    rig.reconciler(key)
    assert len(rig.reconciler._written) == 0


def test_the_first_status_of_a_ray_is_written_at_once() -> None:
    rig = Rig()
    assert rig.reconciler.write_status(RAY, PENDING) is None
    assert rig.writer.statuses[(NS, "r")] == [PENDING]


def test_a_status_write_for_a_ray_that_is_gone_is_dropped_other_refusals_raise() -> None:
    reconciler, writer, _ = make()
    writer.refuse("patch_status", "Ray", ApiError(404, "NotFound", "gone"), times=1)
    reconciler.write_status(RAY, {"phase": "Running"})
    writer.refuse("patch_status", "Ray", forbidden())
    with pytest.raises(ApiError):
        reconciler.write_status(RAY, {"phase": "Running"})


# -- whole reconciles on in-memory caches -------------------------------------------------------------------------


def reconciling(sample: str = "static.yaml") -> tuple[Rig, ObjectKey]:
    rig = Rig()
    ray = load_sample(sample, NS)
    ray["metadata"].update(uid="ray-uid", generation=1, resourceVersion="1")
    rig.rays.upsert(ray)
    return rig, ObjectKey(NS, ray["metadata"]["name"])


def head_pods(writer: FakeWriter) -> list[str]:
    return [name for (kind, _, name), obj in writer.objects.items()
            if kind == "Pod" and obj["metadata"]["labels"].get(LABEL_ROLE) == "head"]


def test_a_cache_behind_the_writes_never_doubles_the_head() -> None:
    rig, key = reconciling()
    rig.reconciler(key)
    assert len(head_pods(rig.writer)) == 1
    assert rig.reconciler.expectations.pending((key, HEAD_GROUP)) == (1, 0)
    for _ in range(3):
        rig.reconciler(key)  # the cache still shows no child: the head group waits
    assert len(head_pods(rig.writer)) == 1
    rig.catch_up()
    rig.reconciler(key)
    assert len(head_pods(rig.writer)) == 1
    assert rig.reconciler.expectations.pending((key, HEAD_GROUP)) == (0, 0)


def test_refused_writes_are_retried_with_the_status_saying_why() -> None:
    rig, key = reconciling()
    rig.writer.refuse("create", "Pod", forbidden("pods is forbidden: exceeded quota"))
    with pytest.raises(ReconcileError, match="create Pod .*exceeded quota"):
        rig.reconciler(key)
    status = rig.writer.statuses[(NS, key.name)][-1]
    [failure] = [c for c in status["conditions"] if c["type"] == "ReplicaFailure"]
    assert failure["status"] == "True" and "exceeded quota" in failure["message"]
    assert "FailedCreatePod" in rig.recorder.reasons()
    assert head_pods(rig.writer) == []


def test_a_ray_in_a_namespace_being_deleted_is_not_retried() -> None:
    rig, key = reconciling()
    for kind in ("Pod", "ConfigMap", "Service", "ServiceAccount", "Role", "RoleBinding", "Job"):
        rig.writer.refuse("create", kind, namespace_terminating(NS))
    assert rig.reconciler(key) is None  # no ReconcileError: a retry could only be refused again
    # One create tried, then nothing: no status write, no Event (both would be useless; Events are refused too).
    assert [c[0] for c in rig.writer.calls] == ["create"]
    assert not rig.recorder.events


def test_a_deleted_ray_forgets_its_expectations() -> None:
    rig, key = reconciling()
    rig.reconciler(key)
    assert rig.reconciler.expectations.pending((key, HEAD_GROUP)) == (1, 0)
    rig.rays.delete(key)
    assert rig.reconciler(key) is None
    assert rig.reconciler.expectations.pending((key, HEAD_GROUP)) == (0, 0)


def test_a_ray_re_created_under_the_same_name_does_not_wait_for_the_old_ones_expectations() -> None:
    # The old Ray created its head and was deleted (the garbage collector removed its children) and re-created
    # under its name before the reconciler saw it gone: the head pod it expected never shows among the new Ray's.
    rig, key = reconciling()
    rig.reconciler(key)
    assert rig.reconciler.expectations.pending((key, HEAD_GROUP)) == (1, 0)
    rig.writer.objects.clear()
    ray = copy.deepcopy(rig.rays.get(key))
    assert ray is not None
    ray["metadata"].update(uid="new-uid", resourceVersion="2")
    rig.rays.upsert(ray)
    rig.reconciler(key)
    owners = [ref["uid"] for (kind, _, _), obj in rig.writer.objects.items() if kind == "Pod"
              and obj["metadata"]["labels"].get(LABEL_ROLE) == "head" for ref in obj["metadata"]["ownerReferences"]]
    assert owners == ["new-uid"]  # created at once, not once the old expectations expire (5 minutes)
    assert rig.reconciler.expectations.pending((key, HEAD_GROUP)) == (1, 0)
