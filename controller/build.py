"""Pure builders: the effective cluster model (plus `Options`) in, the manifests of every child object out.

Guarantees:
- No I/O, no clock, no environment. The model and the `Ray` are never modified: a group's pod template is copied
  once per call (`_clone`, JSON values only) and only the copy is edited. Manifests are plain JSON dicts, ready to
  be sent to the API server; callers treat them as read-only.
- Declared Services (`provider.services`) keep their names; their selector is the configuration's plus the
  cluster's labels.
- Names and labels follow one contract: head Service `<name>-head`, ConfigMap `<name>-ray`, ServiceAccount/Role/
  RoleBinding `<name>-autoscaler`, pods `<name>-head-*` and `<name>-<group>-*` (generateName), launcher pods
  `<name>-launcher-<8 hex>` (one per launch and attempt). Every child carries `ray.k8s.io/cluster`,
  `ray.k8s.io/node-kind`, `ray.k8s.io/group`, `app.kubernetes.io/managed-by=rayop` and a controller
  ownerReference to the `Ray`; a user's template cannot override these labels. Pods also carry
  `ray.k8s.io/template-hash`.
- The template hash is a stable hash (sorted JSON) of what the user and the operator's options asked for — the
  group's template, image, ray start parameters, resources, setup commands and the options that shape its pods —
  not of the generated manifest: upgrading the operator's code never rolls running Ray pods by itself, and a change
  of counts (min/max/desired) or of autoscaler knobs never does either. It is computed once per group per call.
- The user's template is respected: containers, volumes, nodeSelector, tolerations, resources, probes,
  serviceAccountName and a user-given command are kept (in the configuration form the conversion has already
  replaced `ray up`'s keep-alive command and the accounts `ray up` would have created); the operator only adds what
  Ray needs (its command, ports,
  env, /dev/shm, probes where none are declared, the config mount) and fills an empty image from the cluster's.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from rayop.api.quantity import ceil_quantity
from rayop.api.model import ClusterModel, DeclaredService, GcsFaultTolerance, HeadGroup, RayResources, WorkerGroup
from rayop.api.types import API_VERSION, HEAD_GROUP, KIND, NAME_LIMIT
from rayop.autoscaler import (
    build_autoscaler_config,
    CONFIG_FILE,
    HEAD_ENV,
    DRAIN_PROGRAM_ENV,
    INPOD_DIR,
    autoscaler_role_rules,
    drain_args,
    drain_bootstrap,
    drain_command,
    launcher_command,
    monitor_command,
    monitor_env,
)
from rayop.defaults import Options
from rayop.objects import (
    AGENT_PORT,
    ANNOTATION_CONFIG_HASH,
    ANNOTATION_HEAD_UID,
    ANNOTATION_LAUNCH_ATTEMPT,
    ANNOTATION_REPLACEMENTS,
    AUTOSCALER_CONTAINER,
    CLIENT_PORT,
    DASHBOARD_PORT,
    GCS_PORT,
    HEAD_CONTAINER,
    LABEL_CLUSTER,
    LABEL_GROUP,
    LABEL_MANAGED_BY,
    LABEL_ROLE,
    LABEL_TEMPLATE_HASH,
    LAUNCHER_CONTAINER,
    MANAGED_BY,
    METRICS_PORT,
    ROLE_AUTOSCALER,
    ROLE_CONFIG,
    ROLE_HEAD,
    ROLE_LAUNCHER,
    ROLE_SERVICE,
    ROLE_WORKER,
    WORKER_CONTAINER,
    JSON,
    Body,
    head_fqdn,
    head_service_name,
    meta,
    name_of,
    spec_of,
    uid_of,
)

# Bump to roll every Ray pod on purpose when the generated pods change in a way running pods must pick up.
HASH_VERSION = 1

CONFIGURATION_KEY = "configuration.yaml"
CONFIG_VOLUME = "rayop-config"
SHM_VOLUME = "shared-mem"
# Left in the pod's /dev/shm by rayop_drain.py (the preStop hook, or its restart guard): Ray is not started again in
# this pod.
DRAIN_MARKER = "/dev/shm/rayop-drained"
# Left by the worker's first start in the pod: a start that finds it is a container restart in the same pod.
STARTED_MARKER = "/dev/shm/rayop-started"
LOG_VOLUME = "ray-logs"
RAY_TMP = "/tmp/ray"
HEALTH_PATH = "/api/healthz"
# Ray releases from this one on answer a single health endpoint on the dashboard agent (raylet, and GCS on the head).
UNIFIED_HEALTH_SINCE = (2, 53)

# Flags derived from the resources the model resolved (params first, then container limits): emitted once.
_RESOURCE_FLAGS = ("num-cpus", "num-gpus", "memory", "resources")
_HEAD_PORT_FLAGS = {
    "dashboard-host": "0.0.0.0",
    "dashboard-port": str(DASHBOARD_PORT),
    "ray-client-server-port": str(CLIENT_PORT),
    "metrics-export-port": str(METRICS_PORT),
}
_LAUNCHER_PREFIX_LIMIT = NAME_LIMIT - len("-launcher-") - 8

# GCS fault tolerance: the head's environment (Ray reads the external Redis and the key prefix from it) and the
# variable the Redis password is read into from its Secret; `ray start` gets it as "$RAY_REDIS_PASSWORD", expanded
# by the container's shell, so the password is never in the pod's spec.
REDIS_ADDRESS_ENV = "RAY_REDIS_ADDRESS"
REDIS_PASSWORD_ENV = "RAY_REDIS_PASSWORD"
STORAGE_NAMESPACE_ENV = "RAY_external_storage_namespace"
ROLE_GCS_CLEANUP = "gcs-cleanup"
GCS_CLEANUP_CONTAINER = "gcs-cleanup"
# Deletes the cluster's keys (`RAY<namespace>@*`) with Ray's own helper; exits 1 when that reports failure.
GCS_CLEANUP_SCRIPT = """\
import os, sys
from ray._private.gcs_utils import cleanup_redis_storage
host, port, namespace = sys.argv[1], int(sys.argv[2]), sys.argv[3]
ok = cleanup_redis_storage(host=host, port=port, password=os.environ.get("RAY_REDIS_PASSWORD", ""),
                           use_ssl=False, storage_namespace=namespace)
