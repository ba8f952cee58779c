"""The Ray reconciler: one `Ray` key in, its children and status brought to what the `Ray` says.

Guarantees:
- Level-triggered: each call reads the `Ray` and its children from the informers' caches (children found through
  the owner-UID index, so only objects this `Ray` controls are seen), converts the `Ray` to the effective model,
  builds the desired children, plans against what is observed, applies the plan and writes the status. It never
  branches on what event caused it.
- No duplicate pods from a stale cache: every pod create and delete is recorded as an expectation of its worker
  group (or the head); a group whose expectations the cache has not confirmed yet is left out of the plan
  (`paused`) until it has. A create answered AlreadyExists and a delete answered NotFound count as done; deletes
  carry a UID precondition so a newer object of the same name is never removed.
- Invalid configuration (`ConfigurationError`) is not retried: the status says why (`ConfigurationValid=False`), a
  Warning Event is recorded once per generation, and nothing is created, changed or deleted — running pods stay.
- A write the API server refuses does not stop the others of other kinds or groups; creates for a pod group stop
  at the group's first refusal (the rest would fail alike). Refusals are reported in the status
  (`ReplicaFailure`, with the server's message) and as Warning Events; the key is retried with back-off.
- Status goes through the `/status` subresource as a JSON merge patch, and only when it differs from the stored one.
- Events: one Normal Event per verb and reconcile (`Created`, `Deleted`, `Updated`) naming every child that
  verb touched, and why; a Warning for every refused write.
- GCS fault tolerance: a `Ray` with `spec.gcsFaultTolerance` gets the finalizer `ray.k8s.io/gcs-cleanup` (one
  patch, once); when it is deleted, its pods go at once, a clean-up Job deletes its keys from Redis, and the
  finalizer is removed when the Job ended or at a deadline (`rayop.gcscleanup`). A `Ray` without the block costs
  no write for this.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Protocol, TypedDict

import structlog

from rayop.api.convert import effective_cluster
from rayop.api.model import ClusterModel, ConfigurationError
from rayop.api.types import GROUP, HEAD_GROUP, KIND, PLURAL, VERSION
from rayop.autoscaler import inpod_files
from rayop.build import build_children, build_gcs_cleanup_job, gcs_cleanup_job_name, storage_namespace
from rayop.gcscleanup import FINALIZER as GCS_FINALIZER
from rayop.gcscleanup import Cleanup, finalizers, has_finalizer, plan_cleanup, wants_finalizer
from rayop.defaults import Options
from rayop.expectations import Expectations
from rayop.objects import (
    DASHBOARD_PORT,
    LABEL_MANAGED_BY,
    LABEL_ROLE,
    MANAGED_BY,
    ROLE_HEAD,
    ROLE_WORKER,
    Observed,
    classify,
    digest_config_map_data,
    is_ready,
    is_terminating,
    label,
    name_of,
    pod_ip,
    uid_of,
)
from rayop.plan import (
    REASON_ROLLING_UPDATE,
    REASON_SCALE_DOWN,
    REASON_SUSPENDED,
    Create,
    Delete,
    Patch,
    Plan,
    plan_cluster,
)
from rayop.runtime.raystate import busy_node_ips
from rayop.runtime.events import NORMAL, WARNING
from rayop.runtime.informer import Event
from rayop.runtime.kube import CONTENT_MERGE_PATCH, ApiError, KubeClient, Resource
from rayop.runtime.manager import ReconcileError, Result
from rayop.runtime.projection import Projection
from rayop.runtime.store import INDEX_OWNER_UID, ObjectKey, make_trimmer, resource_version, trim_object
from rayop.status import WriteFailure, clamp_notices, compute_status

log = structlog.get_logger("rayop.reconciler")

RAY = Resource(GROUP, VERSION, PLURAL, KIND)
MANAGED_BY_SELECTOR = f"{LABEL_MANAGED_BY}={MANAGED_BY}"
# The reason of a create refused because the namespace is being deleted (the API server's Status cause type).
NAMESPACE_TERMINATING = "NamespaceTerminating"
CHILDREN: dict[str, Resource] = {
    "Pod": Resource("", "v1", "pods", "Pod"),
    "ConfigMap": Resource("", "v1", "configmaps", "ConfigMap"),
    "Service": Resource("", "v1", "services", "Service"),
    "ServiceAccount": Resource("", "v1", "serviceaccounts", "ServiceAccount"),
    "Job": Resource("batch", "v1", "jobs", "Job"),
    "Role": Resource("rbac.authorization.k8s.io", "v1", "roles", "Role"),
    "RoleBinding": Resource("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding"),
}
# What the writer may write, by kind: the children, and the Ray itself, of which only the finalizer is patched (GCS
# fault tolerance), never the spec. Not a child: no informer of its own for it.
WRITABLE: dict[str, Resource] = {**CHILDREN, "Ray": RAY}
# Fields of pods the operator never reads (the plan compares pods by their template-hash label); dropping them
# keeps the pod cache small.
POD_TRIM = make_trimmer(
    ["spec.volumes", "spec.containers.*.volumeMounts", "spec.containers.*.env", "spec.containers.*.args",
     "spec.containers.*.command", "spec.containers.*.readinessProbe", "spec.containers.*.livenessProbe",
     "spec.containers.*.lifecycle",
     "spec.tolerations", "spec.initContainers.*.volumeMounts", "spec.initContainers.*.env"]
)


# What of a pod is decoded at all (`rayop.runtime.projection`): the metadata the plan and the indexes read, the
# placement and images of the spec, the whole status. Everything else (managedFields, the containers' scripts,
# hooks, probes, environment and mounts, the volumes, the tolerations) is skipped while the JSON is parsed. POD_TRIM
# still runs after it (interning; and a pod that did not fit the shape, decoded in full, is trimmed as before).
class _PodMeta(TypedDict, total=False):
    name: Any
    generateName: Any
    namespace: Any
    uid: Any
    resourceVersion: Any
    generation: Any
    creationTimestamp: Any
    deletionTimestamp: Any
    deletionGracePeriodSeconds: Any
    labels: Any
    annotations: Any
    ownerReferences: Any
    finalizers: Any


class _PodContainer(TypedDict, total=False):
    name: Any
    image: Any
    resources: Any


class _PodSpec(TypedDict, total=False):
    nodeName: Any
    containers: list[_PodContainer]
    initContainers: list[_PodContainer]
    restartPolicy: Any
    activeDeadlineSeconds: Any
    terminationGracePeriodSeconds: Any
    serviceAccountName: Any


class _Pod(TypedDict, total=False):
    apiVersion: Any
    kind: Any
    metadata: _PodMeta
    spec: _PodSpec
    status: Any


POD_PROJECTION = Projection(_Pod, "Pod")
# The data of our ConfigMaps (the autoscaler config and in-pod programs, ~34 KiB per cluster) is cached as one
# digest per key, which is all the plan compares; other children are cached whole (minus managedFields).


def CONFIG_MAP_TRIM(obj: dict[str, Any]) -> dict[str, Any]:  # noqa: N802 - a transform, named like POD_TRIM
    return trim_object(digest_config_map_data(obj))


# Removals of running, ready workers the operator decides itself: idle workers go first (see busy_workers).
DRAINING_REASONS = frozenset({REASON_SCALE_DOWN, REASON_ROLLING_UPDATE, REASON_SUSPENDED})

# A head whose dashboard did not answer is not asked again for this long.
DASHBOARD_RETRY_SECONDS = 60.0

# The grace period of the pods of a deleted Ray with GCS fault tolerance (they go before its clean-up Job runs).
DELETED_RAY_POD_GRACE_SECONDS = 5

# A deadline that is due now is looked at again after this long (never a hot loop on a clock that lags).
MIN_REQUEUE_SECONDS = 0.5


class DeleteOptions(TypedDict, total=False):
    """The body of a DELETE the reconciler sends (meta/v1 DeleteOptions, the fields it uses)."""

    preconditions: dict[str, str]
    propagationPolicy: str
    gracePeriodSeconds: int


# A Kubernetes object as decoded JSON; read through `_field` and `_meta`.
Obj = Mapping[str, object]

# The longest Event message the recorder sends (it cuts longer ones); a report of many children is shortened to fit.
EVENT_MESSAGE_LIMIT = 1024


@dataclass(frozen=True)
class Done:
    """A write the API server accepted, for the reconcile's report."""

    verb: str  # "Created", "Deleted" or "Updated": the Event's reason
    kind: str
    name: str
    message: str = ""


