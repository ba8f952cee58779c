"""`kubectl ray`: a kubectl plugin for the operator's `Ray` and `RayJob` kinds.

Installed with the package as the console script `kubectl-ray`; a `kubectl` that finds it on `PATH` runs it for
`kubectl ray ...` (docs/kubectl-ray.md). Commands: `get [cluster] [NAME]`, `create cluster NAME`, `scale NAME`,
`logs NAME`, `job submit|logs|stop|get`.

Guarantees:
- Flags as kubectl has them: `--kubeconfig`, `--context`, `-n/--namespace` (default: the namespace of the
  kubeconfig's context, else `default`), anywhere after the command; `-A/--all-namespaces` where a list makes
  sense.
- A user error (a missing Ray, no API server, a bad flag, a value the API server refuses) prints `error: ...` with
  what to do and exits non-zero (1; 2 for bad usage); never a traceback.
- The pure parts (the manifests `create cluster` and `job submit` build, the patch `scale` sends, the tables, the
  working-dir archive) are functions without I/O, unit-tested in tests/unit/test_kubectl_ray.py; everything that
  talks to Kubernetes goes through `rayop.runtime.kube.KubeClient`, and `logs` runs `kubectl logs`.
- Ray's dashboard (alive nodes, job logs, working-dir upload) is reached through the API server's pod proxy
  (`pods/<head>:8265/proxy`), so no port-forward and no network path to the pods is needed, only RBAC for
  `pods/proxy`; a dashboard that does not answer within a short timeout is shown as `-` (get) or named in the error.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import secrets
import shlex
import shutil
import string
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NoReturn

import urllib3
import yaml

from rayop.api import rayjob as rj
from rayop.api.convert import effective_cluster
from rayop.api.model import ConfigurationError
from rayop.api.quantity import parse_quantity
from rayop.api.types import (
    API_VERSION,
    CONDITION_READY,
    DASHBOARD_PORT,
    DEFAULT_WORKER_GROUP,
    DNS_1035_LABEL,
    DNS_LABEL,
    GROUP,
    KIND,
    MAX_NAME_LENGTH,
    MAX_NAME_PLUS_GROUP_LENGTH,
    MODE_DISABLED,
    PLURAL,
    VERSION,
)
from rayop.defaults import DEFAULT_RAY_IMAGE, Options
from rayop.objects import (HEAD_CONTAINER, LABEL_CLUSTER, LABEL_ROLE, ROLE_HEAD, ROLE_WORKER, WORKER_CONTAINER,
                           condition, condition_true, parse_time)
from rayop.runtime.kube import CONTENT_JSON_PATCH, ApiError, KubeClient

PROG = "kubectl ray"
JSON = dict[str, Any]

RAYS = f"{PLURAL}.{GROUP}"
RAYJOBS = f"{rj.PLURAL}.{GROUP}"
# The label `job submit` puts on (or finds on) the `Ray` it runs on, so the RayJob's clusterSelector picks exactly
# that Ray: the same key and value its pods carry.
CLUSTER_LABEL = LABEL_CLUSTER
# How long `get` waits for a head's dashboard (through the API server) before it shows `-`.
NODES_TIMEOUT = 2.0
# Timeout of the dashboard requests of `job submit` and `job logs`.
DASHBOARD_TIMEOUT = 15.0
# How long `job submit --wait` waits for a K8sJob-mode submitter to finish printing before it shows its log.
SUBMITTER_WAIT = 60.0
# The largest working-dir archive `job submit` uploads (Ray's own limit is 512 MiB; past 100 MiB a remote URI is
# the better way).
MAX_PACKAGE_BYTES = 100 * 1024 * 1024
# Folders never packed into a working-dir archive.
SKIPPED_DIRS = frozenset({".git", "__pycache__", ".venv", ".mypy_cache", ".pytest_cache"})
NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class UserError(Exception):
    """A problem the user can fix; printed as `error: <message>` with exit code `code`."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.message = message
        self.code = code


# -- pure helpers ---------------------------------------------------------------------------------------------------


def rays_path(namespace: str | None, name: str | None = None) -> str:
    base = f"/apis/{GROUP}/{VERSION}" + (f"/namespaces/{namespace}" if namespace else "") + f"/{PLURAL}"
    return f"{base}/{name}" if name else base


def rayjobs_path(namespace: str | None, name: str | None = None) -> str:
    base = f"/apis/{GROUP}/{VERSION}" + (f"/namespaces/{namespace}" if namespace else "") + f"/{rj.PLURAL}"
    return f"{base}/{name}" if name else base


def pods_path(namespace: str | None) -> str:
    return f"/api/v1/namespaces/{namespace}/pods" if namespace else "/api/v1/pods"


def dashboard_path(namespace: str, pod: str, path: str) -> str:
    """A path on Ray's dashboard of the head pod `pod`, through the API server's pod proxy."""
    return f"/api/v1/namespaces/{namespace}/pods/{pod}:{DASHBOARD_PORT}/proxy{path}"


def human_age(seconds: float) -> str:
    """A duration the way kubectl prints ages: 45s, 3m20s, 25m, 5h12m, 20h, 3d4h, 12d, 2y."""
    s = max(0, int(seconds))
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        return f"{minutes}m{s % 60}s" if s % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    days = hours // 24
    if days < 8:
        return f"{days}d{hours % 24}h" if hours % 24 else f"{days}d"
    if days < 365 * 2:
        return f"{days}d"
    return f"{days // 365}y"


def age_of(value: object, now: datetime) -> str:
    when = parse_time(value)
    return human_age((now - when).total_seconds()) if when else "-"


