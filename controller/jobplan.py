"""The pure core of the RayJob reconciler: from a `RayJob`, the `Ray` it runs on and what Ray's Job Submission API
reported, decide the next step (create the cluster, submit, poll, delete the finished job's cluster) and the
status.

Guarantees:
- Pure: no I/O, no clock (the caller passes `now`), no Kubernetes client. The same inputs give the same decision.
- One submission per attempt: the submission id is `rayjob-<RayJob UID>-<attempt>` (`rayop.api.rayjob`). Until
  the status records the submission, the caller asks Ray about that id first (`wants_job_info`), and a job Ray
  already knows is adopted, never submitted again; the submission itself is idempotent on Ray's side too (Ray
  refuses a second submission with the same id).
- The status always says why: every state carries a CamelCase `reason` and a `message` (the cluster is not Ready
  and why, the selector matches nothing, the dashboard does not answer, the entrypoint failed with Ray's message).
- Finished jobs (`Complete`, `Failed`, `ValidationFailed`) stay finished; only their own cluster is deleted once
  `ttlSecondsAfterFinished` passed (with `shutdownAfterJobFinishes`). A cluster picked by `clusterSelector` is
  never created, changed or deleted.
- Retries (`backoffLimit`): a failed attempt moves `attempt` and the submission id to the next attempt in the same
  status write that counts the failure, deletes the failed attempt's own cluster, and the next attempt starts on a
  fresh cluster after a back-off (`retry_base` x 2^n, at most `max_backoff`). The deadline
  (`activeDeadlineSeconds`, from `startTime`) fails the job and asks Ray to stop it until Ray reports it ended.
- K8sJob mode (`submissionMode: K8sJob`): instead of the operator's POST, a submitter Job owned by the RayJob
  (`submitter_manifest`, in the head pod's image) runs `ray job submit` with the same submission id and follows
  the job's logs; a submitter pod that finds the submission id known to Ray follows its logs instead of
  submitting, so a retried pod never starts a second run. The state still comes from the REST API; the
  submitter's own failure (Ray never got the submission) fails the RayJob (`SubmitterFailed`).
- Suspension (`suspend: true`): a job that has not started creates nothing (Suspended); a running one gets Ray's
  stop and its own cluster deleted, and moves to the next attempt (a fresh cluster and submission id when it is
  resumed), without counting a failure; startTime restarts at the resume. A finished job ignores it.
- What a finished job leaves (`deletionPolicy`, `shutdownAfterJobFinishes`): `ttlSecondsAfterFinished` after
  `endTime` its own cluster (DeleteCluster) or the RayJob itself (DeleteSelf) is deleted; nothing (DeleteNone).
- No hot loop: the caller is woken by changes of the RayJob and of Rays (owned or matching the selector); timed
  requeues only poll a submitted job (`poll_interval`), back off while the dashboard does not answer
  (1 s, 2 s, 4 s ... `max_backoff`), wait between attempts, and wake at the deadline and the TTL.
- Unchanged inputs yield exactly the stored status (condition transition times are kept), so nothing is written.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from rayop.api import rayjob as j
from rayop.api.schema import DecodeError
from rayop.api.types import API_VERSION, CONDITION_READY
from rayop.api.types import KIND as RAY_KIND
from rayop.objects import DASHBOARD_PORT, LABEL_MANAGED_BY, MANAGED_BY, head_service_name

NORMAL = "Normal"
WARNING = "Warning"

# Ray job metadata keys the operator adds.
META_NAME = "rayjob.k8s.io/name"
META_NAMESPACE = "rayjob.k8s.io/namespace"


@dataclass(frozen=True)
class Timing:
    poll_interval: float = 2.0
    max_backoff: float = 60.0
    retry_base: float = 2.0  # back-off between attempts: 2 s, 4 s, 8 s ... max_backoff


@dataclass(frozen=True)
class JobInfo:
    """What Ray's `GET /api/jobs/<submission id>` reported."""

    status: str
    job_id: str | None = None
    message: str = ""
    exit_code: int | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> JobInfo:
        status = str(data.get("status") or "")
        code = data.get("driver_exit_code")
        return cls(
            status=status if status in j.JOB_STATUSES else j.JOB_PENDING,
            job_id=str(data["job_id"]) if data.get("job_id") else None,
            message=str(data.get("message") or ""),
            exit_code=int(code) if isinstance(code, int) and not isinstance(code, bool) else None,
        )


@dataclass(frozen=True)
class Observed:
    """What the caller saw. `cluster` is the `Ray` the current attempt runs on (the owned child, or the one Ray the
    selector matched); `selected` the names the selector matched; `foreign` is set when a Ray of the child's name
    exists but is not this RayJob's. `job` is Ray's answer for the attempt's submission id, `job_missing` True
    when Ray said it has no such job, `dashboard_error` why the dashboard could not be asked; `dashboard_failures`
    counts consecutive failures for the back-off."""

    cluster: Mapping[str, Any] | None = None
    selected: Sequence[str] = ()
    foreign: bool = False
    job: JobInfo | None = None
    job_missing: bool = False
    dashboard_error: str | None = None
    dashboard_failures: int = 0
    # K8sJob mode: the attempt's submitter Job (None: none seen), and the head pod's Ray image.
    submitter: Mapping[str, Any] | None = None
    head_image: str | None = None


@dataclass(frozen=True)
class CreateCluster:
    manifest: Mapping[str, Any]


@dataclass(frozen=True)
class DeleteCluster:
    name: str
    uid: str


@dataclass(frozen=True)
class Submit:
    address: str
    body: Mapping[str, Any]


@dataclass(frozen=True)
class Stop:
    address: str
    submission_id: str


@dataclass(frozen=True)
class CreateSubmitter:
    manifest: Mapping[str, Any]


@dataclass(frozen=True)
class DeleteSelf:
    uid: str