def report_messages(done: Sequence[Done], limit: int = EVENT_MESSAGE_LIMIT) -> list[tuple[str, str]]:
    """(reason, message) of the one Normal Event per verb a reconcile records: children of the same kind and cause
    share one entry, e.g. `Pod r-small-a, r-small-b: worker group small: 2 desired; Service r-head: ...`. When
    the message would pass `limit`, each entry keeps its first names and says how many more there were."""
    out: list[tuple[str, str]] = []
    for verb in dict.fromkeys(d.verb for d in done):
        entries: dict[tuple[str, str], list[str]] = {}
        for d in done:
            if d.verb == verb:
                entries.setdefault((d.kind, d.message), []).append(d.name)
        for shown in (None, 5, 2, 1):
            parts = []
            for (kind, why), names in entries.items():
                listed = ", ".join(names if shown is None else names[:shown])
                if shown is not None and len(names) > shown:
                    listed += f" and {len(names) - shown} more"
                parts.append(f"{kind} {listed}" + (f": {why}" if why else ""))
            message = "; ".join(parts)
            if len(message) <= limit:
                break
        out.append((verb, message))
    return out


class Writer(Protocol):
    """The API server calls the reconciler makes, by child kind (a key of `CHILDREN`; `patch` also takes "Ray", for
    the finalizer). Each raises `ApiError` when the server refuses; `get` is the one live read (an AlreadyExists
    Service is looked at)."""

    def create(self, kind: str, namespace: str, manifest: Obj) -> Obj:
        """Create the child; the created object's metadata at least (its generated name)."""
        ...

    def get(self, kind: str, namespace: str, name: str) -> Obj: ...

    def delete(self, kind: str, namespace: str, name: str, options: DeleteOptions) -> None: ...

    def patch(self, kind: str, namespace: str, name: str, patch: Obj) -> None:
        """A JSON merge patch of the child."""
        ...

    def patch_status(self, namespace: str, name: str, status: Obj) -> str:
        """A JSON merge patch of the Ray's `/status` subresource with `{"status": status}`; the resourceVersion the
        write made ("" when the server did not say)."""
        ...