print(f"deleted the keys of storage namespace {namespace} at {host}:{port}" if ok
      else f"could not delete the keys of storage namespace {namespace} at {host}:{port}", flush=True)
sys.exit(0 if ok else 1)
"""


# -- small pure helpers -----------------------------------------------------------------------------------------


def stable_hash(value: object, length: int = 16) -> str:
    """A hex digest of `value` as sorted, compact JSON: equal values give equal hashes across runs and processes."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=_json_default)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def _json_default(value: object) -> object:
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, (tuple, frozenset, set)):
        return sorted(value) if isinstance(value, (set, frozenset)) else list(value)
    if isinstance(value, RayResources):
        return asdict(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


def _clone(value: Any) -> Any:
    """A deep copy of JSON values (Mappings become dicts, tuples lists); cheaper than copy.deepcopy."""
    if isinstance(value, Mapping):
        return {k: _clone(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clone(v) for v in value]
    return value


def config_map_name(name: str) -> str:
    return f"{name}-ray"


def autoscaler_name(name: str) -> str:
    """The ServiceAccount, Role and RoleBinding of the cluster's autoscaler."""
    return f"{name}-autoscaler"


def pod_prefix(name: str, group: str) -> str:
    """The generateName of a group's pods (`head` for the head)."""
    return f"{name}-{group}-"


def launcher_pod_name(name: str, head_uid: str, config_hash: str, attempt: int = 0) -> str:
    """`<name>-launcher-<8 hex>`: one name per launch (head pod and effective configuration) and attempt, so a
    create repeated from a stale cache meets the pod it made (AlreadyExists) instead of making a second one.

    A long Ray name is shortened in front of the suffix (the name stays a valid label value and hostname); find
    launcher pods by label and annotations, not by parsing this name.
    """
    digest = hashlib.sha256(f"{head_uid}/{config_hash}/{attempt}".encode()).hexdigest()[:8]
    prefix = name[:_LAUNCHER_PREFIX_LIMIT].rstrip("-")
    return f"{prefix}-launcher-{digest}"


def namespace_of(model: ClusterModel) -> str:
    return model.namespace or "default"


def head_address(model: ClusterModel, options: Options) -> str:
    """Where workers and the launcher find the GCS: `<name>-head.<namespace>.svc.<domain>:6379`."""
    return f"{head_fqdn(model.name, namespace_of(model), options.cluster_domain)}:{GCS_PORT}"


def storage_namespace(ft: GcsFaultTolerance, owner: Owner) -> str:
    """The cluster's key prefix in Redis: the one the spec names, else the Ray's UID (unique and stable), else (an
    object never stored, `rayop render`) `<namespace>-<name>`."""
    return ft.storage_namespace or owner.uid or f"{owner.namespace}-{owner.name}"


def gcs_cleanup_job_name(name: str) -> str:
    """`<name>-gcs-cleanup` (a Ray's name has at most 52 characters, so it fits in 63)."""
    return f"{name}-gcs-cleanup"


def _gcs_head_env(ft: GcsFaultTolerance, owner: Owner) -> list[JSON]:
    env = [_env_var(REDIS_ADDRESS_ENV, ft.redis_address), _env_var(STORAGE_NAMESPACE_ENV, storage_namespace(ft, owner))]
    if ft.password_secret is not None:
        env.append(_secret_env(REDIS_PASSWORD_ENV, ft.password_secret))
    return env


def _secret_env(name: str, secret: tuple[str, str]) -> JSON:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret[0], "key": secret[1]}}}


def _gcs_worker_env(options: Options) -> list[JSON]:
    """A worker's raylet outlives a head restart (it waits up to the reconnect timeout for the GCS) and retries
    often, so it rejoins soon after the new head answers."""
    return [
        _env_var("RAY_gcs_rpc_server_reconnect_timeout_s", str(options.gcs_reconnect_timeout_seconds)),
        _env_var("RAY_gcs_grpc_initial_reconnect_backoff_ms", "100"),
        _env_var("RAY_gcs_grpc_min_reconnect_backoff_ms", "100"),
        _env_var("RAY_gcs_grpc_max_reconnect_backoff_ms", str(options.gcs_max_reconnect_backoff_ms)),
    ]


def child_labels(cluster: str, role: str, group: str) -> JSON:
    return {LABEL_CLUSTER: cluster, LABEL_ROLE: role, LABEL_GROUP: group, LABEL_MANAGED_BY: MANAGED_BY}


@dataclass(frozen=True)
class Owner:
    """The `Ray` every child belongs to. `uid` is empty for an object that was never stored (`rayop render`)."""

    name: str
    namespace: str
    uid: str = ""

    @classmethod
    def of(cls, ray: Body) -> Owner:
        return cls(name=name_of(ray), namespace=str(meta(ray).get("namespace") or "default"), uid=uid_of(ray))

    def references(self) -> list[JSON]:
        """The controller ownerReference list (empty when there is no UID to point at)."""
        if not self.uid:
            return []
        return [{"apiVersion": API_VERSION, "kind": KIND, "name": self.name, "uid": self.uid, "controller": True,
                 "blockOwnerDeletion": True}]


