"""The `Ray` custom resource (ray.k8s.io/v1alpha1) as typed, frozen dataclasses.

Guarantees:
- Every field of the proposal's `RaySpec`, `RayStatus` and `ReplicaStatus` is here under its JSON name and meaning;
  the extensions (explicit worker groups, ray start parameters, autoscaler-owned fields, a default image, per-group
  status) are documented on the field.
- Each field is declared once (`prop`): the CRD schema in `rayop.api.crd` is generated from these declarations and
  `Ray.from_dict` / `RayStatus.to_dict` use the same ones, so the schema and the code cannot drift apart.
- Pod templates are plain dicts kept as given: the API server does not validate them and neither does this module.
- Pure: no I/O, no clock, no environment, no Kubernetes client.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rayop.api.schema import decode, encode, prop

GROUP = "ray.k8s.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "Ray"
LIST_KIND = "RayList"
PLURAL = "rays"
SINGULAR = "ray"
SHORT_NAMES = ("rayc",)
# The categories of both kinds, `Ray` and `RayJob`.
CATEGORIES = ("all", "rayop")

# Name of the head group and of the worker group the simple (single `worker` template) path creates.
HEAD_GROUP = "head"
DEFAULT_WORKER_GROUP = "worker"

# Child names: `<name>-head-<5>` and `<name>-<group>-<5>` must fit in 63 characters (hostname, label value).
# The head's fixed ports (the GCS, Ray's dashboard and job API); the one definition, both layers use it.
GCS_PORT = 6379
DASHBOARD_PORT = 8265

NAME_LIMIT = 63
POD_SUFFIX = 6  # "-" + 5 random characters
MAX_NAME_LENGTH = NAME_LIMIT - POD_SUFFIX - len("-" + HEAD_GROUP)  # 52
MAX_NAME_PLUS_GROUP_LENGTH = NAME_LIMIT - POD_SUFFIX - 1  # 56: len(name) + len(group)
MAX_GROUP_NAME_LENGTH = MAX_NAME_PLUS_GROUP_LENGTH - 1  # 55: leaves at least one character for the Ray's name
MAX_WORKER_GROUPS = 32
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_1035_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# A Secret's data key (as Kubernetes validates it).
SECRET_KEY = r"^[-._a-zA-Z0-9]+$"
# host:port of an external Redis: a DNS name or IPv4 address, or a bracketed IPv6 address; the port is checked for
# its range by the conversion.
REDIS_ADDRESS = (r"^([A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?(\.[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?)*"
                 r"|\[[0-9A-Fa-f:.]+\]):[0-9]{1,5}$")
STORAGE_NAMESPACE = r"^[-_.:a-zA-Z0-9]+$"

# `ray start` flags the operator sets itself; users may not set them in rayStartParams.
MANAGED_START_PARAMS = (
    "head",
    "address",
    "block",
    "autoscaling-config",
    "no-monitor",
    "port",
    "redis-port",
    "redis-address",
    "node-ip-address",
)

# Scaling modes (`spec.autoScalingMode`).
MODE_DEFAULT = "default"
MODE_AGGRESSIVE = "aggressive"
MODE_DISABLED = "disabled"
SCALING_MODES = (MODE_DEFAULT, MODE_AGGRESSIVE, MODE_DISABLED)

# Condition types the operator sets on `status.conditions`.
CONDITION_READY = "Ready"
CONDITION_HEAD_READY = "HeadReady"
CONDITION_WORKERS_READY = "WorkersReady"
CONDITION_SUCCESSFUL_LAUNCH = "SuccessfulLaunch"
CONDITION_CONFIGURATION_VALID = "ConfigurationValid"
CONDITION_TYPES = (
    CONDITION_READY,
    CONDITION_HEAD_READY,
    CONDITION_WORKERS_READY,
    CONDITION_SUCCESSFUL_LAUNCH,
    CONDITION_CONFIGURATION_VALID,
)

PodTemplate = Mapping[str, Any]

_POD_TEMPLATE_DOC = (
    "A pod template (metadata and spec, as in a Deployment's spec.template). The first container runs Ray. It is "
    "kept as given: the API server does not validate it, the operator reports invalid pod fields when it creates "
    "pods. When omitted, the operator uses its default Ray container."
)
_START_PARAMS_DOC = (
    "Keys are flag names without the leading dashes, values their values as strings, e.g. "
    '{num-cpus: "2", object-store-memory: "100000000"}; an empty value renders a bare flag. num-cpus, num-gpus, memory and resources (a JSON object '
    "of custom resources) also tell the autoscaler what a node offers. The operator sets "
    + ", ".join(MANAGED_START_PARAMS)
    + " itself."
)


def _start_params(json: str, whose: str, field: str) -> Any:
    """A map of extra `ray start` flags (`whose`: which pods they are for), which must not set the operator's own
    flags (`field` names the map in the CEL message)."""
    rule = " && ".join(f"!('{k}' in self)" for k in MANAGED_START_PARAMS)
    message = f"{field} must not set {', '.join(MANAGED_START_PARAMS)}: the operator sets these ray start flags"
    return prop(
        json,
        f"Extra `ray start` flags for {whose}. " + _START_PARAMS_DOC,
        int_or_string=True,
        max_properties=64,
        rules=((rule, message),),
    )


def conditions_field(types: tuple[str, ...], max_items: int) -> Any:
    """`status.conditions` of a kind whose condition types are `types` (the `Ray` kind's and the `RayJob` kind's)."""
    return prop(
        "conditions",
        "The current observed conditions: " + ", ".join(types) + ".",
        max_items=max_items,
        list_type="map",
        list_map_keys=("type",),
    )


def _count(json: str, doc: str, **kwargs: Any) -> Any:
    return prop(json, doc, minimum=0, **kwargs)


@dataclass(frozen=True)
class RollingUpdateSpec:
    """How a worker group's pods are replaced when its template changes (per group, one group at a time)."""

    max_surge: int | None = _count(
        "maxSurge",
        "Pods the group may run above its desired count while it rolls. Defaults to 1 (the operator's "
        "default).",
    )
    max_unavailable: int | None = _count(
        "maxUnavailable",
        "Ready pods the group may lack below its desired count while it rolls: outdated ready pods are deleted "
        "while the ready pods stay at or above desired - maxUnavailable. Defaults to 0.",
    )