class Recorder(Protocol):
    """Records a Kubernetes Event about an object (`rayop.runtime.events.EventRecorder`); never raises."""

    def record(self, obj: Obj, type_: str, reason: str, message: str) -> None: ...


class Lister(Protocol):
    """A read of an informer's cache (`rayop.runtime.store.Store`)."""

    def get(self, key: ObjectKey) -> Obj | None: ...

    def by_index(self, index: str, value: str) -> Sequence[Obj]: ...


BusyNodes = Callable[[str, int], frozenset[str] | None]


class KubeWriter:
    """`Writer` on the API server, through the manager's client (and so its write gate)."""

    def __init__(self, client: KubeClient) -> None:
        self.client = client

    def create(self, kind: str, namespace: str, manifest: Obj) -> Obj:
        created: Obj = self.client.create(CHILDREN[kind].collection(namespace), dict(manifest), metadata_only=True)
        return created

    def get(self, kind: str, namespace: str, name: str) -> Obj:
        current: Obj = self.client.get(CHILDREN[kind].object(namespace, name))
        return current

    def delete(self, kind: str, namespace: str, name: str, options: DeleteOptions) -> None:
        self.client.delete(CHILDREN[kind].object(namespace, name), dict(options))

    def patch(self, kind: str, namespace: str, name: str, patch: Obj) -> None:
        self.client.patch(WRITABLE[kind].object(namespace, name), dict(patch), CONTENT_MERGE_PATCH, metadata_only=True)

    def patch_status(self, namespace: str, name: str, status: Obj) -> str:
        return resource_version(self.client.patch(RAY.object(namespace, name) + "/status", {"status": dict(status)},
                                                  CONTENT_MERGE_PATCH, metadata_only=True))


@dataclass(frozen=True, slots=True)
class _Written:
    on: str  # the cached resourceVersion the write was computed from
    status: Obj  # the whole status as the write left it


class WrittenStatus:
    """The status this process last wrote per object, until its cache shows that write.

    The status patch is the difference between the cached status and the new one. Right after a write the cache
    still holds the object as it was (its watch event is on the way); a reconcile in that window that computes the
    status as it was before the write found no difference and wrote nothing, and the object kept the written,
    now wrong, status, since the object's own status events do not start a reconcile (a launcher pod that went
    Ready and finished within that window was counted for minutes). `base` is what the server holds: the status
    written (`pending`), while the cached object is still the one the write was computed from; else the cached
    status."""

    def __init__(self) -> None:
        self._by_key: dict[ObjectKey, _Written] = {}

    def pending(self, key: ObjectKey, obj: Obj) -> Obj | None:
        """The status last written while the cached `obj` does not show it yet, else None (and the memo goes: the
        cache shows the write, or a later change of the object, and is the base from now on)."""
        written = self._by_key.get(key)
        if written is None:
            return None
        if resource_version(obj) == written.on:
            return written.status
        del self._by_key[key]
        return None

    def base(self, key: ObjectKey, obj: Obj) -> Obj:
        """What the server holds as far as this process knows: `pending`, else the cached status."""
        written = self.pending(key, obj)
        return _field(obj, "status") if written is None else written

    def wrote(self, key: ObjectKey, obj: Obj, status: Obj, made: str) -> None:
        """After a write computed from the cached `obj` left `status`; `made` is the resourceVersion it made (no
        memo when the server did not say, or nothing changed)."""
        on = resource_version(obj)
        if on and made and made != on:
            self._by_key[key] = _Written(on, status)
        else:
            self._by_key.pop(key, None)

    def forget(self, key: ObjectKey) -> None:
        self._by_key.pop(key, None)

    def __len__(self) -> int:
        return len(self._by_key)