def format_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Columns left-aligned, three spaces apart, as `kubectl get` prints them."""
    table = [list(header)] + [list(r) for r in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    lines = ["   ".join(cell.ljust(widths[i]) for i, cell in enumerate(r)).rstrip() for r in table]
    return "\n".join(lines) + "\n"


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def condition_status(obj: Mapping[str, Any], kind: str) -> str:
    c = condition(obj, kind)
    return str((c or {}).get("status") or "Unknown")


def pod_state(pod: Mapping[str, Any] | None) -> str:
    """Running (Ready), Running/NotReady, Pending, Terminating, Failed ... of a head pod; `-` without one."""
    if not pod:
        return "-"
    if _mapping(pod.get("metadata")).get("deletionTimestamp"):
        return "Terminating"
    status = _mapping(pod.get("status"))
    phase = str(status.get("phase") or "Unknown")
    for cs in status.get("containerStatuses") or ():
        waiting = _mapping(_mapping(_mapping(cs).get("state")).get("waiting"))
        if waiting.get("reason") in ("CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull",
                                     "CreateContainerConfigError"):
            return str(waiting["reason"])
    if phase == "Running" and not condition_true(pod, "Ready"):
        return "Running/NotReady"
    return phase


def key_of(obj: Mapping[str, Any]) -> tuple[str, str]:
    meta = _mapping(obj.get("metadata"))
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


def head_pods_by_cluster(pods: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str], Mapping[str, Any]]:
    """The head pod of each cluster (by namespace and Ray name): the live one when there are several."""
    out: dict[tuple[str, str], Mapping[str, Any]] = {}
    for pod in pods:
        meta = _mapping(pod.get("metadata"))
        labels = _mapping(meta.get("labels"))
        if labels.get(LABEL_ROLE) != ROLE_HEAD or not labels.get(LABEL_CLUSTER):
            continue
        key = (str(meta.get("namespace") or ""), str(labels[LABEL_CLUSTER]))
        current = out.get(key)
        if current is None or (_mapping(current.get("metadata")).get("deletionTimestamp")
                               and not meta.get("deletionTimestamp")):
            out[key] = pod
    return out


RAY_HEADER = ("NAME", "DESIRED WORKERS", "READY WORKERS", "HEAD POD", "HEAD STATE", "READY", "RAY NODES", "AGE")


def ray_rows(rays: Iterable[Mapping[str, Any]], heads: Mapping[tuple[str, str], Mapping[str, Any]],
             nodes: Mapping[tuple[str, str], int | None], now: datetime, all_namespaces: bool) -> list[list[str]]:
    """One table row per Ray: desired and ready workers, its head pod and that pod's state, the Ready condition,
    the Ray nodes its dashboard reports alive (`-` when unknown) and its age."""
    rows = []
    for ray in rays:
        key = key_of(ray)
        status = _mapping(ray.get("status"))
        head = heads.get(key)
        head_name = str(_mapping(head.get("metadata")).get("name")) if head else (status.get("headPodName") or "-")
        desired = status.get("desiredWorkers")
        ready = _mapping(status.get("worker")).get("readyReplicas")
        alive = nodes.get(key)
        row = [key[1], "-" if desired is None else str(desired), str(ready or 0), str(head_name), pod_state(head),
               condition_status(ray, CONDITION_READY), "-" if alive is None else str(alive),
               age_of(_mapping(ray.get("metadata")).get("creationTimestamp"), now)]
        rows.append(([key[0]] if all_namespaces else []) + row)
    return rows


RAYJOB_HEADER = ("NAME", "JOB STATUS", "DEPLOYMENT STATUS", "CLUSTER", "MODE", "START", "END", "AGE")


def rayjob_rows(jobs: Iterable[Mapping[str, Any]], now: datetime, all_namespaces: bool) -> list[list[str]]:
    rows = []
    for job in jobs:
        key = key_of(job)
        status = _mapping(job.get("status"))
        spec = _mapping(job.get("spec"))
        row = [key[1], str(status.get("jobStatus") or "-"), str(status.get("jobDeploymentStatus") or "-"),
               str(status.get("rayClusterName") or "-"), str(spec.get("submissionMode") or rj.SUBMISSION_HTTP),
               age_of(status.get("startTime"), now), age_of(status.get("endTime"), now),
               age_of(_mapping(job.get("metadata")).get("creationTimestamp"), now)]
        rows.append(([key[0]] if all_namespaces else []) + row)
    return rows


def alive_nodes(answer: object) -> int | None:
    """Alive Ray nodes in the dashboard's `/nodes?view=summary` answer; None when it is not that answer."""
    summary = _mapping(_mapping(answer).get("data")).get("summary")
    if not isinstance(summary, list):
        return None
    return sum(1 for n in summary if _mapping(_mapping(n).get("raylet")).get("state") == "ALIVE")


def check_quantity(flag: str, value: str | None) -> None:
    if value is None:
        return
    try:
        if parse_quantity(value) <= 0:
            raise ValueError
    except ValueError:
        raise UserError(f"{flag} {value!r} is not a positive Kubernetes quantity (e.g. 2, 500m, 4Gi)",
                        code=2) from None


def check_cluster_name(name: str, group: str = DEFAULT_WORKER_GROUP) -> None:
    if not re.match(DNS_LABEL, name) or len(name) > MAX_NAME_LENGTH:
        raise UserError(f"the name {name!r} must be a DNS label (lower-case letters, digits and '-', starting and "
                        f"ending with a letter or digit) of at most {MAX_NAME_LENGTH} characters", code=2)
    if not re.match(DNS_LABEL, group) or group == ROLE_HEAD:
        raise UserError(f"the worker group {group!r} must be a DNS label other than 'head'", code=2)
    if len(name) + len(group) > MAX_NAME_PLUS_GROUP_LENGTH:
        raise UserError(f"the name and the worker group together may have at most {MAX_NAME_PLUS_GROUP_LENGTH} "
                        f"characters (pods are named <name>-<group>-<5 characters>)", code=2)


def _container(name: str, cpu: str, memory: str) -> JSON:
    return {"name": name, "resources": {"requests": {"cpu": cpu, "memory": memory},
                                        "limits": {"cpu": cpu, "memory": memory}}}


def cluster_manifest(name: str, namespace: str, workers: int, *, image: str | None = None,
                     head_cpu: str | None = None, head_memory: str | None = None, worker_cpu: str | None = None,
                     worker_memory: str | None = None, group: str | None = None) -> JSON:
    """A Kubernetes-style `Ray` of a head and `workers` workers of a fixed size (no autoscaler, so `scale` can
    resize it), each pod's CPU and memory as given, else the operator's defaults. With `group` (other than
    `worker`) the workers form one named group of `spec.workerGroups`."""
    group = group or DEFAULT_WORKER_GROUP
    check_cluster_name(name, group)
    if workers < 0:
        raise UserError("--workers must not be negative", code=2)
    for flag, value in (("--head-cpu", head_cpu), ("--head-memory", head_memory), ("--worker-cpu", worker_cpu),
                        ("--worker-memory", worker_memory)):
        check_quantity(flag, value)
    d = Options()
    head = _container(HEAD_CONTAINER, head_cpu or d.head_resources["limits"]["cpu"],
                      head_memory or d.head_resources["limits"]["memory"])
    worker = _container(WORKER_CONTAINER, worker_cpu or d.worker_resources["limits"]["cpu"],
                        worker_memory or d.worker_resources["limits"]["memory"])
    spec: JSON = {"autoScalingMode": MODE_DISABLED, "image": image or DEFAULT_RAY_IMAGE,
                  "head": {"spec": {"containers": [head]}}}
    if group == DEFAULT_WORKER_GROUP:
        spec.update(minWorkers=0, maxWorkers=workers, initialWorkers=workers,
                    worker={"spec": {"containers": [worker]}})
    else:
        spec["workerGroups"] = [{"name": group, "minWorkers": 0, "maxWorkers": workers, "initialWorkers": workers,
                                 "template": {"spec": {"containers": [worker]}}}]
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": name, "namespace": namespace},
            "spec": spec}


@dataclass(frozen=True)
class ScalePlan:
    """What `scale` sends: a JSON patch (`ops`), and what it means in words."""

    ops: list[JSON]
    group: str
    workers: int
    summary: str


