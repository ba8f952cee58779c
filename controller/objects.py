"""Typed reads of the Kubernetes objects the operator handles, the names and numbers every child shares, and the
rules about a `Ray`'s pods: which pods belong to it, in which role and group, and which one is its head.

Guarantees:
- Pure: no I/O, no clock, no environment; nothing here modifies an object.
- Objects stay the decoded JSON dicts of the cache (`Body`; that keeps the cache small); every read of them goes
  through the accessors below, which never raise on a missing or malformed field and return typed values (the
  nested views `Condition`, `ContainerStatus`, `Terminated`, `Waiting` are TypedDicts).
- Vocabulary: a child's *role* (head, worker, launcher, config, autoscaler, service) is the value of its
  `ray.k8s.io/node-kind` label; *kind* is only ever a Kubernetes kind (Pod, Job, ...).
- One classification (`classify`) and one head choice (`choose_head`): the plan and the status see the same pods
  in the same roles and groups, and name the same pod the head.
"""

from __future__ import annotations

import hashlib

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, TypedDict, cast

from rayop.api.types import DASHBOARD_PORT as DASHBOARD_PORT  # re-exported: the pod rules' ports
from rayop.api.types import GCS_PORT as GCS_PORT
from rayop.api.types import GROUP, HEAD_GROUP
from rayop.defaults import Options

# A decoded Kubernetes object as the cache holds it (read-only), and a manifest being built (a fresh JSON dict).
Body = Mapping[str, Any]
JSON = dict[str, Any]

# -- labels and annotations ---------------------------------------------------------------------------------------

# Labels every child object carries. The role label's key keeps its historical spelling (`node-kind`).
LABEL_CLUSTER = "ray.k8s.io/cluster"
LABEL_ROLE = "ray.k8s.io/node-kind"
LABEL_GROUP = "ray.k8s.io/group"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "rayop"
# Pods only: the hash of what their group asked for (a change rolls the group).
LABEL_TEMPLATE_HASH = f"{GROUP}/template-hash"
# How often the pod slot this pod fills has been refilled after failures (drives the replacement back-off).
ANNOTATION_REPLACEMENTS = f"{GROUP}/replacements"
ANNOTATION_HEAD_UID = f"{GROUP}/head-uid"
ANNOTATION_CONFIG_HASH = f"{GROUP}/config-hash"
# Launcher pods only: which attempt of its launch (head UID + config hash) the pod is, from 0.
ANNOTATION_LAUNCH_ATTEMPT = f"{GROUP}/launch-attempt"

# Values of LABEL_ROLE.
ROLE_HEAD = "head"
ROLE_WORKER = "worker"
ROLE_LAUNCHER = "launcher"
ROLE_CONFIG = "config"
ROLE_AUTOSCALER = "autoscaler"
ROLE_SERVICE = "service"

# -- containers, ports, DNS names ---------------------------------------------------------------------------------

HEAD_CONTAINER = "ray-head"
WORKER_CONTAINER = "ray-worker"
AUTOSCALER_CONTAINER = "autoscaler"
LAUNCHER_CONTAINER = "launcher"

CLIENT_PORT = 10001
METRICS_PORT = 8080
AGENT_PORT = 52365


def head_service_name(name: str) -> str:
    """The headless Service in front of the head pod of the `Ray` named `name`."""
    return f"{name}-head"


def head_service_host(name: str, namespace: str) -> str:
    """`<name>-head.<namespace>.svc`: the head Service as any pod of the cluster resolves it (the DNS search path
    adds the cluster domain). The status reports this form: it holds whatever the cluster's domain is."""
    return f"{head_service_name(name)}.{namespace}.svc"


def head_fqdn(name: str, namespace: str, cluster_domain: str) -> str:
    """The head Service's fully qualified name, which the pods are given (no reliance on a search path)."""
    return f"{head_service_host(name, namespace)}.{cluster_domain}"


# -- typed views ----------------------------------------------------------------------------------------------------


class Condition(TypedDict, total=False):
    type: str
    status: str
    reason: str
    message: str
    lastTransitionTime: str
    observedGeneration: int


class Terminated(TypedDict, total=False):
    exitCode: int
    reason: str
    message: str
    finishedAt: str


class Waiting(TypedDict, total=False):
    reason: str
    message: str