class RayReconciler:
    """Reconciles one `Ray` key (see the module docstring) from narrow parts: the writes it makes, the Events it
    records, the caches it reads (`rays`, and `children` by kind, each with the owner-UID index), the clock of the
    status times and the question which workers are busy."""

    def __init__(self, *, writer: Writer, recorder: Recorder, rays: Lister, children: Mapping[str, Lister],
                 options: Options | None = None, now: Callable[[], datetime] | None = None,
                 busy_nodes: BusyNodes = busy_node_ips, monotonic: Callable[[], float] = time.monotonic):
        self.options = options or Options()
        self.writer = writer
        self.recorder = recorder
        self.rays = rays
        self.children = children
        self.expectations = Expectations()
        self.programs = inpod_files()
        self._now = now or (lambda: datetime.now(timezone.utc))
        # (Ray UID, generation) whose configuration Event was recorded, per kind ("invalid", "ignored") and key;
        # forgotten when the Ray goes, so the memory is bounded by the live Rays.
        self._reported: dict[tuple[ObjectKey, str], tuple[str, int]] = {}
        # The clamp notice last reported per live Ray (UID, text): a Normal Event only when it changes.
        self._clamped: dict[ObjectKey, tuple[str, str]] = {}
        self.busy_nodes = busy_nodes
        self._monotonic = monotonic
        # Head pod IP -> when its dashboard last failed to answer (bounded by the heads the operator talked to).
        self._silent_dashboards: dict[str, float] = {}
        # Ray key -> when its first progress-only status change was held back (see write_status).
        self._held: dict[ObjectKey, float] = {}
        # The status last written per Ray until the cache shows it (see WrittenStatus).
        self._written = WrittenStatus()
        # Ray key -> the UID last reconciled under it: a Ray deleted and re-created under the same name between two
        # reconciles (its absence never seen) must not inherit the old one's expectations.
        self._uids: dict[ObjectKey, str] = {}

    # -- reconcile ------------------------------------------------------------------------------------------------

    def __call__(self, key: ObjectKey) -> Result | None:
        ray = self.rays.get(key)
        if ray is None:
            # Deleted: the garbage collector removes the children through their ownerReferences.
            self.expectations.forget(lambda scope: isinstance(scope, tuple) and scope[0] == key)
            self._uids.pop(key, None)
            self._reported.pop((key, "invalid"), None)
            self._reported.pop((key, "ignored"), None)
            self._reported.pop((key, "translated"), None)
            self._clamped.pop(key, None)
            self._held.pop(key, None)
            self._written.forget(key)
            return None
        if _meta(ray).get("deletionTimestamp"):
            return self.finalize(key, ray) if has_finalizer(ray) else None
        wants = wants_finalizer(ray)
        if wants != has_finalizer(ray):  # two dict lookups for a Ray without gcsFaultTolerance, no write
            self.set_finalizer(key, ray, add=wants)
        uid = str(_meta(ray)["uid"])
        if self._uids.get(key, uid) != uid:
            # The pods the old Ray's expectations wait for are owned by the old UID and never show among this
            # one's: waiting for them would hold its groups until the expectations expire (minutes).
            self.expectations.forget(lambda scope: isinstance(scope, tuple) and scope[0] == key)
        self._uids[key] = uid
        observed = self.observe(uid)
        now = self._now()
        try:
            conversion = effective_cluster(ray)
        except ConfigurationError as error:
            if self._first_report(key, "invalid", ray):
                log.warning("invalid configuration", key=str(key), error=error.describe())
                self.recorder.record(ray, WARNING, "InvalidConfiguration", error.describe())
            held = self.write_status(ray, compute_status(ray, error, observed, now, options=self.options))
            return None if held is None else Result(requeue_after=max(held, MIN_REQUEUE_SECONDS))
        self._reported.pop((key, "invalid"), None)
        if conversion.warnings and self._first_report(key, "ignored", ray):
            self.recorder.record(ray, WARNING, "IgnoredConfiguration",
                                 "; ".join(str(w) for w in conversion.warnings))
        if conversion.notes and self._first_report(key, "translated", ray):
            self.recorder.record(ray, NORMAL, "TranslatedConfiguration",
                                 "; ".join(str(n) for n in conversion.notes))
        self._report_clamps(key, ray, conversion.cluster)
        desired = build_children(ray, conversion.cluster, self.options, programs=self.programs)
        paused = self.paused_groups(key, observed, [HEAD_GROUP, *(w.group for w in desired.workers)])
        suspended = _field(ray, "spec").get("suspend") is True
        plan = plan_cluster(desired, observed, now, paused=paused, suspended=suspended)
        if self._removes_ready_workers(plan, observed):
            # About to remove running, ready workers: ask Ray which ones are busy, so idle ones go first.
            busy = self.busy_workers(ray, conversion.cluster, observed)
            if busy:
                plan = plan_cluster(desired, observed, now, paused=paused, busy=busy, suspended=suspended)
        failures = self.apply(ray, key, plan)
        if failures and all(f.reason == NAMESPACE_TERMINATING for f in failures):
            # The Ray goes with its namespace; its deletion is the next event. No status write, Event or retry: the
            # Events would be refused too, and a retry could only be refused again.
            return None
        if any(a.reason == REASON_ROLLING_UPDATE for a in plan.actions):
            for progress in plan.progress:
                self.recorder.record(ray, NORMAL, "RollingUpdate", progress.describe())
        status = compute_status(ray, conversion, observed, now, desired=desired, failures=failures,
                                options=self.options)
        held = self.write_status(ray, status)
        if failures:
            # Retried with back-off; the status already tells what the server refused.
            raise ReconcileError("; ".join(f"{f.verb} {f.kind} {f.name}: {f.message}" for f in failures[:3]))
        # The earliest deadline this reconcile depends on: the plan's (back-offs, join deadlines) and the expiry of
        # the expectations of the groups left out now (a lost watch event must not stall them for good).
        waits = [w for w in (plan.requeue_after, held, *(self.expectations.expires_in((key, g)) for g in paused))
                 if w is not None]
        requeue = min(waits) if waits else None
        if requeue is None:
            return None
        return Result(requeue_after=max(requeue, MIN_REQUEUE_SECONDS))

    def observe(self, uid: str) -> Observed:
        def owned(kind: str) -> Sequence[Obj]:
            return self.children[kind].by_index(INDEX_OWNER_UID, uid)

        return Observed(
            pods=owned("Pod"), services=owned("Service"), config_maps=owned("ConfigMap"), jobs=owned("Job"),
            service_accounts=owned("ServiceAccount"), roles=owned("Role"), role_bindings=owned("RoleBinding"),
        )

    @staticmethod
    def _removes_ready_workers(plan: Plan, observed: Observed) -> bool:
        ready = {name_of(p) for p in observed.pods if label(p, LABEL_ROLE) == ROLE_WORKER and is_ready(p)}
        return any(isinstance(a, Delete) and a.kind == "Pod" and a.name in ready and a.reason in DRAINING_REASONS
                   for a in plan.actions)

    def busy_workers(self, ray: Obj, model: ClusterModel, observed: Observed) -> frozenset[str]:
        """Pod IPs of the workers whose Ray node runs tasks or actors, from the head's dashboard; empty when it
        does not answer."""
        heads = [p for p in observed.pods if label(p, LABEL_ROLE) == ROLE_HEAD and is_ready(p) and pod_ip(p)]
        if not heads:
            return frozenset()
        port = int(model.head.ray_start_params.get("dashboard-port", DASHBOARD_PORT))
        host = pod_ip(heads[0])
        silent = self._silent_dashboards.get(host)
        if silent is not None and self._monotonic() - silent < DASHBOARD_RETRY_SECONDS:
            return frozenset()
        busy = self.busy_nodes(host, port)
        if busy is None:
            # Not asked again for a while: a dashboard that does not answer must not slow every reconcile.
            now = self._monotonic()
            self._silent_dashboards = {h: t for h, t in self._silent_dashboards.items()
                                       if now - t < DASHBOARD_RETRY_SECONDS}
            self._silent_dashboards[host] = now
            log.info("the dashboard does not say which workers are busy", key=str(ObjectKey.of(ray)))
            return frozenset()
        self._silent_dashboards.pop(host, None)
        return busy

    def paused_groups(self, key: ObjectKey, observed: Observed, groups: list[str]) -> set[str]:
        """Groups (the head as `head`) whose last creates or deletes the cache does not show yet."""
        by_group = {group: [(name_of(p), uid_of(p), is_terminating(p)) for p in pods]
                    for group, pods in classify(observed.pods).scopes().items()}
        return {group for group in {*groups, *by_group}
                if not self.expectations.satisfied((key, group), by_group.get(group, []))}

    # -- apply ----------------------------------------------------------------------------------------------------

    def apply(self, ray: Obj, key: ObjectKey, plan: Plan) -> list[WriteFailure]:
        """Sends the plan's writes; returns the refused ones. What was done is reported in one Normal Event per
        verb at the end (refusals have a Warning each, at once)."""
        failures: list[WriteFailure] = []
        done: list[Done] = []
        refused_groups: set[str] = set()
        namespace = key.namespace
        terminating = False
        for action in plan.actions:
            if isinstance(action, Create):
                if terminating or (action.group is not None and action.group in refused_groups):
                    continue
                outcome = self.create(ray, key, namespace, action)
                if isinstance(outcome, WriteFailure):
                    failures.append(outcome)
                    if action.group is not None:
                        refused_groups.add(action.group)
                    # Nothing can be created in a namespace being deleted: the other creates are not tried.
                    terminating = outcome.reason == NAMESPACE_TERMINATING
                elif outcome is not None:
                    done.append(outcome)
            else:
                outcome = (self.delete(ray, key, namespace, action) if isinstance(action, Delete)
                           else self.patch(ray, namespace, action))
                if isinstance(outcome, WriteFailure):
                    failures.append(outcome)
                elif outcome is not None:
                    done.append(outcome)
        for reason, message in report_messages(done):
            self.recorder.record(ray, NORMAL, reason, message)
        return failures

    def create(self, ray: Obj, key: ObjectKey, namespace: str, action: Create) -> WriteFailure | Done | None:
        """The create; what was created, a refusal, or None (it exists already and is this Ray's)."""
        meta = action.manifest.get("metadata") or {}
        name = str(meta.get("name") or meta.get("generateName") or "")
        try:
            created = self.writer.create(action.kind, namespace, action.manifest)
        except ApiError as e:
            if e.already_exists:
                return self._foreign(ray, action, namespace, name)
            if e.namespace_terminating:
                # The namespace controller is deleting this Ray with everything else in its namespace: not a
                # failure worth a Warning Event or a retry, only the reason nothing is created any more.
                log.info("namespace being deleted: nothing created", key=str(key), kind=action.kind, name=name)
                return WriteFailure("create", action.kind, name, e.message, NAMESPACE_TERMINATING)
            # The server names the pod it would have created; leave that random name out so repeats aggregate.
            generated = str((e.body.get("details") or {}).get("name") or "")
            message = e.message.replace(f'"{generated}"', f'"{name}*"') if generated else e.message
            self.recorder.record(ray, WARNING, f"FailedCreate{action.kind}", f"{name}: {message}")
            log.warning("create refused", key=str(key), kind=action.kind, name=name, status=e.status,
                        message=message)
            return WriteFailure("create", action.kind, name, message, e.reason)
        created_name = str(_meta(created)["name"])
        if action.group is not None:
            self.expectations.expect_created((key, action.group), created_name)
        return Done("Created", action.kind, created_name, action.message)

    def _foreign(self, ray: Obj, action: Create, namespace: str, name: str) -> WriteFailure | None:
        """A named child that already exists is fine when it is this Ray's (a cache that lags behind); a Service of
        the same name that belongs to someone else (a name the configuration's provider.services asks for) is never
        adopted, and the status says so."""
        if action.kind != "Service" or action.group is not None:
            return None
        try:
            current = self.writer.get(action.kind, namespace, name)
        except ApiError:
            return None
        uid = str(_meta(ray).get("uid") or "")
        owners = [r.get("uid") for r in _items(_meta(current).get("ownerReferences")) if r.get("controller")]
        if uid in owners:
            return None
        message = f"Service {name} already exists and does not belong to this Ray; it is not adopted or changed"
        self.recorder.record(ray, WARNING, "FailedCreateService", message)
        return WriteFailure("create", action.kind, name, message, "AlreadyExists")

    def delete(self, ray: Obj, key: ObjectKey, namespace: str, action: Delete) -> WriteFailure | Done | None:
        scope = (key, action.group) if action.group is not None else None
        if scope:
            self.expectations.expect_deleted(scope, action.uid)
        options: DeleteOptions = {"preconditions": {"uid": action.uid}}
        if action.propagation:
            options["propagationPolicy"] = action.propagation
        try:
            self.writer.delete(action.kind, namespace, action.name, options)
        except ApiError as e:
            if e.not_found or e.conflict:
                return None  # already gone, or a newer object of that name: not ours to delete
            if scope:
                self.expectations.deletion_failed(scope, action.uid)
            self.recorder.record(ray, WARNING, f"FailedDelete{action.kind}", f"{action.name}: {e.message}")
            return WriteFailure("delete", action.kind, action.name, e.message, e.reason)
        return Done("Deleted", action.kind, action.name, action.message)

    def patch(self, ray: Obj, namespace: str, action: Patch) -> WriteFailure | Done | None:
        try:
            self.writer.patch(action.kind, namespace, action.name, action.patch)
        except ApiError as e:
            if e.not_found:
                return None  # the next reconcile creates it
            self.recorder.record(ray, WARNING, f"FailedUpdate{action.kind}", f"{action.name}: {e.message}")
            return WriteFailure("patch", action.kind, action.name, e.message, e.reason)
        return Done("Updated", action.kind, action.name, action.message)

    # -- status and events ----------------------------------------------------------------------------------------

    def write_status(self, ray: Obj, status: Obj) -> float | None:
        """Writes the status when it differs from the stored one. A change that is only progress is held back up to
        `Options.status_batch_seconds` from the first one held (the reconcile's events usually bring the next
        change first, and one write carries both); returns the seconds until a held change is due, else None."""
        key = ObjectKey.of(ray)
        old = self._written.base(key, ray)
        patch = merge_patch(old, status)
        if not patch:
            self._held.pop(key, None)
            return None
        window = self.options.status_batch_seconds
        if window > 0 and only_progress(old, status):
            first = self._held.setdefault(key, self._monotonic())
            due = first + window - self._monotonic()
            if due > 0:
                return due
        self._held.pop(key, None)
        for condition in problems_raised(old, status):
            self.recorder.record(ray, WARNING, str(condition["reason"]), str(condition.get("message", "")))
        meta = _meta(ray)
        try:
            made = self.writer.patch_status(str(meta["namespace"]), str(meta["name"]), patch)
        except ApiError as e:
            self._written.forget(key)
            if e.not_found:
                return None
            raise
        self._written.wrote(key, ray, status, made)
        return None

    # -- GCS fault tolerance: the finalizer and the clean-up of a deleted Ray ------------------------------------

    def set_finalizer(self, key: ObjectKey, ray: Obj, add: bool) -> None:
        """Add or remove `ray.k8s.io/gcs-cleanup` (a merge patch guarded by resourceVersion)."""
        meta = _meta(ray)
        others = [f for f in finalizers(ray) if f != GCS_FINALIZER]
        patch = {"metadata": {"resourceVersion": meta.get("resourceVersion"),
                              "finalizers": [*others, GCS_FINALIZER] if add else others}}
        try:
            self.writer.patch("Ray", key.namespace, key.name, patch)
        except ApiError as e:
            if e.not_found and not add:
                return
            if e.conflict:
                raise ReconcileError(f"Ray {key} changed meanwhile; retrying") from None
            raise
        log.info("finalizer " + ("added" if add else "removed"), key=str(key), finalizer=GCS_FINALIZER)

    def finalize(self, key: ObjectKey, ray: Obj) -> Result | None:
        """A deleted Ray holding the GCS clean-up finalizer (see `rayop.gcscleanup`): its pods go at once, then the
        clean-up Job runs; the finalizer goes when it ended, or at the deadline."""
        uid = str(_meta(ray)["uid"])
        observed = self.observe(uid)
        now = self._now()
        try:
            conversion = effective_cluster(ray)
        except ConfigurationError as error:
            step = plan_cleanup(ray, ft=None, storage_namespace="", job=None, pods_left=0, now=now,
                                options=self.options, invalid=error.describe())
            return self._finish_step(key, ray, step, None)
        model = conversion.cluster
        desired = build_children(ray, model, self.options, programs=self.programs)
        ft = model.gcs_fault_tolerance
        pods = classify(observed.pods, uid)
        left = len(pods.heads) + len(pods.workers)
        job_name = gcs_cleanup_job_name(key.name)
        job = next((j for j in observed.jobs if name_of(j) == job_name), None)
        if left and job is None and ft is not None:
            self._delete_pods_now(ray, key, [*pods.workers, *pods.heads])
        step = plan_cleanup(ray, ft=ft, storage_namespace=storage_namespace(ft, desired.owner) if ft else "",
                            job=job, pods_left=left, now=now, options=self.options)
        manifest = build_gcs_cleanup_job(desired.owner, model, self.options, desired.head) if step.create_job else None
        return self._finish_step(key, ray, step, manifest)

    def _delete_pods_now(self, ray: Obj, key: ObjectKey, pods: Sequence[Obj]) -> None:
        """The pods of a deleted Ray go at once, without draining (the whole cluster goes: a drain would only hold
        its deletion, up to the drain timeout for a busy worker); a pod already terminating with a longer grace
        period is deleted again with the short one."""
        done = []
        for p in pods:
            grace = _meta(p).get("deletionGracePeriodSeconds")
            if is_terminating(p) and isinstance(grace, int) and grace <= DELETED_RAY_POD_GRACE_SECONDS:
                continue
            try:
                self.writer.delete("Pod", key.namespace, name_of(p), {
                    "preconditions": {"uid": uid_of(p)}, "gracePeriodSeconds": DELETED_RAY_POD_GRACE_SECONDS})
            except ApiError as e:
                if not (e.not_found or e.conflict):
                    self.recorder.record(ray, WARNING, "FailedDeletePod", f"{name_of(p)}: {e.message}")
                continue
            if not is_terminating(p):
                done.append(Done("Deleted", "Pod", name_of(p), "the Ray is deleted: its pods go before Redis is "
                                                                 "cleaned up"))
        for reason, message in report_messages(done):
            self.recorder.record(ray, NORMAL, reason, message)

    def _finish_step(self, key: ObjectKey, ray: Obj, step: Cleanup, job: Obj | None) -> Result | None:
        """Create the clean-up Job if asked (its Event only when this call created it), record the step's Event,
        remove the finalizer if asked."""
        event = step.event
        if job is not None:
            try:
                self.writer.create("Job", key.namespace, job)
            except ApiError as e:
                if e.namespace_terminating:
                    # The Ray goes with its namespace, where no Job can be created any more: it must not wait.
                    log.warning("namespace being deleted: no clean-up Job; the finalizer is removed", key=str(key))
                    self.set_finalizer(key, ray, add=False)
                    return None
                if not e.already_exists:
                    self.recorder.record(ray, WARNING, "FailedCreateJob", f"{name_of(job)}: {e.message}")
                    return Result(requeue_after=step.requeue_after or MIN_REQUEUE_SECONDS)
                event = None  # a cache that lags: it was created before
        if event is not None:
            kind, reason, message = event
            self.recorder.record(ray, NORMAL if kind == "Normal" else WARNING, reason, message)
        if step.remove_finalizer:
            self.set_finalizer(key, ray, add=False)
            log.info("deleted Ray finalized", key=str(key), why=step.why)
            return None
        log.info("deleted Ray waits", key=str(key), why=step.why)
        return Result(requeue_after=step.requeue_after) if step.requeue_after is not None else None

    def _report_clamps(self, key: ObjectKey, ray: Obj, model: ClusterModel) -> None:
        """A Normal Event when the bounds change the worker count the user or the autoscaler asked for (once per
        distinct notice)."""
        notices = clamp_notices(ray, model)
        if not notices:
            self._clamped.pop(key, None)
            return
        text = "; ".join(notices)
        seen = (str(_meta(ray)["uid"]), text)
        if self._clamped.get(key) == seen:
            return
        self._clamped[key] = seen
        self.recorder.record(ray, NORMAL, "WorkersClamped", text)

    def _first_report(self, key: ObjectKey, kind: str, ray: Obj) -> bool:
        """True once per (Ray UID, generation) for each kind of configuration report: no Event storm."""
        meta = _meta(ray)
        generation = meta.get("generation")
        seen = (str(meta["uid"]), generation if isinstance(generation, int) else 0)
        if self._reported.get((key, kind)) == seen:
            return False
        self._reported[(key, kind)] = seen
        return True


