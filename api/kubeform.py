"""The Kubernetes-style form of a `Ray`: the structured spec fields (head, worker or workerGroups, their ray start
params, minWorkers/maxWorkers/initialWorkers, autoScalingMode, targetUtilization, idleTimeoutMinutes) as the head,
the worker groups and the autoscaling settings of the model.

Guarantees:
- Everything the CRD's schema and CEL rules check at admission is checked again here, with the same field names.
- A setting that has no effect in the chosen autoscaling mode is reported as a `ConfigWarning`, never dropped
  silently.
- Pure: no I/O, no clock, no environment.
"""

from __future__ import annotations

import re

from rayop.api.groups import SPEC_NAMES, FormResult, bounds, head_group, normalize_params, upscaling_speed, worker_group
from rayop.api.model import (DEFAULT_IDLE_TIMEOUT_MINUTES, AutoscalingSettings, ConfigurationError, ConfigWarning,
                             HeadGroup, WorkerGroup)
from rayop.api.modelcheck import Budget, check_group_name, copy_template
from rayop.api.types import (
    DEFAULT_WORKER_GROUP,
    MODE_AGGRESSIVE,
    MODE_DEFAULT,
    MODE_DISABLED,
    SIMPLE_WORKER_FIELDS,
    RaySpec,
    WorkerGroupSpec,
)

__all__ = ["from_structured"]


def from_structured(spec: RaySpec, *, name: str, warnings: list[ConfigWarning], budget: Budget) -> FormResult:
    """The head, the worker groups and the autoscaling settings a structured spec describes."""
    head = _head(spec, budget)
    if spec.worker_groups is None:
        groups = [_default_group(spec, name, budget)]
    else:
        groups = _listed_groups(spec, spec.worker_groups, name, budget)
    return FormResult(head=head, groups=groups, autoscaling=_autoscaling(spec, warnings), form="structured")


def _head(spec: RaySpec, budget: Budget) -> HeadGroup:
    template = copy_template(spec.head, "spec.head", budget)
    params = normalize_params(spec.head_ray_start_params or {}, "spec.headRayStartParams", reject_managed=True)
    return head_group(template, spec.image, params, ("spec.headRayStartParams", "spec.head"))


def _default_group(spec: RaySpec, name: str, budget: Budget) -> WorkerGroup:
    """The single `worker` group of spec.worker, spec.workerRayStartParams and the spec's worker counts."""
    check_group_name(name, DEFAULT_WORKER_GROUP, "metadata.name")
    fields = WorkerGroupSpec(
        name=DEFAULT_WORKER_GROUP,
        template=spec.worker,
        min_workers=spec.min_workers,
        max_workers=spec.max_workers,
        initial_workers=spec.initial_workers,
        ray_start_params=spec.worker_ray_start_params,
    )
    return _group(fields, ("spec.", "spec.workerRayStartParams", "spec.worker"), spec.image, budget)


def _listed_groups(
    spec: RaySpec, listed: tuple[WorkerGroupSpec, ...], name: str, budget: Budget
) -> list[WorkerGroup]:
    for key in SIMPLE_WORKER_FIELDS:
        if getattr(spec, _python_name(key)) is not None:
            raise ConfigurationError(
                "cannot be combined with spec.workerGroups: set it on each worker group instead",
                field=f"spec.{key}",
            )
    groups = []
    for i, g in enumerate(listed):
        path = f"spec.workerGroups[{i}]"
        check_group_name(name, g.name, f"{path}.name")
        groups.append(_group(g, (f"{path}.", f"{path}.rayStartParams", f"{path}.template"), spec.image, budget))
    return groups


def _group(g: WorkerGroupSpec, paths: tuple[str, str, str], image: str | None, budget: Budget) -> WorkerGroup:
    """One worker group; `paths`: the prefix of its counts' fields, its start params' and its template's path."""
    counts_prefix, params_path, template_path = paths
    template = copy_template(g.template, template_path, budget)
    params = normalize_params(g.ray_start_params or {}, params_path, reject_managed=True)
    counts = bounds(g.min_workers, g.max_workers, g.initial_workers, counts_prefix, SPEC_NAMES)
    return worker_group(g.name, template, image, params, (params_path, template_path), counts)


def _autoscaling(spec: RaySpec, warnings: list[ConfigWarning]) -> AutoscalingSettings:
    mode = spec.auto_scaling_mode or MODE_DEFAULT
    fraction = spec.target_utilization / 100.0 if spec.target_utilization is not None else None
    if mode == MODE_AGGRESSIVE and spec.target_utilization is not None:
        warnings.append(ConfigWarning("spec.targetUtilization", "has no effect with autoScalingMode 'aggressive'"))
    if mode == MODE_DISABLED:
        for key, value in (
            ("targetUtilization", spec.target_utilization),
            ("idleTimeoutMinutes", spec.idle_timeout_minutes),
        ):
            if value is not None:
                warnings.append(ConfigWarning(f"spec.{key}", "has no effect with autoScalingMode 'disabled'"))
    return AutoscalingSettings(
        enabled=mode != MODE_DISABLED,
        upscaling_speed=upscaling_speed(mode, fraction),
        idle_timeout_minutes=float(spec.idle_timeout_minutes)
        if spec.idle_timeout_minutes is not None
        else DEFAULT_IDLE_TIMEOUT_MINUTES,
        max_workers=-1,
    )


def _python_name(json_name: str) -> str:
    return re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), json_name)