class ContainerState(TypedDict, total=False):
    waiting: Waiting
    terminated: Terminated


class ContainerStatus(TypedDict, total=False):
    name: str
    restartCount: int
    state: ContainerState
    lastState: ContainerState


def _mapping(value: object) -> Body:
    return value if isinstance(value, Mapping) else {}


def _mappings(value: object) -> Iterable[Body]:
    if isinstance(value, (list, tuple)):
        yield from (v for v in value if isinstance(v, Mapping))


def parse_time(value: object) -> datetime | None:
    """An RFC 3339 timestamp as an aware datetime, or None."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


# -- metadata -------------------------------------------------------------------------------------------------------


def meta(obj: Body) -> Body:
    return _mapping(obj.get("metadata"))


def spec_of(obj: Body) -> Body:
    return _mapping(obj.get("spec"))


def status_of(obj: Body) -> Body:
    return _mapping(obj.get("status"))


def labels(obj: Body) -> Mapping[str, object]:
    return _mapping(meta(obj).get("labels"))


def label(obj: Body, key: str) -> str:
    return str(labels(obj).get(key) or "")


def annotations_of(obj: Body) -> Mapping[str, object]:
    return _mapping(meta(obj).get("annotations"))


def name_of(obj: Body) -> str:
    return str(meta(obj).get("name") or "")


def uid_of(obj: Body) -> str:
    return str(meta(obj).get("uid") or "")


def created(obj: Body) -> str:
    """The creationTimestamp as written (RFC 3339 in UTC sorts like time), "" when unknown."""
    return str(meta(obj).get("creationTimestamp") or "")


def is_terminating(obj: Body) -> bool:
    return bool(meta(obj).get("deletionTimestamp"))


def is_managed(obj: Body) -> bool:
    return labels(obj).get(LABEL_MANAGED_BY) == MANAGED_BY


def controller_uid(obj: Body) -> str:
    """The UID the controller ownerReference names, "" without one."""
    for ref in _mappings(meta(obj).get("ownerReferences")):
        if ref.get("controller"):
            return str(ref.get("uid") or "")
    return ""


def owned_by_other(obj: Body, owner_uid: str) -> bool:
    """True when a controller ownerReference names an owner other than `owner_uid` (never for an empty one)."""
    if not owner_uid:
        return False
    return any(ref.get("controller") and ref.get("uid") != owner_uid
               for ref in _mappings(meta(obj).get("ownerReferences")))


# -- conditions and pods ------------------------------------------------------------------------------------------


def conditions(obj: Body) -> list[Condition]:
    return [cast(Condition, c) for c in _mappings(status_of(obj).get("conditions"))]


def condition(obj: Body, condition_type: str) -> Condition | None:
    return next((c for c in conditions(obj) if c.get("type") == condition_type), None)


def condition_true(obj: Body, condition_type: str) -> bool:
    c = condition(obj, condition_type)
    return c is not None and c.get("status") == "True"


def phase(pod: Body) -> str:
    return str(status_of(pod).get("phase") or "Pending")


def pod_ip(pod: Body) -> str:
    return str(status_of(pod).get("podIP") or "")


def start_time(pod: Body) -> datetime | None:
    return parse_time(status_of(pod).get("startTime"))


def is_ready(pod: Body) -> bool:
    return phase(pod) == "Running" and condition_true(pod, "Ready")


def is_scheduled(pod: Body) -> bool:
    return bool(spec_of(pod).get("nodeName")) or condition_true(pod, "PodScheduled")


def is_active(pod: Body) -> bool:
    """Not terminating and not terminated: the pods a ReplicaSet would count."""
    return not is_terminating(pod) and phase(pod) not in ("Succeeded", "Failed")


def template_hash(pod: Body) -> str:
    return label(pod, LABEL_TEMPLATE_HASH)


def container_statuses(pod: Body, *, init: bool = False) -> list[ContainerStatus]:
    """The pod's container statuses (the init containers' first with `init`)."""
    status = status_of(pod)
    raw = [*_mappings(status.get("initContainerStatuses"))] if init else []
    raw += _mappings(status.get("containerStatuses"))
    return [cast(ContainerStatus, cs) for cs in raw]


def terminated(state: ContainerState | None) -> Terminated:
    return cast(Terminated, _mapping((state or {}).get("terminated")))


def waiting(state: ContainerState | None) -> Waiting:
    return cast(Waiting, _mapping((state or {}).get("waiting")))


# -- a Ray's children -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Observed:
    """The cached children of one `Ray` (decoded JSON dicts, read-only), as the owner-UID index returns them."""

    pods: Sequence[Body] = ()
    services: Sequence[Body] = ()
    config_maps: Sequence[Body] = ()
    jobs: Sequence[Body] = ()
    service_accounts: Sequence[Body] = ()
    roles: Sequence[Body] = ()  # RBAC Roles (the kind), not the pods' roles
    role_bindings: Sequence[Body] = ()

    def of_kind(self, kind: str) -> Sequence[Body]:
        return {
            "Pod": self.pods, "Service": self.services, "ConfigMap": self.config_maps, "Job": self.jobs,
            "ServiceAccount": self.service_accounts, "Role": self.roles, "RoleBinding": self.role_bindings,
        }.get(kind, ())


@dataclass(frozen=True)
class RayPods:
    """The pods of one `Ray` by role, each list in the order given (terminating and failed pods included)."""

    heads: tuple[Body, ...] = ()
    workers: tuple[Body, ...] = ()
    # Worker pods by the value of their group label.
    groups: Mapping[str, tuple[Body, ...]] = field(default_factory=dict)

    def scopes(self) -> dict[str, list[Body]]:
        """Pods by expectations scope: the heads under `head`, the workers under their group."""
        out: dict[str, list[Body]] = {HEAD_GROUP: list(self.heads)} if self.heads else {}
        for group, pods in self.groups.items():
            out.setdefault(group, []).extend(pods)
        return out


def classify(pods: Iterable[Body], owner_uid: str = "") -> RayPods:
    """The operator's head and worker pods among `pods`: labelled managed-by rayop, not controlled by an owner
    other than `owner_uid` (when given), with role head or worker; workers grouped by their group label."""
    heads: list[Body] = []
    workers: list[Body] = []
    groups: dict[str, list[Body]] = {}
    for pod in pods:
        if not is_managed(pod) or owned_by_other(pod, owner_uid):
            continue
        role = label(pod, LABEL_ROLE)
        if role == ROLE_HEAD:
            heads.append(pod)
        elif role == ROLE_WORKER:
            workers.append(pod)
            groups.setdefault(label(pod, LABEL_GROUP), []).append(pod)
    return RayPods(heads=tuple(heads), workers=tuple(workers), groups={g: tuple(p) for g, p in groups.items()})


def rank_heads(heads: Sequence[Body], want_hash: str | None) -> list[Body]:
    """The head pods that are not terminating, best first: the current template first, then a ready one, then the
    oldest (then by name). The first is the head the cluster runs on (`choose_head`)."""
    live = [p for p in heads if not is_terminating(p)]
    live.sort(key=lambda p: (template_hash(p) != want_hash, not is_ready(p), created(p), name_of(p)))
    return live


def choose_head(heads: Sequence[Body], want_hash: str | None) -> Body | None:
    """The one head both the plan and the status go by: the plan keeps it (and deletes any other live head), the
    status reports it (`headPodName`, `HeadReady`). The template comes before readiness because a head on an old
    template is replaced anyway: keeping a ready old head over a new one would delete the new one now and the old
    one right after, two head restarts for one. Without a current hash (invalid configuration) readiness decides."""
    ranked = rank_heads(heads, want_hash)
    return ranked[0] if ranked else None


# -- failed pods ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Failure:
    """Why a pod counts as failed, and when it failed (None: unknown)."""

    reason: str
    message: str
    at: datetime | None


def ray_container_statuses(pod: Body) -> list[ContainerStatus]:
    """The statuses of the pod's containers except the autoscaler sidecar (its restarts say nothing of Ray)."""
    return [cs for cs in container_statuses(pod) if cs.get("name") != AUTOSCALER_CONTAINER]


