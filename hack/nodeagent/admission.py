"""The kubelet's admission of a pod onto its Node, for the resources the Node advertises.

A pod bound by the scheduler fits (the scheduler checked), but a pod created with `spec.nodeName` set bypasses the
scheduler, and the kubelet is then the only check: it sums the requests of the pods it already admitted and turns
away a pod that does not fit, marking it Failed with reason `OutOf<resource>` and a message `Pod was rejected:
Node didn't have enough resource: ...` (the kubelet's own wording), before creating any container.

Guarantees:
- A pod's requests are what the scheduler counts: the larger of the sum over its containers and the largest init
  container, per resource, plus its overhead; every pod counts for one of the `pods` capacity.
- A pod is admitted at most once and counts until `release` (it finished or is gone); releasing twice is harmless.
- `restore` counts a pod that was already running before the agent (re)started, without checking it (the kubelet
  does not evict running pods when it restarts).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from fractions import Fraction
from typing import Any

from podspec import quantity

POD_COUNT = "pods"


def pod_requests(pod: Mapping[str, Any]) -> dict[str, Fraction]:
    """Requests per resource as the scheduler counts them; `pods` is always 1."""
    spec = pod.get("spec") or {}

    def of(container: Mapping[str, Any]) -> dict[str, Fraction]:
        requests = (container.get("resources") or {}).get("requests") or {}
        out: dict[str, Fraction] = {}
        for name, value in requests.items():
            try:
                out[name] = quantity(value)
            except ValueError:
                continue
        return out

    total: dict[str, Fraction] = {}
    for c in spec.get("containers") or []:
        for name, value in of(c).items():
            total[name] = total.get(name, Fraction(0)) + value
    for c in spec.get("initContainers") or []:
        for name, value in of(c).items():
            total[name] = max(total.get(name, Fraction(0)), value)
    for name, value in (spec.get("overhead") or {}).items():
        try:
            total[name] = total.get(name, Fraction(0)) + quantity(value)
        except ValueError:
            continue
    total[POD_COUNT] = Fraction(1)
    return total


def _shown(resource: str, value: Fraction) -> str:
    """The kubelet's message gives CPU in millicores and everything else in its base unit."""
    return str(int(value * 1000) if resource == "cpu" else int(value))


class Admission:
    """What one agent admitted on each of its Nodes."""

    def __init__(self, capacity: Mapping[str, Mapping[str, str]]):
        # Node name -> allocatable per resource.
        self._allocatable = {node: {k: quantity(v) for k, v in res.items()} for node, res in capacity.items()}
        self._used: dict[str, dict[str, Fraction]] = {node: {} for node in capacity}
        self._pods: dict[str, tuple[str, dict[str, Fraction]]] = {}  # uid -> (node, requests)
        self._lock = threading.Lock()

    def admitted(self, uid: str) -> bool:
        with self._lock:
            return uid in self._pods

    def admit(self, node: str, pod: Mapping[str, Any]) -> tuple[str, str] | None:
        """Counts the pod on `node` and returns None when it fits (or was admitted before); else (reason, message)
        as the kubelet writes them, and counts nothing."""
        uid = str((pod.get("metadata") or {}).get("uid") or "")
        wants = pod_requests(pod)
        with self._lock:
            if uid in self._pods:
                return None
            allocatable = self._allocatable.get(node, {})
            used = self._used.setdefault(node, {})
            for resource, amount in sorted(wants.items()):
                if amount <= 0 or resource not in allocatable:
                    # A resource the Node does not advertise is not the kubelet's to refuse here (the scheduler
                    # leaves such pods pending); extended resources it advertises are checked like cpu.
                    continue
                have = used.get(resource, Fraction(0))
                if have + amount > allocatable[resource]:
                    return (f"OutOf{resource}", "Pod was rejected: Node didn't have enough resource: "
                            f"{resource}, requested: {_shown(resource, amount)}, used: {_shown(resource, have)}, "
                            f"capacity: {_shown(resource, allocatable[resource])}")
            self._count(uid, node, wants)
            return None

    def restore(self, node: str, pod: Mapping[str, Any]) -> None:
        uid = str((pod.get("metadata") or {}).get("uid") or "")
        with self._lock:
            if uid not in self._pods:
                self._count(uid, node, pod_requests(pod))

    def release(self, uid: str) -> None:
        with self._lock:
            entry = self._pods.pop(uid, None)
            if entry is None:
                return
            node, wants = entry
            used = self._used[node]
            for resource, amount in wants.items():
                used[resource] = used.get(resource, Fraction(0)) - amount

    def used(self, node: str) -> dict[str, Fraction]:
        with self._lock:
            return {k: v for k, v in self._used.get(node, {}).items() if v}

    def _count(self, uid: str, node: str, wants: dict[str, Fraction]) -> None:
        self._pods[uid] = (node, wants)
        used = self._used.setdefault(node, {})
        for resource, amount in wants.items():
            used[resource] = used.get(resource, Fraction(0)) + amount
