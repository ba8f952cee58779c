"""Spec-sequence testing (Acto's oracles) against the real API server: valid `Ray` specs drawn and changed step by
step, the state they converge to read back and normalized, and the invariants watched while they converge.

- `SpecModel`: what a generated spec says (form, head, worker groups, counts, templates, autoscaling knobs), as
  plain data that the state machine's rules edit; `render()` writes it as a `Ray` spec in one of four forms:
  structured with the single `worker` group (`single`), structured with `workerGroups` (`groups`), and the
  `configuration` form in the legacy layout (`legacy`) or the `available_node_types` layout (`nodetypes`). Every
  rendered spec is valid on create (initialWorkers within the bounds), so a fresh `Ray` can be made of it.
- `normalized_state()`: the cluster a `Ray` runs, with names, random suffixes, UIDs, timestamps, IPs and the
  cluster's own name and namespace masked: the pods per group (distinct normalized pod manifests and their count),
  the Services, the ConfigMap's data, the launcher pod, the autoscaler's RBAC and the status.
- `differences()`: how two normalized states differ. For a group the autoscaler owns (autoscaling on, the group
  able to change size) the pod count may lie anywhere in [desired, maxWorkers]: by design the operator does not
  remove running, ready workers to follow a lowered count there (the autoscaler drains idle ones and names them;
  docs/api.md), and no autoscaler runs in sim mode, so such a group may keep pods from an earlier, larger count.
  Likewise the launcher pod's `--expect-workers` (the desired count when that launch started: a later change of
  counts is no new launch) is masked. Everything else is compared exactly.
- `settled()`: observedGeneration caught up, Ready, launched, no failure, no pod terminating, and nothing of the
  cluster changed during a quiet period.
- `PodWatch`: every pod event of a namespace; counts head pods (never more than one) and each group's pods
  (never more than its bound: the larger of the count before the step and desired, plus maxSurge) at every event.
"""

from __future__ import annotations

import copy
import json
import os
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import urllib3
import yaml

from rayop.api.convert import effective_cluster
from rayop.api.model import ClusterModel
from rayop.objects import LABEL_CLUSTER, LABEL_GROUP, LABEL_ROLE, LABEL_TEMPLATE_HASH
from rayop.runtime.kube import ApiError, KubeClient
from tests.support.operator import rays_path

FORMS = ("single", "groups", "legacy", "nodetypes")
STRUCTURED = ("single", "groups")
GROUP_NAMES = ("worker", "cpu", "mem")
IMAGES = ("rayproject/ray:2.60.0", "rayproject/ray:2.59.0")
MODES = (None, "default", "aggressive", "disabled")
LABEL_KEYS = ("team", "tier")
LABEL_VALUES = ("a", "b")
ENV_NAMES = ("FOO", "BAR")
ENV_VALUES = ("1", "2")
CPUS = (None, "1", "2")
MAX_COUNT = 3  # per group: with two groups, live and fresh together stay well within the local nodes
QUIET = 2.5  # seconds of no change before a cluster counts as settled (progress-only status writes wait 2 s)

JSON = dict[str, Any]


# -- the spec model ---------------------------------------------------------------------------------------------


def empty_pod() -> JSON:
    return {"labels": {}, "env": {}, "cpu": None, "image": None}


@dataclass
class SpecModel:
    form: str = "single"
    head: JSON = field(default_factory=empty_pod)
    # Each: name, min, max, initial, pod, params (ray start params; structured forms only).
    groups: list[JSON] = field(default_factory=list)
    mode: str | None = None
    idle: int | None = None
    image: str | None = None
    desired: dict[str, int] = field(default_factory=dict)
    rolling: tuple[int, int] | None = None  # (maxSurge, maxUnavailable) of spec.rollingUpdate
    head_params: dict[str, str] = field(default_factory=dict)

    def copy(self) -> SpecModel:
        return copy.deepcopy(self)

    def group_names(self) -> list[str]:
        return [g["name"] for g in self.groups]

    def normalize(self) -> None:
        """Keeps the model within what its form can say (called after every edit)."""
        if self.form in ("single", "legacy"):
            assert len(self.groups) == 1
            self.groups[0]["name"] = "worker"
        if self.form not in STRUCTURED:
            self.head_params = {}
            for g in self.groups:
                g["params"] = {}
        for g in self.groups:
            g["max"] = max(g["max"], g["min"])
            g["initial"] = min(max(g["initial"], g["min"]), g["max"])
            if self.form == "nodetypes":
                g["initial"] = g["min"]  # the layout has no initial count: a node type starts at min_workers


