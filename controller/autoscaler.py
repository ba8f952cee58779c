"""The Ray autoscaler as the operator sees it: its config, its permissions, its in-pod programs and their reports.

rayop reuses Ray's own autoscaler (v1 `StandardAutoscaler`, run by Ray's `Monitor` in a sidecar of the head pod) with
a node provider of ours that never touches pods: it writes `spec.desiredWorkers` and `spec.workersToDelete` of the
`Ray`, and the operator turns those into pods. See docs/autoscaling.md.

Guarantees:
- `build_autoscaler_config(model)` is pure (no I/O, no clock, no environment; the model is not modified) and returns
  a fresh dict of JSON values that Ray's `validate_config` accepts for every valid `ClusterModel`, except when the
  model breaks a rule only Ray checks (the sum of the groups' `min_workers` above the cluster-wide `max_workers`):
  such a config is produced as is, so Ray's own message reaches the `SuccessfulLaunch` condition through the launcher.
- The config names the provider `rayop_provider.RayopNodeProvider` with the flags a batching provider needs
  (`disable_node_updaters`, `disable_launch_config_check`, `foreground_node_launch` on, `worker_liveness_check` off).
- With autoscaling disabled the config is static (every group's min = max = its desired count), so a monitor that
  ran anyway could neither add nor remove a worker.
- `autoscaler_role_rules(name)` is the single source of the autoscaler's RBAC: read pods of the namespace, get and
  patch only the `Ray` named `name`. The operator's own ClusterRole must hold the same rules to grant them.
- `inpod_files()` returns the in-pod programs verbatim (standard library + `ray` only); the operator never imports
  them.
- `parse_launch_summary` is pure and never raises on malformed input.
"""

from __future__ import annotations

import base64
import functools
import json
import math
import shlex
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
import yaml

from rayop.api.model import ClusterModel, RayResources, WorkerGroup
from rayop.api.types import GROUP, HEAD_GROUP, PLURAL, VERSION
from rayop.objects import GCS_PORT, JSON, Body

__all__ = [
    "INPOD_DIR",
    "CONFIG_FILE",
    "CONFIG_PATH",
    "PROVIDER_FILE",
    "MONITOR_FILE",
    "LAUNCHER_FILE",
    "PROVIDER_MODULE",
    "DEFAULT_LAUNCH_TIMEOUT_SECONDS",
    "HEAD_ENV",
    "build_autoscaler_config",
    "render_autoscaler_config",
    "validate_with_ray",
    "autoscaler_role_rules",
    "inpod_files",
    "DRAIN_PROGRAM_ENV",
    "drain_args",
    "drain_command",
    "monitor_command",
    "monitor_env",
    "launcher_command",
    "LaunchSummary",
    "parse_launch_summary",
]

# Where the ConfigMap `<name>-ray` is mounted in the autoscaler sidecar and the launcher pod, and what it holds.
INPOD_DIR = "/etc/rayop"
CONFIG_FILE = "autoscaler.yaml"
CONFIG_PATH = f"{INPOD_DIR}/{CONFIG_FILE}"
PROVIDER_FILE = "rayop_provider.py"
MONITOR_FILE = "rayop_monitor.py"
LAUNCHER_FILE = "rayop_launcher.py"
DRAIN_FILE = "rayop_drain.py"
INPOD_FILES = (PROVIDER_FILE, MONITOR_FILE, LAUNCHER_FILE)
PROVIDER_MODULE = "rayop_provider.RayopNodeProvider"

DEFAULT_LAUNCH_TIMEOUT_SECONDS = 600

# The head runs no monitor of its own (`ray start --head --no-monitor`) and keeps autoscaler v2 off: v2 cannot drive
# a batching node provider. The builders put this on the head's Ray container and on the sidecar.
HEAD_ENV: tuple[Mapping[str, str], ...] = ({"name": "RAY_enable_autoscaler_v2", "value": "0"},)

