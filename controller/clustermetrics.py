"""Per-cluster Prometheus series, computed when `/metrics` is scraped from the objects the informers cache.

Guarantees:
- Nothing on the reconcile path: the gauges are read from the cached `Ray` (and `RayJob`) objects at scrape time,
  so a deleted `Ray` has no series from the next scrape on (Prometheus marks them stale), and the reconcilers pay
  nothing. The two series that must count over time (the provisioning histogram and the launch counter) are fed by
  an event handler on the `Ray` informer that compares a few status fields of the old and the new object.
- Bounded cardinality: per `Ray`, one `rayop_cluster_info`, one `rayop_cluster_condition` per condition type the
  operator manages (at most 7), and two worker gauges; `groups` adds two per worker group (at most 32 groups);
  per `RayJob` two series. `off` drops every per-object series and keeps the aggregates (`rayop_clusters`,
  `rayop_workers_*`, `rayop_rayjobs`, the histogram, the counter), whose series count does not grow with the
  number of objects. Label values come from closed sets or from Kubernetes names, never from messages.
- No double counting: a provisioning time is observed once per `Ray`, when a watched update shows its `Ready`
  condition turning True for the first time ever, by the replica that leads. "First" is read from the status
  (`Ready` not True and unchanged since `status.startTime`) and, since those times are whole seconds, also from the
  UIDs this process has seen Ready. A restarted operator's first list observes nothing; a transition it did not see
  is missed, never counted twice. Launch outcomes likewise count transitions of `SuccessfulLaunch`.
- Leader only: a standby (a rollout's new pod waiting for the Lease) exports none of the gauges and counts no
  transition, though its caches are warm, so summing over the operator's replicas counts every cluster once. The
  new leader's next scrape has them all again.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

from rayop.api import rayjob as j
from rayop.api.types import CONDITION_READY, CONDITION_SUCCESSFUL_LAUNCH
from rayop.autoscaler import (
    REASON_HEAD_UNREACHABLE,
    REASON_INVALID_CONFIG,
    REASON_LAUNCHED,
    REASON_LAUNCHER_ERROR,
    REASON_NO_SUMMARY,
    REASON_WORKERS_NOT_JOINED,
)
from rayop.objects import HEAD_CONTAINER, parse_time
from rayop.jobreconciler import RAYJOB
from rayop.reconciler import CHILDREN, MANAGED_BY_SELECTOR, RAY
from rayop.runtime.informer import DELETED, MODIFIED, Event
from rayop.runtime.manager import Manager
from rayop.runtime.store import ObjectKey, Store
from rayop.status import MANAGED_CONDITIONS

# --cluster-metrics: per Ray (default), per Ray and worker group, or aggregates only.
MODE_CLUSTERS = "clusters"
MODE_GROUPS = "groups"
MODE_OFF = "off"
MODES = (MODE_CLUSTERS, MODE_GROUPS, MODE_OFF)

STATUSES = ("True", "False", "Unknown")
FORM_SIMPLE = "simple"
FORM_GROUPS = "workerGroups"
FORM_CONFIGURATION = "configuration"
UNKNOWN = "unknown"
# Reasons of SuccessfulLaunch the launch counter keeps as they are; any other is counted as `Other`.
LAUNCH_REASONS = frozenset({
    REASON_LAUNCHED, REASON_INVALID_CONFIG, REASON_HEAD_UNREACHABLE, REASON_WORKERS_NOT_JOINED,
    REASON_LAUNCHER_ERROR, REASON_NO_SUMMARY, "BackoffLimitExceeded", "DeadlineExceeded",
})
OTHER_REASON = "Other"
RAYJOB_UNSET = "Unset"
# From seconds (sim mode, a small cluster) to hours (a large one waiting for nodes).
PROVISIONED_BUCKETS = (1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 180.0, 300.0, 600.0,
                       900.0, 1800.0, 3600.0, 7200.0)
_VERSION = re.compile(r"^(\d+\.\d+(?:\.\d+)?)")
_POD = CHILDREN["Pod"]

Body = Mapping[str, Any]


def _mapping(value: object) -> Body:
    return value if isinstance(value, Mapping) else {}


def _conditions(obj: Body) -> dict[str, Body]:
    items = _mapping(obj.get("status")).get("conditions")
    return {str(c.get("type")): c for c in items or () if isinstance(c, Mapping)}


def _status(c: Body | None) -> str:
    value = str((c or {}).get("status") or "Unknown")
    return value if value in STATUSES else "Unknown"


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def image_version(image: object) -> str | None:
    """The Ray version an image's tag starts with (`rayproject/ray:2.60.0-py311` -> `2.60.0`), else None."""
    if not isinstance(image, str):
        return None
    _, sep, tag = image.rpartition(":")
    if not sep or "/" in tag:
        return None
    m = _VERSION.match(tag)
    return m.group(1) if m else None


