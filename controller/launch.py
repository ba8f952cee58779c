"""A launch and its attempts: what the plan and the status both read from the launcher pods of a `Ray`.

A *launch* is one head pod (its UID) with one effective configuration (its hash). It is run by bare pods, one
attempt at a time, each named from the launch and its attempt number (`build.launcher_pod_name`), owned by the
`Ray`, with `restartPolicy: Never`. The operator applies the retry policy a Job would (a Job of one pod costs the API
server its own create, about four status writes, two Events and the removal of its tracking finalizer per launch,
for the same policy):

- at most `launcher_backoff_limit` + 1 attempts; the next one starts 10 s after the last one failed, doubling per
  failure, at most 6 minutes;
- no new attempt once `launcher_deadline_seconds` have passed since the launch's first attempt was created, and each
  attempt carries that deadline as its `activeDeadlineSeconds` (the kubelet ends it; its reason is then
  `DeadlineExceeded`, which ends the launch too);
- the launch succeeded once an attempt Succeeded; it failed (`BackoffLimitExceeded`, `DeadlineExceeded`) when no
  attempt is left; while an attempt runs, or the next one waits for its back-off, it is running;
- the first attempt is placed on the head pod's Node by the operator (`spec.nodeName`: no scheduling, so no
  binding and no scheduler Event); when that Node refuses it (the kubelet's admission: the pod Failed before any
  container was created, e.g. `OutOfcpu`), the refusal is not a failure: the next attempt starts at once and is
  placed by the scheduler, as every later attempt is.

Guarantees: pure (the clock is an argument); the same pods give the same answer in the plan and in the status.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from rayop.defaults import Options
from rayop.objects import (
    ANNOTATION_CONFIG_HASH,
    ANNOTATION_HEAD_UID,
    ANNOTATION_LAUNCH_ATTEMPT,
    LABEL_ROLE,
    ROLE_LAUNCHER,
    Body,
    annotations_of,
    container_statuses,
    created,
    is_active,
    label,
    name_of,
    parse_time,
    phase,
    start_time,
    status_of,
    terminated,
)

RETRY_BASE_SECONDS = 10.0
RETRY_MAX_SECONDS = 360.0

RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"

REASON_BACKOFF_LIMIT = "BackoffLimitExceeded"
REASON_DEADLINE = "DeadlineExceeded"


def is_launcher(pod: Body) -> bool:
    return label(pod, LABEL_ROLE) == ROLE_LAUNCHER


def launch_key(pod: Body) -> tuple[str, str]:
    """(head pod UID, config hash) of the launch a launcher pod is an attempt of."""
    notes = annotations_of(pod)
    return str(notes.get(ANNOTATION_HEAD_UID) or ""), str(notes.get(ANNOTATION_CONFIG_HASH) or "")


def attempt_of(pod: Body) -> int:
    try:
        return max(0, int(str(annotations_of(pod).get(ANNOTATION_LAUNCH_ATTEMPT, 0))))
    except (TypeError, ValueError):
        return 0


def refused_by_node(pod: Body) -> bool:
    """The first attempt, turned away by its Node's admission: the kubelet marks such a pod Failed, with a reason
    (e.g. `OutOfcpu`) and a message `Pod was rejected: ...`, and creates no container (no container status)."""
    return (attempt_of(pod) == 0 and phase(pod) == "Failed" and not container_statuses(pod)
            and bool(status_of(pod).get("reason")) and status_of(pod).get("reason") != REASON_DEADLINE)


def pinned(attempt: int) -> bool:
    """Whether the attempt runs on the head pod's Node (placed by the operator): only the first."""
    return attempt == 0


def _finished_at(pod: Body) -> datetime | None:
    """When a finished attempt ended: the latest container finish, else its start, else its creation."""
    ends = [t for t in (parse_time(terminated(cs.get("state")).get("finishedAt")) for cs in container_statuses(pod))
            if t is not None]
    return max(ends) if ends else (start_time(pod) or parse_time(created(pod)))