def apply_json_patch(obj: Mapping[str, Any], ops: Sequence[Mapping[str, Any]]) -> JSON:
    """The `add`/`test` operations of a JSON patch (RFC 6902) applied to a copy of `obj` (enough to check a
    ScalePlan's outcome before sending it)."""
    out: JSON = json.loads(json.dumps(obj))
    for op in ops:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in str(op["path"]).split("/")[1:]]
        target: Any = out
        for p in parts[:-1]:
            target = target[int(p)] if isinstance(target, list) else target[p]
        last = parts[-1]
        if op["op"] == "add":
            if isinstance(target, list):
                target.insert(len(target) if last == "-" else int(last), op["value"])
            else:
                target[last] = op["value"]
        elif op["op"] == "test":
            current = target[int(last)] if isinstance(target, list) else target.get(last)
            if current != op["value"]:
                raise ValueError(f"test failed at {op['path']}")
        else:
            raise ValueError(f"unsupported op {op['op']}")
    return out


def scale_plan(ray: Mapping[str, Any], workers: int, group: str | None = None) -> ScalePlan:
    """The patch that makes the Ray's worker group `group` run `workers` pods, for whichever form the Ray has.

    A fixed-size group (no autoscaler) is resized through `spec.desiredWorkers[group]`; its bounds are widened
    to include the new size (minWorkers lowered, maxWorkers raised) when the Ray is Kubernetes-style, so the
    count is not clamped. When that would switch the autoscaler on (a group whose bounds are equal only because
    the size is fixed), the bounds are both set to the new size instead. Refused, saying why and what to do: an
    autoscaled Ray (the autoscaler owns desiredWorkers), an unknown group, a configuration-form Ray asked for a
    size outside the bounds its configuration sets."""
    name = key_of(ray)[1]
    if workers < 0:
        raise UserError("--workers must not be negative", code=2)
    try:
        conversion = effective_cluster(ray)
    except ConfigurationError as e:
        raise UserError(f"Ray {name} has an invalid spec ({e.describe()}); fix it before scaling") from None
    model = conversion.cluster
    names = [g.name for g in model.worker_groups]
    if group is None:
        if len(names) != 1:
            raise UserError(f"Ray {name} has {len(names)} worker groups ({', '.join(names) or 'none'}); name one "
                            "with --group", code=2)
        group = names[0]
    current = model.group(group)
    if current is None:
        raise UserError(f"Ray {name} has no worker group {group!r}; its groups: {', '.join(names) or 'none'}")
    spec = _mapping(ray.get("spec"))
    mode = spec.get("autoScalingMode") or "default"
    if model.autoscaling.enabled:
        raise UserError(
            f"Ray {name} is autoscaled (autoScalingMode {mode}): Ray's autoscaler owns its worker counts "
            f"(spec.desiredWorkers) and would undo a scale. Change its bounds instead, e.g. kubectl patch ray {name} "
            "--type merge -p '{\"spec\":{\"minWorkers\":N,\"maxWorkers\":M}}' (per group for workerGroups), or set "
            "autoScalingMode: disabled to size it by hand")
    ops: list[JSON] = []
    if "desiredWorkers" in spec:
        ops.append({"op": "add", "path": f"/spec/desiredWorkers/{group}", "value": workers})
    else:
        ops.append({"op": "add", "path": "/spec/desiredWorkers", "value": {group: workers}})
    form = conversion.form
    if form != "structured":
        if not current.min_workers <= workers <= current.max_workers:
            raise UserError(
                f"Ray {name} is configured with spec.configuration ({form} form): scale sets spec.desiredWorkers "
                f"within the bounds the configuration gives, and {workers} is outside [{current.min_workers}, "
                f"{current.max_workers}] for group {group}; change min_workers/max_workers in spec.configuration "
                "(kubectl edit ray) to go beyond them")
        return ScalePlan(ops, group, workers, f"desiredWorkers[{group}] = {workers}")
    if spec.get("workerGroups"):
        index = next(i for i, g in enumerate(spec["workerGroups"]) if _mapping(g).get("name") == group)
        base = f"/spec/workerGroups/{index}"
        ops.insert(0, {"op": "test", "path": f"{base}/name", "value": group})
    else:
        base = "/spec"
    summary = [f"desiredWorkers[{group}] = {workers}"]
    bounds: list[tuple[str, int]] = []
    if workers > current.max_workers:
        bounds.append(("maxWorkers", workers))
    if workers < current.min_workers:
        bounds.append(("minWorkers", workers))
    candidate = ops + [{"op": "add", "path": f"{base}/{k}", "value": v} for k, v in bounds]
    if effective_cluster(apply_json_patch(ray, candidate)).cluster.autoscaling.enabled:
        # Widening the bounds would start the autoscaler (its mode is not `disabled`): pin the group instead.
        bounds = [("minWorkers", workers), ("maxWorkers", workers)]
        candidate = ops + [{"op": "add", "path": f"{base}/{k}", "value": v} for k, v in bounds]
    summary += [f"{k} = {v}" for k, v in bounds]
    after = effective_cluster(apply_json_patch(ray, candidate)).cluster
    grown = after.group(group)
    if after.autoscaling.enabled or grown is None or grown.desired_workers != workers:  # pragma: no cover
        raise UserError(f"cannot scale Ray {name}'s group {group} to {workers} without changing its autoscaling")
    return ScalePlan(candidate, group, workers, ", ".join(summary))


def entrypoint_of(words: Sequence[str]) -> str:
    """The RayJob's entrypoint from the words after `--`: one word is taken as the shell command it is
    (`-- 'python a.py && echo done'`), several are quoted and joined (`-- python -c 'print(1)'`)."""
    words = [w for w in words]
    if words and words[0] == "--":
        words = words[1:]
    if not words or not "".join(words).strip():
        raise UserError("give the program to run after --, e.g. kubectl ray job submit --cluster C -- python "
                        "my_job.py", code=2)
    return words[0] if len(words) == 1 else shlex.join(words)


def check_job_name(name: str) -> None:
    if not re.match(DNS_1035_LABEL, name) or len(name) > rj.MAX_NAME_LENGTH:
        raise UserError(f"the job name {name!r} must be a DNS-1035 label (lower-case letters, digits and '-', "
                        f"starting with a letter) of at most {rj.MAX_NAME_LENGTH} characters", code=2)


