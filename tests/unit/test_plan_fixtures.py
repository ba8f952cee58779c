"""Fixtures shared by the builder, plan and status tests: `Ray` objects, their children, and pods as the cache
holds them (decoded JSON). Plain functions, no I/O."""

from __future__ import annotations

import copy
from datetime import datetime, timedelta, timezone
from typing import Any

from rayop.api.convert import effective_cluster
from rayop.autoscaler import build_autoscaler_config
from rayop.build import Desired, build_children
from rayop.defaults import Options
from rayop.objects import LABEL_TEMPLATE_HASH, Observed

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
UID = "11111111-2222-3333-4444-555555555555"
PROGRAMS = {"rayop_provider.py": "# provider\n", "rayop_monitor.py": "# monitor\n", "rayop_launcher.py": "# l\n"}


def ts(seconds_before_now: float = 0.0) -> str:
    return (NOW - timedelta(seconds=seconds_before_now)).strftime("%Y-%m-%dT%H:%M:%SZ")


def ray(spec: dict[str, Any] | None = None, *, name: str = "demo", namespace: str = "ray", generation: int = 1,
        status: dict[str, Any] | None = None) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "ray.k8s.io/v1alpha1",
        "kind": "Ray",
        "metadata": {"name": name, "namespace": namespace, "uid": UID, "generation": generation},
        "spec": spec if spec is not None else {},
    }
    if status is not None:
        obj["status"] = status
    return obj


def static(workers: int = 2, **extra: Any) -> dict[str, Any]:
    return {"autoScalingMode": "disabled", "minWorkers": 0, "maxWorkers": 10, "initialWorkers": workers, **extra}


def autoscaling(minimum: int = 0, maximum: int = 4, initial: int = 2, **extra: Any) -> dict[str, Any]:
    return {"minWorkers": minimum, "maxWorkers": maximum, "initialWorkers": initial, **extra}


def desired_for(obj: dict[str, Any], options: Options | None = None) -> Desired:
    model = effective_cluster(obj).cluster
    return build_children(obj, model, options or Options(), autoscaler_config=build_autoscaler_config(model),
                          programs=PROGRAMS)


def pod(name: str, *, role: str = "worker", group: str = "worker", hash: str = "", phase: str = "Running",
        ready: bool = True, age: float = 600.0, node: str | None = "node-1", uid: str | None = None,
        terminating: bool = False, restarts: int = 0, waiting: str | None = None, finished_ago: float | None = None,
        ready_since: float | None = None, annotations: dict[str, str] | None = None, cluster: str = "demo",
        owner_uid: str = UID, ip: str | None = "10.0.0.1") -> dict[str, Any]:
    """A pod as the cache holds it. `age`: seconds since creation (and start)."""
    meta: dict[str, Any] = {
        "name": name,
        "namespace": "ray",
        "uid": uid or f"uid-{name}",
        "creationTimestamp": ts(age),
        "labels": {"ray.k8s.io/cluster": cluster, "ray.k8s.io/node-kind": role, "ray.k8s.io/group": group,
                   "app.kubernetes.io/managed-by": "rayop", LABEL_TEMPLATE_HASH: hash},
        "ownerReferences": [{"apiVersion": "ray.k8s.io/v1alpha1", "kind": "Ray", "name": cluster, "uid": owner_uid,
                             "controller": True, "blockOwnerDeletion": True}],
    }
    if annotations:
        meta["annotations"] = annotations
    if terminating:
        meta["deletionTimestamp"] = ts(1)
    status: dict[str, Any] = {"phase": phase}
    conditions = [{"type": "PodScheduled", "status": "True" if node else "False",
                   **({} if node else {"reason": "Unschedulable", "message": "0/2 nodes are available"})}]
    if phase != "Pending" or node:
        status["startTime"] = ts(age)
    if phase == "Running":
        since = ready_since if ready_since is not None else age
        conditions.append({"type": "Ready", "status": "True" if ready else "False", "lastTransitionTime": ts(since)})
        if ip:
            status["podIP"] = ip
    status["conditions"] = conditions
    container = "ray-head" if role == "head" else "ray-worker"
    cs: dict[str, Any] = {"name": container, "restartCount": restarts, "ready": ready and phase == "Running"}
    if waiting:
        cs["state"] = {"waiting": {"reason": waiting, "message": f"{waiting} happened"}}
        cs["lastState"] = {"terminated": {"exitCode": 1, "reason": "Error",
                                          "finishedAt": ts(finished_ago if finished_ago is not None else 5)}}
    elif phase in ("Failed", "Succeeded"):
        cs["state"] = {"terminated": {"exitCode": 1 if phase == "Failed" else 0,
                                      "finishedAt": ts(finished_ago if finished_ago is not None else 5)}}
    elif phase == "Running":
        cs["state"] = {"running": {"startedAt": ts(age)}}
    status["containerStatuses"] = [cs]
    spec: dict[str, Any] = {"containers": [{"name": container}]}
    if node:
        spec["nodeName"] = node
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec, "status": status}


