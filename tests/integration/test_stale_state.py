"""Stale state after a failover (Sieve's "time travel"): the operator moved to an API server whose view lags.

Two kube-apiservers share one etcd (`hack/local-cluster.sh up --apiservers 2`; the second reaches etcd through a
relay the test can pause). The operator reconciles through the first (A) while the second's (B) view of etcd is
frozen — either B is paused whole with SIGSTOP (`sigstop`), or only its link to etcd is paused, so B keeps answering
from its watch cache (`etcd-link`). Through A the world moves on: a `Ray` is scaled up and another is deleted and
re-created under the same name (a new UID). Then the operator is restarted against B and B's view is thawed only
after the operator started, so its first lists reach an API server whose cache still shows the old world. A watch
on A records every pod event: the restarted operator must not delete a pod that was live, nor create one (both
clusters were settled, so there is nothing to do).

Measured on kube-apiserver v1.36 (`test_lagging_apiserver_serves_rv0_stale_and_consistent_fresh`): a list with
resourceVersion=0 is answered from B's stale cache; a list without resourceVersion (a consistent read) waits until
B's cache has caught up with etcd. The operator's reflector lists without resourceVersion (docs/runtime.md, "Stale
reads"); with resourceVersion=0 lists the `etcd-link` scenario fails (docs/reliability.md records the failure).
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from rayop.objects import LABEL_CLUSTER, LABEL_ROLE
from rayop.runtime.kube import KubeClient
from tests.support.cluster import SCRIPT, LocalCluster, wait_until
from tests.support.operator import OperatorProcess, load_sample, rays_path
from tests.support.relay import Relay

APISERVER_2 = "kube-apiserver-2"


@dataclass
class SecondApiserver:
    kubeconfig: str
    relay: Relay  # between it and etcd


@pytest.fixture(scope="module")
def second_apiserver(cluster: LocalCluster) -> Iterator[SecondApiserver]:
    """A second kube-apiserver on the cluster's etcd, reaching etcd through a relay the test can pause."""
    etcd = urlparse(cluster.env["RAYOP_ETCD_URL"])
    relay = Relay(etcd.hostname or "127.0.0.1", etcd.port or 2379)
    env = dict(os.environ, RAYOP_APISERVER_2_ETCD_SERVERS=relay.url)
    subprocess.run([str(SCRIPT), "stop", APISERVER_2], check=True, capture_output=True, env=env)
    subprocess.run([str(SCRIPT), "up", "--apiservers", "2"], check=True, capture_output=True, env=env)
    out = cluster.script("env").stdout
    exports = dict(line.removeprefix("export ").split("=", 1) for line in out.splitlines())
    yield SecondApiserver(exports["RAYOP_KUBECONFIG_2"].strip("'"), relay)
    relay.resume()
    cluster.script("stop", APISERVER_2)
    relay.close()


class Freeze:
    """Freeze B's view of etcd: `sigstop` pauses the whole server (it answers nothing), `etcd-link` pauses only its
    link to etcd (it keeps answering from its cache). `thaw()` (also on exit) undoes it."""

    def __init__(self, cluster: LocalCluster, second: SecondApiserver, how: str):
        self.cluster = cluster
        self.second = second
        self.how = how
        self.frozen = False

    def __enter__(self) -> Freeze:
        if self.how == "sigstop":
            self.cluster.script("pause", APISERVER_2)
        else:
            self.second.relay.pause()
        self.frozen = True
        return self

    def thaw(self) -> None:
        if self.frozen:
            if self.how == "sigstop":
                self.cluster.script("resume", APISERVER_2)
            else:
                self.second.relay.resume()
            self.frozen = False

    def __exit__(self, *exc: Any) -> None:
        self.thaw()


