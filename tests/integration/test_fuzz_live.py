"""Fuzzing a live operator: generated `Ray` objects (tests/support/raygen.py: the CRD's schema plus mutations) sent to
the real API server with the operator running.

- Objects the operator itself would judge invalid (its conversion raises ConfigurationError) are written, one after
  another, as the spec of an `anchor` Ray that runs pods created under a valid spec: admission rejects them or
  accepts them; either way none of the anchor's pods may be deleted or replaced. At the end the valid spec comes
  back and the anchor is Ready on the very same pods.
- The others are created as new `Ray` objects: admission accepts or rejects them. Objects that would ask the two
  local Nodes for more than a handful of pods are left out (counted): this is about input, not load.
- The operator never dies (no exit, no panic, no Traceback), and once settled (after SETTLE seconds) the
  reconciles per object per minute stay bounded, counted from the operator's log over one minute.

RAYOP_LIVE_FUZZ_EXAMPLES objects (default 40; docs/reliability.md records a run of 300).
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import urllib3
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from rayop.api.convert import effective_cluster
from rayop.api.model import ConfigurationError
from rayop.objects import LABEL_CLUSTER, LABEL_ROLE
from rayop.runtime.kube import ApiError, KubeClient
from tests.support.cluster import LocalCluster, wait_until
from tests.support.operator import OperatorProcess, load_sample, rays_path
from tests.support.raygen import rays
from tests.support.specseq import replace_spec

EXAMPLES = int(os.environ.get("RAYOP_LIVE_FUZZ_EXAMPLES", "40"))
MAX_PODS = 6            # a generated cluster asking for more is left out of the live run
SETTLE = float(os.environ.get("RAYOP_LIVE_FUZZ_SETTLE", "60"))  # seconds after the last write before counting
WINDOW = 60.0           # the counting window
MAX_PER_MINUTE = 12     # reconciles per object per minute once settled


def draw_many(strategy: st.SearchStrategy[Any], n: int, at: int) -> list[Any]:
    out: list[Any] = []

    @seed(at)
    @settings(max_examples=n, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def collect(x: Any) -> None:
        out.append(x)

    collect()
    return out[:n]


def anchor_pods(kube: KubeClient, namespace: str) -> dict[str, str]:
    for attempt in range(5):  # the API server of a loaded 2-core machine may time out a handshake
        try:
            items = kube.get(f"/api/v1/namespaces/{namespace}/pods", labelSelector=f"{LABEL_CLUSTER}=anchor")["items"]
            break
        except urllib3.exceptions.HTTPError:
            if attempt == 4:
                raise
            time.sleep(5)
    return {p["metadata"]["uid"]: p["metadata"]["name"] for p in items
            if p["metadata"]["labels"].get(LABEL_ROLE) in ("head", "worker")
            and not p["metadata"].get("deletionTimestamp")}


def set_spec(kube: KubeClient, namespace: str, spec: Any) -> None:
    """Replace the anchor's spec (again when the operator's status write got in between)."""
    replace_spec(kube, namespace, "anchor", spec)


def pods_asked(ray: dict[str, Any]) -> int | None:
    """How many pods the operator would run for `ray`, or None when it judges it invalid."""
    try:
        model = effective_cluster(ray).cluster
    except ConfigurationError:
        return None
    return 1 + sum(max(g.desired_workers, g.min_workers) for g in model.worker_groups)


def reconciles_by_key(log_text: str, since: float, until: float) -> Counter[str]:
    counts: Counter[str] = Counter()
    for line in log_text.splitlines():
        if '"reconciled"' not in line:
            continue
        entry = json.loads(line)
        at = time.mktime(time.strptime(entry["timestamp"][:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
        if since <= at < until:
            counts[entry["key"]] += 1
    return counts


@pytest.mark.slow
def test_generated_rays_against_a_live_operator(cluster: LocalCluster, kube: KubeClient, namespace: str,
                                                ray_crd: None, tmp_path: Path) -> None:
    op = OperatorProcess(cluster, [namespace], tmp_path / "operator.log")
    op.start()
    outcome: Counter[str] = Counter()
    try:
        anchor = load_sample("static.yaml", namespace)
        anchor["metadata"]["name"] = "anchor"
        kube.create(rays_path(namespace), anchor)
        wait_until(lambda: (r := kube.get(rays_path(namespace, "anchor"))) and any(
            c["type"] == "Ready" and c["status"] == "True" for c in (r.get("status") or {}).get("conditions") or []),
            90, message="anchor Ready")
        good_spec = kube.get(rays_path(namespace, "anchor"))["spec"]
        running = anchor_pods(kube, namespace)
        assert len(running) == 4

        for i, (ray, kind) in enumerate(draw_many(rays(), EXAMPLES, 20261201)):
            asked = pods_asked(ray)
            if asked is None:
                try:
                    set_spec(kube, namespace, ray["spec"])
                    outcome["invalid spec on anchor: admitted"] += 1
                except ApiError as e:
                    assert e.status in (400, 422), e
                    outcome[f"invalid spec on anchor: rejected {e.status}"] += 1
                except ValueError:  # not JSON (a NaN or an infinity): the client refuses to send it
                    outcome["invalid spec on anchor: not JSON, not sent"] += 1
                continue
            if asked > MAX_PODS:
                outcome["valid, too many pods for the local nodes: skipped"] += 1
                continue
            body = {"apiVersion": ray["apiVersion"], "kind": "Ray",
                    "metadata": {"name": f"fuzz-{i}", "namespace": namespace}, "spec": ray["spec"]}
            try:
                kube.create(rays_path(namespace), body)
                outcome["new Ray: admitted"] += 1
            except ApiError as e:
                assert e.status in (400, 422), e
                outcome[f"new Ray: rejected {e.status}"] += 1
            except ValueError:
                outcome["new Ray: not JSON, not sent"] += 1
            assert op.running(), op.log()[-3000:]
        last_write = time.time()
        # The anchor's pods, created under a valid spec, survived every invalid one.
        time.sleep(5)
        assert anchor_pods(kube, namespace) == running, outcome
        time.sleep(max(0.0, last_write + SETTLE - time.time()))
        start = time.time()
        time.sleep(WINDOW)
        end = time.time()
        assert op.running(), op.log()[-3000:]
        counts = reconciles_by_key(op.log(), start, end)
        busiest = counts.most_common(3)
        print(f"\nlive fuzz: {EXAMPLES} objects: {dict(outcome)}; reconciles in the {WINDOW:.0f}s window after "
              f"{SETTLE:.0f}s settling: {sum(counts.values())} over {len(counts)} keys, busiest {busiest}")
        assert all(n <= MAX_PER_MINUTE * WINDOW / 60 for _, n in busiest), f"a hot loop: {busiest}"
        assert anchor_pods(kube, namespace) == running

        # The valid spec back: the anchor is Ready on the same pods.
        set_spec(kube, namespace, good_spec)
        wait_until(lambda: (r := kube.get(rays_path(namespace, "anchor")))
                   and r["status"].get("observedGeneration") == r["metadata"]["generation"]
                   and any(c["type"] == "Ready" and c["status"] == "True" for c in r["status"]["conditions"]),
                   90, message="anchor Ready again")
        assert anchor_pods(kube, namespace) == running
    finally:
        op.stop()
    log = op.log()
    assert '"result": "panic"' not in log, [line for line in log.splitlines() if '"panic"' in line][:3]
    assert "Traceback" not in log
