"""The `Ray` API (group ray.k8s.io, version v1alpha1): types, CRD and the effective cluster model."""
