"""One pure conversion from a `Ray` object (either way of configuring it) to the effective `ClusterModel`.

Guarantees:
- `effective_cluster(ray)` takes the `Ray` as a plain dict (decoded JSON) and returns a `Conversion`: the model and
  a tuple of `ConfigWarning`s, one per key that is not honoured, naming the key and saying why.
- It raises `ConfigurationError` (with the field, and line/column for YAML errors) for anything invalid, and nothing
  else, whatever it is given: any YAML text, any JSON value.
- The structured form is validated again here (the CRD's schema and CEL rules already reject the same things at
  admission), so a model is valid even for objects that bypassed admission.
- The `configuration` string accepts the legacy Ray Kubernetes format (`head_node`/`worker_nodes`, `min_workers`,
  `max_workers`, `initial_workers`, `autoscaling_mode`, `target_utilization_fraction`, `idle_timeout_minutes`,
  `provider`) and the `available_node_types` format. Every key is honoured or reported; duplicate keys are errors.
- A configuration runs as `ray up` ran it (`rayop.api.legacy`): the Ray container's keep-alive command gives way to
  the setup and start commands, `$VAR`s in start flags are resolved from the pod template, flags of Ray before 2.x
  are renamed or dropped (never passed to a `ray start` that would refuse them), pods that name a ServiceAccount the
  configuration asked `ray up` to create run as the operator's, and `provider.services` become `DeclaredService`s.
  What is honoured differently is in `Conversion.notes`, what is not honoured in `Conversion.warnings`.
- `initialWorkers` (`initial_workers`) outside [min, max] is an error only while the `Ray` is as it was created
  (`metadata.generation` 1 or unset); after an update the bounds clamp the desired count instead, so raising
  `minWorkers` on a live `Ray` works (the CRD's CEL rules check the range on create only, likewise).
- Pure: no I/O, no clock, no environment; the input is never modified and the model shares no mutable state with it.
"""

from __future__ import annotations

import contextvars
import json
import math
import re
import reprlib
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import yaml

from rayop.api.model import (
    AGGRESSIVE_UPSCALING_SPEED,
    DEFAULT_IDLE_TIMEOUT_MINUTES,
    DEFAULT_UPSCALING_SPEED,
    AutoscalingSettings,
    ClusterModel,
    ConfigurationError,
    ConfigWarning,
    Conversion,
    DeclaredService,
    HeadGroup,
    RayResources,
    WorkerGroup,
)
from rayop.api.legacy import (
    CLIENT_SERVER_MODULE,
    DROPPED_FLAGS,
    RAY_START_FLAGS,
    RENAMED_FLAGS,
    container_env,
    expand,
    keep_alive,
    references,
)
from rayop.api.quantity import parse_quantity
from rayop.api.schema import INT32_MAX, DecodeError, decode
from rayop.api.types import (
    DEFAULT_WORKER_GROUP,
    DNS_1035_LABEL,
    DNS_LABEL,
    HEAD_GROUP,
    MANAGED_START_PARAMS,
    MAX_GROUP_NAME_LENGTH,
    MAX_NAME_LENGTH,
    MAX_NAME_PLUS_GROUP_LENGTH,
    MAX_WORKER_GROUPS,
    MODE_AGGRESSIVE,
    MODE_DEFAULT,
    MODE_DISABLED,
    NAME_LIMIT,
    SCALING_MODES,
    SHAPE_FIELDS,
    SIMPLE_WORKER_FIELDS,
    RaySpec,
)

__all__ = ["effective_cluster", "convert_spec", "parse_configuration", "CONFIG_PATH"]

CONFIG_PATH = "spec.configuration"
GCS_PORT = "6379"
# At most this many JSON values (objects, arrays, scalars) are copied out of templates: a bound on work and memory
# for configurations that expand YAML aliases.
MAX_TEMPLATE_VALUES = 200_000
MAX_DEPTH = 100

_NOT_SET: tuple[Any, ...] = (None, {}, [], "", False)
# True while converting a `Ray` that was updated since its creation: `initialWorkers` is then clamped, not checked.
_CLAMP_INITIAL: contextvars.ContextVar[bool] = contextvars.ContextVar("clamp_initial", default=False)


# -- entry points ---------------------------------------------------------------------------------------------------


def effective_cluster(ray: Mapping[str, Any]) -> Conversion:
    """Convert a `Ray` object (decoded JSON) into the effective cluster model plus warnings.

    Raises `ConfigurationError` when the object cannot describe a cluster.
    """
    if not isinstance(ray, Mapping):
        raise ConfigurationError("a Ray object must be a JSON object")
    metadata = ray.get("metadata")
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, Mapping):
        raise ConfigurationError("must be an object", field="metadata")
    name = metadata.get("name")
    namespace = metadata.get("namespace")
    if not isinstance(name, str):
        raise ConfigurationError("is required and must be a string", field="metadata.name")
    if namespace is not None and not isinstance(namespace, str):
        raise ConfigurationError("must be a string", field="metadata.namespace")
    spec = ray.get("spec")
    generation = metadata.get("generation")
    updated = isinstance(generation, int) and not isinstance(generation, bool) and generation > 1
    token = _CLAMP_INITIAL.set(updated)
    try:
        return convert_spec({} if spec is None else spec, name=name, namespace=namespace or "")
    finally:
        _CLAMP_INITIAL.reset(token)


def convert_spec(spec: Any, *, name: str, namespace: str = "") -> Conversion:
    """Convert a `Ray`'s spec (decoded JSON) for a Ray named `name` in `namespace`."""
    _check_name(name)
    try:
        typed = decode(RaySpec, spec, "spec")
    except DecodeError as e:
        raise ConfigurationError(e.message, field=e.path) from None
    present = set(spec) if isinstance(spec, Mapping) else set()
    warnings: list[ConfigWarning] = []
    notes: list[ConfigWarning] = []
    services: tuple[DeclaredService, ...] = ()
    budget = _Budget(MAX_TEMPLATE_VALUES)
    if typed.configuration is not None:
        for key in SHAPE_FIELDS:
            if key in present and spec[key] is not None:
                raise ConfigurationError(
                    "cannot be combined with spec.configuration: the configuration describes the cluster",
                    field=f"spec.{key}",
                )
        head, groups, autoscaling, form, services = _from_configuration(
            typed.configuration,
            name=name,
            namespace=namespace,
            image=typed.image,
            warnings=warnings,
            notes=notes,
            budget=budget,
        )
    else:
        head, groups, autoscaling = _from_structured(typed, name=name, warnings=warnings, budget=budget)
        form = "structured"
    groups = _apply_desired(groups, typed.desired_workers or {}, warnings)
    groups = _apply_rolling_update(groups, typed)
    autoscaling = _finish_autoscaling(autoscaling, groups)
    cluster = ClusterModel(
        name=name,
        namespace=namespace,
        head=head,
        worker_groups=tuple(groups),
        autoscaling=autoscaling,
        workers_to_delete=tuple(typed.workers_to_delete or ()),
        image=typed.image,
        services=services,
    )
    return Conversion(cluster=cluster, warnings=_unique(warnings), form=form, notes=_unique(notes))


def _unique(items: list[ConfigWarning]) -> tuple[ConfigWarning, ...]:
    """The items in their order, each once (the start commands are checked once per group that uses them)."""
    return tuple(dict.fromkeys(items))


def _check_name(name: str) -> None:
    if not name:
        raise ConfigurationError("is required", field="metadata.name")
    if len(name) > MAX_NAME_LENGTH:
        raise ConfigurationError(
            f"must be at most {MAX_NAME_LENGTH} characters: the head pod is named <name>-head-<5 characters> and "
            f"must fit in {NAME_LIMIT}",
            field="metadata.name",
        )
    if not re.match(DNS_1035_LABEL, name):
        raise ConfigurationError(
            "must be a DNS-1035 label (lowercase letters, digits and '-', starting with a letter)",
            field="metadata.name",
        )