Action = CreateCluster | DeleteCluster | Submit | Stop | CreateSubmitter | DeleteSelf


@dataclass(frozen=True)
class Decision:
    status: dict[str, Any]
    actions: tuple[Action, ...] = ()
    requeue_after: float | None = None
    events: tuple[tuple[str, str, str], ...] = field(default=())


def _ts(now: datetime) -> str:
    return now.strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_ts(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=None)
    except ValueError:
        return None


def backoff(failures: int, timing: Timing) -> float:
    return float(min(timing.max_backoff, 2.0 ** max(0, failures - 1)))


def attempt_of(rayjob: Mapping[str, Any]) -> int:
    value = (rayjob.get("status") or {}).get("attempt")
    return value if isinstance(value, int) and value > 0 else 1


def is_ready(ray: Mapping[str, Any]) -> bool:
    for c in (ray.get("status") or {}).get("conditions") or []:
        if c.get("type") == CONDITION_READY:
            return bool(c.get("status") == "True")
    return False


def not_ready_why(ray: Mapping[str, Any]) -> str:
    for c in (ray.get("status") or {}).get("conditions") or []:
        if c.get("type") == CONDITION_READY:
            return f"{c.get('reason') or 'NotReady'}: {c.get('message') or ''}".rstrip(": ")
    return "the Ray has no status yet"


def dashboard_address(ray: Mapping[str, Any], cluster_domain: str = "cluster.local") -> str:
    """The dashboard the Ray reconciler publishes (status.endpoints.dashboard), else the head Service's."""
    endpoints = (ray.get("status") or {}).get("endpoints") or {}
    address = endpoints.get("dashboard")
    if isinstance(address, str) and address:
        return address.rstrip("/")
    meta = ray.get("metadata") or {}
    host = f"{head_service_name(str(meta.get('name')))}.{meta.get('namespace')}.svc.{cluster_domain}"
    return f"http://{host}:{DASHBOARD_PORT}"


def labels_match(selector: Mapping[str, str], labels: Mapping[str, Any] | None) -> bool:
    labels = labels or {}
    return all(labels.get(k) == v for k, v in selector.items())


def child_manifest(rayjob: Mapping[str, Any], attempt: int) -> dict[str, Any]:
    """The child `Ray` of an attempt: the spec's rayClusterSpec as given, owned by the RayJob."""
    meta = rayjob["metadata"]
    spec = dict((rayjob.get("spec") or {}).get("rayClusterSpec") or {})
    return {
        "apiVersion": API_VERSION,
        "kind": RAY_KIND,
        "metadata": {
            "name": j.cluster_name(str(meta["name"]), attempt),
            "namespace": meta["namespace"],
            "labels": {j.LABEL_RAYJOB: str(meta["name"]), LABEL_MANAGED_BY: MANAGED_BY},
            "ownerReferences": [{
                "apiVersion": API_VERSION, "kind": j.KIND, "name": meta["name"], "uid": meta["uid"],
                "controller": True, "blockOwnerDeletion": True,
            }],
        },
        "spec": spec,
    }


def submit_body(rayjob: Mapping[str, Any], job: j.RayJob, attempt: int) -> dict[str, Any]:
    """The JSON body of Ray's `POST /api/jobs/` for an attempt."""
    meta = rayjob["metadata"]
    spec = job.spec
    assert spec is not None
    metadata = {str(k): str(v) for k, v in (spec.job_metadata or {}).items()}
    metadata[META_NAME] = str(meta["name"])
    metadata[META_NAMESPACE] = str(meta["namespace"])
    body: dict[str, Any] = {
        "submission_id": j.submission_id(str(meta["uid"]), attempt),
        "entrypoint": spec.entrypoint,
        "metadata": metadata,
    }
    raw = (rayjob.get("spec") or {}).get("runtimeEnv")
    if raw:
        body["runtime_env"] = raw
    if spec.entrypoint_num_cpus is not None:
        body["entrypoint_num_cpus"] = spec.entrypoint_num_cpus
    if spec.entrypoint_num_gpus is not None:
        body["entrypoint_num_gpus"] = spec.entrypoint_num_gpus
    if spec.entrypoint_resources:
        body["entrypoint_resources"] = dict(spec.entrypoint_resources)
    return body


# The submitter's shell: ask Ray about the submission id first; only an unknown id is submitted (`--no-wait`),
# then the job's logs are followed to its end. A submit that fails because the id exists meanwhile still follows.
# Positional arguments: the dashboard address, the submission id, then `ray job submit`'s options and entrypoint.
# The `ray` CLI is Python, whose stdout to a pipe (a container's log) is block-buffered: `ray job logs` prints the
# job's lines without flushing, so without PYTHONUNBUFFERED they would reach `kubectl logs` only at its exit.
SUBMITTER_SCRIPT = """set -u
export PYTHONUNBUFFERED=1
address="$1"; sid="$2"; shift 2
if ray job status --address "$address" "$sid" >/dev/null 2>&1; then
  echo "rayop: Ray already has the submission $sid; following its logs"
else
  echo "rayop: submitting $sid to $address"
  if ! ray job submit --address "$address" --submission-id "$sid" --no-wait "$@"; then
    ray job status --address "$address" "$sid" >/dev/null 2>&1 || exit 1
  fi
fi
# Stopped by SIGTERM (the pod deleted), the submitter exits 143 whatever `ray job logs` returns, so the Job
# counts a failure and starts another pod, which follows on. The follower runs in the background: a kubelet signals
# only the container's main process (this shell), and `wait` returns at once on a trapped signal, where a
# foreground child would hold the trap until it exits.
ray job logs --address "$address" --follow "$sid" &
follower=$!
trap 'kill -TERM "$follower" 2>/dev/null; exit 143' TERM INT
wait "$follower"
"""
SUBMITTER_CONTAINER = "submitter"
SUBMITTER_BACKOFF_LIMIT = 3


