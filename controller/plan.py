"""The pure plan: desired children (`rayop.build.Desired`) against observed objects in, ordered actions out.

Guarantees:
- No I/O, no clock (`now` is an argument), no environment. Observed objects are the decoded JSON dicts of the
  cache and are never modified; create actions carry manifests shared with `Desired` (read-only for the caller).
- The plan assumes the observed pods are complete: the caller leaves out a group (`paused`) while its expectations
  are unsatisfied, and the plan then proposes nothing for that group's pods. An object whose controller
  ownerReference names another owner is never touched.
- Scaling (per worker group, to `desired` = clamp(desiredWorkers or initialWorkers, min, max)):
  1. pods named in `workersToDelete` are deleted first;
  2. failed pods (phase Failed/Succeeded, or the Ray container in CrashLoopBackOff with at least
     `Options.crash_loop_restarts` restarts) are replaced — deleted and re-created in the same plan — once their
     back-off has passed (base * 2**n seconds, n = how often the slot was refilled, capped; reset after a pod ran
     `replace_backoff_reset_seconds`); until then `Plan.requeue_after` says when to look again;
  3. above `desired`, pods are removed in this order: not yet scheduled, pending, failed or not ready, and only
     then running-and-ready ones, idle before busy (`busy`: what Ray says runs there), old template first, newest
     first. With the autoscaler on, a running ready
     worker is removed only by name or while the group is above its maxWorkers: the autoscaler drains idle nodes
     and names them; the operator never kills a busy one to follow a lowered count;
  4. below `desired`, pods are created — but only once the head pod is running.
- Rolling updates: pods whose `ray.k8s.io/template-hash` differs from the group's are replaced in batches, one
  group at a time (in model order), at most maxSurge pods above `desired` (the group's rollingUpdate, else
  `Options.max_surge`; terminating pods count), and a ready old pod is deleted only while the ready pods of the
  group stay at or above `desired - maxUnavailable` (default 0) — so with the defaults the last ready old pod never
  goes before a new one is ready. `Plan.progress` says where the rolling group stands.
- The head: created when missing (after a terminating head is gone); recreated only when its own template hash
  changes (deleted first, created once gone: never two live heads) or when it failed (delete and create at once,
  with the same back-off as workers). Extra heads are deleted.
- Named children (RBAC, ConfigMap, Service) are created when missing, patched (JSON merge patch of the fields the
  operator owns) when they drifted, deleted when no longer wanted; immutable fields that drifted mean delete and
  re-create. One launcher Job exists per (head pod UID, config hash); older launcher Jobs are deleted.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Union

from rayop.api.types import HEAD_GROUP, LABEL_GROUP, LABEL_MANAGED_BY, LABEL_NODE_KIND
from rayop.build import (
    ANNOTATION_REPLACEMENTS,
    AUTOSCALER_CONTAINER,
    KIND_HEAD,
    KIND_LAUNCHER,
    KIND_WORKER,
    LABEL_TEMPLATE_HASH,
    MANAGED_BY,
    Desired,
    GroupPods,
    with_replacements,
)
from rayop.defaults import Options

# Reasons: CamelCase, usable as Event reasons.
REASON_MISSING = "Missing"
REASON_DRIFT = "Drifted"
REASON_IMMUTABLE = "ImmutableFieldChanged"
REASON_NOT_NEEDED = "NotNeeded"
REASON_SCALE_UP = "ScaleUp"
REASON_SCALE_DOWN = "ScaleDown"
REASON_WORKERS_TO_DELETE = "WorkersToDelete"
REASON_REPLACE_FAILED = "ReplaceFailed"
REASON_ROLLING_UPDATE = "RollingUpdate"
REASON_HEAD_CHANGED = "HeadTemplateChanged"
REASON_DUPLICATE_HEAD = "DuplicateHead"
REASON_GROUP_REMOVED = "GroupRemoved"
REASON_LAUNCH = "Launch"
REASON_STALE_LAUNCH = "StaleLaunch"
REASON_SUSPENDED = "Suspended"


# -- inputs and outputs -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Observed:
    """The cached children of one `Ray` (decoded JSON dicts, read-only), as the owner-UID index returns them."""

    pods: Sequence[Mapping[str, Any]] = ()
    services: Sequence[Mapping[str, Any]] = ()
    config_maps: Sequence[Mapping[str, Any]] = ()
    jobs: Sequence[Mapping[str, Any]] = ()
    service_accounts: Sequence[Mapping[str, Any]] = ()
    roles: Sequence[Mapping[str, Any]] = ()
    role_bindings: Sequence[Mapping[str, Any]] = ()
    # The pods of the launcher Jobs (owned by the Jobs, not the `Ray`): read for the launcher's summary only.
    launcher_pods: Sequence[Mapping[str, Any]] = ()

    def of_kind(self, kind: str) -> Sequence[Mapping[str, Any]]:
        return {
            "Pod": self.pods, "Service": self.services, "ConfigMap": self.config_maps, "Job": self.jobs,
            "ServiceAccount": self.service_accounts, "Role": self.roles, "RoleBinding": self.role_bindings,
        }.get(kind, ())


@dataclass(frozen=True)
class Create:
    """Create `manifest` (pods use generateName). `group` is the expectations scope for pods, else None."""

    manifest: Mapping[str, Any]
    reason: str
    message: str = ""
    group: str | None = None

    @property
    def kind(self) -> str:
        return str(self.manifest["kind"])


@dataclass(frozen=True)
class Delete:
    """Delete `kind` `name`, with a UID precondition. `propagation` is set for Jobs (Background)."""

    kind: str
    name: str
    uid: str
    reason: str
    message: str = ""
    group: str | None = None
    propagation: str | None = None


@dataclass(frozen=True)
class Patch:
    """Apply a JSON merge patch (`application/merge-patch+json`) to `kind` `name`."""

    kind: str
    name: str
    patch: Mapping[str, Any]
    reason: str
    message: str = ""


Action = Union[Create, Delete, Patch]


@dataclass(frozen=True)
class RollingProgress:
    """Where a group's rolling update stands in this plan: after its deletes, before its creates."""

    group: str
    updated: int  # live pods with the current template
    total: int  # live pods
    desired: int
    max_surge: int
    max_unavailable: int

    def describe(self) -> str:
        return (f"worker group {self.group}: {self.updated} of {self.total} pod(s) updated, {self.desired} "
                f"desired (maxSurge {self.max_surge}, maxUnavailable {self.max_unavailable})")


