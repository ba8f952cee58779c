"""A real Prometheus (Debian's `prometheus` package) scrapes a real `rayop run` on the local API server (sim mode),
loaded with manifests/monitoring/rayop-alerts.yaml: the per-cluster series of a real `Ray` come back through its
HTTP API (and a RayJob's), an alert rule's expression evaluated by that Prometheus names the `Ray` that is not Ready (and not the
Ready one), its alert turns pending, and a deleted `Ray`'s series go; a restarted operator counts no second provisioning."""

from __future__ import annotations

import json
import re
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from rayop.runtime.kube import KubeClient
from tests.integration.test_runtime_prometheus import PROMETHEUS, free_port, query
from tests.support.cluster import REPO, LocalCluster, wait_until
from tests.unit.test_monitoring import dashboard_targets
from tests.support.operator import OperatorProcess, install_rayjob_crd, load_sample, metrics_text, rays_path

RULES = REPO / "manifests" / "monitoring" / "rayop-alerts.yaml"


def alert_expr(name: str) -> str:
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == name:
                return str(rule["expr"])
    raise AssertionError(f"no alert {name} in {RULES}")


def evaluate(port: int, promql: str) -> list[dict[str, Any]]:
    """The answer to an instant query, which must succeed (an error fails the test with Prometheus's message)."""
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            answer = json.loads(r.read())
    except urllib.error.HTTPError as e:
        answer = json.loads(e.read())
    assert answer["status"] == "success", (promql, answer)
    return list(answer["data"]["result"])


def one(port: int, promql: str, timeout: float = 60) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = wait_until(lambda: query(port, promql), timeout, 1.0, message=promql)
    return found