def _metadata(owner: Owner, name: str | None, labels: JSON, *, generate_name: str | None = None,
              annotations: Mapping[str, str] | None = None) -> JSON:
    meta: JSON = {"namespace": owner.namespace}
    if name is not None:
        meta["name"] = name
    if generate_name is not None:
        meta["generateName"] = generate_name
    meta["labels"] = labels
    if annotations:
        meta["annotations"] = dict(annotations)
    refs = owner.references()
    if refs:
        meta["ownerReferences"] = refs
    return meta


def image_ray_version(image: str) -> tuple[int, int] | None:
    """(major, minor) of a Ray image tagged like `rayproject/ray:2.60.0[-gpu|-py311...]`, else None."""
    _, sep, tag = image.rpartition(":")
    if not sep or "/" in tag:
        return None
    parts = tag.split("-", 1)[0].split(".")
    if len(parts) < 2 or not parts[0].isdigit() or not parts[1].isdigit():
        return None
    return int(parts[0]), int(parts[1])


# -- Ray resources and `ray start` --------------------------------------------------------------------------------


def _has_resources(container: Body) -> bool:
    res = container.get("resources")
    return isinstance(res, Mapping) and bool(res.get("limits") or res.get("requests"))


def _template_ray_container(template: Body | None, role: str) -> tuple[int, Body]:
    """(index, container) of the Ray container: the one named ray-head/ray-worker, else the first; (0, {}) if none."""
    spec = (template or {}).get("spec")
    containers = spec.get("containers") if isinstance(spec, Mapping) else None
    if not isinstance(containers, list) or not containers:
        return 0, {}
    wanted = HEAD_CONTAINER if role == ROLE_HEAD else WORKER_CONTAINER
    for i, c in enumerate(containers):
        if isinstance(c, Mapping) and c.get("name") == wanted:
            return i, c
    first = containers[0]
    return 0, first if isinstance(first, Mapping) else {}


def _default_quantity(value: object) -> int | None:
    try:
        return ceil_quantity(value)
    except ValueError:
        return None


def ray_resources(group: HeadGroup | WorkerGroup, options: Options) -> RayResources:
    """What a group's Ray node offers: the model's resources, with CPU and memory of the operator's default
    container resources when the Ray container declares none. The autoscaler config must use the same values."""
    role = ROLE_HEAD if isinstance(group, HeadGroup) else ROLE_WORKER
    _, container = _template_ray_container(group.template, role)
    res = group.resources
    if _has_resources(container):
        return res
    defaults = options.head_resources if role == ROLE_HEAD else options.worker_resources
    limits = defaults.get("limits") or defaults.get("requests") or {}
    cpu = res.cpu if res.cpu is not None else _default_quantity(limits.get("cpu"))
    memory = res.memory if res.memory is not None else _default_quantity(limits.get("memory"))
    return RayResources(cpu=cpu, gpu=res.gpu, memory=memory, custom=res.custom)


def _flag(key: str, value: str) -> str:
    return f"--{key}" if value == "" else f"--{key}={value}"


def ray_start_args(model: ClusterModel, group: HeadGroup | WorkerGroup, options: Options) -> list[str]:
    """The `ray start` argv of a group's pods: managed flags, resource flags, then the user's other params."""
    params = dict(group.ray_start_params)
    resources = ray_resources(group, options)
    if isinstance(group, HeadGroup):
        args = ["ray", "start", "--head", "--block"]
        if model.autoscaling.enabled:
            args.append("--no-monitor")  # the sidecar runs the monitor
        ports = {k: params.pop(k, v) for k, v in _HEAD_PORT_FLAGS.items()}
        args.append(_flag("dashboard-host", ports["dashboard-host"]))
        args.append(f"--port={GCS_PORT}")
        args += [_flag(k, ports[k]) for k in ("dashboard-port", "ray-client-server-port", "metrics-export-port")]
    else:
        args = ["ray", "start", "--block", f"--address={head_address(model, options)}",
                _flag("metrics-export-port", params.pop("metrics-export-port", str(METRICS_PORT)))]
    if resources.cpu is not None:
        args.append(f"--num-cpus={resources.cpu}")
    if resources.gpu is not None:
        args.append(f"--num-gpus={resources.gpu}")
    if resources.memory is not None:
        args.append(f"--memory={resources.memory}")
    if resources.custom:
        args.append("--resources=" + json.dumps(dict(resources.custom), sort_keys=True, separators=(",", ":")))
    args += [_flag(k, v) for k, v in params.items() if k not in _RESOURCE_FLAGS]
    return args


# A worker's wait for the head's GCS before `ray start` (workers are created with the head, which may not have an
# address yet): a TCP connect to <host>:<port> once a second, a line on the container's log at the first miss and
# then every 30 s; it also ends when its shell goes (a container stopped while waiting leaves no process behind).
_GCS_WAIT_PROGRAM = '''import json,os,socket,sys,time
a=sys.argv[1];h,_,p=a.rpartition(":");pp=os.getppid();t=time.monotonic();last=None
while os.getppid()==pp:
  try:
    socket.create_connection((h,int(p)),3).close();break
  except OSError as e:
    now=time.monotonic()
    if last is None or now-last>=30:
      last=now;print(json.dumps({"waiting":"for the GCS of the head","address":a,"seconds":round(now-t),"error":str(e)}),flush=True)
    time.sleep(1)
'''


# Sets `py` to the Python next to `ray` on the PATH (a login shell's PATH may put another `python` first), else
# `python`: the worker's in-pod programs (the GCS wait, the restart guard) run with it.
_RAY_PYTHON = 'py="$(dirname "$(command -v ray)")/python"; [ -x "$py" ] || py=python; '