# Keys Ray's validator and `StandardAutoscaler` read even when nothing is run over SSH: empty objects, empty lists.
_EMPTY_OBJECT_KEYS = ("auth", "file_mounts")
_EMPTY_LIST_KEYS = (
    "cluster_synced_files",
    "rsync_exclude",
    "rsync_filter",
    "initialization_commands",
    "setup_commands",
    "head_setup_commands",
    "worker_setup_commands",
    "head_start_ray_commands",
    "worker_start_ray_commands",
)


# -- the config producer --------------------------------------------------------------------------------------------


def build_autoscaler_config(model: ClusterModel, *, resources: Mapping[str, RayResources] | None = None) -> JSON:
    """The Ray autoscaler config (`ray up` format, `available_node_types` form) for the effective cluster.

    `resources` overrides what a group's node offers, by group name (`head` for the head): the builders pass what
    the pods they build actually get (e.g. the operator's default container resources), so that the autoscaler
    plans with the same numbers. The head's node type is named like its group (`head`).
    """
    scaling = model.autoscaling
    overrides = resources or {}
    node_types: JSON = {
        HEAD_GROUP: {
            "resources": _integer_resources(overrides.get(HEAD_GROUP, model.head.resources)),
            "node_config": {},
            "min_workers": 0,
            "max_workers": 0,
        }
    }
    for group in model.worker_groups:
        node_types[group.name] = _worker_node_type(group, overrides.get(group.name, group.resources), scaling.enabled)
    if scaling.enabled:
        max_workers = scaling.max_workers
    else:
        max_workers = sum(g.desired_workers for g in model.worker_groups)
    config: JSON = {
        "cluster_name": model.name,
        "max_workers": max_workers,
        "upscaling_speed": float(scaling.upscaling_speed),
        "idle_timeout_minutes": float(scaling.idle_timeout_minutes),
        "provider": {
            "type": "external",
            "module": PROVIDER_MODULE,
            "namespace": model.namespace,
            "ray_name": model.name,
            "api_version": f"{GROUP}/{VERSION}",
            "plural": PLURAL,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "foreground_node_launch": True,
            "worker_liveness_check": False,
        },
        "available_node_types": node_types,
        "head_node_type": HEAD_GROUP,
    }
    config.update({key: {} for key in _EMPTY_OBJECT_KEYS})
    config.update({key: [] for key in _EMPTY_LIST_KEYS})
    config["file_mounts_sync_continuously"] = False
    return config


def _worker_node_type(group: WorkerGroup, resources: RayResources, autoscaling: bool) -> JSON:
    """A worker group's node type; without autoscaling its bounds are its desired count."""
    low, high = (group.min_workers, group.max_workers) if autoscaling else (group.desired_workers,) * 2
    node_type: JSON = {
        "resources": _integer_resources(resources),
        "node_config": {},
        "min_workers": low,
        "max_workers": high,
    }
    if group.idle_timeout_seconds is not None:
        node_type["idle_timeout_s"] = float(group.idle_timeout_seconds)
    return node_type


def _integer_resources(res: RayResources) -> dict[str, int]:
    """Ray's schema wants integers: fractional custom resources are rounded down (the autoscaler then plans with
    less than the node has, never with more)."""
    out: dict[str, int] = {}
    for key, value in res.as_ray_resources().items():
        if isinstance(value, float) and not math.isfinite(value):
            continue
        out[key] = max(0, math.floor(value))
    return out


def render_autoscaler_config(model: ClusterModel) -> str:
    """The config as the YAML text the ConfigMap stores under `autoscaler.yaml` (stable key order)."""
    text: str = yaml.safe_dump(build_autoscaler_config(model), sort_keys=True, default_flow_style=False)
    return text