@pytest.mark.skipif(PROMETHEUS is None, reason="prometheus is not installed (hack/install-deps.sh installs it)")
def test_prometheus_scrapes_the_series_of_a_real_ray(cluster: LocalCluster, kube: KubeClient, namespace: str,
                                                      ray_crd: None, tmp_path: Path) -> None:
    install_rayjob_crd(kube)  # served at start-up, so the RayJob controller (and its series) runs
    op = OperatorProcess(cluster, [namespace], tmp_path / "operator.log")
    op.start()
    prom: subprocess.Popen[bytes] | None = None
    log = (tmp_path / "prometheus.log").open("w")
    try:
        static = load_sample("static.yaml", namespace)
        static["spec"]["initialWorkers"] = 2
        kube.create(rays_path(namespace), static)
        # Not Ready, and never will be: its configuration cannot be converted (the API server accepts the YAML).
        kube.create(rays_path(namespace), {"apiVersion": "ray.k8s.io/v1alpha1", "kind": "Ray",
                                           "metadata": {"name": "broken", "namespace": namespace},
                                           "spec": {"configuration": "max_workers: many\n"}})
        # A RayJob waiting for a cluster its selector matches (no Ray carries the label).
        kube.create(f"/apis/ray.k8s.io/v1alpha1/namespaces/{namespace}/rayjobs",
                    load_sample("rayjob/on-existing-cluster.yaml", namespace))
        port = wait_until(lambda: (m := re.search(r'"metrics_port": (\d+)', op.log())) and int(m.group(1)), 30,
                          0.2, message="operator's metrics port")
        prom_port = free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            f"rule_files: ['{RULES}']\n"
            "scrape_configs:\n"
            "  - job_name: rayop\n    honor_labels: true\n"
            f"    static_configs: [{{targets: ['127.0.0.1:{port}']}}]\n"
        )
        prom = subprocess.Popen(
            [str(PROMETHEUS), f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{prom_port}"],
            stdout=log, stderr=subprocess.STDOUT,
        )
        sel = f'namespace="{namespace}"'

        ready = one(prom_port, f'rayop_cluster_condition{{{sel}, name="static", type="Ready", status="True"}}', 120)
        assert ready[0]["metric"]["job"] == "rayop"  # honor_labels kept the Ray's namespace label as it is
        info = one(prom_port, f'rayop_cluster_info{{{sel}, name="static"}}')[0]["metric"]
        assert (info["form"], info["ray_version"], info["owner"]) == ("simple", "2.60.0", "none")
        workers = one(prom_port, f'rayop_cluster_workers_ready{{{sel}, name="static"}} == 2')
        assert float(workers[0]["value"][1]) == 2
        assert one(prom_port, f'rayop_cluster_workers_desired{{{sel}, name="static"}} == 2')
        # Time to first Ready: observed once, and it took longer than nothing.
        count = one(prom_port, "rayop_cluster_provisioned_duration_seconds_count >= 1")
        assert float(count[0]["value"][1]) == 1
        one(prom_port, f'rayop_cluster_launches_total{{outcome="succeeded", reason="Launched"}} >= 1', 120)
        # Conditions per Ray: one series per type, each with value 1.
        conditions = one(prom_port, f'rayop_cluster_condition{{{sel}, name="static"}}')
        assert sorted(c["metric"]["type"] for c in conditions) == sorted(
            ["ConfigurationValid", "HeadReady", "WorkersReady", "Ready", "SuccessfulLaunch", "ReplicaFailure"])
        assert {c["value"][1] for c in conditions} == {"1"}
        one(prom_port, f'rayop_cluster_condition{{{sel}, name="broken", type="ConfigurationValid", status="False"}}')

        job = one(prom_port, f'rayop_rayjob_info{{{sel}, name="on-existing-cluster"}}')[0]["metric"]
        assert (job["submission_mode"], job["cluster_source"]) == ("HTTP", "selector")
        state = one(prom_port, f'rayop_rayjob_status{{{sel}, name="on-existing-cluster", deployment_status!="Unset"}}')
        assert state[0]["metric"]["deployment_status"] == "Initializing", state
        assert one(prom_port, 'sum(rayop_rayjobs{deployment_status="Initializing"}) >= 1')

        # The alert rule's own expression, evaluated by Prometheus: the broken Ray, not the Ready one.
        expr = alert_expr("RayClusterNotReady")
        mine = f'({expr}) and on (namespace) rayop_cluster_info{{{sel}}}'
        not_ready = wait_until(lambda: {r["metric"]["name"] for r in query(prom_port, mine)} or None, 60, 1.0,
                               message="RayClusterNotReady's expression")
        assert not_ready == {"broken"}
        # Every dashboard query runs there without an error; once two scrapes are in (rates need two samples) the
        # rate panels have data, and the per-cluster table names the Ray that is not Ready.
        rates = ("Reconciles per second", "API requests per second", "CPU")

        def dashboard() -> dict[str, list[dict[str, Any]]] | None:
            answers = {title: evaluate(prom_port, expr) for title, expr in dashboard_targets()}
            return answers if all(answers[t] for t in rates) else None

        answers = wait_until(dashboard, 60, 1.0, message="the dashboard's rate panels")
        assert {r["metric"]["name"] for r in answers["Ray clusters not Ready"]
                if r["metric"].get("namespace") == namespace} == {"broken"}

        # Prometheus loaded the rules: the alert is pending (it fires after 15 minutes).
        pending = one(prom_port, f'ALERTS{{alertname="RayClusterNotReady", {sel}}}')
        assert [(a["metric"]["name"], a["metric"]["alertstate"]) for a in pending] == [("broken", "pending")]
        assert not query(prom_port, 'ALERTS{alertname="RayopOperatorDown"}')

        # Deleted: its series go from the next scrape (no stale series), the other Ray's stay.
        kube.delete(rays_path(namespace, "broken"))
        wait_until(lambda: not query(prom_port, f'rayop_cluster_info{{{sel}, name="broken"}}'), 60, 1.0,
                   message="the deleted Ray's series gone")
        assert query(prom_port, f'rayop_cluster_info{{{sel}, name="static"}}')
        wait_until(lambda: not query(prom_port, mine), 60, 1.0, message="the alert's expression empty")

        # A restarted operator lists the Ready Ray again and counts no second provisioning.
        op.stop()
        op.start()
        port = wait_until(lambda: len(m := re.findall(r'"metrics_port": (\d+)', op.log())) == 2 and int(m[1]), 30,
                          0.2, message="the restarted operator's metrics port")
        ready_line = f'rayop_cluster_condition{{namespace="{namespace}",name="static",type="Ready",status="True"}} 1'
        text = wait_until(lambda: (t := metrics_text(port)) and ready_line in t and t, 60, 0.5,
                          message="the restarted operator's series")
        assert "rayop_cluster_provisioned_duration_seconds_count 0.0" in text
        assert 'rayop_cluster_launches_total{outcome="succeeded",reason="Launched"} 0.0' in text
    finally:
        if prom is not None:
            prom.terminate()
            try:
                prom.wait(30)
            except subprocess.TimeoutExpired:
                prom.kill()
        log.close()
        op.stop()
    assert "Traceback" not in op.log(), op.log()[-5000:]