class PodHistory:
    """Every pod event of one namespace as A serves it, from a resourceVersion on."""

    def __init__(self, cluster: LocalCluster, kube: KubeClient, namespace: str):
        self.client = cluster.client()
        self.namespace = namespace
        self.events: list[tuple[float, str, str, str, bool]] = []  # (time, type, name, uid, terminating)
        self.rv = kube.get(f"/api/v1/namespaces/{namespace}/pods", limit=1)["metadata"]["resourceVersion"]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for event in self.client.watch(f"/api/v1/namespaces/{self.namespace}/pods",
                                           {"resourceVersion": self.rv, "timeoutSeconds": 5}, timeout=15):
                meta = event["object"]["metadata"]
                self.rv = meta["resourceVersion"]
                if (meta.get("labels") or {}).get(LABEL_ROLE) not in ("head", "worker"):
                    continue
                self.events.append((time.monotonic(), event["type"], meta["name"], meta["uid"],
                                    bool(meta.get("deletionTimestamp"))))

    def stop(self) -> None:
        time.sleep(2)  # the last events
        self._stop.set()
        self._thread.join(20)

    def since(self, t: float) -> list[tuple[float, str, str, str, bool]]:
        return [e for e in self.events if e[0] >= t]


def ray_pods(kube: KubeClient, namespace: str, name: str) -> dict[str, str]:
    """uid -> name of the live head and worker pods of one cluster."""
    items = kube.get(f"/api/v1/namespaces/{namespace}/pods", labelSelector=f"{LABEL_CLUSTER}={name}")["items"]
    return {p["metadata"]["uid"]: p["metadata"]["name"] for p in items
            if p["metadata"]["labels"].get(LABEL_ROLE) in ("head", "worker")
            and not p["metadata"].get("deletionTimestamp")
            and p.get("status", {}).get("phase") not in ("Succeeded", "Failed")}


def settled(kube: KubeClient, namespace: str, name: str, workers: int) -> bool:
    ray = kube.get(rays_path(namespace, name))
    conditions = {c["type"]: c["status"] for c in (ray.get("status") or {}).get("conditions") or []}
    return (conditions.get("Ready") == "True" and conditions.get("SuccessfulLaunch") == "True"
            and ray["status"].get("observedGeneration") == ray["metadata"]["generation"]
            and len(ray_pods(kube, namespace, name)) == 1 + workers)


@pytest.mark.parametrize("how", ["sigstop", "etcd-link"])
def test_lagging_apiserver_serves_rv0_stale_and_consistent_fresh(
        cluster: LocalCluster, kube: KubeClient, namespace: str, second_apiserver: SecondApiserver, how: str) -> None:
    """What the design builds on. B's view of etcd is frozen, then objects are created through A. With B's etcd
    link paused, a list with resourceVersion=0 sent to B is answered at once from B's stale cache. With B stopped
    (SIGSTOP), the same list is served when B runs again, and B then races its own watch catch-up: the answer may
    be stale or partly or wholly caught up, never newer than etcd (only the etcd-link case shows the stale read
    deterministically). A list without resourceVersion waits until B's cache has caught up and is fresh."""
    b = KubeClient.load(second_apiserver.kubeconfig, qps=0)
    path = f"/api/v1/namespaces/{namespace}/configmaps"
    before = {c["metadata"]["name"] for c in b.get(path)["items"]}
    answers: dict[str, set[str]] = {}

    def list_on_b(mode: str) -> None:
        params = {"resourceVersion": "0"} if mode == "rv0" else {}
        answers[mode] = {c["metadata"]["name"] for c in b.get(path, **params)["items"]}

    with Freeze(cluster, second_apiserver, how) as freeze:
        for i in range(10):
            kube.create(path, {"metadata": {"name": f"after-freeze-{i}"}})
        now = {c["metadata"]["name"] for c in kube.get(path)["items"]}
        threads = {m: threading.Thread(target=list_on_b, args=(m,)) for m in ("rv0", "consistent")}
        for t in threads.values():
            t.start()
        time.sleep(3)
        answered_while_frozen = {m for m, t in threads.items() if not t.is_alive()}
        freeze.thaw()
        for t in threads.values():
            t.join(60)
    b.close()
    assert answered_while_frozen == ({"rv0"} if how == "etcd-link" else set())
    assert answers["consistent"] == now
    if how == "etcd-link":
        assert answers["rv0"] == before, "B's cache had caught up before answering; the stale read was not observed"
    else:
        assert before <= answers["rv0"] <= now


