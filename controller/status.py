"""The pure status computation: a `Ray`, its model (or why there is none) and its observed children in, the
`status` to write out.

Guarantees:
- No I/O and no clock: `now` is an argument; times are written as RFC 3339 in UTC with a `Z` and whole seconds.
- Idempotent: for an unchanged cluster the result equals the stored status, so the caller writes nothing. A
  condition keeps its `lastTransitionTime` while its status is unchanged (reason and message may change without
  a transition); `startTime` is set once; `lastReconcileTime` is the time of the last reconcile that changed the
  status (with `Options.status_refresh_seconds` above 0 it is also refreshed once older than that) — so an idle
  cluster costs no status write.
- The head is `rayop.objects.choose_head`'s, the one the plan keeps; the pods are counted as `rayop.objects.classify`
  groups them for the plan.
- Honest readiness: `Ready` is True only when the head pod is Ready and every group has at least its desired
  number of Ready worker pods; pending, terminating or failed pods never count. A `Ray` whose configuration is
  invalid is never Ready (`InvalidConfiguration`), but its pods are still counted.
- Replica counts follow the proposal's ReplicaStatus: replicas (pods not terminated and not terminating),
  updatedReplicas (those with the group's current template hash), readyReplicas, availableReplicas (ready; the
  operator uses minReadySeconds 0) and unavailableReplicas (desired - available, never negative). The launcher's
  counts come from the current launch's attempts (`rayop.launch`; desired 1 until the launch finished).
- SuccessfulLaunch carries the launcher's own reason and message (its one-line JSON summary, read from the
  termination message of the launcher container of the launch's last finished attempt) when the launch failed;
  the launch's reason (BackoffLimitExceeded, DeadlineExceeded) only when no attempt left a summary.
- Conditions: ConfigurationValid, HeadReady, WorkersReady, Ready, SuccessfulLaunch, ReplicaFailure, each with
  type/status/reason (CamelCase)/message/observedGeneration/lastTransitionTime. Conditions of other types that
  someone else set are kept as they are.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Union, cast

from rayop.api.model import ClusterModel, ConfigurationError, Conversion, ConfigWarning
from rayop.autoscaler import REASON_NO_SUMMARY, LaunchSummary, parse_launch_summary
from rayop.launch import FAILED, SUCCEEDED, assess, attempts_of, is_launcher, newest_key, refused_by_node
from rayop.api.types import (
    CONDITION_CONFIGURATION_VALID,
    CONDITION_HEAD_READY,
    CONDITION_READY,
    CONDITION_SUCCESSFUL_LAUNCH,
    CONDITION_WORKERS_READY,
    HEAD_GROUP,
)
from rayop.build import Desired
from rayop.defaults import Options
from rayop.objects import (
    CLIENT_PORT,
    DASHBOARD_PORT,
    GCS_PORT,
    LAUNCHER_CONTAINER,
    METRICS_PORT,
    JSON,
    Body,
    Condition,
    Observed,
    RayPods,
    choose_head,
    classify,
    condition,
    conditions,
    container_statuses,
    created,
    head_service_host,
    head_ready_since,
    head_service_name,
    is_active,
    is_ready,
    is_scheduled,
    is_terminating,
    meta,
    name_of,
    owned_by_other,
    parse_time,
    phase,
    pod_failure,
    pod_ip,
    spec_of,
    status_of,
    template_hash,
    terminated,
    uid_of,
    waiting,
)

CONDITION_REPLICA_FAILURE = "ReplicaFailure"
# Present once a Ray was suspended (spec.suspend): True while it is, False (Resumed) after.
CONDITION_SUSPENDED = "Suspended"
MANAGED_CONDITIONS = (
    CONDITION_CONFIGURATION_VALID,
    CONDITION_HEAD_READY,
    CONDITION_WORKERS_READY,
    CONDITION_READY,
    CONDITION_SUCCESSFUL_LAUNCH,
    CONDITION_REPLICA_FAILURE,
    CONDITION_SUSPENDED,
)
MAX_MESSAGE = 4096
_MAX_LISTED = 3

ModelOrError = Union[Conversion, ClusterModel, ConfigurationError]


@dataclass(frozen=True)
class WriteFailure:
    """A write the apply step attempted and the API server refused (`message` is the server's message)."""

    verb: str  # create, delete, patch
    kind: str
    name: str  # the object's name, or the generateName prefix of a pod
    message: str
    reason: str = ""  # the server's reason (Forbidden, Invalid, ...), if any


def format_time(moment: datetime) -> str:
    """RFC 3339, UTC, whole seconds, `Z`."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _clip(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


# -- pods -----------------------------------------------------------------------------------------------------------


def replica_status(pods: Sequence[Body], desired: int, want_hash: str | None,
                   previous_updated: int = 0) -> dict[str, int]:
    """ReplicaStatus of some pods. Without a template hash (invalid configuration) updatedReplicas keeps its last
    value, bounded by replicas."""
    active = [p for p in pods if is_active(p)]
    ready = sum(1 for p in active if is_ready(p))
    if want_hash is None:
        updated = min(previous_updated, len(active))
    else:
        updated = sum(1 for p in active if template_hash(p) == want_hash)
    return {
        "replicas": len(active),
        "updatedReplicas": updated,
        "readyReplicas": ready,
        "availableReplicas": ready,
        "unavailableReplicas": max(0, desired - ready),
    }


def pod_problem(pod: Body, options: Options, now: datetime | None = None, *,
                head_ready_since: datetime | None = None) -> tuple[str, str]:
    """(CamelCase reason, message) for a pod that is not ready (`now`, `head_ready_since`: for workers, see
    `pod_failure`)."""
    name = name_of(pod)
    if is_terminating(pod):
        return "Terminating", f"{name} is terminating"
    failure = pod_failure(pod, options, now, head_ready_since=head_ready_since)
    if failure is not None:
        return "Failed", f"{name} failed: {failure.reason}: {failure.message}"
    if not is_scheduled(pod):
        c = condition(pod, "PodScheduled") or {}
        if c.get("status") != "False":
            # The scheduler has not looked at it yet: pending, not a problem (no Warning for every new pod).
            return "Pending", f"{name} is waiting for the scheduler"
        why = c.get("message") or c.get("reason") or "no node fits"
        return "Unschedulable", f"{name} is not scheduled: {why}"
    for cs in container_statuses(pod, init=True):
        wait = waiting(cs.get("state"))
        reason = wait.get("reason")
        if reason and reason not in ("ContainerCreating", "PodInitializing"):
            detail = f": {wait['message']}" if wait.get("message") else ""
            return "ContainerWaiting", f"{name}: container {cs.get('name')}: {reason}{detail}"
    if phase(pod) == "Pending":
        return "Pending", f"{name} is starting"
    return "NotReady", f"{name} is running; Ray's health check does not pass yet"


# -- conditions -----------------------------------------------------------------------------------------------------


def _condition(condition_type: str, status: str, reason: str, message: str) -> Condition:
    return {"type": condition_type, "status": status, "reason": reason, "message": _clip(message)}


def _configuration(model_or_error: ModelOrError) -> Condition:
    if isinstance(model_or_error, ConfigurationError):
        return _condition(CONDITION_CONFIGURATION_VALID, "False", "InvalidConfiguration", model_or_error.describe())
    warnings: Sequence[ConfigWarning] = model_or_error.warnings if isinstance(model_or_error, Conversion) else ()
    notes: Sequence[ConfigWarning] = model_or_error.notes if isinstance(model_or_error, Conversion) else ()
    # The keys come first, so that a clipped message still names every one of them.
    translated = f" | translated from `ray up`: {'; '.join(str(n) for n in notes)}" if notes else ""
    if warnings:
        keys = ", ".join(dict.fromkeys(w.key for w in warnings))
        listed = "; ".join(str(w) for w in warnings)
        return _condition(CONDITION_CONFIGURATION_VALID, "True", "KeysIgnored",
                          f"{len(warnings)} key(s) not honoured ({keys}): {listed}{translated}")
    if notes:
        return _condition(CONDITION_CONFIGURATION_VALID, "True", "Translated", f"the configuration is valid{translated}")
    return _condition(CONDITION_CONFIGURATION_VALID, "True", "Valid", "the configuration is valid")


def _head_condition(head: Body | None, any_head: bool, options: Options) -> Condition:
    if head is None:
        message = "the head pod is being re-created" if any_head else "there is no head pod yet"
        return _condition(CONDITION_HEAD_READY, "False", "HeadPodMissing", message)
    if is_ready(head):
        return _condition(CONDITION_HEAD_READY, "True", "HeadPodReady", f"head pod {name_of(head)} is ready")
    reason, message = pod_problem(head, options)
    return _condition(CONDITION_HEAD_READY, "False", f"HeadPod{reason}", f"head pod {message}")


@dataclass(frozen=True)
class _GroupView:
    name: str
    desired: int
    min_workers: int
    max_workers: int
    pods: tuple[Body, ...]  # by name: stable messages whatever order the cache returns
    want_hash: str | None
    previous_updated: int


def _workers_condition(groups: Sequence[_GroupView], options: Options, valid: bool, now: datetime,
                       head_ready_since: datetime | None) -> tuple[Condition, bool]:
    if not valid:
        return _condition(CONDITION_WORKERS_READY, "Unknown", "InvalidConfiguration",
                          "the desired workers are unknown while the configuration is invalid"), False
    desired = sum(g.desired for g in groups)
    ready_total = 0
    lacking: list[str] = []
    for g in groups:
        ready = sum(1 for p in g.pods if is_active(p) and is_ready(p))
        ready_total += min(ready, g.desired)
        if ready < g.desired:
            problems = [pod_problem(p, options, now, head_ready_since=head_ready_since)[1]
                        for p in g.pods if not is_ready(p)][:_MAX_LISTED]
            detail = f" ({'; '.join(problems)})" if problems else ""
            lacking.append(f"group {g.name}: {ready}/{g.desired} ready{detail}")
    if lacking:
        return _condition(CONDITION_WORKERS_READY, "False", "WorkersNotReady",
                          f"{ready_total}/{desired} workers ready; " + "; ".join(lacking)), False
    return _condition(CONDITION_WORKERS_READY, "True", "AllWorkersReady", f"{desired}/{desired} workers ready"), True


def launch_summary(attempts: Sequence[Body]) -> LaunchSummary | None:
    """The summary of the launch's last finished attempt that left one (its launcher container's termination
    message: the launcher writes one line of JSON there), else what the last finished attempt's exit code says;
    None while no attempt has finished. An attempt killed at the deadline leaves no summary; the one before it
    says why the launch did not succeed."""
    finished = []
    for pod in attempts:
        for cs in container_statuses(pod):
            if cs.get("name") != LAUNCHER_CONTAINER:
                continue
            ended = terminated(cs.get("state")) or terminated(cs.get("lastState"))
            if ended:
                finished.append((str(ended.get("finishedAt") or ""), name_of(pod), ended))
    if not finished:
        return None
    summaries = []
    for _, _, ended in sorted(finished, key=lambda f: (f[0], f[1]), reverse=True):
        code = ended.get("exitCode")
        summary = parse_launch_summary(str(ended.get("message") or ""),
                                       exit_code=code if isinstance(code, int) else None)
        if summary.reason != REASON_NO_SUMMARY:
            return summary
        summaries.append(summary)
    return summaries[0]


_NO_LAUNCHER = {"replicas": 0, "updatedReplicas": 0, "readyReplicas": 0, "availableReplicas": 0,
                "unavailableReplicas": 0}


def _launch(current: tuple[list[Body], str] | None, head_ready: bool, now: datetime,
            options: Options) -> tuple[Condition, dict[str, int]]:
    """SuccessfulLaunch and the launcher's counts from the current launch: its attempts and the name of the
    attempt to report when none exists yet."""
    if current is None or (not current[0] and not head_ready):
        return (_condition(CONDITION_SUCCESSFUL_LAUNCH, "Unknown", "WaitingForHead",
                           "the launcher starts once the head pod is Ready"), dict(_NO_LAUNCHER))
    attempts, first_name = current
    launch = assess(attempts, now, options)
    live = launch.live
    ready = sum(1 for p in live if is_ready(p))
    counts = {"replicas": len(live), "updatedReplicas": len(live), "readyReplicas": ready,
              "availableReplicas": ready, "unavailableReplicas": 0 if launch.finished else max(0, 1 - ready)}
    shown = launch.current
    name = name_of(shown) if shown is not None else first_name
    summary = launch_summary(launch.attempts)
    if launch.outcome == SUCCEEDED:
        detail = f": {summary.message}" if summary is not None and summary.succeeded and summary.message else ""
        return _condition(CONDITION_SUCCESSFUL_LAUNCH, "True", "Launched", f"launcher pod {name} completed{detail}"), \
            counts
    if launch.outcome == FAILED:
        if summary is not None and not summary.succeeded:
            # The launcher's own reason (InvalidConfig, HeadUnreachable, WorkersNotJoined, ...) and message.
            return _condition(CONDITION_SUCCESSFUL_LAUNCH, "False", summary.reason,
                              f"{summary.message} (launcher pod {name}: {launch.reason})"), counts
        return _condition(CONDITION_SUCCESSFUL_LAUNCH, "False", launch.reason,
                          f"launcher pod {name}: {launch.message}"), counts
    detail = ""
    if summary is not None and not summary.succeeded:
        detail = f"; the last attempt failed: {summary.reason}: {summary.message}"
    if attempts and not live and shown is not None and refused_by_node(shown):
        st = status_of(shown)
        return _condition(CONDITION_SUCCESSFUL_LAUNCH, "Unknown", "Launching",
                          f"launcher pod {name} was refused by Node {spec_of(shown).get('nodeName') or '?'} "
                          f"({st.get('reason')}: {st.get('message') or ''}); the next attempt is scheduled"), counts
    if attempts and not live:
        # Between two attempts: the next one waits for its back-off (or for a deleted one to be gone).
        return _condition(CONDITION_SUCCESSFUL_LAUNCH, "Unknown", "Launching",
                          f"launcher pod {name} ended; the next attempt starts after a back-off{detail}"), counts
    return _condition(CONDITION_SUCCESSFUL_LAUNCH, "Unknown", "Launching", f"launcher pod {name} is running{detail}"), \
        counts


def _replica_failure(failures: Sequence[WriteFailure] | None, previous: Condition | None) -> Condition:
    if failures is None:
        if previous is not None:
            kept = dict(previous)
            return cast(Condition, {k: kept[k] for k in ("type", "status", "reason", "message") if k in kept})
        return _condition(CONDITION_REPLICA_FAILURE, "False", "NoFailures", "")
    if not failures:
        return _condition(CONDITION_REPLICA_FAILURE, "False", "NoFailures", "")
    first = failures[0]
    listed = "; ".join(f"{f.verb} {f.kind} {f.name}: {f.message}" for f in failures[:_MAX_LISTED])
    more = f" (and {len(failures) - _MAX_LISTED} more)" if len(failures) > _MAX_LISTED else ""
    return _condition(CONDITION_REPLICA_FAILURE, "True", f"Failed{first.verb.capitalize()}", listed + more)


def _stamp(managed: Sequence[Condition], old: Sequence[Condition], generation: int | None,
           now: str) -> list[Condition]:
    previous = {c.get("type"): c for c in old}
    out = []
    for c in managed:
        before = previous.get(c["type"])
        stamped = cast(Condition, dict(c))
        if generation is not None:
            stamped["observedGeneration"] = generation
        same = before is not None and before.get("status") == c["status"] and before.get("lastTransitionTime")
        stamped["lastTransitionTime"] = before["lastTransitionTime"] if same and before else now
        out.append(stamped)
    types = {c["type"] for c in managed}
    out += [cast(Condition, dict(c)) for c in old if c.get("type") not in types]
    return out


# -- clamping -------------------------------------------------------------------------------------------------------


def clamp_notices(ray: Body, model: ClusterModel) -> list[str]:
    """One line per worker group whose asked-for count (`spec.desiredWorkers[group]`, else the initial count) lies
    outside [minWorkers, maxWorkers] and was clamped, naming both numbers; [] when nothing was clamped."""
    raw = spec_of(ray).get("desiredWorkers")
    asked_map: Mapping[str, object] = raw if isinstance(raw, Mapping) else {}
    out = []
    for g in model.worker_groups:
        value = asked_map.get(g.name)
        source = "spec.desiredWorkers"
        if not isinstance(value, int) or isinstance(value, bool):
            value, source = g.initial_workers, "the initial count"
        if value == g.desired_workers:
            continue
        bound = "minWorkers" if value < g.desired_workers else "maxWorkers"
        out.append(f"worker group {g.name}: {source} asks for {value}, clamped to {g.desired_workers} "
                   f"({bound} {g.min_workers if bound == 'minWorkers' else g.max_workers})")
    return out


# -- the status -------------------------------------------------------------------------------------------------------


def compute_status(ray: Body, model_or_error: ModelOrError, observed: Observed, now: datetime, *,
                   desired: Desired | None = None, failures: Sequence[WriteFailure] | None = None,
                   options: Options | None = None) -> JSON:
    """The status of `ray` (decoded JSON). `desired` gives the template hashes (updatedReplicas) and the current
    launch; `failures` are this reconcile's refused writes (None: no write was attempted, keep ReplicaFailure as
    it was; empty: every write succeeded). Compare the result with `ray["status"]` and write only on a change.
    The pods are the ones `classify` gives the plan too, and the head is `choose_head`'s: the plan's."""
    opts = options or (desired.options if desired is not None else Options())
    if now.tzinfo is None:
        now = now.replace(tzinfo=timezone.utc)
    old = status_of(ray)
    now_text = format_time(now)
    model = model_or_error.cluster if isinstance(model_or_error, Conversion) else (
        model_or_error if isinstance(model_or_error, ClusterModel) else None)
    hashes = desired.template_hashes() if desired is not None else {}
    pods = classify(observed.pods, uid_of(ray))
    groups = _group_views(model, pods, old, hashes)
    head = choose_head(pods.heads, hashes.get(HEAD_GROUP))
    launch_condition, launcher_counts = _launch(_current_launch(_launchers(observed.pods, uid_of(ray)), head, desired),
                                                head is not None and is_ready(head), now, opts)
    head_updated = int(_mapping(old.get("head")).get("updatedReplicas") or 0)
    status: JSON = {
        "launcher": launcher_counts,
        "head": replica_status(pods.heads, 1, hashes.get(HEAD_GROUP), head_updated),
        **_worker_counts(pods, groups),
        "conditions": _conditions(ray, model_or_error, model, pods, head, groups, launch_condition, failures, opts,
                                  now),
        "startTime": old.get("startTime") or now_text,
        **_addresses(ray, model),
    }
    generation = meta(ray).get("generation")
    if isinstance(generation, int):
        status["observedGeneration"] = generation
    if head is not None:
        status["headPodName"] = name_of(head)
        if pod_ip(head):
            status["headPodIP"] = pod_ip(head)
    status["lastReconcileTime"] = _reconcile_time(old, status, now, now_text, opts)
    return status


def _mapping(value: object) -> Body:
    return value if isinstance(value, Mapping) else {}


def _group_views(model: ClusterModel | None, pods: RayPods, old: Body, hashes: Mapping[str, str]) -> list[_GroupView]:
    """The worker groups to report: the model's, or (invalid configuration) the ones the last status named."""
    old_groups = {g.get("name"): g for g in old.get("workerGroups") or () if isinstance(g, Mapping)}

    def members(group: str) -> tuple[Body, ...]:
        return tuple(sorted(pods.groups.get(group, ()), key=name_of))

    if model is not None:
        return [_GroupView(wg.name, wg.desired_workers, wg.min_workers, wg.max_workers, members(wg.name),
                           hashes.get(wg.name), int(old_groups.get(wg.name, {}).get("updatedReplicas") or 0))
                for wg in model.worker_groups]
    return [_GroupView(str(gname), int(og.get("desiredWorkers") or 0), int(og.get("minWorkers") or 0),
                       int(og.get("maxWorkers") or 0), members(str(gname)), None, int(og.get("updatedReplicas") or 0))
            for gname, og in old_groups.items()]