def _container(pod: JSON, name: str, *, always: bool) -> JSON | None:
    c: JSON = {"name": name}
    if pod["image"]:
        c["image"] = pod["image"]
    if pod["env"]:
        c["env"] = [{"name": k, "value": v} for k, v in sorted(pod["env"].items())]
    if pod["cpu"]:
        q = {"cpu": pod["cpu"], "memory": "1Gi"}
        c["resources"] = {"requests": dict(q), "limits": dict(q)}
    if len(c) == 1 and not always:
        return None
    return c


def template(pod: JSON, role: str) -> JSON | None:
    """A structured pod template, or None when the pod says nothing (the operator's default container)."""
    out: JSON = {}
    if pod["labels"]:
        out["metadata"] = {"labels": dict(sorted(pod["labels"].items()))}
    c = _container(pod, f"ray-{role}", always=False)
    if c is not None:
        out["spec"] = {"containers": [c]}
    return out or None


def pod_manifest(pod: JSON, role: str) -> JSON:
    """A `ray up` pod manifest (configuration form)."""
    out: JSON = {"apiVersion": "v1", "kind": "Pod"}
    if pod["labels"]:
        out["metadata"] = {"labels": dict(sorted(pod["labels"].items()))}
    out["spec"] = {"containers": [_container(pod, "ray-node", always=True)]}
    return out


def render(m: SpecModel) -> JSON:
    """The `Ray` spec the model describes."""
    spec: JSON = {}
    if m.form in STRUCTURED:
        if m.mode is not None:
            spec["autoScalingMode"] = m.mode
        if m.idle is not None:
            spec["idleTimeoutMinutes"] = m.idle
        head = template(m.head, "head")
        if head is not None:
            spec["head"] = head
        if m.head_params:
            spec["headRayStartParams"] = dict(m.head_params)
        if m.form == "single":
            g = m.groups[0]
            spec.update(minWorkers=g["min"], maxWorkers=g["max"], initialWorkers=g["initial"])
            worker = template(g["pod"], "worker")
            if worker is not None:
                spec["worker"] = worker
            if g["params"]:
                spec["workerRayStartParams"] = dict(g["params"])
        else:
            groups = []
            for g in m.groups:
                out: JSON = {"name": g["name"], "minWorkers": g["min"], "maxWorkers": g["max"],
                             "initialWorkers": g["initial"]}
                t = template(g["pod"], "worker")
                if t is not None:
                    out["template"] = t
                if g["params"]:
                    out["rayStartParams"] = dict(g["params"])
                groups.append(out)
            spec["workerGroups"] = groups
    else:
        config: JSON = {}
        if m.mode is not None:
            config["autoscaling_mode"] = m.mode
        if m.idle is not None:
            config["idle_timeout_minutes"] = m.idle
        if m.form == "legacy":
            g = m.groups[0]
            config.update(min_workers=g["min"], max_workers=g["max"], initial_workers=g["initial"],
                          head_node=pod_manifest(m.head, "head"), worker_nodes=pod_manifest(g["pod"], "worker"))
        else:
            types: JSON = {"head": {"node_config": pod_manifest(m.head, "head")}}
            for g in m.groups:
                types[g["name"]] = {"min_workers": g["min"], "max_workers": g["max"],
                                    "node_config": pod_manifest(g["pod"], "worker")}
            config.update(head_node_type="head", available_node_types=types)
        spec["configuration"] = yaml.safe_dump(config, sort_keys=False)
    if m.image is not None:
        spec["image"] = m.image
    if m.desired:
        spec["desiredWorkers"] = dict(sorted(m.desired.items()))
    if m.rolling is not None:
        spec["rollingUpdate"] = {"maxSurge": m.rolling[0], "maxUnavailable": m.rolling[1]}
    return spec