def stored(manifest: Any, *, uid: str | None = None, age: float = 600.0) -> dict[str, Any]:
    """A named child as the API server would return it after creating `manifest`."""
    obj = copy.deepcopy(dict(manifest))
    obj["metadata"]["uid"] = uid or f"uid-{obj['metadata']['name']}"
    obj["metadata"]["creationTimestamp"] = ts(age)
    return obj


def healthy(desired: Desired, workers: int | None = None, *, head_name: str = "demo-head-abcde") -> Observed:
    """The observed state of a cluster that is fully up: every child exists, every pod ready with current hashes."""
    head = pod(head_name, role="head", group="head", hash=desired.head.template_hash, age=3600)
    pods = [head]
    for gp in desired.workers:
        count = gp.desired if workers is None else workers
        pods += [pod(f"demo-{gp.group}-{i:05d}", group=gp.group, hash=gp.template_hash, age=3000 - i)
                 for i in range(count)]
    pods.append(launched(desired, head))
    return Observed(
        pods=pods,
        services=[stored(desired.service)],
        config_maps=[stored(desired.config_map)],
        service_accounts=[stored(m) for m in desired.autoscaler if m["kind"] == "ServiceAccount"],
        roles=[stored(m) for m in desired.autoscaler if m["kind"] == "Role"],
        role_bindings=[stored(m) for m in desired.autoscaler if m["kind"] == "RoleBinding"],
    )


def launched(desired: Desired, head: dict[str, Any], *, attempt: int = 0, phase: str = "Succeeded",
             exit_code: int = 0, message: str = "", age: float = 3000) -> dict[str, Any]:
    """A launcher pod of `head`'s launch (its attempt `attempt`) as the cache holds it, finished by default."""
    launcher = stored(desired.launcher_pod(head["metadata"]["uid"], attempt), age=age)
    status: dict[str, Any] = {"phase": phase}
    if phase in ("Succeeded", "Failed"):
        status["containerStatuses"] = [{"name": "launcher", "ready": False, "state": {"terminated": {
            "exitCode": exit_code, "message": message, "finishedAt": ts(age - 5)}}}]
    elif phase == "Running":
        status["conditions"] = [{"type": "Ready", "status": "True"}]
    launcher["status"] = status
    return launcher


def is_launcher_pod(p: Any) -> bool:
    return p["metadata"].get("labels", {}).get("ray.k8s.io/node-kind") == "launcher"


def with_pods(observed: Observed, pods: list[dict[str, Any]]) -> Observed:
    """`observed` with these pods; its launcher pods stay unless `pods` brings launcher pods of its own."""
    if not any(is_launcher_pod(p) for p in pods):
        pods = [*pods, *(p for p in observed.pods if is_launcher_pod(p))]
    return Observed(pods=pods, services=observed.services, config_maps=observed.config_maps, jobs=observed.jobs,
                    service_accounts=observed.service_accounts, roles=observed.roles,
                    role_bindings=observed.role_bindings)
