"""The Services a `configuration` declares (`provider.services`) as `DeclaredService`s of the model.

Guarantees:
- A Service is created only when it is a v1 Service with a valid name other than the operator's own head Service,
  and its selector matches the labels of some pod template of the configuration; every other one is reported with
  the reason (a warning), and each created one with the groups it selects (a note).
- The same name twice is an error. Only name, labels and annotations of the metadata, and the spec keys a user
  sets (not the selector, which the operator extends, nor cluster-assigned ones) are kept, as a JSON copy.
- Pure: no I/O, no clock, no environment.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from rayop.api.configyaml import Context, Section
from rayop.api.model import ConfigurationError, ConfigWarning, DeclaredService, HeadGroup, WorkerGroup
from rayop.api.modelcheck import is_empty, json_copy, short
from rayop.api.types import DNS_1035_LABEL, HEAD_GROUP, NAME_LIMIT

__all__ = ["declared_services"]

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

# (group name, pod template) of every group of the cluster, the head first.
_Labelled = list[tuple[str, Mapping[str, Any] | None]]


def declared_services(
    value: object, path: str, head: HeadGroup, groups: Sequence[WorkerGroup], ctx: Context
) -> tuple[DeclaredService, ...]:
    """The Services of `provider.services`: each one that selects some of the cluster's pods (by the labels of their
    pod templates) is created; the others are reported with the reason."""
    if value is None or is_empty(value):
        return ()
    if not isinstance(value, list):
        raise ConfigurationError("must be a list of Service manifests", field=path)
    labelled: _Labelled = [(HEAD_GROUP, head.template)] + [(g.name, g.template) for g in groups]
    out: list[DeclaredService] = []
    seen: set[str] = set()
    for i, item in enumerate(value):
        declared = _service(item, f"{path}[{i}]", labelled, seen, ctx)
        if declared is not None:
            out.append(declared)
    return tuple(out)


def _service(item: object, where: str, labelled: _Labelled, seen: set[str], ctx: Context) -> DeclaredService | None:
    """One Service manifest; None when it is not created (reported)."""
    service = Section(item, where, ctx.warnings)
    kind, api = service.get("kind"), service.get("apiVersion")
    metadata = service.section("metadata")
    raw_name = metadata.get("name")
    if kind not in (None, "Service") or api not in (None, "v1"):
        ctx.warnings.append(ConfigWarning(where, f"not created: {api}/{kind} is not a v1 Service"))
        return None
    svc_name = _service_name(raw_name, metadata, ctx)
    if svc_name is None:
        return None
    if svc_name in seen:
        raise ConfigurationError(f"Service {short(svc_name)} is declared twice", field=metadata.key_path("name"))
    seen.add(svc_name)
    kept_meta = _service_metadata(metadata)
    spec = service.section("spec")
    selected = _selected(spec, svc_name, labelled, ctx)
    if selected is None:
        return None
    selector, targets = selected
    kept = _service_spec(spec, ctx)
    service.ignore("status", "ignored: the API server writes a Service's status")
    service.report_unknown("ignored: only apiVersion, kind, metadata and spec of a Service manifest are used")
    ctx.notes.append(ConfigWarning(
        where, f"Service {svc_name} is created for the pods of {', '.join(targets)} (its selector plus the "
        "cluster's own labels)"))
    return DeclaredService(
        name=svc_name,
        selector=selector,
        targets=targets,
        spec=kept,
        labels=kept_meta.get("labels", {}),
        annotations=kept_meta.get("annotations", {}),
    )


def _service_name(svc_name: object, metadata: Section, ctx: Context) -> str | None:
    """The name of a Service that may be created under it; None (reported) otherwise."""
    if not isinstance(svc_name, str) or not re.match(DNS_1035_LABEL, svc_name) or len(svc_name) > NAME_LIMIT:
        ctx.warnings.append(ConfigWarning(
            metadata.key_path("name"), f"not created: {short(svc_name)} is not a Service name (a DNS-1035 label)"))
        return None
    if svc_name == f"{ctx.name}-head":
        ctx.warnings.append(ConfigWarning(
            metadata.key_path("name"),
            f"not created: {svc_name} is the operator's own head Service (GCS 6379, dashboard 8265, client 10001, "
            "metrics 8080)"))
        return None
    return svc_name


def _string_map(value: object) -> dict[str, str] | None:
    """`value` as a map of strings to strings, or None when it is not one."""
    if not isinstance(value, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        return None
    return dict(value)


def _service_metadata(metadata: Section) -> dict[str, dict[str, str]]:
    """The labels and annotations of a Service's metadata; the rest is reported."""
    kept: dict[str, dict[str, str]] = {}
    for key in ("labels", "annotations"):
        value = metadata.get(key)
        if value is None:
            continue
        strings = _string_map(value)
        if strings is None:
            raise ConfigurationError("must be a map of strings", field=metadata.key_path(key))
        kept[key] = strings
    metadata.ignore("namespace", "ignored: the Service is created in the Ray object's namespace")
    metadata.report_unknown("ignored: only name, labels and annotations of a Service's metadata are used")
    return kept


def _selected(
    spec: Section, svc_name: str, labelled: _Labelled, ctx: Context
) -> tuple[dict[str, str], tuple[str, ...]] | None:
    """The Service's selector and the groups whose pod templates it matches; None (reported) when there are none."""
    raw = spec.get("selector")
    selector = _string_map(raw)
    if not selector:
        ctx.warnings.append(ConfigWarning(
            spec.key_path("selector"),
            f"Service {svc_name} not created: it needs a selector (a map of labels) naming the pods of the head "
            "or of worker nodes"))
        return None
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
        return None
    return selector, targets


def _service_spec(spec: Section, ctx: Context) -> dict[str, Any]:
    """The spec keys a user sets, as a JSON copy; the others are reported."""
    kept: dict[str, Any] = {}
    for key in list(spec.data):
        if key == "selector":
            continue
        if key in _SERVICE_SPEC_KEYS:
            kept[key] = json_copy(spec.get(key), spec.key_path(key), ctx.budget)
        else:
            spec.ignore(key, "ignored: the API server or the operator sets it")
    return kept


def _template_labels(template: Mapping[str, Any] | None) -> Mapping[object, object]:
    meta = (template or {}).get("metadata")
    found = meta.get("labels") if isinstance(meta, Mapping) else None
    return found if isinstance(found, Mapping) else {}