def canonical(spec: JSON) -> str:
    return json.dumps(spec, sort_keys=True, separators=(",", ":"))


def model_of(spec: JSON, name: str, namespace: str) -> ClusterModel:
    """The operator's effective model of a spec (raises ConfigurationError for an invalid one)."""
    ray = {"apiVersion": "ray.k8s.io/v1alpha1", "kind": "Ray",
           "metadata": {"name": name, "namespace": namespace, "generation": 2}, "spec": spec}
    return effective_cluster(ray).cluster


@dataclass(frozen=True)
class Scaling:
    desired: int
    max: int
    autoscaled: bool
    surge: int


def scaling_of(spec: JSON, name: str, namespace: str) -> dict[str, Scaling]:
    model = model_of(spec, name, namespace)
    out = {}
    for g in model.worker_groups:
        surge = g.max_surge if g.max_surge is not None else 1
        out[g.name] = Scaling(desired=g.desired_workers, max=g.max_workers,
                              autoscaled=model.autoscaling.enabled and g.min_workers < g.max_workers, surge=surge)
    return out


# -- reading and normalizing a cluster ----------------------------------------------------------------------------


KINDS = {
    "pods": "/api/v1/namespaces/{ns}/pods",
    "services": "/api/v1/namespaces/{ns}/services",
    "configmaps": "/api/v1/namespaces/{ns}/configmaps",
    "jobs": "/apis/batch/v1/namespaces/{ns}/jobs",
    "serviceaccounts": "/api/v1/namespaces/{ns}/serviceaccounts",
    "roles": "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles",
    "rolebindings": "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings",
}
# Fields that differ between two runs of the same spec by nature (or are set by the API server and the node).
_METADATA_DROP = ("uid", "resourceVersion", "creationTimestamp", "managedFields", "generation", "selfLink",
                  "deletionTimestamp", "deletionGracePeriodSeconds")
_STATUS_TIME_KEYS = ("lastTransitionTime", "lastProbeTime", "startTime", "lastReconcileTime", "headPodIP",
                     "observedGeneration")
_REPLICA_KEYS = ("replicas", "readyReplicas", "availableReplicas", "updatedReplicas", "unavailableReplicas")


def _get(kube: KubeClient, path: str, **params: Any) -> Any:
    for attempt in range(5):  # the API server of a loaded 2-core machine may time out a handshake
        try:
            return kube.get(path, **params)
        except urllib3.exceptions.HTTPError:
            if attempt == 4:
                raise
            time.sleep(2)


def read_cluster(kube: KubeClient, namespace: str, name: str) -> dict[str, Any]:
    out: dict[str, Any] = {"ray": _get(kube, rays_path(namespace, name))}
    for kind, path in KINDS.items():
        out[kind] = _get(kube, path.format(ns=namespace), labelSelector=f"{LABEL_CLUSTER}={name}")["items"]
    return out


def _strip_metadata(obj: JSON) -> JSON:
    meta = dict(obj.get("metadata") or {})
    for key in _METADATA_DROP:
        meta.pop(key, None)
    meta.pop("name", None)
    meta.pop("namespace", None)
    refs = meta.pop("ownerReferences", None)
    if refs:
        meta["owners"] = sorted(f"{r.get('kind')}:{r.get('controller')}" for r in refs)
    labels = dict(meta.get("labels") or {})
    if LABEL_TEMPLATE_HASH in labels:
        labels[LABEL_TEMPLATE_HASH] = "<hash>"  # depends on the cluster's name and namespace; the spec is compared
    for key in ("controller-uid", "batch.kubernetes.io/controller-uid", "job-name", "batch.kubernetes.io/job-name"):
        labels.pop(key, None)
    meta["labels"] = labels
    return meta


def _pod(p: JSON) -> JSON:
    spec = dict(p.get("spec") or {})
    spec.pop("nodeName", None)
    return {"metadata": _strip_metadata(p), "spec": spec}


def _job(j: JSON) -> JSON:
    """A Job of the cluster, normalized (the operator makes none for a `Ray`; any one is a difference)."""
    return {"metadata": _strip_metadata(j), "spec": j.get("spec") or {}}