@dataclass(frozen=True)
class WorkerGroupSpec:
    """One explicitly named group of identical worker pods."""

    name: str = prop(
        "name",
        "The group's name, a DNS label: worker pods are named <ray name>-<group name>-<5 characters>, so the Ray's "
        "name and the group's name together may have at most 56 characters. 'head' is reserved.",
        required=True,
        pattern=DNS_LABEL,
        min_length=1,
        max_length=MAX_GROUP_NAME_LENGTH,
        rules=(("self != 'head'", "spec.workerGroups[].name must not be 'head': it is reserved for the head group"),),
    )
    template: PodTemplate | None = prop("template", _POD_TEMPLATE_DOC, preserve_unknown=True)
    min_workers: int | None = _count(
        "minWorkers", "The fewest worker pods this group keeps, even when idle. Defaults to 0.", default=0
    )
    max_workers: int | None = _count(
        "maxWorkers",
        "The most worker pods the autoscaler may run in this group. Defaults to max(minWorkers, initialWorkers).",
    )
    initial_workers: int | None = _count(
        "initialWorkers",
        "How many worker pods the group starts with; must lie within [minWorkers, maxWorkers]. Defaults to "
        "minWorkers. With autoscaling disabled it is the fixed size of the group.",
    )
    ray_start_params: Mapping[str, str] | None = _start_params(
        "rayStartParams", "this group's pods", "spec.workerGroups[].rayStartParams"
    )
    rolling_update: RollingUpdateSpec | None = prop(
        "rollingUpdate", "This group's surge and unavailability bounds; overrides spec.rollingUpdate."
    )


@dataclass(frozen=True)
class SecretKeySelector:
    """One key of a Secret in the Ray's namespace."""

    name: str = prop("name", "The Secret's name (in the Ray's namespace).", required=True, min_length=1,
                     max_length=253, rules=((f"self.matches(r'{DNS_SUBDOMAIN}')",
                                             "secretKeyRef.name must be a Secret's name (a DNS subdomain)"),))
    key: str = prop("key", "The key in the Secret's data.", required=True, min_length=1, max_length=253,
                    rules=((f"self.matches(r'{SECRET_KEY}')", "secretKeyRef.key must be a Secret key: letters, "
                                                             "digits, '-', '_' and '.'"),))


@dataclass(frozen=True)
class RedisPassword:
    """Where the external Redis's password is: never in the `Ray`, only a reference to a Secret."""

    secret_key_ref: SecretKeySelector = prop(
        "secretKeyRef", "The Secret key holding the password; the head reads it as an environment variable.",
        required=True,
    )