def _check_group_name(ray_name: str, group: str, field: str) -> None:
    if group == HEAD_GROUP:
        raise ConfigurationError("'head' is reserved for the head group", field=field)
    if not re.match(DNS_LABEL, group) or len(group) > MAX_GROUP_NAME_LENGTH:
        raise ConfigurationError(
            f"{_short(group)} is not a DNS label of at most {MAX_GROUP_NAME_LENGTH} characters", field=field
        )
    if len(ray_name) + len(group) > MAX_NAME_PLUS_GROUP_LENGTH:
        raise ConfigurationError(
            f"worker pods would be named {ray_name}-{group}-<5 characters>, longer than {NAME_LIMIT} characters: "
            f"metadata.name and the group name together must be at most {MAX_NAME_PLUS_GROUP_LENGTH} characters",
            field=field,
        )


# -- shared pieces --------------------------------------------------------------------------------------------------


@dataclass
class _Budget:
    remaining: int

    def spend(self, path: str) -> None:
        self.remaining -= 1
        if self.remaining < 0:
            raise ConfigurationError(f"too large: more than {MAX_TEMPLATE_VALUES} values in pod templates", field=path)


def _json_copy(value: Any, path: str, budget: _Budget, depth: int = 0) -> Any:
    """A deep copy of `value` that holds only JSON values; ConfigurationError naming the path otherwise."""
    budget.spend(path)
    if depth > MAX_DEPTH:
        raise ConfigurationError(f"nested more than {MAX_DEPTH} levels deep", field=path)
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigurationError(f"{_short(value)} is not a JSON number", field=path)
        return value
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ConfigurationError(f"keys must be strings, got {_short(key)}", field=path)
            out[key] = _json_copy(item, f"{path}.{key}", budget, depth + 1)
        return out
    if isinstance(value, (list, tuple)):
        return [_json_copy(item, f"{path}[{i}]", budget, depth + 1) for i, item in enumerate(value)]
    raise ConfigurationError(f"{type(value).__name__} is not a JSON value (quote it to make it a string)", field=path)


def _template(value: Any, path: str, budget: _Budget) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ConfigurationError("a pod template must be an object", field=path)
    copied: dict[str, Any] = _json_copy(value, path, budget)
    _check_template_metadata(copied, path)
    return copied


# The shape of the parts of a pod template the builders read or merge into (the API server checks nothing inside a
# template, so a mistyped field must stop here, named, instead of breaking the builders): "map" a string-to-string
# map, "object" a mapping, "objects" a list of mappings, "strings" a list of strings, "string" a string.
_CONTAINER_SHAPE: dict[str, str] = {
    "name": "string", "image": "string", "command": "strings", "args": "strings", "env": "objects",
    "envFrom": "objects", "ports": "objects", "volumeMounts": "objects", "resources": "object",
    "readinessProbe": "object", "livenessProbe": "object", "startupProbe": "object", "lifecycle": "object",
    "securityContext": "object", "imagePullPolicy": "string",
}
_POD_SPEC_SHAPE: dict[str, str] = {
    "containers": "objects", "initContainers": "objects", "volumes": "objects", "tolerations": "objects",
    "imagePullSecrets": "objects", "nodeSelector": "map", "affinity": "object", "securityContext": "object",
    "serviceAccountName": "string", "restartPolicy": "string",
}


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict, _REPR.maxset = 2, 12, 12, 12, 12
_REPR.maxstring, _REPR.maxlong, _REPR.maxother = 1000, 100, 200


def _short(value: Any) -> str:
    """`repr(value)` for a message, in bounded time and length: a few lines of YAML aliases can spell out a value of
    a billion elements (the same as repr for ordinary values)."""
    return _REPR.repr(value)


def _check_shape(value: Any, shape: str, where: str) -> None:
    if shape == "string" and not isinstance(value, str):
        raise ConfigurationError(f"must be a string, got {_short(value)}", field=where)
    if shape in ("object", "map") and not isinstance(value, Mapping):
        raise ConfigurationError("must be an object" if shape == "object" else "must be a map of strings to strings",
                                 field=where)
    if shape == "map":
        for k, v in value.items():
            if not isinstance(v, str):
                raise ConfigurationError(f"the value of {_short(k)} must be a string, got {_short(v)}", field=where)
    if shape in ("objects", "strings"):
        if not isinstance(value, list):
            raise ConfigurationError("must be a list", field=where)
        for i, item in enumerate(value):
            if shape == "objects" and not isinstance(item, Mapping):
                raise ConfigurationError(f"must be an object, got {_short(item)}", field=f"{where}[{i}]")
            if shape == "strings" and not isinstance(item, str):
                raise ConfigurationError(f"must be a string, got {_short(item)}", field=f"{where}[{i}]")


# Fields of list items the builders collect into sets or compare (names, ports, mount paths): "string" or "integer".
_ITEM_FIELDS: dict[str, dict[str, str]] = {
    "volumes": {"name": "string"},
    "env": {"name": "string"},
    "ports": {"name": "string", "containerPort": "integer"},
    "volumeMounts": {"name": "string", "mountPath": "string"},
}


def _check_items(items: Any, fields: Mapping[str, str], where: str) -> None:
    for i, item in enumerate(items or ()):
        for key, shape in fields.items():
            value = item.get(key)
            if value is None:
                continue
            if shape == "integer" and (not isinstance(value, int) or isinstance(value, bool)):
                raise ConfigurationError(f"must be an integer, got {_short(value)}", field=f"{where}[{i}].{key}")
            if shape == "string":
                _check_shape(value, "string", f"{where}[{i}].{key}")


def _check_template_metadata(template: Mapping[str, Any], path: str) -> None:
    """The parts of a pod template the builders use have the types Kubernetes gives them: metadata labels and
    annotations map strings to strings, the spec and its containers are objects, lists are lists (see the shapes
    above); ConfigurationError naming the field otherwise. Fields the builders do not read are the API server's to
    judge when the pod is created."""
    metadata = template.get("metadata")
    if metadata is not None:
        _check_shape(metadata, "object", f"{path}.metadata")
        for key in ("labels", "annotations"):
            if metadata.get(key) is not None:
                _check_shape(metadata[key], "map", f"{path}.metadata.{key}")
    spec = template.get("spec")
    if spec is None:
        return
    _check_shape(spec, "object", f"{path}.spec")
    for key, shape in _POD_SPEC_SHAPE.items():
        if spec.get(key) is not None:
            _check_shape(spec[key], shape, f"{path}.spec.{key}")
    _check_items(spec.get("volumes"), _ITEM_FIELDS["volumes"], f"{path}.spec.volumes")
    for list_key in ("containers", "initContainers"):
        for i, container in enumerate(spec.get(list_key) or ()):
            for key, shape in _CONTAINER_SHAPE.items():
                if container.get(key) is not None:
                    _check_shape(container[key], shape, f"{path}.spec.{list_key}[{i}].{key}")
            for key in ("env", "ports", "volumeMounts"):
                _check_items(container.get(key), _ITEM_FIELDS[key], f"{path}.spec.{list_key}[{i}].{key}")
            resources = container.get("resources") or {}
            for key in ("limits", "requests"):
                if resources.get(key) is not None:
                    _check_shape(resources[key], "object", f"{path}.spec.{list_key}[{i}].resources.{key}")


def _first_container(template: Mapping[str, Any] | None) -> Mapping[str, Any]:
    """The Ray container of a template (its first container), or {} when there is none or it is malformed."""
    if not template:
        return {}
    spec = template.get("spec")
    if not isinstance(spec, Mapping):
        return {}
    containers = spec.get("containers")
    if not isinstance(containers, list) or not containers or not isinstance(containers[0], Mapping):
        return {}
    return containers[0]


def _template_image(template: Mapping[str, Any] | None) -> str | None:
    image = _first_container(template).get("image")
    return image if isinstance(image, str) and image else None


def _normalize_params(params: Mapping[str, str], path: str, *, reject_managed: bool) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in params.items():
        flag = key.lstrip("-")
        if not flag:
            raise ConfigurationError(f"{_short(key)} is not a flag name", field=path)
        if reject_managed and flag in MANAGED_START_PARAMS:
            raise ConfigurationError(f"{_short(flag)} is set by the operator and cannot be given", field=f"{path}.{key}")
        _check_port(flag, value, f"{path}.{key}")
        out[flag] = value
    return out


