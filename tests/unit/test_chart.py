"""The Helm chart (manifests/chart/rayop): the one source of the install manifests.

- the plain manifests under manifests/ are exactly what hack/render-manifests.sh renders from the chart, and the
  chart's crds/ are exactly what the CRD generator writes (so neither can drift);
- `helm lint --strict` passes with the default values and with the combinations below; values.schema.json refuses
  wrong values (unknown keys, enums, minimums);
- the rendered objects follow the values: watchNamespaces -> a Role and RoleBinding in each namespace instead of the
  ClusterRole, and one --namespace each; replicas > 1 -> leader election; serviceMonitor/podMonitor ->
  monitoring.coreos.com objects selecting the operator; the operator's flags parse with its own parser.

Helm comes from hack/build-helm.sh (built once into the cache; `make test` builds it first).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from rayop.api import crd
from rayop.cli import make_parser
from tests.support.cluster import REPO
from tests.support.helm import CHART, NAMESPACE, helm, render_manifests, set_args, template

COMBINATIONS: dict[str, dict[str, str]] = {
    "defaults": {},
    "watch-namespaces": {"watchNamespaces": "{team-a,team-b}"},
    "replicas-2": {"replicas": "2", "leaderElection.enabled": "false"},
    "monitors": {"serviceMonitor.enabled": "true", "podMonitor.enabled": "true"},
    "everything": {"watchNamespaces": "{team-a}", "replicas": "3", "logLevel": "debug", "workers": "8",
                   "rayImage": "rayproject/ray:2.9.0", "extraArgs": "{--resync-period=300}",
                   "nodeSelector.pool": "ops", "namespace.create": "true", "serviceAccount.name": "ops",
                   "serviceMonitor.enabled": "true", "fullnameOverride": "ray-operator"},
}


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def the(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (obj,) = by_kind(objects, kind)
    return obj


def container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (c,) = the(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    return dict(c)


def run_args(objects: list[dict[str, Any]]) -> Any:
    """The Deployment's `rayop run` command line, parsed by the operator's own parser (unknown flags fail)."""
    c = container(objects)
    assert c["command"] == ["rayop", "run"]
    return make_parser().parse_args(["run", *c["args"]])


# -- one source -------------------------------------------------------------------------------------------------


def test_plain_manifests_are_rendered_from_the_chart() -> None:
    rendered = render_manifests()
    assert sorted(rendered) == ["manifests/crd-rayjob.yaml", "manifests/crd.yaml", "manifests/deployment.yaml",
                                "manifests/namespace.yaml", "manifests/rbac.yaml"]
    for path, text in rendered.items():
        assert (REPO / path).read_text() == text, f"{path} differs from the chart: run hack/render-manifests.sh"


def test_chart_crds_are_the_generated_ones() -> None:
    for path, text in crd.rendered_crds().items():
        assert (REPO / path).read_text() == text, f"{path} is stale: run python -m rayop.api.crd --write"
    assert sorted(p.name for p in (CHART / "crds").iterdir()) == ["crd-rayjob.yaml", "crd.yaml"]


# -- lint --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("values", COMBINATIONS.values(), ids=list(COMBINATIONS))
def test_helm_lint_strict(values: dict[str, str]) -> None:
    out = helm("lint", "--strict", str(CHART), "--namespace", NAMESPACE, *set_args(values))
    assert "1 chart(s) linted, 0 chart(s) failed" in out.stdout, out.stdout


def test_helm_lint_fails_on_a_broken_template(tmp_path: Path) -> None:
    """The lint test can fail: a chart with an unclosed action does not pass."""
    chart = tmp_path / "rayop"
    shutil.copytree(CHART, chart)
    (chart / "templates" / "broken.yaml").write_text("kind: ConfigMap\nname: {{ .Values.image.repository\n")
    out = helm("lint", "--strict", str(chart), check=False)
    assert out.returncode != 0 and "1 chart(s) failed" in out.stderr and "unclosed action" in out.stdout, out


# -- the default render ----------------------------------------------------------------------------------------


def test_default_render_is_the_operator_as_installed_today() -> None:
    objects = template()
    assert sorted((o["kind"], o["metadata"]["name"], o["metadata"].get("namespace")) for o in objects) == [
        ("ClusterRole", "rayop", None),
        ("ClusterRoleBinding", "rayop", None),
        ("Deployment", "rayop", NAMESPACE),
        ("Role", "rayop-leader-election", NAMESPACE),
        ("RoleBinding", "rayop-leader-election", NAMESPACE),
        ("Service", "rayop-metrics", NAMESPACE),
        ("ServiceAccount", "rayop", NAMESPACE),
    ]
    for o in objects:
        assert o["metadata"]["labels"]["app.kubernetes.io/name"] == "rayop", o["metadata"]
    deployment = the(objects, "Deployment")
    pod = deployment["spec"]["template"]
    assert deployment["spec"]["replicas"] == 1
    assert pod["metadata"]["labels"].items() >= deployment["spec"]["selector"]["matchLabels"].items()
    assert the(objects, "Service")["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert pod["spec"]["serviceAccountName"] == "rayop"
    subject = {"kind": "ServiceAccount", "name": "rayop", "namespace": NAMESPACE}
    assert the(objects, "ClusterRoleBinding")["subjects"] == [subject]
    assert the(objects, "RoleBinding")["subjects"] == [subject]
    c = container(objects)
    assert c["image"] == "rayop:0.1.0" and c["imagePullPolicy"] == "IfNotPresent"
    assert c["securityContext"]["readOnlyRootFilesystem"] is True and pod["spec"]["securityContext"]["runAsNonRoot"]


def test_default_flags_are_the_operators_defaults() -> None:
    """Only leader election and the json log format differ from `rayop run`'s own defaults."""
    args = vars(run_args(template()))
    defaults = vars(make_parser().parse_args(["run"]))
    changed = {k: (defaults[k], v) for k, v in args.items() if v != defaults[k]}
    assert changed == {"leader_elect": (False, True), "log_format": ("auto", "json")}


