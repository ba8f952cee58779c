"""What a deleted `Ray` with GCS fault tolerance does before it goes: its keys in Redis are deleted by a clean-up Job.

Guarantees:
- A `Ray` whose spec has `gcsFaultTolerance` carries the finalizer `ray.k8s.io/gcs-cleanup` (added by the
  reconciler on its first reconcile); a `Ray` without the block never gets it and costs nothing here. A live `Ray`
  whose block was removed loses the finalizer (there is no Redis to clean any more as far as the spec says).
- When such a `Ray` is deleted: its pods go first, at once and without a drain (the reconciler deletes them with a
  short grace period), so no head writes to Redis after the clean-up; then one Job `<name>-gcs-cleanup` runs Ray's
  own clean-up helper.
- The finalizer is always removed, and so the `Ray` never stays Terminating: when the Job completed (Normal Event
  `GcsCleanedUp`), when it failed (its retries or its deadline used up: Warning Event `GcsCleanupFailed` naming the
  Job's reason and the keys left), when nothing can be cleaned (no valid block: Warning `GcsCleanupSkipped`), and
  in any case `gcs_cleanup_deadline_seconds + DEADLINE_GRACE_SECONDS` after the deletion (Warning
  `GcsCleanupFailed`), counted from the `Ray`'s deletionTimestamp, so an operator restart does not reset it.
- Pure: the caller passes the clock and what it observed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from rayop.api.model import GcsFaultTolerance
from rayop.defaults import Options

FINALIZER = "ray.k8s.io/gcs-cleanup"
# The operator's own bound beyond the Job's deadline (a Job controller that never marks the Job failed, a Job whose
# pod cannot be created): the finalizer goes at the latest this long after the Job's deadline.
DEADLINE_GRACE_SECONDS = 60.0
# A deleted Ray is looked at again at least this often while it waits (Job and pod events usually come first).
POLL_SECONDS = 10.0

Body = Mapping[str, Any]


@dataclass(frozen=True)
class Cleanup:
    """The next step for a deleted `Ray` that holds the finalizer."""

    create_job: bool = False
    remove_finalizer: bool = False
    # (type, reason, message) of the Event to record with this step.
    event: tuple[str, str, str] | None = None
    requeue_after: float | None = None
    why: str = ""


def finalizers(ray: Body) -> list[str]:
    value = (ray.get("metadata") or {}).get("finalizers")
    return [str(f) for f in value] if isinstance(value, list) else []


def has_finalizer(ray: Body) -> bool:
    return FINALIZER in finalizers(ray)


def wants_finalizer(ray: Body) -> bool:
    """The spec asks for GCS fault tolerance (whatever its validity: a deletion then reports what it could not do)."""
    spec = ray.get("spec")
    return isinstance(spec, Mapping) and spec.get("gcsFaultTolerance") is not None


def keys_of(ft: GcsFaultTolerance, namespace: str) -> str:
    """How the keys left behind are described in Events: Ray's prefix of them and the Redis they are in."""
    return f"keys RAY{namespace}@* in Redis at {ft.redis_address}"


def _parse(ts: object) -> datetime | None:
    if not isinstance(ts, str) or not ts:
        return None
    try:
        return datetime.fromisoformat(ts.replace("Z", "+00:00"))
    except ValueError:
        return None


def _condition(job: Body, kind: str) -> Body | None:
    for c in ((job.get("status") or {}).get("conditions") or []):
        if isinstance(c, Mapping) and c.get("type") == kind and c.get("status") == "True":
            return c
    return None


def job_outcome(job: Body) -> tuple[str, str] | None:
    """("Complete", "") or ("Failed", why) once the Job ended, else None."""
    if _condition(job, "Complete") is not None or _condition(job, "SuccessCriteriaMet") is not None:
        return "Complete", ""
    failed = _condition(job, "Failed") or _condition(job, "FailureTarget")
    if failed is not None:
        return "Failed", f"{failed.get('reason') or 'Failed'}: {failed.get('message') or ''}".strip(": ")
    return None


def plan_cleanup(ray: Body, *, ft: GcsFaultTolerance | None, storage_namespace: str, job: Body | None,
                 pods_left: int, now: datetime, options: Options, invalid: str | None = None) -> Cleanup:
    """The next step for `ray` (deleted, holding the finalizer). `ft` is its validated block (None: none, or
    `invalid` says why it could not be read); `job` the observed clean-up Job; `pods_left` its head and worker
    pods still present (terminating ones included)."""
    if ft is None:
        why = f"the configuration is invalid ({invalid})" if invalid else "the spec has no gcsFaultTolerance"
        return Cleanup(remove_finalizer=True, why=why,
                       event=("Warning", "GcsCleanupSkipped", f"Redis was not cleaned up: {why}"))
    keys = keys_of(ft, storage_namespace)
    since = _parse((ray.get("metadata") or {}).get("deletionTimestamp"))
    bound = options.gcs_cleanup_deadline_seconds + DEADLINE_GRACE_SECONDS
    elapsed = 0.0 if since is None else (now.astimezone(timezone.utc) - since).total_seconds()
    if job is not None:
        outcome = job_outcome(job)
        if outcome is not None and outcome[0] == "Complete":
            return Cleanup(remove_finalizer=True, why="the clean-up Job completed",
                           event=("Normal", "GcsCleanedUp", f"deleted the {keys}"))
        if outcome is not None:
            return Cleanup(remove_finalizer=True, why=f"the clean-up Job failed: {outcome[1]}",
                           event=("Warning", "GcsCleanupFailed",
                                  f"the clean-up Job failed ({outcome[1]}); the {keys} may remain"))
    if elapsed >= bound:
        return Cleanup(remove_finalizer=True, why=f"no clean-up within {bound:g} s",
                       event=("Warning", "GcsCleanupFailed",
                              f"the clean-up did not end within {bound:g} s of the deletion; the {keys} may remain"))
    wait = max(min(POLL_SECONDS, bound - elapsed), 0.5)
    if job is not None:
        return Cleanup(requeue_after=wait, why="waiting for the clean-up Job")
    if pods_left:
        return Cleanup(requeue_after=wait, why=f"waiting for {pods_left} pod(s) to go before the clean-up")
    return Cleanup(create_job=True, requeue_after=wait, why="the pods are gone: cleaning up Redis",
                   event=("Normal", "GcsCleanup", f"deleting the {keys}"))