@dataclass(frozen=True)
class Plan:
    """What to do, in order (named children, head, worker groups, launcher, clean-up), and when to look again."""

    actions: tuple[Action, ...] = ()
    # Seconds until the earliest time-based decision of this plan is due (a back-off ends, a running worker that
    # is not ready reaches its join deadline); None when nothing waits on time.
    requeue_after: float | None = None
    # Why something is not done yet, for logs (e.g. "worker group gpu waits for the rolling update of cpu").
    notes: tuple[str, ...] = ()
    # The group rolling now, if any.
    progress: tuple[RollingProgress, ...] = ()

    @property
    def creates(self) -> tuple[Create, ...]:
        return tuple(a for a in self.actions if isinstance(a, Create))

    @property
    def deletes(self) -> tuple[Delete, ...]:
        return tuple(a for a in self.actions if isinstance(a, Delete))

    @property
    def patches(self) -> tuple[Patch, ...]:
        return tuple(a for a in self.actions if isinstance(a, Patch))


# -- reading pods -------------------------------------------------------------------------------------------------


def parse_time(value: Any) -> datetime | None:
    """An RFC 3339 timestamp as an aware datetime, or None."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    m = obj.get("metadata")
    return m if isinstance(m, Mapping) else {}


def labels(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    lab = meta(obj).get("labels")
    return lab if isinstance(lab, Mapping) else {}


def name_of(obj: Mapping[str, Any]) -> str:
    return str(meta(obj).get("name") or "")


def uid_of(obj: Mapping[str, Any]) -> str:
    return str(meta(obj).get("uid") or "")


def is_terminating(obj: Mapping[str, Any]) -> bool:
    return bool(meta(obj).get("deletionTimestamp"))


def _status(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    s = pod.get("status")
    return s if isinstance(s, Mapping) else {}


def phase(pod: Mapping[str, Any]) -> str:
    return str(_status(pod).get("phase") or "Pending")


def condition(obj: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    for c in _status(obj).get("conditions") or ():
        if isinstance(c, Mapping) and c.get("type") == kind:
            return c
    return None


def is_ready(pod: Mapping[str, Any]) -> bool:
    c = condition(pod, "Ready")
    return phase(pod) == "Running" and c is not None and c.get("status") == "True"


def is_scheduled(pod: Mapping[str, Any]) -> bool:
    spec = pod.get("spec")
    if isinstance(spec, Mapping) and spec.get("nodeName"):
        return True
    c = condition(pod, "PodScheduled")
    return c is not None and c.get("status") == "True"


def is_active(pod: Mapping[str, Any]) -> bool:
    """Not terminating and not terminated: the pods a ReplicaSet would count."""
    return not is_terminating(pod) and phase(pod) not in ("Succeeded", "Failed")


def template_hash(pod: Mapping[str, Any]) -> str:
    return str(labels(pod).get(LABEL_TEMPLATE_HASH) or "")


def _container_statuses(pod: Mapping[str, Any]) -> Iterable[Mapping[str, Any]]:
    for cs in _status(pod).get("containerStatuses") or ():
        if isinstance(cs, Mapping) and cs.get("name") != AUTOSCALER_CONTAINER:
            yield cs


@dataclass(frozen=True)
class Failure:
    """Why a pod counts as failed, and when it failed (None: unknown)."""

    reason: str
    message: str
    at: datetime | None


def pod_failure(pod: Mapping[str, Any], options: Options, now: datetime | None = None) -> Failure | None:
    """A failed pod: phase Failed or Succeeded (a Ray node never ends on its own), or a Ray container in
    CrashLoopBackOff with at least `crash_loop_restarts` restarts (the autoscaler sidecar does not count). With
    `now` (worker pods), also a pod Running but not Ready for `join_timeout_seconds`: its Ray node never joined or
    is gone, and the autoscaler does not remove such a pod."""
    p = phase(pod)
    status = _status(pod)
    if p in ("Failed", "Succeeded"):
        finished = [parse_time(((cs.get("state") or {}).get("terminated") or {}).get("finishedAt"))
                    for cs in _container_statuses(pod)]
        times = [t for t in finished if t is not None]
        ready = condition(pod, "Ready")
        at = max(times) if times else parse_time((ready or {}).get("lastTransitionTime")) or parse_time(
            status.get("startTime"))
        reason = str(status.get("reason") or ("Completed" if p == "Succeeded" else "Failed"))
        return Failure(reason=f"Pod{p}" if reason in ("Failed", "Completed") else reason,
                       message=str(status.get("message") or f"pod {p.lower()}"), at=at)
    for cs in _container_statuses(pod):
        waiting = (cs.get("state") or {}).get("waiting") or {}
        restarts = cs.get("restartCount") or 0
        if waiting.get("reason") == "CrashLoopBackOff" and restarts >= options.crash_loop_restarts:
            last = (cs.get("lastState") or {}).get("terminated") or {}
            return Failure(
                reason="CrashLoopBackOff",
                message=f"container {cs.get('name')} restarted {restarts} times; last exit code "
                        f"{last.get('exitCode', '?')} ({last.get('reason', 'unknown')})",
                at=parse_time(last.get("finishedAt")),
            )
    if now is not None:
        deadline = never_ready_deadline(pod, options)
        if deadline is not None and now >= deadline:
            return Failure(reason="NeverReady",
                           message=f"running but not ready for {options.join_timeout_seconds:.0f}s",
                           at=deadline)
    return None


def never_ready_deadline(pod: Mapping[str, Any], options: Options) -> datetime | None:
    """For a pod Running but not Ready: the moment it counts as failed (`NeverReady`); else None."""
    if phase(pod) != "Running" or is_ready(pod):
        return None
    ready = condition(pod, "Ready") or {}
    times = [t for t in (parse_time(_status(pod).get("startTime")), parse_time(ready.get("lastTransitionTime")))
             if t is not None]
    if not times:
        return None
    return max(times) + timedelta(seconds=options.join_timeout_seconds)


def replacements(pod: Mapping[str, Any]) -> int:
    annotations = meta(pod).get("annotations") or {}
    try:
        return max(0, int(annotations.get(ANNOTATION_REPLACEMENTS, 0)))
    except (TypeError, ValueError):
        return 0


def replace_delay(pod: Mapping[str, Any], failure: Failure, options: Options) -> tuple[float, int]:
    """(seconds from the failure until the pod may be replaced, replacement count its successor carries)."""
    count = replacements(pod)
    started = parse_time(_status(pod).get("startTime"))
    if failure.at is not None and started is not None and \
            (failure.at - started).total_seconds() >= options.replace_backoff_reset_seconds:
        count = 0
    delay = min(options.replace_backoff_seconds * (2 ** min(count, 30)), options.replace_backoff_max_seconds)
    return delay, count + 1


def _created(pod: Mapping[str, Any]) -> str:
    return str(meta(pod).get("creationTimestamp") or "")


def _owned_by_other(obj: Mapping[str, Any], owner_uid: str) -> bool:
    if not owner_uid:
        return False
    for ref in meta(obj).get("ownerReferences") or ():
        if isinstance(ref, Mapping) and ref.get("controller") and ref.get("uid") != owner_uid:
            return True
    return False


# -- the plan -----------------------------------------------------------------------------------------------------


@dataclass
class _Builder:
    desired: Desired
    now: datetime
    actions: list[Action] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    requeue: float | None = None
    busy: Collection[str] = frozenset()
    progress: list[RollingProgress] = field(default_factory=list)

    @property
    def options(self) -> Options:
        return self.desired.options

    def wait(self, seconds: float) -> None:
        seconds = max(seconds, 0.0)
        self.requeue = seconds if self.requeue is None else min(self.requeue, seconds)

    def delete(self, obj: Mapping[str, Any], reason: str, message: str, group: str | None = None,
               propagation: str | None = None) -> None:
        self.actions.append(Delete(kind=str(obj.get("kind") or "Pod"), name=name_of(obj), uid=uid_of(obj),
                                   reason=reason, message=message, group=group, propagation=propagation))

    def due(self, pod: Mapping[str, Any], failure: Failure) -> int | None:
        """The replacement count for a failed pod whose back-off is over; None (and a requeue) while it runs."""
        delay, count = replace_delay(pod, failure, self.options)
        if failure.at is None:
            return count
        remaining = (failure.at + timedelta(seconds=delay) - self.now).total_seconds()
        if remaining <= 0:
            return count
        self.wait(remaining)
        self.notes.append(f"pod {name_of(pod)} failed ({failure.reason}); replaced in {remaining:.0f}s")
        return None


def plan_cluster(desired: Desired, observed: Observed, now: datetime, *,
                 paused: Collection[str] = frozenset(), busy: Collection[str] = frozenset(),
                 suspended: bool = False) -> Plan:
    """Everything to do for one cluster. `paused`: group names (`head` for the head) whose expectations are not
    yet satisfied — their pods are left alone this time. `busy`: pod IPs of workers whose Ray node runs tasks or
    actors; among running ready workers, idle ones are removed first. `suspended` (spec.suspend): no pod is
    created; worker pods are deleted, idle first, and the head once no worker pod is left, launcher Jobs too; the
    named children stay."""
    b = _Builder(desired=desired, now=now, busy=busy)
    owner_uid = desired.owner.uid
    mine = [p for p in observed.pods if not _owned_by_other(p, owner_uid) and
            labels(p).get(LABEL_MANAGED_BY) == MANAGED_BY]
    _plan_singletons(b, observed, owner_uid)
    if suspended:
        _plan_suspended(b, mine, paused)
        for j in observed.jobs:
            if not _owned_by_other(j, owner_uid) and labels(j).get(LABEL_NODE_KIND) == KIND_LAUNCHER \
                    and not is_terminating(j):
                b.delete({**j, "kind": "Job"}, REASON_SUSPENDED, f"launcher Job {name_of(j)}: the cluster is "
                         "suspended", propagation="Background")
        return Plan(actions=tuple(b.actions), requeue_after=b.requeue, notes=tuple(b.notes))
    head, head_running = _plan_head(b, [p for p in mine if labels(p).get(LABEL_NODE_KIND) == KIND_HEAD],
                                    paused=HEAD_GROUP in paused)
    _plan_workers(b, [p for p in mine if labels(p).get(LABEL_NODE_KIND) == KIND_WORKER], paused, head_running)
    _plan_launcher(b, head, [j for j in observed.jobs if not _owned_by_other(j, owner_uid)
                             and labels(j).get(LABEL_NODE_KIND) == KIND_LAUNCHER])
    return Plan(actions=tuple(b.actions), requeue_after=b.requeue, notes=tuple(b.notes), progress=tuple(b.progress))


def _plan_suspended(b: _Builder, pods: Sequence[Mapping[str, Any]], paused: Collection[str]) -> None:
    workers = [p for p in pods if labels(p).get(LABEL_NODE_KIND) == KIND_WORKER]
    heads = [p for p in pods if labels(p).get(LABEL_NODE_KIND) == KIND_HEAD]
    for p in sorted(workers, key=lambda p: _scale_down_order(p, "", False, b.busy)):
        group = str(labels(p).get(LABEL_GROUP) or "")
        if group in paused or is_terminating(p):
            continue
        b.delete(p, REASON_SUSPENDED, f"worker {name_of(p)}: the cluster is suspended", group=group)
    if workers:
        b.notes.append(f"suspended: {len(workers)} worker pod(s) go before the head")
        return
    if HEAD_GROUP in paused:
        return
    for p in heads:
        if not is_terminating(p):
            b.delete(p, REASON_SUSPENDED, f"head pod {name_of(p)}: the cluster is suspended", group=HEAD_GROUP)


# -- named children -----------------------------------------------------------------------------------------------


def _label_drift(want: Mapping[str, Any], have: Mapping[str, Any]) -> dict[str, Any]:
    wanted = labels(want)
    current = labels(have)
    changed = {k: v for k, v in wanted.items() if current.get(k) != v}
    return {"metadata": {"labels": changed}} if changed else {}


def _normalized_ports(ports: Any, keys: Sequence[str]) -> list[dict[str, Any]]:
    return [{k: p.get(k) for k in keys} for p in ports or () if isinstance(p, Mapping)]


def _drift(want: Mapping[str, Any], have: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
    """(merge patch that brings `have` to `want` for the operator's fields, whether it must be re-created)."""
    patch = _label_drift(want, have)
    kind = want["kind"]
    if kind == "ConfigMap":
        data_want = want.get("data") or {}
        data_have = have.get("data") or {}
        changes: dict[str, Any] = {k: v for k, v in data_want.items() if data_have.get(k) != v}
        changes.update({k: None for k in data_have if k not in data_want})
        if changes:
            patch["data"] = changes
    elif kind == "Service":
        spec_want = want["spec"]
        spec_have = have.get("spec") or {}
        # Only what the manifest sets is compared: the API server fills in the rest (a cluster IP, node ports).
        if "clusterIP" in spec_want and (spec_have.get("clusterIP") or "None") != spec_want["clusterIP"]:
            return {}, True
        keys = ("name", "port", "targetPort", "protocol")
        changed = {}
        if _normalized_ports(spec_have.get("ports"), keys) != _normalized_ports(spec_want.get("ports"), keys):
            changed["ports"] = spec_want.get("ports")
        for key in ("selector", "publishNotReadyAddresses", "type"):
            if key in spec_want and spec_have.get(key) != spec_want[key]:
                changed[key] = spec_want[key]
        if changed:
            patch["spec"] = changed
    elif kind == "Role":
        if _normalized_rules(have.get("rules")) != _normalized_rules(want["rules"]):
            patch["rules"] = want["rules"]
    elif kind == "RoleBinding":
        if have.get("roleRef") != want["roleRef"]:
            return {}, True
        if have.get("subjects") != want["subjects"]:
            patch["subjects"] = want["subjects"]
    return patch, False


def _normalized_rules(rules: Any) -> list[dict[str, Any]]:
    keys = ("apiGroups", "resources", "resourceNames", "verbs", "nonResourceURLs")
    return [{k: list(r.get(k) or ()) for k in keys} for r in rules or () if isinstance(r, Mapping)]


_SINGLETON_KINDS = ("ServiceAccount", "Role", "RoleBinding", "ConfigMap", "Service")


def _plan_singletons(b: _Builder, observed: Observed, owner_uid: str) -> None:
    wanted = {(m["kind"], m["metadata"]["name"]): m for m in b.desired.singletons()}
    stale: list[Mapping[str, Any]] = []
    for kind in _SINGLETON_KINDS:
        for obj in observed.of_kind(kind):
            if _owned_by_other(obj, owner_uid) or labels(obj).get(LABEL_MANAGED_BY) != MANAGED_BY:
                continue
            if (kind, name_of(obj)) not in wanted and not is_terminating(obj):
                stale.append({**obj, "kind": kind})
    for (kind, name), want in wanted.items():
        have = next((o for o in observed.of_kind(kind) if name_of(o) == name), None)
        if have is None:
            b.actions.append(Create(manifest=want, reason=REASON_MISSING, message=f"{kind} {name} does not exist"))
            continue
        if _owned_by_other(have, owner_uid) or is_terminating(have):
            if _owned_by_other(have, owner_uid):
                b.notes.append(f"{kind} {name} belongs to another owner; not touched")
            continue
        patch, recreate = _drift(want, have)
        if recreate:
            b.delete({**have, "kind": kind}, REASON_IMMUTABLE, f"{kind} {name}: an immutable field changed; "
                     "re-created once deleted")
        elif patch:
            b.actions.append(Patch(kind=kind, name=name, patch=patch, reason=REASON_DRIFT,
                                   message=f"{kind} {name}: {', '.join(sorted(_paths(patch)))} updated"))
    for obj in stale:
        b.delete(obj, REASON_NOT_NEEDED, f"{obj['kind']} {name_of(obj)} is no longer needed")


def _paths(patch: Mapping[str, Any], prefix: str = "") -> list[str]:
    out: list[str] = []
    for k, v in patch.items():
        if isinstance(v, Mapping) and k in ("metadata", "spec"):
            out += _paths(v, f"{prefix}{k}.")
        else:
            out.append(prefix + k)
    return out


# -- the head -----------------------------------------------------------------------------------------------------


def _plan_head(b: _Builder, pods: Sequence[Mapping[str, Any]], *,
               paused: bool) -> tuple[Mapping[str, Any] | None, bool]:
    """Returns (the head pod the cluster runs on, or None; whether workers may be created)."""
    want = b.desired.head
    live = [p for p in pods if not is_terminating(p)]
    terminating = len(live) < len(pods)
    # The best head first: current template, ready, oldest.
    live.sort(key=lambda p: (template_hash(p) != want.template_hash, not is_ready(p), _created(p), name_of(p)))
    head = live[0] if live else None
    if paused:
        return head, head is not None and phase(head) == "Running"
    for extra in live[1:]:
        b.delete(extra, REASON_DUPLICATE_HEAD, f"head pod {name_of(extra)} is not the only head", group=HEAD_GROUP)
    if head is None:
        if terminating:
            b.notes.append("the head pod is terminating; a new one is created once it is gone")
        else:
            b.actions.append(Create(manifest=want.manifest, reason=REASON_MISSING, message="no head pod",
                                    group=HEAD_GROUP))
        return None, False
    failure = pod_failure(head, b.options)
    if failure is not None:
        count = b.due(head, failure)
        if count is not None:
            b.delete(head, REASON_REPLACE_FAILED, f"head pod {name_of(head)} failed: {failure.reason}: "
                     f"{failure.message}", group=HEAD_GROUP)
            b.actions.append(Create(manifest=with_replacements(want.manifest, count), reason=REASON_REPLACE_FAILED,
                                    message=f"replaces failed head pod {name_of(head)}", group=HEAD_GROUP))
            return None, False
        return head, False
    if template_hash(head) != want.template_hash:
        b.delete(head, REASON_HEAD_CHANGED, f"head pod {name_of(head)} has an outdated template; re-created once "
                 "deleted", group=HEAD_GROUP)
        return None, False
    return head, phase(head) == "Running"


# -- worker groups ------------------------------------------------------------------------------------------------


def _plan_workers(b: _Builder, pods: Sequence[Mapping[str, Any]], paused: Collection[str],
                  head_running: bool) -> None:
    by_group: dict[str, list[Mapping[str, Any]]] = {}
    for p in pods:
        by_group.setdefault(str(labels(p).get(LABEL_GROUP) or ""), []).append(p)
    rolling: str | None = None
    for gp in b.desired.workers:
        group_pods = by_group.pop(gp.group, [])
        outdated = any(template_hash(p) != gp.template_hash for p in group_pods if not is_terminating(p))
        may_roll = outdated and rolling is None
        if outdated and rolling is None:
            rolling = gp.group
        elif outdated:
            b.notes.append(f"worker group {gp.group} waits for the rolling update of {rolling}")
        if gp.group in paused:
            continue
        _plan_group(b, gp, group_pods, may_roll=may_roll, can_create=head_running)
    for group, group_pods in sorted(by_group.items()):
        if group in paused:
            continue
        for p in group_pods:
            if not is_terminating(p):
                b.delete(p, REASON_GROUP_REMOVED, f"worker group {group!r} no longer exists", group=group)


def pod_ip(pod: Mapping[str, Any]) -> str:
    return str(_status(pod).get("podIP") or "")


def _scale_down_order(pod: Mapping[str, Any], want_hash: str, broken: bool,
                      busy: Collection[str] = frozenset()) -> tuple[int, bool, float, str]:
    if not is_scheduled(pod):
        category = 0
    elif phase(pod) == "Pending":
        category = 1
    elif broken or not is_ready(pod):
        category = 2
    elif pod_ip(pod) not in busy:
        category = 3
    else:
        category = 4  # its Ray node runs tasks or actors: last
    # Old template first, then newest first.
    created = parse_time(_created(pod))
    return category, template_hash(pod) == want_hash, -(created.timestamp() if created else 0.0), name_of(pod)


def _plan_group(b: _Builder, gp: GroupPods, pods: Sequence[Mapping[str, Any]], *, may_roll: bool,
                can_create: bool) -> None:
    model = b.desired.model
    group = model.group(gp.group)
    max_workers = group.max_workers if group is not None else gp.desired
    autoscaling = model.autoscaling.enabled
    to_delete = set(model.workers_to_delete)
    want = gp.desired

    live: list[Mapping[str, Any]] = []
    refills: list[int] = []
    broken: set[str] = set()
    for p in sorted(pods, key=lambda p: (_created(p), name_of(p))):
        if is_terminating(p):
            continue
        if name_of(p) in to_delete:
            b.delete(p, REASON_WORKERS_TO_DELETE, f"worker {name_of(p)} is listed in spec.workersToDelete",
                     group=gp.group)
            continue
        failure = pod_failure(p, b.options, b.now)
        if failure is not None:
            count = b.due(p, failure)
            if count is not None:
                b.delete(p, REASON_REPLACE_FAILED, f"worker {name_of(p)} failed: {failure.reason}: "
                         f"{failure.message}", group=gp.group)
                refills.append(count)
                continue
            broken.add(name_of(p))
        else:
            deadline = never_ready_deadline(p, b.options)
            if deadline is not None:
                # Nothing else may happen to this pod: look again when it would count as never ready.
                b.wait((deadline - b.now).total_seconds())
        live.append(p)

    def order(p: Mapping[str, Any]) -> tuple[int, bool, float, str]:
        return _scale_down_order(p, gp.template_hash, name_of(p) in broken, b.busy)

    old = [p for p in live if template_hash(p) != gp.template_hash]
    removed: set[str] = set()
    if may_roll and old:
        surge = group.max_surge if group is not None and group.max_surge is not None else b.options.max_surge
        unavailable = group.max_unavailable or 0 if group is not None else 0
        # Pods still terminating (draining their Ray node) count against the surge: never more than desired +
        # maxSurge pods exist at once.
        terminating = sum(1 for p in pods if is_terminating(p) and phase(p) not in ("Succeeded", "Failed"))
        # Above desired + surge: trim like a scale-down first (the ready budget below handles the rest).
        limit = want + surge
        _scale_down(b, gp, live, len(live) - limit, order, autoscaling, max_workers, removed, REASON_SCALE_DOWN)
        remaining = [p for p in live if name_of(p) not in removed]
        ready = sum(1 for p in remaining if is_ready(p) and name_of(p) not in broken)
        budget = max(0, ready - (want - unavailable))
        for p in sorted((p for p in remaining if template_hash(p) != gp.template_hash), key=order):
            healthy = is_ready(p) and name_of(p) not in broken
            if healthy:
                if budget <= 0:
                    continue
                budget -= 1
            removed.add(name_of(p))
            b.delete(p, REASON_ROLLING_UPDATE, f"worker {name_of(p)} has an outdated template", group=gp.group)
        remaining = [p for p in live if name_of(p) not in removed]
        old_left = any(template_hash(p) != gp.template_hash for p in remaining)
        target = want + surge if old_left else want
        missing = target - len(remaining) - (terminating if old_left else 0)
        reason = REASON_ROLLING_UPDATE
        updated = sum(1 for p in remaining if template_hash(p) == gp.template_hash)
        b.progress.append(RollingProgress(group=gp.group, updated=updated, total=len(remaining),
                                          desired=want, max_surge=surge, max_unavailable=unavailable))
    else:
        excess = len(live) - want
        if excess > 0:
            _scale_down(b, gp, live, excess, order, autoscaling, max_workers, removed, REASON_SCALE_DOWN)
        missing = want - (len(live) - len(removed))
        reason = REASON_SCALE_UP
    if missing <= 0:
        return
    if not can_create:
        b.notes.append(f"worker group {gp.group}: {missing} pod(s) wait for the head pod to run")
        return
    for i in range(missing):
        if i < len(refills):
            b.actions.append(Create(manifest=with_replacements(gp.manifest, refills[i]), reason=REASON_REPLACE_FAILED,
                                    message=f"worker group {gp.group}: replaces a failed pod", group=gp.group))
        else:
            b.actions.append(Create(manifest=gp.manifest, reason=reason,
                                    message=f"worker group {gp.group}: {want} desired", group=gp.group))


def _scale_down(b: _Builder, gp: GroupPods, live: Sequence[Mapping[str, Any]], excess: int, order: Any,
                autoscaling: bool, max_workers: int, removed: set[str], reason: str) -> None:
    if excess <= 0:
        return
    remaining = sum(1 for p in live if name_of(p) not in removed)
    for p in sorted(live, key=order):
        if excess <= 0:
            break
        if name_of(p) in removed:
            continue
        # With the autoscaler on, running ready workers go only while the group is above its maximum.
        if order(p)[0] >= 3 and autoscaling and remaining <= max_workers:
            b.notes.append(f"worker group {gp.group}: {excess} pod(s) above desired are running and ready; "
                           "the autoscaler removes idle ones by name")
            break
        remaining -= 1
        removed.add(name_of(p))
        excess -= 1
        b.delete(p, reason, f"worker group {gp.group}: {gp.desired} desired", group=gp.group)


# -- the launcher -------------------------------------------------------------------------------------------------


def _plan_launcher(b: _Builder, head: Mapping[str, Any] | None, jobs: Sequence[Mapping[str, Any]]) -> None:
    if head is None or not uid_of(head):
        return  # no launch without a head; the last launch stays visible meanwhile
    name = b.desired.launcher_name(uid_of(head))
    if not any(name_of(j) == name for j in jobs):
        b.actions.append(Create(manifest=b.desired.launcher_job(uid_of(head)), reason=REASON_LAUNCH,
                                message=f"launch for head pod {name_of(head)}"))
    for j in jobs:
        if name_of(j) != name and not is_terminating(j):
            b.delete({**j, "kind": "Job"}, REASON_STALE_LAUNCH, f"launcher Job {name_of(j)} belongs to an earlier "
                     "launch", propagation="Background")