@dataclass(frozen=True)
class GcsFaultToleranceSpec:
    """GCS fault tolerance: the head's GCS keeps the cluster's state in an external Redis, so a head that crashes
    or is re-created comes back with the cluster's state (nodes, detached actors, jobs, placement groups) and the
    workers, which wait for it, rejoin."""

    redis_address: str = prop(
        "redisAddress",
        "The external Redis as host:port (a DNS name, an IPv4 address or a bracketed IPv6 address, and a port "
        "1-65535), e.g. redis.redis.svc.cluster.local:6379.",
        required=True,
        min_length=3,
        max_length=261,
        rules=((f"self.matches(r'{REDIS_ADDRESS}')",
                "spec.gcsFaultTolerance.redisAddress must be host:port (a DNS name, an IPv4 address or a bracketed "
                "IPv6 address, then a port)"),),
    )
    redis_password: RedisPassword | None = prop(
        "redisPassword", "The Redis password, from a Secret. Omit it for a Redis without a password."
    )
    external_storage_namespace: str | None = prop(
        "externalStorageNamespace",
        "The key prefix of this cluster's state in Redis. Defaults to the Ray's UID (unique and stable per "
        "cluster: two clusters never share keys, a re-created Ray of the same name starts afresh). Set it to "
        "keep a cluster's state across a re-created Ray; two live clusters must never share one.",
        min_length=1,
        max_length=128,
        rules=((f"self.matches(r'{STORAGE_NAMESPACE}')",
                "spec.gcsFaultTolerance.externalStorageNamespace may hold letters, digits, '-', '_', '.' and ':'"),),
    )


# Which spec fields describe the cluster's shape; they conflict with `configuration` (which describes it too).
SHAPE_FIELDS = (
    "minWorkers",
    "maxWorkers",
    "initialWorkers",
    "autoScalingMode",
    "targetUtilization",
    "idleTimeoutMinutes",
    "head",
    "worker",
    "headRayStartParams",
    "workerRayStartParams",
    "workerGroups",
)
# Which spec fields describe the single `worker` group; they conflict with `workerGroups`.
SIMPLE_WORKER_FIELDS = ("minWorkers", "maxWorkers", "initialWorkers", "worker", "workerRayStartParams")