def pod_failure(pod: Body, options: Options, now: datetime | None = None, *,
                head_ready_since: datetime | None = None) -> Failure | None:
    """A failed pod: phase Failed or Succeeded (a Ray node never ends on its own), or a Ray container in
    CrashLoopBackOff with at least `crash_loop_restarts` restarts (the autoscaler sidecar does not count). With
    `now` (worker pods), also a pod Running but not Ready for `join_timeout_seconds` while the head is Ready (see
    `never_ready_deadline`): its Ray node never joined or is gone, and the autoscaler does not remove such a pod."""
    if phase(pod) in ("Failed", "Succeeded"):
        return _terminated_failure(pod)
    crash = _crash_loop(pod, options)
    if crash is not None:
        return crash
    if now is not None:
        deadline = never_ready_deadline(pod, options, head_ready_since)
        if deadline is not None and now >= deadline:
            return Failure(reason="NeverReady",
                           message=f"running but not ready for {options.join_timeout_seconds:.0f}s",
                           at=deadline)
    return None


def _terminated_failure(pod: Body) -> Failure:
    p = phase(pod)
    status = status_of(pod)
    finished = [parse_time(terminated(cs.get("state")).get("finishedAt")) for cs in ray_container_statuses(pod)]
    times = [t for t in finished if t is not None]
    ready = condition(pod, "Ready") or {}
    at = max(times) if times else parse_time(ready.get("lastTransitionTime")) or start_time(pod)
    reason = str(status.get("reason") or ("Completed" if p == "Succeeded" else "Failed"))
    return Failure(reason=f"Pod{p}" if reason in ("Failed", "Completed") else reason,
                   message=str(status.get("message") or f"pod {p.lower()}"), at=at)