def _check_port(flag: str, value: str, where: str) -> None:
    """A `--*-port` flag's value must be a port number: the builders put it into the pod's container ports."""
    if not flag.endswith("-port"):
        return
    text = str(value).strip()
    if not (text.isascii() and text.isdigit()) or int(text) > 65535:
        raise ConfigurationError(f"{_short(text)} is not a port number (0-65535)", field=where)


def _int_param(params: Mapping[str, str], key: str, path: str) -> int | None:
    if key not in params:
        return None
    text = params[key].strip()
    try:
        value = parse_quantity(text)
    except ValueError:
        raise ConfigurationError(f"{_short(text)} is not a number", field=f"{path}.{key}") from None
    if value < 0 or value != int(value):
        raise ConfigurationError(f"{_short(text)} must be a non-negative whole number", field=f"{path}.{key}")
    if value > 2**63:
        raise ConfigurationError(f"{_short(text)} is too large", field=f"{path}.{key}")
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
        amount = _finite_number(value)
        if amount is None or amount < 0:
            raise ConfigurationError(f"resource {_short(key)} must be a non-negative number", field=f"{path}.resources")
        out[key] = int(amount) if amount.is_integer() else amount
    return out


def _container_resources(
    template: Mapping[str, Any] | None, path: str
) -> tuple[int | None, int | None, int | None, dict[str, float]]:
    container = _first_container(template)
    resources = container.get("resources")
    if not isinstance(resources, Mapping):
        return None, None, None, {}
    where = f"{path}.spec.containers[0].resources"
    raw_limits = resources.get("limits")
    raw_requests = resources.get("requests")
    # Keys are whatever the YAML had (an int key is possible), so they stay untyped until checked below.
    limits: Mapping[Any, Any] = raw_limits if isinstance(raw_limits, Mapping) else {}
    requests: Mapping[Any, Any] = raw_requests if isinstance(raw_requests, Mapping) else {}

    def amount(key: str) -> tuple[Any, str] | None:
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
            raise ConfigurationError(f"{_short(value)} is not a Kubernetes quantity", field=field_path) from None
        if parsed < 0:
            raise ConfigurationError("must not be negative", field=field_path)
        return math.ceil(parsed)

    cpu = quantity("cpu")
    memory = quantity("memory")
    gpu: int | None = None
    custom: dict[str, float] = {}
    for key in sorted(set(limits) | set(requests)):
        if not isinstance(key, str):
            continue
        if key.endswith("/gpu"):
            gpu = (gpu or 0) + (quantity(key) or 0)
        elif key == "google.com/tpu":
            custom["TPU"] = float(quantity(key) or 0)
    return cpu, gpu, memory, custom


def _resources(
    params: Mapping[str, str], params_path: str, template: Mapping[str, Any] | None, template_path: str
) -> RayResources:
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


def _bounds(
    minimum: int | None, maximum: int | None, initial: int | None, path: str, names: tuple[str, str, str]
) -> tuple[int, int, int]:
    """(min, max, initial) with defaults min=0, initial=min, max=max(min, initial); errors name the field. After
    an update (`_CLAMP_INITIAL`) an initial count outside [min, max] is kept as asked and clamped later."""
    low = 0 if minimum is None else minimum
    if maximum is not None and low > maximum:
        raise ConfigurationError(f"must be less than or equal to {names[1]} ({maximum})", field=f"{path}{names[0]}")
    if initial is not None and _CLAMP_INITIAL.get():
        high = max(low, initial) if maximum is None else maximum
        return low, high, initial
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
    return low, high, start


_SPEC_NAMES = ("minWorkers", "maxWorkers", "initialWorkers")
_CONFIG_NAMES = ("min_workers", "max_workers", "initial_workers")


def _apply_desired(
    groups: list[WorkerGroup], desired: Mapping[str, int], warnings: list[ConfigWarning]
) -> list[WorkerGroup]:
    names = {g.name for g in groups}
    for key in sorted(desired):
        if key not in names:
            warnings.append(ConfigWarning(f"spec.desiredWorkers.{key}", "there is no worker group of that name"))
    out = []
    for g in groups:
        wanted = desired.get(g.name, g.initial_workers)
        count = min(max(wanted, g.min_workers), g.max_workers)
        out.append(_replace_desired(g, count))
    return out


def _apply_rolling_update(groups: list[WorkerGroup], spec: RaySpec) -> list[WorkerGroup]:
    """Each group's rolling-update bounds: its own (workerGroups[].rollingUpdate), else spec.rollingUpdate."""
    own = {g.name: g.rolling_update for g in spec.worker_groups or () if g.rolling_update is not None}
    out = []
    for g in groups:
        bounds = own.get(g.name) or spec.rolling_update
        if bounds is None:
            out.append(g)
            continue
        surge, unavailable = bounds.max_surge, bounds.max_unavailable
        if (1 if surge is None else surge) + (unavailable or 0) <= 0:
            raise ConfigurationError("maxSurge and maxUnavailable must not both be 0",
                                     field="spec.rollingUpdate" if g.name not in own else "spec.workerGroups")
        out.append(replace(g, max_surge=surge, max_unavailable=unavailable))
    return out


def _replace_desired(group: WorkerGroup, count: int) -> WorkerGroup:
    return replace(group, desired_workers=count)


def _finish_autoscaling(settings: AutoscalingSettings, groups: Sequence[WorkerGroup]) -> AutoscalingSettings:
    total = sum(g.max_workers for g in groups)
    cap = total if settings.max_workers < 0 else min(settings.max_workers, total)
    can_scale = any(g.min_workers < g.max_workers for g in groups)
    return replace(settings, enabled=settings.enabled and can_scale, max_workers=cap)


def _upscaling_speed(mode: str, utilization_fraction: float | None) -> float:
    if mode == MODE_AGGRESSIVE:
        return AGGRESSIVE_UPSCALING_SPEED
    if utilization_fraction is not None:
        return round(1.0 / utilization_fraction - 1.0, 6)
    return DEFAULT_UPSCALING_SPEED


# -- the structured form --------------------------------------------------------------------------------------------


def _from_structured(
    spec: RaySpec, *, name: str, warnings: list[ConfigWarning], budget: _Budget
) -> tuple[HeadGroup, list[WorkerGroup], AutoscalingSettings]:
    head_template = _template(spec.head, "spec.head", budget)
    head_params = _normalize_params(spec.head_ray_start_params or {}, "spec.headRayStartParams", reject_managed=True)
    head = HeadGroup(
        template=head_template,
        image=_template_image(head_template) or spec.image,
        ray_start_params=head_params,
        resources=_resources(head_params, "spec.headRayStartParams", head_template, "spec.head"),
    )
    groups: list[WorkerGroup] = []
    if spec.worker_groups is None:
        _check_group_name(name, DEFAULT_WORKER_GROUP, "metadata.name")
        template = _template(spec.worker, "spec.worker", budget)
        params = _normalize_params(spec.worker_ray_start_params or {}, "spec.workerRayStartParams", reject_managed=True)
        low, high, start = _bounds(spec.min_workers, spec.max_workers, spec.initial_workers, "spec.", _SPEC_NAMES)
        groups.append(
            WorkerGroup(
                name=DEFAULT_WORKER_GROUP,
                template=template,
                image=_template_image(template) or spec.image,
                ray_start_params=params,
                resources=_resources(params, "spec.workerRayStartParams", template, "spec.worker"),
                min_workers=low,
                max_workers=high,
                desired_workers=start,
                initial_workers=start,
            )
        )
    else:
        for key in SIMPLE_WORKER_FIELDS:
            if getattr(spec, _python_name(key)) is not None:
                raise ConfigurationError(
                    "cannot be combined with spec.workerGroups: set it on each worker group instead",
                    field=f"spec.{key}",
                )
        for i, g in enumerate(spec.worker_groups):
            path = f"spec.workerGroups[{i}]"
            _check_group_name(name, g.name, f"{path}.name")
            template = _template(g.template, f"{path}.template", budget)
            params = _normalize_params(g.ray_start_params or {}, f"{path}.rayStartParams", reject_managed=True)
            low, high, start = _bounds(g.min_workers, g.max_workers, g.initial_workers, f"{path}.", _SPEC_NAMES)
            groups.append(
                WorkerGroup(
                    name=g.name,
                    template=template,
                    image=_template_image(template) or spec.image,
                    ray_start_params=params,
                    resources=_resources(params, f"{path}.rayStartParams", template, f"{path}.template"),
                    min_workers=low,
                    max_workers=high,
                    desired_workers=start,
                    initial_workers=start,
                )
            )
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
    settings = AutoscalingSettings(
        enabled=mode != MODE_DISABLED,
        upscaling_speed=_upscaling_speed(mode, fraction),
        idle_timeout_minutes=float(spec.idle_timeout_minutes)
        if spec.idle_timeout_minutes is not None
        else DEFAULT_IDLE_TIMEOUT_MINUTES,
        max_workers=-1,
    )
    return head, groups, settings


