"""The RayJob reconciler: the I/O around `rayop.jobplan`. One `RayJob` key in; its cluster found or created, the
Ray job submitted and followed through Ray's Job Submission REST API, the status written.

Guarantees:
- Level-triggered: each call reads the `RayJob` and the `Ray`s from the informers' caches, asks Ray about the
  attempt's submission id when the pure core wants it (`wants_job_info`), lets the core decide, applies the
  decision and writes the status. It never branches on what event caused it.
- The child `Ray` is created with a controller ownerReference to the RayJob; a Ray of the same name that is not
  this RayJob's is never adopted. Create answered AlreadyExists is fine (a lagging cache); a create the API
  server refuses as invalid (422) makes the job ValidationFailed with the server's message (no retry loop).
- A submission Ray already has is never repeated (see `rayop.jobplan`); a submission refused by Ray (HTTP 400)
  makes the job ValidationFailed with Ray's message; a dashboard that does not answer is retried with back-off.
- Decisions are made on the cached RayJob, and never applied over a newer one: before any action a live GET checks
  the cached resourceVersion, and the status patch carries it (409 on a stale cache; the key is retried).
- Status goes through the `/status` subresource as a JSON merge patch, only when it differs from the stored one;
  one Event per transition (the core's), plus Normal Events for the cluster created and deleted.
- K8sJob mode: the attempt's submitter Job (built by the core, in the image of the Ray's head pod, read live when
  the Job is about to be created) is created with a controller ownerReference to the RayJob, so it goes with the
  RayJob; AlreadyExists is fine. Submitter Jobs (label ray.k8s.io/rayjob) are watched, mapped to their RayJob, so
  a failed submitter wakes the RayJob at once.
- Ray's stop API is called for a job past its `activeDeadlineSeconds`, repeatedly (each poll) until Ray reports
  the job ended.
- Deletion: a RayJob gets the finalizer `ray.k8s.io/stop-ray-job` right before its first submission; when it is
  deleted, the Ray job is stopped (Ray's stop API, each poll) and the finalizer removed once Ray reports the job
  ended — or at once when there is no cluster to ask, after 5 dashboard failures in a row, or 60 s after the
  deletion: its removal never depends on the cluster. The own `Ray` then goes through the ownerReference.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timezone
from typing import Any

import structlog

from rayop.api import rayjob as j
from rayop.api.types import GROUP, VERSION
from rayop.objects import AUTOSCALER_CONTAINER
from rayop.jobplan import (
    CreateCluster,
    CreateSubmitter,
    Decision,
    DeleteCluster,
    DeleteSelf,
    JobInfo,
    Observed,
    Stop,
    Submit,
    Timing,
    FINALIZER,
    dashboard_address,
    decide,
    deleting,
    has_finalizer,
    labels_match,
    needs_finalizer,
    submit_refused,
    submit_unreachable,
    wants_job_info,
    wants_job_info_deleting,
)
from rayop.jobsubmit import DashboardError, JobSubmissionClient, SubmissionRejected
from rayop.reconciler import RAY, WrittenStatus, merge_patch
from rayop.runtime.events import NORMAL, WARNING
from rayop.runtime.handlers import generation_changed
from rayop.runtime.informer import Event
from rayop.runtime.kube import CONTENT_MERGE_PATCH, ApiError, KubeClient, Resource
from rayop.runtime.manager import Manager, Reconcile, ReconcileError, Result
from rayop.runtime.store import INDEX_NAMESPACE, ObjectKey, controller_owner, resource_version

log = structlog.get_logger("rayop.jobreconciler")

RAYJOB = Resource(GROUP, VERSION, j.PLURAL, j.KIND)
BATCH_JOB = Resource("batch", "v1", "jobs", "Job")
POD = Resource("", "v1", "pods", "Pod")
CONTROLLER_NAME = "rayjob"


def _owned_by(obj: Mapping[str, Any], uid: str) -> bool:
    ref = controller_owner(obj)
    return ref is not None and ref.get("kind") == j.KIND and ref.get("uid") == uid


class RayJobReconciler:
    def __init__(self, manager: Manager, timing: Timing | None = None,
                 submitter: JobSubmissionClient | None = None, now: Callable[[], datetime] | None = None):
        self.client: KubeClient = manager.client
        self.recorder = manager.recorder
        self.jobs = manager.informer(RAYJOB)
        self.rays = manager.informer(RAY)
        # Only the submitter Jobs (K8sJob mode), which carry the RayJob label.
        self.submitters = manager.informer(BATCH_JOB, label_selector=j.LABEL_RAYJOB)
        self.timing = timing or Timing()
        self.submitter = submitter or JobSubmissionClient()
        self._now = now or (lambda: datetime.now(timezone.utc))
        self._failures: dict[ObjectKey, int] = {}
        self._lock = threading.Lock()
        # The status last written per RayJob until the cache shows it (see rayop.reconciler.WrittenStatus).
        self._written = WrittenStatus()

    # -- mapping Ray events to RayJobs ---------------------------------------------------------------------------

    def rayjobs_of_ray(self, event: Event) -> Iterable[ObjectKey]:
        """The RayJobs a Ray event concerns: its controlling RayJob, and the RayJobs whose clusterSelector matches
        it or whose status names it."""
        ray = event.obj
        meta = ray.get("metadata") or {}
        namespace = str(meta.get("namespace") or "")
        name = str(meta.get("name") or "")
        keys = set()
        ref = controller_owner(ray)
        if ref is not None and ref.get("kind") == j.KIND:
            keys.add(ObjectKey(namespace, str(ref.get("name") or "")))
        for job in self.jobs.store.by_index(INDEX_NAMESPACE, namespace):
            selector = (job.get("spec") or {}).get("clusterSelector")
            named = (job.get("status") or {}).get("rayClusterName") == name
            labels = [meta.get("labels")] + ([(event.old.get("metadata") or {}).get("labels")] if event.old else [])
            if named or (isinstance(selector, Mapping) and selector
                         and any(labels_match(selector, ls) for ls in labels)):
                keys.add(ObjectKey(namespace, str(job["metadata"]["name"])))
        return keys

    def rayjob_of_submitter(self, event: Event) -> Iterable[ObjectKey]:
        """A submitter Job event concerns the RayJob that owns it."""
        ref = controller_owner(event.obj)
        if ref is None or ref.get("kind") != j.KIND:
            return ()
        return (ObjectKey(str((event.obj.get("metadata") or {}).get("namespace") or ""), str(ref.get("name") or "")),)

    # -- reconcile ------------------------------------------------------------------------------------------------

    def __call__(self, key: ObjectKey) -> Result | None:
        rayjob: Mapping[str, Any] | None = self.jobs.store.get(key)
        if rayjob is None:
            with self._lock:
                self._failures.pop(key, None)
            self._written.forget(key)
            return None
        if rayjob["metadata"].get("deletionTimestamp"):
            return self.finalize(key, rayjob)
        observed = self.observe(key, rayjob)
        now = self._now()
        decision = decide(rayjob, observed, now, self.timing)
        if needs_finalizer(rayjob, decision):
            rayjob = self.set_finalizer(key, rayjob, add=True)
        decision = self.apply(key, rayjob, decision, now)
        self.write_status(rayjob, decision)
        return Result(requeue_after=decision.requeue_after) if decision.requeue_after is not None else None

    def finalize(self, key: ObjectKey, rayjob: Mapping[str, Any]) -> Result | None:
        """A deleted RayJob: stop its Ray job (Ray's stop API), then remove the finalizer (always, see
        `rayop.jobplan.deleting`); its own cluster then goes with it through the ownerReference."""
        if not has_finalizer(rayjob):
            return None
        observed = self.observe(key, rayjob, deleting=True)
        step = deleting(rayjob, observed, self._now(), self.timing)
        if step.stop is not None:
            self.stop(key, rayjob, step.stop)
        if step.remove_finalizer:
            self.set_finalizer(key, rayjob, add=False)
            log.info("finalizer removed", key=str(key), why=step.why)
            self.recorder.record(rayjob, NORMAL, "Finalized", f"deletion: {step.why}")
            return None
        return Result(requeue_after=step.requeue_after) if step.requeue_after is not None else None

    def set_finalizer(self, key: ObjectKey, rayjob: Mapping[str, Any], add: bool) -> Mapping[str, Any]:
        """Add or remove the operator's finalizer (merge patch guarded by resourceVersion); the patched object."""
        meta = rayjob["metadata"]
        current = [f for f in meta.get("finalizers") or [] if f != FINALIZER]
        body = {"metadata": {"resourceVersion": meta.get("resourceVersion"),
                             "finalizers": current + [FINALIZER] if add else current}}
        try:
            patched: Mapping[str, Any] = self.client.patch(RAYJOB.object(key.namespace, key.name), body,
                                                           CONTENT_MERGE_PATCH)
        except ApiError as e:
            if e.conflict:
                raise ReconcileError(f"RayJob {key} changed meanwhile; retrying") from None
            if e.not_found and not add:
                return rayjob
            raise
        return patched

    def observe(self, key: ObjectKey, rayjob: Mapping[str, Any], deleting: bool = False) -> Observed:
        meta = rayjob["metadata"]
        uid = str(meta["uid"])
        spec = rayjob.get("spec") or {}
        status = rayjob.get("status") or {}
        attempt = status.get("attempt") if isinstance(status.get("attempt"), int) else 1
        cluster: Mapping[str, Any] | None = None
        selected: tuple[str, ...] = ()
        foreign = False
        if spec.get("rayClusterSpec") is not None:
            cluster = self.rays.store.get(ObjectKey(key.namespace, j.cluster_name(key.name, int(attempt or 1))))
            if cluster is not None and not _owned_by(cluster, uid):
                cluster, foreign = None, True
        elif isinstance(spec.get("clusterSelector"), Mapping) and spec["clusterSelector"]:
            selector = spec["clusterSelector"]
            matching = [r for r in self.rays.store.by_index(INDEX_NAMESPACE, key.namespace)
                        if labels_match(selector, (r.get("metadata") or {}).get("labels"))
                        and not (r.get("metadata") or {}).get("deletionTimestamp")]
            selected = tuple(sorted(str(r["metadata"]["name"]) for r in matching))
            # Once submitted, the job stays on the cluster it was submitted to.
            named = status.get("rayClusterName")
            pick = [r for r in matching if r["metadata"]["name"] == named] if named and status.get("jobStatus") \
                else matching
            cluster = pick[0] if len(pick) == 1 else None
            if named and status.get("jobStatus") and not pick:
                cluster = self.rays.store.get(ObjectKey(key.namespace, str(named)))
        k8s_job = spec.get("submissionMode") == j.SUBMISSION_K8S_JOB
        submitter: Mapping[str, Any] | None = None
        if k8s_job:
            submitter = self.submitters.store.get(ObjectKey(key.namespace, j.submitter_name(key.name,
                                                                                           int(attempt or 1))))
            if submitter is not None and not _owned_by(submitter, uid):
                submitter = None
        observed = Observed(cluster=cluster, selected=selected, foreign=foreign, submitter=submitter)
        wanted = wants_job_info_deleting(rayjob, cluster) if deleting else wants_job_info(rayjob, cluster)
        if cluster is None or not wanted:
            return observed
        address = dashboard_address(cluster)
        sid = j.submission_id(uid, int(attempt or 1))
        try:
            info = self.submitter.get_job(address, sid)
        except DashboardError as e:
            failures = self._failed(key)
            log.info("dashboard unreachable", key=str(key), error=str(e), failures=failures)
            return Observed(cluster=cluster, selected=selected, dashboard_error=str(e), dashboard_failures=failures)
        self._succeeded(key)
        if info is None:
            image = None
            if k8s_job and not deleting and (submitter is None or not status.get("jobStatus")):
                image = self.head_image(cluster)
            return Observed(cluster=cluster, selected=selected, job_missing=True, submitter=submitter,
                            head_image=image)
        return Observed(cluster=cluster, selected=selected, job=JobInfo.from_json(info), submitter=submitter)

    def head_image(self, cluster: Mapping[str, Any]) -> str | None:
        """The Ray image of the cluster's head pod (live GET: only when a submitter Job is about to be created)."""
        name = (cluster.get("status") or {}).get("headPodName")
        namespace = str(cluster["metadata"]["namespace"])
        if not name:
            return None
        try:
            pod = self.client.get(POD.object(namespace, str(name)))
        except ApiError as e:
            if e.not_found:
                return None
            raise
        for c in (pod.get("spec") or {}).get("containers") or []:
            if c.get("name") != AUTOSCALER_CONTAINER and c.get("image"):
                return str(c["image"])
        return None

    def _failed(self, key: ObjectKey) -> int:
        with self._lock:
            self._failures[key] = self._failures.get(key, 0) + 1
            return self._failures[key]

    def _succeeded(self, key: ObjectKey) -> None:
        with self._lock:
            self._failures.pop(key, None)

    # -- apply ----------------------------------------------------------------------------------------------------

    def apply(self, key: ObjectKey, rayjob: Mapping[str, Any], decision: Decision, now: datetime) -> Decision:
        if decision.actions:
            self.ensure_fresh(key, rayjob)
        for action in decision.actions:
            if isinstance(action, CreateCluster):
                decision = self.create_cluster(key, rayjob, decision, action)
            elif isinstance(action, DeleteCluster):
                self.delete_cluster(key, rayjob, action)
            elif isinstance(action, Submit):
                decision = self.submit(key, rayjob, decision, action, now)
            elif isinstance(action, Stop):
                self.stop(key, rayjob, action)
            elif isinstance(action, CreateSubmitter):
                self.create_submitter(key, rayjob, action)
            elif isinstance(action, DeleteSelf):
                self.delete_self(key, rayjob, action)
        return decision

    def delete_self(self, key: ObjectKey, rayjob: Mapping[str, Any], action: DeleteSelf) -> None:
        """deletionPolicy DeleteSelf: delete this RayJob (its UID as a precondition); what it owns follows."""
        try:
            self.client.delete(RAYJOB.object(key.namespace, key.name),
                               {"preconditions": {"uid": action.uid}, "propagationPolicy": "Background"})
        except ApiError as e:
            if not (e.not_found or e.conflict):
                raise
            return
        log.info("deleted the finished RayJob (DeleteSelf)", key=str(key))

    def create_submitter(self, key: ObjectKey, rayjob: Mapping[str, Any], action: CreateSubmitter) -> None:
        name = str(action.manifest["metadata"]["name"])
        try:
            self.client.create(BATCH_JOB.collection(key.namespace), dict(action.manifest))
        except ApiError as e:
            if e.already_exists:
                return
            raise
        log.info("created submitter", key=str(key), job=name)
        self.recorder.record(rayjob, NORMAL, "CreatedSubmitter", f"created the submitter Job {name}")

    def stop(self, key: ObjectKey, rayjob: Mapping[str, Any], action: Stop) -> None:
        """Ask Ray to stop the job; a failure is retried by the next poll (the status still shows it running)."""
        try:
            stopped = self.submitter.stop(action.address, action.submission_id)
        except DashboardError as e:
            log.info("stop failed", key=str(key), submission_id=action.submission_id, error=str(e))
            return
        log.info("stop requested", key=str(key), submission_id=action.submission_id, stopped=stopped)
        if stopped:
            self.recorder.record(rayjob, NORMAL, "StoppingJob", f"asked Ray to stop {action.submission_id}")

    def ensure_fresh(self, key: ObjectKey, rayjob: Mapping[str, Any]) -> None:
        """Before acting, make sure the decision was made on the RayJob as stored: a cache one status write behind
        would act on an earlier attempt (e.g. take the deleted cluster of a failed attempt for a lost one).
        A live GET per action (actions are rare: create, submit, stop, delete); a stale cache is retried."""
        try:
            live = self.client.get(RAYJOB.object(key.namespace, key.name))
        except ApiError as e:
            if e.not_found:
                raise ReconcileError(f"RayJob {key} is gone; the cache has not seen it yet") from None
            raise
        cached = str(rayjob["metadata"].get("resourceVersion") or "")
        if str(live["metadata"].get("resourceVersion") or "") != cached:
            raise ReconcileError(f"RayJob {key}: the cache is behind the API server; retrying")

    def create_cluster(self, key: ObjectKey, rayjob: Mapping[str, Any], decision: Decision,
                       action: CreateCluster) -> Decision:
        name = str(action.manifest["metadata"]["name"])
        try:
            self.client.create(RAY.collection(key.namespace), dict(action.manifest))
        except ApiError as e:
            if e.already_exists:
                return decision
            if e.status in (400, 422):
                status = dict(decision.status)
                status.update(jobDeploymentStatus=j.DEPLOY_VALIDATION_FAILED, reason="ClusterRejected",
                              message=f"the API server refused the Ray {name}: {e.message}")
                status.setdefault("endTime", status.get("startTime"))
                return Decision(status=status, events=((WARNING, "ClusterRejected", str(status["message"])),))
            raise
        log.info("created cluster", key=str(key), ray=name)
        self.recorder.record(rayjob, NORMAL, "CreatedCluster", f"created the Ray {name}")
        return decision

    def delete_cluster(self, key: ObjectKey, rayjob: Mapping[str, Any], action: DeleteCluster) -> None:
        try:
            self.client.delete(RAY.object(key.namespace, action.name),
                               {"preconditions": {"uid": action.uid}, "propagationPolicy": "Background"})
        except ApiError as e:
            if not (e.not_found or e.conflict):
                raise
            return
        log.info("deleted cluster", key=str(key), ray=action.name)
        self.recorder.record(rayjob, NORMAL, "DeletedCluster", f"deleted the Ray {action.name}")

    def submit(self, key: ObjectKey, rayjob: Mapping[str, Any], decision: Decision, action: Submit,
               now: datetime) -> Decision:
        try:
            sid = self.submitter.submit(action.address, action.body)
        except SubmissionRejected as e:
            log.info("submission rejected", key=str(key), error=str(e))
            return submit_refused(decision, rayjob, str(e), now)
        except DashboardError as e:
            failures = self._failed(key)
            return submit_unreachable(decision, rayjob, str(e), failures, now, self.timing)
        self._succeeded(key)
        log.info("submitted", key=str(key), submission_id=sid, address=action.address)
        return decision

    # -- status ---------------------------------------------------------------------------------------------------

    def write_status(self, rayjob: Mapping[str, Any], decision: Decision) -> None:
        key = ObjectKey.of(rayjob)
        written = self._written.pending(key, rayjob)
        patch = merge_patch((rayjob.get("status") or {}) if written is None else written, decision.status)
        if patch:
            if written is not None:
                # The cache does not show this process's last status write yet, and the new status differs from
                # what was written (not from what the cache holds, which may equal it: see WrittenStatus). The
                # write would be refused (409, the guard below); retried once the cache caught up.
                raise ReconcileError(f"RayJob {key}: the cache does not show the last status write yet")
            made = self._patch_status(rayjob, patch)
            self._written.wrote(key, rayjob, decision.status, made)
        for type_, reason, message in decision.events:
            self.recorder.record(rayjob, type_, reason, message)

    def _patch_status(self, rayjob: Mapping[str, Any], patch: Mapping[str, Any]) -> str:
        """The guarded status patch; the resourceVersion it made ("" when the RayJob is gone)."""
        meta = rayjob["metadata"]
        # Guarded by the resourceVersion the decision was made on: a status computed from a stale cache is refused
        # (409) and the key is retried once the cache caught up, never merged over a newer status.
        body = {"metadata": {"resourceVersion": meta.get("resourceVersion")}, "status": patch}
        try:
            answer = self.client.patch(RAYJOB.object(meta["namespace"], meta["name"]) + "/status", body,
                                       CONTENT_MERGE_PATCH, metadata_only=True)
        except ApiError as e:
            self._written.forget(ObjectKey.of(rayjob))
            if e.not_found:
                return ""
            if e.conflict:
                raise ReconcileError(f"RayJob {meta['namespace']}/{meta['name']}: status changed meanwhile") from None
            raise
        return resource_version(answer)


def rayjob_reconciler(manager: Manager) -> Reconcile:
    return RayJobReconciler(manager)


def wire_rayjobs(manager: Manager, workers: int, timing: Timing | None = None,
                 submitter: JobSubmissionClient | None = None) -> RayJobReconciler:
    """The `rayjob` controller: its own workqueue, fed by RayJob changes (spec: generation) and by every Ray
    event that concerns a RayJob (the child it owns, a Ray its selector matches or its status names)."""
    reconciler = RayJobReconciler(manager, timing, submitter)
    controller = manager.controller(CONTROLLER_NAME, reconciler, workers=workers)
    controller.watch_primary(reconciler.jobs, predicate=generation_changed)
    controller.watch(reconciler.rays, reconciler.rayjobs_of_ray)
    controller.watch(reconciler.submitters, reconciler.rayjob_of_submitter)
    return reconciler


def rayjob_crd_served(client: KubeClient) -> bool:
    """Whether the API server serves the RayJob kind (its CRD is installed)."""
    try:
        resources = client.get(f"/apis/{GROUP}/{VERSION}")
    except ApiError as e:
        if e.not_found:
            return False
        raise
    return any(r.get("name") == j.PLURAL for r in resources.get("resources") or [])