@dataclass(frozen=True)
class RaySpec:
    """The desired state of a Ray cluster. Configure it either with the structured fields (Kubernetes style) or
    with `configuration` (a Ray cluster-launcher YAML); `image`, `desiredWorkers` and `workersToDelete` work with
    both."""

    min_workers: int | None = _count(
        "minWorkers",
        "The fewest worker pods of the `worker` group, in addition to the head. Defaults to 0.",
    )
    max_workers: int | None = _count(
        "maxWorkers",
        "The most worker pods of the `worker` group the autoscaler may run. Defaults to max(minWorkers, "
        "initialWorkers).",
    )
    initial_workers: int | None = _count(
        "initialWorkers",
        "How many worker pods the `worker` group starts with; must lie within [minWorkers, maxWorkers]. Defaults "
        "to minWorkers.",
    )
    auto_scaling_mode: str | None = prop(
        "autoScalingMode",
        "How the Ray autoscaler scales up: 'default' (upscaling speed 1, or derived from targetUtilization), "
        "'aggressive' (launch everything the demand needs at once: upscaling speed 99999) or 'disabled' (no "
        "autoscaler: a static cluster of initialWorkers per group). Defaults to 'default'.",
        enum=SCALING_MODES,
    )
    target_utilization: int | None = prop(
        "targetUtilization",
        "Target resource utilization in percent (1-100) in 'default' mode; it sets the autoscaler's upscaling "
        "speed to 100/targetUtilization - 1 (80 -> 0.25).",
        minimum=1,
        maximum=100,
    )
    idle_timeout_minutes: int | None = _count(
        "idleTimeoutMinutes",
        "Minutes a worker must be idle before the autoscaler removes it. Defaults to 5.",
    )
    head: PodTemplate | None = prop("head", "The head pod's template. " + _POD_TEMPLATE_DOC, preserve_unknown=True)
    worker: PodTemplate | None = prop(
        "worker",
        "The template of the worker pods of the single `worker` group (the simple path; see workerGroups for "
        "several groups). " + _POD_TEMPLATE_DOC,
        preserve_unknown=True,
    )
    configuration: str | None = prop(
        "configuration",
        "A Ray cluster-launcher configuration (YAML), as written for `ray up`: either the legacy Kubernetes format "
        "(head_node, worker_nodes, min_workers, max_workers, initial_workers, autoscaling_mode, "
        "target_utilization_fraction, idle_timeout_minutes, provider) or the available_node_types format. Keys the "
        "operator cannot honour are reported in the ConfigurationValid condition and as Warning events. Cannot be "
        "combined with the structured fields that describe the cluster's shape.",
    )
    image: str | None = prop(
        "image",
        "The Ray image for every container that names none (and for the operator's default containers). When "
        "unset, the operator's default Ray image is used.",
        min_length=1,
    )
    head_ray_start_params: Mapping[str, str] | None = _start_params(
        "headRayStartParams", "the head", "spec.headRayStartParams"
    )
    worker_ray_start_params: Mapping[str, str] | None = _start_params(
        "workerRayStartParams", "the `worker` group", "spec.workerRayStartParams"
    )
    worker_groups: tuple[WorkerGroupSpec, ...] | None = prop(
        "workerGroups",
        "Several named worker groups, each with its own template, bounds and ray start flags. Replaces the single "
        "`worker` group: cannot be combined with worker, minWorkers, maxWorkers, initialWorkers or "
        "workerRayStartParams.",
        max_items=MAX_WORKER_GROUPS,
        list_type="map",
        list_map_keys=("name",),
    )
    desired_workers: Mapping[str, int] | None = prop(
        "desiredWorkers",
        "Owned by the autoscaler while autoscaling is on: the desired number of worker pods per group name. The "
        "operator runs clamp(desiredWorkers[group] or initialWorkers, minWorkers, maxWorkers) pods per group. With "
        "autoscaling disabled, users may set it to resize a group.",
        item_minimum=0,
        max_properties=MAX_WORKER_GROUPS,
    )
    workers_to_delete: tuple[str, ...] | None = prop(
        "workersToDelete",
        "Owned by the autoscaler: names of worker pods to delete (idle nodes it drained). The operator deletes them "
        "before it resizes groups; the autoscaler clears the list once they are gone.",
        max_items=1000,
        item_max_length=253,
        list_type="set",
    )
    rolling_update: RollingUpdateSpec | None = prop(
        "rollingUpdate",
        "Surge and unavailability bounds of every worker group's rolling update (a group's own rollingUpdate "
        "wins). Works with both forms.",
    )
    suspend: bool | None = prop(
        "suspend",
        "Suspends the cluster (what Kueue and other queueing systems set): true deletes the cluster's pods, "
        "workers first, each draining its Ray node, then the head; the Ray, its Service, ConfigMap and RBAC stay. "
        "false (or unset) brings the cluster back with its configuration.",
    )

    gcs_fault_tolerance: GcsFaultToleranceSpec | None = prop(
        "gcsFaultTolerance",
        "GCS fault tolerance with an external Redis: the head keeps the cluster's state there and survives a "
        "crash or re-creation; deleting the Ray runs a clean-up Job that deletes the cluster's keys from Redis "
        "(the finalizer ray.k8s.io/gcs-cleanup holds the deletion until it ends, within a deadline). Works with "
        "both forms.",
    )


@dataclass(frozen=True)
class ReplicaStatus:
    """Pod counts of one kind of pod (launcher, head or workers)."""

    replicas: int | None = prop(
        "replicas", "Non-terminated pods of this kind (their labels match the selector).", minimum=0
    )
    updated_replicas: int | None = prop(
        "updatedReplicas", "Non-terminated pods of this kind that have the desired template.", minimum=0
    )
    ready_replicas: int | None = prop("readyReplicas", "Ready pods of this kind.", minimum=0)
    available_replicas: int | None = prop(
        "availableReplicas", "Pods of this kind that are available (ready for at least minReadySeconds).", minimum=0
    )
    unavailable_replicas: int | None = prop(
        "unavailableReplicas",
        "Pods still required for 100% available capacity: running but not yet available, or not yet created.",
        minimum=0,
    )


@dataclass(frozen=True)
class WorkerGroupStatus:
    """Pod counts of one worker group."""

    name: str = prop("name", "The worker group's name.", required=True)
    desired_workers: int | None = prop("desiredWorkers", "Worker pods the group should have now.", minimum=0)
    min_workers: int | None = prop("minWorkers", "The group's effective minimum.", minimum=0)
    max_workers: int | None = prop("maxWorkers", "The group's effective maximum.", minimum=0)
    replicas: int | None = prop("replicas", "Non-terminated worker pods of the group.", minimum=0)
    updated_replicas: int | None = prop(
        "updatedReplicas", "Non-terminated worker pods of the group that have the desired template.", minimum=0
    )
    ready_replicas: int | None = prop("readyReplicas", "Ready worker pods of the group.", minimum=0)
    available_replicas: int | None = prop("availableReplicas", "Available worker pods of the group.", minimum=0)
    unavailable_replicas: int | None = prop(
        "unavailableReplicas", "Worker pods of the group still missing for full capacity.", minimum=0
    )


