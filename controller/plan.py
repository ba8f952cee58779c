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
  4. below `desired`, pods are created — with the head: once a head pod exists or is created in the same plan
     (not while the head is failed, outdated or terminating); a worker waits for the head's GCS before `ray start`.
- Rolling updates: pods whose `ray.k8s.io/template-hash` differs from the group's are replaced in batches, one
  group at a time (in model order), at most maxSurge pods above `desired` (the group's rollingUpdate, else
  `Options.max_surge`; terminating pods count), and a ready old pod is deleted only while the ready pods of the
  group stay at or above `desired - maxUnavailable` (default 0) — so with the defaults the last ready old pod never
  goes before a new one is ready. `Plan.progress` says where the rolling group stands.
- The head: created when missing (after a terminating head is gone); recreated only when its own template hash
  changes (deleted first, created once gone: never two live heads) or when it failed (delete and create at once,
  with the same back-off as workers). Extra heads are deleted: the one kept is `rayop.objects.choose_head`'s, the
  one the status reports.
- Named children (RBAC, ConfigMap, Service) are created when missing, patched (JSON merge patch of the fields the
  operator owns) when they drifted, deleted when no longer wanted; immutable fields that drifted mean delete and
  re-create.
- The launcher: one launch per (head pod UID, config hash), started once that head pod is Ready, run by bare
  launcher pods one attempt at a time with a Job's retry policy (`rayop.launch`); the pods of earlier launches are
  deleted, and so are launcher Jobs (how earlier versions of the operator ran launches).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Union

from rayop.api.types import HEAD_GROUP
from rayop.build import Desired, GroupPods, with_replacements
from rayop.defaults import Options
from rayop.launch import assess, attempts_of, is_launcher, launch_key, pinned
from rayop.objects import (
    ANNOTATION_REPLACEMENTS,
    LABEL_GROUP,
    LABEL_ROLE,
    ROLE_LAUNCHER,
    JSON,
    Body,
    Failure,
    Observed,
    RayPods,
    annotations_of,
    classify,
    created,
    head_ready_since,
    is_managed,
    is_ready,
    is_scheduled,
    is_terminating,
    label,
    labels,
    name_of,
    never_ready_deadline,
    owned_by_other,
    parse_time,
    phase,
    pod_failure,
    pod_ip,
    rank_heads,
    same_data,
    spec_of,
    start_time,
    template_hash,
    uid_of,
)

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
class Create:
    """Create `manifest` (pods use generateName). `group` is the expectations scope for pods, else None."""

    manifest: Body
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
    patch: Body
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


# -- failed pods ------------------------------------------------------------------------------------------------


def replacements(pod: Body) -> int:
    try:
        return max(0, int(str(annotations_of(pod).get(ANNOTATION_REPLACEMENTS, 0))))
    except (TypeError, ValueError):
        return 0


def replace_delay(pod: Body, failure: Failure, options: Options) -> tuple[float, int]:
    """(seconds from the failure until the pod may be replaced, replacement count its successor carries)."""
    count = replacements(pod)
    started = start_time(pod)
    if failure.at is not None and started is not None and \
            (failure.at - started).total_seconds() >= options.replace_backoff_reset_seconds:
        count = 0
    delay = min(options.replace_backoff_seconds * (2 ** min(count, 30)), options.replace_backoff_max_seconds)
    return delay, count + 1


# -- the plan -----------------------------------------------------------------------------------------------------


