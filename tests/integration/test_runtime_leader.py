"""Two `rayop run` processes with leader election against the real API server: exactly one reconciles, killing
it hands over within the lease duration plus a retry, and SIGTERM drains, releases the lease and exits 0."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from rayop.runtime.kube import ApiError, KubeClient
from rayop.runtime.leaderelection import LEASES
from tests.support.cluster import REPO, LocalCluster, wait_until

LEASE, RENEW, RETRY, JITTER = 6.0, 4.0, 1.0, 1.2


def ensure_ray_crd(kube: KubeClient) -> None:
    """Install the project's CRD if the cluster has none; never change one that is there."""
    path = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
    try:
        kube.get(f"{path}/rays.ray.k8s.io")
    except ApiError as e:
        if not e.not_found:
            raise
        crd = yaml.safe_load((REPO / "manifests" / "crd.yaml").read_text())
        try:
            kube.create(path, crd)
        except ApiError as e2:
            if not e2.already_exists:
                raise

    def established() -> bool:
        conds = kube.get(f"{path}/rays.ray.k8s.io").get("status", {}).get("conditions") or []
        return any(c["type"] == "Established" and c["status"] == "True" for c in conds)

    wait_until(established, 60, message="Ray CRD established")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Operator:
    def __init__(self, cluster: LocalCluster, namespace: str, lease: str, identity: str, log_dir: Path) -> None:
        self.identity = identity
        self.port = free_port()
        self.log_path = log_dir / f"{identity}.log"
        self.log = self.log_path.open("w")
        args = [
            sys.executable, "-m", "rayop.cli", "run",
            "--kubeconfig", cluster.kubeconfig, "--namespace", namespace,
            "--leader-elect", "--leader-election-namespace", namespace, "--leader-election-id", lease,
            "--leader-election-identity", identity, "--lease-duration", str(LEASE), "--renew-deadline",
            str(RENEW), "--retry-period", str(RETRY), "--metrics-bind-address", f"127.0.0.1:{self.port}",
            "--log-format", "json", "--workers", "2",
        ]
        env = dict(os.environ, **cluster.env, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, ""
        except OSError:
            return 0, ""

    def metric(self, name: str, **labels: str) -> float:
        status, text = self.get("/metrics")
        if status != 200:
            return -1.0
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in text.splitlines():
            series, _, value = line.rpartition(" ")
            if series == (f"{name}{{{want}}}" if want else name):
                return float(value)
        return 0.0

    def reconciles(self) -> float:
        return self.metric("controller_runtime_reconcile_total", controller="ray", result="success")

    def leader(self) -> bool:
        return self.metric("rayop_leader", lease=self.lease_label) == 1.0

    lease_label = ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        self.log.close()


def read_lease(kube: KubeClient, namespace: str, name: str) -> dict[str, Any]:
    return kube.get(LEASES.object(namespace, name))["spec"]  # type: ignore[no-any-return]


def parse_time(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()


def test_one_leader_reconciles_and_hands_over(
    cluster: LocalCluster, kube: KubeClient, namespace: str, tmp_path: Path
) -> None:
    ensure_ray_crd(kube)
    lease = f"rayop-it-{uuid.uuid4().hex[:6]}"
    ops = [Operator(cluster, namespace, lease, name, tmp_path) for name in ("op-a", "op-b")]
    for op in ops:
        op.lease_label = f"{namespace}/{lease}"
    try:
        for op in ops:
            wait_until(lambda op=op: op.get("/readyz")[0] == 200, 90, 0.5, message=f"{op.identity} ready")
        leader = wait_until(lambda: next((op for op in ops if op.leader()), None), 60, 0.5, message="a leader")
        standby = next(op for op in ops if op is not leader)
        assert read_lease(kube, namespace, lease)["holderIdentity"] == leader.identity

        kube.create(f"/apis/ray.k8s.io/v1alpha1/namespaces/{namespace}/rays",
                    {"apiVersion": "ray.k8s.io/v1alpha1", "kind": "Ray", "metadata": {"name": "r1"}, "spec": {}})
        wait_until(lambda: leader.reconciles() >= 1, 60, 0.5, message="the leader to reconcile")
        # The standby's cache is warm (it sees the Ray) but it does not reconcile.
        wait_until(lambda: standby.metric("rayop_informer_objects", informer="rays.ray.k8s.io") == 1, 60, 0.5,
                   message="the standby to cache the Ray")
        time.sleep(2 * RETRY)  # give a wrongly-started standby the chance to show itself
        assert standby.reconciles() == 0
        assert not standby.leader()

        last_renew = parse_time(read_lease(kube, namespace, lease)["renewTime"])
        leader.proc.send_signal(signal.SIGKILL)
        killed_at = time.time()
        wait_until(standby.leader, 60, 0.2, message="the standby to take the lease")
        spec = read_lease(kube, namespace, lease)
        assert spec["holderIdentity"] == standby.identity
        acquired = parse_time(spec["acquireTime"])
        handover = acquired - killed_at
        since_renew = acquired - last_renew
        print(f"handover: {handover:.2f}s after the kill, {since_renew:.2f}s after the last renewal seen")
        # A standby times the lease from when it saw the last renewal (up to one retry after it happened) and
        # notices expiry at its next retry: lease + 2 retries (with jitter), plus slack for a loaded machine.
        assert handover <= LEASE + 2 * RETRY * (1 + JITTER) + 5.0
        assert spec["leaseTransitions"] >= 1
        wait_until(lambda: standby.reconciles() >= 1, 60, 0.5, message="the new leader to reconcile")

        standby.proc.send_signal(signal.SIGTERM)
        assert standby.proc.wait(60) == 0, "SIGTERM drains and exits 0"
        released = read_lease(kube, namespace, lease)
        assert released.get("holderIdentity", "") == "", "a graceful stop releases the lease"
    except BaseException:
        for op in ops:
            op.stop()
            print(f"--- {op.identity}\n{op.log_path.read_text()[-6000:]}")
        raise
    finally:
        for op in ops:
            op.stop()
    logs = (tmp_path / f"{standby.identity}.log").read_text()
    assert '"event": "reconciled"' in logs and '"result": "success"' in logs
    assert '"event": "acquired lease"' in logs and '"event": "released lease"' in logs