def _launcher(p: JSON) -> JSON:
    spec = copy.deepcopy(p.get("spec") or {})
    spec.pop("nodeName", None)
    for c in spec.get("containers") or []:
        command = c.get("command") or []
        if "--expect-workers" in command[:-1]:
            # What this launch waited for: the desired count when it started. A later change of counts is not a
            # new launch (one launch per head pod and autoscaler config), so this records history.
            command[command.index("--expect-workers") + 1] = "<count at launch>"
    meta = _strip_metadata(p)
    # Head UID and config hash are masked; the attempt stays.
    meta["annotations"] = {k: (v if k == "ray.k8s.io/launch-attempt" else "<masked>")
                           for k, v in (meta.get("annotations") or {}).items()}
    return {"metadata": meta, "spec": spec, "phase": (p.get("status") or {}).get("phase")}


def _service(s: JSON) -> JSON:
    spec = dict(s.get("spec") or {})
    for key in ("clusterIPs", "ipFamilies", "ipFamilyPolicy", "internalTrafficPolicy", "sessionAffinity"):
        spec.pop(key, None)
    if spec.get("clusterIP") != "None":
        spec.pop("clusterIP", None)
    return {"metadata": _strip_metadata(s), "spec": spec}


def _status(ray: JSON, scaling: dict[str, Scaling]) -> JSON:
    status = copy.deepcopy(ray.get("status") or {})
    for key in _STATUS_TIME_KEYS:
        status.pop(key, None)
    conditions = []
    for c in status.pop("conditions", None) or []:
        conditions.append({k: c.get(k) for k in ("type", "status", "reason", "message")})
    status["conditions"] = sorted(conditions, key=lambda c: str(c["type"]))
    if any(s.autoscaled for s in scaling.values()):
        status.pop("worker", None)  # the sum over groups: see the groups
    for g in status.get("workerGroups") or []:
        s = scaling.get(g.get("name"))
        if s is not None and s.autoscaled:
            for key in _REPLICA_KEYS:
                g.pop(key, None)
    return status


