"""Fixtures shared by every test.

- `cluster` (session): the local control plane, started once (or reused when already up) and brought down at the
  end if this session started it. Set RAYOP_KEEP_CLUSTER=1 to keep it up for the next run.
- `kube`: a `KubeClient` with admin rights on it.
- `namespace`: a fresh namespace per test, deleted (and waited for) afterwards.
- `ray_crd` (session): the `Ray` CRD from manifests/ installed (created or updated) and served.

Tests under tests/integration are marked `cluster` automatically.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from rayop.runtime.kube import ApiError, KubeClient
from tests.support.cluster import LocalCluster, wait_until


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in Path(str(item.fspath)).parts:
            item.add_marker(pytest.mark.cluster)


@pytest.fixture(scope="session")
def cluster() -> Iterator[LocalCluster]:
    local = LocalCluster.ensure()
    yield local
    local.stop()


@pytest.fixture(scope="session")
def ray_crd(cluster: LocalCluster) -> None:
    from tests.support.operator import install_crd

    install_crd(cluster.client())


@pytest.fixture
def kube(cluster: LocalCluster) -> KubeClient:
    return cluster.client()


@pytest.fixture
def namespace(request: pytest.FixtureRequest, kube: KubeClient) -> Iterator[str]:
    base = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-")
    name = f"t-{base}-{uuid.uuid4().hex[:6]}"
    kube.create("/api/v1/namespaces", {"metadata": {"name": name, "labels": {"rayop.dev/test": "true"}}})
    wait_until(lambda: _has_default_sa(kube, name), 30, message=f"default ServiceAccount in {name}")
    yield name
    try:
        kube.delete(f"/api/v1/namespaces/{name}")
    except ApiError as e:
        if not e.not_found:
            raise
    wait_until(lambda: _gone(kube, name), 120, 0.5, message=f"namespace {name} to be deleted")


def _has_default_sa(kube: KubeClient, namespace: str) -> bool:
    try:
        kube.get(f"/api/v1/namespaces/{namespace}/serviceaccounts/default")
        return True
    except ApiError as e:
        if e.not_found:
            return False
        raise


def _gone(kube: KubeClient, namespace: str) -> bool:
    try:
        kube.get(f"/api/v1/namespaces/{namespace}")
        return False
    except ApiError as e:
        if e.not_found:
            return True
        raise