def _ray_image(pod: Body) -> object:
    containers = [c for c in _mapping(pod.get("spec")).get("containers") or () if isinstance(c, Mapping)]
    chosen = next((c for c in containers if c.get("name") == HEAD_CONTAINER), containers[0] if containers else {})
    return chosen.get("image")


def configuration_form(ray: Body) -> str:
    spec = _mapping(ray.get("spec"))
    if spec.get("configuration"):
        return FORM_CONFIGURATION
    if spec.get("workerGroups"):
        return FORM_GROUPS
    return FORM_SIMPLE


def never_ready(ray: Body) -> bool:
    """True while a `Ray`'s status shows it was never Ready: no status yet, or `Ready` not True and unchanged since
    the first status write (`startTime`; the operator stamps every condition with that time then, and a condition
    keeps its `lastTransitionTime` while its status does not change)."""
    status = _mapping(ray.get("status"))
    ready = _conditions(ray).get(CONDITION_READY)
    if ready is None:
        return True
    if ready.get("status") == "True":
        return False
    return bool(status.get("startTime")) and ready.get("lastTransitionTime") == status.get("startTime")


def provisioned_seconds(ray: Body) -> float | None:
    """Seconds from the `Ray`'s creation to its `Ready` condition's last transition (None if either is missing);
    never negative (the two times come from different clocks)."""
    created = parse_time(_mapping(ray.get("metadata")).get("creationTimestamp"))
    ready = parse_time(_conditions(ray).get(CONDITION_READY, {}).get("lastTransitionTime"))
    if created is None or ready is None:
        return None
    return max(0.0, (ready - created).total_seconds())


def launch_outcome(old: Body, new: Body) -> tuple[str, str] | None:
    """(outcome, reason) when `SuccessfulLaunch` turned True (succeeded) or False (failed) from old to new."""
    before = _status(_conditions(old).get(CONDITION_SUCCESSFUL_LAUNCH))
    launch = _conditions(new).get(CONDITION_SUCCESSFUL_LAUNCH)
    after = _status(launch)
    if after == before or after == "Unknown":
        return None
    reason = str((launch or {}).get("reason") or "")
    return ("succeeded" if after == "True" else "failed"), (reason if reason in LAUNCH_REASONS else OTHER_REASON)