def test_no_namespace_object_unless_asked() -> None:
    assert not by_kind(template(), "Namespace")
    ns = the(template({"namespace.create": "true"}), "Namespace")
    assert ns["metadata"]["name"] == NAMESPACE
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_the_release_namespace_is_used_everywhere() -> None:
    objects = template(None, "--namespace", "ops")  # the last --namespace wins, as for any helm flag
    assert {o["metadata"].get("namespace") for o in objects} == {"ops", None}
    assert the(objects, "ClusterRoleBinding")["subjects"][0]["namespace"] == "ops"


# -- values ------------------------------------------------------------------------------------------------------


def test_watch_namespaces_get_roles_not_a_cluster_role() -> None:
    default_rules = the(template(), "ClusterRole")["rules"]
    objects = template(COMBINATIONS["watch-namespaces"])
    assert not by_kind(objects, "ClusterRole") and not by_kind(objects, "ClusterRoleBinding")
    roles = {o["metadata"]["namespace"]: o for o in by_kind(objects, "Role") if o["metadata"]["name"] == "rayop"}
    bindings = {o["metadata"]["namespace"]: o for o in by_kind(objects, "RoleBinding")
                if o["metadata"]["name"] == "rayop"}
    assert sorted(roles) == sorted(bindings) == ["team-a", "team-b"]
    for ns in roles:
        assert roles[ns]["rules"] == default_rules
        assert bindings[ns]["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "rayop"}
        assert bindings[ns]["subjects"] == [{"kind": "ServiceAccount", "name": "rayop", "namespace": NAMESPACE}]
    # The Lease stays in the operator's own namespace.
    assert [o["metadata"]["namespace"] for o in by_kind(objects, "Role") if o["metadata"]["name"] != "rayop"] == [
        NAMESPACE]
    assert run_args(objects).namespaces == ["team-a", "team-b"]
    assert run_args(template()).namespaces is None


def test_more_than_one_replica_turns_leader_election_on() -> None:
    objects = template(COMBINATIONS["replicas-2"])
    assert the(objects, "Deployment")["spec"]["replicas"] == 2
    assert run_args(objects).leader_elect is True
    assert run_args(template({"leaderElection.enabled": "false"})).leader_elect is False


def test_monitors_are_off_by_default_and_select_the_operator() -> None:
    assert not [o for o in template() if o["apiVersion"].startswith("monitoring.coreos.com/")]
    objects = template(COMBINATIONS["monitors"])
    service, pod = the(objects, "Service"), the(objects, "Deployment")["spec"]["template"]
    monitor = the(objects, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1" and monitor["metadata"]["namespace"] == NAMESPACE
    assert service["metadata"]["labels"].items() >= monitor["spec"]["selector"]["matchLabels"].items()
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]
    # Each Ray's series carry its own namespace label, which Prometheus would rename to exported_namespace.
    assert [e.get("honorLabels") for e in monitor["spec"]["endpoints"]] == [True]
    podmonitor = the(objects, "PodMonitor")
    assert podmonitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert pod["metadata"]["labels"].items() >= podmonitor["spec"]["selector"]["matchLabels"].items()
    assert [e["port"] for e in podmonitor["spec"]["podMetricsEndpoints"]] == ["metrics"]
    assert [e.get("honorLabels") for e in podmonitor["spec"]["podMetricsEndpoints"]] == [True]


def test_flags_and_pod_settings_follow_the_values() -> None:
    objects = template(COMBINATIONS["everything"])
    args = run_args(objects)
    assert (args.log_level, args.workers, args.ray_image, args.resync_period) == ("debug", 8, "rayproject/ray:2.9.0",
                                                                                 300.0)
    assert args.leader_elect is True and args.namespaces == ["team-a"]
    deployment = the(objects, "Deployment")
    assert deployment["metadata"]["name"] == "ray-operator"
    assert deployment["spec"]["template"]["spec"]["nodeSelector"] == {"pool": "ops"}
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "ops"
    assert the(objects, "ServiceAccount")["metadata"]["name"] == "ops"
    assert the(objects, "Namespace")["metadata"]["name"] == NAMESPACE
    objects = template({"metrics.port": "9090", "kubeApiQps": "50", "kubeApiBurst": "100",
                        "image.repository": "reg.example/rayop", "image.tag": "dev",
                        "tolerations[0].key": "ops", "tolerations[0].operator": "Exists"})
    args, c = run_args(objects), container(objects)
    assert (args.metrics_bind_address, args.kube_api_qps, args.kube_api_burst) == (":9090", 50.0, 100)
    assert c["ports"] == [{"name": "metrics", "containerPort": 9090, "protocol": "TCP"}]
    assert c["image"] == "reg.example/rayop:dev"
    assert the(objects, "Service")["spec"]["ports"][0]["port"] == 9090
    assert the(objects, "Deployment")["spec"]["template"]["spec"]["tolerations"] == [
        {"key": "ops", "operator": "Exists"}]


def test_service_monitor_without_the_service_is_refused() -> None:
    out = helm("template", "rayop", str(CHART), *set_args({"serviceMonitor.enabled": "true",
                                                            "metrics.service.enabled": "false"}), check=False)
    assert out.returncode != 0 and "needs metrics.service.enabled" in out.stderr


def test_render_manifests_script_is_what_the_tests_compare(tmp_path: Path) -> None:
    """hack/render-manifests.sh writes what `--stdout` prints (the test above compares the latter)."""
    work = tmp_path / "repo"
    for sub in ("hack", "manifests/chart"):
        shutil.copytree(REPO / sub, work / sub)
    subprocess.run([str(work / "hack" / "render-manifests.sh")], check=True, capture_output=True, timeout=300)
    for path, text in render_manifests().items():
        assert (work / path).read_text() == text, path
    assert yaml.safe_load((work / "manifests" / "namespace.yaml").read_text())["kind"] == "Namespace"


@pytest.mark.parametrize(("values", "message"), [
    ({"logLevel": "verbose"}, "/logLevel"),
    ({"loglevel": "debug"}, "additional properties 'loglevel' not allowed"),
    ({"workers": "0"}, "/workers"),
    ({"kubeApiQps": "fast"}, "/kubeApiQps"),
    ({"watchNamespaces": "team-a"}, "/watchNamespaces"),
], ids=["enum", "typo", "minimum", "number", "list"])
def test_values_schema_refuses_wrong_values(values: dict[str, str], message: str) -> None:
    out = helm("template", "rayop", str(CHART), *set_args(values), check=False)
    assert out.returncode != 0 and "values don't meet the specifications" in out.stderr and message in out.stderr, \
        out.stderr


def test_values_schema_takes_decimals_given_with_set() -> None:
    """`--set` passes 12.5 as a string; the schema takes it and the flag gets it as written."""
    args = run_args(template({"kubeApiQps": "12.5", "shutdownTimeout": "7.5"}))
    assert (args.kube_api_qps, args.shutdown_timeout) == (12.5, 7.5)