@pytest.mark.parametrize("how", ["sigstop", "etcd-link"])
def test_operator_moved_to_a_lagging_apiserver_does_not_act_on_stale_state(
        cluster: LocalCluster, kube: KubeClient, namespace: str, ray_crd: None, second_apiserver: SecondApiserver,
        tmp_path: Path, how: str) -> None:
    history = PodHistory(cluster, kube, namespace)
    static = load_sample("static.yaml", namespace)          # 3 workers
    other = load_sample("seed-structured.yaml", namespace)  # 1 worker
    other["metadata"]["name"] = "other"
    op_a = OperatorProcess(cluster, [namespace], tmp_path / "operator-a.log")
    op_a.start()
    try:
        kube.create(rays_path(namespace), static)
        kube.create(rays_path(namespace), other)
        wait_until(lambda: settled(kube, namespace, "static", 3) and settled(kube, namespace, "other", 1), 120,
                   message="both clusters settled through A")
        with Freeze(cluster, second_apiserver, how) as freeze:
            # B's view of etcd freezes here. Through A: scale one Ray up, replace the other by a new one of the same name.
            old_other_uid = kube.get(rays_path(namespace, "other"))["metadata"]["uid"]
            kube.patch(rays_path(namespace, "static"), {"spec": {"desiredWorkers": {"worker": 5}}})
            kube.delete(rays_path(namespace, "other"), {"propagationPolicy": "Foreground"})
            wait_until(lambda: not [r for r in kube.get(rays_path(namespace))["items"]
                                    if r["metadata"]["name"] == "other"], 90, message="old Ray other gone")
            wait_until(lambda: not ray_pods(kube, namespace, "other"), 90, message="old pods of other gone")
            kube.create(rays_path(namespace), other)
            new_other_uid = kube.get(rays_path(namespace, "other"))["metadata"]["uid"]
            assert new_other_uid != old_other_uid
            wait_until(lambda: settled(kube, namespace, "static", 5) and settled(kube, namespace, "other", 1), 120,
                       message="both clusters settled again through A")
            op_a.stop()
            live_before = {**ray_pods(kube, namespace, "static"), **ray_pods(kube, namespace, "other")}
            # The failover: the operator restarts against B, whose cache still shows the world at the pause.
            moved = time.monotonic()
            op_b = OperatorProcess(cluster, [namespace], tmp_path / "operator-b.log", kubeconfig=second_apiserver.kubeconfig)
            op_b.start()
            # SIGSTOP: its first requests wait in B's accept queue. Etcd link: B answers lists with
            # resourceVersion=0 from its cache at once; writes and consistent lists wait for etcd.
            time.sleep(5)
            freeze.thaw()
        try:
            wait_until(lambda: '"starting workers"' in op_b.log(), 60, message="operator on B synced")
            # Give a stale view every chance to show: the operator replays B's lagging cache and reconciles.
            time.sleep(15)
            assert op_b.running(), op_b.log()[-3000:]
        finally:
            op_b.stop()
        history.stop()
        after = history.since(moved)
        created = [(t, name) for _, t, name, uid, _ in after if t == "ADDED"]
        deleted = [(t, name) for _, t, name, uid, terminating in after
                   if uid in live_before and (t == "DELETED" or terminating)]
        live_after = {**ray_pods(kube, namespace, "static"), **ray_pods(kube, namespace, "other")}
        assert not deleted, f"live pods deleted after the failover: {sorted(set(deleted))}"
        assert not created, f"pods created after the failover: {sorted(set(created))}"
        assert live_after == live_before
        assert "Traceback" not in op_b.log()
    finally:
        op_a.stop()
