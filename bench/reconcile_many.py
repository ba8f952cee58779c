"""Benchmark of the whole operator: N `Ray`s of 1 head + 3 workers to Ready on a real control plane, against the
API server's own limit (the same pods created by a bare client loop).

    .venv/bin/python bench/reconcile_many.py --rays 100 [--namespaces 10] [--kubeconfig FILE] [--json FILE]

Phases, in order:

1. Control plane: `--kubeconfig` reuses a running one; otherwise the local control plane
   (hack/local-cluster.sh, sim mode) is brought up in `--cluster-dir` (default /tmp/rayop-bench, never the shared
   default state dir) with `--nodes` Nodes, reused if already up there, and brought down at the end only if this
   run started it. The `Ray` CRD (manifests/crd.yaml) is installed.
2. Operator: `rayop run` as a subprocess (JSON logs to a file, metrics on a free loopback port read from its
   "manager started" line), watching the K benchmark namespaces (`--all-namespaces`: every namespace, as a
   cluster-wide install does), with `--kube-api-qps/--kube-api-burst/--workers`.
3. Create: N static `Ray`s (autoScalingMode disabled, initialWorkers 3, requests 100m/256Mi, a ScheduleAnyway
   topology spread over the Nodes: see docs/benchmarks.md) spread round-robin over K fresh namespaces, as fast as `--create-threads` client threads can. A watch on the `rays` collection
   (label selector of this run) records when each reaches Ready=True (for its current generation).
   Reported: wall time from the first create to all Ready, p50/p90/max of each cluster's time from its create to
   Ready, operator CPU seconds (utime+stime from /proc/<pid>/stat), API requests by verb (the operator's
   `rayop_api_requests_total`), reconciles (`controller_runtime_reconcile_total`), and the CPU seconds of the
   control-plane processes (when their pids are known from the state dir).
4. Settle: until every `Ray` also has SuccessfulLaunch=True (the launcher pods completed); then an idle window of
   `--idle-seconds` (default 60) in which the operator's writes (every verb but GET and WATCH) are counted: an
   unchanged cluster should cost none.
   Peak RSS is the operator's VmHWM (/proc/<pid>/status) at the end of the idle window.
5. The operator is stopped and the namespaces deleted (the time until they are gone is reported).
6. Baseline (the API server's limit): in K other fresh namespaces, the same pods (`--baseline-pods-per-ray`, default
   4 = head + 3 workers; 5 adds the launcher pod, kept running) rendered by the operator's own builders
   (`rayop render`, ownerReferences removed) are created by a bare loop of `--baseline-threads` threads (default 4,
   the operator's worker count) sharing one `KubeClient` with no rate limit. A watch on pods records when each is
   Ready (the scheduler binds it, the node agent runs it). Reported: wall time from the first create to all Ready,
   and per "cluster" (its pods) the time from its first create to its last pod Ready. Then those namespaces are
   deleted as well.

`--py-spy PATH` (a py-spy binary; not a project dependency) samples the operator from the first create to all
Ready and writes collapsed stacks next to the log. Numbers are measurements, not assertions: nothing here fails
when they move. The machine's load averages (`uptime`) are printed with the results.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import urllib3  # noqa: E402
import yaml  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from rayop.api.types import GROUP, PLURAL, VERSION  # noqa: E402
from rayop.defaults import Options  # noqa: E402
from rayop.objects import (LABEL_CLUSTER, LABEL_MANAGED_BY, LABEL_ROLE, MANAGED_BY, ROLE_HEAD,  # noqa: E402
                           ROLE_WORKER)
from rayop.render import render_ray  # noqa: E402
from rayop.runtime.kube import ApiError, KubeClient  # noqa: E402

SCRIPT = REPO / "hack" / "local-cluster.sh"
CRD_PATH = REPO / "manifests" / "crd.yaml"
BENCH_LABEL = "rayop.dev/bench"
BENCH_POD_LABEL = "rayop.dev/bench-pod"
RAYS = f"/apis/{GROUP}/{VERSION}/{PLURAL}"
CLK_TCK = os.sysconf("SC_CLK_TCK")
WRITE_VERBS = ("POST", "PUT", "PATCH", "DELETE")
WRAPPER = REPO / "bench" / "rayjob_operator.py"
PODS_PER_RAY = 4  # the benchmark's Rays: 1 head + 3 workers, static
Metrics = dict[str, list[tuple[dict[str, str], float]]]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# -- processes ---------------------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process, in seconds (None when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of stat, after pid and comm


def status_kib(pid: int, field: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class ControlPlane:
    """The local control plane in a state dir of its own (hack/local-cluster.sh), or a kubeconfig to reuse."""

    def __init__(self, kubeconfig: str | None, cluster_dir: Path, nodes: int, keep: bool):
        self.started_here = False
        self.cluster_dir = cluster_dir
        self.keep = keep
        if kubeconfig is None:
            env = self._env()
            if subprocess.run([str(SCRIPT), "status"], env=env, capture_output=True).returncode != 0:
                log(f"bringing up the local control plane in {cluster_dir} ({nodes} nodes)")
                subprocess.run([str(SCRIPT), "up", "--nodes", str(nodes)], env=env, check=True, timeout=900,
                               stdout=sys.stderr)
                self.started_here = True
            kubeconfig = str(cluster_dir / "admin.kubeconfig")
        self.kubeconfig = kubeconfig
        state = Path(kubeconfig).resolve().parent / "state.json"
        pids = json.loads(state.read_text()).get("pids", {}) if state.exists() else {}
        self.pids: dict[str, int] = {k: int(v) for k, v in pids.items() if v}

    def _env(self) -> dict[str, str]:
        return dict(os.environ, RAYOP_CLUSTER_DIR=str(self.cluster_dir))

    def cpu(self) -> dict[str, float]:
        out = {}
        for name, pid in self.pids.items():
            value = cpu_seconds(pid)
            if value is not None:
                out[name] = value
        return out

    def down(self) -> None:
        if self.started_here and not self.keep:
            log(f"bringing down the control plane in {self.cluster_dir}")
            subprocess.run([str(SCRIPT), "down"], env=self._env(), check=False, stdout=sys.stderr)


def install_crd(kube: KubeClient, crd_path: Path = CRD_PATH, served: str = RAYS) -> None:
    """Create or update a CRD from manifests/ (default the `Ray` one) and wait until `served` lists."""
    crd = yaml.safe_load(crd_path.read_text())
    path = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd['metadata']['name']}"
    try:
        crd["metadata"]["resourceVersion"] = kube.get(path)["metadata"]["resourceVersion"]
        kube.replace(path, crd)
    except ApiError as e:
        if not e.not_found:
            raise
        kube.create("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        conditions = kube.get(path).get("status", {}).get("conditions") or []
        if any(c["type"] == "Established" and c["status"] == "True" for c in conditions):
            try:
                kube.get(served, limit=1)
                return
            except ApiError:
                pass
        time.sleep(0.2)
    raise RuntimeError(f"the CRD {crd['metadata']['name']} was not established within 60 s")


class Operator:
    """`rayop run` as a subprocess; JSON logs to a file; metrics port read from the log."""

    def __init__(self, kubeconfig: str, namespaces: list[str], log_path: Path, qps: float | None,
                 burst: int | None, workers: int | None, entry: list[str] | None = None,
                 extra_args: list[str] | None = None):
        # `entry` runs another entry point over the same `run` parser (bench/rayjob_operator.py). A None of qps,
        # burst or workers leaves that flag out: the operator's default.
        args = [*(entry or [sys.executable, "-m", "rayop.cli"]), "run", "--kubeconfig", kubeconfig,
                "--no-leader-elect", "--metrics-bind-address", "127.0.0.1:0", "--log-format", "json"]
        for flag, value in (("--kube-api-qps", qps), ("--kube-api-burst", burst), ("--workers", workers)):
            if value is not None:
                args += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
        for ns in namespaces:
            args += ["--namespace", ns]
        args += extra_args or []
        env = dict(os.environ)
        env.pop("KUBERNETES_SERVICE_HOST", None)
        self.command = args
        self.log_path = log_path
        with open(log_path, "ab") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.pid = self.proc.pid
        self.port = self._wait_port(60)
        self._wait_ready(120)

    def _wait_port(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rayop run exited with {self.proc.returncode}; see {self.log_path}")
            for line in self.log_path.read_text(errors="replace").splitlines():
                if '"manager started"' in line:
                    port = json.loads(line).get("metrics_port")
                    if port:
                        return int(port)
            time.sleep(0.1)
        raise RuntimeError(f"no 'manager started' line in {self.log_path}")

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=5) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError("the operator's informers did not sync")

    def metrics(self) -> Metrics:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=10) as r:
            return parse_metrics(r.read().decode())

    def cpu(self) -> float:
        return cpu_seconds(self.pid) or 0.0

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            os.killpg(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.pid, signal.SIGKILL)
                self.proc.wait(10)
        return self.proc.returncode


def requests_by_verb(metrics: dict[str, list[tuple[dict[str, str], float]]]) -> Counter[str]:
    out: Counter[str] = Counter()
    for labels, value in metrics.get("rayop_api_requests_total", []):
        out[labels["verb"]] += int(value)
    return out


def error_codes(metrics: dict[str, list[tuple[dict[str, str], float]]]) -> Counter[str]:
    out: Counter[str] = Counter()
    for labels, value in metrics.get("rayop_api_requests_total", []):
        if not labels["code"].startswith("2"):
            out[f"{labels['verb']} {labels['code']}"] += int(value)
    return out


def metric_sum(metrics: dict[str, list[tuple[dict[str, str], float]]], name: str, **match: str) -> float:
    return sum(v for labels, v in metrics.get(name, []) if all(labels.get(k) == m for k, m in match.items()))


def parse_metrics(text: str) -> Metrics:
    out: Metrics = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return out


def apiserver_metrics(kube: KubeClient) -> Metrics:
    """kube-apiserver's /metrics (the admin kubeconfig may read it); only `apiserver_request_total` is kept."""
    headers = dict(kube._headers(None), Accept="text/plain")
    response = kube._pool.request("GET", kube.url("/metrics"), headers=headers,
                                  timeout=urllib3.Timeout(connect=10.0, read=60.0), retries=False)
    if response.status != 200:
        raise RuntimeError(f"GET /metrics of the API server: HTTP {response.status}")
    lines = [ln for ln in response.data.decode().splitlines()
             if ln.startswith("apiserver_request_total") or ln.startswith("# TYPE apiserver_request_total")]
    return parse_metrics("\n".join(lines) + "\n")