def validate_with_ray(config: Body) -> str | None:
    """Run Ray's own validator on `config`: None when Ray accepts it, else Ray's message (with the offending key).

    Imports `ray` lazily (the operator's image has no Ray; tests and the in-pod launcher do): raises ImportError when
    Ray is not installed.
    """
    from ray.autoscaler._private.util import validate_config

    try:
        validate_config(json.loads(json.dumps(config)))
    except Exception as e:  # Ray raises jsonschema.ValidationError, ValueError or RuntimeError
        return describe_validation_error(e)
    return None


def describe_validation_error(error: BaseException) -> str:
    """A one-line message for an error from Ray's validator: jsonschema errors name the key path, not the schema."""
    message = getattr(error, "message", None)
    if isinstance(message, str):
        path = ".".join(str(p) for p in getattr(error, "absolute_path", ()) or ())
        return f"{path}: {message}" if path else message
    return str(error) or type(error).__name__


# -- what the builders need -----------------------------------------------------------------------------------------


def autoscaler_role_rules(name: str) -> list[JSON]:
    """The least RBAC the autoscaler of the `Ray` named `name` needs, as Role rules (namespace-scoped).

    List and watch cannot be restricted by resourceNames, so pods are readable namespace-wide; the `Ray` can be read
    and patched only by name.
    """
    return [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": [GROUP], "resources": [PLURAL], "resourceNames": [name], "verbs": ["get", "patch"]},
    ]


def inpod_files() -> dict[str, str]:
    """The in-pod programs by file name, to be put verbatim into the ConfigMap `<name>-ray`."""
    package = resources.files("rayop.inpod")
    return {name: package.joinpath(name).read_text(encoding="utf-8") for name in INPOD_FILES}