def _python_name(json_name: str) -> str:
    return re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), json_name)


# -- the configuration form -----------------------------------------------------------------------------------------


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys in a mapping (YAML says keys are unique; PyYAML keeps the last)."""


def _construct_unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> Any:
    seen: set[Any] = set()
    for key_node, _value in node.value:
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node)
        try:
            duplicate = key in seen
            seen.add(key)
        except TypeError:
            continue
        if duplicate:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark, f"found duplicate key {_short(key)}", key_node.start_mark
            )
    return loader.construct_yaml_map(node)


_UniqueKeyLoader.add_constructor("tag:yaml.org,2002:map", _construct_unique_mapping)


# A cluster-launcher configuration with its aliases expanded may hold at most this many values (Ray's own
# examples hold a few hundred).
MAX_CONFIGURATION_VALUES = 100_000


def _expanded_size(value: Any) -> int:
    """How many values `value` holds once every alias is expanded; linear in the distinct values (shared ones are
    counted once and multiplied), and stops early past the limit."""
    sizes: dict[int, int] = {}

    def size(v: Any) -> int:
        if not isinstance(v, (dict, list)):
            return 1
        known = sizes.get(id(v))
        if known is not None:
            return known
        sizes[id(v)] = MAX_CONFIGURATION_VALUES + 1  # met again before it is done: a cycle, which never ends
        items = list(v.keys()) + list(v.values()) if isinstance(v, dict) else v
        total = 1
        for item in items:
            total += size(item)
            if total > MAX_CONFIGURATION_VALUES:
                break
        sizes[id(v)] = total
        return total

    try:
        return size(value)
    except RecursionError:
        return MAX_CONFIGURATION_VALUES + 1


def parse_configuration(text: str) -> dict[str, Any]:
    """Parse a cluster-launcher configuration; ConfigurationError with line and column when it is not valid YAML."""
    try:
        loaded = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        problem = " ".join(p for p in (e.context, e.problem) if p) or "invalid YAML"
        raise ConfigurationError(
            f"invalid YAML: {problem}",
            field=CONFIG_PATH,
            line=mark.line + 1 if mark else None,
            column=mark.column + 1 if mark else None,
        ) from None
    except yaml.reader.ReaderError as e:
        line = text.count("\n", 0, e.position) + 1
        column = e.position - (text.rfind("\n", 0, e.position) + 1) + 1
        raise ConfigurationError(f"invalid YAML: {e.reason}", field=CONFIG_PATH, line=line, column=column) from None
    except yaml.YAMLError as e:
        raise ConfigurationError(f"invalid YAML: {e}", field=CONFIG_PATH) from None
    except RecursionError:
        raise ConfigurationError("invalid YAML: nested too deeply", field=CONFIG_PATH) from None
    except (ValueError, TypeError, OverflowError) as e:
        # A scalar with an explicit or implicit tag that does not construct, e.g. the date 2020-13-45.
        raise ConfigurationError(f"invalid YAML value: {e}", field=CONFIG_PATH) from None
    if loaded is None:
        raise ConfigurationError("is empty: expected a mapping of cluster-launcher keys", field=CONFIG_PATH)
    if not isinstance(loaded, dict):
        raise ConfigurationError("must be a YAML mapping of cluster-launcher keys", field=CONFIG_PATH, line=1, column=1)
    if _expanded_size(loaded) > MAX_CONFIGURATION_VALUES:
        # YAML aliases share one value however often it is referenced; everything downstream copies each reference
        # (a nine-level "billion laughs" config would need gigabytes), so such a config is refused whole.
        raise ConfigurationError(
            f"is too large: expands to more than {MAX_CONFIGURATION_VALUES:,} values through YAML aliases",
            field=CONFIG_PATH)
    for key in loaded:
        if not isinstance(key, str):
            raise ConfigurationError(f"keys must be strings, got {_short(key)}", field=CONFIG_PATH)
    return loaded


class _Section:
    """The keys of one mapping of the configuration; remembers which ones were looked at."""

    def __init__(self, data: Any, path: str, warnings: list[ConfigWarning]):
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise ConfigurationError("must be a mapping", field=path)
        for key in data:
            if not isinstance(key, str):
                raise ConfigurationError(f"keys must be strings, got {_short(key)}", field=path)
        self.data: Mapping[str, Any] = data
        self.path = path
        self.warnings = warnings
        self.seen: set[str] = set()

    def key_path(self, key: str) -> str:
        return f"{self.path}.{key}"

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def get(self, key: str) -> Any:
        self.seen.add(key)
        return self.data.get(key)

    def warn(self, key: str, why: str) -> None:
        self.seen.add(key)
        self.warnings.append(ConfigWarning(self.key_path(key), why))

    def ignore(self, key: str, why: str) -> None:
        """Report `key` as ignored when it is set to something other than an empty value."""
        self.seen.add(key)
        if key in self.data and not _is_empty(self.data[key]):
            self.warnings.append(ConfigWarning(self.key_path(key), why))

    def integer(self, key: str, minimum: int = 0) -> int | None:
        value = self.get(key)
        if value is None:
            return None
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigurationError(f"must be an integer, got {_short(value)}", field=self.key_path(key))
        if value < minimum:
            raise ConfigurationError(f"must be at least {minimum}", field=self.key_path(key))
        if value > INT32_MAX:
            raise ConfigurationError("is too large", field=self.key_path(key))
        return value

    def number(
        self, key: str, minimum: float = 0.0, maximum: float | None = None, exclusive_minimum: bool = False
    ) -> float | None:
        raw = self.get(key)
        if raw is None:
            return None
        value = _finite_number(raw)
        if value is None:
            raise ConfigurationError(f"must be a number, got {_short(raw)}", field=self.key_path(key))
        if value < minimum or (exclusive_minimum and value == minimum):
            raise ConfigurationError(
                f"must be {'greater than' if exclusive_minimum else 'at least'} {minimum:g}", field=self.key_path(key)
            )
        if maximum is not None and value > maximum:
            raise ConfigurationError(f"must be at most {maximum:g}", field=self.key_path(key))
        if value > 1e12:
            raise ConfigurationError("is too large", field=self.key_path(key))
        return value

    def string(self, key: str) -> str | None:
        value = self.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            raise ConfigurationError(f"must be a string, got {_short(value)}", field=self.key_path(key))
        return value

    def commands(self, key: str) -> list[str]:
        value = self.get(key)
        if value is None:
            return []
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
            raise ConfigurationError("must be a list of shell commands (strings)", field=self.key_path(key))
        return list(value)

    def section(self, key: str) -> _Section:
        return _Section(self.get(key), self.key_path(key), self.warnings)

    def report_unknown(self, why: str) -> None:
        for key in self.data:
            if key not in self.seen:
                self.warnings.append(ConfigWarning(self.key_path(key), why))


def _finite_number(value: Any) -> float | None:
    """`value` as a float when it is a JSON number of sensible size, else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, int):
        return float(value) if abs(value) <= 10**15 else None
    return value if math.isfinite(value) and abs(value) <= 1e15 else None


def _is_empty(value: Any) -> bool:
    return value is None or value is False or (isinstance(value, (str, list, dict, tuple)) and len(value) == 0)