def _worker_counts(pods: RayPods, groups: Sequence[_GroupView]) -> JSON:
    """`worker` (all groups), `workerGroups` (each) and `desiredWorkers`."""
    group_status: list[JSON] = []
    updated_total = unavailable_total = 0
    for g in groups:
        counts = replica_status(g.pods, g.desired, g.want_hash, g.previous_updated)
        updated_total += counts["updatedReplicas"]
        unavailable_total += counts["unavailableReplicas"]
        group_status.append({"name": g.name, "desiredWorkers": g.desired, "minWorkers": g.min_workers,
                             "maxWorkers": g.max_workers, **counts})
    active = [p for p in pods.workers if is_active(p)]
    ready = sum(1 for p in active if is_ready(p))
    worker = {"replicas": len(active), "updatedReplicas": updated_total, "readyReplicas": ready,
              "availableReplicas": ready, "unavailableReplicas": unavailable_total}
    return {"worker": worker, "workerGroups": group_status, "desiredWorkers": sum(g.desired for g in groups)}


def _conditions(ray: Body, model_or_error: ModelOrError, model: ClusterModel | None, pods: RayPods,
                head: Body | None, groups: Sequence[_GroupView], launch_condition: Condition,
                failures: Sequence[WriteFailure] | None, options: Options, now: datetime) -> list[Condition]:
    head_condition = _head_condition(head, bool(pods.heads), options)
    workers_condition, workers_ready = _workers_condition(groups, options, model is not None, now,
                                                          head_ready_since(head))
    suspended = spec_of(ray).get("suspend") is True
    remaining = sum(1 for p in pods.heads + pods.workers if is_active(p) or is_terminating(p))
    if model is not None and suspended:
        ready = _condition(CONDITION_READY, "False", "Suspended", "spec.suspend is true: the cluster's pods are "
                           "removed" + (f" ({remaining} left)" if remaining else ""))
    elif model is None:
        error = model_or_error.describe() if isinstance(model_or_error, ConfigurationError) else "invalid"
        ready = _condition(CONDITION_READY, "False", "InvalidConfiguration", error)
    elif head_condition["status"] != "True":
        ready = _condition(CONDITION_READY, "False", "HeadNotReady", head_condition["message"])
    elif not workers_ready:
        ready = _condition(CONDITION_READY, "False", "WorkersNotReady", workers_condition["message"])
    else:
        ready = _condition(CONDITION_READY, "True", "ClusterReady",
                           f"the head and {sum(g.desired for g in groups)} worker(s) are ready")
    old_conditions = conditions(ray)
    previous_failure = next((c for c in old_conditions if c.get("type") == CONDITION_REPLICA_FAILURE), None)
    managed = [_configuration(model_or_error), head_condition, workers_condition, ready, launch_condition,
               _replica_failure(failures, previous_failure)]
    if suspended:
        managed.append(_condition(CONDITION_SUSPENDED, "True", "Suspended",
                                  f"{remaining} pod(s) still going" if remaining else "no pod runs"))
    elif any(c.get("type") == CONDITION_SUSPENDED for c in old_conditions):
        managed.append(_condition(CONDITION_SUSPENDED, "False", "Resumed", "spec.suspend is not set"))
    generation = meta(ray).get("generation")
    return _stamp(managed, old_conditions, generation if isinstance(generation, int) else None, format_time(now))