def generated_job_name(rand: Callable[[int], str] | None = None) -> str:
    pick = rand or (lambda n: "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(n)))
    return f"rayjob-{pick(6)}"


def rayjob_manifest(name: str, namespace: str, cluster: str, entrypoint: str, *,
                    runtime_env: Mapping[str, Any] | None = None, submission_mode: str = rj.SUBMISSION_HTTP,
                    entrypoint_num_cpus: float | None = None, entrypoint_num_gpus: float | None = None) -> JSON:
    """A RayJob that runs `entrypoint` on the existing Ray `cluster`, picked by the label `ray.k8s.io/cluster`
    (which `job submit` makes sure that Ray, and only it, carries)."""
    check_job_name(name)
    spec: JSON = {"entrypoint": entrypoint, "clusterSelector": {CLUSTER_LABEL: cluster},
                  "submissionMode": submission_mode}
    if runtime_env:
        spec["runtimeEnv"] = dict(runtime_env)
    if entrypoint_num_cpus is not None:
        spec["entrypointNumCpus"] = entrypoint_num_cpus
    if entrypoint_num_gpus is not None:
        spec["entrypointNumGpus"] = entrypoint_num_gpus
    return {"apiVersion": API_VERSION, "kind": rj.KIND, "metadata": {"name": name, "namespace": namespace},
            "spec": spec}


def is_uri(value: str) -> bool:
    return bool(re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", value))


def package_directory(directory: Path) -> bytes:
    """A zip of the directory's files (paths relative to it, as Ray unpacks a working_dir), deterministic: same
    files and contents, same bytes (sorted, fixed timestamps). Skips version-control and cache folders
    (SKIPPED_DIRS) and symlinks that leave the directory."""
    if not directory.is_dir():
        raise UserError(f"--working-dir {directory}: not a directory")
    root = directory.resolve()
    buffer = io.BytesIO()
    total = 0
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if d not in SKIPPED_DIRS)
            for filename in sorted(filenames):
                path = Path(dirpath) / filename
                real = path.resolve()
                if not real.is_file() or (real != path and root not in real.parents):
                    continue
                data = real.read_bytes()
                total += len(data)
                if total > MAX_PACKAGE_BYTES:
                    raise UserError(f"--working-dir {directory} holds more than {MAX_PACKAGE_BYTES >> 20} MiB; "
                                    "upload it somewhere Ray can fetch it (s3://, gs://, https://...zip) and pass "
                                    "that URI as --working-dir")
                info = zipfile.ZipInfo(path.relative_to(root).as_posix(), date_time=(1980, 1, 1, 0, 0, 0))
                info.external_attr = (0o755 if os.access(real, os.X_OK) else 0o644) << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, data)
    return buffer.getvalue()


def package_uri(data: bytes) -> str:
    """The content-addressed GCS URI a working-dir archive is uploaded to (Ray's `_ray_pkg_` naming)."""
    return f"gcs://_ray_pkg_{hashlib.sha256(data).hexdigest()[:32]}.zip"


# -- the command line -------------------------------------------------------------------------------------------


def _add_connection(p: argparse.ArgumentParser, top: bool) -> None:
    default: Any = None if top else argparse.SUPPRESS
    g = p.add_argument_group("connection (as kubectl)")
    g.add_argument("--kubeconfig", default=default, help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config)")
    g.add_argument("--context", default=default, help="kubeconfig context (default: the current one)")
    g.add_argument("-n", "--namespace", default=default,
                   help="namespace (default: the context's namespace, else 'default')")