def gcs_wait_script(address: str) -> str:
    """The shell step that waits until the GCS at `address` accepts connections (the Python next to `ray` on the
    PATH, else `python`). SIGTERM ends it at once (a PID 1 shell would otherwise ignore it for the whole grace
    period); it never fails the start: with no Python to run it, `ray start` does its own ~20 s of retries."""
    return ("{ trap 'exit 143' TERM INT; " + _RAY_PYTHON +
            f"\"$py\" -c {shlex.quote(_GCS_WAIT_PROGRAM)} {shlex.quote(address)} & wait $!; trap - TERM INT; true; }}")


def ray_start_script(model: ClusterModel, group: HeadGroup | WorkerGroup, options: Options) -> str:
    """The shell script of the Ray container: raise the open-files limit, run setup commands, (workers) wait for the
    head's GCS, exec `ray start`."""
    start = " ".join(shlex.quote(a) for a in ray_start_args(model, group, options))
    ft = model.gcs_fault_tolerance
    if isinstance(group, HeadGroup) and ft is not None and ft.password_secret is not None:
        # Expanded by the container's shell from the Secret-backed variable: the pod's spec never holds it.
        start += f' --redis-password="${REDIS_PASSWORD_ENV}"'
    wait = [] if isinstance(group, HeadGroup) else [gcs_wait_script(head_address(model, options))]
    steps = [*group.setup_commands, *wait, f"exec {start}"]
    return "ulimit -n 65536 2>/dev/null || true; " + " && ".join(steps)


# -- pods ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GroupPods:
    """The pod every member of a group is created from, and how many the group wants now."""

    group: str
    role: str
    manifest: Body
    template_hash: str
    desired: int


def _env_var(name: str, value: str | None = None, field_path: str | None = None) -> JSON:
    if field_path is not None:
        return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": field_path}}}
    return {"name": name, "value": value}


def _merge_env(container: JSON, ours: Sequence[JSON]) -> None:
    """Our variables first (they win over the user's of the same name), then the user's others in their order."""
    names = {e["name"] for e in ours}
    theirs = [e for e in container.get("env") or [] if not (isinstance(e, Mapping) and e.get("name") in names)]
    container["env"] = [*ours, *theirs]


def _merge_ports(container: JSON, ours: Sequence[JSON]) -> None:
    existing = [p for p in container.get("ports") or [] if isinstance(p, Mapping)]
    taken_ports = {p.get("containerPort") for p in existing}
    taken_names = {p.get("name") for p in existing}
    container["ports"] = existing + [p for p in ours
                                     if p["containerPort"] not in taken_ports and p["name"] not in taken_names]


def _add_volume(spec: JSON, container: JSON, *, name: str, path: str, source: JSON, read_only: bool = False,
                others: Iterable[JSON] = ()) -> None:
    """Mount `source` at `path` in `container` (and `others`) unless something is mounted there already."""
    mounts = container.setdefault("volumeMounts", [])
    if any(isinstance(m, Mapping) and m.get("mountPath") == path for m in mounts):
        return
    volumes = spec.setdefault("volumes", [])
    taken = {v.get("name") for v in volumes if isinstance(v, Mapping)}
    unique, n = name, 1
    while unique in taken:
        n += 1
        unique = f"{name}-{n}"
    volumes.append({"name": unique, **source})
    mount: JSON = {"name": unique, "mountPath": path}
    if read_only:
        mount["readOnly"] = True
    mounts.append(mount)
    for other in others:
        other.setdefault("volumeMounts", []).append(dict(mount))


def _probe(role: str, image: str, params: Mapping[str, str], *, liveness: bool) -> JSON:
    agent_port = int(params.get("dashboard-agent-listen-port", AGENT_PORT))
    version = image_ray_version(image)
    timeout = 5 if role == ROLE_HEAD else 2
    probe: JSON
    if version is not None and version >= UNIFIED_HEALTH_SINCE:
        probe = {"httpGet": {"path": HEALTH_PATH, "port": agent_port}}
    else:
        check = f"wget --tries 1 -T {timeout} -q -O- http://localhost:%d/%s | grep success"
        commands = [check % (agent_port, "api/local_raylet_healthz")]
        if role == ROLE_HEAD:
            dashboard = int(params.get("dashboard-port", DASHBOARD_PORT))
            commands.append(check % (dashboard, "api/gcs_healthz"))
        probe = {"exec": {"command": ["bash", "-c", " && ".join(commands)]}}
    if liveness:
        probe.update(initialDelaySeconds=30, periodSeconds=5, timeoutSeconds=timeout, successThreshold=1,
                     failureThreshold=120)
    else:
        probe.update(initialDelaySeconds=5, periodSeconds=5, timeoutSeconds=timeout, successThreshold=1,
                     failureThreshold=10)
    return probe


def _pod_fingerprint(owner: Owner, model: ClusterModel, group: HeadGroup | WorkerGroup, role: str, image: str,
                     options: Options) -> JSON:
    used: JSON = {"pull": options.image_pull_policy, "probes": options.probes}
    _, container = _template_ray_container(group.template, role)
    if not _has_resources(container):
        used["resources"] = options.head_resources if role == ROLE_HEAD else options.worker_resources
    value: JSON = {
        "v": HASH_VERSION,
        "kind": role,  # the key's name is part of every running pod's hash: renaming it would roll them all
        "template": group.template,
        "image": image,
        "params": group.ray_start_params,
        "resources": group.resources,
        "setup": group.setup_commands,
        "options": used,
    }
    if role == ROLE_HEAD:
        value["autoscaler"] = options.autoscaler_resources if model.autoscaling.enabled else None
    else:
        value["address"] = head_address(model, options)
    ft = model.gcs_fault_tolerance
    if ft is not None:  # only then: the pods of clusters without it keep their hashes
        value["gcs"] = ({"redis": ft.redis_address, "password": ft.password_secret,
                         "namespace": storage_namespace(ft, owner)} if role == ROLE_HEAD
                        else {"reconnect": options.gcs_reconnect_timeout_seconds,
                              "backoff": options.gcs_max_reconnect_backoff_ms})
    return value