def _addresses(ray: Body, model: ClusterModel | None) -> JSON:
    """`headServiceName` and `endpoints`: the head Service as pods of the cluster resolve it."""
    name = name_of(ray)
    host = head_service_host(name, str(meta(ray).get("namespace") or "default"))
    params = model.head.ray_start_params if model is not None else {}
    return {
        "headServiceName": head_service_name(name),
        "endpoints": {
            "gcs": f"{host}:{GCS_PORT}",
            "client": f"ray://{host}:{params.get('ray-client-server-port', CLIENT_PORT)}",
            "dashboard": f"http://{host}:{params.get('dashboard-port', DASHBOARD_PORT)}",
            "metrics": f"http://{host}:{params.get('metrics-export-port', METRICS_PORT)}/metrics",
        },
    }


def _launchers(pods: Sequence[Body], owner_uid: str) -> list[Body]:
    """The launcher pods of this `Ray` (the plan reads the same ones)."""
    return [p for p in pods if is_launcher(p) and not owned_by_other(p, owner_uid)]


def _current_launch(pods: Sequence[Body], head: Body | None,
                    desired: Desired | None) -> tuple[list[Body], str] | None:
    """The attempts of the current head's launch (with the current config, when `desired` is known), with the
    name its first attempt has; else those of the newest launch (the last launch stays visible while there is no
    head). None when there is nothing to report."""
    if head is not None and desired is not None and uid_of(head):
        return attempts_of(pods, (uid_of(head), desired.config_hash)), desired.launcher_name(uid_of(head))
    newest = newest_key(pods, uid_of(head) if head is not None else None)
    if newest is None:
        return None
    attempts = attempts_of(pods, newest)
    return attempts, name_of(attempts[0])


def _reconcile_time(old: Body, new: Body, now: datetime, now_text: str, options: Options) -> str:
    previous = old.get("lastReconcileTime")
    last = parse_time(previous)
    if last is None or not isinstance(previous, str):
        return now_text
    unchanged = {k: v for k, v in old.items() if k != "lastReconcileTime"} == dict(new)
    period = options.status_refresh_seconds
    fresh = period <= 0 or 0 <= (now - last).total_seconds() < period
    return previous if unchanged and fresh else now_text