def by_resource(metrics: Metrics, name: str) -> Counter[str]:
    """`<VERB> <resource>[/<subresource>]` -> count, over every other label."""
    out: Counter[str] = Counter()
    for labels, value in metrics.get(name, []):
        resource = labels.get("resource", "")
        if resource == "events" and labels.get("group"):
            resource = f"events.{labels['group']}"  # events.k8s.io's Events (the scheduler's), not core/v1's
        if labels.get("subresource"):
            resource += "/" + labels["subresource"]
        out[f"{labels.get('verb', '?')} {resource}"] += int(value)
    return out


def writes_of(requests: dict[str, int]) -> dict[str, int]:
    return {k: n for k, n in requests.items() if k.split(" ", 1)[0] in WRITE_VERBS}


def caused_writes(writes: dict[str, int]) -> int:
    """The writes the `Ray`s (or the baseline's pods) caused: all but the controllers' and Nodes' Lease renewals,
    which go on whatever happens, and the benchmark's own creates of the `Ray`s."""
    return sum(n for k, n in writes.items() if k.split(" ", 1)[1] != "leases" and k != f"POST {PLURAL}")


def diff(after: Counter[str], before: Counter[str]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in sorted(after) if after[k] - before.get(k, 0)}


# -- watching a collection -----------------------------------------------------------------------------------------


