"""A real Prometheus (Debian's `prometheus` package, see hack/install-deps.sh) scrapes a Manager's /metrics and
the controller-runtime reconcile and workqueue series, and the rayop_* series, appear in its queries."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from rayop.runtime.kube import KubeClient, Resource
from rayop.runtime.manager import Manager, Result
from rayop.runtime.store import ObjectKey
from tests.support.cluster import wait_until

CONFIGMAPS = Resource("", "v1", "configmaps", "ConfigMap")
PROMETHEUS = shutil.which("prometheus")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def query(port: int, promql: str) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return json.loads(r.read())["data"]["result"]  # type: ignore[no-any-return]
    except OSError:
        return []


# CI installs it (make test -> hack/install-deps.sh); only a developer who skipped that step may skip this test.
@pytest.mark.skipif(PROMETHEUS is None and not os.environ.get("CI"),
                    reason="prometheus is not installed (hack/install-deps.sh installs it)")
def test_prometheus_scrapes_reconcile_series(kube: KubeClient, namespace: str, tmp_path: Path) -> None:
    label = uuid.uuid4().hex[:8]
    manager = Manager(kube, namespaces=[namespace], metrics_address="127.0.0.1:0", shutdown_timeout=10)
    informer = manager.informer(CONFIGMAPS, label_selector=f"rayop.dev/it={label}")

    def reconcile(key: ObjectKey) -> Result:
        informer.store.get(key)  # a reconciler that only reads its cache
        return Result()

    manager.controller("scrape-test", reconcile).watch_primary(informer)
    manager.start()
    prom_port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: rayop\n    static_configs: [{{targets: ['127.0.0.1:{manager.metrics_port}']}}]\n"
    )
    log = (tmp_path / "prometheus.log").open("w")
    prom = subprocess.Popen(
        [str(PROMETHEUS), f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{prom_port}"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        for i in range(3):
            kube.create(CONFIGMAPS.collection(namespace),
                        {"metadata": {"name": f"cm-{i}", "labels": {"rayop.dev/it": label}}})
        series = 'controller_runtime_reconcile_total{controller="scrape-test",result="success"}'
        found = wait_until(lambda: [r for r in query(prom_port, series) if float(r["value"][1]) >= 3], 120, 1.0,
                           message="Prometheus to scrape three successful reconciles")
        assert found[0]["metric"]["job"] == "rayop"
        for promql in (
            'controller_runtime_reconcile_time_seconds_count{controller="scrape-test"}',
            'workqueue_adds_total{name="scrape-test"}',
            'workqueue_depth{name="scrape-test"}',
            'rayop_api_requests_total{verb="GET",code="200"}',
            'rayop_informer_objects{informer="configmaps[rayop.dev/it=%s]"}' % label,
            "up{job=\"rayop\"} == 1",
        ):
            assert wait_until(lambda q=promql: query(prom_port, q), 30, 1.0, message=promql)
    finally:
        prom.terminate()
        try:
            prom.wait(30)
        except subprocess.TimeoutExpired:
            prom.kill()
        log.close()
        manager.stop()
        manager.wait(30)