def _is_live_pod(p: JSON) -> bool:
    return (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")


def normalized_state(kube: KubeClient, namespace: str, name: str) -> JSON:
    """The normalized state of one `Ray`'s cluster (see the module docstring)."""
    raw = read_cluster(kube, namespace, name)
    ray = raw["ray"]
    scaling = scaling_of(ray["spec"], name, namespace)
    pods: dict[str, list[str]] = {}
    masks: dict[str, str] = {}
    for p in raw["pods"]:
        meta = p["metadata"]
        labels = meta.get("labels") or {}
        masks[meta["uid"]] = "<uid>"
        if labels.get(LABEL_ROLE) not in ("head", "worker") or not _is_live_pod(p):
            masks[meta["name"]] = "<launcher-pod>"
            continue
        masks[meta["name"]] = f"{meta.get('generateName', '')}<pod>"
        pods.setdefault(str(labels.get(LABEL_GROUP)), []).append(json.dumps(_pod(p), sort_keys=True))
    for kind in KINDS:
        for obj in raw[kind]:
            masks.setdefault(obj["metadata"]["uid"], "<uid>")
    for j in raw["jobs"]:
        masks[j["metadata"]["name"]] = "<job>"
    masks[str(ray["metadata"]["uid"])] = "<uid>"
    state: JSON = {
        "pods": {g: {"specs": sorted(set(items)), "count": len(items)} for g, items in sorted(pods.items())},
        "services": sorted((json.dumps(_service(s), sort_keys=True) for s in raw["services"])),
        "configmaps": sorted(json.dumps({"labels": _strip_metadata(c)["labels"], "data": c.get("data")},
                                        sort_keys=True) for c in raw["configmaps"]),
        "jobs": sorted(json.dumps(_job(j), sort_keys=True) for j in raw["jobs"]
                       if not j["metadata"].get("deletionTimestamp")),
        "launchers": sorted(json.dumps(_launcher(p), sort_keys=True) for p in raw["pods"]
                            if (p["metadata"].get("labels") or {}).get(LABEL_ROLE) == "launcher"
                            and not p["metadata"].get("deletionTimestamp")),
        "rbac": sorted(json.dumps({"kind": k, "metadata": _strip_metadata(o),
                                   "rest": {x: o.get(x) for x in ("rules", "roleRef", "subjects")}}, sort_keys=True)
                       for k in ("serviceaccounts", "roles", "rolebindings") for o in raw[k]),
        "status": _status(ray, scaling),
        "scaling": {g: s.__dict__ for g, s in sorted(scaling.items())},
    }
    text = json.dumps(state, sort_keys=True)
    # Longest first, so a pod name is masked before the cluster name inside it.
    for value, mask in sorted(masks.items(), key=lambda kv: -len(kv[0])):
        text = text.replace(value, mask)
    text = text.replace(namespace, "<ns>")
    # The projected token volume the ServiceAccount admission plugin adds has a random suffix.
    text = re.sub(r"kube-api-access-[a-z0-9]{5}", "kube-api-access-<id>", text)
    text = re.sub(re.escape(name) + r"(?![a-z0-9])", "<ray>", text)
    out: JSON = json.loads(text)
    # Pod manifests were JSON strings inside the JSON: decode them for readable diffs.
    for g in out["pods"].values():
        g["specs"] = [json.loads(s) for s in g["specs"]]
    for key in ("services", "configmaps", "jobs", "launchers", "rbac"):
        out[key] = [json.loads(s) for s in out[key]]
    return out


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out or {prefix: {}}
    if isinstance(value, list):
        out = {}
        for i, v in enumerate(value):
            out.update(_flat(v, f"{prefix}[{i}]"))
        return out or {prefix: []}
    return {prefix: value}


def _diff(a: Any, b: Any, where: str) -> list[str]:
    fa, fb = _flat(a), _flat(b)
    out = []
    for key in sorted(set(fa) | set(fb)):
        if fa.get(key, "<absent>") != fb.get(key, "<absent>"):
            out.append(f"{where}{'.' + key if key else ''}: {fa.get(key, '<absent>')!r} != {fb.get(key, '<absent>')!r}")
    return out


def differences(got: JSON, want: JSON) -> list[str]:
    """What differs between two normalized states (`got` first), at most a few dozen lines."""
    out: list[str] = []
    scaling = want["scaling"]
    out += _diff(got["scaling"], want["scaling"], "scaling")
    none = {"specs": [], "count": 0}
    for g in sorted(set(got["pods"]) | set(want["pods"])):
        a, b = got["pods"].get(g, none), want["pods"].get(g, none)
        s = scaling.get(g)
        autoscaled = s is not None and s["autoscaled"]
        if a["specs"] and b["specs"] or not autoscaled:
            # An autoscaled group at desired 0 may have pods on one side only; their template is the current one
            # all the same (`converged` waits for updatedReplicas == replicas).
            if len(a["specs"]) != len(b["specs"]):
                out.append(f"pods of group {g}: {len(a['specs'])} distinct pod manifest(s) != {len(b['specs'])}")
            for i, (x, y) in enumerate(zip(a["specs"], b["specs"])):
                out += _diff(x, y, f"pods[{g}][{i}]")
        if s is not None and autoscaled:
            for side, n in (("got", a["count"]), ("want", b["count"])):
                if not s["desired"] <= n <= s["max"]:
                    out.append(f"pods of autoscaled group {g} ({side}): {n} outside [{s['desired']}, {s['max']}]")
        elif a["count"] != b["count"]:
            out.append(f"pods of group {g}: {a['count']} != {b['count']}")
    for key in ("services", "configmaps", "jobs", "launchers", "rbac"):
        if len(got[key]) != len(want[key]):
            out.append(f"{key}: {len(got[key])} object(s) != {len(want[key])}")
        for i, (x, y) in enumerate(zip(got[key], want[key])):
            out += _diff(x, y, f"{key}[{i}]")
    out += _diff(got["status"], want["status"], "status")
    return out[:40]


# -- settling -------------------------------------------------------------------------------------------------------


def _conditions(ray: JSON) -> dict[str, str]:
    return {c.get("type"): c.get("status") for c in (ray.get("status") or {}).get("conditions") or []}


def converged(raw: dict[str, Any]) -> str | None:
    """None when the cluster read by `read_cluster` has converged, else what it still waits for."""
    ray = raw["ray"]
    status = ray.get("status") or {}
    if status.get("observedGeneration") != ray["metadata"]["generation"]:
        return "observedGeneration behind"
    conditions = _conditions(ray)
    for kind, want in (("ConfigurationValid", "True"), ("Ready", "True"), ("SuccessfulLaunch", "True"),
                       ("ReplicaFailure", "False")):
        if conditions.get(kind) != want:
            return f"{kind}={conditions.get(kind)}"
    for g in status.get("workerGroups") or []:
        if g.get("updatedReplicas") != g.get("replicas"):
            return f"group {g.get('name')} rolling"
    for p in raw["pods"]:
        if p["metadata"].get("deletionTimestamp") and _is_live_pod(p):
            return f"pod {p['metadata']['name']} terminating"
    # The status tells the pods as they are (a progress-only status write may come up to 2 s late).
    for role, key in (("head", "head"), ("worker", "worker")):
        live = [p for p in raw["pods"] if (p["metadata"].get("labels") or {}).get(LABEL_ROLE) == role
                and _is_live_pod(p)]
        ready = sum(1 for p in live if any(c.get("type") == "Ready" and c.get("status") == "True"
                                           for c in (p.get("status") or {}).get("conditions") or []))
        counts = status.get(key) or {}
        if (counts.get("replicas"), counts.get("readyReplicas")) != (len(live), ready):
            return f"status.{key} says {counts.get('replicas')} pod(s), {counts.get('readyReplicas')} ready"
    if raw["jobs"]:
        return f"{len(raw['jobs'])} Job(s): launches run as pods"
    launchers = [p for p in raw["pods"] if (p["metadata"].get("labels") or {}).get(LABEL_ROLE) == "launcher"]
    if len(launchers) != 1 or launchers[0]["metadata"].get("deletionTimestamp"):
        return f"{len(launchers)} launcher pod(s), not exactly one that stays"
    # The launcher's counts are the pod's (they stayed stale for minutes when a launcher pod went Ready and finished
    # before the Ray's watch event brought the status write that counted it: docs/reliability.md).
    launcher, lp = status.get("launcher") or {}, launchers[0]
    live = int(_is_live_pod(lp))
    ready = int(live and any(c.get("type") == "Ready" and c.get("status") == "True"
                             for c in (lp.get("status") or {}).get("conditions") or []))
    if (launcher.get("replicas"), launcher.get("readyReplicas")) != (live, ready):
        return (f"status.launcher says {launcher.get('replicas')} pod(s), {launcher.get('readyReplicas')} ready, "
                f"the launcher pod {live}, {ready}")
    return None


def _fingerprint(raw: dict[str, Any]) -> str:
    parts = [raw["ray"]["metadata"]["resourceVersion"]]
    for kind in KINDS:
        parts += sorted(f"{o['metadata']['name']}@{o['metadata']['resourceVersion']}" for o in raw[kind])
    return "|".join(parts)


SETTLE_TIMEOUT = float(os.environ.get("RAYOP_SEQ_SETTLE_TIMEOUT", "150"))


def wait_settled(kube: KubeClient, targets: list[tuple[str, str]], timeout: float = SETTLE_TIMEOUT,
                 quiet: float = QUIET) -> None:
    """Wait until every (namespace, name) has converged and nothing of it changed for `quiet` seconds."""
    deadline = time.monotonic() + timeout
    since: dict[tuple[str, str], tuple[str, float]] = {}
    pending = list(targets)
    why: dict[tuple[str, str], str] = {}
    while pending:
        for target in list(pending):
            raw = read_cluster(kube, *target)
            reason = converged(raw)
            now = time.monotonic()
            if reason is not None:
                since.pop(target, None)
                why[target] = reason
                continue
            fp = _fingerprint(raw)
            seen = since.get(target)
            if seen is None or seen[0] != fp:
                since[target] = (fp, now)
                why[target] = "quiet period"
            elif now - seen[1] >= quiet:
                pending.remove(target)
        if not pending:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not converged after {timeout:.0f}s: "
                                 + "; ".join(f"{ns}/{n}: {why.get((ns, n))}" for ns, n in pending))
        time.sleep(0.3)


