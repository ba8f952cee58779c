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

This module holds the entry points and what applies to both forms (desiredWorkers, rollingUpdate, the cluster-wide
cap on workers). The forms themselves: `rayop.api.kubeform` (the structured fields) and `rayop.api.configform`
(the `configuration`, with `configyaml`, `configstart`, `configpods` and `configservices`); what both use:
`rayop.api.modelcheck` (names, JSON copies, pod template checks) and `rayop.api.groups` (start params, resources,
worker counts, the groups).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import replace

from rayop.api.configform import from_configuration
from rayop.api.configyaml import parse_configuration
from rayop.api.groups import FormResult, clamping_initial
from rayop.api.kubeform import from_structured
from rayop.api.model import (
    AutoscalingSettings,
    ClusterModel,
    ConfigurationError,
    ConfigWarning,
    Conversion,
    GcsFaultTolerance,
    WorkerGroup,
)
from rayop.api.modelcheck import MAX_TEMPLATE_VALUES, Budget, check_name
from rayop.api.schema import DecodeError, decode
from rayop.api.types import (
    DNS_SUBDOMAIN,
    REDIS_ADDRESS,
    SECRET_KEY,
    SHAPE_FIELDS,
    STORAGE_NAMESPACE,
    GcsFaultToleranceSpec,
    RaySpec,
)

__all__ = ["effective_cluster", "convert_spec", "parse_configuration"]


def effective_cluster(ray: Mapping[str, object]) -> Conversion:
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
    with clamping_initial(updated):
        return convert_spec({} if spec is None else spec, name=name, namespace=namespace or "")


def convert_spec(spec: object, *, name: str, namespace: str = "") -> Conversion:
    """Convert a `Ray`'s spec (decoded JSON) for a Ray named `name` in `namespace`."""
    check_name(name)
    try:
        typed = decode(RaySpec, spec, "spec")
    except DecodeError as e:
        raise ConfigurationError(e.message, field=e.path) from None
    warnings: list[ConfigWarning] = []
    notes: list[ConfigWarning] = []
    budget = Budget(MAX_TEMPLATE_VALUES)
    described: FormResult
    if typed.configuration is not None:
        _check_not_combined(spec)
        described = from_configuration(
            typed.configuration,
            name=name,
            namespace=namespace,
            image=typed.image,
            warnings=warnings,
            notes=notes,
            budget=budget,
        )
    else:
        described = from_structured(typed, name=name, warnings=warnings, budget=budget)
    groups = _apply_desired(described.groups, typed.desired_workers or {}, warnings)
    groups = _apply_rolling_update(groups, typed)
    cluster = ClusterModel(
        name=name,
        namespace=namespace,
        head=described.head,
        worker_groups=tuple(groups),
        autoscaling=_finish_autoscaling(described.autoscaling, groups),
        workers_to_delete=tuple(typed.workers_to_delete or ()),
        image=typed.image,
        services=described.services,
        gcs_fault_tolerance=gcs_fault_tolerance(typed.gcs_fault_tolerance),
    )
    return Conversion(cluster=cluster, warnings=_unique(warnings), form=described.form, notes=_unique(notes))


def gcs_fault_tolerance(spec: GcsFaultToleranceSpec | None) -> GcsFaultTolerance | None:
    """spec.gcsFaultTolerance, checked again (admission checks the same patterns): the Redis address as host and
    port, the password's Secret reference, the storage namespace."""
    if spec is None:
        return None
    where = "spec.gcsFaultTolerance"
    address = spec.redis_address
    if not isinstance(address, str) or not re.match(REDIS_ADDRESS, address):
        raise ConfigurationError(f"must be host:port (a DNS name, an IPv4 address or a bracketed IPv6 address, "
                                 f"then a port), not {address!r}", field=f"{where}.redisAddress")
    host, _, port_text = address.rpartition(":")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ConfigurationError(f"the port must be 1-65535, not {port}", field=f"{where}.redisAddress")
    secret: tuple[str, str] | None = None
    if spec.redis_password is not None:
        ref = spec.redis_password.secret_key_ref
        field = f"{where}.redisPassword.secretKeyRef"
        if not isinstance(ref.name, str) or len(ref.name) > 253 or not re.match(DNS_SUBDOMAIN, ref.name):
            raise ConfigurationError(f"must name a Secret (a DNS subdomain), not {ref.name!r}", field=f"{field}.name")
        if not isinstance(ref.key, str) or len(ref.key) > 253 or not re.match(SECRET_KEY, ref.key):
            raise ConfigurationError(f"must be a Secret key ([-._a-zA-Z0-9]+), not {ref.key!r}", field=f"{field}.key")
        secret = (ref.name, ref.key)
    namespace = spec.external_storage_namespace
    if namespace is not None and (len(namespace) > 128 or not re.match(STORAGE_NAMESPACE, namespace)):
        raise ConfigurationError(f"must be 1-128 characters of [-_.:a-zA-Z0-9], not {namespace!r}",
                                 field=f"{where}.externalStorageNamespace")
    return GcsFaultTolerance(redis_host=host, redis_port=port, password_secret=secret, storage_namespace=namespace)


def _check_not_combined(spec: object) -> None:
    """With a configuration, no structured field may describe the cluster's shape too."""
    if not isinstance(spec, Mapping):
        return
    for key in SHAPE_FIELDS:
        if key in spec and spec[key] is not None:
            raise ConfigurationError(
                "cannot be combined with spec.configuration: the configuration describes the cluster",
                field=f"spec.{key}",
            )


def _unique(items: list[ConfigWarning]) -> tuple[ConfigWarning, ...]:
    """The items in their order, each once (the start commands are checked once per group that uses them)."""
    return tuple(dict.fromkeys(items))


def _apply_desired(
    groups: list[WorkerGroup], desired: Mapping[str, int], warnings: list[ConfigWarning]
) -> list[WorkerGroup]:
    """Each group's desired count: spec.desiredWorkers (the autoscaler's) or its initial count, within its bounds."""
    names = {g.name for g in groups}
    for key in sorted(desired):
        if key not in names:
            warnings.append(ConfigWarning(f"spec.desiredWorkers.{key}", "there is no worker group of that name"))
    out = []
    for g in groups:
        wanted = desired.get(g.name, g.initial_workers)
        out.append(replace(g, desired_workers=min(max(wanted, g.min_workers), g.max_workers)))
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


def _finish_autoscaling(settings: AutoscalingSettings, groups: Sequence[WorkerGroup]) -> AutoscalingSettings:
    total = sum(g.max_workers for g in groups)
    cap = total if settings.max_workers < 0 else min(settings.max_workers, total)
    can_scale = any(g.min_workers < g.max_workers for g in groups)
    return replace(settings, enabled=settings.enabled and can_scale, max_workers=cap)
