"""The simulated container runtime: containers that exist only as timelines.

Guarantees:
- `observe(pod, now)` is a pure function of the pod's spec and annotations, the runtime's record of the pod
  (when it was first seen, faults injected) and `now`. It returns the container statuses a kubelet would report and
  the time of the next state change, so the agent re-syncs exactly then and never polls.
- Behaviour is chosen per pod with annotations (prefix `sim.rayop.dev/`):
    start-delay-seconds   seconds from first sight to containers running (default 0)
    ready-delay-seconds   seconds from running to ready (default 0)
    ready                 "false": containers run but never become ready
    run-seconds           containers exit after this long (default: 1 for pods owned by a Job and for rayop's
                          launcher pods, which run to completion; else never)
    exit-code             the exit code when they do (default 0)
    restart-backoff-seconds  first crash-loop back-off (default 10, doubled per restart, capped at 300)
  and an image whose name contains `does-not-exist` never pulls (ErrImagePull / ImagePullBackOff).
- Faults (`crash`, `fail`) are recorded with the time they were injected and folded into the same timeline.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

PREFIX = "sim.rayop.dev/"
MAX_BACKOFF = 300.0
JOB_RUN_SECONDS = 1.0


def annotation(pod: dict[str, Any], name: str, default: str | None = None) -> str | None:
    return ((pod.get("metadata") or {}).get("annotations") or {}).get(PREFIX + name, default)


def number(pod: dict[str, Any], name: str, default: float | None) -> float | None:
    value = annotation(pod, name)
    if value is None:
        return default
    try:
        return float(value)
    except ValueError:
        return default


def owned_by_job(pod: dict[str, Any]) -> bool:
    return any(ref.get("kind") == "Job" for ref in (pod.get("metadata") or {}).get("ownerReferences") or [])


def runs_to_completion(pod: dict[str, Any]) -> bool:
    """A Job's pod, or a launcher pod of rayop (a bare pod that exits once the launch is done)."""
    labels = (pod.get("metadata") or {}).get("labels") or {}
    return owned_by_job(pod) or labels.get("ray.k8s.io/node-kind") == "launcher"


@dataclass
class Crash:
    at: float
    container: str | None
    exit_code: int


@dataclass
class PodRecord:
    uid: str
    first_seen: float
    crashes: list[Crash] = field(default_factory=list)
    failed: tuple[float, str, str] | None = None


@dataclass
class ContainerView:
    """What `observe` says of one container."""

    name: str
    image: str
    state: dict[str, Any]
    last_state: dict[str, Any]
    ready: bool
    restart_count: int
    started: bool


@dataclass
class PodView:
    containers: list[ContainerView]
    init_containers: list[ContainerView]
    phase: str
    reason: str | None
    message: str | None
    next_change: float | None


def parse_time(value: str | None) -> float | None:
    import datetime

    if not value:
        return None
    try:
        return datetime.datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(
            tzinfo=datetime.timezone.utc).timestamp()
    except ValueError:
        return None


def iso(t: float) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class SimRuntime:
    """Containers as timelines; see the module docstring."""

    def __init__(self) -> None:
        self._pods: dict[str, PodRecord] = {}
        self._lock = threading.Lock()

    def record(self, pod: dict[str, Any], now: float) -> PodRecord:
        uid = pod["metadata"]["uid"]
        with self._lock:
            rec = self._pods.get(uid)
            if rec is None:
                # After an agent restart, keep the timeline the pod already had.
                started = parse_time((pod.get("status") or {}).get("startTime"))
                rec = self._pods[uid] = PodRecord(uid=uid, first_seen=min(now, started or now))
            return rec

    def forget(self, uid: str) -> None:
        with self._lock:
            self._pods.pop(uid, None)

    def known(self) -> int:
        with self._lock:
            return len(self._pods)

    def crash(self, pod: dict[str, Any], container: str | None, exit_code: int, now: float) -> None:
        self.record(pod, now).crashes.append(Crash(now, container, exit_code))

    def fail(self, pod: dict[str, Any], reason: str, message: str, now: float) -> None:
        self.record(pod, now).failed = (now, reason, message)

    def stop(self, pod: dict[str, Any]) -> None:
        """Containers of a deleted pod stop at once in the simulation."""

    def observe(self, pod: dict[str, Any], now: float) -> PodView:
        rec = self.record(pod, now)
        spec = pod.get("spec") or {}
        restart_policy = spec.get("restartPolicy", "Always")
        start_delay = number(pod, "start-delay-seconds", 0.0) or 0.0
        ready_delay = number(pod, "ready-delay-seconds", 0.0) or 0.0
        never_ready = annotation(pod, "ready") == "false"
        run = number(pod, "run-seconds", JOB_RUN_SECONDS if runs_to_completion(pod) else None)
        exit_code = int(number(pod, "exit-code", 0.0) or 0)
        backoff_base = number(pod, "restart-backoff-seconds", 10.0) or 10.0
        changes: list[float] = []

        init_views = []
        start_at = rec.first_seen + start_delay
        for c in spec.get("initContainers") or []:
            if now < start_at:
                init_views.append(_view(c, {"waiting": {"reason": "PodInitializing"}}, {}, False, 0, False))
                changes.append(start_at)
            else:
                state = {"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": iso(start_at),
                                        "finishedAt": iso(start_at)}}
                init_views.append(_view(c, state, {}, False, 0, False))

        views = []
        phase_terminal: list[str] = []
        for c in spec.get("containers") or []:
            view, next_change, terminal = _container_timeline(
                c, rec, now, start_at, ready_delay, never_ready, run, exit_code, restart_policy, backoff_base
            )
            views.append(view)
            if next_change is not None:
                changes.append(next_change)
            phase_terminal.append(terminal)

        reason = message = None
        if rec.failed and now >= rec.failed[0]:
            at, reason, message = rec.failed
            views = [
                _view(c, {"terminated": {"exitCode": 1, "reason": "Error", "finishedAt": iso(at)}}, {}, False,
                      v.restart_count, False)
                for c, v in zip(spec.get("containers") or [], views)
            ]
            return PodView(views, init_views, "Failed", reason, message, None)

        if now < start_at:
            phase = "Pending"
        elif phase_terminal and all(t in ("Succeeded", "Failed") for t in phase_terminal):
            phase = "Failed" if "Failed" in phase_terminal else "Succeeded"
        elif any(v.state.get("waiting", {}).get("reason") in ("ErrImagePull", "ImagePullBackOff")
                 for v in views) and not any(v.started for v in views):
            phase = "Pending"
        else:
            phase = "Running"
        future = [t for t in changes if t > now]
        return PodView(views, init_views, phase, reason, message, min(future) if future else None)