@dataclass
class _Draft:
    """The plan while it is drawn up: the actions and notes so far, the earliest time to look again."""

    desired: Desired
    now: datetime
    actions: list[Action] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    requeue: float | None = None
    busy: Collection[str] = frozenset()
    progress: list[RollingProgress] = field(default_factory=list)
    pod_creates: int = 0
    # Since when the head the workers join is Ready (None while it is not): a worker's join timeout counts from it.
    head_ready_since: datetime | None = None

    @property
    def options(self) -> Options:
        return self.desired.options

    def wait(self, seconds: float) -> None:
        seconds = max(seconds, 0.0)
        self.requeue = seconds if self.requeue is None else min(self.requeue, seconds)

    def create(self, manifest: Body, reason: str, message: str, group: str | None = None) -> None:
        self.actions.append(Create(manifest=manifest, reason=reason, message=message, group=group))
        if manifest.get("kind") == "Pod":
            self.pod_creates += 1

    def delete(self, obj: Body, reason: str, message: str, group: str | None = None, *, kind: str = "Pod",
               propagation: str | None = None) -> None:
        self.actions.append(Delete(kind=kind, name=name_of(obj), uid=uid_of(obj), reason=reason, message=message,
                                   group=group, propagation=propagation))

    def due(self, pod: Body, failure: Failure) -> int | None:
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

    def plan(self) -> Plan:
        return Plan(actions=tuple(self.actions), requeue_after=self.requeue, notes=tuple(self.notes),
                    progress=tuple(self.progress))


def plan_cluster(desired: Desired, observed: Observed, now: datetime, *,
                 paused: Collection[str] = frozenset(), busy: Collection[str] = frozenset(),
                 suspended: bool = False) -> Plan:
    """Everything to do for one cluster. `paused`: group names (`head` for the head) whose expectations are not
    yet satisfied — their pods are left alone this time. `busy`: pod IPs of workers whose Ray node runs tasks or
    actors; among running ready workers, idle ones are removed first. `suspended` (spec.suspend): no pod is
    created; worker pods are deleted, idle first, and the head once no worker pod is left, launcher pods too; the
    named children stay."""
    b = _Draft(desired=desired, now=now, busy=busy)
    owner_uid = desired.owner.uid
    pods = classify(observed.pods, owner_uid)
    launchers = [p for p in observed.pods if is_launcher(p) and not owned_by_other(p, owner_uid)]
    old_jobs = [j for j in observed.jobs if not owned_by_other(j, owner_uid) and label(j, LABEL_ROLE) == ROLE_LAUNCHER]
    for j in old_jobs:
        if not is_terminating(j):
            b.delete(j, REASON_STALE_LAUNCH, f"launcher Job {name_of(j)}: launches run as pods now", kind="Job",
                     propagation="Background")
    # The head Service is first created once a head pod has an IP: created before, it made the endpoint controllers
    # write its Endpoints and EndpointSlice twice (empty, then with the head), and nothing can reach the head through
    # it before that anyway (it publishes the head's address, ready or not). Once it exists it stays.
    waiting = {} if any(pod_ip(p) for p in pods.heads) else {
        ("Service", name_of(desired.service)): "created once the head pod has an IP"}
    _plan_singletons(b, observed, owner_uid, waiting=waiting)
    if suspended:
        _plan_suspended(b, pods, paused)
        for p in launchers:
            if not is_terminating(p):
                b.delete(p, REASON_SUSPENDED, f"launcher pod {name_of(p)}: the cluster is suspended")
        return b.plan()
    head, with_head = _plan_head(b, pods.heads, paused=HEAD_GROUP in paused)
    b.head_ready_since = head_ready_since(head)
    _plan_workers(b, pods, paused, with_head)
    _plan_launcher(b, head, launchers)
    return b.plan()


def _plan_suspended(b: _Draft, pods: RayPods, paused: Collection[str]) -> None:
    for p in sorted(pods.workers, key=lambda p: _scale_down_order(p, "", False, b.busy)):
        group = label(p, LABEL_GROUP)
        if group in paused or is_terminating(p):
            continue
        b.delete(p, REASON_SUSPENDED, f"worker {name_of(p)}: the cluster is suspended", group=group)
    if pods.workers:
        b.notes.append(f"suspended: {len(pods.workers)} worker pod(s) go before the head")
        return
    if HEAD_GROUP in paused:
        return
    for p in pods.heads:
        if not is_terminating(p):
            b.delete(p, REASON_SUSPENDED, f"head pod {name_of(p)}: the cluster is suspended", group=HEAD_GROUP)


# -- named children -----------------------------------------------------------------------------------------------


def _label_drift(want: Body, have: Body) -> JSON:
    wanted = labels(want)
    current = labels(have)
    changed = {k: v for k, v in wanted.items() if current.get(k) != v}
    return {"metadata": {"labels": changed}} if changed else {}