def _add_all_namespaces(p: argparse.ArgumentParser) -> None:
    p.add_argument("-A", "--all-namespaces", action="store_true", help="list across all namespaces")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def make_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Work with rayop's Ray clusters and RayJobs from kubectl.",
                     epilog="Examples: kubectl ray get; kubectl ray create cluster demo --workers 2; "
                            "kubectl ray job submit --cluster demo -- python -c 'import ray; ray.init()'")
    _add_connection(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def leaf(parent: Any, name: str, help: str, func: Callable[[argparse.Namespace], int],
             aliases: Sequence[str] = ()) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = parent.add_parser(name, help=help, description=help, aliases=list(aliases))
        _add_connection(p, top=False)
        p.set_defaults(func=func)
        return p

    p = leaf(sub, "get", "list Ray clusters (or show one): workers, head pod, Ready, alive Ray nodes, age", cmd_get)
    p.add_argument("names", nargs="*", metavar="[cluster] NAME",
                   help="a Ray's name; `get cluster NAME` is the same as `get NAME`")
    _add_all_namespaces(p)
    p.add_argument("--no-nodes", action="store_true",
                   help="do not ask the heads' dashboards for alive Ray nodes (the column shows -)")

    create = sub.add_parser("create", help="create a Ray cluster", description="create a Ray cluster")
    create_sub = create.add_subparsers(dest="what", metavar="WHAT", parser_class=_Parser)
    p = leaf(create_sub, "cluster", "create a Kubernetes-style Ray of a head and N workers of a fixed size",
             cmd_create_cluster)
    p.add_argument("name", metavar="NAME")
    p.add_argument("--workers", type=int, required=True, help="worker pods (fixed size; resize with scale)")
    p.add_argument("--image", default=None, help=f"Ray image (default {DEFAULT_RAY_IMAGE}, the operator's)")
    d = Options()
    p.add_argument("--head-cpu", default=None, help=f"head CPU (default {d.head_resources['limits']['cpu']})")
    p.add_argument("--head-memory", default=None,
                   help=f"head memory (default {d.head_resources['limits']['memory']})")
    p.add_argument("--worker-cpu", default=None,
                   help=f"CPU per worker (default {d.worker_resources['limits']['cpu']})")
    p.add_argument("--worker-memory", default=None,
                   help=f"memory per worker (default {d.worker_resources['limits']['memory']})")
    p.add_argument("--worker-group", default=None, metavar="G",
                   help="name the workers' group G (spec.workerGroups); default: the single `worker` group")
    p.add_argument("--dry-run", action="store_true", help="print the Ray's manifest instead of creating it")

    p = leaf(sub, "scale", "resize a worker group of a Ray that is not autoscaled", cmd_scale)
    p.add_argument("name", metavar="NAME")
    p.add_argument("--workers", type=int, required=True, help="the group's new number of worker pods")
    p.add_argument("--group", default=None, metavar="G", help="the worker group (needed when there are several)")
    p.add_argument("--dry-run", action="store_true", help="print the JSON patch instead of sending it")

    p = leaf(sub, "logs", "print (or follow) the logs of a Ray's head and worker pods (runs kubectl logs)",
             cmd_logs)
    p.add_argument("name", metavar="NAME")
    p.add_argument("--node-kind", choices=("head", "worker", "all"), default="all",
                   help="whose logs: head, worker or all (default)")
    p.add_argument("-f", "--follow", action="store_true", help="stream the logs")
    p.add_argument("--tail", type=int, default=-1, help="lines of each pod's log to show (default all)")
    p.add_argument("-c", "--container", default=None,
                   help="container (default: the pods' Ray container, the first of each pod)")
    p.epilog = "Flags after -- go to kubectl logs as they are, e.g. kubectl ray logs demo -- --since=10m --timestamps"

    job = sub.add_parser("job", help="submit and follow RayJobs", description="submit and follow RayJobs")
    job_sub = job.add_subparsers(dest="what", metavar="COMMAND", parser_class=_Parser)
    p = leaf(job_sub, "submit", "run a program on an existing Ray as a RayJob", cmd_job_submit)
    p.add_argument("--cluster", required=True, metavar="NAME", help="the Ray to run on (it must exist)")
    p.add_argument("--name", default=None, help="the RayJob's name (default rayjob-<6 random characters>)")
    p.add_argument("--working-dir", default=None, metavar="DIR|URI",
                   help="a local folder, uploaded to the Ray's GCS through its dashboard, or a URI Ray fetches "
                        "itself (s3://, gs://, https://...zip); the program runs in it")
    p.add_argument("--runtime-env-json", default=None, metavar="JSON",
                   help="Ray runtime environment as JSON (pip, env_vars, ...); --working-dir is merged in")
    p.add_argument("--submission-mode", choices=rj.SUBMISSION_MODES, default=rj.SUBMISSION_HTTP,
                   help="HTTP (default: the operator submits) or K8sJob (a submitter Job; its logs hold the "
                        "output)")
    p.add_argument("--entrypoint-num-cpus", type=float, default=None, help="CPUs reserved for the driver")
    p.add_argument("--entrypoint-num-gpus", type=float, default=None, help="GPUs reserved for the driver")
    p.add_argument("--wait", action="store_true",
                   help="wait until the job finished, then print its output; exit 1 when it did not succeed")
    p.add_argument("--timeout", type=float, default=0.0, metavar="SECONDS",
                   help="with --wait: give up after this long (exit 1; the job keeps running); 0: no limit")
    p.add_argument("--dry-run", action="store_true", help="print the RayJob's manifest; create and upload nothing")
    p.add_argument("entrypoint", nargs=argparse.REMAINDER, metavar="-- ENTRYPOINT...",
                   help="the program, after --")

    p = leaf(job_sub, "logs", "print (or follow) a RayJob's output", cmd_job_logs)
    p.add_argument("name", metavar="NAME")
    p.add_argument("-f", "--follow", action="store_true", help="follow until the job ends")

    p = leaf(job_sub, "stop", "stop a RayJob's Ray job (the RayJob is suspended and kept)", cmd_job_stop)
    p.add_argument("name", metavar="NAME")

    p = leaf(job_sub, "get", "list RayJobs (or show one)", cmd_job_get)
    p.add_argument("name", nargs="?", metavar="NAME")
    _add_all_namespaces(p)
    return parser


# -- connection -----------------------------------------------------------------------------------------------


@dataclass
class Session:
    kube: KubeClient
    namespace: str
    kubeconfig: str | None
    context: str | None

    def kubectl_flags(self) -> list[str]:
        flags = ["--namespace", self.namespace]
        if self.kubeconfig:
            flags += ["--kubeconfig", self.kubeconfig]
        if self.context:
            flags += ["--context", self.context]
        return flags


def context_namespace(kubeconfig: str | None, context: str | None) -> str:
    """The namespace of the kubeconfig's context (`context` or the current one), else `default`; in a pod without
    a kubeconfig, the pod's own namespace."""
    from kubernetes import config as k8s_config

    try:
        contexts, active = k8s_config.list_kube_config_contexts(config_file=kubeconfig)  # type: ignore[no-untyped-call]
    except Exception:
        if kubeconfig is None and NAMESPACE_FILE.exists():
            return NAMESPACE_FILE.read_text().strip() or "default"
        return "default"
    chosen = active if context is None else next((c for c in contexts if c.get("name") == context), None)
    return str(_mapping(_mapping(chosen).get("context")).get("namespace") or "default")


def connect(args: argparse.Namespace) -> Session:
    from kubernetes.config.config_exception import ConfigException

    kubeconfig = args.kubeconfig
    if kubeconfig and not Path(kubeconfig).is_file():
        raise UserError(f"--kubeconfig {kubeconfig}: no such file")
    try:
        kube = KubeClient.load(kubeconfig, args.context, user_agent="kubectl-ray")
    except ConfigException as e:
        raise UserError(f"cannot load the kubeconfig: {e}; pass --kubeconfig FILE or set KUBECONFIG") from None
    except OSError as e:
        raise UserError(f"cannot read the kubeconfig: {e}") from None
    namespace = args.namespace or context_namespace(kubeconfig, args.context)
    return Session(kube, namespace, kubeconfig, args.context)


def api_error(e: ApiError, what: str) -> UserError:
    if e.status in (401, 403):
        return UserError(f"{what}: the API server refused it ({e.status} {e.reason}): {e.message}")
    return UserError(f"{what}: {e.status} {e.reason}: {e.message}")


def get_ray(s: Session, name: str) -> JSON:
    try:
        ray: JSON = s.kube.get(rays_path(s.namespace, name))
        return ray
    except ApiError as e:
        if e.not_found:
            raise UserError(_missing_ray(s, name)) from None
        raise api_error(e, f"get Ray {name}") from None


def _missing_ray(s: Session, name: str) -> str:
    if not _served(s, rays_path(s.namespace)):
        return (f"the API server does not serve {RAYS}: install the CRD (kubectl apply -f manifests/crd.yaml) and "
                "run the operator")
    return f"no Ray named {name!r} in namespace {s.namespace} (kubectl ray get -n {s.namespace} lists them)"


def _served(s: Session, collection: str) -> bool:
    try:
        s.kube.get(collection, limit=1)
        return True
    except ApiError as e:
        if e.not_found:
            return False
        raise


def list_items(s: Session, path: str, what: str, **params: Any) -> list[JSON]:
    try:
        items: list[JSON] = s.kube.get(path, **params).get("items") or []
        return items
    except ApiError as e:
        if e.not_found and "/apis/" in path:
            crd = "manifests/crd.yaml" if what == RAYS else "manifests/crd-rayjob.yaml"
            raise UserError(f"the API server does not serve {what}: install the CRD (kubectl apply -f {crd}) and "
                            "run the operator") from None
        raise api_error(e, f"list {what}") from None


class DashboardUnavailable(Exception):
    pass


def dashboard_problem(e: Exception) -> str:
    """Why a dashboard request through the API server failed, with what to do when it is RBAC."""
    if isinstance(e, ApiError) and e.body.get("kind") == "Status" and e.status == 403:
        return f"the API server refused the proxy request: {e.message}; you need get on pods/proxy"
    if isinstance(e, ApiError):
        return f"the dashboard answered {e.status} {e.reason}: {e.message.strip()[:300]}"
    return f"the dashboard did not answer: {e}"


class Dashboard:
    """Ray's dashboard of a head pod, through the API server's pod proxy."""

    def __init__(self, kube: KubeClient, namespace: str, pod: str, timeout: float = DASHBOARD_TIMEOUT):
        self.kube = kube
        self.namespace = namespace
        self.pod = pod
        self.timeout = timeout

    def request(self, method: str, path: str, params: Mapping[str, Any] | None = None, body: Any = None,
                content_type: str | None = None) -> Any:
        try:
            return self.kube.request(method, dashboard_path(self.namespace, self.pod, path), params=params,
                                     body=body, content_type=content_type, timeout=self.timeout)
        except ApiError:
            raise
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as e:
            raise DashboardUnavailable(f"{method} {path} on {self.pod}:{DASHBOARD_PORT}: "
                                       f"{type(e).__name__}: {e}") from None


def head_pod_name(s: Session, ray: Mapping[str, Any]) -> str:
    name = key_of(ray)[1]
    pods = list_items(s, pods_path(s.namespace), "pods",
                      labelSelector=f"{LABEL_CLUSTER}={name},{LABEL_ROLE}={ROLE_HEAD}")
    head = head_pods_by_cluster(pods).get((s.namespace, name))
    if head is None or pod_state(head) not in ("Running", "Running/NotReady"):
        state = pod_state(head)
        raise UserError(f"Ray {name} has no running head pod (head: {state}); wait until kubectl ray get {name} "
                        "shows it Running")
    return str(head["metadata"]["name"])


# -- commands -------------------------------------------------------------------------------------------------


def cmd_get(args: argparse.Namespace) -> int:
    names = list(args.names)
    if names and names[0] in ("cluster", "clusters", "ray", "rays"):
        names = names[1:]
    if len(names) > 1:
        raise UserError("get takes at most one NAME", code=2)
    s = connect(args)
    namespace = None if args.all_namespaces else s.namespace
    if names:
        if args.all_namespaces:
            raise UserError("a NAME cannot be combined with --all-namespaces", code=2)
        rays = [get_ray(s, names[0])]
        pod_selector = f"{LABEL_ROLE}={ROLE_HEAD},{LABEL_CLUSTER}={names[0]}"
    else:
        rays = list_items(s, rays_path(namespace), RAYS)
        pod_selector = f"{LABEL_ROLE}={ROLE_HEAD}"
    rays.sort(key=key_of)
    if not rays:
        where = "any namespace" if namespace is None else f"namespace {namespace}"
        print(f"No Rays found in {where}.", file=sys.stderr)
        return 0
    heads = head_pods_by_cluster(list_items(s, pods_path(namespace), "pods", labelSelector=pod_selector))
    nodes: dict[tuple[str, str], int | None] = {}
    if not args.no_nodes:
        nodes = ask_alive_nodes(s.kube, heads)
    header = (("NAMESPACE",) if args.all_namespaces else ()) + RAY_HEADER
    sys.stdout.write(format_table(header, ray_rows(rays, heads, nodes, datetime.now(timezone.utc),
                                                   args.all_namespaces)))
    return 0


def ask_alive_nodes(kube: KubeClient, heads: Mapping[tuple[str, str], Mapping[str, Any]]) -> dict[
        tuple[str, str], int | None]:
    """Alive Ray nodes per cluster from each ready head's dashboard, asked at once with a short timeout."""
    ready = {k: str(p["metadata"]["name"]) for k, p in heads.items() if pod_state(p) == "Running"}

    def ask(key: tuple[str, str]) -> int | None:
        try:
            return alive_nodes(Dashboard(kube, key[0], ready[key], NODES_TIMEOUT).request(
                "GET", "/nodes", params={"view": "summary"}))
        except (ApiError, DashboardUnavailable):
            return None

    if not ready:
        return {}
    with ThreadPoolExecutor(max_workers=min(8, len(ready))) as pool:
        return dict(zip(ready, pool.map(ask, list(ready))))


def cmd_create_cluster(args: argparse.Namespace) -> int:
    def manifest_in(namespace: str) -> JSON:
        return cluster_manifest(args.name, namespace, args.workers, image=args.image, head_cpu=args.head_cpu,
                                head_memory=args.head_memory, worker_cpu=args.worker_cpu,
                                worker_memory=args.worker_memory, group=args.worker_group)

    if args.dry_run:
        namespace = args.namespace or context_namespace(args.kubeconfig, args.context)
        sys.stdout.write(yaml.safe_dump(manifest_in(namespace), sort_keys=False))
        return 0
    manifest_in("default")  # the flags are checked before connecting: a bad one is reported without a cluster
    s = connect(args)
    manifest = manifest_in(s.namespace)
    try:
        s.kube.create(rays_path(s.namespace), manifest)
    except ApiError as e:
        if e.already_exists:
            raise UserError(f"a Ray named {args.name!r} already exists in namespace {s.namespace}") from None
        if e.not_found:
            raise UserError(_missing_ray(s, args.name)) from None
        raise api_error(e, f"create Ray {args.name}") from None
    print(f"ray.{GROUP}/{args.name} created (namespace {s.namespace}; kubectl ray get {args.name} shows it)")
    return 0


def cmd_scale(args: argparse.Namespace) -> int:
    if args.workers < 0:
        raise UserError("--workers must not be negative", code=2)
    s = connect(args)
    ray = get_ray(s, args.name)
    plan = scale_plan(ray, args.workers, args.group)
    if args.dry_run:
        sys.stdout.write(json.dumps(plan.ops, indent=2) + "\n")
        return 0
    try:
        s.kube.patch(rays_path(s.namespace, args.name), plan.ops, content_type=CONTENT_JSON_PATCH)
    except ApiError as e:
        raise api_error(e, f"scale Ray {args.name}") from None
    print(f"ray.{GROUP}/{args.name} scaled: group {plan.group} to {plan.workers} workers ({plan.summary})")
    return 0


def find_kubectl() -> str:
    for candidate in (os.environ.get("KUBECTL"), shutil.which("kubectl"),
                      str(Path(sys.executable).with_name("kubectl"))):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise UserError("kubectl not found: put it on PATH (or name it in $KUBECTL)")


def run_kubectl(args: Sequence[str]) -> int:
    try:
        return subprocess.call([find_kubectl(), *args])
    except KeyboardInterrupt:
        return 130


def cmd_logs(args: argparse.Namespace) -> int:
    s = connect(args)
    get_ray(s, args.name)
    selector = f"{LABEL_CLUSTER}={args.name}"
    roles = (ROLE_HEAD, ROLE_WORKER) if args.node_kind == "all" else (args.node_kind,)
    selector += f",{LABEL_ROLE} in ({','.join(roles)})" if len(roles) > 1 else f",{LABEL_ROLE}={roles[0]}"
    pods = [p for p in list_items(s, pods_path(s.namespace), "pods", labelSelector=selector)
            if _mapping(p.get("status")).get("phase") != "Pending"]
    if not pods:
        raise UserError(f"Ray {args.name} has no {'' if args.node_kind == 'all' else args.node_kind + ' '}pods "
                        "that started yet (kubectl ray get shows its head)")
    flags = [*s.kubectl_flags(), "logs", "-l", selector, f"--tail={args.tail}", "--prefix",
             f"--max-log-requests={max(5, len(pods))}", "--ignore-errors"]
    if args.container:
        flags += ["-c", args.container]
    else:
        firsts = {str((_mapping(p.get("spec")).get("containers") or [{}])[0].get("name")) for p in pods}
        flags += ["-c", firsts.pop()] if len(firsts) == 1 else ["--all-containers"]
    if args.follow:
        flags.append("--follow")
    return run_kubectl(flags + list(args.kubectl_args))


def runtime_env_of(args: argparse.Namespace) -> JSON:
    env: JSON = {}
    if args.runtime_env_json:
        try:
            env = json.loads(args.runtime_env_json)
        except ValueError as e:
            raise UserError(f"--runtime-env-json is not JSON: {e}", code=2) from None
        if not isinstance(env, dict):
            raise UserError("--runtime-env-json must be a JSON object", code=2)
    return env


def ensure_cluster_label(s: Session, ray: Mapping[str, Any], dry_run: bool) -> None:
    """Make the Ray the only one in its namespace with `ray.k8s.io/cluster=<its name>`, the RayJob's selector."""
    name = key_of(ray)[1]
    others = [key_of(r)[1] for r in list_items(s, rays_path(s.namespace), RAYS,
                                                labelSelector=f"{CLUSTER_LABEL}={name}") if key_of(r)[1] != name]
    if others:
        raise UserError(f"the Rays {', '.join(others)} also carry the label {CLUSTER_LABEL}={name}, so a RayJob "
                        f"cannot select {name} alone; remove it from them (kubectl label ray "
                        f"{others[0]} {CLUSTER_LABEL}-)")
    if _mapping(_mapping(ray.get("metadata")).get("labels")).get(CLUSTER_LABEL) == name:
        return
    if dry_run:
        print(f"(dry run) would label ray/{name} {CLUSTER_LABEL}={name}", file=sys.stderr)
        return
    try:
        s.kube.patch(rays_path(s.namespace, name), {"metadata": {"labels": {CLUSTER_LABEL: name}}})
    except ApiError as e:
        raise api_error(e, f"label Ray {name} {CLUSTER_LABEL}={name}") from None


def upload_working_dir(s: Session, ray: Mapping[str, Any], directory: Path, dry_run: bool) -> str:
    data = package_directory(directory)
    uri = package_uri(data)
    if dry_run:
        print(f"(dry run) would upload {directory} ({len(data)} bytes zipped) as {uri}", file=sys.stderr)
        return uri
    name = key_of(ray)[1]
    pod = head_pod_name(s, ray)
    dash = Dashboard(s.kube, s.namespace, pod)
    path = "/api/packages/gcs/" + uri.removeprefix("gcs://")
    try:
        try:
            dash.request("GET", path)
            return uri  # Ray has this archive already (same contents)
        except ApiError as e:
            if not e.not_found:
                raise
        dash.request("PUT", path, body=data, content_type="application/octet-stream")
    except (ApiError, DashboardUnavailable) as e:
        raise UserError(f"cannot upload --working-dir {directory} to Ray {name}'s dashboard through the API server "
                        f"({dashboard_problem(e)}); the Ray must be Ready with its dashboard answering (kubectl ray "
                        f"get {name} shows RAY NODES), or pass a URI Ray can fetch (s3://, gs://, "
                        "https://...zip)") from None
    print(f"uploaded {directory} ({len(data)} bytes zipped) to Ray {name} as {uri}", file=sys.stderr)
    return uri


def cmd_job_submit(args: argparse.Namespace) -> int:
    entrypoint = entrypoint_of(args.entrypoint)
    name = args.name or generated_job_name()
    check_job_name(name)
    runtime_env = runtime_env_of(args)
    s = connect(args)
    ray = get_ray(s, args.cluster)
    if args.working_dir:
        if is_uri(args.working_dir):
            runtime_env["working_dir"] = args.working_dir
        else:
            runtime_env["working_dir"] = upload_working_dir(s, ray, Path(args.working_dir), args.dry_run)
    manifest = rayjob_manifest(name, s.namespace, args.cluster, entrypoint, runtime_env=runtime_env,
                               submission_mode=args.submission_mode, entrypoint_num_cpus=args.entrypoint_num_cpus,
                               entrypoint_num_gpus=args.entrypoint_num_gpus)
    ensure_cluster_label(s, ray, args.dry_run)
    if args.dry_run:
        sys.stdout.write(yaml.safe_dump(manifest, sort_keys=False))
        return 0
    try:
        s.kube.create(rayjobs_path(s.namespace), manifest)
    except ApiError as e:
        if e.already_exists:
            raise UserError(f"a RayJob named {name!r} already exists in namespace {s.namespace}; pick another "
                            "--name") from None
        if e.not_found:
            raise UserError(f"the API server does not serve {RAYJOBS}: install the CRD (kubectl apply -f "
                            "manifests/crd-rayjob.yaml) and restart the operator") from None
        raise api_error(e, f"create RayJob {name}") from None
    print(f"rayjob.{GROUP}/{name} created on Ray {args.cluster} (kubectl ray job logs {name} -f follows it)")
    if not args.wait:
        return 0
    job = wait_finished(s, name, args.timeout)
    if job is None:
        print(f"error: RayJob {name} did not finish within {args.timeout:g} s; it keeps running "
              f"(kubectl ray job get {name})", file=sys.stderr)
        return 1
    status = _mapping(job.get("status"))
    print_job_output(s, job)
    deploy = status.get("jobDeploymentStatus")
    print(f"RayJob {name}: {deploy} ({status.get('jobStatus') or '-'}): {status.get('message') or ''}".rstrip(": "),
          file=sys.stderr)
    return 0 if deploy == rj.DEPLOY_COMPLETE else 1


def wait_finished(s: Session, name: str, timeout: float) -> JSON | None:
    """Poll the RayJob until it finished (its status on stderr as it changes); None when `timeout` passed."""
    deadline = time.monotonic() + timeout if timeout > 0 else None
    last = None
    while True:
        try:
            job: JSON = s.kube.get(rayjobs_path(s.namespace, name))
        except ApiError as e:
            raise api_error(e, f"get RayJob {name}") from None
        status = _mapping(job.get("status"))
        now = (status.get("jobDeploymentStatus"), status.get("reason"))
        if now != last and now[0]:
            print(f"RayJob {name}: {now[0]} ({now[1]}): {status.get('message') or ''}", file=sys.stderr)
            last = now
        if status.get("jobDeploymentStatus") in rj.DEPLOY_FINISHED:
            return job
        if deadline is not None and time.monotonic() > deadline:
            return None
        time.sleep(1.0)


def get_rayjob(s: Session, name: str) -> JSON:
    try:
        job: JSON = s.kube.get(rayjobs_path(s.namespace, name))
        return job
    except ApiError as e:
        if e.not_found:
            if not _served(s, rayjobs_path(s.namespace)):
                raise UserError(f"the API server does not serve {RAYJOBS}: install the CRD (kubectl apply -f "
                                "manifests/crd-rayjob.yaml)") from None
            raise UserError(f"no RayJob named {name!r} in namespace {s.namespace} (kubectl ray job get lists "
                            "them)") from None
        raise api_error(e, f"get RayJob {name}") from None


def job_dashboard(s: Session, job: Mapping[str, Any]) -> tuple[Dashboard, str]:
    status = _mapping(job.get("status"))
    name = key_of(job)[1]
    cluster, submission = status.get("rayClusterName"), status.get("submissionId")
    if not cluster or not submission:
        raise UserError(f"RayJob {name} has not been submitted yet ({status.get('jobDeploymentStatus') or 'new'}: "
                        f"{status.get('message') or 'no status yet'})")
    ray = get_ray(s, str(cluster))
    return Dashboard(s.kube, s.namespace, head_pod_name(s, ray)), str(submission)


def fetch_job_logs(dash: Dashboard, submission: str) -> str | None:
    """The Ray job's logs so far; None when Ray does not know the job."""
    try:
        answer = dash.request("GET", f"/api/jobs/{submission}/logs")
    except ApiError as e:
        if e.not_found:
            return None
        raise
    return str(_mapping(answer).get("logs") or "")


def print_job_output(s: Session, job: Mapping[str, Any]) -> None:
    """The output of a finished job: the submitter Job's log (K8sJob) or the Ray job's logs (HTTP)."""
    spec, status = _mapping(job.get("spec")), _mapping(job.get("status"))
    if spec.get("submissionMode") == rj.SUBMISSION_K8S_JOB and status.get("submitterName"):
        # Ray may report the job finished before the submitter's `ray job logs --follow` printed its last lines.
        wait_submitter(s, str(status["submitterName"]))
        run_kubectl([*s.kubectl_flags(), "logs", f"job/{status['submitterName']}"])
        return
    try:
        dash, submission = job_dashboard(s, job)
        logs = fetch_job_logs(dash, submission)
    except (UserError, ApiError, DashboardUnavailable) as e:
        message = e.message if isinstance(e, UserError) else dashboard_problem(e)
        print(f"(the job's output could not be read: {message})", file=sys.stderr)
        return
    sys.stdout.write(logs or "")
    sys.stdout.flush()


def submitter_finished(job: Mapping[str, Any]) -> bool:
    """A Kubernetes Job's Complete or Failed condition is True."""
    return any(_mapping(c).get("type") in ("Complete", "Failed") and _mapping(c).get("status") == "True"
               for c in _mapping(job.get("status")).get("conditions") or ())


def wait_submitter(s: Session, name: str, timeout: float = SUBMITTER_WAIT) -> None:
    """Wait (at most `timeout` seconds) until the submitter Job finished, so its log holds the job's last lines."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if submitter_finished(s.kube.get(f"/apis/batch/v1/namespaces/{s.namespace}/jobs/{name}")):
                return
        except ApiError:
            return  # gone or not readable: print what kubectl logs can get
        time.sleep(0.5)


def cmd_job_logs(args: argparse.Namespace) -> int:
    s = connect(args)
    job = get_rayjob(s, args.name)
    spec, status = _mapping(job.get("spec")), _mapping(job.get("status"))
    if spec.get("submissionMode") == rj.SUBMISSION_K8S_JOB:
        submitter = status.get("submitterName")
        if not submitter:
            raise UserError(f"RayJob {args.name} has no submitter Job yet ({status.get('jobDeploymentStatus') or 'new'}"
                            f": {status.get('message') or 'no status yet'})")
        return run_kubectl([*s.kubectl_flags(), "logs", f"job/{submitter}", *(["--follow"] if args.follow else [])])
    if args.follow:
        return follow_job_logs(s, args.name)
    try:
        dash, submission = job_dashboard(s, job)
        logs = fetch_job_logs(dash, submission)
    except (ApiError, DashboardUnavailable) as e:
        raise UserError(f"cannot read RayJob {args.name}'s logs from its Ray's dashboard through the API server "
                        f"({dashboard_problem(e)})") from None
    if logs is None:
        raise UserError(f"Ray does not know RayJob {args.name}'s job {submission} (yet)")
    sys.stdout.write(logs)
    return 0


def follow_job_logs(s: Session, name: str, interval: float = 1.0) -> int:
    """Print the Ray job's logs as they grow until the RayJob finished (HTTP mode: Ray's REST API, polled)."""
    printed = ""
    while True:
        job = get_rayjob(s, name)
        finished = _mapping(job.get("status")).get("jobDeploymentStatus") in rj.DEPLOY_FINISHED
        logs: str | None = None
        try:
            dash, submission = job_dashboard(s, job)
            logs = fetch_job_logs(dash, submission)
        except UserError:
            if finished:
                raise
        except (ApiError, DashboardUnavailable) as e:
            if finished:
                raise UserError(f"cannot read RayJob {name}'s logs ({dashboard_problem(e)})") from None
        if logs is not None:
            if logs.startswith(printed):
                sys.stdout.write(logs[len(printed):])
            else:  # Ray's log view started over (a new attempt): print it whole
                sys.stdout.write(logs)
            sys.stdout.flush()
            printed = logs
        if finished:
            return 0
        time.sleep(interval)


def cmd_job_stop(args: argparse.Namespace) -> int:
    s = connect(args)
    job = get_rayjob(s, args.name)
    status = _mapping(job.get("status"))
    deploy = status.get("jobDeploymentStatus")
    if deploy in rj.DEPLOY_FINISHED:
        print(f"rayjob.{GROUP}/{args.name} already finished ({deploy}); nothing to stop")
        return 0
    if _mapping(job.get("spec")).get("suspend"):
        print(f"rayjob.{GROUP}/{args.name} is stopped already (suspended)")
        return 0
    try:
        s.kube.patch(rayjobs_path(s.namespace, args.name), {"spec": {"suspend": True}})
    except ApiError as e:
        raise api_error(e, f"stop RayJob {args.name}") from None
    print(f"rayjob.{GROUP}/{args.name} stopped: suspended, the operator stops its Ray job (kubectl delete rayjob "
          f"{args.name} removes it)")
    return 0


def cmd_job_get(args: argparse.Namespace) -> int:
    s = connect(args)
    if args.name:
        if args.all_namespaces:
            raise UserError("a NAME cannot be combined with --all-namespaces", code=2)
        jobs = [get_rayjob(s, args.name)]
    else:
        jobs = list_items(s, rayjobs_path(None if args.all_namespaces else s.namespace), RAYJOBS)
    jobs.sort(key=key_of)
    if not jobs:
        print(f"No RayJobs found in {'any namespace' if args.all_namespaces else 'namespace ' + s.namespace}.",
              file=sys.stderr)
        return 0
    header = (("NAMESPACE",) if args.all_namespaces else ()) + RAYJOB_HEADER
    sys.stdout.write(format_table(header, rayjob_rows(jobs, datetime.now(timezone.utc), args.all_namespaces)))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args, unknown = parser.parse_known_args(argv)
    func = getattr(args, "func", None)
    # `logs NAME -- FLAGS`: the flags after -- are kubectl logs' own (argparse leaves them unparsed).
    args.kubectl_args = []
    if unknown:
        if func is cmd_logs and unknown[0] == "--":
            args.kubectl_args = unknown[1:]
        else:
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(func(args))
    except UserError as e:
        print(f"error: {e.message}", file=sys.stderr)
        return e.code
    except ApiError as e:
        print(f"error: the API server answered {e.status} {e.reason}: {e.message}", file=sys.stderr)
        return 1
    except urllib3.exceptions.HTTPError as e:
        print(f"error: cannot reach the Kubernetes API server ({type(e).__name__}: {e}); check --kubeconfig, "
              "--context and that the cluster is up (kubectl cluster-info)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
