"""Fuzzing the pure pipeline: generated `Ray` objects (from the CRD's own schema, from the samples, and mutations of
both: wrong types, out-of-range numbers, odd strings, huge or invalid `configuration` YAML) go through convert ->
build -> plan -> status, as the reconciler runs them. The only exception allowed is the documented one,
`ConfigurationError`, which the status then reports. The plan is also run a second time against the pods it
created (Pending, then Running and Ready), as the next reconciles would see them.

`make test` runs RAYOP_FUZZ_EXAMPLES (default 300) examples; `make soak` runs 10,000.
"""

from __future__ import annotations

import copy
import json
import os
from collections import Counter
from datetime import datetime, timezone
from typing import Any

from hypothesis import HealthCheck, event, given, settings

from rayop.api.convert import effective_cluster
from rayop.api.model import ConfigurationError
from rayop.autoscaler import inpod_files
from rayop.build import build_children
from rayop.defaults import Options
from rayop.objects import Observed
from rayop.plan import Create, plan_cluster
from rayop.status import compute_status
from tests.support.raygen import rays

EXAMPLES = int(os.environ.get("RAYOP_FUZZ_EXAMPLES", "300"))
# `make test` draws the same examples every run (a CI run never fails on a new draw); `make soak` sets
# RAYOP_FUZZ_RANDOM=1 to explore new ones.
RANDOM = os.environ.get("RAYOP_FUZZ_RANDOM", "") not in ("", "0")
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)
PROGRAMS = inpod_files()
OPTIONS = Options()
OUTCOMES: Counter[str] = Counter()


def as_created(actions: tuple[Any, ...], uid: str, ready: bool) -> list[dict[str, Any]]:
    """The pods a plan's creates would make, as the cache would show them."""
    pods = []
    for i, action in enumerate(a for a in actions if isinstance(a, Create) and a.kind == "Pod"):
        pod = copy.deepcopy(dict(action.manifest))
        meta = pod.setdefault("metadata", {})
        meta["name"] = f"{meta.get('generateName') or 'pod-'}{i:05d}"
        meta["uid"] = f"pod-uid-{i}"
        meta["creationTimestamp"] = "2026-06-01T11:00:00Z"
        meta.setdefault("ownerReferences", [{"uid": uid, "controller": True, "kind": "Ray", "name": "x",
                                             "apiVersion": "ray.k8s.io/v1alpha1"}])
        if ready:
            pod["spec"]["nodeName"] = "node-0"
            pod["status"] = {"phase": "Running", "startTime": "2026-06-01T11:00:01Z",
                             "conditions": [{"type": "Ready", "status": "True",
                                             "lastTransitionTime": "2026-06-01T11:00:02Z"}]}
        else:
            pod["status"] = {"phase": "Pending"}
        pods.append(pod)
    return pods


def run_pipeline(ray: dict[str, Any]) -> str:
    """convert -> build -> plan -> status, then plan and status again over the pods the first plan made."""
    frozen = json.dumps(ray, sort_keys=True, default=str)
    try:
        conversion = effective_cluster(ray)
    except ConfigurationError as error:
        assert error.describe()
        status = compute_status(ray, error, Observed(), NOW, options=OPTIONS)
        json.dumps(status)
        assert {c["type"]: c["status"] for c in status["conditions"]}["ConfigurationValid"] == "False"
        return "invalid"
    desired = build_children(ray, conversion.cluster, OPTIONS, programs=PROGRAMS)
    plan = plan_cluster(desired, Observed(), NOW)
    json.dumps([getattr(a, "manifest", None) for a in plan.actions])
    status = compute_status(ray, conversion, Observed(), NOW, desired=desired, failures=[], options=OPTIONS)
    json.dumps(status)
    uid = str(ray["metadata"]["uid"])
    for ready in (False, True):
        observed = Observed(pods=as_created(plan.actions, uid, ready))
        again = plan_cluster(desired, observed, NOW)
        heads = [a for a in again.creates if a.group == "head"]
        assert not heads, "a second head planned while the first exists"
        json.dumps(compute_status(ray, conversion, observed, NOW, desired=desired, failures=[], options=OPTIONS))
    # The pipeline never changes its input (the reconciler hands it cached objects).
    assert json.dumps(ray, sort_keys=True, default=str) == frozen
    return "valid"


@settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=not RANDOM,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
@given(rays())
def test_generated_rays_raise_nothing_but_configuration_error(drawn: tuple[dict[str, Any], str]) -> None:
    ray, kind = drawn
    outcome = run_pipeline(ray)
    OUTCOMES[f"{kind} -> {outcome}"] += 1
    event(f"{kind.split(':')[0]} -> {outcome}")


def test_zz_report_outcomes() -> None:
    """Prints the mix the fuzz test drew (run with -s to see it; docs/reliability.md records a 10,000 run)."""
    total = sum(OUTCOMES.values())
    print(f"\nfuzzed {total} Ray objects:", dict(sorted(OUTCOMES.items())))
    if total:
        assert any(k.endswith("valid") and not k.endswith("invalid") for k in OUTCOMES), "nothing valid was drawn"
        assert any(k.endswith("invalid") for k in OUTCOMES), "nothing invalid was drawn"
