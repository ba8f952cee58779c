"""The parts of the head and worker groups both forms of a `Ray` build alike: ray start params, what a node offers
(`RayResources`), worker counts, the upscaling speed, and the groups themselves.

Guarantees:
- `resources(...)` takes the ray start params first (num-cpus, num-gpus, memory, resources), else the Ray
  container's limits, then requests; errors name the param or the quantity.
- `bounds(...)` gives (min, max, initial) with the documented defaults; `initial` outside [min, max] is an error
  unless the conversion runs `clamping_initial(True)` (a `Ray` updated since its creation), when it is kept for the
  final clamp.
- Pure: no I/O, no clock, no environment.
"""

from __future__ import annotations

import contextvars
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple

from rayop.api.model import (
    AGGRESSIVE_UPSCALING_SPEED,
    DEFAULT_UPSCALING_SPEED,
    AutoscalingSettings,
    ConfigurationError,
    DeclaredService,
    HeadGroup,
    RayResources,
    WorkerGroup,
)
from rayop.api.modelcheck import finite_number, first_container, short, template_image
from rayop.api.quantity import parse_quantity
from rayop.api.types import MANAGED_START_PARAMS, MODE_AGGRESSIVE

__all__ = [
    "SPEC_NAMES",
    "CONFIG_NAMES",
    "Counts",
    "FormResult",
    "bounds",
    "check_port",
    "clamping_initial",
    "head_group",
    "normalize_params",
    "resources",
    "upscaling_speed",
    "worker_group",
]

# The names of the (min, max, initial) worker counts in each form, for messages.
SPEC_NAMES = ("minWorkers", "maxWorkers", "initialWorkers")
CONFIG_NAMES = ("min_workers", "max_workers", "initial_workers")

# True while converting a `Ray` that was updated since its creation: `initialWorkers` is then clamped, not checked.
_CLAMP_INITIAL: contextvars.ContextVar[bool] = contextvars.ContextVar("clamp_initial", default=False)


@contextmanager
def clamping_initial(updated: bool) -> Iterator[None]:
    """Within the block, `bounds` keeps an initial count outside [min, max] (for the final clamp) when `updated`."""
    token = _CLAMP_INITIAL.set(updated)
    try:
        yield
    finally:
        _CLAMP_INITIAL.reset(token)


class Counts(NamedTuple):
    """A worker group's bounds and the count it starts with."""

    low: int
    high: int
    start: int


@dataclass(frozen=True)
class FormResult:
    """What one form of the spec describes, before the fields both forms share are applied."""

    head: HeadGroup
    groups: list[WorkerGroup]
    autoscaling: AutoscalingSettings
    # "structured", "legacy" or "available_node_types" (`Conversion.form`).
    form: str
    services: tuple[DeclaredService, ...] = ()


# -- ray start params -------------------------------------------------------------------------------------------------


def normalize_params(params: Mapping[str, str], path: str, *, reject_managed: bool) -> dict[str, str]:
    """Flag names without their dashes; port flags checked; with `reject_managed`, the operator's own flags refused."""
    out: dict[str, str] = {}
    for key, value in params.items():
        flag = key.lstrip("-")
        if not flag:
            raise ConfigurationError(f"{short(key)} is not a flag name", field=path)
        if reject_managed and flag in MANAGED_START_PARAMS:
            raise ConfigurationError(f"{short(flag)} is set by the operator and cannot be given", field=f"{path}.{key}")
        check_port(flag, value, f"{path}.{key}")
        out[flag] = value
    return out


def check_port(flag: str, value: str, where: str) -> None:
    """A `--*-port` flag's value must be a port number: the builders put it into the pod's container ports."""
    if not flag.endswith("-port"):
        return
    text = str(value).strip()
    if not (text.isascii() and text.isdigit()) or int(text) > 65535:
        raise ConfigurationError(f"{short(text)} is not a port number (0-65535)", field=where)


def _int_param(params: Mapping[str, str], key: str, path: str) -> int | None:
    if key not in params:
        return None
    text = params[key].strip()
    try:
        value = parse_quantity(text)
    except ValueError:
        raise ConfigurationError(f"{short(text)} is not a number", field=f"{path}.{key}") from None
    if value < 0 or value != int(value):
        raise ConfigurationError(f"{short(text)} must be a non-negative whole number", field=f"{path}.{key}")
    if value > 2**63:
        raise ConfigurationError(f"{short(text)} is too large", field=f"{path}.{key}")
    return int(value)


def _custom_resources(params: Mapping[str, str], path: str) -> dict[str, float]:
    if "resources" not in params:
        return {}
    text = params["resources"].strip()
    # Accept a JSON object, also when wrapped in one more pair of quotes ('"{\"a\": 1}"').
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        inner = text[1:-1]
        if inner.lstrip().startswith("{"):
            text = inner.replace('\\"', '"')
    try:
        decoded = json.loads(text)
    except (ValueError, RecursionError):
        raise ConfigurationError(
            'must be a JSON object of custom resources, e.g. {"tpu": 4}', field=f"{path}.resources"
        ) from None
    if not isinstance(decoded, dict):
        raise ConfigurationError("must be a JSON object of custom resources", field=f"{path}.resources")
    out: dict[str, float] = {}
    for key, value in decoded.items():
        if key in ("CPU", "GPU", "memory"):
            raise ConfigurationError(
                f"{key} is set with num-cpus, num-gpus or memory, not resources", field=f"{path}.resources"
            )
        amount = finite_number(value)
        if amount is None or amount < 0:
            raise ConfigurationError(f"resource {short(key)} must be a non-negative number", field=f"{path}.resources")
        out[key] = int(amount) if amount.is_integer() else amount
    return out