_UNKNOWN = "not a Ray cluster-launcher key; ignored"
_NO_SSH = (
    "the operator does not SSH into nodes or sync files; put files in the image or mount volumes in the pod template"
)


@dataclass
class _Images:
    head: str | None = None
    worker: str | None = None


@dataclass
class _Start:
    """The start commands of the head or of the workers, as the operator runs them."""

    # The flags of `ray start` that are honoured; values may still refer to shell variables ($MY_CPU_REQUEST),
    # resolved per group against its pod template.
    params: dict[str, str] = field(default_factory=dict)
    # Where each flag was given (for warnings and notes).
    origin: dict[str, str] = field(default_factory=dict)
    # Other shell commands before `ray start` (`ulimit -n 65536`), run after the setup commands, as `ray up` did.
    shell: list[str] = field(default_factory=list)


@dataclass
class _StartCommands:
    head: _Start = field(default_factory=_Start)
    worker: _Start = field(default_factory=_Start)


@dataclass
class _Context:
    """What the parts of a configuration's conversion share."""

    name: str
    warnings: list[ConfigWarning]
    notes: list[ConfigWarning]
    budget: _Budget
    # ServiceAccounts the configuration asks `ray up` to create (provider.autoscaler_service_account, the subjects
    # of provider.autoscaler_role_binding): the operator creates its own instead, so pods naming them are pointed
    # at that one.
    accounts: set[str] = field(default_factory=set)


def _from_configuration(
    text: str,
    *,
    name: str,
    namespace: str,
    image: str | None,
    warnings: list[ConfigWarning],
    notes: list[ConfigWarning],
    budget: _Budget,
) -> tuple[HeadGroup, list[WorkerGroup], AutoscalingSettings, str, tuple[DeclaredService, ...]]:
    config = _Section(parse_configuration(text), CONFIG_PATH, warnings)
    ctx = _Context(name=name, warnings=warnings, notes=notes, budget=budget)

    cluster_name = config.get("cluster_name")
    if cluster_name is not None and cluster_name != name:
        config.warn(
            "cluster_name",
            f"ignored: the cluster is named after the Ray object ({_short(name)}); pods, Services and the autoscaler use "
            "that name",
        )
    provider = config.section("provider")
    raw_services = _provider(provider, namespace, ctx)
    images = _docker(config.section("docker"), image)
    for key in (
        "file_mounts",
        "cluster_synced_files",
        "file_mounts_sync_continuously",
        "rsync_exclude",
        "rsync_filter",
    ):
        config.ignore(key, f"ignored: {_NO_SSH}")
    config.ignore("auth", f"ignored: {_NO_SSH}")
    config.ignore("initialization_commands", "ignored: there is no host to run them on; pods start from their image")
    config.ignore("no_restart", "ignored: it is set by `ray up --no-restart`, not by users")
    config.ignore("worker_default_node_type", "ignored: deprecated by Ray; worker types are chosen by demand")

    starts = _StartCommands(
        head=_start_params(
            config.commands("head_start_ray_commands"), config.key_path("head_start_ray_commands"), head=True, ctx=ctx
        ),
        worker=_start_params(
            config.commands("worker_start_ray_commands"),
            config.key_path("worker_start_ray_commands"),
            head=False,
            ctx=ctx,
        ),
    )
    common_setup = config.commands("setup_commands")
    head_setup = common_setup + config.commands("head_setup_commands")
    worker_setup = config.commands("worker_setup_commands")

    # Knobs shared by both formats.
    mode = config.string("autoscaling_mode")
    if mode is not None and mode not in SCALING_MODES:
        raise ConfigurationError(
            f"unsupported value {_short(mode)}: must be one of {', '.join(SCALING_MODES)}",
            field=config.key_path("autoscaling_mode"),
        )
    mode = mode or MODE_DEFAULT
    fraction = config.number("target_utilization_fraction", 0.0, 1.0, exclusive_minimum=True)
    speed = config.number("upscaling_speed")
    if speed is not None:
        if mode == MODE_AGGRESSIVE:
            config.warn("autoscaling_mode", "'aggressive' ignored: upscaling_speed is set and takes precedence")
        if fraction is not None:
            config.warn("target_utilization_fraction", "ignored: upscaling_speed is set and takes precedence")
    elif mode == MODE_AGGRESSIVE and fraction is not None:
        config.warn("target_utilization_fraction", "ignored with autoscaling_mode 'aggressive'")
    idle = config.number("idle_timeout_minutes")
    max_workers = config.integer("max_workers")

    if config.has("available_node_types"):
        form = "available_node_types"
        head, groups = _node_types(
            config,
            ctx=ctx,
            images=images,
            starts=starts,
            head_setup=head_setup,
            worker_setup=(common_setup, worker_setup),
            max_workers=max_workers,
        )
    else:
        form = "legacy"
        head, groups = _legacy(
            config,
            ctx=ctx,
            images=images,
            starts=starts,
            head_setup=head_setup,
            worker_setup=common_setup + worker_setup,
            max_workers=max_workers,
        )
    config.report_unknown(_UNKNOWN)
    services = _services(raw_services, provider.key_path("services"), head, groups, ctx)
    settings = AutoscalingSettings(
        enabled=mode != MODE_DISABLED,
        upscaling_speed=speed if speed is not None else _upscaling_speed(mode, fraction),
        idle_timeout_minutes=idle if idle is not None else DEFAULT_IDLE_TIMEOUT_MINUTES,
        max_workers=-1 if max_workers is None else max_workers,
    )
    return head, groups, settings, form, services


_OPERATOR_RBAC = (
    "ignored: the operator creates the autoscaler's ServiceAccount, Role and RoleBinding (<name>-autoscaler) itself, "
    "with the least rights Ray's autoscaler needs; pods that name this account run as the operator's instead"
)


def _provider(provider: _Section, namespace: str, ctx: _Context) -> Any:
    """Check the provider section; remember the ServiceAccounts it declares; return `services` (checked later)."""
    kind = provider.get("type")
    if kind is not None and kind != "kubernetes":
        provider.warn("type", f"{_short(kind)} ignored: the operator itself provides the Ray nodes as pods")
    ns = provider.get("namespace")
    if ns is not None and ns != namespace:
        provider.warn("namespace", f"{_short(ns)} ignored: the cluster runs in the Ray object's namespace ({_short(namespace)})")
    internal = provider.get("use_internal_ips")
    if internal is not None and internal is not True:
        provider.warn("use_internal_ips", "ignored: Ray nodes always use their pod IPs")
    account = provider.get("autoscaler_service_account")
    if isinstance(account, Mapping):
        meta = account.get("metadata")
        if isinstance(meta, Mapping) and isinstance(meta.get("name"), str):
            ctx.accounts.add(meta["name"])
    binding = provider.get("autoscaler_role_binding")
    subjects = binding.get("subjects") if isinstance(binding, Mapping) else None
    for subject in subjects if isinstance(subjects, list) else ():
        if isinstance(subject, Mapping) and subject.get("kind") == "ServiceAccount" and isinstance(
            subject.get("name"), str
        ):
            ctx.accounts.add(subject["name"])
    for key in ("autoscaler_service_account", "autoscaler_role", "autoscaler_role_binding"):
        provider.ignore(key, _OPERATOR_RBAC)
    services = provider.get("services")
    provider.report_unknown("not a Kubernetes provider key; ignored")
    return services


def _docker(docker: _Section, default: str | None) -> _Images:
    image = docker.string("image")
    head = docker.string("head_image")
    worker = docker.string("worker_image")
    for key in list(docker.data):
        if key not in docker.seen:
            docker.ignore(
                key, "ignored: pods already run in containers; only docker.image, head_image and worker_image are used"
            )
    return _Images(head=head or image or default, worker=worker or image or default)


# Flags of `ray start` the operator sets itself, and that a user's configuration may carry without a warning.
_SILENT_FLAGS_HEAD = {"head", "autoscaling-config", "block", "no-monitor"}
_SILENT_FLAGS_WORKER = {"address", "autoscaling-config", "block"}
_SEPARATORS = {";", "&&", "||", "|", "&", "\n"}
# Separators after which `ray up`'s shell went on whatever the command before exited with.
_GO_ON = {";", "\n", "&", "||", "|", None}