@dataclass(frozen=True)
class Launch:
    """One launch's state from its attempts (the pods of one launch key)."""

    # The attempts, oldest first (by attempt number); terminating ones included.
    attempts: tuple[Body, ...]
    outcome: str  # RUNNING, SUCCEEDED or FAILED
    # For FAILED: BackoffLimitExceeded or DeadlineExceeded, with a message.
    reason: str = ""
    message: str = ""
    # The attempt to create now (RUNNING, nothing live), or None; `retry_at` when it must wait for a back-off.
    next_attempt: int | None = None
    retry_at: datetime | None = None

    @property
    def live(self) -> tuple[Body, ...]:
        """Attempts neither finished nor terminating."""
        return tuple(p for p in self.attempts if is_active(p))

    @property
    def finished(self) -> bool:
        return self.outcome != RUNNING

    @property
    def current(self) -> Body | None:
        """The attempt the status names: the one that succeeded, else a live one, else the newest."""
        for p in self.attempts:
            if phase(p) == "Succeeded":
                return p
        live = self.live
        if live:
            return live[-1]
        return self.attempts[-1] if self.attempts else None


def assess(attempts: Sequence[Body], now: datetime, options: Options) -> Launch:
    """The state of one launch from its attempts (launcher pods of one launch key)."""
    pods = tuple(sorted(attempts, key=lambda p: (attempt_of(p), created(p), name_of(p))))
    if any(phase(p) == "Succeeded" for p in pods):
        return Launch(pods, SUCCEEDED)
    # A refusal by the head's Node is not a failure of the launch: the next attempt follows at once, scheduled.
    failed = [p for p in pods if phase(p) == "Failed" and not refused_by_node(p)]
    limit = options.launcher_backoff_limit
    deadline = options.launcher_deadline_seconds
    killed = next((p for p in failed if status_of(p).get("reason") == REASON_DEADLINE), None)
    if killed is not None:
        return Launch(pods, FAILED, REASON_DEADLINE,
                      f"attempt {attempt_of(killed)} was stopped at the launch's deadline ({deadline}s)")
    if len(failed) > limit:
        return Launch(pods, FAILED, REASON_BACKOFF_LIMIT,
                      f"{len(failed)} attempts failed (backoffLimit {limit})")
    if any(phase(p) not in ("Succeeded", "Failed") for p in pods):
        # An attempt runs (one being deleted by someone else ends first; the next event brings a reconcile).
        return Launch(pods, RUNNING)
    first = min((t for t in (parse_time(created(p)) for p in pods) if t is not None), default=None)
    if first is not None and (now - first).total_seconds() >= deadline:
        return Launch(pods, FAILED, REASON_DEADLINE, f"the launch did not succeed within its deadline ({deadline}s)")
    next_attempt = max((attempt_of(p) for p in pods), default=-1) + 1
    retry_at = None
    if failed:
        ended = [t for t in (_finished_at(p) for p in failed) if t is not None]
        delay = min(RETRY_BASE_SECONDS * 2 ** (len(failed) - 1), RETRY_MAX_SECONDS)
        if ended:
            retry_at = max(ended) + timedelta(seconds=delay)
    return Launch(pods, RUNNING, next_attempt=next_attempt, retry_at=retry_at)


def attempts_of(pods: Sequence[Body], key: tuple[str, str]) -> list[Body]:
    """The launcher pods among `pods` that are attempts of the launch `key`."""
    return [p for p in pods if is_launcher(p) and launch_key(p) == key]


def newest_key(pods: Sequence[Body], head_uid: str | None = None) -> tuple[str, str] | None:
    """The launch key of the newest launcher pod (of the head `head_uid` when given and it has any)."""
    launchers = [p for p in pods if is_launcher(p)]
    if head_uid:
        mine = [p for p in launchers if launch_key(p)[0] == head_uid]
        if mine:
            launchers = mine
    if not launchers:
        return None
    return launch_key(max(launchers, key=lambda p: (created(p), name_of(p))))