@dataclass
class _PodDraft:
    """A group's pod while it is built: a copy of the template's spec and its Ray container (in `spec`)."""

    model: ClusterModel
    group: HeadGroup | WorkerGroup
    options: Options
    spec: JSON
    ray: JSON
    owner: Owner

    @property
    def is_head(self) -> bool:
        return isinstance(self.group, HeadGroup)

    @property
    def role(self) -> str:
        return ROLE_HEAD if self.is_head else ROLE_WORKER

    @property
    def drains(self) -> bool:
        """Worker pods drain their Ray node before they stop (not with a user's plasma directory)."""
        return not self.is_head and "plasma-directory" not in self.group.ray_start_params


def _pod_draft(owner: Owner, model: ClusterModel, group: HeadGroup | WorkerGroup, options: Options,
               image: str) -> _PodDraft:
    """Copies the template's spec; finds (or adds) the Ray container, gives every container an image and the Ray
    container a name and, when it declares none, the operator's default resources."""
    is_head = isinstance(group, HeadGroup)
    template = group.template or {}
    index, _ = _template_ray_container(template, ROLE_HEAD if is_head else ROLE_WORKER)
    raw_spec = template.get("spec")
    spec: JSON = _clone(raw_spec) if isinstance(raw_spec, Mapping) else {}
    containers = [c for c in spec.get("containers") or [] if isinstance(c, dict)]
    if not containers:
        containers = [{"name": HEAD_CONTAINER if is_head else WORKER_CONTAINER, "imagePullPolicy":
                       options.image_pull_policy}]
        index = 0
    spec["containers"] = containers
    for c in containers:
        if not c.get("image"):
            c["image"] = image
    ray = containers[index]
    if not ray.get("name"):
        ray["name"] = HEAD_CONTAINER if is_head else WORKER_CONTAINER
    if not _has_resources(ray):
        ray["resources"] = _clone(options.head_resources if is_head else options.worker_resources)
    return _PodDraft(model=model, group=group, options=options, spec=spec, ray=ray, owner=owner)


def _add_ray_command(pod: _PodDraft) -> None:
    """The Ray container's environment and its `ray start` script (as its command, or in an env var when the user
    gave a command of their own)."""
    ray, name = pod.ray, pod.group.name
    env = [_env_var("RAY_CLOUD_INSTANCE_ID", field_path="metadata.name"), _env_var("RAY_NODE_TYPE_NAME", name)]
    ft = pod.model.gcs_fault_tolerance
    if pod.is_head:
        env += [dict(e) for e in HEAD_ENV]
        if ft is not None:
            env += _gcs_head_env(ft, pod.owner)
    else:
        env.append(_env_var("RAYOP_POD_IP", field_path="status.podIP"))
        if ft is not None:
            env += _gcs_worker_env(pod.options)
    script = ray_start_script(pod.model, pod.group, pod.options)
    if pod.drains:
        # A worker whose Ray node was drained (rayop_drain.py left its marker in the pod's /dev/shm) never starts
        # Ray again while its pod goes: the container may restart (restartPolicy Always), the node never rejoins.
        # The idle shell ends on SIGTERM at once (a PID 1 shell would otherwise ignore it and hold the pod for the
        # whole grace period, which covers the drain timeout).
        # A restart in the same pod first asks the GCS (rayop_drain.py --on-restart) whether the pod's previous Ray
        # node ended by a drain someone else asked for (Ray's autoscaler, `ray drain-node`); if so the guard leaves
        # the marker too. A crash is no drain: Ray starts again and the node rejoins. The guard runs with the Python
        # next to `ray` (a login shell's PATH may put another `python` first), else with `python`.
        # The program is in the container's environment (once per pod; the preStop hook reads it from there too).
        env.append(_env_var(DRAIN_PROGRAM_ENV, drain_bootstrap()))
        guard = shlex.join([*drain_args(head_address(pod.model, pod.options), pod.options.drain_timeout_seconds),
                            "--on-restart"])
        script = (f"if [ -e {STARTED_MARKER} ] && [ ! -e {DRAIN_MARKER} ]; then {_RAY_PYTHON}"
                  f"\"$py\" -c \"${DRAIN_PROGRAM_ENV}\" {guard} || true; fi; "
                  f"if [ -e {DRAIN_MARKER} ]; then echo 'this pod was drained: Ray is not started again'; "
                  f"trap 'exit 0' TERM INT; while true; do sleep 3600 & wait $!; done; fi; "
                  f"touch {STARTED_MARKER} 2>/dev/null || true; {script}")
    if ray.get("command") or ray.get("args"):
        # The user's command is kept as given; it can start Ray with `eval "exec $RAYOP_RAY_START_COMMAND"`.
        env.append(_env_var("RAYOP_RAY_START_COMMAND", script))
    else:
        ray["command"] = ["/bin/bash", "-lc", "--"]
        ray["args"] = [script]
    _merge_env(ray, env)