class CollectionWatch:
    """List + watch of a collection (label selector), calling `on_object(obj, now)` for every object seen;
    re-lists when the watch ends or fails."""

    def __init__(self, kube: KubeClient, path: str, selector: str, on_object: Callable[[dict[str, Any], float],
                                                                                          None],
                 on_deleted: Callable[[dict[str, Any]], None] | None = None,
                 on_list: Callable[[list[dict[str, Any]], float], None] | None = None):
        # `on_list(items, now)` (optional) is called with every (re-)list before its objects go to `on_object`, so
        # a caller can forget the objects deleted while the watch was down.
        self.kube = kube
        self.on_deleted = on_deleted
        self.on_list = on_list
        self.path = path
        self.selector = selector
        self.on_object = on_object
        self.stop = threading.Event()
        self.synced = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"watch {path}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                listed = self.kube.get(self.path, labelSelector=self.selector)
                now = time.monotonic()
                if self.on_list is not None:
                    self.on_list(listed.get("items") or [], now)
                for obj in listed.get("items") or []:
                    self.on_object(obj, now)
                self.synced.set()
                rv = listed["metadata"]["resourceVersion"]
                for event in self.kube.watch(self.path, {"labelSelector": self.selector, "resourceVersion": rv,
                                                         "allowWatchBookmarks": "true", "timeoutSeconds": 300},
                                             timeout=330):
                    if self.stop.is_set():
                        return
                    if event.get("type") in ("ADDED", "MODIFIED"):
                        self.on_object(event["object"], time.monotonic())
                    elif event.get("type") == "DELETED" and self.on_deleted is not None:
                        self.on_deleted(event["object"])
                    elif event.get("type") == "ERROR":
                        break
            except Exception as e:  # noqa: BLE001 - a benchmark's watch re-lists on anything
                if not self.stop.is_set():
                    log(f"watch of {self.path} failed ({e}); re-listing")
                    time.sleep(0.5)


def condition_true(obj: dict[str, Any], kind: str) -> bool:
    return any(c.get("type") == kind and c.get("status") == "True"
               for c in (obj.get("status") or {}).get("conditions") or [])


def pod_ready(pod: dict[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") == "Running" and condition_true(pod, "Ready")


def key_of(obj: dict[str, Any]) -> str:
    return f"{obj['metadata']['namespace']}/{obj['metadata']['name']}"


def percentiles(values: Iterable[float]) -> dict[str, float]:
    data = sorted(values)
    if not data:
        return {}
    q = statistics.quantiles(data, n=10, method="inclusive") if len(data) > 1 else [data[0]] * 9
    return {"p50": statistics.median(data), "p90": q[8], "max": data[-1], "min": data[0]}


# -- objects -------------------------------------------------------------------------------------------------------


def ray_object(name: str, namespace: str, run: str) -> dict[str, Any]:
    resources = {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}}
    # Spread the pods over the Nodes. Without it the scheduler's OpportunisticBatching (beta, on by default in
    # v1.36) binds identical pods to the same Node until the Node is full (5,000 pods), while the node agent has a
    # /24 of pod IPs per Node: pods beyond ~250 on one Node would stay Pending.
    spread = [{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway",
               "labelSelector": {"matchLabels": {BENCH_POD_LABEL: run}}}]

    def template(container: str) -> dict[str, Any]:
        return {"metadata": {"labels": {BENCH_POD_LABEL: run}},
                "spec": {"topologySpreadConstraints": spread,
                         "containers": [{"name": container, "resources": resources}]}}

    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Ray",
        "metadata": {"name": name, "namespace": namespace, "labels": {BENCH_LABEL: run}},
        "spec": {
            "autoScalingMode": "disabled",
            "initialWorkers": 3,
            "head": template("ray-head"),
            "worker": template("ray-worker"),
        },
    }


def baseline_pods(name: str, namespace: str, run: str, per_ray: int) -> list[dict[str, Any]]:
    """The pods the operator would create for the same `Ray`, as bare pods (no owner), from its own builders."""
    manifests = render_ray(ray_object(name, namespace, run), Options())
    pods = [m for m in manifests if m["kind"] == "Pod" and m["metadata"]["labels"].get(LABEL_ROLE) != "launcher"]
    if per_ray >= 5:
        # The launcher pod, kept running (the baseline times pods to Ready).
        launcher = next(m for m in manifests if m["metadata"]["labels"].get(LABEL_ROLE) == "launcher")
        meta = {k: v for k, v in launcher["metadata"].items() if k not in ("name", "annotations")}
        pods.append({"apiVersion": "v1", "kind": "Pod", "metadata": {**meta, "generateName": f"{name}-launcher-"},
                     "spec": {**launcher["spec"], "restartPolicy": "Always"}})
    out = []
    for pod in pods[:per_ray]:
        metadata = dict(pod["metadata"])
        metadata.pop("ownerReferences", None)
        labels = {k: v for k, v in (metadata.get("labels") or {}).items() if k != "app.kubernetes.io/managed-by"}
        labels[BENCH_LABEL] = run
        metadata["labels"] = labels
        metadata["namespace"] = namespace
        out.append({**pod, "metadata": metadata})
    return out


