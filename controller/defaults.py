"""The operator's defaults for what a `Ray` leaves unsaid, as one frozen `Options` value.

Guarantees:
- Every builder, the planner and the status computation take their defaults from an `Options` argument, never from
  globals, the environment or the clock; `Options()` is the documented default and is what `rayop render` and the
  tests use.
- `DEFAULT_RAY_IMAGE` is a pinned Ray release; the seed's examples (no pod templates at all) run with it as
  written. The image and the default container resources can be changed per operator with command-line flags
  (`add_option_arguments` / `options_from_args`), and per cluster with `spec.image` or a pod template.
- Changing an option that shapes pods (the default image, default resources, probes) changes the template hash of
  the groups that use it, so their pods are rolled like any other template change; options that only steer the
  planner (surge, back-off, thresholds) never restart pods.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

DEFAULT_RAY_IMAGE = "rayproject/ray:2.60.0"

# A container's `resources` (requests and limits: resource name -> quantity), read-only.
Resources = Mapping[str, Mapping[str, str]]


def _quantities(**values: str) -> Mapping[str, str]:
    return MappingProxyType(dict(values))


def _frozen(requests: Mapping[str, str], limits: Mapping[str, str]) -> Resources:
    return MappingProxyType({"requests": requests, "limits": limits})


def _resources(cpu: str, memory: str, limit_memory: str | None = None) -> Resources:
    return _frozen(
        requests=_quantities(cpu=cpu, memory=memory),
        limits=_quantities(cpu=cpu, memory=limit_memory or memory),
    )


@dataclass(frozen=True)
class Options:
    """Operator-wide defaults. Immutable; compare by value."""

    # -- pods ----------------------------------------------------------------------------------------------------
    # The Ray image of every container that names none and of the operator's default containers.
    image: str = DEFAULT_RAY_IMAGE
    image_pull_policy: str = "IfNotPresent"
    # Resources of a Ray container that declares none (no requests and no limits): Ray is told the same CPUs and
    # memory (`--num-cpus`, `--memory`), so the autoscaler can plan with them.
    head_resources: Resources = field(default_factory=lambda: _resources("1", "2Gi"))
    worker_resources: Resources = field(default_factory=lambda: _resources("1", "2Gi"))
    # The autoscaler sidecar (Ray's monitor) in the head pod and the launcher pod's container.
    autoscaler_resources: Resources = field(
        default_factory=lambda: _frozen(
            requests=_quantities(cpu="200m", memory="256Mi"), limits=_quantities(cpu="500m", memory="512Mi")
        )
    )
    launcher_resources: Resources = field(
        default_factory=lambda: _frozen(requests=_quantities(cpu="100m", memory="256Mi"),
                                        limits=_quantities(memory="1Gi"))
    )
    # Readiness and liveness probes on Ray's own health check, added when the Ray container declares none.
    probes: bool = True
    # Kubernetes' cluster DNS domain, for the head's address `<name>-head.<namespace>.svc.<domain>:6379`.
    cluster_domain: str = "cluster.local"

    # -- the launcher --------------------------------------------------------------------------------------------
    launcher_backoff_limit: int = 2
    launcher_deadline_seconds: int = 900

    # -- GCS fault tolerance (spec.gcsFaultTolerance) ------------------------------------------------------------
    # How long a worker's raylet waits for a GCS that went away (a head that crashed or is re-created) before it
    # gives up and exits: long enough for a new head pod to be scheduled and start.
    gcs_reconnect_timeout_seconds: int = 600
    # The longest wait between a worker's reconnection attempts to the GCS, so it rejoins soon after the new head
    # answers.
    gcs_max_reconnect_backoff_ms: int = 1000
    # The clean-up Job of a deleted Ray (deletes its keys from Redis): retries, and its deadline; the finalizer is
    # removed when it ends, either way, and at the latest this long (plus a minute) after the deletion.
    gcs_cleanup_backoff_limit: int = 3
    gcs_cleanup_deadline_seconds: int = 300

    # -- the planner ---------------------------------------------------------------------------------------------
    # Pods above the desired count a rolling update may create (per group, one group at a time).
    max_surge: int = 1
    # At most this many pods are created in one reconcile (all groups together); the rest follow in the next
    # reconciles, which the created pods' watch events bring. It bounds the plan's size and the time one reconcile
    # holds a worker, whatever count a spec asks for (maxWorkers may be 2**31 - 1).
    create_burst: int = 500
    # A Ray container waiting in CrashLoopBackOff with at least this many restarts makes its pod failed.
    crash_loop_restarts: int = 5
    # Failed pods are replaced after base * 2**n seconds (n: how often this slot was replaced already), capped.
    replace_backoff_seconds: float = 10.0
    replace_backoff_max_seconds: float = 300.0
    # A pod that ran at least this long before it failed resets the back-off.
    replace_backoff_reset_seconds: float = 600.0
    # A worker Running but not Ready this long never joined Ray (or left it): the autoscaler will not remove it,
    # so it counts as failed and is replaced.
    join_timeout_seconds: float = 300.0
    # A worker pod the operator deletes first drains its Ray node (its preStop hook asks Ray's GCS, then waits up to
    # this long for what runs there); its terminationGracePeriodSeconds is this plus 30 s.
    drain_timeout_seconds: float = 300.0

    # -- status --------------------------------------------------------------------------------------------------
    # lastReconcileTime is refreshed when something else in the status changed, or, when this is above 0, once it is
    # older than this. 0 (the default): an idle cluster costs no status write at all, however long it stays idle.
    status_refresh_seconds: float = 0.0
    # A status change that is only progress (replica counts, addresses, a progress reason or message: every
    # condition keeps its status, nothing newly wrong, the same observedGeneration) is written at most this long
    # after the first such change was held back; the next change of a condition's status, a problem or a new
    # generation is written at once and carries it. 0 writes every change at once.
    status_batch_seconds: float = 2.0


def add_option_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the flags that override `Options` to an argparse parser (used by `rayop run` and `rayop render`)."""
    d = Options()
    parser.add_argument("--ray-image", default=d.image,
                        help=f"Ray image for containers that name none (default {d.image})")
    parser.add_argument("--ray-image-pull-policy", default=d.image_pull_policy,
                        choices=("Always", "IfNotPresent", "Never"), help="pull policy of the operator's containers")
    parser.add_argument("--default-head-cpu", default=None, help="CPU of a head container that declares none (default 1)")
    parser.add_argument("--default-head-memory", default=None,
                        help="memory of a head container that declares none (default 2Gi)")
    parser.add_argument("--default-worker-cpu", default=None,
                        help="CPU of a worker container that declares none (default 1)")
    parser.add_argument("--default-worker-memory", default=None,
                        help="memory of a worker container that declares none (default 2Gi)")
    parser.add_argument("--ray-probes", action=argparse.BooleanOptionalAction, default=d.probes,
                        help="add readiness/liveness probes on Ray's health check (default on)")
    parser.add_argument("--cluster-domain", default=d.cluster_domain, help="cluster DNS domain (default cluster.local)")
    parser.add_argument("--join-timeout", type=float, default=d.join_timeout_seconds, metavar="SECONDS",
                        help="a worker Running but not Ready this long is replaced "
                             f"(default {d.join_timeout_seconds:g})")
    parser.add_argument("--drain-timeout", type=float, default=d.drain_timeout_seconds, metavar="SECONDS",
                        help="how long a deleted worker waits for its busy Ray node to drain "
                             f"(default {d.drain_timeout_seconds:g})")
    parser.add_argument("--status-batch", type=float, default=d.status_batch_seconds, metavar="SECONDS",
                        help="a progress-only status change is written at most this long after the first one held "
                             f"back (0: at once; default {d.status_batch_seconds:g})")
    parser.add_argument("--launcher-deadline", type=int, default=d.launcher_deadline_seconds, metavar="SECONDS",
                        help="deadline of a launch, from its first attempt: no attempt starts after it, and each "
                             "launcher pod carries it as activeDeadlineSeconds; the launcher gives up a minute "
                             f"earlier (default {d.launcher_deadline_seconds})")
    parser.add_argument("--gcs-cleanup-deadline", type=int, default=d.gcs_cleanup_deadline_seconds,
                        metavar="SECONDS",
                        help="activeDeadlineSeconds of the Redis clean-up Job of a deleted Ray with "
                             "gcsFaultTolerance; its finalizer goes at the latest a minute after "
                             f"(default {d.gcs_cleanup_deadline_seconds})")