def _add_ports_and_probes(pod: _PodDraft) -> None:
    ray, params = pod.ray, pod.group.ray_start_params
    ports: list[JSON] = []
    if pod.is_head:
        ports = [
            {"name": "gcs", "containerPort": GCS_PORT, "protocol": "TCP"},
            {"name": "dashboard", "containerPort": int(params.get("dashboard-port", DASHBOARD_PORT)),
             "protocol": "TCP"},
            {"name": "client", "containerPort": int(params.get("ray-client-server-port", CLIENT_PORT)),
             "protocol": "TCP"},
        ]
    ports.append({"name": "metrics", "containerPort": int(params.get("metrics-export-port", METRICS_PORT)),
                  "protocol": "TCP"})
    _merge_ports(ray, ports)
    if pod.options.probes:
        if not ray.get("readinessProbe"):
            ray["readinessProbe"] = _probe(pod.role, ray["image"], params, liveness=False)
        if not ray.get("livenessProbe"):
            ray["livenessProbe"] = _probe(pod.role, ray["image"], params, liveness=True)
    if "plasma-directory" not in params:
        _add_volume(pod.spec, ray, name=SHM_VOLUME, path="/dev/shm", source={"emptyDir": {"medium": "Memory"}})


def _add_head_extras(pod: _PodDraft) -> None:
    """The head's autoscaler sidecar (when autoscaling is on) and the ConfigMap mount."""
    model, options, spec, ray = pod.model, pod.options, pod.spec, pod.ray
    sidecar: JSON | None = None
    if model.autoscaling.enabled:
        sidecar = {
            "name": AUTOSCALER_CONTAINER,
            "image": ray["image"],
            "imagePullPolicy": ray.get("imagePullPolicy") or options.image_pull_policy,
            "command": monitor_command(),
            "env": monitor_env(model.name),
            "resources": _clone(options.autoscaler_resources),
        }
        _add_volume(spec, ray, name=LOG_VOLUME, path=RAY_TMP, source={"emptyDir": {}}, others=[sidecar])
    _add_volume(spec, ray, name=CONFIG_VOLUME, path=INPOD_DIR, read_only=True,
                source={"configMap": {"name": config_map_name(model.name)}},
                others=[sidecar] if sidecar else [])
    if sidecar is not None:
        spec["containers"].append(sidecar)
        spec.setdefault("serviceAccountName", autoscaler_name(model.name))
        spec["automountServiceAccountToken"] = True  # the sidecar talks to the API server


def _add_drain_hook(pod: _PodDraft) -> None:
    """Graceful removal: before the kubelet stops the worker, its Ray node is drained through Ray's GCS."""
    lifecycle = pod.ray.setdefault("lifecycle", {})
    if isinstance(lifecycle, dict) and "preStop" not in lifecycle:
        lifecycle["preStop"] = {"exec": {"command": drain_command(head_address(pod.model, pod.options),
                                                                   pod.options.drain_timeout_seconds)}}
    pod.spec.setdefault("terminationGracePeriodSeconds", int(pod.options.drain_timeout_seconds) + 30)


def _build_pod(owner: Owner, model: ClusterModel, group: HeadGroup | WorkerGroup, options: Options) -> GroupPods:
    image = group.image or model.image or options.image
    pod = _pod_draft(owner, model, group, options, image)
    template_hash = stable_hash(_pod_fingerprint(owner, model, group, pod.role, image, options))
    _add_ray_command(pod)
    _add_ports_and_probes(pod)
    if pod.is_head:
        _add_head_extras(pod)
    if pod.drains:
        _add_drain_hook(pod)
    if "automountServiceAccountToken" not in pod.spec:
        pod.spec["automountServiceAccountToken"] = False
    template_meta = meta(group.template or {})
    labels = {**_mapping(template_meta.get("labels")), **child_labels(model.name, pod.role, group.name),
              LABEL_TEMPLATE_HASH: template_hash}
    manifest = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": _metadata(owner, None, labels, generate_name=pod_prefix(model.name, group.name),
                              annotations=_mapping(template_meta.get("annotations")) or None),
        "spec": pod.spec,
    }
    desired = group.desired_workers if isinstance(group, WorkerGroup) else 1
    return GroupPods(group=group.name, role=pod.role, manifest=manifest, template_hash=template_hash,
                     desired=desired)


def _mapping(value: object) -> Body:
    return value if isinstance(value, Mapping) else {}


def build_head_pod(owner: Owner, model: ClusterModel, options: Options) -> GroupPods:
    """The head pod: `ray start --head`, the head's ports, and the autoscaler sidecar when autoscaling is on."""
    return _build_pod(owner, model, model.head, options)


def build_worker_pod(owner: Owner, model: ClusterModel, group: WorkerGroup, options: Options) -> GroupPods:
    """The pod of one worker group: `ray start --address=<head FQDN>:6379`."""
    return _build_pod(owner, model, group, options)


def with_replacements(manifest: Body, count: int) -> JSON:
    """A copy of a pod manifest (sharing its spec) marked as the `count`-th refill of a failed pod's slot."""
    meta = dict(manifest["metadata"])
    meta["annotations"] = {**(meta.get("annotations") or {}), ANNOTATION_REPLACEMENTS: str(count)}
    return {**manifest, "metadata": meta}


# -- Service, ConfigMap, RBAC, launcher -------------------------------------------------------------------------


def build_head_service(owner: Owner, model: ClusterModel, head: GroupPods) -> JSON:
    """A headless Service `<name>-head` in front of the head pod (GCS, dashboard, client, metrics and any other
    named port of the head's Ray container). Not-ready addresses are published so workers can resolve the head
    while it starts."""
    spec = head.manifest["spec"]
    ray = next((c for c in spec["containers"] if c.get("name") != AUTOSCALER_CONTAINER), spec["containers"][0])
    ports = [
        {"name": p["name"], "port": p["containerPort"], "targetPort": p["containerPort"],
         "protocol": p.get("protocol", "TCP")}
        for p in ray.get("ports") or [] if isinstance(p, Mapping) and p.get("name") and p.get("containerPort")
    ]
    selector = {LABEL_CLUSTER: model.name, LABEL_ROLE: ROLE_HEAD, LABEL_MANAGED_BY: MANAGED_BY}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(owner, head_service_name(model.name), child_labels(model.name, ROLE_HEAD, HEAD_GROUP)),
        "spec": {"clusterIP": "None", "publishNotReadyAddresses": True, "selector": selector, "ports": ports},
    }