def _normalized(items: object, keys: Sequence[str]) -> list[JSON]:
    """List entries (Service ports, Role rules) reduced to `keys`, for comparison."""
    if not isinstance(items, (list, tuple)):
        return []
    return [{k: item.get(k) for k in keys} for item in items if isinstance(item, Mapping)]


_PORT_KEYS = ("name", "port", "targetPort", "protocol")
_RULE_KEYS = ("apiGroups", "resources", "resourceNames", "verbs", "nonResourceURLs")


def _normalized_rules(rules: object) -> list[JSON]:
    return [{k: list(r.get(k) or ()) for k in _RULE_KEYS} for r in _normalized(rules, _RULE_KEYS)]


def _drift(want: Body, have: Body) -> tuple[JSON, bool]:
    """(merge patch that brings `have` to `want` for the operator's fields, whether it must be re-created)."""
    patch = _label_drift(want, have)
    kind = want["kind"]
    if kind == "ConfigMap":
        data_want = want.get("data") or {}
        data_have = have.get("data") or {}
        changes: JSON = {k: v for k, v in data_want.items() if not same_data(v, data_have.get(k))}
        changes.update({k: None for k in data_have if k not in data_want})
        if changes:
            patch["data"] = changes
    elif kind == "Service":
        service, recreate = _service_drift(want["spec"], spec_of(have))
        if recreate:
            return {}, True
        if service:
            patch["spec"] = service
    elif kind == "Role":
        if _normalized_rules(have.get("rules")) != _normalized_rules(want["rules"]):
            patch["rules"] = want["rules"]
    elif kind == "RoleBinding":
        if have.get("roleRef") != want["roleRef"]:
            return {}, True
        if have.get("subjects") != want["subjects"]:
            patch["subjects"] = want["subjects"]
    return patch, False


def _service_drift(spec_want: Body, spec_have: Body) -> tuple[JSON, bool]:
    """(the spec fields to patch, whether the Service must be re-created). Only what the manifest sets is compared:
    the API server fills in the rest (a cluster IP, node ports)."""
    if "clusterIP" in spec_want and (spec_have.get("clusterIP") or "None") != spec_want["clusterIP"]:
        return {}, True
    changed: JSON = {}
    if _normalized(spec_have.get("ports"), _PORT_KEYS) != _normalized(spec_want.get("ports"), _PORT_KEYS):
        changed["ports"] = spec_want.get("ports")
    for key in ("selector", "publishNotReadyAddresses", "type"):
        if key in spec_want and spec_have.get(key) != spec_want[key]:
            changed[key] = spec_want[key]
    return changed, False


_SINGLETON_KINDS = ("ServiceAccount", "Role", "RoleBinding", "ConfigMap", "Service")


def _plan_singletons(b: _Draft, observed: Observed, owner_uid: str, *,
                     waiting: Mapping[tuple[str, str], str]) -> None:
    """The named children. `waiting`: (kind, name) of missing ones not created yet, and why (a note)."""
    wanted = {(m["kind"], m["metadata"]["name"]): m for m in b.desired.singletons()}
    stale: list[tuple[str, Body]] = []
    for kind in _SINGLETON_KINDS:
        for obj in observed.of_kind(kind):
            if owned_by_other(obj, owner_uid) or not is_managed(obj):
                continue
            if (kind, name_of(obj)) not in wanted and not is_terminating(obj):
                stale.append((kind, obj))
    for (kind, name), want in wanted.items():
        have = next((o for o in observed.of_kind(kind) if name_of(o) == name), None)
        if have is None:
            why = waiting.get((kind, name))
            if why:
                b.notes.append(f"{kind} {name}: {why}")
                continue
            b.create(want, REASON_MISSING, f"{kind} {name} does not exist")
            continue
        if owned_by_other(have, owner_uid) or is_terminating(have):
            if owned_by_other(have, owner_uid):
                b.notes.append(f"{kind} {name} belongs to another owner; not touched")
            continue
        patch, recreate = _drift(want, have)
        if recreate:
            b.delete(have, REASON_IMMUTABLE, f"{kind} {name}: an immutable field changed; re-created once deleted",
                     kind=kind)
        elif patch:
            b.actions.append(Patch(kind=kind, name=name, patch=patch, reason=REASON_DRIFT,
                                   message=f"{kind} {name}: {', '.join(sorted(_paths(patch)))} updated"))
    for kind, obj in stale:
        b.delete(obj, REASON_NOT_NEEDED, f"{kind} {name_of(obj)} is no longer needed", kind=kind)