def _start_params(commands: list[str], path: str, *, head: bool, ctx: _Context) -> _Start:
    """The start commands of the head (or the workers): the flags of their `ray start`, and the shell commands
    before it, which run as `ray up` ran them; `ray stop` is dropped and anything after `ray start` is reported."""
    start = _Start()
    started = False
    for i, command in enumerate(commands):
        where = f"{path}[{i}]"
        try:
            lexer = shlex.shlex(command, posix=True, punctuation_chars=";&|")
            lexer.whitespace_split = True
            tokens = list(lexer)
        except ValueError as e:
            raise ConfigurationError(f"cannot be parsed as a shell command: {e}", field=where) from None
        segments: list[tuple[list[str], str | None]] = []
        segment: list[str] = []
        for token in tokens:
            if token in _SEPARATORS:
                segments.append((segment, token))
                segment = []
            else:
                segment.append(token)
        segments.append((segment, None))
        has_ray = any(s[:2] in (["ray", "start"], ["ray", "stop"]) for s, _ in segments)
        if not has_ray and not any(_client_server(s) for s, _ in segments):
            # A plain shell command of its own: run as given (before `ray start`), or reported after it.
            if started:
                ctx.warnings.append(ConfigWarning(where, f"{_short(command)} is not run: it comes after `ray start`, and "
                                                  "the operator runs `ray start` as the container's last command"))
            elif command.strip():
                start.shell.append(command)
            continue
        skip = 0 if started else _raw_prefix(command, segments, start)
        for segment, separator in segments[skip:]:
            if not segment or segment[:2] == ["ray", "stop"]:
                continue  # a fresh pod has nothing to stop
            if segment[:2] == ["ray", "start"]:
                started = True
                _start_flags(segment[2:], where, head=head, start=start, ctx=ctx)
                continue
            if _client_server(segment):
                ctx.notes.append(ConfigWarning(where, f"{shlex.join(segment)!r} dropped: in Ray 2 `ray start --head` "
                                               "runs the Ray Client server itself (port 10001)"))
                continue
            text = shlex.join(segment)
            if started:
                ctx.warnings.append(ConfigWarning(where, f"{_short(text)} is not run: it comes after `ray start`, and the "
                                                  "operator runs `ray start` as the container's last command"))
            elif separator == "&":
                start.shell.append(f"{{ {text} & }}")
            elif separator in _GO_ON:
                start.shell.append(f"{{ {text}; true; }}")
            else:
                start.shell.append(text)
    return start


_RAY_START_AT = re.compile(r"(^|&&|\|\||;|&|\||\n)\s*ray\s+start\b")


