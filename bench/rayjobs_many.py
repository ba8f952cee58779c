"""Benchmark of the `RayJob` kind: N short `RayJob`s (HTTP submission) from create to Complete on a sim-mode control
plane, with a stub of Ray's Job Submission API standing in for the dashboards.

    .venv/bin/python bench/rayjobs_many.py --rayjobs 100 [--shared-ray] [--namespaces 10] [--json FILE]

Phases, in order:

1. Control plane: as bench/reconcile_many.py (`--kubeconfig` reuses one; otherwise hack/local-cluster.sh brings
   one up in `--cluster-dir`, default /tmp/rayop-bench, with `--nodes` Nodes, and down at the end if this run
   started it). Both CRDs (manifests/crd.yaml, manifests/crd-rayjob.yaml) are installed.
2. Stub: bench/jobstub.py in this process on a free loopback port: a job is PENDING for `--pending-seconds`, RUNNING
   for `--run-seconds`, then SUCCEEDED.
3. Operator: `rayop run --rayjobs on` as a subprocess through bench/rayjob_operator.py (the real CLI; its Job
   Submission client sends each call for dashboard `http://<head>:8265` to the stub as `/dash/<head>:8265`, and its
   API client counts requests by resource), watching the K benchmark namespaces.
4. With `--shared-ray`: one static `Ray` per namespace (label `rayop.dev/bench-shared`), waited for until Ready
   before anything is measured; the RayJobs pick it with `clusterSelector`. Otherwise every RayJob has a
   `rayClusterSpec` (a static Ray of 1 head + `--cluster-workers` workers, requests 100m/256Mi) and so gets a
   cluster of its own (`<rayjob>-1`).
5. Create: N `RayJob`s round-robin over the namespaces with `--create-threads` threads; a watch on `rayjobs`
   (label selector of this run) records when each reaches jobDeploymentStatus Complete (or another final state:
   reported, and the run fails). Reported: wall time from the first create to all Complete, p50/p90/max per job,
   operator CPU seconds (utime+stime, /proc/<pid>/stat) and peak RSS (VmHWM), the operator's API requests by verb
   and resource (`rayop_bench_api_requests_total`, the hook in bench/rayjob_operator.py), the API server's own
   count by verb and resource over the same interval (`apiserver_request_total`: every client, i.e. the operator,
   controller-manager, scheduler, node agent and this benchmark), reconciles of the `rayjob` and `ray`
   controllers, and the stub's requests.
6. Check: every RayJob was submitted exactly once (the stub counts every POST per submission id, refused
   duplicates included), under its status.submissionId, to the dashboard in its status.dashboardURL. A violation
   is printed and the run exits 1 after writing the results.
7. Idle: `--idle-seconds` (default 30) after all Complete, the operator's writes are counted (none expected: the
   jobs are finished, deletionPolicy unset = DeleteNone, the clusters stay). Then the namespaces are deleted
   while the operator still runs (a submitted RayJob's finalizer needs it; the time until they are gone is
   reported), and the operator is stopped.

Numbers are measurements, not assertions; only the submission count is checked.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit


import reconcile_many as rm  # bench/ is on sys.path when this file runs as a script
from jobstub import JobStub, StubJobs

from rayop.api.types import GROUP, PLURAL, VERSION
from rayop.runtime.kube import ApiError, KubeClient

REPO = rm.REPO
RAYJOB_CRD_PATH = REPO / "manifests" / "crd-rayjob.yaml"
RAYJOBS = f"/apis/{GROUP}/{VERSION}/rayjobs"
SHARED_LABEL = "rayop.dev/bench-shared"
WRAPPER = REPO / "bench" / "rayjob_operator.py"
FINISHED = ("Complete", "Failed", "ValidationFailed")

Metrics = rm.Metrics


def install_crds(kube: KubeClient) -> None:
    rm.install_crd(kube)
    rm.install_crd(kube, RAYJOB_CRD_PATH, RAYJOBS)


def ray_spec(workers: int, run: str) -> dict[str, Any]:
    spec = rm.ray_object("x", "x", run)["spec"]
    spec["initialWorkers"] = workers
    return dict(spec)


def rayjob_object(name: str, namespace: str, run: str, args: argparse.Namespace) -> dict[str, Any]:
    spec: dict[str, Any] = {"entrypoint": "python -c 'print(1)'"}
    if args.shared_ray:
        spec["clusterSelector"] = {SHARED_LABEL: run}
    else:
        spec["rayClusterSpec"] = ray_spec(args.cluster_workers, run)
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "RayJob",
            "metadata": {"name": name, "namespace": namespace, "labels": {rm.BENCH_LABEL: run}}, "spec": spec}


# -- metrics ---------------------------------------------------------------------------------------------------------


def reconciles(metrics: Metrics) -> Counter[str]:
    out: Counter[str] = Counter()
    for labels, value in metrics.get("controller_runtime_reconcile_total", []):
        out[labels.get("controller", "?")] += int(value)
    return out


# -- the run ---------------------------------------------------------------------------------------------------------


def shared_rays(kube: KubeClient, namespaces: list[str], run: str, args: argparse.Namespace) -> dict[str, Any]:
    """One static Ray per namespace for the clusterSelector jobs, Ready before anything is measured."""
    ready: set[str] = set()
    lock = threading.Lock()

    def on_ray(obj: dict[str, Any], now: float) -> None:
        if rm.condition_true(obj, "Ready") and (obj.get("status") or {}).get("observedGeneration") == \
                obj["metadata"].get("generation"):
            with lock:
                ready.add(rm.key_of(obj))

    watch = rm.CollectionWatch(kube, rm.RAYS, f"{SHARED_LABEL}={run}", on_ray)
    watch.synced.wait(30)
    t0 = time.monotonic()
    try:
        for ns in namespaces:
            ray = rm.ray_object("shared", ns, run)
            ray["metadata"]["labels"][SHARED_LABEL] = run
            ray["spec"]["initialWorkers"] = args.cluster_workers
            kube.create(f"/apis/{GROUP}/{VERSION}/namespaces/{ns}/{PLURAL}", ray)
        ok = rm.wait_for(lambda: len(ready) >= len(namespaces), args.timeout,
                         lambda: f"shared Rays: {len(ready)}/{len(namespaces)} Ready", count=lambda: len(ready),
                         stall=args.stall_seconds)
    finally:
        watch.stop.set()
    if not ok:
        raise RuntimeError("the shared Rays did not become Ready")
    return {"rays": len(namespaces), "ready_seconds": time.monotonic() - t0}


def check_submissions(jobs: dict[str, dict[str, Any]], stats: dict[str, Any]) -> dict[str, Any]:
    """Every RayJob submitted exactly once, under its status.submissionId, to its status.dashboardURL."""
    per_job: Counter[int] = Counter()
    problems: list[str] = []
    by_sid = stats["by_submission"]
    expected = set()
    for key, obj in sorted(jobs.items()):
        status = obj.get("status") or {}
        sid = status.get("submissionId")
        expected.add(sid)
        n = stats["submissions"].get(sid, 0)
        per_job[n] += 1
        if n != 1:
            problems.append(f"{key}: {n} submissions of {sid}")
            continue
        meant = urlsplit(str(status.get("dashboardURL") or "")).netloc
        if by_sid[sid]["dashboard"] != meant:
            problems.append(f"{key}: submitted to {by_sid[sid]['dashboard']!r}, its dashboardURL is {meant!r}")
        meta = by_sid[sid]["metadata"]
        if f"{meta.get('rayjob.k8s.io/namespace')}/{meta.get('rayjob.k8s.io/name')}" != key:
            problems.append(f"{key}: the submission's metadata names {meta}")
    strays = sorted(set(stats["submissions"]) - expected)
    if strays:
        problems.append(f"submissions no RayJob's status names: {strays[:5]} ({len(strays)})")
    return {"submissions_per_rayjob": {str(k): v for k, v in sorted(per_job.items())},
            "dashboards": len({v["dashboard"] for v in by_sid.values()}), "problems": problems,
            "ok": not problems}


def operator_phase(args: argparse.Namespace, plane: rm.ControlPlane, kube: KubeClient, stub: JobStub, run: str,
                   out_dir: Path) -> dict[str, Any]:
    namespaces = [f"bench-{run}-j{i}" for i in range(args.namespaces)]
    rm.create_namespaces(kube, namespaces, run)
    result: dict[str, Any] = {"namespaces": namespaces}
    operator = None
    created: dict[str, float] = {}
    finished: dict[str, float] = {}
    final: dict[str, dict[str, Any]] = {}
    lock = threading.Lock()

    def on_rayjob(obj: dict[str, Any], now: float) -> None:
        state = (obj.get("status") or {}).get("jobDeploymentStatus")
        if state in FINISHED:
            with lock:
                key = rm.key_of(obj)
                final[key] = obj
                finished.setdefault(key, now)

    watch = rm.CollectionWatch(kube, RAYJOBS, f"{rm.BENCH_LABEL}={run}", on_rayjob)
    try:
        operator = rm.Operator(
            plane.kubeconfig, namespaces, out_dir / "operator.log", args.kube_api_qps, args.kube_api_burst,
            args.workers, entry=[sys.executable, str(WRAPPER), "--job-api", stub.url],
            extra_args=["--rayjobs", "on", "--rayjob-workers", str(args.rayjob_workers),
                        "--rayjob-poll-interval", f"{args.poll_interval:g}"])
        result["operator_command"] = " ".join(operator.command[1:])
        rm.log(f"operator pid {operator.pid}, metrics on 127.0.0.1:{operator.port}, log {operator.log_path}")
        watch.synced.wait(30)
        if args.shared_ray:
            result["shared_rays"] = shared_rays(kube, namespaces, run, args)
            rm.log(f"shared Rays Ready after {result['shared_rays']['ready_seconds']:.1f} s")
        m0, a0 = operator.metrics(), rm.apiserver_metrics(kube)
        cpu0, plane0, load0 = operator.cpu(), plane.cpu(), rm.loadavg()
        stub0 = stub.jobs.stats()
        creator = kube.clone(qps=0, pool_maxsize=max(32, args.create_threads))
        names = [(f"job-{i:04d}", namespaces[i % len(namespaces)]) for i in range(args.rayjobs)]

        def create(name: str, ns: str) -> Any:
            def job() -> None:
                creator.create(f"/apis/{GROUP}/{VERSION}/namespaces/{ns}/rayjobs",
                               rayjob_object(name, ns, run, args))
                with lock:
                    created[f"{ns}/{name}"] = time.monotonic()
            return job

        rm.log(f"creating {args.rayjobs} RayJobs in {len(namespaces)} namespaces (load {load0})")
        t0 = time.monotonic()
        rm.run_parallel(args.create_threads, [create(n, ns) for n, ns in names])
        t_created = time.monotonic()
        all_done = rm.wait_for(lambda: len(finished) >= args.rayjobs, args.timeout,
                               lambda: f"{len(finished)}/{args.rayjobs} finished, stub {stub.jobs.stats()['states']}"
                                       f" (load {rm.loadavg()})",
                               count=lambda: len(finished), stall=args.stall_seconds)
        t_done = time.monotonic()
        m1, a1 = operator.metrics(), rm.apiserver_metrics(kube)
        cpu1, plane1, load1 = operator.cpu(), plane.cpu(), rm.loadavg()
        hwm = rm.status_kib(operator.pid, "VmHWM")
        stub1 = stub.jobs.stats()
        states = Counter(str((o.get("status") or {}).get("jobDeploymentStatus")) for o in final.values())
        rm.log(f"{len(finished)}/{args.rayjobs} finished after {t_done - t0:.1f} s: {dict(states)} (load {load1})")
        result["create_to_complete"] = {
            "all_finished": all_done,
            "finished": len(finished),
            "states": dict(states),
            "creates_seconds": t_created - t0,
            "wall_seconds": t_done - t0,
            "per_job_seconds": rm.percentiles(finished[k] - created[k] for k in finished if k in created),
            "operator_cpu_seconds": cpu1 - cpu0,
            "operator_peak_rss_mib": (hwm or 0) / 1024,
            "operator_requests_by_verb": rm.diff(rm.requests_by_verb(m1), rm.requests_by_verb(m0)),
            "operator_non_2xx": rm.diff(rm.error_codes(m1), rm.error_codes(m0)),
            "operator_requests": rm.diff(rm.by_resource(m1, "rayop_bench_api_requests_total"),
                                         rm.by_resource(m0, "rayop_bench_api_requests_total")),
            "apiserver_requests": rm.diff(rm.by_resource(a1, "apiserver_request_total"),
                                          rm.by_resource(a0, "apiserver_request_total")),
            "reconciles": rm.diff(reconciles(m1), reconciles(m0)),
            "stub_requests": rm.diff(Counter(stub1["requests"]), Counter(stub0["requests"])),
            "control_plane_cpu_seconds": {k: round(v - plane0.get(k, 0.0), 2) for k, v in plane1.items()},
            "load_before": load0,
            "load_after": load1,
        }
        result["check"] = check_submissions(final, stub1)
        if len(final) < args.rayjobs:
            result["check"]["problems"].append(f"only {len(final)}/{args.rayjobs} RayJobs finished")
            result["check"]["ok"] = False
        if states.get("Complete", 0) != args.rayjobs:
            result["check"]["problems"].append(f"not all Complete: {dict(states)}")
            result["check"]["ok"] = False
        if args.idle_seconds > 0:
            m2, cpu2 = operator.metrics(), operator.cpu()
            time.sleep(args.idle_seconds)
            m3, cpu3 = operator.metrics(), operator.cpu()
            idle = rm.diff(rm.requests_by_verb(m3), rm.requests_by_verb(m2))
            result["idle"] = {"seconds": args.idle_seconds, "requests_by_verb": idle,
                              "writes": sum(n for v, n in idle.items() if v in rm.WRITE_VERBS),
                              "reconciles": rm.diff(reconciles(m3), reconciles(m2)),
                              "stub_requests": rm.diff(Counter(stub.jobs.stats()["requests"]),
                                                       Counter(stub1["requests"])),
                              "operator_cpu_seconds": cpu3 - cpu2}
        result["operator"] = {"peak_rss_mib": (rm.status_kib(operator.pid, "VmHWM") or 0) / 1024,
                              "cpu_seconds_total": operator.cpu(),
                              "informer_objects": {labels["informer"]: int(v) for labels, v in
                                                   operator.metrics().get("rayop_informer_objects", [])}}
    finally:
        watch.stop.set()
        # The operator still runs while the namespaces go: a submitted RayJob holds its finalizer
        # (ray.k8s.io/stop-ray-job) until the operator asked Ray to stop the job or saw it ended.
        gone = rm.delete_namespaces(kube, namespaces, args.cleanup_timeout)
        if gone is None:
            rm.log(f"namespaces not gone after {args.cleanup_timeout:.0f} s; removing the RayJobs' finalizers")
            strip_finalizers(kube, run)
            rm.delete_namespaces(kube, namespaces, 120)
        result["cleanup_seconds"] = gone
        rm.log(f"namespaces gone after {gone} s")
        if operator is not None:
            rm.log(f"operator stopped (exit {operator.stop()})")
    return result


def strip_finalizers(kube: KubeClient, run: str) -> None:
    """The last resort of the clean-up when the operator is gone: the bench's RayJobs lose their finalizers."""
    for obj in kube.get(RAYJOBS, labelSelector=f"{rm.BENCH_LABEL}={run}").get("items") or []:
        meta = obj["metadata"]
        path = f"/apis/{GROUP}/{VERSION}/namespaces/{meta['namespace']}/rayjobs/{meta['name']}"
        try:
            kube.patch(path, {"metadata": {"finalizers": None}})
        except ApiError as e:
            if not e.not_found:
                raise