def build_declared_service(owner: Owner, model: ClusterModel, service: DeclaredService) -> JSON:
    """A Service the configuration declares (`provider.services`): its ports and type as given, its selector the
    configuration's plus the cluster's own labels (so it never selects another cluster's pods). Ports get the
    defaults the API server would add (protocol TCP, targetPort = port), so a stored Service shows no drift."""
    spec: JSON = _clone(service.spec)
    ports = spec.get("ports")
    if isinstance(ports, list):
        spec["ports"] = [{"protocol": "TCP", **p, **({} if "targetPort" in p else {"targetPort": p.get("port")})}
                         if isinstance(p, Mapping) else p for p in ports]
    spec["selector"] = {**service.selector, LABEL_CLUSTER: model.name, LABEL_MANAGED_BY: MANAGED_BY}
    labels = {**service.labels, **child_labels(model.name, ROLE_SERVICE, service.name)}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(owner, service.name, labels, annotations=service.annotations),
        "spec": spec,
    }


def autoscaler_config_text(config: Body | str) -> str:
    """The `autoscaler.yaml` text: a string is kept; a mapping is written as sorted, compact JSON (valid YAML, and
    written by the C encoder: cheap enough to run on every reconcile)."""
    if isinstance(config, str):
        return config
    return json.dumps(config, sort_keys=True, separators=(",", ":"), default=_json_default) + "\n"


def build_config_map(owner: Owner, model: ClusterModel, *, autoscaler_config: Body | str,
                     configuration: str | None, programs: Mapping[str, str]) -> JSON:
    """ConfigMap `<name>-ray`: the effective autoscaler config, the user's configuration as given, the in-pod
    programs. Mounted read-only at /etc/rayop in the head, the autoscaler sidecar and the launcher."""
    data = {**programs, CONFIG_FILE: autoscaler_config_text(autoscaler_config)}
    if configuration is not None:
        data[CONFIGURATION_KEY] = configuration
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(owner, config_map_name(model.name), child_labels(model.name, ROLE_CONFIG, ROLE_CONFIG)),
        "data": data,
    }


def build_autoscaler_rbac(owner: Owner, model: ClusterModel, head: GroupPods) -> tuple[JSON, JSON, JSON]:
    """ServiceAccount, Role and RoleBinding `<name>-autoscaler`. The binding names the account the head pod runs
    as (ours, or the one the user's head template names)."""
    name = autoscaler_name(model.name)
    labels = child_labels(model.name, ROLE_AUTOSCALER, HEAD_GROUP)
    account = head.manifest["spec"].get("serviceAccountName") or name
    sa = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _metadata(owner, name, dict(labels))}
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": _metadata(owner, name, dict(labels)), "rules": autoscaler_role_rules(model.name)}
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _metadata(owner, name, dict(labels)),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": owner.namespace}],
    }
    return sa, role, binding


def build_launcher_pod(owner: Owner, model: ClusterModel, options: Options, head: GroupPods, *, head_uid: str,
                       config_hash: str, attempt: int = 0, node_name: str | None = None) -> JSON:
    """One attempt of the launch of one head pod with one effective config (see `rayop.launch`): a bare pod,
    owned by the Ray, that validates the config with Ray's own validator, waits for the GCS and the initial
    workers, and exits. Never restarted in place; the operator starts the next attempt. With `node_name` (the head
    pod's Node) the pod is placed there, not scheduled, and tolerates what the head's template tolerates."""
    name = launcher_pod_name(model.name, head_uid, config_hash, attempt)
    head_spec = head.manifest["spec"]
    image = next((c["image"] for c in head_spec["containers"] if c.get("name") != AUTOSCALER_CONTAINER),
                 options.image)
    labels = child_labels(model.name, ROLE_LAUNCHER, ROLE_LAUNCHER)
    container = {
        "name": LAUNCHER_CONTAINER,
        "image": image,
        "imagePullPolicy": options.image_pull_policy,
        # The launcher gives up a minute before the pod's deadline, so its own summary says why.
        "command": launcher_command(model, head_address(model, options),
                                    timeout_seconds=max(60, options.launcher_deadline_seconds - 60)),
        "env": [_env_var("PYTHONPATH", INPOD_DIR), _env_var("RAY_CLUSTER_NAME", model.name)],
        "resources": _clone(options.launcher_resources),
        "volumeMounts": [{"name": CONFIG_VOLUME, "mountPath": INPOD_DIR, "readOnly": True}],
        # The launcher's JSON summary: written to /dev/termination-log, and its last log line when that is empty.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    pod_spec: JSON = {
        "restartPolicy": "Never",
        "activeDeadlineSeconds": options.launcher_deadline_seconds,
        "automountServiceAccountToken": False,
        "containers": [container],
        "volumes": [{"name": CONFIG_VOLUME, "configMap": {"name": config_map_name(model.name)}}],
    }
    if head_spec.get("imagePullSecrets"):
        pod_spec["imagePullSecrets"] = _clone(head_spec["imagePullSecrets"])
    if node_name:
        pod_spec["nodeName"] = node_name
        if head_spec.get("tolerations"):
            # A NoExecute taint the head tolerates would otherwise evict the launcher from the head's Node.
            pod_spec["tolerations"] = _clone(head_spec["tolerations"])
    annotations = {ANNOTATION_HEAD_UID: head_uid, ANNOTATION_CONFIG_HASH: config_hash,
                   ANNOTATION_LAUNCH_ATTEMPT: str(attempt)}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": _metadata(owner, name, labels, annotations=annotations),
        "spec": pod_spec,
    }


