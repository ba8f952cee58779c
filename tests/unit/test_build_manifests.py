"""The operator's own manifests: least-privilege RBAC that still covers everything the operator writes and grants,
and a locked-down Deployment with leader election and health probes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from rayop.autoscaler import autoscaler_role_rules
from rayop.cli import CHILDREN

MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"


def docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((MANIFESTS / name).read_text()) if d]


def cluster_role() -> list[dict[str, Any]]:
    (role,) = [d for d in docs("rbac.yaml") if d["kind"] == "ClusterRole"]
    rules: list[dict[str, Any]] = role["rules"]
    return rules


def allows(rules: list[dict[str, Any]], group: str, resource: str, verb: str) -> bool:
    return any(group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"]
               and not r.get("resourceNames") for r in rules)


def test_the_operator_holds_every_permission_it_grants_the_autoscaler() -> None:
    rules = cluster_role()
    for rule in autoscaler_role_rules("any"):
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    assert allows(rules, group, resource, verb), (group, resource, verb)


@pytest.mark.parametrize("resource", CHILDREN, ids=lambda r: r.plural)
def test_the_operator_can_watch_and_write_every_child(resource: Any) -> None:
    rules = cluster_role()
    for verb in ("get", "list", "watch", "create", "delete"):
        assert allows(rules, resource.group, resource.plural, verb), (resource.plural, verb)


def test_least_privilege() -> None:
    rules = cluster_role()
    flat = {(g, r, v) for rule in rules for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    assert not any(v in ("*", "escalate", "bind", "impersonate") or r == "*" or g == "*" for g, r, v in flat)
    assert not any(r == "secrets" for _, r, _ in flat)
    assert not allows(rules, "", "pods", "patch") and not allows(rules, "coordination.k8s.io", "leases", "get")
    assert allows(rules, "ray.k8s.io", "rays/status", "patch")
    (lease_role,) = [d for d in docs("rbac.yaml") if d["kind"] == "Role"]
    assert lease_role["metadata"]["namespace"] == "rayop-system"


def test_deployment_is_locked_down_with_leader_election_and_probes() -> None:
    (deployment,) = [d for d in docs("deployment.yaml") if d["kind"] == "Deployment"]
    assert deployment["metadata"]["namespace"] == "rayop-system"
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert "--leader-elect" in container["args"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"metrics": 8080}
    assert pod["securityContext"]["runAsNonRoot"] is True
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert pod["serviceAccountName"] == "rayop"
    (binding,) = [d for d in docs("rbac.yaml") if d["kind"] == "ClusterRoleBinding"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "rayop", "namespace": "rayop-system"}]
    assert docs("namespace.yaml")[0]["metadata"]["name"] == "rayop-system"


def test_dockerfile_runs_rayop_as_non_root() -> None:
    text = (MANIFESTS.parent / "Dockerfile").read_text()
    # The base is a build arg (hack/build-image.sh passes a local one) defaulting to python:3.11-slim.
    assert text.startswith("#") and "ARG BASE=python:3.11-slim" in text and "FROM ${BASE}\n" in text
    assert "USER 65532:65532" in text and 'ENTRYPOINT ["rayop", "run"]' in text