def _paths(patch: Body, prefix: str = "") -> list[str]:
    out: list[str] = []
    for k, v in patch.items():
        if isinstance(v, Mapping) and k in ("metadata", "spec"):
            out += _paths(v, f"{prefix}{k}.")
        else:
            out.append(prefix + k)
    return out


# -- the head -----------------------------------------------------------------------------------------------------


def _plan_head(b: _Draft, pods: Sequence[Body], *, paused: bool) -> tuple[Body | None, bool]:
    """Returns (the head pod the cluster runs on, or None; whether workers may be created: a head pod exists and is
    not failed or outdated, or one is created in this plan — workers start with the head and wait for its GCS)."""
    want = b.desired.head
    live = rank_heads(pods, want.template_hash)  # live[0] is `choose_head`'s head
    head = live[0] if live else None
    if paused:
        return head, head is not None
    for extra in live[1:]:
        b.delete(extra, REASON_DUPLICATE_HEAD, f"head pod {name_of(extra)} is not the only head", group=HEAD_GROUP)
    if head is None:
        if len(live) < len(pods):
            b.notes.append("the head pod is terminating; a new one is created once it is gone")
            return None, False
        b.create(want.manifest, REASON_MISSING, "no head pod", group=HEAD_GROUP)
        return None, True
    failure = pod_failure(head, b.options)
    if failure is not None:
        count = b.due(head, failure)
        if count is not None:
            b.delete(head, REASON_REPLACE_FAILED, f"head pod {name_of(head)} failed: {failure.reason}: "
                     f"{failure.message}", group=HEAD_GROUP)
            b.create(with_replacements(want.manifest, count), REASON_REPLACE_FAILED,
                     f"replaces failed head pod {name_of(head)}", group=HEAD_GROUP)
            return None, True
        return head, False
    if template_hash(head) != want.template_hash:
        b.delete(head, REASON_HEAD_CHANGED, f"head pod {name_of(head)} has an outdated template; re-created once "
                 "deleted", group=HEAD_GROUP)
        return None, False
    return head, True


# -- worker groups ------------------------------------------------------------------------------------------------


def _plan_workers(b: _Draft, pods: RayPods, paused: Collection[str], with_head: bool) -> None:
    by_group = dict(pods.groups)
    rolling: str | None = None
    for gp in b.desired.workers:
        group_pods = by_group.pop(gp.group, ())
        outdated = any(template_hash(p) != gp.template_hash for p in group_pods if not is_terminating(p))
        may_roll = outdated and rolling is None
        if outdated and rolling is None:
            rolling = gp.group
        elif outdated:
            b.notes.append(f"worker group {gp.group} waits for the rolling update of {rolling}")
        if gp.group in paused:
            continue
        _plan_group(b, gp, group_pods, may_roll=may_roll, can_create=with_head)
    for group, group_pods in sorted(by_group.items()):
        if group in paused:
            continue
        for p in group_pods:
            if not is_terminating(p):
                b.delete(p, REASON_GROUP_REMOVED, f"worker group {group!r} no longer exists", group=group)


_Order = Callable[[Body], tuple[int, bool, float, str]]