def _crash_loop(pod: Body, options: Options) -> Failure | None:
    for cs in ray_container_statuses(pod):
        restarts = cs.get("restartCount") or 0
        if waiting(cs.get("state")).get("reason") == "CrashLoopBackOff" and restarts >= options.crash_loop_restarts:
            last = terminated(cs.get("lastState"))
            return Failure(
                reason="CrashLoopBackOff",
                message=f"container {cs.get('name')} restarted {restarts} times; last exit code "
                        f"{last.get('exitCode', '?')} ({last.get('reason', 'unknown')})",
                at=parse_time(last.get("finishedAt")),
            )
    return None


def head_ready_since(head: Body | None) -> datetime | None:
    """Since when the head pod is Ready (its Ready condition's transition, else its start, else the epoch); None
    while it is not."""
    if head is None or not is_ready(head):
        return None
    ready = condition(head, "Ready") or {}
    return parse_time(ready.get("lastTransitionTime")) or start_time(head) or datetime.fromtimestamp(0, timezone.utc)


def never_ready_deadline(pod: Body, options: Options, head_ready_since: datetime | None) -> datetime | None:
    """For a worker pod Running but not Ready: the moment it counts as failed (`NeverReady`), `join_timeout_seconds`
    after it started, turned not Ready or the head turned Ready, whichever came last; else None. While the head is
    not Ready (`head_ready_since` None) there is nothing to join: a worker waiting for the head's GCS never counts
    as failed, however long the head takes (it was created with the head)."""
    if phase(pod) != "Running" or is_ready(pod) or head_ready_since is None:
        return None
    ready = condition(pod, "Ready") or {}
    times = [t for t in (start_time(pod), parse_time(ready.get("lastTransitionTime")), head_ready_since)
             if t is not None]
    if not times:
        return None
    return max(times) + timedelta(seconds=options.join_timeout_seconds)


# -- ConfigMap data in the cache ----------------------------------------------------------------------------------

DIGEST_PREFIX = "rayop-digest:sha256:"


def data_digest(value: str) -> str:
    """What the operator's ConfigMap cache keeps of a data value (the value itself is tens of KiB per cluster: the
    autoscaler config and the in-pod programs)."""
    return DIGEST_PREFIX + hashlib.sha256(value.encode()).hexdigest()


def digest_config_map_data(obj: dict[str, Any]) -> dict[str, Any]:
    """The ConfigMap cache's transform: each `data` value replaced by its `data_digest` (in place)."""
    data = obj.get("data")
    if isinstance(data, dict):
        for key, value in data.items():
            if isinstance(value, str) and not value.startswith(DIGEST_PREFIX):
                data[key] = data_digest(value)
    return obj


def same_data(want: str, have: object) -> bool:
    """A desired data value against a cached one, which is a digest (or, from an uncached read, the value)."""
    return have == want or have == data_digest(want)