def _raw_prefix(command: str, segments: list[tuple[list[str], str | None]], start: _Start) -> int:
    """Keep the shell text before a command's `ray start` as written (quotes and `$VAR`s intact), when it holds
    nothing the operator drops; return how many segments that took (0: none, handle them one by one)."""
    first = next((k for k, (seg, _) in enumerate(segments) if seg[:2] == ["ray", "start"]), None)
    if not first:
        return 0
    before = segments[:first]
    if any(seg[:2] == ["ray", "stop"] or _client_server(seg) for seg, _ in before):
        return 0
    match = _RAY_START_AT.search(command)
    if match is None or not match.group(1):
        return 0
    text = command[: match.start()].strip()
    expected = [token for seg, sep in before for token in [*seg, sep or ""] if token][:-1]
    try:
        lexer = shlex.shlex(text, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split = True
        if list(lexer) != expected:
            return 0
    except ValueError:
        return 0
    separator = before[-1][1]
    if separator == "&&":
        start.shell.append(f"{{ {text}; }}")
    elif separator == "&":
        start.shell.append(f"{{ {text} & }}")
    else:
        start.shell.append(f"{{ {text}; true; }}")
    return first


def _client_server(segment: list[str]) -> bool:
    return len(segment) >= 3 and segment[0].rsplit("/", 1)[-1].startswith("python") and segment[1:3] == [
        "-m",
        CLIENT_SERVER_MODULE,
    ]


def _start_flags(args: list[str], where: str, *, head: bool, start: _Start, ctx: _Context) -> None:
    i = 0
    while i < len(args):
        token = args[i]
        i += 1
        if not token.startswith("-") or token.strip("-") == "":
            ctx.warnings.append(ConfigWarning(where, f"{_short(token)} ignored: `ray start` takes only flags"))
            continue
        flag, eq, value = token.lstrip("-").partition("=")
        if not eq:
            if i < len(args) and not args[i].startswith("-"):
                value = args[i]
                i += 1
            else:
                value = ""
        _start_flag(flag, value, where, head=head, start=start, ctx=ctx)


def _start_flag(flag: str, value: str, where: str, *, head: bool, start: _Start, ctx: _Context) -> None:
    given = f"--{flag}" + (f"={value}" if value else "")
    name = RENAMED_FLAGS.get(flag, flag)
    if name == "port" and head:
        if value != GCS_PORT:
            ctx.warnings.append(ConfigWarning(where, f"{given} ignored: the head's GCS always listens on {GCS_PORT}"))
        return
    if name in (_SILENT_FLAGS_HEAD if head else _SILENT_FLAGS_WORKER):
        return
    if name in MANAGED_START_PARAMS:
        ctx.warnings.append(ConfigWarning(where, f"{given} ignored: the operator sets it"))
        return
    if flag in DROPPED_FLAGS:
        ctx.warnings.append(ConfigWarning(where, f"{given} ignored: {DROPPED_FLAGS[flag]}"))
        return
    if name not in RAY_START_FLAGS:
        ctx.warnings.append(
            ConfigWarning(
                where,
                f"{given} ignored: not a flag of `ray start` in Ray 2; passing it would keep the node from starting",
            )
        )
        return
    if name != flag:
        ctx.notes.append(ConfigWarning(where, f"--{flag} is --{name} in Ray 2: passed as --{name}"))
    start.params[name] = value
    start.origin[name] = where


def _resolve_params(start: _Start, template: Mapping[str, Any] | None, head: bool, ctx: _Context) -> dict[str, str]:
    """The start flags of one group, with `$VAR` references resolved from its pod template the way the container's
    shell would have under `ray up`; a flag whose value cannot be resolved is reported and left out."""
    _, container = _ray_container(template, head)
    env = container_env(container)
    out: dict[str, str] = {}
    for flag, value in start.params.items():
        names = references(value)
        if not names and "`" not in value and "$(" not in value:
            _check_port(flag, value, start.origin[flag])
            out[flag] = value
            continue
        where = start.origin[flag]
        resolved = expand(value, env)
        if resolved is None:
            unknown = ", ".join(f"${n}" for n in names if env.get(n) is None) or value
            fallback = "; resources come from the container's requests and limits instead" if flag in (
                "num-cpus", "num-gpus", "memory", "object-store-memory") else ""
            ctx.warnings.append(
                ConfigWarning(
                    where,
                    f"--{flag}={value} ignored: the pod template does not determine {unknown} (only literal env "
                    f"values and resourceFieldRef of the container's own resources are resolved){fallback}",
                )
            )
            continue
        _check_port(flag, resolved, where)
        out[flag] = resolved
        ctx.notes.append(
            ConfigWarning(where, f"--{flag}={value} resolved to --{flag}={resolved} from the Ray container's env")
        )
    return out


def _ray_container(template: Mapping[str, Any] | None, head: bool) -> tuple[int, Mapping[str, Any]]:
    """(index, container) of the Ray container as the builders choose it: the one named ray-head (ray-worker),
    else the first; (-1, {}) when there is none."""
    spec = (template or {}).get("spec")
    containers = spec.get("containers") if isinstance(spec, Mapping) else None
    if not isinstance(containers, list) or not containers:
        return -1, {}
    wanted = "ray-head" if head else "ray-worker"
    for i, c in enumerate(containers):
        if isinstance(c, Mapping) and c.get("name") == wanted:
            return i, c
    return (0, containers[0]) if isinstance(containers[0], Mapping) else (-1, {})


def _pod_template(value: Any, path: str, warnings: list[ConfigWarning], budget: _Budget) -> dict[str, Any] | None:
    """A pod manifest (`kind: Pod`) as a pod template: metadata labels and annotations, and the spec."""
    if value is None:
        return None
    pod = _Section(value, path, warnings)
    api_version = pod.get("apiVersion")
    if api_version is not None and api_version != "v1":
        raise ConfigurationError(f"must be 'v1', got {_short(api_version)}", field=pod.key_path("apiVersion"))
    kind = pod.get("kind")
    if kind is not None and kind != "Pod":
        raise ConfigurationError(f"must be 'Pod', got {_short(kind)}", field=pod.key_path("kind"))
    template: dict[str, Any] = {}
    metadata = pod.section("metadata")
    kept: dict[str, Any] = {}
    for key in ("labels", "annotations"):
        item = metadata.get(key)
        if item is not None:
            kept[key] = _json_copy(item, metadata.key_path(key), budget)
    for key in ("name", "generateName"):
        metadata.ignore(
            key, "ignored: the operator names pods <name>-head-<5 characters> and <name>-<group>-<5 characters>"
        )
    metadata.ignore("namespace", "ignored: pods run in the Ray object's namespace")
    metadata.report_unknown("ignored: only labels and annotations of pod metadata are used")
    if kept:
        template["metadata"] = kept
    spec = pod.get("spec")
    if spec is not None:
        if not isinstance(spec, Mapping):
            raise ConfigurationError("must be a mapping (a pod spec)", field=pod.key_path("spec"))
        template["spec"] = _json_copy(spec, pod.key_path("spec"), budget)
    _check_template_metadata(template, path)
    pod.report_unknown("ignored: only apiVersion, kind, metadata and spec of a pod manifest are used")
    return template


def _config_pod(value: Any, path: str, *, head: bool, ctx: _Context) -> dict[str, Any] | None:
    """A pod manifest of a configuration, with `ray up`'s contract applied: the Ray container's command is replaced
    by the configuration's setup and start commands, and a ServiceAccount the configuration asked `ray up` to create
    is replaced by the operator's (the head's autoscaler account; the namespace's default for the others)."""
    template = _pod_template(value, path, ctx.warnings, ctx.budget)
    if not template or not isinstance(template.get("spec"), dict):
        return template
    spec: dict[str, Any] = template["spec"]
    index, _ = _ray_container(template, head)
    if index >= 0:
        container = spec["containers"][index]
        command, args = container.get("command"), container.get("args")
        if command or args:
            where = f"{path}.spec.containers[{index}]"
            shown = " ".join(str(p) for p in [*_as_list(command), *_as_list(args)])
            if _START_HOOK in json.dumps([command, args]):
                pass  # the command starts Ray itself through the operator's start command
            elif keep_alive(command, args):
                container.pop("command", None)
                container.pop("args", None)
                ctx.notes.append(ConfigWarning(
                    f"{where}.command",
                    f"the keep-alive command {_short(shown)} is replaced by the configuration's setup and start commands: "
                    "`ray up` ran them in the pod over kubectl exec, the operator makes them the container's command",
                ))
            else:
                container.pop("command", None)
                container.pop("args", None)
                ctx.warnings.append(ConfigWarning(
                    f"{where}.command",
                    f"{_short(shown)} is not run: as under `ray up`, Ray runs from the configuration's setup and start "
                    f"commands, which become the container's command (a command that runs ${_START_HOOK} is kept)",
                ))
    for key in ("serviceAccountName", "serviceAccount"):
        account = spec.get(key)
        if isinstance(account, str) and account in ctx.accounts:
            del spec[key]
            instead = (
                f"the operator's autoscaler ServiceAccount ({ctx.name}-autoscaler) when autoscaling is on, else the "
                "namespace's default" if head else "the namespace's default ServiceAccount"
            )
            ctx.notes.append(ConfigWarning(
                f"{path}.spec.{key}",
                f"{_short(account)} is the account the configuration asked `ray up` to create; the pod runs as {instead}",
            ))
    return template


_START_HOOK = "RAYOP_RAY_START_COMMAND"


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def _legacy(
    config: _Section,
    *,
    ctx: _Context,
    images: _Images,
    starts: _StartCommands,
    head_setup: list[str],
    worker_setup: list[str],
    max_workers: int | None,
) -> tuple[HeadGroup, list[WorkerGroup]]:
    if config.has("head_node_type"):
        config.warn("head_node_type", "ignored: it only has a meaning together with available_node_types")
    head_template = _config_pod(config.get("head_node"), config.key_path("head_node"), head=True, ctx=ctx)
    head_params = _resolve_params(starts.head, head_template, True, ctx)
    head = HeadGroup(
        template=head_template,
        image=_template_image(head_template) or images.head,
        ray_start_params=head_params,
        resources=_resources(
            head_params, config.key_path("head_start_ray_commands"), head_template, config.key_path("head_node")
        ),
        setup_commands=tuple(head_setup + starts.head.shell),
    )
    _check_group_name(ctx.name, DEFAULT_WORKER_GROUP, "metadata.name")
    worker_template = _config_pod(config.get("worker_nodes"), config.key_path("worker_nodes"), head=False, ctx=ctx)
    worker_params = _resolve_params(starts.worker, worker_template, False, ctx)
    low, high, start = _bounds(
        config.integer("min_workers"), max_workers, config.integer("initial_workers"), f"{CONFIG_PATH}.", _CONFIG_NAMES
    )
    group = WorkerGroup(
        name=DEFAULT_WORKER_GROUP,
        template=worker_template,
        image=_template_image(worker_template) or images.worker,
        ray_start_params=worker_params,
        resources=_resources(
            worker_params,
            config.key_path("worker_start_ray_commands"),
            worker_template,
            config.key_path("worker_nodes"),
        ),
        min_workers=low,
        max_workers=high,
        desired_workers=start,
        initial_workers=start,
        setup_commands=tuple(worker_setup + starts.worker.shell),
    )
    return head, [group]


_RESOURCE_PARAMS = {
    "CPU": "num-cpus",
    "GPU": "num-gpus",
    "memory": "memory",
    "object_store_memory": "object-store-memory",
}


def _type_resources(section: _Section, key: str) -> dict[str, str]:
    """A node type's `resources` as ray start params (num-cpus, num-gpus, memory, resources JSON)."""
    value = section.get(key)
    if value is None:
        return {}
    resources = _Section(value, section.key_path(key), section.warnings)
    params: dict[str, str] = {}
    custom: dict[str, float] = {}
    for name in resources.data:
        amount = resources.number(name)
        if amount is None:
            raise ConfigurationError("must be a number", field=resources.key_path(name))
        if name in _RESOURCE_PARAMS:
            if not amount.is_integer():
                raise ConfigurationError("must be a whole number", field=resources.key_path(name))
            params[_RESOURCE_PARAMS[name]] = str(int(amount))
        else:
            custom[name] = int(amount) if amount.is_integer() else amount
    if custom:
        params["resources"] = json.dumps(custom, sort_keys=True)
    return params


def _group_name(type_name: str) -> str:
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", type_name.lower())).strip("-")


def _node_types(
    config: _Section,
    *,
    ctx: _Context,
    images: _Images,
    starts: _StartCommands,
    head_setup: list[str],
    worker_setup: tuple[list[str], list[str]],
    max_workers: int | None,
) -> tuple[HeadGroup, list[WorkerGroup]]:
    name = ctx.name
    for key in ("head_node", "worker_nodes"):
        config.ignore(key, "ignored: available_node_types is set; put the pod manifest in a node type's node_config")
    for key in ("min_workers", "initial_workers"):
        config.ignore(key, "ignored: with available_node_types, set min_workers on each node type")
    types = config.section("available_node_types")
    head_type = config.string("head_node_type")
    if head_type is None:
        raise ConfigurationError("is required with available_node_types", field=config.key_path("head_node_type"))
    if head_type not in types.data:
        raise ConfigurationError(
            f"{_short(head_type)} is not one of available_node_types", field=config.key_path("head_node_type")
        )
    common_setup, global_worker_setup = worker_setup

    head: HeadGroup | None = None
    groups: list[WorkerGroup] = []
    names: dict[str, str] = {}
    for type_name in types.data:
        node = types.section(type_name)
        is_head = type_name == head_type
        template = _config_pod(node.get("node_config"), node.key_path("node_config"), head=is_head, ctx=ctx)
        node.ignore("docker", "ignored: pods already run in containers; set the image in node_config")
        node.ignore("labels", "ignored: Ray node labels are not supported yet; use custom resources")
        type_params = _type_resources(node, "resources")
        if is_head:
            for key in ("min_workers", "max_workers"):
                value = node.integer(key)
                if value:
                    node.warn(key, "ignored: there is always exactly one head")
            node.ignore("worker_setup_commands", "ignored: it applies to worker node types only")
            node.ignore("idle_timeout_s", "ignored: the head is never removed")
            params = {**_resolve_params(starts.head, template, True, ctx), **type_params}
            head = HeadGroup(
                template=template,
                image=_template_image(template) or images.head,
                ray_start_params=params,
                resources=_resources(params, node.key_path("resources"), template, node.key_path("node_config")),
                setup_commands=tuple(head_setup + starts.head.shell),
            )
            node.report_unknown("not a node type key; ignored")
            continue
        group = _group_name(type_name)
        where = types.key_path(type_name)
        if group in names:
            raise ConfigurationError(
                f"node types {_short(names[group])} and {_short(type_name)} both become worker group {_short(group)}", field=where
            )
        if not group:
            raise ConfigurationError("a worker node type needs a name with letters or digits", field=where)
        if group == HEAD_GROUP:
            raise ConfigurationError("'head' is reserved for the head; rename this worker node type", field=where)
        names[group] = type_name
        _check_group_name(name, group, where)
        if len(groups) >= MAX_WORKER_GROUPS:
            raise ConfigurationError(f"at most {MAX_WORKER_GROUPS} worker node types are supported", field=where)
        minimum = node.integer("min_workers")
        maximum = node.integer("max_workers")
        if maximum is None and max_workers is not None:
            maximum = max(max_workers, minimum or 0)
        low, high, start = _bounds(minimum, maximum, None, f"{where}.", _CONFIG_NAMES)
        setup = node.commands("worker_setup_commands") if node.has("worker_setup_commands") else global_worker_setup
        idle_s = node.number("idle_timeout_s")
        params = {**_resolve_params(starts.worker, template, False, ctx), **type_params}
        groups.append(
            WorkerGroup(
                name=group,
                template=template,
                image=_template_image(template) or images.worker,
                ray_start_params=params,
                resources=_resources(params, node.key_path("resources"), template, node.key_path("node_config")),
                min_workers=low,
                max_workers=high,
                desired_workers=start,
                initial_workers=start,
                setup_commands=tuple(common_setup + setup + starts.worker.shell),
                idle_timeout_seconds=idle_s,
            )
        )
        node.report_unknown("not a node type key; ignored")
    if head is None:  # unreachable: head_type is one of the types
        raise ConfigurationError("is not one of available_node_types", field=config.key_path("head_node_type"))
    return head, groups


# -- provider.services ------------------------------------------------------------------------------------------------

# Service spec keys passed through as given (the selector is the operator's; status and cluster-assigned fields are
# the API server's).
_SERVICE_SPEC_KEYS = {
    "ports",
    "type",
    "clusterIP",
    "sessionAffinity",
    "sessionAffinityConfig",
    "publishNotReadyAddresses",
    "externalTrafficPolicy",
    "internalTrafficPolicy",
    "loadBalancerSourceRanges",
    "loadBalancerClass",
    "externalName",
    "ipFamilyPolicy",
    "ipFamilies",
    "trafficDistribution",
    "allocateLoadBalancerNodePorts",
}


def _services(
    value: Any, path: str, head: HeadGroup, groups: Sequence[WorkerGroup], ctx: _Context
) -> tuple[DeclaredService, ...]:
    """The Services of `provider.services`: each one that selects some of the cluster's pods (by the labels of their
    pod templates) is created; the others are reported with the reason."""
    if value is None or _is_empty(value):
        return ()
    if not isinstance(value, list):
        raise ConfigurationError("must be a list of Service manifests", field=path)
    labelled = [(HEAD_GROUP, head.template)] + [(g.name, g.template) for g in groups]
    out: list[DeclaredService] = []
    seen: set[str] = set()
    for i, item in enumerate(value):
        where = f"{path}[{i}]"
        service = _Section(item, where, ctx.warnings)
        kind, api = service.get("kind"), service.get("apiVersion")
        metadata = service.section("metadata")
        svc_name = metadata.get("name")
        if kind not in (None, "Service") or api not in (None, "v1"):
            ctx.warnings.append(ConfigWarning(where, f"not created: {api}/{kind} is not a v1 Service"))
            continue
        if not isinstance(svc_name, str) or not re.match(DNS_1035_LABEL, svc_name) or len(svc_name) > NAME_LIMIT:
            ctx.warnings.append(ConfigWarning(
                metadata.key_path("name"), f"not created: {_short(svc_name)} is not a Service name (a DNS-1035 label)"))
            continue
        if svc_name == f"{ctx.name}-head":
            ctx.warnings.append(ConfigWarning(
                metadata.key_path("name"),
                f"not created: {svc_name} is the operator's own head Service (GCS 6379, dashboard 8265, client 10001, "
                "metrics 8080)"))
            continue
        if svc_name in seen:
            raise ConfigurationError(f"Service {_short(svc_name)} is declared twice", field=metadata.key_path("name"))
        seen.add(svc_name)
        kept_meta: dict[str, dict[str, str]] = {}
        for key in ("labels", "annotations"):
            item_value = metadata.get(key)
            if item_value is None:
                continue
            if not isinstance(item_value, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in item_value.items()
            ):
                raise ConfigurationError("must be a map of strings", field=metadata.key_path(key))
            kept_meta[key] = dict(item_value)
        metadata.ignore("namespace", "ignored: the Service is created in the Ray object's namespace")
        metadata.report_unknown("ignored: only name, labels and annotations of a Service's metadata are used")
        spec = service.section("spec")
        selector = spec.get("selector")
        if not isinstance(selector, Mapping) or not selector or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in selector.items()
        ):
            ctx.warnings.append(ConfigWarning(
                spec.key_path("selector"),
                f"Service {svc_name} not created: it needs a selector (a map of labels) naming the pods of the head "
                "or of worker nodes"))
            continue
        targets = tuple(
            group for group, template in labelled
            if all(_template_labels(template).get(k) == v for k, v in selector.items())
        )
        if not targets:
            shown = ", ".join(f"{k}={v}" for k, v in selector.items())
            ctx.warnings.append(ConfigWarning(
                spec.key_path("selector"),
                f"Service {svc_name} not created: its selector ({shown}) matches the labels of no pod template of the "
                "configuration, so it would select none of the cluster's pods"))
            continue
        kept: dict[str, Any] = {}
        for key in list(spec.data):
            if key == "selector":
                continue
            if key in _SERVICE_SPEC_KEYS:
                kept[key] = _json_copy(spec.get(key), spec.key_path(key), ctx.budget)
            else:
                spec.ignore(key, "ignored: the API server or the operator sets it")
        service.ignore("status", "ignored: the API server writes a Service's status")
        service.report_unknown("ignored: only apiVersion, kind, metadata and spec of a Service manifest are used")
        out.append(DeclaredService(
            name=svc_name,
            selector=dict(selector),
            targets=targets,
            spec=kept,
            labels=kept_meta.get("labels", {}),
            annotations=kept_meta.get("annotations", {}),
        ))
        ctx.notes.append(ConfigWarning(
            where, f"Service {svc_name} is created for the pods of {', '.join(targets)} (its selector plus the "
            "cluster's own labels)"))
    return tuple(out)


def _template_labels(template: Mapping[str, Any] | None) -> Mapping[str, Any]:
    meta = (template or {}).get("metadata")
    found = meta.get("labels") if isinstance(meta, Mapping) else None
    return found if isinstance(found, Mapping) else {}