def _view(c: dict[str, Any], state: dict[str, Any], last: dict[str, Any], ready: bool, restarts: int,
          started: bool) -> ContainerView:
    return ContainerView(c["name"], c.get("image", ""), state, last, ready, restarts, started)


def _container_timeline(
    c: dict[str, Any],
    rec: PodRecord,
    now: float,
    start_at: float,
    ready_delay: float,
    never_ready: bool,
    run: float | None,
    exit_code: int,
    restart_policy: str,
    backoff_base: float,
) -> tuple[ContainerView, float | None, str]:
    """Walk one container's timeline from start to `now`: runs, exits or crashes, restarts after back-off."""
    if "does-not-exist" in c.get("image", ""):
        cycle = int(max(0.0, now - start_at) // 10)
        reason = "ErrImagePull" if cycle % 2 == 0 else "ImagePullBackOff"
        msg = f'Back-off pulling image "{c.get("image")}"'
        return _view(c, {"waiting": {"reason": reason, "message": msg}}, {}, False, 0, False), start_at + (
            cycle + 1) * 10, "Running"
    if now < start_at:
        return _view(c, {"waiting": {"reason": "ContainerCreating"}}, {}, False, 0, False), start_at, "Pending"
    crashes = sorted((x for x in rec.crashes if x.container in (None, c["name"])), key=lambda x: x.at)
    started = start_at
    restarts = 0
    last: dict[str, Any] = {}
    while True:
        # The run ends at the earlier of a crash injected after it started and its natural end.
        crash = next((x for x in crashes if x.at >= started), None)
        natural_end = started + run if run is not None else None
        candidates = [(t, code, "Error" if code else "Completed") for t, code in
                      ([(natural_end, exit_code)] if natural_end is not None else [])]
        if crash is not None:
            candidates.append((crash.at, crash.exit_code, "Error"))
        candidates.sort(key=lambda x: x[0])
        end = candidates[0] if candidates else None
        if end is None or now < end[0]:
            ready_at = started + ready_delay
            ready = not never_ready and now >= ready_at
            state = {"running": {"startedAt": iso(started)}}
            nxt = [t for t in ([ready_at] if not ready and not never_ready else []) + ([end[0]] if end else [])]
            return _view(c, state, last, ready, restarts, True), min(nxt) if nxt else None, "Running"
        end_at, code, reason = end
        if crash is not None and end_at == crash.at:
            crashes.remove(crash)
        terminated = {"terminated": {"exitCode": code, "reason": reason, "startedAt": iso(started),
                                     "finishedAt": iso(end_at)}}
        restart = restart_policy == "Always" or (restart_policy == "OnFailure" and code != 0)
        if not restart:
            return _view(c, terminated, last, False, restarts, False), None, "Failed" if code else "Succeeded"
        backoff = min(MAX_BACKOFF, backoff_base * (2 ** restarts))
        if now < end_at + backoff:
            waiting = {"waiting": {"reason": "CrashLoopBackOff",
                                   "message": f"back-off {int(backoff)}s restarting failed container={c['name']}"}}
            return _view(c, waiting, terminated, False, restarts + 1, False), end_at + backoff, "Running"
        restarts += 1
        last = terminated
        started = end_at + backoff
