"""Checks and copies both forms of a `Ray` share: names, untrusted values, pod templates.

Guarantees:
- Every check raises `ConfigurationError` naming the field, and nothing else, whatever value it is given.
- `json_copy` and `copy_template` return deep copies holding only JSON values, within a `Budget` of values and a
  bound on nesting, so a configuration that expands YAML aliases cannot take unbounded work or memory.
- `copy_template` checks the parts of a pod template the builders read (see the shapes below); what the builders
  do not read is left to the API server.
- `short(value)` is `repr(value)` bounded in time and length, for messages.
- Pure: no I/O, no clock, no environment.
"""

from __future__ import annotations

import math
import re
import reprlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rayop.api.model import ConfigurationError
from rayop.api.types import (
    DNS_1035_LABEL,
    DNS_LABEL,
    HEAD_GROUP,
    MAX_GROUP_NAME_LENGTH,
    MAX_NAME_LENGTH,
    MAX_NAME_PLUS_GROUP_LENGTH,
    NAME_LIMIT,
)

__all__ = [
    "MAX_TEMPLATE_VALUES",
    "MAX_DEPTH",
    "Budget",
    "short",
    "finite_number",
    "is_empty",
    "check_name",
    "check_group_name",
    "json_copy",
    "copy_template",
    "check_template",
    "first_container",
    "ray_container",
    "template_image",
]

# At most this many JSON values (objects, arrays, scalars) are copied out of templates: a bound on work and memory
# for configurations that expand YAML aliases.
MAX_TEMPLATE_VALUES = 200_000
MAX_DEPTH = 100

_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict, _REPR.maxset = 2, 12, 12, 12, 12
_REPR.maxstring, _REPR.maxlong, _REPR.maxother = 1000, 100, 200


def short(value: object) -> str:
    """`repr(value)` for a message, in bounded time and length: a few lines of YAML aliases can spell out a value of
    a billion elements (the same as repr for ordinary values)."""
    return _REPR.repr(value)


def finite_number(value: object) -> float | None:
    """`value` as a float when it is a JSON number of sensible size, else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, int):
        return float(value) if abs(value) <= 10**15 else None
    return value if math.isfinite(value) and abs(value) <= 1e15 else None


def is_empty(value: object) -> bool:
    return value is None or value is False or (isinstance(value, (str, list, dict, tuple)) and len(value) == 0)


# -- names ------------------------------------------------------------------------------------------------------------


def check_name(name: str) -> None:
    """The `Ray`'s own name: a DNS-1035 label short enough for `<name>-head-<5 characters>`."""
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


def check_group_name(ray_name: str, group: str, field: str) -> None:
    """A worker group's name: a DNS label other than "head", short enough for `<name>-<group>-<5 characters>`."""
    if group == HEAD_GROUP:
        raise ConfigurationError("'head' is reserved for the head group", field=field)
    if not re.match(DNS_LABEL, group) or len(group) > MAX_GROUP_NAME_LENGTH:
        raise ConfigurationError(
            f"{short(group)} is not a DNS label of at most {MAX_GROUP_NAME_LENGTH} characters", field=field
        )
    if len(ray_name) + len(group) > MAX_NAME_PLUS_GROUP_LENGTH:
        raise ConfigurationError(
            f"worker pods would be named {ray_name}-{group}-<5 characters>, longer than {NAME_LIMIT} characters: "
            f"metadata.name and the group name together must be at most {MAX_NAME_PLUS_GROUP_LENGTH} characters",
            field=field,
        )


# -- JSON copies ------------------------------------------------------------------------------------------------------


@dataclass
class Budget:
    """How many more values the conversion may copy out of templates."""

    remaining: int

    def spend(self, path: str) -> None:
        self.remaining -= 1
        if self.remaining < 0:
            raise ConfigurationError(f"too large: more than {MAX_TEMPLATE_VALUES} values in pod templates", field=path)


# The result is a JSON value whose shape only the caller's later checks know, hence Any.
def json_copy(value: object, path: str, budget: Budget, depth: int = 0) -> Any:
    """A deep copy of `value` that holds only JSON values; ConfigurationError naming the path otherwise."""
    budget.spend(path)
    if depth > MAX_DEPTH:
        raise ConfigurationError(f"nested more than {MAX_DEPTH} levels deep", field=path)
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigurationError(f"{short(value)} is not a JSON number", field=path)
        return value
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ConfigurationError(f"keys must be strings, got {short(key)}", field=path)
            out[key] = json_copy(item, f"{path}.{key}", budget, depth + 1)
        return out
    if isinstance(value, (list, tuple)):
        return [json_copy(item, f"{path}[{i}]", budget, depth + 1) for i, item in enumerate(value)]
    raise ConfigurationError(f"{type(value).__name__} is not a JSON value (quote it to make it a string)", field=path)


