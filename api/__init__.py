"""The `Ray` API (group ray.k8s.io, version v1alpha1): types, CRD and the effective cluster model.

Modules (all pure: no I/O, no clock, no environment, no Kubernetes client):
- `rayop.api.types`: the custom resource as frozen dataclasses (`Ray`, `RaySpec`, `RayStatus`, ...) and constants
  (group/version/kind, condition types, labels, name limits).
- `rayop.api.crd`: the CustomResourceDefinition generated from those types (`python -m rayop.api.crd`).
- `rayop.api.model`: the effective cluster model everything downstream works on.
- `rayop.api.convert`: `effective_cluster(ray) -> Conversion`, the one conversion from either form to the model;
  the forms are converted by `rayop.api.kubeform` (the structured fields) and `rayop.api.configform` (the
  `configuration`, with `configyaml`, `configstart`, `configpods`, `configservices` and `legacy`), sharing
  `rayop.api.modelcheck` and `rayop.api.groups`.
"""

from rayop.api.convert import convert_spec, effective_cluster, parse_configuration
from rayop.api.model import (
    AutoscalingSettings,
    ClusterModel,
    ConfigurationError,
    ConfigWarning,
    Conversion,
    HeadGroup,
    RayResources,
    WorkerGroup,
)
from rayop.api.types import API_VERSION, GROUP, KIND, PLURAL, VERSION, Ray, RayCondition, RaySpec, RayStatus

__all__ = [
    "API_VERSION",
    "GROUP",
    "KIND",
    "PLURAL",
    "VERSION",
    "AutoscalingSettings",
    "ClusterModel",
    "ConfigWarning",
    "ConfigurationError",
    "Conversion",
    "HeadGroup",
    "Ray",
    "RayCondition",
    "RayResources",
    "RaySpec",
    "RayStatus",
    "WorkerGroup",
    "convert_spec",
    "effective_cluster",
    "parse_configuration",
]