def pods_per_node(kube: KubeClient, selector: str, namespace_prefix: str) -> dict[str, int]:
    out: Counter[str] = Counter()
    for pod in kube.get("/api/v1/pods", labelSelector=selector)["items"]:
        if pod["metadata"]["namespace"].startswith(namespace_prefix):
            out[pod["spec"].get("nodeName") or "(unscheduled)"] += 1
    return dict(sorted(out.items()))


def create_namespaces(kube: KubeClient, names: list[str], run: str) -> None:
    for ns in names:
        kube.create("/api/v1/namespaces", {"metadata": {"name": ns, "labels": {BENCH_LABEL: run}}})


def delete_namespaces(kube: KubeClient, names: list[str], timeout: float) -> float | None:
    """Delete the namespaces; seconds until all are gone (None on timeout)."""
    t0 = time.monotonic()
    for ns in names:
        try:
            kube.delete(f"/api/v1/namespaces/{ns}")
        except ApiError as e:
            if not e.not_found:
                raise
    remaining = set(names)
    while remaining and time.monotonic() - t0 < timeout:
        for ns in list(remaining):
            try:
                kube.get(f"/api/v1/namespaces/{ns}")
            except ApiError as e:
                if e.not_found:
                    remaining.discard(ns)
        if remaining:
            time.sleep(1)
    return None if remaining else time.monotonic() - t0


def run_parallel(threads: int, jobs: list[Callable[[], None]]) -> None:
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for future in [pool.submit(job) for job in jobs]:
            future.result()


def wait_for(predicate: Callable[[], bool], timeout: float, progress: Callable[[], str], every: float = 10,
             count: Callable[[], int] | None = None, stall: float = 180) -> bool:
    """Wait until `predicate()`; give up after `timeout`, or after `stall` seconds in which `count()` did not move."""
    deadline = time.monotonic() + timeout
    next_report = time.monotonic() + every
    last_count, last_move = (count() if count else 0), time.monotonic()
    while time.monotonic() < deadline:
        if predicate():
            return True
        if count is not None:
            if count() != last_count:
                last_count, last_move = count(), time.monotonic()
            elif time.monotonic() - last_move > stall:
                log(f"no progress for {stall:.0f} s, giving up: {progress()}")
                return predicate()
        if time.monotonic() >= next_report:
            log(progress())
            next_report += every
        time.sleep(0.05)
    return predicate()


# -- the phases ------------------------------------------------------------------------------------------------------