@functools.lru_cache(maxsize=1)
def drain_program() -> str:
    """rayop_drain.py without its docstring and comments: the program the preStop hook runs with `python -c`
    (worker pods mount nothing of the operator's; they carry it compressed, see `drain_bootstrap`)."""
    text = resources.files("rayop.inpod").joinpath(DRAIN_FILE).read_text(encoding="utf-8")
    body = text.split('"""', 2)[2] if text.startswith('"""') else text
    lines = [line for line in body.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return "\n".join(lines) + "\n"


@functools.lru_cache(maxsize=1)
def drain_bootstrap() -> str:
    """The program text a worker pod carries (twice: its preStop hook and its restart guard): `drain_program`
    compressed, as one line that unpacks and runs it — 12 KiB of source become 5 KiB, and every worker pod is read
    and written whole by the API server, etcd and every watcher on each of its changes."""
    packed = base64.b64encode(zlib.compress(drain_program().encode(), 9)).decode()
    return (f"import base64,zlib;exec(compile(zlib.decompress(base64.b64decode('{packed}')),"
            f"'{DRAIN_FILE}','exec'))")


# The variable of a worker's Ray container that holds `drain_bootstrap()`: its preStop hook and its restart guard both
# run the program from there, so the pod carries it once (it is most of a worker pod's size).
DRAIN_PROGRAM_ENV = "RAYOP_DRAIN_PROGRAM"


def drain_args(head_address: str, deadline_seconds: float) -> list[str]:
    """The drain program's arguments: the head's GCS and how long a busy node may take."""
    return ["--address", head_address, "--deadline", f"{deadline_seconds:g}"]


def drain_command(head_address: str, deadline_seconds: float) -> list[str]:
    """The worker pods' preStop hook: drain this pod's Ray node through the GCS, wait for it (up to the deadline).
    The program comes from the container's environment (`DRAIN_PROGRAM_ENV`), which the kubelet gives exec hooks."""
    return ["/bin/sh", "-c", f'exec python -c "${DRAIN_PROGRAM_ENV}" '
            + shlex.join(drain_args(head_address, deadline_seconds))]


def monitor_command(config_path: str = CONFIG_PATH) -> list[str]:
    """The autoscaler sidecar's command (run with the head's image; PYTHONPATH from `monitor_env`)."""
    return ["python", f"{INPOD_DIR}/{MONITOR_FILE}", "--config", config_path]


def monitor_env(name: str) -> list[JSON]:
    """The autoscaler sidecar's environment: the cluster's identity from the downward API, the in-pod code on the
    Python path, autoscaler v2 off."""
    return [
        {"name": "RAY_CLUSTER_NAME", "value": name},
        {"name": "RAY_CLUSTER_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "RAY_HEAD_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "PYTHONPATH", "value": INPOD_DIR},
        *[dict(e) for e in HEAD_ENV],
    ]


def launcher_command(
    model: ClusterModel, head_address: str, timeout_seconds: int = DEFAULT_LAUNCH_TIMEOUT_SECONDS
) -> list[str]:
    """The launcher pod's command: validate the config, wait for the head's GCS at `head_address` (host or host:port)
    and for the initial workers (the groups' current desired counts) to join Ray."""
    address = head_address if ":" in head_address.rsplit("]", 1)[-1] else f"{head_address}:{GCS_PORT}"
    return [
        "python",
        f"{INPOD_DIR}/{LAUNCHER_FILE}",
        "--config",
        CONFIG_PATH,
        "--address",
        address,
        "--expect-workers",
        str(model.desired_workers),
        "--timeout",
        str(int(timeout_seconds)),
    ]


# -- what the operator reads back -----------------------------------------------------------------------------------

# Reasons the launcher reports (its `reason` field), CamelCase like condition reasons.
REASON_LAUNCHED = "Launched"
REASON_INVALID_CONFIG = "InvalidConfig"
REASON_HEAD_UNREACHABLE = "HeadUnreachable"
REASON_WORKERS_NOT_JOINED = "WorkersNotJoined"
REASON_LAUNCHER_ERROR = "LauncherError"
REASON_NO_SUMMARY = "NoSummary"


@dataclass(frozen=True)
class LaunchSummary:
    """What the launcher reported (the last line of its log, also its pod's termination message)."""

    succeeded: bool
    reason: str
    message: str
    workers_expected: int | None = None
    workers_joined: int | None = None
    ray_version: str | None = None
    elapsed_seconds: float | None = None


def parse_launch_summary(text: str | None, *, exit_code: int | None = None) -> LaunchSummary:
    """Read the launcher's one-line JSON summary from a terminated container's message (or its log).

    Takes the last line that parses as a JSON object; never raises. Without one, the exit code decides: 0 is a
    success without details, anything else a failure with reason `NoSummary`.
    """
    data: Body | None = None
    for line in reversed((text or "").strip().splitlines()):
        try:
            candidate = json.loads(line)
        except ValueError:
            continue
        if isinstance(candidate, dict):
            data = candidate
            break
    if data is None:
        if exit_code == 0:
            return LaunchSummary(True, REASON_LAUNCHED, "the launcher succeeded without a summary")
        detail = f" (exit code {exit_code})" if exit_code is not None else ""
        return LaunchSummary(False, REASON_NO_SUMMARY, f"the launcher ended without a summary{detail}")
    succeeded = data.get("succeeded")
    if not isinstance(succeeded, bool):
        succeeded = exit_code == 0
    reason = data.get("reason")
    if not isinstance(reason, str) or not reason:
        reason = REASON_LAUNCHED if succeeded else REASON_LAUNCHER_ERROR
    message = data.get("message")
    return LaunchSummary(
        succeeded=succeeded,
        reason=reason,
        message=message if isinstance(message, str) else "",
        workers_expected=_int_or_none(data.get("workersExpected")),
        workers_joined=_int_or_none(data.get("workersJoined")),
        ray_version=data.get("rayVersion") if isinstance(data.get("rayVersion"), str) else None,
        elapsed_seconds=_float_or_none(data.get("elapsedSeconds")),
    )


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _float_or_none(value: object) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None
