"""The `RayJob` custom resource (ray.k8s.io/v1alpha1): a Ray program run to completion on a Ray cluster.

Guarantees:
- Declared once with `prop` like the `Ray` kind: the CRD in `rayop.api.crd` (`build_rayjob_crd`) and
  `RayJob.from_dict` read the same declarations.
- `rayClusterSpec` is the `Ray` kind's own `RaySpec` (same schema, same CEL rules), so a job's cluster is validated
  exactly like a `Ray`.
- Only what the operator implements is declared: fields a later version adds are absent, so the API server prunes
  them instead of the operator silently ignoring them.
- Pure: no I/O, no clock, no environment, no Kubernetes client.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rayop.api.schema import decode, prop
from rayop.api.types import DNS_1035_LABEL, GROUP, RayCondition, RaySpec, conditions_field

KIND = "RayJob"
LIST_KIND = "RayJobList"
PLURAL = "rayjobs"
SINGULAR = "rayjob"
SHORT_NAMES = ("rj",)
CRD_NAME = f"{PLURAL}.{GROUP}"

MAX_BACKOFF_LIMIT = 100
# The child Ray of attempt n is named `<rayjob>-<n>`; with at most 40 characters for the RayJob's name the child's
# name (and its pods' `<ray>-head-<5>` / `<ray>-worker-<5>`) fits the Ray kind's limits.
MAX_NAME_LENGTH = 40

SUBMISSION_HTTP = "HTTP"
SUBMISSION_K8S_JOB = "K8sJob"
SUBMISSION_MODES = (SUBMISSION_HTTP, SUBMISSION_K8S_JOB)

# What a finished job leaves behind (spec.deletionPolicy).
DELETE_NONE = "DeleteNone"
DELETE_CLUSTER = "DeleteCluster"
DELETE_SELF = "DeleteSelf"
DELETION_POLICIES = (DELETE_NONE, DELETE_CLUSTER, DELETE_SELF)

# Ray's job states (JobStatus in ray.dashboard.modules.job.common).
JOB_PENDING = "PENDING"
JOB_RUNNING = "RUNNING"
JOB_STOPPED = "STOPPED"
JOB_SUCCEEDED = "SUCCEEDED"
JOB_FAILED = "FAILED"
JOB_STATUSES = (JOB_PENDING, JOB_RUNNING, JOB_STOPPED, JOB_SUCCEEDED, JOB_FAILED)
JOB_TERMINAL = frozenset({JOB_STOPPED, JOB_SUCCEEDED, JOB_FAILED})

# What the operator is doing with the job (status.jobDeploymentStatus).
DEPLOY_INITIALIZING = "Initializing"
DEPLOY_RUNNING = "Running"
DEPLOY_COMPLETE = "Complete"
DEPLOY_FAILED = "Failed"
DEPLOY_VALIDATION_FAILED = "ValidationFailed"
DEPLOY_RETRYING = "Retrying"
DEPLOY_SUSPENDED = "Suspended"
DEPLOYMENT_STATUSES = (DEPLOY_INITIALIZING, DEPLOY_RUNNING, DEPLOY_COMPLETE, DEPLOY_FAILED, DEPLOY_VALIDATION_FAILED,
                       DEPLOY_RETRYING, DEPLOY_SUSPENDED)
DEPLOY_FINISHED = frozenset({DEPLOY_COMPLETE, DEPLOY_FAILED, DEPLOY_VALIDATION_FAILED})

# Condition types on status.conditions.
CONDITION_CLUSTER_READY = "ClusterReady"
CONDITION_SUBMITTED = "Submitted"
CONDITION_FINISHED = "Finished"
CONDITION_TYPES = (CONDITION_CLUSTER_READY, CONDITION_SUBMITTED, CONDITION_FINISHED)

# Label on a child Ray naming the RayJob it runs.
LABEL_RAYJOB = "ray.k8s.io/rayjob"


def _non_negative(field: str) -> tuple[tuple[str, str], ...]:
    return (("self >= 0.0", f"{field} must not be negative"),)


@dataclass(frozen=True)
class RayJobSpec:
    """What to run and where: an entrypoint (a shell command) run through Ray's Job Submission API on either a
    cluster created for this job (rayClusterSpec) or an existing Ray picked by labels (clusterSelector)."""

    entrypoint: str = prop(
        "entrypoint",
        "The shell command Ray runs as the job's driver, e.g. `python my_job.py`. Must not be empty.",
        required=True,
        min_length=1,
        max_length=65536,
        rules=(("self.matches('[^ \\t\\r\\n]')", "spec.entrypoint must not be empty or blank"),),
    )
    runtime_env: Mapping[str, Any] | None = prop(
        "runtimeEnv",
        "Ray's runtime environment for the job, as an object with Ray's keys (working_dir, py_modules, pip, conda, "
        "env_vars, ...). Passed to Ray as given; Ray rejects what it cannot use and the status says so "
        "(ValidationFailed).",
        preserve_unknown=True,
    )
    entrypoint_num_cpus: float | None = prop(
        "entrypointNumCpus", "CPUs reserved for the entrypoint (the driver) on the cluster.",
        rules=_non_negative("spec.entrypointNumCpus"),
    )
    entrypoint_num_gpus: float | None = prop(
        "entrypointNumGpus", "GPUs reserved for the entrypoint.", rules=_non_negative("spec.entrypointNumGpus"),
    )
    entrypoint_resources: Mapping[str, float] | None = prop(
        "entrypointResources",
        "Custom Ray resources reserved for the entrypoint, e.g. {accelerator: 1}.",
        max_properties=32,
        rules=(("self.all(k, self[k] >= 0.0)", "spec.entrypointResources values must not be negative"),),
    )
    job_metadata: Mapping[str, str] | None = prop(
        "metadata",
        "Metadata attached to the Ray job (Ray's job metadata: string keys and values). The operator adds "
        "rayjob.k8s.io/name and rayjob.k8s.io/namespace.",
        max_properties=64,
    )
    ray_cluster_spec: RaySpec | None = prop(
        "rayClusterSpec",
        "A `Ray` spec for a cluster created for this job: a child `Ray` named <rayjob>-<attempt>, owned by the "
        "RayJob. Exactly one of rayClusterSpec and clusterSelector.",
    )
    cluster_selector: Mapping[str, str] | None = prop(
        "clusterSelector",
        "Labels picking one existing `Ray` in the RayJob's namespace to run on. The operator never changes or "
        "deletes that Ray. Exactly one of rayClusterSpec and clusterSelector.",
        max_properties=16,
        rules=(("self.size() > 0", "spec.clusterSelector must name at least one label"),),
    )
    submission_mode: str | None = prop(
        "submissionMode",
        "How the job is submitted. HTTP (the default): the operator submits through Ray's Job Submission REST API on "
        "the head's dashboard port. K8sJob: a submitter Kubernetes Job (<name>-submit-<attempt>, in the head's "
        "image) runs `ray job submit` and follows the job's logs, so `kubectl logs job/<name>-submit-<attempt>` "
        "shows the program's output. In both modes the operator follows the job's state through the REST API.",
        enum=SUBMISSION_MODES,
        default=SUBMISSION_HTTP,
    )
    shutdown_after_job_finishes: bool | None = prop(
        "shutdownAfterJobFinishes",
        "Delete the cluster created from rayClusterSpec once the job finished (ttlSecondsAfterFinished later): "
        "the same as deletionPolicy DeleteCluster. Never deletes a cluster picked by clusterSelector.",
    )
    deletion_policy: str | None = prop(
        "deletionPolicy",
        "What goes once the job finished, ttlSecondsAfterFinished later. DeleteNone: nothing. DeleteCluster: the "
        "cluster created from rayClusterSpec (only with rayClusterSpec). DeleteSelf: the RayJob itself, and with "
        "it what it owns (its cluster, its submitter Jobs); a cluster picked by clusterSelector stays. Unset: "
        "DeleteCluster when shutdownAfterJobFinishes is true, else DeleteNone. Not together with "
        "shutdownAfterJobFinishes: true.",
        enum=DELETION_POLICIES,
    )
    ttl_seconds_after_finished: int | None = prop(
        "ttlSecondsAfterFinished",
        "Seconds after the job finished before what deletionPolicy (or shutdownAfterJobFinishes) names is "
        "deleted. Defaults to 0.",
        minimum=0,
    )
    suspend: bool | None = prop(
        "suspend",
        "While true (what Kueue and other queueing systems set) the job does not run: created suspended, no "
        "cluster and no pods are created; set on a running job, the operator asks Ray to stop the Ray job, deletes "
        "the cluster the job owns and the job shows Suspended. Set back to false, the job starts again as a new "
        "attempt (a fresh cluster and submission id; startTime, and with it activeDeadlineSeconds, counts from "
        "then). Ignored once the job finished.",
    )
    active_deadline_seconds: int | None = prop(
        "activeDeadlineSeconds",
        "Seconds from the job's startTime (over all attempts) after which the operator stops the Ray job and fails "
        "the RayJob with reason DeadlineExceeded.",
        minimum=1,
    )
    backoff_limit: int | None = prop(
        "backoffLimit",
        "How many times a failed attempt (Ray reports FAILED or STOPPED) is retried: each retry gets a fresh "
        "cluster (rayClusterSpec: the failed attempt's Ray is deleted, <name>-<attempt+1> created) or, with "
        f"clusterSelector, a new submission on the same Ray. Defaults to 0; at most {MAX_BACKOFF_LIMIT}.",
        minimum=0,
        maximum=MAX_BACKOFF_LIMIT,
    )


@dataclass(frozen=True)
class RayJobStatus:
    """The observed state of the job, written by the operator through the /status subresource."""

    job_id: str | None = prop("jobId", "The Ray job id Ray reported for the current submission.")
    submission_id: str | None = prop(
        "submissionId",
        "The Ray submission id of the current attempt: rayjob-<RayJob UID>-<attempt>, the same on every retry of "
        "the submission, so Ray never runs one attempt twice.",
    )
    job_status: str | None = prop("jobStatus", "The Ray job's state as Ray reports it.", enum=JOB_STATUSES)
    job_deployment_status: str | None = prop(
        "jobDeploymentStatus", "What the operator is doing with the job.", enum=DEPLOYMENT_STATUSES
    )
    reason: str | None = prop("reason", "Why the job is in this state (CamelCase).", max_length=1024)
    message: str | None = prop("message", "A human-readable explanation of the state.", max_length=32768)
    start_time: str | None = prop(
        "startTime", "When the operator first acted on the job (RFC 3339, UTC).", format="date-time"
    )
    end_time: str | None = prop("endTime", "When the job reached a final state (RFC 3339, UTC).", format="date-time")
    attempt: int | None = prop("attempt", "The current attempt, from 1.", minimum=0)
    failed: int | None = prop("failed", "How many attempts failed.", minimum=0)
    next_attempt_time: str | None = prop(
        "nextAttemptTime", "While Retrying: when the next attempt starts (RFC 3339, UTC).", format="date-time"
    )
    ray_cluster_name: str | None = prop("rayClusterName", "The `Ray` the job runs (or ran) on.")
    dashboard_url: str | None = prop("dashboardURL", "The Ray dashboard of that cluster.")
    submitter_name: str | None = prop(
        "submitterName", "K8sJob mode: the submitter Job of the current attempt (`kubectl logs job/<it>`)."
    )
    cluster_deleted: bool | None = prop(
        "clusterDeleted", "True once the operator deleted the job's own cluster (shutdownAfterJobFinishes)."
    )
    conditions: tuple[RayCondition, ...] | None = conditions_field(CONDITION_TYPES, max_items=16)
    observed_generation: int | None = prop(
        "observedGeneration", "The metadata.generation the operator last acted on.", minimum=0, int32=False
    )


@dataclass(frozen=True)
class RayJob:
    """A Ray program (entrypoint) run to completion on a new or an existing Ray cluster."""

    api_version: str | None = prop("apiVersion", "ray.k8s.io/v1alpha1.")
    kind: str | None = prop("kind", "RayJob.")
    metadata: Mapping[str, Any] | None = prop("metadata", "Standard object metadata.")
    spec: RayJobSpec | None = prop("spec", "What to run and where.", required=True)
    status: RayJobStatus | None = prop("status", "The observed state of the job, written by the operator.")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RayJob:
        """Decode a `RayJob` as returned by the API server; raise `DecodeError` naming a bad field."""
        return decode(cls, data, "")


NAME_RULE = (f"self.metadata.name.size() <= {MAX_NAME_LENGTH} && self.metadata.name.matches('{DNS_1035_LABEL}')")
NAME_MESSAGE = (
    f"metadata.name must be a DNS-1035 label of at most {MAX_NAME_LENGTH} characters: the job's cluster is named "
    "<name>-<attempt> and its pods after that"
)
ONE_CLUSTER_RULE = "has(self.rayClusterSpec) != has(self.clusterSelector)"
ONE_CLUSTER_MESSAGE = "spec must set exactly one of rayClusterSpec and clusterSelector"
POLICY_OR_SHUTDOWN_RULE = ("!(has(self.deletionPolicy) && has(self.shutdownAfterJobFinishes) && "
                           "self.shutdownAfterJobFinishes)")
POLICY_OR_SHUTDOWN_MESSAGE = ("spec.deletionPolicy and spec.shutdownAfterJobFinishes: true must not both be set "
                              "(shutdownAfterJobFinishes: true is deletionPolicy DeleteCluster)")
DELETE_CLUSTER_RULE = f"!has(self.deletionPolicy) || self.deletionPolicy != '{DELETE_CLUSTER}' || has(self.rayClusterSpec)"
DELETE_CLUSTER_MESSAGE = ("spec.deletionPolicy DeleteCluster needs rayClusterSpec: a cluster picked by "
                          "clusterSelector is never deleted")
# CEL rules on the spec as a whole.
SPEC_RULES = ((ONE_CLUSTER_RULE, ONE_CLUSTER_MESSAGE), (POLICY_OR_SHUTDOWN_RULE, POLICY_OR_SHUTDOWN_MESSAGE),
              (DELETE_CLUSTER_RULE, DELETE_CLUSTER_MESSAGE))


def deletion_policy(spec: RayJobSpec) -> str:
    """The effective deletion policy: deletionPolicy, else DeleteCluster with shutdownAfterJobFinishes (and a
    cluster of its own), else DeleteNone."""
    if spec.deletion_policy:
        return spec.deletion_policy
    if spec.shutdown_after_job_finishes and spec.ray_cluster_spec is not None:
        return DELETE_CLUSTER
    return DELETE_NONE


def submission_id(uid: str, attempt: int) -> str:
    """The Ray submission id of an attempt: a pure function of the RayJob's UID and the attempt number."""
    return f"rayjob-{uid}-{attempt}"


def submitter_name(name: str, attempt: int) -> str:
    """The submitter Job of an attempt (K8sJob mode)."""
    return f"{name}-submit-{attempt}"


def cluster_name(name: str, attempt: int) -> str:
    """The child `Ray` of an attempt."""
    return f"{name}-{attempt}"