class ClusterMetrics:
    """The per-cluster series (see the module docstring): the gauges written at scrape time (`exposition`, which
    the manager's `Metrics` appends to its registry's), the histogram and the counter fed by `on_ray_event`."""

    def __init__(self, registry: CollectorRegistry, rays: Store, *, pods: Store | None = None,
                 rayjobs: Store | None = None, mode: str = MODE_CLUSTERS,
                 is_leader: Callable[[], bool] = lambda: True) -> None:
        if mode not in MODES:
            raise ValueError(f"cluster metrics mode {mode!r}: one of {', '.join(MODES)}")
        self.rays = rays
        self.pods = pods
        self.rayjobs = rayjobs
        self.mode = mode
        self.is_leader = is_leader
        self.provisioned = Histogram(
            "rayop_cluster_provisioned_duration_seconds",
            "Seconds from a Ray's creation to its first Ready, observed once per Ray by the leader",
            buckets=PROVISIONED_BUCKETS, registry=registry,
        )
        self.launches = Counter(
            "rayop_cluster_launches_total",
            "Launcher outcomes (SuccessfulLaunch turning True or False) by outcome and reason",
            ["outcome", "reason"], registry=registry,
        )
        self.launches.labels("succeeded", REASON_LAUNCHED)
        self.launches.labels("failed", REASON_LAUNCHER_ERROR)
        # UIDs of the Rays this process has seen Ready (or, by their status, Ready before): a regained Ready is
        # never a provisioning, even when the status cannot tell (transitions within the second of startTime).
        self._been_ready: set[str] = set()

    # -- the event handler (the Ray informer's; counts transitions) --------------------------------------------

    def on_ray_event(self, event: Event) -> None:
        new = event.obj
        uid = str(_mapping(new.get("metadata")).get("uid") or "")
        if event.type == DELETED:
            self._been_ready.discard(uid)
            return
        if event.type != MODIFIED or event.old is None:
            if not never_ready(new):
                self._been_ready.add(uid)
            return
        old = event.old
        old_status, new_status = _mapping(old.get("status")), _mapping(new.get("status"))
        # Most updates (spec edits, replica counts) leave every condition as it was: nothing to count.
        if old_status.get("conditions") == new_status.get("conditions") and old_status:
            return
        leader = self.is_leader()
        if uid not in self._been_ready and not never_ready(new):
            self._been_ready.add(uid)
            seconds = provisioned_seconds(new)
            if leader and never_ready(old) and seconds is not None:
                self.provisioned.observe(seconds)
        if not leader:
            return
        outcome = launch_outcome(old, new)
        if outcome is not None:
            self.launches.labels(*outcome).inc()

    # -- the exposition ---------------------------------------------------------------------------------------

    def exposition(self) -> str:
        """The gauges in Prometheus's text format, written directly: at 1,000 Rays prometheus-client's generic
        families and exposition cost several times more CPU than these few f-strings (docs/metrics.md)."""
        if not self.is_leader():
            return ""
        per_object = self.mode != MODE_OFF
        groups = self.mode == MODE_GROUPS
        info: list[str] = []
        cond: list[str] = []
        desired: list[str] = []
        ready: list[str] = []
        g_desired: list[str] = []
        g_ready: list[str] = []
        counts = {(t, s): 0 for t in MANAGED_CONDITIONS for s in STATUSES}
        total_desired = total_ready = 0
        for ray in self.rays.list():
            meta = _mapping(ray.get("metadata"))
            status = _mapping(ray.get("status"))
            conditions = _conditions(ray)
            present = [(t, _status(conditions[t])) for t in MANAGED_CONDITIONS if t in conditions]
            for pair in present:
                counts[pair] += 1
            n_desired = _int(status.get("desiredWorkers"))
            n_ready = _int(_mapping(status.get("worker")).get("readyReplicas"))
            total_desired += n_desired
            total_ready += n_ready
            if not per_object:
                continue
            namespace = str(meta.get("namespace") or "")
            ns = f'namespace="{_escape(namespace)}",name="{_escape(str(meta.get("name") or ""))}"'
            info.append(f'rayop_cluster_info{{{ns},form="{configuration_form(ray)}",'
                        f'ray_version="{self._version(ray, namespace)}",owner="{_owner(ray)}"}} 1\n')
            cond.extend(f'rayop_cluster_condition{{{ns},type="{t}",status="{st}"}} 1\n' for t, st in present)
            if status:
                desired.append(f"rayop_cluster_workers_desired{{{ns}}} {n_desired}\n")
                ready.append(f"rayop_cluster_workers_ready{{{ns}}} {n_ready}\n")
            if groups:
                for g in status.get("workerGroups") or ():
                    if isinstance(g, Mapping) and g.get("name"):
                        gl = f'{ns},group="{_escape(str(g["name"]))}"'
                        g_desired.append(f"rayop_cluster_group_workers_desired{{{gl}}} {_int(g.get('desiredWorkers'))}\n")
                        g_ready.append(f"rayop_cluster_group_workers_ready{{{gl}}} {_int(g.get('readyReplicas'))}\n")
        out: list[str] = []
        if per_object:
            out += _family("rayop_cluster_info", "One per Ray: its configuration form, the Ray version of its head "
                           "image and its owner kind (RayJob or none)", info)
            out += _family("rayop_cluster_condition", "One per Ray and condition type the operator manages, labelled "
                           "with the condition's status (value 1)", cond)
            out += _family("rayop_cluster_workers_desired", "Desired worker pods of a Ray (all groups)", desired)
            out += _family("rayop_cluster_workers_ready", "Ready worker pods of a Ray (all groups)", ready)
        if groups:
            out += _family("rayop_cluster_group_workers_desired", "Desired worker pods of a worker group "
                           "(--cluster-metrics groups)", g_desired)
            out += _family("rayop_cluster_group_workers_ready", "Ready worker pods of a worker group "
                           "(--cluster-metrics groups)", g_ready)
        out += _family("rayop_clusters", "Ray objects by condition type and status",
                       [f'rayop_clusters{{type="{t}",status="{st}"}} {n}\n' for (t, st), n in counts.items()])
        out += _family("rayop_workers_desired", "Desired worker pods of every Ray",
                       [f"rayop_workers_desired {total_desired}\n"])
        out += _family("rayop_workers_ready", "Ready worker pods of every Ray", [f"rayop_workers_ready {total_ready}\n"])
        if self.rayjobs is not None:
            out += self._rayjobs(self.rayjobs, per_object)
        return "".join(out)

    def _version(self, ray: Body, namespace: str) -> str:
        """The Ray version of the running head's Ray container image, else of spec.image, else `unknown`."""
        head = _mapping(ray.get("status")).get("headPodName")
        if self.pods is not None and isinstance(head, str) and head:
            pod = self.pods.get(ObjectKey(namespace, head))
            if pod is not None:
                version = image_version(_ray_image(pod))
                if version:
                    return version
        return image_version(_mapping(ray.get("spec")).get("image")) or UNKNOWN

    def _rayjobs(self, store: Store, per_object: bool) -> list[str]:
        info: list[str] = []
        state: list[str] = []
        by_status = {s: 0 for s in (*j.DEPLOYMENT_STATUSES, RAYJOB_UNSET)}
        for job in store.list():
            meta = _mapping(job.get("metadata"))
            spec = _mapping(job.get("spec"))
            status = _mapping(job.get("status"))
            deployment = str(status.get("jobDeploymentStatus") or RAYJOB_UNSET)
            if deployment not in by_status:
                deployment = RAYJOB_UNSET
            by_status[deployment] += 1
            if not per_object:
                continue
            ns = (f'namespace="{_escape(str(meta.get("namespace") or ""))}",'
                  f'name="{_escape(str(meta.get("name") or ""))}"')
            mode = str(spec.get("submissionMode") or j.SUBMISSION_HTTP)
            source = "own" if spec.get("rayClusterSpec") is not None else "selector"
            info.append(f'rayop_rayjob_info{{{ns},submission_mode="{mode if mode in j.SUBMISSION_MODES else UNKNOWN}",'
                        f'cluster_source="{source}"}} 1\n')
            job_status = str(status.get("jobStatus") or RAYJOB_UNSET)
            job_status = job_status if job_status in j.JOB_STATUSES else RAYJOB_UNSET
            state.append(f'rayop_rayjob_status{{{ns},deployment_status="{deployment}",job_status="{job_status}"}} 1\n')
        out: list[str] = []
        if per_object:
            out += _family("rayop_rayjob_info", "One per RayJob: its submission mode and where its cluster comes from "
                           "(own: rayClusterSpec, selector: clusterSelector)", info)
            out += _family("rayop_rayjob_status", "One per RayJob: its jobDeploymentStatus and Ray's job status "
                           "(value 1)", state)
        out += _family("rayop_rayjobs", "RayJob objects by jobDeploymentStatus",
                       [f'rayop_rayjobs{{deployment_status="{s}"}} {n}\n' for s, n in by_status.items()])
        return out