def build_gcs_cleanup_job(owner: Owner, model: ClusterModel, options: Options, head: GroupPods) -> JSON | None:
    """The clean-up Job of a deleted Ray with GCS fault tolerance: deletes the cluster's keys from Redis with Ray's
    own helper (`ray._private.gcs_utils.cleanup_redis_storage`), the password read from its Secret into the
    environment. It runs as the head runs: the head's image, pull secrets, annotations, node selector and
    tolerations. None for a cluster without GCS fault tolerance."""
    ft = model.gcs_fault_tolerance
    if ft is None:
        return None
    head_spec = head.manifest["spec"]
    image = next((c["image"] for c in head_spec["containers"] if c.get("name") != AUTOSCALER_CONTAINER),
                 options.image)
    env = [_env_var("RAY_redis_db_connect_retries", "10")]
    if ft.password_secret is not None:
        env.append(_secret_env(REDIS_PASSWORD_ENV, ft.password_secret))
    labels = child_labels(model.name, ROLE_GCS_CLEANUP, ROLE_GCS_CLEANUP)
    host = ft.redis_host[1:-1] if ft.redis_host.startswith("[") else ft.redis_host
    container = {
        "name": GCS_CLEANUP_CONTAINER,
        "image": image,
        "imagePullPolicy": options.image_pull_policy,
        "command": ["python", "-c", GCS_CLEANUP_SCRIPT, host, str(ft.redis_port), storage_namespace(ft, owner)],
        "env": env,
        "resources": _clone(options.launcher_resources),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    pod_spec: JSON = {"restartPolicy": "Never", "automountServiceAccountToken": False, "containers": [container]}
    for key in ("imagePullSecrets", "nodeSelector", "tolerations"):
        if head_spec.get(key):
            pod_spec[key] = _clone(head_spec[key])
    pod_meta: JSON = {"labels": dict(labels)}
    annotations = _mapping(meta(model.head.template or {}).get("annotations"))
    if annotations:
        pod_meta["annotations"] = dict(annotations)
    refs = owner.references()
    job_meta = _metadata(Owner(owner.name, owner.namespace), gcs_cleanup_job_name(model.name), labels)
    if refs:
        # Owned by the Ray (gone with it), without blocking its deletion: the Ray goes once the Job ended.
        job_meta["ownerReferences"] = [{**refs[0], "blockOwnerDeletion": False}]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": job_meta,
        "spec": {
            "backoffLimit": options.gcs_cleanup_backoff_limit,
            "activeDeadlineSeconds": options.gcs_cleanup_deadline_seconds,
            "template": {"metadata": pod_meta, "spec": pod_spec},
        },
    }


# -- everything at once -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Desired:
    """Every child the cluster should have, built once per reconcile. The launcher pod is built by
    `launcher_pod(head_uid, attempt)` because its name depends on the live head pod."""

    model: ClusterModel
    owner: Owner
    options: Options
    head: GroupPods
    workers: tuple[GroupPods, ...]
    service: Body
    config_map: Body
    # Hash of the effective autoscaler config: a change starts a new launch.
    config_hash: str
    # ServiceAccount, Role, RoleBinding when autoscaling is on, else ().
    autoscaler: tuple[Body, ...] = ()
    # The Services the configuration declares (provider.services).
    services: tuple[Body, ...] = ()
    def template_hashes(self) -> dict[str, str]:
        """Group name -> template hash, the head included (as `head`)."""
        return {self.head.group: self.head.template_hash, **{w.group: w.template_hash for w in self.workers}}

    def launcher_pod(self, head_uid: str, attempt: int = 0, node_name: str | None = None) -> JSON:
        return build_launcher_pod(self.owner, self.model, self.options, self.head, head_uid=head_uid,
                                  config_hash=self.config_hash, attempt=attempt, node_name=node_name)

    def launcher_name(self, head_uid: str, attempt: int = 0) -> str:
        return launcher_pod_name(self.model.name, head_uid, self.config_hash, attempt)

    def singletons(self) -> tuple[Body, ...]:
        """The named children in creation order: RBAC, ConfigMap, head Service, declared Services."""
        return (*self.autoscaler, self.config_map, self.service, *self.services)


def build_children(ray: Body, model: ClusterModel, options: Options, *,
                   programs: Mapping[str, str], autoscaler_config: Body | str | None = None) -> Desired:
    """Build every child of `ray` (decoded JSON) from its model. `programs` are the in-pod program files for the
    ConfigMap. `autoscaler_config` overrides the effective Ray autoscaler config, which is otherwise built from the
    model with the resources the built pods really get (`ray_resources`), so the autoscaler plans with them."""
    if autoscaler_config is None:
        groups: tuple[HeadGroup | WorkerGroup, ...] = (model.head, *model.worker_groups)
        autoscaler_config = build_autoscaler_config(
            model, resources={g.name: ray_resources(g, options) for g in groups})
    owner = Owner.of(ray)
    raw_configuration = spec_of(ray).get("configuration")
    configuration = raw_configuration if isinstance(raw_configuration, str) else None
    head = build_head_pod(owner, model, options)
    workers = tuple(build_worker_pod(owner, model, g, options) for g in model.worker_groups)
    config_text = autoscaler_config_text(autoscaler_config)
    config_map = build_config_map(owner, model, autoscaler_config=config_text, configuration=configuration,
                                  programs=programs)
    rbac = build_autoscaler_rbac(owner, model, head) if model.autoscaling.enabled else ()
    return Desired(
        model=model,
        owner=owner,
        options=options,
        head=head,
        workers=workers,
        service=build_head_service(owner, model, head),
        config_map=config_map,
        config_hash=stable_hash(config_text),
        autoscaler=tuple(rbac),
        services=tuple(build_declared_service(owner, model, s) for s in model.services),
    )
