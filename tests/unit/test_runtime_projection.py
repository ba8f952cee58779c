"""Projections: objects decoded with only the keys a controller reads, and the operator's pod projection."""

from __future__ import annotations

import copy
import json
from typing import Any, TypedDict

import pytest

from rayop.objects import Observed
from rayop.plan import plan_cluster
from rayop.reconciler import POD_PROJECTION, POD_TRIM
from rayop.runtime.kube import ApiError, _decode_event, dumps, loads
from rayop.runtime.projection import Projection
from rayop.status import compute_status
from rayop.api.convert import effective_cluster
from tests.unit.test_plan_fixtures import NOW, desired_for, healthy, launched, pod, ray, static


class _Meta(TypedDict, total=False):
    name: Any
    labels: Any


class _Thing(TypedDict, total=False):
    metadata: _Meta
    items: list[_Meta]
    status: Any


THING = Projection(_Thing, "Thing")


def test_only_declared_keys_are_decoded_with_their_values_as_plain_json() -> None:
    raw = dumps({"metadata": {"name": "a", "labels": {"k": "v"}, "managedFields": [{"big": "x" * 1000}]},
                 "spec": {"huge": list(range(100))}, "status": {"phase": "Running", "nested": {"deep": [1, None]}},
                 "items": [{"name": "i", "other": 1}]})
    assert THING.object(raw) == {"metadata": {"name": "a", "labels": {"k": "v"}},
                                 "status": {"phase": "Running", "nested": {"deep": [1, None]}},
                                 "items": [{"name": "i"}]}
    assert THING.misfits == 0


@pytest.mark.parametrize("body", [{"metadata": "not an object"}, {"items": {"a": 1}}, {"items": [1, 2]}],
                         ids=["scalar-for-object", "object-for-list", "list-of-scalars"])
def test_a_shape_that_does_not_fit_is_decoded_in_full(body: dict[str, Any]) -> None:
    p = Projection(_Thing)
    assert p.object(dumps({**body, "extra": True})) == {**body, "extra": True}
    assert p.misfits == 1


def test_watch_events_and_list_pages() -> None:
    line = dumps({"type": "MODIFIED", "object": {"metadata": {"name": "a", "uid": "u"}, "spec": {"x": 1}}})
    assert THING.event(line) == {"type": "MODIFIED", "object": {"metadata": {"name": "a"}}}
    page = THING.page(dumps({"kind": "ThingList", "apiVersion": "v1", "metadata": {"resourceVersion": "7"},
                             "items": [{"metadata": {"name": "a", "uid": "u"}}]}))
    assert page == {"kind": "ThingList", "apiVersion": "v1", "metadata": {"resourceVersion": "7"},
                    "items": [{"metadata": {"name": "a"}}]}
    # An ERROR event's Status is decoded in full, so the client raises with its code, reason and message.
    error = dumps({"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired",
                                               "message": "too old resource version"}})
    with pytest.raises(ApiError) as e:
        _decode_event(error, THING.event)
    assert (e.value.status, e.value.reason, e.value.message) == (410, "Expired", "too old resource version")


def _as_served(obj: dict[str, Any]) -> bytes:
    """A cached pod as the API server would send it: managedFields and a long spec besides."""
    served = copy.deepcopy(obj)
    served["metadata"]["managedFields"] = [{"manager": "rayop", "fieldsV1": {"f:spec": {"f:x": {}}}}]
    served["spec"]["volumes"] = [{"name": "v", "emptyDir": {}}]
    for c in served["spec"].get("containers") or []:
        c["args"] = ["x" * 4000]
        c["env"] = [{"name": "A", "value": "1"}]
    return dumps({"type": "MODIFIED", "object": served})


def test_the_operators_plan_and_status_read_nothing_the_pod_projection_drops() -> None:
    # Pods in many states (failed, crash-looping, terminating, unscheduled, launchers): plan and status from the
    # projected pods equal those from the pods decoded in full and trimmed as before.
    obj = ray(static(3))
    d = desired_for(obj)
    observed = healthy(d)
    head = observed.pods[0]
    extra = [pod("demo-worker-bad00", group="worker", hash=d.workers[0].template_hash, phase="Failed"),
             pod("demo-worker-loop0", group="worker", hash=d.workers[0].template_hash, waiting="CrashLoopBackOff",
                 restarts=7),
             pod("demo-worker-gone0", group="worker", hash=d.workers[0].template_hash, terminating=True),
             pod("demo-worker-pend0", group="worker", hash="old", phase="Pending", node=None, ip=None),
             launched(d, head, attempt=1, phase="Failed", exit_code=1, message='{"reason": "HeadUnreachable"}')]
    pods = [*observed.pods, *extra]
    full = [POD_TRIM(loads(_as_served(p))["object"]) for p in pods]
    projected = [POD_TRIM(POD_PROJECTION.event(_as_served(p))["object"]) for p in pods]
    assert POD_PROJECTION.misfits == 0
    assert all(len(json.dumps(a)) <= len(json.dumps(b)) for a, b in zip(projected, full))

    def outcome(items: list[dict[str, Any]]) -> tuple[Any, Any]:
        seen = Observed(**{**observed.__dict__, "pods": items})
        plan = plan_cluster(d, seen, NOW)
        status = compute_status(obj, effective_cluster(obj), seen, NOW, desired=d)
        return [(type(a).__name__, a.kind, getattr(a, "name", ""), a.reason,
                 (getattr(a, "manifest", None) or {}).get("spec", {}).get("nodeName")) for a in plan.actions], status

    assert outcome(projected) == outcome(full)
    # Without launchers: the launch starts on the head's Node, read from the cached head pod.
    no_launch = outcome([p for p in projected if "launcher" not in p["metadata"]["name"]])
    assert no_launch == outcome([p for p in full if "launcher" not in p["metadata"]["name"]])
    assert ("Create", "Pod", "", "Launch", "node-1") in no_launch[0]
