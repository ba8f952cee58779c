"""The `rayop` command line.

`rayop run` starts the operator: informers for `Ray` objects and for the children the operator creates (selected
by the label `app.kubernetes.io/managed-by=rayop`, mapped to their owner through the controller ownerReference of
kind `Ray`), one controller running the Ray reconciler (`rayop.reconciler`), leader election, and the
health/metrics port. SIGTERM or SIGINT drains and exits 0; losing the lease exits 1.

A second controller, `rayjob` (`rayop.jobreconciler`), runs `RayJob`s when their CRD is served at start-up
(`--rayjobs auto`; `on` or `off` force it).

`--reconciler observe` runs, instead of the Ray reconciler, one that only reads the caches and logs what it sees (it
writes nothing), for debugging the watch loop alone.

`build_manager` takes the Ray reconciler's writer and the RayJob reconciler's Job Submission client as parameters
(the real ones by default), so a test can run the real operator with its own (tests/support/faulty.py).

Other subcommands (e.g. `rayop render`) register themselves in `SUBCOMMANDS`.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType

import structlog

from rayop.clustermetrics import MODE_CLUSTERS, MODES, add_cluster_metrics
from rayop.defaults import Options, add_option_arguments, options_from_args
from rayop.jobplan import Timing
from rayop.jobreconciler import rayjob_crd_served, wire_rayjobs
from rayop.jobsubmit import JobSubmissionClient
from rayop.reconciler import CHILDREN as CHILD_RESOURCES
from rayop.reconciler import (
    CONFIG_MAP_TRIM,
    MANAGED_BY_SELECTOR,
    POD_PROJECTION,
    POD_TRIM,
    RAY,
    KubeWriter,
    RayReconciler,
    Writer,
)
from rayop.render import add_render_parser
from rayop.runtime.handlers import controller_owner_key, generation_changed
from rayop.runtime.informer import Informer
from rayop.runtime.kube import KubeClient, Resource
from rayop.runtime.leaderelection import LeaderElectionConfig, default_identity
from rayop.runtime.logging import FORMATS, LEVELS, configure_logging
from rayop.runtime.manager import Manager, Reconcile, Result
from rayop.runtime.store import INDEX_OWNER_UID, ObjectKey

log = structlog.get_logger("rayop.cli")

CHILDREN: tuple[Resource, ...] = tuple(CHILD_RESOURCES.values())
CONTROLLER_NAME = "ray"
RECONCILERS = ("ray", "observe")
# Every Ray is reconciled at least this often (plus up to 10 % jitter) even when no event arrives: a safety net
# for lost events and deadlines. On an idle cluster a resync writes nothing.
DEFAULT_RESYNC_SECONDS = 600.0
IN_CLUSTER_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")

WriterFactory = Callable[[KubeClient], Writer]


def child_informers(manager: Manager) -> dict[str, Informer]:
    """The shared informers of every child kind of a `Ray`, by kind (label-selected, pods trimmed)."""
    out = {}
    for kind, resource in CHILD_RESOURCES.items():
        if kind == "Pod":
            out[kind] = manager.informer(resource, label_selector=MANAGED_BY_SELECTOR, transform=POD_TRIM,
                                         projection=POD_PROJECTION)
        elif kind == "ConfigMap":
            out[kind] = manager.informer(resource, label_selector=MANAGED_BY_SELECTOR, transform=CONFIG_MAP_TRIM)
        else:
            out[kind] = manager.informer(resource, label_selector=MANAGED_BY_SELECTOR)
    return out


def ray_reconciler(manager: Manager, options: Options | None = None, writer: Writer | None = None) -> RayReconciler:
    """The Ray reconciler on the manager's caches and recorder, writing through `writer` (default: the manager's
    client)."""
    return RayReconciler(
        writer=writer or KubeWriter(manager.client),
        recorder=manager.recorder,
        rays=manager.informer(RAY).store,
        children={kind: informer.store for kind, informer in child_informers(manager).items()},
        options=options,
    )


def observe_only(manager: Manager) -> Reconcile:
    """A reconciler that reads the caches and logs what it sees. It writes nothing."""
    rays = manager.informer(RAY)
    children = list(child_informers(manager).values())
    olog = structlog.get_logger("rayop.observe")

    def reconcile(key: ObjectKey) -> Result:
        ray = rays.store.get(key)
        if ray is None:
            olog.info("observed", key=str(key), present=False)
            return Result()
        uid = str(ray["metadata"].get("uid", ""))
        counts = {i.resource.plural: len(i.store.keys_by_index(INDEX_OWNER_UID, uid)) for i in children}
        olog.info("observed", key=str(key), present=True, generation=ray["metadata"].get("generation"),
                  children=counts)
        return Result()

    return reconcile


def wire(manager: Manager, reconcile: Reconcile, workers: int,
         resync_period: float | None = DEFAULT_RESYNC_SECONDS) -> None:
    """Informers for Ray and its children, one controller calling `reconcile`."""
    controller = manager.controller(CONTROLLER_NAME, reconcile, workers=workers, resync_period=resync_period)
    controller.watch_primary(manager.informer(RAY), predicate=generation_changed)
    to_owner = controller_owner_key("Ray", RAY.group)
    informers = child_informers(manager)
    for informer in informers.values():
        controller.watch(informer, to_owner)


def default_lease_namespace() -> str:
    if IN_CLUSTER_NAMESPACE.exists():
        return IN_CLUSTER_NAMESPACE.read_text().strip() or "default"
    return os.environ.get("POD_NAMESPACE", "default")


def _namespaces(values: list[str] | None) -> list[str] | None:
    names = [n.strip() for v in values or () for n in v.split(",") if n.strip()]
    return names or None


def add_run_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("run", help="run the operator")
    p.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG") or None,
                   help="kubeconfig file (default: $KUBECONFIG, then in-cluster, then ~/.kube/config)")
    p.add_argument("--context", default=None, help="kubeconfig context")
    p.add_argument("--namespace", "-n", action="append", dest="namespaces", metavar="NS",
                   help="namespace to watch (repeat or comma-separate; default: all namespaces)")
    p.add_argument("--workers", type=int, default=4, help="concurrent reconciles (default 4)")
    p.add_argument("--leader-elect", action=argparse.BooleanOptionalAction, default=False,
                   help="use leader election so only one replica reconciles (default off)")
    p.add_argument("--leader-election-namespace", default=None,
                   help="namespace of the Lease (default: the pod's namespace, else 'default')")
    p.add_argument("--leader-election-id", default="rayop-leader", help="name of the Lease")
    p.add_argument("--leader-election-identity", default=None, help="this replica's identity (default: host+uid)")
    p.add_argument("--lease-duration", type=float, default=15.0, help="seconds (default 15)")
    p.add_argument("--renew-deadline", type=float, default=10.0, help="seconds (default 10)")
    p.add_argument("--retry-period", type=float, default=2.0, help="seconds (default 2)")
    p.add_argument("--metrics-bind-address", default=":8080",
                   help="address of /metrics, /healthz, /readyz (default :8080; 0 disables)")
    p.add_argument("--cluster-metrics", choices=MODES, default=MODE_CLUSTERS,
                   help="per-Ray series on /metrics: clusters (default), groups (also per worker group) or off "
                        "(aggregates only); see docs/metrics.md")
    p.add_argument("--log-format", choices=FORMATS, default="auto",
                   help="json in a cluster, console on a terminal (default auto)")
    p.add_argument("--log-level", choices=LEVELS, default="info")
    # Well above what a reconcile needs, so the client is never what holds the clusters back; the API server's
    # priority and fairness answers 429 when it must, and the client then waits as it says (docs/runtime.md).
    p.add_argument("--kube-api-qps", type=float, default=200.0,
                   help="client requests per second, a guard against runaway loops (default 200)")
    p.add_argument("--kube-api-burst", type=int, default=400, help="client burst (default 400)")
    p.add_argument("--shutdown-timeout", type=float, default=30.0,
                   help="seconds to let reconciles in flight finish on SIGTERM (default 30)")
    p.add_argument("--rayjobs", choices=("auto", "on", "off"), default="auto",
                   help="run the RayJob controller: auto (default) when the RayJob CRD is served at start-up, "
                        "on, or off")
    p.add_argument("--rayjob-workers", type=int, default=2, help="concurrent RayJob reconciles (default 2)")
    p.add_argument("--rayjob-poll-interval", type=float, default=Timing.poll_interval,
                   help="seconds between polls of a running Ray job (default 2)")
    p.add_argument("--reconciler", choices=RECONCILERS, default="ray",
                   help="ray (default): the Ray reconciler; observe: only read the caches and log")
    p.add_argument("--resync-period", type=float, default=DEFAULT_RESYNC_SECONDS, metavar="SECONDS",
                   help="reconcile every Ray at least this often, plus up to 10%% jitter, even without events; "
                        f"0 turns it off (default {DEFAULT_RESYNC_SECONDS:g})")
    add_option_arguments(p)
    p.set_defaults(func=cmd_run)


def build_manager(args: argparse.Namespace, writer: WriterFactory = KubeWriter,
                  submitter: JobSubmissionClient | None = None) -> Manager:
    """The manager `rayop run` runs, wired from its arguments. `writer` makes the Ray reconciler's writer from the
    manager's client; `submitter` is the RayJob reconciler's client of Ray's Job Submission API."""
    client = KubeClient.load(args.kubeconfig, args.context, qps=args.kube_api_qps, burst=args.kube_api_burst)
    election = None
    if args.leader_elect:
        election = LeaderElectionConfig(
            name=args.leader_election_id,
            namespace=args.leader_election_namespace or default_lease_namespace(),
            identity=args.leader_election_identity or default_identity(),
            lease_duration=args.lease_duration,
            renew_deadline=args.renew_deadline,
            retry_period=args.retry_period,
        )
    manager = Manager(
        client,
        namespaces=_namespaces(args.namespaces),
        metrics_address=args.metrics_bind_address,
        leader_election=election,
        shutdown_timeout=args.shutdown_timeout,
    )
    if args.reconciler == "observe":
        reconcile: Reconcile = observe_only(manager)
    else:
        reconcile = ray_reconciler(manager, options_from_args(args), writer(client))
    wire(manager, reconcile, args.workers, args.resync_period)
    rayjobs = args.rayjobs == "on" or (args.rayjobs == "auto" and rayjob_crd_served(client))
    if rayjobs:
        wire_rayjobs(manager, args.rayjob_workers, Timing(poll_interval=args.rayjob_poll_interval), submitter)
    log.info("rayjob controller", enabled=rayjobs, mode=args.rayjobs)
    add_cluster_metrics(manager, getattr(args, "cluster_metrics", MODE_CLUSTERS))
    return manager


def cmd_run(args: argparse.Namespace) -> int:
    configure_logging(args.log_format, args.log_level)
    return serve(build_manager(args))


def serve(manager: Manager) -> int:
    """Run the manager until it stops (SIGTERM or SIGINT drain it); its exit code."""

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("signal received, draining", signal=signal.Signals(signum).name)
        manager.stop()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
    manager.start()
    # Wait in short slices so the main thread stays responsive to signals.
    while True:
        code = manager.wait(0.5)
        if code is not None:
            return code


SUBCOMMANDS: dict[str, Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]] = {
    "run": add_run_parser}
SUBCOMMANDS["render"] = add_render_parser  # rayop render FILE: offline manifests (rayop.render)


def installed_version() -> str:
    """The version of the installed `rayop` distribution (its metadata), or "unknown" when it is not installed."""
    try:
        return importlib.metadata.version("rayop")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rayop", description="A Kubernetes operator for Ray clusters.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {installed_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in SUBCOMMANDS.values():
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