# -- report ------------------------------------------------------------------------------------------------------


def fmt_counts(counts: dict[str, int], limit: int = 40) -> str:
    rows = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return "\n".join(f"    {n:>7}  {k}" for k, n in rows[:limit]) or "    none"


def report(results: dict[str, Any]) -> str:
    op = results["operator_phase"]
    done = op["create_to_complete"]
    check = op["check"]
    where = "clusterSelector on one shared Ray per namespace" if results["shared_ray"] else \
        f"rayClusterSpec (1 head + {results['cluster_workers']} worker(s) each)"
    lines = [
        f"rayjobs: {results['rayjobs']} ({where}) in {results['namespaces']} namespaces; stub: PENDING "
        f"{results['pending_seconds']:g} s, RUNNING {results['run_seconds']:g} s; operator --rayjob-workers "
        f"{results['rayjob_workers']} --rayjob-poll-interval {results['poll_interval']:g} --workers "
        f"{results['workers']}",
        f"machine: {results['cpus']} CPUs, Kubernetes {results['kubernetes']}, Python {results['python']}, "
        f"{results['nodes']} Nodes",
        "",
    ]
    if "shared_rays" in op:
        lines.append(f"shared Rays: {op['shared_rays']['rays']} Ready in {op['shared_rays']['ready_seconds']:.1f} s "
                     "(before the measurement)")
    lines += [
        "first create -> every RayJob finished:",
        f"  creates took             {done['creates_seconds']:.1f} s",
        f"  wall time to all final   {done['wall_seconds']:.1f} s ({done['finished']}/{results['rayjobs']}: "
        f"{done['states']})",
        f"  per job                  {rm.fmt_p(done['per_job_seconds'])}",
        f"  operator CPU             {done['operator_cpu_seconds']:.1f} s "
        f"({100 * done['operator_cpu_seconds'] / max(done['wall_seconds'], 1e-9):.0f}% of one core)",
        f"  operator peak RSS        {done['operator_peak_rss_mib']:.0f} MiB (VmHWM)",
        f"  operator requests        {rm.fmt_verbs(done['operator_requests_by_verb'])} (non-2xx: "
        f"{rm.fmt_verbs(done['operator_non_2xx'])})",
        f"  reconciles               {rm.fmt_verbs(done['reconciles'])}",
        f"  stub requests            {rm.fmt_verbs(done['stub_requests'])}",
        f"  control plane CPU        {rm.fmt_cpu(done['control_plane_cpu_seconds'])}",
        f"  load                     {done['load_before']} -> {done['load_after']}",
        "  operator's API requests by verb and resource:",
        fmt_counts(done["operator_requests"]),
        "  API server's requests by verb and resource (all clients):",
        fmt_counts(done["apiserver_requests"]),
        f"submissions per RayJob: {check['submissions_per_rayjob']} ({check['dashboards']} dashboards); "
        + ("OK: one each, to its own dashboardURL" if check["ok"] else "PROBLEMS:"),
    ]
    lines += [f"  {p}" for p in check["problems"][:20]]
    if "idle" in op:
        idle = op["idle"]
        lines.append(f"idle {idle['seconds']:.0f} s: writes {idle['writes']} ({rm.fmt_verbs(idle['requests_by_verb'])})"
                     f", reconciles {rm.fmt_verbs(idle['reconciles'])}, stub {rm.fmt_verbs(idle['stub_requests'])},"
                     f" operator CPU {idle['operator_cpu_seconds']:.2f} s")
    lines.append(f"cleanup: namespaces gone after {op['cleanup_seconds'] or float('nan'):.0f} s")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rayjobs", type=int, default=100)
    parser.add_argument("--shared-ray", action="store_true",
                        help="clusterSelector on one shared Ray per namespace instead of a cluster per job")
    parser.add_argument("--namespaces", type=int, default=10)
    parser.add_argument("--cluster-workers", type=int, default=1, help="workers of each job's Ray (default 1)")
    parser.add_argument("--pending-seconds", type=float, default=1.0, help="the stub's PENDING time (default 1)")
    parser.add_argument("--run-seconds", type=float, default=2.0, help="the stub's RUNNING time (default 2)")
    parser.add_argument("--kubeconfig", default=None, help="reuse this control plane (default: bring one up)")
    parser.add_argument("--cluster-dir", type=Path, default=Path("/tmp/rayop-bench"))
    parser.add_argument("--nodes", type=int, default=16)
    parser.add_argument("--keep-cluster", action="store_true")
    parser.add_argument("--kube-api-qps", type=float, default=200.0)
    parser.add_argument("--kube-api-burst", type=int, default=400)
    parser.add_argument("--workers", type=int, default=4, help="the operator's Ray reconciles (default 4)")
    parser.add_argument("--rayjob-workers", type=int, default=2, help="the operator's RayJob reconciles (default 2)")
    parser.add_argument("--poll-interval", type=float, default=2.0,
                        help="the operator's --rayjob-poll-interval (default 2, the operator's default)")
    parser.add_argument("--create-threads", type=int, default=8)
    parser.add_argument("--idle-seconds", type=float, default=30.0)
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument("--stall-seconds", type=float, default=180.0)
    parser.add_argument("--cleanup-timeout", type=float, default=300.0,
                        help="seconds for the namespaces to go (default 300); then the RayJobs' finalizers are removed")
    parser.add_argument("--out-dir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, rm._interrupt)
    signal.signal(signal.SIGINT, rm._interrupt)

    run = f"{int(time.time()) % 10**6:06d}"
    out_dir = args.out_dir or Path("/tmp/rayop-bench-results") / f"rayjobs-{run}"
    out_dir.mkdir(parents=True, exist_ok=True)
    plane = rm.ControlPlane(args.kubeconfig, args.cluster_dir, args.nodes, args.keep_cluster)
    kube = KubeClient.load(plane.kubeconfig, qps=0)
    stub = JobStub(StubJobs(args.pending_seconds, args.run_seconds))
    rm.log(f"job submission stub on {stub.url}")
    try:
        install_crds(kube)
        version = kube.get("/version")
        results: dict[str, Any] = {
            "run": run, "rayjobs": args.rayjobs, "shared_ray": args.shared_ray, "namespaces": args.namespaces,
            "cluster_workers": args.cluster_workers, "pending_seconds": args.pending_seconds,
            "run_seconds": args.run_seconds, "workers": args.workers, "rayjob_workers": args.rayjob_workers,
            "poll_interval": args.poll_interval, "kubernetes": version.get("gitVersion"),
            "python": sys.version.split()[0], "cpus": os.cpu_count(),
            "nodes": len(kube.get("/api/v1/nodes")["items"]), "command": " ".join(sys.argv), "out_dir": str(out_dir),
        }
        results["operator_phase"] = operator_phase(args, plane, kube, stub, run, out_dir)
    finally:
        stub.close()
        kube.close()
        plane.down()
    rm.write_results(results, out_dir, args.json, report)
    if not results["operator_phase"]["check"]["ok"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