# -- what a node offers -----------------------------------------------------------------------------------------------


def _container_resources(
    template: Mapping[str, Any] | None, path: str
) -> tuple[int | None, int | None, int | None, dict[str, float]]:
    container = first_container(template)
    resources = container.get("resources")
    if not isinstance(resources, Mapping):
        return None, None, None, {}
    where = f"{path}.spec.containers[0].resources"
    raw_limits = resources.get("limits")
    raw_requests = resources.get("requests")
    # Read defensively: only the names below are looked at, and only string keys are taken as resource names.
    limits: Mapping[object, object] = raw_limits if isinstance(raw_limits, Mapping) else {}
    requests: Mapping[object, object] = raw_requests if isinstance(raw_requests, Mapping) else {}

    def amount(key: str) -> tuple[object, str] | None:
        if key in limits:
            return limits[key], f"{where}.limits.{key}"
        if key in requests:
            return requests[key], f"{where}.requests.{key}"
        return None

    def quantity(key: str) -> int | None:
        found = amount(key)
        if found is None:
            return None
        value, field_path = found
        try:
            parsed = parse_quantity(value)
        except ValueError:
            raise ConfigurationError(f"{short(value)} is not a Kubernetes quantity", field=field_path) from None
        if parsed < 0:
            raise ConfigurationError("must not be negative", field=field_path)
        return math.ceil(parsed)

    cpu = quantity("cpu")
    memory = quantity("memory")
    gpu: int | None = None
    custom: dict[str, float] = {}
    for key in sorted(k for k in {*limits, *requests} if isinstance(k, str)):
        if key.endswith("/gpu"):
            gpu = (gpu or 0) + (quantity(key) or 0)
        elif key == "google.com/tpu":
            custom["TPU"] = float(quantity(key) or 0)
    return cpu, gpu, memory, custom


def resources(
    params: Mapping[str, str], params_path: str, template: Mapping[str, Any] | None, template_path: str
) -> RayResources:
    """What a node of the group offers: the start params win over the Ray container's limits and requests."""
    cpu, gpu, memory, custom = _container_resources(template, template_path)
    p_cpu = _int_param(params, "num-cpus", params_path)
    p_gpu = _int_param(params, "num-gpus", params_path)
    p_memory = _int_param(params, "memory", params_path)
    custom.update(_custom_resources(params, params_path))
    return RayResources(
        cpu=p_cpu if p_cpu is not None else cpu,
        gpu=p_gpu if p_gpu is not None else gpu,
        memory=p_memory if p_memory is not None else memory,
        custom=custom,
    )


# -- counts and speed -------------------------------------------------------------------------------------------------


def bounds(
    minimum: int | None, maximum: int | None, initial: int | None, path: str, names: tuple[str, str, str]
) -> Counts:
    """(min, max, initial) with defaults min=0, initial=min, max=max(min, initial); errors name the field. After
    an update (`clamping_initial`) an initial count outside [min, max] is kept as asked and clamped later."""
    low = 0 if minimum is None else minimum
    if maximum is not None and low > maximum:
        raise ConfigurationError(f"must be less than or equal to {names[1]} ({maximum})", field=f"{path}{names[0]}")
    if initial is not None and _CLAMP_INITIAL.get():
        high = max(low, initial) if maximum is None else maximum
        return Counts(low, high, initial)
    if initial is not None:
        if initial < low:
            raise ConfigurationError(
                f"must lie within [{names[0]}, {names[1]}]: it is below {names[0]} ({low})", field=f"{path}{names[2]}"
            )
        if maximum is not None and initial > maximum:
            raise ConfigurationError(
                f"must lie within [{names[0]}, {names[1]}]: it is above {names[1]} ({maximum})",
                field=f"{path}{names[2]}",
            )
    start = low if initial is None else initial
    high = max(low, start) if maximum is None else maximum
    return Counts(low, high, start)


def upscaling_speed(mode: str, utilization_fraction: float | None) -> float:
    if mode == MODE_AGGRESSIVE:
        return AGGRESSIVE_UPSCALING_SPEED
    if utilization_fraction is not None:
        return round(1.0 / utilization_fraction - 1.0, 6)
    return DEFAULT_UPSCALING_SPEED


# -- the groups -------------------------------------------------------------------------------------------------------


def head_group(
    template: Mapping[str, Any] | None,
    default_image: str | None,
    params: dict[str, str],
    paths: tuple[str, str],
    setup_commands: Sequence[str] = (),
) -> HeadGroup:
    """The head group; `paths` are where the start params and the template were given (for errors)."""
    params_path, template_path = paths
    return HeadGroup(
        template=template,
        image=template_image(template) or default_image,
        ray_start_params=params,
        resources=resources(params, params_path, template, template_path),
        setup_commands=tuple(setup_commands),
    )


def worker_group(
    name: str,
    template: Mapping[str, Any] | None,
    default_image: str | None,
    params: dict[str, str],
    paths: tuple[str, str],
    counts: Counts,
    setup_commands: Sequence[str] = (),
    idle_timeout_seconds: float | None = None,
) -> WorkerGroup:
    """A worker group that starts with `counts.start` pods; `paths` as for `head_group`."""
    params_path, template_path = paths
    return WorkerGroup(
        name=name,
        template=template,
        image=template_image(template) or default_image,
        ray_start_params=params,
        resources=resources(params, params_path, template, template_path),
        min_workers=counts.low,
        max_workers=counts.high,
        desired_workers=counts.start,
        initial_workers=counts.start,
        setup_commands=tuple(setup_commands),
        idle_timeout_seconds=idle_timeout_seconds,
    )