def _escape(value: str) -> str:
    """A label value as the text format writes it (Kubernetes names never need it; kept for safety)."""
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return value


def _family(name: str, help_text: str, rows: list[str]) -> list[str]:
    return [f"# HELP {name} {help_text}\n# TYPE {name} gauge\n", *rows]


def _owner(ray: Body) -> str:
    for ref in _mapping(ray.get("metadata")).get("ownerReferences") or ():
        if isinstance(ref, Mapping) and ref.get("controller") and ref.get("kind") == j.KIND:
            return "RayJob"
    return "none"


def add_cluster_metrics(manager: Manager, mode: str = MODE_CLUSTERS) -> ClusterMetrics:
    """The per-cluster series on the manager's registry, read from its `Ray` informer and, where the manager
    already has them, its pod and `RayJob` informers (none is created here)."""
    rays = manager.informer(RAY)
    pods = manager.informers.get((_POD, MANAGED_BY_SELECTOR, None))
    rayjobs = manager.informers.get((RAYJOB, None, None))
    metrics = ClusterMetrics(manager.metrics.registry, rays.store, pods=pods.store if pods else None,
                             rayjobs=rayjobs.store if rayjobs else None, mode=mode,
                             is_leader=manager.elector.is_leader if manager.elector is not None else lambda: True)
    rays.add_handler(metrics.on_ray_event)
    manager.metrics.add_text_source(metrics.exposition)
    return metrics