def copy_template(value: object, path: str, budget: Budget) -> dict[str, Any] | None:
    """A pod template of the structured form as a checked JSON copy; None when it is not given."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ConfigurationError("a pod template must be an object", field=path)
    copied: dict[str, Any] = json_copy(value, path, budget)
    check_template(copied, path)
    return copied


# -- pod template shapes ----------------------------------------------------------------------------------------------

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
# Fields of list items the builders collect into sets or compare (names, ports, mount paths): "string" or "integer".
_ITEM_FIELDS: dict[str, dict[str, str]] = {
    "volumes": {"name": "string"},
    "env": {"name": "string"},
    "ports": {"name": "string", "containerPort": "integer"},
    "volumeMounts": {"name": "string", "mountPath": "string"},
}


def _check_shape(value: object, shape: str, where: str) -> None:
    if shape == "string" and not isinstance(value, str):
        raise ConfigurationError(f"must be a string, got {short(value)}", field=where)
    if shape in ("object", "map") and not isinstance(value, Mapping):
        raise ConfigurationError("must be an object" if shape == "object" else "must be a map of strings to strings",
                                 field=where)
    if shape == "map" and isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(v, str):
                raise ConfigurationError(f"the value of {short(k)} must be a string, got {short(v)}", field=where)
    if shape in ("objects", "strings"):
        if not isinstance(value, list):
            raise ConfigurationError("must be a list", field=where)
        for i, item in enumerate(value):
            if shape == "objects" and not isinstance(item, Mapping):
                raise ConfigurationError(f"must be an object, got {short(item)}", field=f"{where}[{i}]")
            if shape == "strings" and not isinstance(item, str):
                raise ConfigurationError(f"must be a string, got {short(item)}", field=f"{where}[{i}]")


def _check_fields(parent: Mapping[str, object], shapes: Mapping[str, str], where: str) -> None:
    """Each of `shapes`' keys that `parent` sets has that shape."""
    for key, shape in shapes.items():
        if parent.get(key) is not None:
            _check_shape(parent[key], shape, f"{where}.{key}")


# The items were checked to be mappings (shape "objects") before; None when the list is unset.
def _check_items(items: Sequence[Mapping[str, object]] | None, fields: Mapping[str, str], where: str) -> None:
    for i, item in enumerate(items or ()):
        for key, shape in fields.items():
            value = item.get(key)
            if value is None:
                continue
            if shape == "integer" and (not isinstance(value, int) or isinstance(value, bool)):
                raise ConfigurationError(f"must be an integer, got {short(value)}", field=f"{where}[{i}].{key}")
            if shape == "string":
                _check_shape(value, "string", f"{where}[{i}].{key}")


def check_template(template: Mapping[str, Any], path: str) -> None:
    """The parts of a pod template the builders use have the types Kubernetes gives them: metadata labels and
    annotations map strings to strings, the spec and its containers are objects, lists are lists (see the shapes
    above); ConfigurationError naming the field otherwise. Fields the builders do not read are the API server's to
    judge when the pod is created."""
    metadata = template.get("metadata")
    if metadata is not None:
        _check_shape(metadata, "object", f"{path}.metadata")
        _check_fields(metadata, {"labels": "map", "annotations": "map"}, f"{path}.metadata")
    spec = template.get("spec")
    if spec is None:
        return
    _check_shape(spec, "object", f"{path}.spec")
    _check_fields(spec, _POD_SPEC_SHAPE, f"{path}.spec")
    _check_items(spec.get("volumes"), _ITEM_FIELDS["volumes"], f"{path}.spec.volumes")
    for list_key in ("containers", "initContainers"):
        for i, container in enumerate(spec.get(list_key) or ()):
            _check_container(container, f"{path}.spec.{list_key}[{i}]")


def _check_container(container: Mapping[str, Any], where: str) -> None:
    _check_fields(container, _CONTAINER_SHAPE, where)
    for key in ("env", "ports", "volumeMounts"):
        _check_items(container.get(key), _ITEM_FIELDS[key], f"{where}.{key}")
    resources = container.get("resources") or {}
    _check_fields(resources, {"limits": "object", "requests": "object"}, f"{where}.resources")


# -- reading templates ------------------------------------------------------------------------------------------------


def first_container(template: Mapping[str, Any] | None) -> Mapping[str, object]:
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


def ray_container(template: Mapping[str, Any] | None, head: bool) -> tuple[int, Mapping[str, object]]:
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


def template_image(template: Mapping[str, Any] | None) -> str | None:
    image = first_container(template).get("image")
    return image if isinstance(image, str) and image else None