@dataclass(frozen=True)
class RayCondition:
    """One observed aspect of the cluster, in the usual Kubernetes condition shape."""

    type: str = prop(
        "type",
        "The condition's type: " + ", ".join(CONDITION_TYPES) + ".",
        required=True,
        max_length=316,
        min_length=1,
    )
    status: str = prop("status", "True, False or Unknown.", required=True, enum=("True", "False", "Unknown"))
    reason: str | None = prop("reason", "A CamelCase reason for the last transition.", max_length=1024)
    message: str | None = prop("message", "A human-readable explanation.", max_length=32768)
    observed_generation: int | None = prop(
        "observedGeneration", "The metadata.generation this condition was computed for.", minimum=0, int32=False
    )
    last_transition_time: str | None = prop(
        "lastTransitionTime", "When the status last changed (RFC 3339, UTC).", format="date-time"
    )
    last_probe_time: str | None = prop(
        "lastProbeTime", "When the condition was last probed (RFC 3339, UTC).", format="date-time"
    )


@dataclass(frozen=True)
class RayStatus:
    """The observed state of a Ray cluster, written by the operator through the /status subresource."""

    launcher: ReplicaStatus | None = prop(
        "launcher", "Pod counts of the current launch's launcher pod, which validates the configuration and waits for "
        "the cluster."
    )
    head: ReplicaStatus | None = prop("head", "Pod counts of the head.")
    worker: ReplicaStatus | None = prop("worker", "Pod counts of all worker pods, over every group.")
    worker_groups: tuple[WorkerGroupStatus, ...] | None = prop(
        "workerGroups",
        "Pod counts per worker group.",
        max_items=MAX_WORKER_GROUPS * 2,
        list_type="map",
        list_map_keys=("name",),
    )
    desired_workers: int | None = prop(
        "desiredWorkers", "Worker pods the cluster should have now, over every group.", minimum=0
    )
    conditions: tuple[RayCondition, ...] | None = conditions_field(CONDITION_TYPES, max_items=32)
    start_time: str | None = prop(
        "startTime",
        "When the operator first acknowledged this Ray (RFC 3339, UTC); not guaranteed to be ordered across "
        "separate operations.",
        format="date-time",
    )
    observed_generation: int | None = prop(
        "observedGeneration", "The metadata.generation the operator last acted on.", minimum=0, int32=False
    )
    last_reconcile_time: str | None = prop(
        "lastReconcileTime",
        "When the operator last reconciled this Ray (RFC 3339, UTC); not guaranteed to be ordered across separate "
        "operations.",
        format="date-time",
    )
    head_pod_name: str | None = prop("headPodName", "The name of the current head pod.")
    head_pod_ip: str | None = prop("headPodIP", "The head pod's IP address.")
    head_service_name: str | None = prop(
        "headServiceName", "The Service in front of the head (GCS, dashboard, client, metrics ports)."
    )
    endpoints: Mapping[str, str] | None = prop(
        "endpoints",
        "Addresses of the head's services by port name, e.g. gcs: <service>:6379, dashboard: http://<service>:8265.",
        max_properties=16,
    )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, path: str = "status") -> RayStatus:
        return decode(cls, data or {}, path)

    def to_dict(self) -> dict[str, Any]:
        result: dict[str, Any] = encode(self)
        return result


@dataclass(frozen=True)
class Ray:
    """A Ray cluster: one head pod, worker pods in groups, optionally scaled by the Ray autoscaler."""

    api_version: str | None = prop("apiVersion", "ray.k8s.io/v1alpha1.")
    kind: str | None = prop("kind", "Ray.")
    metadata: Mapping[str, Any] | None = prop("metadata", "Standard object metadata.")
    spec: RaySpec | None = prop("spec", "The desired state of the Ray cluster.", default=RaySpec())
    status: RayStatus | None = prop("status", "The observed state of the Ray cluster, written by the operator.")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Ray:
        """Decode a `Ray` object as returned by the API server; raise `DecodeError` naming a bad field."""
        return decode(cls, data, "")

    @property
    def name(self) -> str:
        return str((self.metadata or {}).get("name") or "")

    @property
    def namespace(self) -> str:
        return str((self.metadata or {}).get("namespace") or "")