# Reasons of False conditions that say "in progress", not "something is wrong": no Warning Event for them.
PROGRESS_REASONS = frozenset({
    "HeadPodMissing", "HeadPodPending", "HeadPodNotReady", "HeadPodTerminating", "WorkersNotReady", "Launching",
    "WaitingForHead", "HeadNotReady", "NotReady", "InvalidConfiguration",
})
# The aggregate Ready condition repeats what the others say.
EVENT_CONDITIONS = frozenset({"HeadReady", "WorkersReady", "SuccessfulLaunch", "ReplicaFailure"})


def problems_raised(old: Obj, new: Obj) -> list[Obj]:
    """Conditions that newly report a problem: False (True for ReplicaFailure) with a reason that is not mere
    progress, and a status or reason different from before. Each deserves one Warning Event."""
    before = {c.get("type"): c for c in _items(old.get("conditions"))}
    raised = []
    for c in _items(new.get("conditions")):
        kind = c.get("type")
        if kind not in EVENT_CONDITIONS or c.get("reason") in PROGRESS_REASONS:
            continue
        bad = c.get("status") == ("True" if kind == "ReplicaFailure" else "False")
        prev = before.get(kind) or {}
        if bad and (prev.get("status") != c.get("status") or prev.get("reason") != c.get("reason")):
            raised.append(c)
    return raised