def entrypoint_argv(entrypoint: str) -> list[str]:
    """The words after `ray job submit ... --`. Ray joins them with `shlex.join` into the command its shell runs:
    a plain command is passed as its words (Ray gets exactly the entrypoint), anything else (pipes, `&&`,
    variables, other quoting) as `sh -c <entrypoint>`, so Ray's shell runs the same command as in HTTP mode."""
    try:
        words = shlex.split(entrypoint)
    except ValueError:
        words = []
    if words and shlex.join(words) == entrypoint:
        return words
    return ["sh", "-c", entrypoint]


def submitter_manifest(rayjob: Mapping[str, Any], job: j.RayJob, attempt: int, address: str,
                       image: str) -> dict[str, Any]:
    """The K8sJob-mode submitter of an attempt: a Job owned by the RayJob running `ray job submit` in `image`."""
    meta = rayjob["metadata"]
    body = submit_body(rayjob, job, attempt)
    options = ["--metadata-json", json.dumps(body["metadata"], sort_keys=True)]
    if "runtime_env" in body:
        options += ["--runtime-env-json", json.dumps(body["runtime_env"], sort_keys=True)]
    if "entrypoint_num_cpus" in body:
        options += ["--entrypoint-num-cpus", f"{body['entrypoint_num_cpus']:g}"]
    if "entrypoint_num_gpus" in body:
        options += ["--entrypoint-num-gpus", f"{body['entrypoint_num_gpus']:g}"]
    if "entrypoint_resources" in body:
        options += ["--entrypoint-resources", json.dumps(body["entrypoint_resources"], sort_keys=True)]
    labels = {j.LABEL_RAYJOB: str(meta["name"]), LABEL_MANAGED_BY: MANAGED_BY}
    container = {
        "name": SUBMITTER_CONTAINER,
        "image": image,
        "command": ["bash", "-c", SUBMITTER_SCRIPT, "rayop-submit", address, str(body["submission_id"]),
                    *options, "--", *entrypoint_argv(str(body["entrypoint"]))],
        "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}},
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": j.submitter_name(str(meta["name"]), attempt),
            "namespace": meta["namespace"],
            "labels": labels,
            "ownerReferences": [{
                "apiVersion": API_VERSION, "kind": j.KIND, "name": meta["name"], "uid": meta["uid"],
                "controller": True, "blockOwnerDeletion": True,
            }],
        },
        "spec": {
            "backoffLimit": SUBMITTER_BACKOFF_LIMIT,
            "template": {
                "metadata": {"labels": dict(labels)},
                "spec": {"restartPolicy": "Never", "automountServiceAccountToken": False,
                         "containers": [container]},
            },
        },
    }


