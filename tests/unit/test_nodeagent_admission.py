"""The node agent's admission of pods onto its Nodes (what a kubelet checks before it creates any container)."""

from __future__ import annotations

import sys
from fractions import Fraction
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "hack" / "nodeagent"))

from admission import Admission, pod_requests  # noqa: E402

CAPACITY = {"n1": {"cpu": "2", "memory": "4Gi", "pods": "3", "nvidia.com/gpu": "1"},
            "n2": {"cpu": "2", "memory": "4Gi", "pods": "3", "nvidia.com/gpu": "1"}}


def make_pod(uid: str, cpu: str | None = None, memory: str | None = None, *, init_cpu: str | None = None,
             gpu: str | None = None) -> dict[str, Any]:
    requests = {k: v for k, v in (("cpu", cpu), ("memory", memory), ("nvidia.com/gpu", gpu)) if v is not None}
    spec: dict[str, Any] = {"containers": [{"name": "a", "resources": {"requests": requests}},
                                           {"name": "b"}]}
    if init_cpu is not None:
        spec["initContainers"] = [{"name": "i", "resources": {"requests": {"cpu": init_cpu}}}]
    return {"metadata": {"uid": uid, "name": uid, "namespace": "ns"}, "spec": spec}


def test_requests_sum_containers_take_the_largest_init_container_and_count_one_pod() -> None:
    assert pod_requests(make_pod("p", "500m", "1Gi")) == {"cpu": Fraction(1, 2), "memory": 2**30, "pods": 1}
    assert pod_requests(make_pod("p", "500m", init_cpu="1500m"))["cpu"] == Fraction(3, 2)
    assert pod_requests(make_pod("p", "500m", init_cpu="100m"))["cpu"] == Fraction(1, 2)


def test_a_pod_that_does_not_fit_is_refused_as_the_kubelet_does_and_counts_nothing() -> None:
    a = Admission(CAPACITY)
    assert a.admit("n1", make_pod("big", "1900m")) is None
    reason, message = a.admit("n1", make_pod("launcher", "200m")) or ("", "")
    assert reason == "OutOfcpu"
    assert message == ("Pod was rejected: Node didn't have enough resource: cpu, requested: 200, used: 1900, "
                       "capacity: 2000")
    assert not a.admitted("launcher")
    assert a.used("n1") == {"cpu": Fraction(19, 10), "pods": 1}
    # The other Node has room; memory and extended resources are checked alike.
    assert a.admit("n2", make_pod("launcher", "200m")) is None
    assert a.admit("n1", make_pod("m", memory="5Gi"))[0] == "OutOfmemory"  # type: ignore[index]
    assert a.admit("n1", make_pod("g", gpu="2"))[0] == "OutOfnvidia.com/gpu"  # type: ignore[index]


def test_admitted_once_released_once_and_the_pod_count_is_a_limit() -> None:
    a = Admission(CAPACITY)
    for uid in ("p1", "p2", "p3"):
        assert a.admit("n1", make_pod(uid)) is None
    assert a.admit("n1", make_pod("p1")) is None, "an admitted pod is not counted twice"
    assert a.admit("n1", make_pod("p4"))[0] == "OutOfpods"  # type: ignore[index]
    a.release("p1")
    a.release("p1")
    assert a.used("n1") == {"pods": 2}
    assert a.admit("n1", make_pod("p4")) is None


def test_pods_that_ran_before_a_restart_are_counted_without_a_check() -> None:
    a = Admission(CAPACITY)
    a.restore("n1", make_pod("old", "3"))
    assert a.used("n1")["cpu"] == 3
    assert a.admit("n1", make_pod("new", "100m"))[0] == "OutOfcpu"  # type: ignore[index]