def replace_spec(kube: KubeClient, namespace: str, name: str, spec: JSON) -> None:
    """PUT the `Ray` with `spec` (again when the operator's status write got in between)."""
    for _ in range(10):
        current = _get(kube, rays_path(namespace, name))
        current["spec"] = spec
        try:
            kube.replace(rays_path(namespace, name), current)
            return
        except ApiError as e:
            if e.status != 409 or e.already_exists:
                raise
    raise AssertionError("10 conflicts in a row replacing the spec")


# -- invariants while a step converges --------------------------------------------------------------------------


class PodWatch:
    """Every pod event of `namespace`; for the cluster named `self.cluster`, checks at each event that at most one
    head pod exists and that each worker group has at most `self.bounds[group]` pods (terminating ones count, pods
    that ended do not). Violations are collected in `self.violations`."""

    def __init__(self, client: KubeClient, namespace: str):
        self.client = client
        self.namespace = namespace
        self.cluster: str | None = None
        self.bounds: dict[str, int] = {}
        self.pods: dict[str, JSON] = {}
        self.violations: list[str] = []
        self.events = 0
        self.trace: list[str] = []  # the last pod events, for a violation's report
        self.lock = threading.Lock()
        self.rv = client.get(f"/api/v1/namespaces/{namespace}/pods", limit=1)["metadata"]["resourceVersion"]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                for event in self.client.watch(f"/api/v1/namespaces/{self.namespace}/pods",
                                               {"resourceVersion": self.rv, "timeoutSeconds": 10,
                                                "allowWatchBookmarks": "false"}, timeout=20):
                    self._on(event)
            except (urllib3.exceptions.HTTPError, ApiError):
                time.sleep(0.5)

    def _on(self, event: JSON) -> None:
        obj = event["object"]
        meta = obj.get("metadata") or {}
        if event.get("type") == "ERROR":
            return
        with self.lock:
            self.rv = meta.get("resourceVersion", self.rv)
            self.events += 1
            if event["type"] == "DELETED":
                self.pods.pop(meta["uid"], None)
            else:
                self.pods[meta["uid"]] = obj
            phase = (obj.get("status") or {}).get("phase")
            self.trace.append(f"{time.strftime('%H:%M:%S')} {event['type']} {meta.get('name')} {phase}"
                              f"{' terminating' if meta.get('deletionTimestamp') else ''}")
            del self.trace[:-40]
            self._check(f"{event['type']} {meta.get('name')}")

    def counts(self) -> dict[str, int]:
        """Pods per group (the head as `head`) of the current cluster that have not ended."""
        out: dict[str, int] = {}
        for p in self.pods.values():
            labels = p["metadata"].get("labels") or {}
            if labels.get(LABEL_CLUSTER) != self.cluster or labels.get(LABEL_ROLE) not in ("head", "worker"):
                continue
            if not _is_live_pod(p):
                continue
            group = "head" if labels.get(LABEL_ROLE) == "head" else str(labels.get(LABEL_GROUP))
            out[group] = out.get(group, 0) + 1
        return out

    def _check(self, what: str) -> None:
        if self.cluster is None:
            return
        counts = self.counts()
        before = len(self.violations)
        if counts.get("head", 0) > 1:
            self.violations.append(f"{what}: {counts['head']} head pods at once")
        for group, n in counts.items():
            if group != "head" and n > self.bounds.get(group, 0):
                self.violations.append(f"{what}: group {group} has {n} pods, more than its bound "
                                       f"{self.bounds.get(group, 0)}")
        if len(self.violations) > before and before == 0:
            self.violations.append("the last pod events: " + "; ".join(self.trace[-15:]))

    def expect(self, cluster: str, bounds: dict[str, int]) -> None:
        """The cluster and bounds of the next step; the violations of the last one are cleared (each step reports
        its own, and a replayed sequence does not inherit them)."""
        with self.lock:
            self.cluster = cluster
            self.bounds = dict(bounds)
            self.violations = []

    def sees(self, counts: dict[str, int]) -> bool:
        """Whether the watch has seen the current cluster with these pod counts (a list read after settling)."""
        with self.lock:
            return self.counts() == counts

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
