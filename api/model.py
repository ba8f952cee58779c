"""The effective cluster model: what a `Ray` means, whichever way it was configured.

Guarantees:
- Both ways of configuring a `Ray` (structured fields, or a cluster-launcher `configuration`) are converted by
  `rayop.api.convert.effective_cluster` into one `ClusterModel`; builders, the planner and the status computation
  work on this model only and never look at the two forms.
- A `ClusterModel` is always valid: 0 <= min_workers <= desired_workers <= max_workers for every group, group names
  are distinct DNS labels other than "head", and every child name (`<name>-head-<5>`, `<name>-<group>-<5>`) fits in
  63 characters.
- Pod templates are deep copies holding only JSON values (dict, list, str, int, float, bool, None) and never alias
  the input object; treat them, like every mapping here, as read-only and deep-copy before editing.
- `template is None` means "no template given": the builders use the operator's default Ray container, with `image`
  when it is set.
- Frozen dataclasses; equality is structural, so two configurations that mean the same cluster compare equal.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rayop.api.types import DEFAULT_WORKER_GROUP, HEAD_GROUP

__all__ = [
    "HEAD_GROUP",
    "DEFAULT_WORKER_GROUP",
    "AGGRESSIVE_UPSCALING_SPEED",
    "DEFAULT_UPSCALING_SPEED",
    "DEFAULT_IDLE_TIMEOUT_MINUTES",
    "ConfigurationError",
    "ConfigWarning",
    "RayResources",
    "HeadGroup",
    "WorkerGroup",
    "AutoscalingSettings",
    "ClusterModel",
    "Conversion",
    "DeclaredService",
    "GcsFaultTolerance",
]

AGGRESSIVE_UPSCALING_SPEED = 99999.0
DEFAULT_UPSCALING_SPEED = 1.0
DEFAULT_IDLE_TIMEOUT_MINUTES = 5.0


class ConfigurationError(ValueError):
    """The `Ray` cannot be turned into a cluster. The only exception the conversion raises.

    `field` names the offending field (`spec.minWorkers`, `spec.configuration.available_node_types.gpu.max_workers`);
    `line` and `column` (1-based) locate a YAML error inside `spec.configuration`.
    """

    def __init__(self, message: str, *, field: str | None = None, line: int | None = None, column: int | None = None):
        self.message = message
        self.field = field
        self.line = line
        self.column = column
        super().__init__(self.describe())

    def describe(self) -> str:
        where = self.field or ""
        if self.line is not None:
            where += f" (line {self.line}, column {self.column})" if self.column is not None else f" (line {self.line})"
        return f"{where.strip()}: {self.message}" if where else self.message


@dataclass(frozen=True)
class ConfigWarning:
    """A key of the `Ray` that the operator does not honour, and why."""

    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}"


@dataclass(frozen=True)
class RayResources:
    """What one Ray node of a group offers, as the autoscaler sees it.

    Taken from the ray start params (num-cpus, num-gpus, memory, resources) first, else from the Ray container's
    limits (then requests): CPU rounded up, GPUs from any `*/gpu` resource, memory in bytes. None means unknown
    (Ray detects it when the node starts; the autoscaler cannot plan with it).
    """

    cpu: int | None = None
    gpu: int | None = None
    memory: int | None = None
    custom: Mapping[str, float] = field(default_factory=dict)

    def as_ray_resources(self) -> dict[str, float]:
        """The `resources` map of a Ray node type: CPU, GPU, memory and custom resources that are known."""
        out: dict[str, float] = {}
        if self.cpu is not None:
            out["CPU"] = self.cpu
        if self.gpu is not None:
            out["GPU"] = self.gpu
        if self.memory is not None:
            out["memory"] = self.memory
        out.update(self.custom)
        return out


@dataclass(frozen=True)
class HeadGroup:
    """The head pod: exactly one, always."""

    template: Mapping[str, Any] | None
    image: str | None
    ray_start_params: Mapping[str, str]
    resources: RayResources
    setup_commands: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return HEAD_GROUP


@dataclass(frozen=True)
class WorkerGroup:
    """A group of identical worker pods; its name is also its Ray node type in the autoscaler config."""

    name: str
    template: Mapping[str, Any] | None
    image: str | None
    ray_start_params: Mapping[str, str]
    resources: RayResources
    min_workers: int
    max_workers: int
    # clamp(spec.desiredWorkers[name] if present else initial_workers, min_workers, max_workers)
    desired_workers: int
    initial_workers: int
    setup_commands: tuple[str, ...] = ()
    # A per-group idle timeout (available_node_types' idle_timeout_s); None means the cluster-wide one.
    idle_timeout_seconds: float | None = None
    # Rolling-update bounds (spec.rollingUpdate / workerGroups[].rollingUpdate); None: the operator's defaults.
    max_surge: int | None = None
    max_unavailable: int | None = None


@dataclass(frozen=True)
class AutoscalingSettings:
    """How the Ray autoscaler runs for this cluster."""

    # False: no autoscaler sidecar; each group runs desired_workers pods. True only when the mode is not
    # 'disabled' and some group can actually change size (min_workers < max_workers).
    enabled: bool
    upscaling_speed: float = DEFAULT_UPSCALING_SPEED
    idle_timeout_minutes: float = DEFAULT_IDLE_TIMEOUT_MINUTES
    # The cluster-wide cap on worker pods (Ray's top-level max_workers): never above the sum of group maxima.
    max_workers: int = 0


@dataclass(frozen=True)
class DeclaredService:
    """A Service the configuration declares (`provider.services`), created as a child of the `Ray`.

    `selector` is the configuration's own selector (labels of the pod templates it means); the builders add the
    cluster's labels so it never selects another cluster's pods. `targets` names the groups (`head` included) whose
    pod templates carry those labels. `spec` is the rest of the Service spec (ports, type, ...), a JSON-only copy.
    """

    name: str
    selector: Mapping[str, str]
    targets: tuple[str, ...]
    spec: Mapping[str, Any]
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class GcsFaultTolerance:
    """The head's GCS keeps its state in an external Redis (spec.gcsFaultTolerance), validated.

    `password_secret` is (Secret name, key) or None for a Redis without a password. `storage_namespace` None means
    the default, the Ray's UID (the builders know it; the model is built without one for `rayop render`).
    """

    redis_host: str
    redis_port: int
    password_secret: tuple[str, str] | None = None
    storage_namespace: str | None = None

    @property
    def redis_address(self) -> str:
        return f"{self.redis_host}:{self.redis_port}"


@dataclass(frozen=True)
class ClusterModel:
    """The effective Ray cluster: a head, worker groups and autoscaling settings."""

    name: str
    namespace: str
    head: HeadGroup
    worker_groups: tuple[WorkerGroup, ...]
    autoscaling: AutoscalingSettings
    # Worker pods the autoscaler asked to remove (spec.workersToDelete), in its order.
    workers_to_delete: tuple[str, ...] = ()
    # The cluster-wide default image (spec.image), also used by groups whose template names none.
    image: str | None = None
    # Services the configuration declares (provider.services), besides the operator's own head Service.
    services: tuple[DeclaredService, ...] = ()
    # GCS fault tolerance (spec.gcsFaultTolerance); None: the GCS keeps its state in the head's memory.
    gcs_fault_tolerance: GcsFaultTolerance | None = None

    def group(self, name: str) -> WorkerGroup | None:
        for g in self.worker_groups:
            if g.name == name:
                return g
        return None

    @property
    def desired_workers(self) -> int:
        return sum(g.desired_workers for g in self.worker_groups)


@dataclass(frozen=True)
class Conversion:
    """The result of converting a `Ray`: the model and what was not honoured."""

    cluster: ClusterModel
    warnings: tuple[ConfigWarning, ...] = ()
    # What the operator honours differently from `ray up` (a keep-alive command replaced by the start commands, a
    # ServiceAccount pointed elsewhere, a legacy flag renamed): nothing is lost, but the user should know.
    notes: tuple[ConfigWarning, ...] = ()
    # "structured", "legacy" (Ray 0.8 head_node/worker_nodes configuration) or "available_node_types".
    form: str = "structured"