def operator_phase(args: argparse.Namespace, plane: ControlPlane, kube: KubeClient, run: str,
                   out_dir: Path) -> dict[str, Any]:
    namespaces = [f"bench-{run}-r{i}" for i in range(args.namespaces)]
    create_namespaces(kube, namespaces, run)
    defaults = args.operator_defaults
    operator = Operator(plane.kubeconfig, [] if args.all_namespaces else namespaces, out_dir / "operator.log",
                        None if defaults else args.kube_api_qps, None if defaults else args.kube_api_burst,
                        None if defaults else args.workers, entry=[sys.executable, str(WRAPPER)])
    log(f"operator pid {operator.pid}, metrics on 127.0.0.1:{operator.port}, log {operator.log_path}")
    result: dict[str, Any] = {"operator_command": " ".join(operator.command[1:4]) + " ...",
                              "namespaces": namespaces}
    created: dict[str, float] = {}
    ready: dict[str, float] = {}
    launched: dict[str, float] = {}
    lock = threading.Lock()

    def on_ray(obj: dict[str, Any], now: float) -> None:
        key = key_of(obj)
        status = obj.get("status") or {}
        current = status.get("observedGeneration") == obj["metadata"].get("generation")
        with lock:
            if current and key not in ready and condition_true(obj, "Ready"):
                ready[key] = now
            if current and key not in launched and condition_true(obj, "SuccessfulLaunch"):
                launched[key] = now

    # Watch-recorded pod history: the live (not terminating, not finished) Ray pods of each Ray at every moment.
    live: dict[str, set[str]] = {}
    most: dict[str, int] = {}

    def on_pod(pod: dict[str, Any], now: float) -> None:
        meta = pod["metadata"]
        labels = meta.get("labels") or {}
        if labels.get(LABEL_ROLE) not in (ROLE_HEAD, ROLE_WORKER):
            return
        owner = f"{meta['namespace']}/{labels.get(LABEL_CLUSTER, '?')}"
        finished = (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")
        with lock:
            pods = live.setdefault(owner, set())
            if meta.get("deletionTimestamp") or finished:
                pods.discard(meta["name"])
            else:
                pods.add(meta["name"])
                most[owner] = max(most.get(owner, 0), len(pods))

    def on_pod_deleted(pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        owner = f"{meta['namespace']}/{(meta.get('labels') or {}).get(LABEL_CLUSTER, '?')}"
        with lock:
            live.get(owner, set()).discard(meta["name"])

    watch = CollectionWatch(kube, RAYS, f"{BENCH_LABEL}={run}", on_ray)
    pod_watch = CollectionWatch(kube, "/api/v1/pods", f"{LABEL_MANAGED_BY}={MANAGED_BY}", on_pod, on_pod_deleted)
    watch.synced.wait(30)
    pod_watch.synced.wait(30)
    spy = None
    try:
        if args.py_spy:
            spy = subprocess.Popen([args.py_spy, "record", "--pid", str(operator.pid), "--rate", "100",
                                    "--format", "raw", "--threads", "--gil", "--nonblocking", "-o",
                                    str(out_dir / "operator.pyspy.txt")],
                                   stdout=open(out_dir / "py-spy.log", "wb"), stderr=subprocess.STDOUT)
            time.sleep(1)
        m0, a0 = operator.metrics(), apiserver_metrics(kube)
        cpu0, plane0, load0 = operator.cpu(), plane.cpu(), loadavg()
        creator = kube.clone(qps=0, pool_maxsize=max(32, args.create_threads))
        names = [(f"ray-{i:04d}", namespaces[i % len(namespaces)]) for i in range(args.rays)]

        def create(name: str, ns: str) -> Callable[[], None]:
            def job() -> None:
                creator.create(f"/apis/{GROUP}/{VERSION}/namespaces/{ns}/{PLURAL}", ray_object(name, ns, run))
                t = time.monotonic()
                with lock:
                    created[f"{ns}/{name}"] = t
            return job

        log(f"creating {args.rays} Rays in {len(namespaces)} namespaces (load {load0})")
        t0 = time.monotonic()
        run_parallel(args.create_threads, [create(n, ns) for n, ns in names])
        t_created = time.monotonic()
        log(f"created {args.rays} Rays in {t_created - t0:.1f} s")
        all_ready = wait_for(lambda: len(ready) >= args.rays, args.timeout,
                             lambda: f"{len(ready)}/{args.rays} Ready (load {loadavg()})",
                             count=lambda: len(ready), stall=args.stall_seconds)
        t_ready = time.monotonic()
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            try:
                spy.wait(60)
            except subprocess.TimeoutExpired:
                spy.kill()
        m1, a1 = operator.metrics(), apiserver_metrics(kube)
        cpu1, plane1, load1 = operator.cpu(), plane.cpu(), loadavg()
        hwm_ready = status_kib(operator.pid, "VmHWM")
        result["pods_per_node"] = pods_per_node(kube, "app.kubernetes.io/managed-by=rayop", f"bench-{run}-r")
        log(f"{len(ready)}/{args.rays} Ready after {t_ready - t0:.1f} s (load {load1})")
        per_cluster = [ready[k] - created[k] for k in ready if k in created]
        result["create_to_ready"] = {
            "all_ready": all_ready,
            "rays_ready": len(ready),
            "creates_seconds": t_created - t0,
            "wall_seconds": t_ready - t0,
            "per_cluster_seconds": percentiles(per_cluster),
            "operator_cpu_seconds": cpu1 - cpu0,
            "operator_peak_rss_mib": (hwm_ready or 0) / 1024,
            "requests_by_verb": diff(requests_by_verb(m1), requests_by_verb(m0)),
            "non_2xx": diff(error_codes(m1), error_codes(m0)),
            "reconciles": int(metric_sum(m1, "controller_runtime_reconcile_total")
                              - metric_sum(m0, "controller_runtime_reconcile_total")),
            "reconcile_seconds_total": metric_sum(m1, "controller_runtime_reconcile_time_seconds_sum")
            - metric_sum(m0, "controller_runtime_reconcile_time_seconds_sum"),
            "queue_wait_seconds_mean": _mean_delta(m0, m1, "workqueue_queue_duration_seconds"),
            "control_plane_cpu_seconds": {k: round(v - plane0.get(k, 0.0), 2) for k, v in plane1.items()},
            "load_before": load0,
            "load_after": load1,
            "operator_requests_by_resource": diff(by_resource(m1, "rayop_bench_api_requests_total"),
                                                  by_resource(m0, "rayop_bench_api_requests_total")),
            "apiserver_writes_by_resource": writes_of(diff(by_resource(a1, "apiserver_request_total"),
                                                           by_resource(a0, "apiserver_request_total"))),
        }
        result["create_to_ready"]["writes_per_ray"] = caused_writes(
            result["create_to_ready"]["apiserver_writes_by_resource"]) / max(args.rays, 1)
        # Settle: the launcher pods complete (SuccessfulLaunch) after Ready; then the idle window.
        settled = wait_for(lambda: len(launched) >= args.rays, args.settle_timeout,
                           lambda: f"{len(launched)}/{args.rays} SuccessfulLaunch",
                           count=lambda: len(launched), stall=args.stall_seconds)
        t_settled = time.monotonic()
        m2, a2 = operator.metrics(), apiserver_metrics(kube)
        cpu2 = operator.cpu()
        log(f"settled ({len(launched)}/{args.rays} launched) {t_settled - t_ready:.1f} s after all Ready; "
            f"idle window of {args.idle_seconds:.0f} s")
        time.sleep(args.idle_seconds)
        m3 = operator.metrics()
        cpu3, load3 = operator.cpu(), loadavg()
        idle = diff(requests_by_verb(m3), requests_by_verb(m2))
        result["settle"] = {
            "all_launched": settled,
            "seconds_after_ready": t_settled - t_ready,
            "requests_by_verb": diff(requests_by_verb(m2), requests_by_verb(m1)),
            "reconciles": int(metric_sum(m2, "controller_runtime_reconcile_total")
                              - metric_sum(m1, "controller_runtime_reconcile_total")),
            "operator_cpu_seconds": cpu2 - cpu1,
            # Every write caused from the first create until all launched (the launchers included).
            "apiserver_writes_by_resource_from_create": writes_of(diff(by_resource(a2, "apiserver_request_total"),
                                                                      by_resource(a0, "apiserver_request_total"))),
        }
        result["settle"]["writes_per_ray_from_create"] = caused_writes(
            result["settle"]["apiserver_writes_by_resource_from_create"]) / max(args.rays, 1)
        result["idle"] = {
            "seconds": args.idle_seconds,
            "requests_by_verb": idle,
            "writes": sum(n for v, n in idle.items() if v in WRITE_VERBS),
            "reconciles": int(metric_sum(m3, "controller_runtime_reconcile_total")
                              - metric_sum(m2, "controller_runtime_reconcile_total")),
            "operator_cpu_seconds": cpu3 - cpu2,
            "load_after": load3,
        }
        with lock:
            result["pods_history"] = {"rays_seen": len(most), "max_live_pods_of_one_ray": max(most.values(), default=0),
                                      "rays_above_desired": sorted(k for k, n in most.items() if n > PODS_PER_RAY)}
        result["operator"] = {
            "peak_rss_mib": (status_kib(operator.pid, "VmHWM") or 0) / 1024,
            "rss_mib_at_end": (status_kib(operator.pid, "VmRSS") or 0) / 1024,
            "cpu_seconds_total": cpu3,
            "requests_by_verb_total": dict(requests_by_verb(m3)),
            "informer_objects": {labels["informer"]: int(v) for labels, v in m3.get("rayop_informer_objects", [])},
        }
    finally:
        if spy is not None and spy.poll() is None:
            spy.kill()
        watch.stop.set()
        pod_watch.stop.set()
        code = operator.stop()
        log(f"operator stopped (exit {code})")
        creator_gone = delete_namespaces(kube, namespaces, args.cleanup_timeout)
        result["cleanup_seconds"] = creator_gone
        log(f"namespaces of the operator phase gone after {creator_gone} s")
    return result


def _mean_delta(m0: dict[str, Any], m1: dict[str, Any], name: str) -> float | None:
    total = metric_sum(m1, f"{name}_sum") - metric_sum(m0, f"{name}_sum")
    count = metric_sum(m1, f"{name}_count") - metric_sum(m0, f"{name}_count")
    return total / count if count else None


def baseline_phase(args: argparse.Namespace, plane: ControlPlane, kube: KubeClient, run: str,
                   threads: int) -> dict[str, Any]:
    namespaces = [f"bench-{run}-p{threads}-{i}" for i in range(args.namespaces)]
    create_namespaces(kube, namespaces, run)
    groups = {f"{namespaces[i % len(namespaces)]}/ray-{i:04d}":
              baseline_pods(f"ray-{i:04d}", namespaces[i % len(namespaces)], run, args.baseline_pods_per_ray)
              for i in range(args.rays)}
    total = sum(len(p) for p in groups.values())
    ready: dict[str, float] = {}
    created: dict[str, tuple[str, float]] = {}  # pod key -> (group, time)
    group_first: dict[str, float] = {}
    lock = threading.Lock()

    def on_pod(pod: dict[str, Any], now: float) -> None:
        if pod_ready(pod):
            with lock:
                ready.setdefault(key_of(pod), now)

    watch = CollectionWatch(kube, "/api/v1/pods", f"{BENCH_LABEL}={run}", on_pod)
    watch.synced.wait(30)
    client = kube.clone(qps=0, pool_maxsize=max(32, threads))
    result: dict[str, Any] = {"pods": total, "pods_per_ray": args.baseline_pods_per_ray, "threads": threads}
    try:
        def create(group: str, pod: dict[str, Any]) -> Callable[[], None]:
            ns = pod["metadata"]["namespace"]

            def job() -> None:
                with lock:
                    group_first.setdefault(group, time.monotonic())
                made = client.create(f"/api/v1/namespaces/{ns}/pods", pod)
                with lock:
                    created[key_of(made)] = (group, time.monotonic())
            return job

        plane0, load0, a0 = plane.cpu(), loadavg(), apiserver_metrics(kube)
        log(f"baseline: creating {total} pods with {threads} thread(s) (load {load0})")
        t0 = time.monotonic()
        # Cluster by cluster, as the operator's workers would take them.
        run_parallel(threads, [create(g, p) for g, pods in groups.items() for p in pods])
        t_created = time.monotonic()
        log(f"baseline: created {total} pods in {t_created - t0:.1f} s")
        all_ready = wait_for(lambda: len(ready) >= total, args.timeout,
                             lambda: f"baseline: {len(ready)}/{total} pods Ready (load {loadavg()})",
                             count=lambda: len(ready), stall=args.stall_seconds)
        t_ready = time.monotonic()
        plane1, load1, a1 = plane.cpu(), loadavg(), apiserver_metrics(kube)
        result["pods_per_node"] = pods_per_node(kube, f"{BENCH_LABEL}={run}", f"bench-{run}-p{threads}-")
        log(f"baseline: {len(ready)}/{total} pods Ready after {t_ready - t0:.1f} s (load {load1})")
        group_ready: dict[str, float] = {}
        for key, (group, _) in created.items():
            if key in ready:
                group_ready[group] = max(group_ready.get(group, 0.0), ready[key])
        complete = [g for g in groups if sum(1 for grp, _ in created.values() if grp == g) == len(groups[g])]
        per_group = [group_ready[g] - group_first[g] for g in complete if g in group_ready]
        per_pod = [ready[k] - t for k, (_, t) in created.items() if k in ready]
        result.update({
            "all_ready": all_ready,
            "pods_ready": len(ready),
            "creates_seconds": t_created - t0,
            "create_rate_per_second": total / (t_created - t0),
            "wall_seconds": t_ready - t0,
            "per_cluster_seconds": percentiles(per_group),
            "per_pod_seconds": percentiles(per_pod),
            "client_requests": {f"{v} {c}": n for (v, c), n in sorted(client.request_counts().items())},
            "apiserver_writes_by_resource": writes_of(diff(by_resource(a1, "apiserver_request_total"),
                                                           by_resource(a0, "apiserver_request_total"))),
            "control_plane_cpu_seconds": {k: round(v - plane0.get(k, 0.0), 2) for k, v in plane1.items()},
            "load_before": load0,
            "load_after": load1,
        })
        result["writes_per_ray"] = caused_writes(result["apiserver_writes_by_resource"]) / max(args.rays, 1)
    finally:
        watch.stop.set()
        client.close()
        gone = delete_namespaces(kube, namespaces, args.cleanup_timeout)
        result["cleanup_seconds"] = gone
        log(f"baseline namespaces gone after {gone} s")
    return result


# -- report --------------------------------------------------------------------------------------------------------


def fmt_verbs(verbs: dict[str, int]) -> str:
    return ", ".join(f"{v} {n}" for v, n in sorted(verbs.items(), key=lambda kv: -kv[1])) or "none"


def fmt_p(p: dict[str, float]) -> str:
    return f"p50 {p['p50']:.1f} s, p90 {p['p90']:.1f} s, max {p['max']:.1f} s" if p else "n/a"


def fmt_writes(writes: dict[str, int], per: int) -> list[str]:
    return [f"    {n:6d}  {n / max(per, 1):5.2f}/Ray  {k}" for k, n in sorted(writes.items(), key=lambda kv: -kv[1])]


def report(results: dict[str, Any]) -> str:
    op = results["operator_phase"]
    ready = op["create_to_ready"]
    n = results["rays"]
    settings = ("its defaults" if results.get("operator_defaults") else
                f"--workers {results['workers']} --kube-api-qps {results['kube_api_qps']:g} "
                f"--kube-api-burst {results['kube_api_burst']}")
    history = op.get("pods_history") or {}
    lines = [
        f"rays: {n} (1 head + 3 workers each) in {results['namespaces']} namespaces; operator at {settings}, "
        f"watching {'every namespace' if results.get('all_namespaces') else 'those namespaces'}",
        f"machine: {results['cpus']} CPUs, Kubernetes {results['kubernetes']}, Python {results['python']}, "
        f"{results['nodes']} Nodes",
        "",
        "operator phase (first create -> every Ray Ready=True):",
        f"  creates took           {ready['creates_seconds']:.1f} s",
        f"  wall time to all Ready {ready['wall_seconds']:.1f} s ({ready['rays_ready']}/{n} Ready)",
        f"  per cluster            {fmt_p(ready['per_cluster_seconds'])}",
        f"  operator CPU           {ready['operator_cpu_seconds']:.1f} s "
        f"({1000 * ready['operator_cpu_seconds'] / max(n, 1):.1f} ms per Ray; "
        f"{100 * ready['operator_cpu_seconds'] / max(ready['wall_seconds'], 1e-9):.0f}% of one core)",
        f"  operator peak RSS      {op['operator']['peak_rss_mib']:.0f} MiB (VmHWM; "
        f"{op['operator']['rss_mib_at_end']:.0f} MiB at the end)",
        f"  API requests           {fmt_verbs(ready['requests_by_verb'])} "
        f"(total {sum(ready['requests_by_verb'].values())}; non-2xx: {fmt_verbs(ready['non_2xx'])})",
        f"  reconciles             {ready['reconciles']} ({ready['reconcile_seconds_total']:.1f} s in reconcile; "
        f"mean queue wait {(ready['queue_wait_seconds_mean'] or 0):.2f} s)",
        f"  control plane CPU      {fmt_cpu(ready['control_plane_cpu_seconds'])}",
        f"  load                   {ready['load_before']} -> {ready['load_after']}",
        f"  pod history (watch)    at most {history.get('max_live_pods_of_one_ray', '?')} live pods of one Ray "
        f"(desired {PODS_PER_RAY}); Rays ever above desired: {len(history.get('rays_above_desired', []))}",
        "  operator's requests by verb and resource:",
        *fmt_writes(ready.get("operator_requests_by_resource") or {}, n),
        f"  API writes caused, all clients (leases and the benchmark's POST {PLURAL} left out): "
        f"{ready.get('writes_per_ray', float('nan')):.1f} per Ray",
        *fmt_writes(ready.get("apiserver_writes_by_resource") or {}, n),
        f"settle (all SuccessfulLaunch) {op['settle']['seconds_after_ready']:.1f} s later: "
        f"{fmt_verbs(op['settle']['requests_by_verb'])}, {op['settle']['reconciles']} reconciles",
        f"  API writes caused from the first create to all launched, all clients: "
        f"{op['settle'].get('writes_per_ray_from_create', float('nan')):.1f} per Ray",
        *fmt_writes(op["settle"].get("apiserver_writes_by_resource_from_create") or {}, n),
        f"idle {op['idle']['seconds']:.0f} s: writes {op['idle']['writes']} ({fmt_verbs(op['idle']['requests_by_verb'])}), "
        f"{op['idle']['reconciles']} reconciles, operator CPU {op['idle']['operator_cpu_seconds']:.2f} s "
        f"({100 * op['idle']['operator_cpu_seconds'] / max(op['idle']['seconds'], 1e-9):.2f}% of one core)",
        f"cleanup: namespaces gone after {op['cleanup_seconds'] or float('nan'):.0f} s",
    ]
    for base in results.get("baselines") or []:
        ratio = ready["wall_seconds"] / base["wall_seconds"]
        lines += [
            "",
            f"baseline (bare client, {base['threads']} thread(s), {base['pods']} pods = {base['pods_per_ray']} per Ray):",
            f"  creates took           {base['creates_seconds']:.1f} s ({base['create_rate_per_second']:.0f} pods/s)",
            f"  wall time to all Ready {base['wall_seconds']:.1f} s ({base['pods_ready']}/{base['pods']} Ready)",
            f"  per cluster's pods     {fmt_p(base['per_cluster_seconds'])}",
            f"  per pod                {fmt_p(base['per_pod_seconds'])}",
            f"  control plane CPU      {fmt_cpu(base['control_plane_cpu_seconds'])}",
            f"  load                   {base['load_before']} -> {base['load_after']}",
            f"  API writes caused      {base.get('writes_per_ray', float('nan')):.1f} per Ray",
            *fmt_writes(base.get("apiserver_writes_by_resource") or {}, n),
            f"operator / baseline ({base['threads']} thread(s)) wall time: {ratio:.2f}x",
        ]
    return "\n".join(lines)


def fmt_cpu(cpu: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.1f} s" for k, v in cpu.items()) or "n/a"


def write_results(results: dict[str, Any], out_dir: Path, also: Path | None,
                  render: Callable[[dict[str, Any]], str]) -> None:
    """results.json in the run's folder (and in `also`), then the report."""
    text = json.dumps(results, indent=2)
    (out_dir / "results.json").write_text(text)
    if also:
        also.write_text(text)
    print(render(results))
    print(f"(results: {out_dir / 'results.json'}; operator log: {out_dir / 'operator.log'})")


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rays", type=int, default=100)
    parser.add_argument("--namespaces", type=int, default=10)
    parser.add_argument("--all-namespaces", action="store_true",
                        help="the operator watches every namespace (one watch per kind) instead of the K benchmark "
                             "namespaces (K watches per kind)")
    parser.add_argument("--kubeconfig", default=None, help="reuse this control plane (default: bring one up)")
    parser.add_argument("--cluster-dir", type=Path, default=Path("/tmp/rayop-bench"),
                        help="state dir of the control plane brought up (default /tmp/rayop-bench)")
    parser.add_argument("--nodes", type=int, default=16,
                        help="Nodes of the control plane brought up (default 16: the node agent has a /24 of pod "
                             "IPs per Node)")
    parser.add_argument("--keep-cluster", action="store_true", help="leave the control plane up at the end")
    parser.add_argument("--kube-api-qps", type=float, default=200.0, help="the operator's (default 200)")
    parser.add_argument("--kube-api-burst", type=int, default=400, help="the operator's (default 400)")
    parser.add_argument("--workers", type=int, default=4, help="the operator's concurrent reconciles (default 4)")
    parser.add_argument("--create-threads", type=int, default=8, help="threads creating the Rays (default 8)")
    parser.add_argument("--baseline-threads", default="1,4",
                        help="a baseline run per comma-separated thread count (default 1,4: single-threaded, then "
                             "as many threads as the operator's default workers)")
    parser.add_argument("--operator-defaults", action="store_true",
                        help="run the operator with its own defaults (no --kube-api-qps/--kube-api-burst/--workers)")
    parser.add_argument("--baseline-pods-per-ray", type=int, default=4, choices=(4, 5))
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait for all Ready")
    parser.add_argument("--stall-seconds", type=float, default=180.0,
                        help="give up waiting when nothing became Ready for this long (default 180)")
    parser.add_argument("--settle-timeout", type=float, default=300.0)
    parser.add_argument("--cleanup-timeout", type=float, default=900.0)
    parser.add_argument("--py-spy", default=None, help="path of a py-spy binary: profile the operator phase")
    parser.add_argument("--out-dir", type=Path, default=None,
                        help="logs, profile and results (default /tmp/rayop-bench-results/<run>)")
    parser.add_argument("--pid", action="append", default=[], metavar="NAME=PID",
                        help="also account the CPU seconds of this process (e.g. a node agent started by hand)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args()
    # SIGTERM (and SIGINT, which a shell's background job ignores) end the run through the clean-up path.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)

    run = f"{int(time.time()) % 10**6:06d}"
    out_dir = args.out_dir or Path("/tmp/rayop-bench-results") / run
    out_dir.mkdir(parents=True, exist_ok=True)
    plane = ControlPlane(args.kubeconfig, args.cluster_dir, args.nodes, args.keep_cluster)
    for spec in args.pid:
        name, _, pid = spec.partition("=")
        plane.pids[name] = int(pid)
    kube = KubeClient.load(plane.kubeconfig, qps=0)
    try:
        install_crd(kube)
        version = kube.get("/version")
        results: dict[str, Any] = {
            "run": run, "rays": args.rays, "namespaces": args.namespaces, "all_namespaces": args.all_namespaces,
            "workers": None if args.operator_defaults else args.workers,
            "kube_api_qps": None if args.operator_defaults else args.kube_api_qps,
            "kube_api_burst": None if args.operator_defaults else args.kube_api_burst,
            "operator_defaults": args.operator_defaults,
            "kubernetes": version.get("gitVersion"), "python": sys.version.split()[0], "cpus": os.cpu_count(),
            "nodes": len(kube.get("/api/v1/nodes")["items"]), "command": " ".join(sys.argv),
            "out_dir": str(out_dir),
        }
        results["operator_phase"] = operator_phase(args, plane, kube, run, out_dir)
        if not args.no_baseline:
            results["baselines"] = [baseline_phase(args, plane, kube, run, int(n))
                                    for n in str(args.baseline_threads).split(",") if n.strip()]
    finally:
        kube.close()
        plane.down()
    write_results(results, out_dir, args.json, report)


if __name__ == "__main__":
    main()