# Conditions that are steps towards Ready: one of them turning True while Ready keeps its status is progress (the
# head coming up before its workers); turning False, or Ready itself changing, is written at once.
STEP_CONDITIONS = frozenset({"HeadReady", "WorkersReady"})


def only_progress(old: Obj, new: Obj) -> bool:
    """True when `new` differs from the stored status `old` only in what a watcher would not act on: the same
    observedGeneration, every condition type with the same status as before except a step towards Ready turning
    True while Ready stays as it was, and no problem newly raised."""
    if not old or old.get("observedGeneration") != new.get("observedGeneration"):
        return False
    before = {c.get("type"): c.get("status") for c in _items(old.get("conditions"))}
    after = {c.get("type"): c.get("status") for c in _items(new.get("conditions"))}
    if before.keys() != after.keys() or before.get("Ready") != after.get("Ready"):
        return False
    for kind, status in after.items():
        if status != before[kind] and not (kind in STEP_CONDITIONS and status == "True"):
            return False
    return not problems_raised(old, new)


def merge_patch(old: Obj, new: Obj) -> dict[str, object]:
    """The JSON merge patch (RFC 7386) that turns `old` into `new`: changed keys, removed keys as null."""
    patch: dict[str, object] = {}
    for k, v in new.items():
        before = old.get(k)
        if isinstance(v, Mapping) and isinstance(before, Mapping):
            sub = merge_patch(before, v)
            if sub:
                patch[k] = sub
        elif before != v or k not in old:
            patch[k] = v
    for k in old:
        if k not in new:
            patch[k] = None
    return patch


def _field(obj: Obj, name: str) -> Obj:
    """The object-valued field `name` of `obj`; empty when it is missing or null."""
    value = obj.get(name)
    return value if isinstance(value, Mapping) else {}


def _meta(obj: Obj) -> Obj:
    return _field(obj, "metadata")


def _items(value: object) -> list[Obj]:
    """The objects of a JSON list (conditions, ownerReferences); empty when it is missing or null."""
    return [v for v in value if isinstance(v, Mapping)] if isinstance(value, list) else []