def _scale_down_order(pod: Body, want_hash: str, broken: bool,
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
    when = parse_time(created(pod))
    return category, template_hash(pod) == want_hash, -(when.timestamp() if when else 0.0), name_of(pod)


@dataclass
class _Group:
    """One worker group while it is planned: its wanted pods, and what happened to its live pods so far."""

    pods: GroupPods
    want: int
    max_workers: int
    autoscaling: bool
    live: list[Body] = field(default_factory=list)  # not terminating, not deleted (yet) by this plan
    refills: list[int] = field(default_factory=list)  # replacement counts of the failed pods deleted now
    broken: set[str] = field(default_factory=set)  # failed pods whose back-off still runs
    removed: set[str] = field(default_factory=set)  # live pods this plan deletes

    @property
    def name(self) -> str:
        return self.pods.group

    def order(self, busy: Collection[str]) -> _Order:
        return lambda p: _scale_down_order(p, self.pods.template_hash, name_of(p) in self.broken, busy)

    def remaining(self) -> list[Body]:
        return [p for p in self.live if name_of(p) not in self.removed]

    def outdated(self, pods: Sequence[Body]) -> list[Body]:
        return [p for p in pods if template_hash(p) != self.pods.template_hash]

    def healthy(self, pod: Body) -> bool:
        return is_ready(pod) and name_of(pod) not in self.broken


def _plan_group(b: _Draft, gp: GroupPods, pods: Sequence[Body], *, may_roll: bool, can_create: bool) -> None:
    model = b.desired.model
    group = model.group(gp.group)
    g = _Group(pods=gp, want=gp.desired, max_workers=group.max_workers if group is not None else gp.desired,
               autoscaling=model.autoscaling.enabled)
    _sort_live(b, g, pods, frozenset(model.workers_to_delete))
    surge = group.max_surge if group is not None and group.max_surge is not None else b.options.max_surge
    if may_roll and g.outdated(g.live):
        unavailable = group.max_unavailable or 0 if group is not None else 0
        missing = _roll(b, g, pods, surge, unavailable)
        reason = REASON_ROLLING_UPDATE
    else:
        excess = len(g.live) - g.want
        if excess > 0:
            _scale_down(b, g, excess)
        missing = g.want - len(g.remaining())
        # The tail of a rolling update: old pods still draining count against the surge until they are gone.
        draining = sum(1 for p in g.outdated(pods) if is_terminating(p) and phase(p) not in ("Succeeded", "Failed"))
        if draining:
            missing = min(missing, g.want + surge - len(g.remaining()) - draining)
        reason = REASON_SCALE_UP
    if missing <= 0:
        return
    if not can_create:
        b.notes.append(f"worker group {gp.group}: {missing} pod(s) wait for a head pod that is not failed, outdated "
                       "or terminating")
        return
    room = max(b.options.create_burst - b.pod_creates, 0)
    if missing > room:
        b.notes.append(f"worker group {gp.group}: {missing - room} pod(s) left for the next reconciles "
                       f"(at most {b.options.create_burst} pod creates per reconcile)")
        b.wait(1.0)
        missing = room
    for i in range(missing):
        if i < len(g.refills):
            b.create(with_replacements(gp.manifest, g.refills[i]), REASON_REPLACE_FAILED,
                     f"worker group {gp.group}: replaces a failed pod", group=gp.group)
        else:
            b.create(gp.manifest, reason, f"worker group {gp.group}: {g.want} desired", group=gp.group)


def _sort_live(b: _Draft, g: _Group, pods: Sequence[Body], to_delete: Collection[str]) -> None:
    """Deletes the pods named in workersToDelete and the failed ones whose back-off is over; the others are live."""
    for p in sorted(pods, key=lambda p: (created(p), name_of(p))):
        if is_terminating(p):
            continue
        if name_of(p) in to_delete:
            b.delete(p, REASON_WORKERS_TO_DELETE, f"worker {name_of(p)} is listed in spec.workersToDelete",
                     group=g.name)
            continue
        failure = pod_failure(p, b.options, b.now, head_ready_since=b.head_ready_since)
        if failure is not None:
            count = b.due(p, failure)
            if count is not None:
                b.delete(p, REASON_REPLACE_FAILED, f"worker {name_of(p)} failed: {failure.reason}: "
                         f"{failure.message}", group=g.name)
                g.refills.append(count)
                continue
            g.broken.add(name_of(p))
        else:
            deadline = never_ready_deadline(p, b.options, b.head_ready_since)
            if deadline is not None:
                # Nothing else may happen to this pod: look again when it would count as never ready.
                b.wait((deadline - b.now).total_seconds())
        g.live.append(p)


def _roll(b: _Draft, g: _Group, pods: Sequence[Body], surge: int, unavailable: int) -> int:
    """One step of a rolling update: deletes old pods within the surge and ready budget; returns how many pods to
    create."""
    # Pods still terminating (draining their Ray node) count against the surge: never more than desired +
    # maxSurge pods exist at once.
    terminating = sum(1 for p in pods if is_terminating(p) and phase(p) not in ("Succeeded", "Failed"))
    # Above desired + surge: trim like a scale-down first (the ready budget below handles the rest).
    _scale_down(b, g, len(g.live) - (g.want + surge))
    remaining = g.remaining()
    budget = max(0, sum(1 for p in remaining if g.healthy(p)) - (g.want - unavailable))
    for p in sorted(g.outdated(remaining), key=g.order(b.busy)):
        if g.healthy(p):
            if budget <= 0:
                continue
            budget -= 1
        g.removed.add(name_of(p))
        b.delete(p, REASON_ROLLING_UPDATE, f"worker {name_of(p)} has an outdated template", group=g.name)
    remaining = g.remaining()
    old_left = bool(g.outdated(remaining))
    updated = len(remaining) - len(g.outdated(remaining))
    b.progress.append(RollingProgress(group=g.name, updated=updated, total=len(remaining), desired=g.want,
                                      max_surge=surge, max_unavailable=unavailable))
    target = g.want + surge if old_left else g.want
    # Pods this step deletes drain as long as the ones already terminating: both count against the surge.
    going = terminating + len(g.removed)
    return min(target - len(remaining), g.want + surge - len(remaining) - going)


def _scale_down(b: _Draft, g: _Group, excess: int) -> None:
    if excess <= 0:
        return
    order = g.order(b.busy)
    remaining = len(g.remaining())
    for p in sorted(g.live, key=order):
        if excess <= 0:
            break
        if name_of(p) in g.removed:
            continue
        # With the autoscaler on, running ready workers go only while the group is above its maximum.
        if order(p)[0] >= 3 and g.autoscaling and remaining <= g.max_workers:
            b.notes.append(f"worker group {g.name}: {excess} pod(s) above desired are running and ready; "
                           "the autoscaler removes idle ones by name")
            break
        remaining -= 1
        g.removed.add(name_of(p))
        excess -= 1
        b.delete(p, REASON_SCALE_DOWN, f"worker group {g.name}: {g.want} desired", group=g.name)


# -- the launcher -------------------------------------------------------------------------------------------------


def _plan_launcher(b: _Draft, head: Body | None, launchers: Sequence[Body]) -> None:
    if head is None or not uid_of(head):
        return  # no launch without a head; the last launch stays visible meanwhile
    key = (uid_of(head), b.desired.config_hash)
    for p in launchers:
        if launch_key(p) != key and not is_terminating(p):
            b.delete(p, REASON_STALE_LAUNCH, f"launcher pod {name_of(p)} belongs to an earlier launch")
    # Started once the head is Ready: before, the launcher could only wait for the GCS (and its pod would compete
    # with the cluster's own pods for the scheduler and the API server).
    if not is_ready(head):
        return
    launch = assess(attempts_of(launchers, key), b.now, b.options)
    if launch.next_attempt is None:
        return
    if launch.retry_at is not None and launch.retry_at > b.now:
        b.wait((launch.retry_at - b.now).total_seconds())
        b.notes.append(f"launcher attempt {launch.next_attempt} starts after a back-off")
        return
    attempt = launch.next_attempt
    suffix = f", attempt {attempt + 1}" if attempt else ""
    # The first attempt goes to the head's Node: not scheduled, it costs the API server no binding and no
    # scheduler Event. A refusal there is not a failure (`rayop.launch`); the next attempts are scheduled.
    node = str(spec_of(head).get("nodeName") or "") if pinned(attempt) else ""
    b.create(b.desired.launcher_pod(uid_of(head), attempt, node_name=node or None), REASON_LAUNCH,
             f"launch for head pod {name_of(head)}{suffix}")