def options_from_args(args: argparse.Namespace) -> Options:
    """The `Options` the flags of `add_option_arguments` describe (missing attributes keep their defaults)."""
    d = Options()

    def resources(base: Resources, cpu: str | None, memory: str | None) -> Resources:
        if cpu is None and memory is None:
            return base
        req = dict(base["requests"])
        lim = dict(base["limits"])
        if cpu is not None:
            req["cpu"] = lim["cpu"] = cpu
        if memory is not None:
            req["memory"] = lim["memory"] = memory
        return _frozen(requests=MappingProxyType(req), limits=MappingProxyType(lim))

    return Options(
        image=getattr(args, "ray_image", None) or d.image,
        image_pull_policy=getattr(args, "ray_image_pull_policy", None) or d.image_pull_policy,
        head_resources=resources(
            d.head_resources, getattr(args, "default_head_cpu", None), getattr(args, "default_head_memory", None)
        ),
        worker_resources=resources(
            d.worker_resources, getattr(args, "default_worker_cpu", None), getattr(args, "default_worker_memory", None)
        ),
        probes=bool(getattr(args, "ray_probes", d.probes)),
        cluster_domain=getattr(args, "cluster_domain", None) or d.cluster_domain,
        join_timeout_seconds=float(getattr(args, "join_timeout", None) or d.join_timeout_seconds),
        drain_timeout_seconds=float(getattr(args, "drain_timeout", None) or d.drain_timeout_seconds),
        launcher_deadline_seconds=int(getattr(args, "launcher_deadline", None) or d.launcher_deadline_seconds),
        gcs_cleanup_deadline_seconds=int(getattr(args, "gcs_cleanup_deadline", None)
                                         or d.gcs_cleanup_deadline_seconds),
        status_batch_seconds=float(getattr(args, "status_batch", d.status_batch_seconds)),
    )


__all__ = ["DEFAULT_RAY_IMAGE", "Options", "Resources", "add_option_arguments", "options_from_args"]