def job_condition(job: Mapping[str, Any] | None, kind: str) -> Mapping[str, Any] | None:
    for c in ((job or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == kind and c.get("status") == "True":
            return c  # type: ignore[no-any-return]
    return None


def wants_job_info(rayjob: Mapping[str, Any], cluster: Mapping[str, Any] | None) -> bool:
    """Whether the caller should ask Ray about the attempt's submission before `decide`: the job is not finished
    and the cluster exists and is Ready (or the job was submitted already: then poll regardless)."""
    status = rayjob.get("status") or {}
    if cluster is None:
        return False
    if status.get("jobDeploymentStatus") in j.DEPLOY_FINISHED:
        # A job failed by its deadline is followed until Ray reports it stopped.
        return _stopping(status)
    return is_ready(cluster) or _submitted(rayjob)


def _stopping(status: Mapping[str, Any]) -> bool:
    return bool(status.get("reason") == "DeadlineExceeded" and status.get("jobStatus")
                and status.get("jobStatus") not in j.JOB_TERMINAL)


def _submitted(rayjob: Mapping[str, Any]) -> bool:
    status = rayjob.get("status") or {}
    sid = j.submission_id(str(rayjob["metadata"]["uid"]), attempt_of(rayjob))
    return bool(status.get("submissionId") == sid and status.get("jobStatus"))


# -- status ---------------------------------------------------------------------------------------------------


def _condition(old: Mapping[str, Any], kind: str, value: bool, reason: str, message: str, generation: Any,
               now: datetime) -> dict[str, Any]:
    prev: Mapping[str, Any] = next((c for c in old.get("conditions") or [] if c.get("type") == kind), {})
    status = "True" if value else "False"
    out: dict[str, Any] = {"type": kind, "status": status, "reason": reason, "message": message[:32768]}
    if isinstance(generation, int):
        out["observedGeneration"] = generation
    out["lastTransitionTime"] = prev.get("lastTransitionTime") if prev.get("status") == status and \
        prev.get("lastTransitionTime") else _ts(now)
    return out


@dataclass
class _Status:
    rayjob: Mapping[str, Any]
    now: datetime
    body: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        old = self.rayjob.get("status") or {}
        self.old = old
        # Carried over: what earlier reconciles learned and what is set once.
        for key in ("jobId", "jobStatus", "startTime", "endTime", "rayClusterName", "dashboardURL",
                    "clusterDeleted", "failed", "submitterName"):
            if old.get(key) is not None:
                self.body[key] = old[key]
        self.body.setdefault("startTime", _ts(self.now))
        self.body["attempt"] = attempt_of(self.rayjob)
        self.body["submissionId"] = j.submission_id(str(self.rayjob["metadata"]["uid"]), self.body["attempt"])
        if old.get("submissionId") != self.body["submissionId"]:
            # Ray's view of an earlier attempt says nothing about this one.
            self.body.pop("jobStatus", None)
            self.body.pop("jobId", None)
        generation = self.rayjob["metadata"].get("generation")
        if isinstance(generation, int):
            self.body["observedGeneration"] = generation
        self.generation = generation

    def set(self, deployment: str, reason: str, message: str, *, cluster_ready: bool | None = None,
            submitted: bool | None = None) -> dict[str, Any]:
        self.body["jobDeploymentStatus"] = deployment
        self.body["reason"] = reason
        self.body["message"] = message[:32768]
        finished = deployment in j.DEPLOY_FINISHED
        if finished:
            self.body.setdefault("endTime", _ts(self.now))
        old_conditions = {c.get("type"): c for c in self.old.get("conditions") or []}
        conditions = []
        if cluster_ready is None:
            prev = old_conditions.get(j.CONDITION_CLUSTER_READY)
            if prev:
                conditions.append(dict(prev))
        else:
            conditions.append(_condition(self.old, j.CONDITION_CLUSTER_READY, cluster_ready,
                                         "ClusterReady" if cluster_ready else reason,
                                         "the cluster is Ready" if cluster_ready else message, self.generation,
                                         self.now))
        if submitted is None:
            prev = old_conditions.get(j.CONDITION_SUBMITTED)
            if prev:
                conditions.append(dict(prev))
        else:
            conditions.append(_condition(self.old, j.CONDITION_SUBMITTED, submitted,
                                         "Submitted" if submitted else "NotSubmitted",
                                         f"submission {self.body['submissionId']}" if submitted
                                         else "not submitted yet", self.generation, self.now))
        conditions.append(_condition(self.old, j.CONDITION_FINISHED, finished, reason if finished else "NotFinished",
                                     message if finished else "the job has not finished", self.generation,
                                     self.now))
        self.body["conditions"] = conditions
        return self.body


WARNING_REASONS = frozenset({
    "InvalidSpec", "SubmitterFailed", "DeadlineExceeded", "Retrying", "ClusterRejected", "SubmissionRejected", "JobFailed", "JobStopped", "JobLost",
    "ClusterLost", "DashboardUnreachable", "ClusterSelectorNoMatch", "ClusterSelectorAmbiguous",
    "ClusterNameConflict",
})


def _events(old: Mapping[str, Any], new: Mapping[str, Any]) -> tuple[tuple[str, str, str], ...]:
    """One Event per transition: a new deployment status or reason, or a new Ray job state."""
    out = []
    if (old.get("jobDeploymentStatus"), old.get("reason")) != (new.get("jobDeploymentStatus"), new.get("reason")):
        reason = str(new.get("reason") or "")
        out.append((WARNING if reason in WARNING_REASONS else NORMAL, reason,
                    f"{new.get('jobDeploymentStatus')}: {new.get('message') or ''}"))
    if new.get("jobStatus") and old.get("jobStatus") != new.get("jobStatus") and not out:
        out.append((NORMAL, f"Job{str(new['jobStatus']).capitalize()}",
                    f"Ray job {new.get('submissionId')} is {new['jobStatus']}"))
    return tuple(out)


def _done(rayjob: Mapping[str, Any], status: dict[str, Any], actions: tuple[Action, ...] = (),
          requeue_after: float | None = None) -> Decision:
    return Decision(status=status, actions=actions, requeue_after=requeue_after,
                    events=_events(rayjob.get("status") or {}, status))


# -- the decision ---------------------------------------------------------------------------------------------


def decide(rayjob: Mapping[str, Any], observed: Observed, now: datetime, timing: Timing = Timing()) -> Decision:
    """The next step for a RayJob (see the module's guarantees)."""
    st = _Status(rayjob, now)
    old = st.old
    try:
        job = j.RayJob.from_dict(rayjob)
    except DecodeError as e:
        return _done(rayjob, st.set(j.DEPLOY_VALIDATION_FAILED, "InvalidSpec", str(e)))
    spec = job.spec
    assert spec is not None
    if old.get("jobDeploymentStatus") in j.DEPLOY_FINISHED:
        return _finished(rayjob, spec, observed, st, now, timing)
    if (spec.ray_cluster_spec is None) == (spec.cluster_selector is None):
        return _done(rayjob, st.set(j.DEPLOY_VALIDATION_FAILED, "InvalidSpec", j.ONE_CLUSTER_MESSAGE))
    if spec.suspend:
        return _suspend(rayjob, spec, observed, st)
    left = None
    if spec.active_deadline_seconds:
        start = _parse_ts(st.body["startTime"]) or _naive(now)
        left = (start + timedelta(seconds=spec.active_deadline_seconds) - _naive(now)).total_seconds()
        if left <= 0:
            return _deadline(rayjob, spec, observed, st, timing)
    if old.get("jobDeploymentStatus") == j.DEPLOY_RETRYING:
        due = _parse_ts(old.get("nextAttemptTime"))
        if due is not None and due > _naive(now):
            wait = (due - _naive(now)).total_seconds()
            return Decision(status=dict(old), requeue_after=wait if left is None else min(wait, left))
    decision = _active(rayjob, job, spec, observed, st, now, timing)
    if left is not None and decision.status.get("jobDeploymentStatus") not in j.DEPLOY_FINISHED:
        decision = replace(decision, requeue_after=left if decision.requeue_after is None
                           else min(left, decision.requeue_after))
    return decision


def _naive(now: datetime) -> datetime:
    return now.replace(tzinfo=None)


def _suspend(rayjob: Mapping[str, Any], spec: j.RayJobSpec, observed: Observed, st: _Status) -> Decision:
    """spec.suspend: nothing runs. What the current attempt started is undone (Ray's stop, the own cluster
    deleted) and the next attempt is the one a resume starts; a job that never started stays as it is."""
    old = st.old
    attempt = st.body["attempt"]
    actions: list[Action] = []
    cluster = observed.cluster
    submitted = _submitted(rayjob)
    if cluster is not None and submitted and old.get("jobStatus") not in j.JOB_TERMINAL:
        actions.append(Stop(dashboard_address(cluster), st.body["submissionId"]))
    if cluster is not None and spec.ray_cluster_spec is not None:
        meta = cluster["metadata"]
        actions.append(DeleteCluster(str(meta["name"]), str(meta["uid"])))
    message = "spec.suspend is true: no cluster, no submission"
    if submitted or (cluster is not None and spec.ray_cluster_spec is not None):
        nxt = attempt + 1
        st.body["attempt"] = nxt
        st.body["submissionId"] = j.submission_id(str(rayjob["metadata"]["uid"]), nxt)
        message = (f"spec.suspend is true: attempt {attempt} was stopped"
                   + (f" and its Ray {cluster['metadata']['name']} deleted" if actions and cluster is not None
                      and spec.ray_cluster_spec is not None else "")
                   + f"; a resume starts attempt {nxt}")
    elif old.get("jobDeploymentStatus") == j.DEPLOY_SUSPENDED:
        message = str(old.get("message") or message)
    for key in ("jobStatus", "jobId", "submitterName", "dashboardURL", "nextAttemptTime", "startTime"):
        st.body.pop(key, None)
    if spec.ray_cluster_spec is not None or cluster is None:
        st.body.pop("rayClusterName", None)
    status = st.set(j.DEPLOY_SUSPENDED, "Suspended", message, cluster_ready=False, submitted=False)
    status.pop("startTime", None)
    return _done(rayjob, status, tuple(actions))


def _deadline(rayjob: Mapping[str, Any], spec: j.RayJobSpec, observed: Observed, st: _Status,
              timing: Timing) -> Decision:
    """The deadline passed: stop the Ray job (when Ray has it) and fail the RayJob."""
    message = f"the job did not finish within activeDeadlineSeconds ({spec.active_deadline_seconds} s)"
    if observed.job is not None:
        st.body["jobStatus"] = observed.job.status
        if observed.job.job_id:
            st.body["jobId"] = observed.job.job_id
    actions: tuple[Action, ...] = ()
    running = st.body.get("jobStatus") and st.body["jobStatus"] not in j.JOB_TERMINAL
    if observed.cluster is not None and running:
        actions = (Stop(dashboard_address(observed.cluster), st.body["submissionId"]),)
        message += f"; stopping the Ray job {st.body['submissionId']}"
    status = st.set(j.DEPLOY_FAILED, "DeadlineExceeded", message)
    return _done(rayjob, status, actions, timing.poll_interval if actions else _ttl_wait(spec, status, st.now))


def _active(rayjob: Mapping[str, Any], job: j.RayJob, spec: j.RayJobSpec, observed: Observed, st: _Status,
            now: datetime, timing: Timing) -> Decision:
    """An attempt under way: its cluster, then its submission, then Ray's view of the job, in that order."""
    submitted = _submitted(rayjob)
    cluster = _attempt_cluster(rayjob, spec, observed, st, submitted)
    if isinstance(cluster, Decision):
        return cluster
    address = dashboard_address(cluster)
    st.body["dashboardURL"] = address
    if not submitted and observed.job is None:
        return _submission(rayjob, job, spec, observed, st, cluster, address, timing)
    ready = is_ready(cluster)
    if observed.dashboard_error is not None:
        return _done(rayjob, st.set(j.DEPLOY_RUNNING, "DashboardUnreachable",
                                    f"the Ray dashboard at {address} does not answer: {observed.dashboard_error}",
                                    cluster_ready=ready, submitted=True),
                     requeue_after=backoff(observed.dashboard_failures, timing))
    if observed.job is None:
        return _no_job_info(rayjob, job, spec, observed, st, cluster, address, timing)
    return _followed(rayjob, spec, observed, observed.job, st, ready, now, timing)


def _attempt_cluster(rayjob: Mapping[str, Any], spec: j.RayJobSpec, observed: Observed, st: _Status,
                     submitted: bool) -> Mapping[str, Any] | Decision:
    """The `Ray` this attempt runs on, or the decision while there is none to run on: the child to create (or its
    name taken), the selector matching none or several, a cluster lost under a submitted job."""
    name, namespace = str(rayjob["metadata"]["name"]), str(rayjob["metadata"]["namespace"])
    cluster = observed.cluster
    if spec.ray_cluster_spec is not None:
        attempt = st.body["attempt"]
        child = j.cluster_name(name, attempt)
        st.body["rayClusterName"] = child
        if observed.foreign:
            return _done(rayjob, st.set(
                j.DEPLOY_INITIALIZING, "ClusterNameConflict",
                f"a Ray named {child} exists in {namespace} and does not belong to this RayJob; delete or rename "
                "it", cluster_ready=False, submitted=False))
        if cluster is None:
            if submitted:
                return _done(rayjob, st.set(j.DEPLOY_FAILED, "ClusterLost",
                                            f"the Ray {child} the job ran on was deleted before the job finished"))
            return _done(rayjob, st.set(j.DEPLOY_INITIALIZING, "CreatingCluster", f"creating the Ray {child}",
                                        cluster_ready=False, submitted=False),
                         (CreateCluster(child_manifest(rayjob, attempt)),))
        return cluster
    selector = ",".join(f"{k}={v}" for k, v in sorted((spec.cluster_selector or {}).items()))
    if not observed.selected:
        st.body.pop("rayClusterName", None)
        return _done(rayjob, st.set(j.DEPLOY_INITIALIZING, "ClusterSelectorNoMatch",
                                    f"no Ray in {namespace} matches the clusterSelector {selector}; waiting "
                                    "for one", cluster_ready=False, submitted=False))
    if len(observed.selected) > 1 and not submitted:
        return _done(rayjob, st.set(j.DEPLOY_INITIALIZING, "ClusterSelectorAmbiguous",
                                    f"{len(observed.selected)} Rays match the clusterSelector {selector} "
                                    f"({', '.join(sorted(observed.selected)[:5])}); it must match exactly one",
                                    cluster_ready=False, submitted=False))
    if cluster is None:
        return _done(rayjob, st.set(j.DEPLOY_FAILED, "ClusterLost",
                                    f"the Ray {st.old.get('rayClusterName')} the job ran on is gone"))
    st.body["rayClusterName"] = str(cluster["metadata"]["name"])
    return cluster


def _submission(rayjob: Mapping[str, Any], job: j.RayJob, spec: j.RayJobSpec, observed: Observed, st: _Status,
                cluster: Mapping[str, Any], address: str, timing: Timing) -> Decision:
    """Ray does not know this attempt's submission id: wait for a Ready cluster and an answering dashboard, then
    submit (HTTP) or create the submitter Job (K8sJob)."""
    if not is_ready(cluster):
        return _done(rayjob, st.set(j.DEPLOY_INITIALIZING, "ClusterNotReady",
                                    f"waiting for the Ray {cluster['metadata']['name']} to be Ready "
                                    f"({not_ready_why(cluster)})", cluster_ready=False, submitted=False))
    if observed.dashboard_error is not None:
        return _done(rayjob, st.set(j.DEPLOY_INITIALIZING, "DashboardUnreachable",
                                    f"the Ray dashboard at {address} does not answer: {observed.dashboard_error}",
                                    cluster_ready=True, submitted=False),
                     requeue_after=backoff(observed.dashboard_failures, timing))
    attempt = st.body["attempt"]
    if spec.submission_mode == j.SUBMISSION_K8S_JOB:
        return _create_submitter(rayjob, job, observed, st, attempt, address, timing)
    st.body["jobStatus"] = j.JOB_PENDING
    st.body.pop("jobId", None)
    return _done(rayjob, st.set(j.DEPLOY_RUNNING, "Submitted",
                                f"submitted {st.body['submissionId']} to {address}", cluster_ready=True,
                                submitted=True),
                 (Submit(address, submit_body(rayjob, job, attempt)),), requeue_after=timing.poll_interval)


def _no_job_info(rayjob: Mapping[str, Any], job: j.RayJob, spec: j.RayJobSpec, observed: Observed, st: _Status,
                 cluster: Mapping[str, Any], address: str, timing: Timing) -> Decision:
    """Submitted (or adopted), but no job info this time: Ray does not know the submission (a submitter still to
    submit it, or the job lost), or nobody asked."""
    ready = is_ready(cluster)
    if observed.job_missing and spec.submission_mode == j.SUBMISSION_K8S_JOB:
        waiting = _submitter_pending(rayjob, job, observed, st, st.body["attempt"], address, ready, timing)
        if waiting is not None:
            return waiting
    if observed.job_missing:
        return _done(rayjob, st.set(j.DEPLOY_FAILED, "JobLost",
                                    f"Ray no longer knows the submission {st.body['submissionId']} (the "
                                    f"cluster {cluster['metadata']['name']} was restarted?)", cluster_ready=ready,
                                    submitted=True))
    # Not asked (the caller only asks when `wants_job_info`): ask next time.
    return _done(rayjob, st.set(j.DEPLOY_RUNNING, str(st.old.get("reason") or "Submitted"),
                                str(st.old.get("message") or ""), cluster_ready=ready, submitted=True),
                 requeue_after=timing.poll_interval)


def _followed(rayjob: Mapping[str, Any], spec: j.RayJobSpec, observed: Observed, info: JobInfo, st: _Status,
              ready: bool, now: datetime, timing: Timing) -> Decision:
    """Ray's view of the submitted job: still running, succeeded, or failed/stopped (then retried while the
    backoff limit allows)."""
    st.body["jobStatus"] = info.status
    if info.job_id:
        st.body["jobId"] = info.job_id
    if info.status == j.JOB_SUCCEEDED:
        status = st.set(j.DEPLOY_COMPLETE, "JobSucceeded", info.message or "the entrypoint succeeded",
                        cluster_ready=ready, submitted=True)
        return _done(rayjob, status, requeue_after=_ttl_wait(spec, status, now))
    if info.status in (j.JOB_FAILED, j.JOB_STOPPED):
        attempt = st.body["attempt"]
        code = f" (exit code {info.exit_code})" if info.exit_code is not None else ""
        reason = "JobFailed" if info.status == j.JOB_FAILED else "JobStopped"
        why = f"{info.message or 'the entrypoint failed'}{code}"
        failed = int(st.body.get("failed") or 0) + 1
        st.body["failed"] = failed
        limit = spec.backoff_limit or 0
        if failed <= limit:
            return _retry(rayjob, spec, observed, st, attempt, failed, limit, f"{reason}: {why}", timing)
        if attempt > 1:
            why = f"attempt {attempt} of {attempt}: {why}"
        status = st.set(j.DEPLOY_FAILED, reason, why, cluster_ready=ready, submitted=True)
        return _done(rayjob, status, requeue_after=_ttl_wait(spec, status, now))
    reason = "JobRunning" if info.status == j.JOB_RUNNING else "JobPending"
    message = info.message or f"Ray reports the job {info.status}"
    return _done(rayjob, st.set(j.DEPLOY_RUNNING, reason, message, cluster_ready=ready, submitted=True),
                 requeue_after=timing.poll_interval)


def _create_submitter(rayjob: Mapping[str, Any], job: j.RayJob, observed: Observed, st: _Status, attempt: int,
                      address: str, timing: Timing) -> Decision:
    """K8sJob mode, Ray does not know the submission id: create the attempt's submitter Job."""
    name = j.submitter_name(str(rayjob["metadata"]["name"]), attempt)
    if not observed.head_image:
        return _done(rayjob, st.set(j.DEPLOY_INITIALIZING, "HeadPodUnknown",
                                    "waiting to see the head pod, whose image the submitter Job runs",
                                    cluster_ready=True, submitted=False), requeue_after=timing.poll_interval)
    st.body["jobStatus"] = j.JOB_PENDING
    st.body.pop("jobId", None)
    st.body["submitterName"] = name
    return _done(rayjob, st.set(j.DEPLOY_RUNNING, "SubmitterCreated",
                                f"the Job {name} submits {st.body['submissionId']} to {address}",
                                cluster_ready=True, submitted=True),
                 (CreateSubmitter(submitter_manifest(rayjob, job, attempt, address, observed.head_image)),),
                 requeue_after=timing.poll_interval)


def _submitter_pending(rayjob: Mapping[str, Any], job: j.RayJob, observed: Observed, st: _Status, attempt: int,
                       address: str, ready: bool, timing: Timing) -> Decision | None:
    """K8sJob mode, the submitter Job was created and Ray does not know the submission (yet): wait for the
    submitter, fail when it failed, create it again when it is not there (AlreadyExists is fine). None when the
    submitter completed: Ray lost a job it had (`JobLost`)."""
    name = j.submitter_name(str(rayjob["metadata"]["name"]), attempt)
    st.body["submitterName"] = name
    submitter = observed.submitter
    failed = job_condition(submitter, "Failed")
    if failed is not None:
        return _done(rayjob, st.set(
            j.DEPLOY_FAILED, "SubmitterFailed",
            f"the submitter Job {name} failed ({failed.get('reason') or 'Failed'}: {failed.get('message') or ''}) "
            f"and Ray has no submission {st.body['submissionId']}; see `kubectl logs job/{name}`",
            cluster_ready=ready, submitted=True))
    if submitter is not None and job_condition(submitter, "Complete") is not None:
        return None
    actions: tuple[Action, ...] = ()
    if submitter is None and observed.head_image:
        actions = (CreateSubmitter(submitter_manifest(rayjob, job, attempt, address, observed.head_image)),)
    return _done(rayjob, st.set(j.DEPLOY_RUNNING, "WaitingForSubmitter",
                                f"the Job {name} has not submitted {st.body['submissionId']} yet",
                                cluster_ready=ready, submitted=True), actions, requeue_after=timing.poll_interval)


def _retry(rayjob: Mapping[str, Any], spec: j.RayJobSpec, observed: Observed, st: _Status, attempt: int,
           failed: int, limit: int, why: str, timing: Timing) -> Decision:
    """Attempt `attempt` failed and retries are left: the next attempt gets a fresh cluster (the failed one is
    deleted) or, on a selected cluster, a new submission; it starts after a back-off."""
    delay = float(min(timing.max_backoff, timing.retry_base * 2 ** (failed - 1)))
    nxt = attempt + 1
    st.body["attempt"] = nxt
    st.body["submissionId"] = j.submission_id(str(rayjob["metadata"]["uid"]), nxt)
    st.body.pop("jobStatus", None)
    st.body.pop("jobId", None)
    st.body.pop("submitterName", None)
    st.body["nextAttemptTime"] = _ts(st.now + timedelta(seconds=delay))
    actions: tuple[Action, ...] = ()
    where = "on the same Ray"
    if spec.ray_cluster_spec is not None:
        child = j.cluster_name(str(rayjob["metadata"]["name"]), nxt)
        st.body["rayClusterName"] = child
        st.body.pop("dashboardURL", None)
        where = f"on a fresh Ray {child}"
        if observed.cluster is not None:
            meta = observed.cluster["metadata"]
            actions = (DeleteCluster(str(meta["name"]), str(meta["uid"])),)
    status = st.set(j.DEPLOY_RETRYING, "Retrying",
                    f"attempt {attempt} of {limit + 1} failed ({why}); attempt {nxt} starts in {delay:g} s {where}",
                    cluster_ready=False, submitted=False)
    return _done(rayjob, status, actions, delay)


def _ttl_wait(spec: j.RayJobSpec, status: Mapping[str, Any], now: datetime) -> float | None:
    """Seconds until what the deletion policy names (the own cluster, or the RayJob) is due for deletion (0: now),
    or None when nothing is to be deleted."""
    policy = j.deletion_policy(spec)
    if policy == j.DELETE_NONE:
        return None
    if policy == j.DELETE_CLUSTER and (spec.ray_cluster_spec is None or status.get("clusterDeleted")):
        return None
    end = _parse_ts(status.get("endTime"))
    due = (end or now.replace(tzinfo=None)) + timedelta(seconds=spec.ttl_seconds_after_finished or 0)
    return max(0.0, (due - now.replace(tzinfo=None)).total_seconds())


def _finished(rayjob: Mapping[str, Any], spec: j.RayJobSpec, observed: Observed, st: _Status,
              now: datetime, timing: Timing) -> Decision:
    """A finished job stays as it is; its own cluster goes once the TTL passed. A job failed by its deadline is
    followed (and asked to stop again) until Ray reports the Ray job ended."""
    old = st.old
    status: dict[str, Any] = dict(old)
    if _stopping(old) and observed.cluster is not None:
        if observed.job is not None:
            status["jobStatus"] = observed.job.status
        elif observed.job_missing:
            status.pop("jobStatus", None)
        if _stopping(status) and observed.dashboard_error is None:
            stop = Stop(dashboard_address(observed.cluster), str(status.get("submissionId")))
            return Decision(status=status, actions=(stop,), requeue_after=timing.poll_interval,
                            events=_events(old, status))
        if _stopping(status):
            return Decision(status=status, requeue_after=backoff(observed.dashboard_failures, timing))
    wait = _ttl_wait(spec, status, now)
    if wait is None:
        return _done(rayjob, status)
    if j.deletion_policy(spec) == j.DELETE_SELF:
        if wait > 0:
            return Decision(status=status, requeue_after=wait)
        return Decision(status=status, actions=(DeleteSelf(str(rayjob["metadata"]["uid"])),),
                        events=((NORMAL, "DeletingSelf",
                                 f"deleting this RayJob and what it owns: the job finished "
                                 f"{spec.ttl_seconds_after_finished or 0} s ago (deletionPolicy DeleteSelf)"),))
    if observed.cluster is None:
        if status.get("rayClusterName"):
            status["clusterDeleted"] = True
        return _done(rayjob, status)
    if wait > 0:
        return Decision(status=status, requeue_after=wait)
    meta = observed.cluster["metadata"]
    return Decision(status=status, actions=(DeleteCluster(str(meta["name"]), str(meta["uid"])),),
                    events=((NORMAL, "DeletingCluster",
                             f"deleting the Ray {meta['name']}: the job finished "
                             f"{spec.ttl_seconds_after_finished or 0} s ago (deletionPolicy DeleteCluster)"),))


def submit_refused(decision: Decision, rayjob: Mapping[str, Any], message: str, now: datetime) -> Decision:
    """The status when Ray refused the submission (HTTP 400: e.g. a runtimeEnv Ray cannot use)."""
    st = _Status(rayjob, now)
    st.body.update({k: v for k, v in decision.status.items() if k in ("rayClusterName", "dashboardURL")})
    st.body.pop("jobStatus", None)
    status = st.set(j.DEPLOY_VALIDATION_FAILED, "SubmissionRejected", f"Ray refused the submission: {message}",
                    cluster_ready=True, submitted=False)
    spec = j.RayJob.from_dict(rayjob).spec
    assert spec is not None
    return _done(rayjob, status, requeue_after=_ttl_wait(spec, status, now))


def submit_unreachable(decision: Decision, rayjob: Mapping[str, Any], error: str, failures: int, now: datetime,
                       timing: Timing = Timing()) -> Decision:
    """The status when the submission could not be sent (the dashboard did not answer): try again later."""
    st = _Status(rayjob, now)
    st.body.update({k: v for k, v in decision.status.items() if k in ("rayClusterName", "dashboardURL")})
    st.body.pop("jobStatus", None)
    status = st.set(j.DEPLOY_INITIALIZING, "DashboardUnreachable",
                    f"the Ray dashboard at {decision.status.get('dashboardURL')} does not answer: {error}",
                    cluster_ready=True, submitted=False)
    return _done(rayjob, status, requeue_after=backoff(failures, timing))


# -- deletion -------------------------------------------------------------------------------------------------

# Held by a RayJob from its submission on, so that deleting it stops the Ray job before the RayJob (and with it,
# through the ownerReference, its own cluster) goes.
FINALIZER = "ray.k8s.io/stop-ray-job"
# How long a deleted RayJob waits for Ray to stop its job before the finalizer is removed regardless.
STOP_GRACE_SECONDS = 60.0
# Consecutive dashboard failures after which a deleted RayJob gives up stopping.
STOP_GIVE_UP_FAILURES = 5


@dataclass(frozen=True)
class Deletion:
    """What to do for a RayJob being deleted: ask Ray to stop the job, and/or remove the finalizer."""

    stop: Stop | None = None
    remove_finalizer: bool = False
    requeue_after: float | None = None
    why: str = ""


def has_finalizer(rayjob: Mapping[str, Any]) -> bool:
    return FINALIZER in ((rayjob.get("metadata") or {}).get("finalizers") or [])


def needs_finalizer(rayjob: Mapping[str, Any], decision: Decision) -> bool:
    """A job about to be submitted gets the finalizer first (so its deletion can never skip the stop)."""
    return any(isinstance(a, (Submit, CreateSubmitter)) for a in decision.actions) and not has_finalizer(rayjob)


def wants_job_info_deleting(rayjob: Mapping[str, Any], cluster: Mapping[str, Any] | None) -> bool:
    status = rayjob.get("status") or {}
    return has_finalizer(rayjob) and cluster is not None and status.get("jobStatus") not in j.JOB_TERMINAL


def deleting(rayjob: Mapping[str, Any], observed: Observed, now: datetime, timing: Timing = Timing()) -> Deletion:
    """The deleted RayJob's last steps. The finalizer always goes: once Ray reports the job ended or unknown, when
    there is no cluster (any more) to ask, when the dashboard failed STOP_GIVE_UP_FAILURES times in a row, or
    STOP_GRACE_SECONDS after the deletion."""
    if not has_finalizer(rayjob):
        return Deletion()
    status = rayjob.get("status") or {}
    sid = str(status.get("submissionId") or j.submission_id(str(rayjob["metadata"]["uid"]), attempt_of(rayjob)))
    if observed.cluster is None:
        return Deletion(remove_finalizer=True, why="no cluster to stop the job on")
    if observed.job is not None and observed.job.status in j.JOB_TERMINAL:
        return Deletion(remove_finalizer=True, why=f"Ray reports {sid} {observed.job.status}")
    if observed.job_missing or (observed.job is None and observed.dashboard_error is None):
        return Deletion(remove_finalizer=True, why=f"Ray has no running job {sid}")
    since = _parse_ts(str((rayjob.get("metadata") or {}).get("deletionTimestamp") or ""))
    if since is not None and (_naive(now) - since).total_seconds() >= STOP_GRACE_SECONDS:
        return Deletion(remove_finalizer=True, why=f"Ray did not stop {sid} within {STOP_GRACE_SECONDS:g} s")
    if observed.dashboard_error is not None:
        if observed.dashboard_failures >= STOP_GIVE_UP_FAILURES:
            return Deletion(remove_finalizer=True,
                            why=f"the dashboard did not answer {observed.dashboard_failures} times: "
                                f"{observed.dashboard_error}")
        return Deletion(requeue_after=backoff(observed.dashboard_failures, timing))
    return Deletion(stop=Stop(dashboard_address(observed.cluster), sid), requeue_after=timing.poll_interval,
                    why=f"stopping {sid}")
