"""Run the operator as a real process against the local control plane, as `make run` does."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from rayop.api.types import GROUP, PLURAL, VERSION
from rayop.runtime.kube import ApiError, KubeClient
from tests.support.cluster import REPO, LocalCluster, wait_until

CRD_PATH = REPO / "manifests" / "crd.yaml"
RAYJOB_CRD_PATH = REPO / "manifests" / "crd-rayjob.yaml"
SAMPLES = REPO / "manifests" / "samples"


def install_crd(kube: KubeClient, path: Path = CRD_PATH, plural: str = PLURAL) -> None:
    """Create or update the `Ray` CRD (or another from manifests/) and wait until it is served."""
    crd = yaml.safe_load(path.read_text())
    name = crd["metadata"]["name"]
    path = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}"
    # Test processes side by side (the CI's two lanes, bench/spec_sequences.py) install the same CRD at once: a
    # conflict or an already-exists means another one wrote it in between, so read it again and write once more.
    for attempt in range(10):
        try:
            current = kube.get(path)
            crd["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
            kube.replace(path, crd)
            break
        except ApiError as e:
            if e.status == 409 and not e.already_exists and attempt < 9:
                continue
            if not e.not_found:
                raise
        try:
            crd["metadata"].pop("resourceVersion", None)
            kube.create("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)
            break
        except ApiError as e:
            if not e.already_exists or attempt == 9:
                raise

    def established() -> bool:
        conditions = kube.get(path).get("status", {}).get("conditions") or []
        if not any(c["type"] == "Established" and c["status"] == "True" for c in conditions):
            return False
        try:
            kube.get(f"/apis/{GROUP}/{VERSION}/{plural}")
            return True
        except ApiError:
            return False

    wait_until(established, 30, message=f"{name} established")


def install_rayjob_crd(kube: KubeClient) -> None:
    """Create or update the `RayJob` CRD from manifests/ and wait until it is served."""
    install_crd(kube, RAYJOB_CRD_PATH, "rayjobs")


def rays_path(namespace: str, name: str | None = None) -> str:
    base = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}"
    return f"{base}/{name}" if name else base


def load_sample(name: str, namespace: str) -> dict[str, Any]:
    obj = yaml.safe_load((SAMPLES / name).read_text())
    obj["metadata"]["namespace"] = namespace
    return dict(obj)


class OperatorProcess:
    """`rayop run` in a subprocess, watching the given namespaces; logs go to a file. `kubeconfig` points it at
    another API server than the cluster's first. `faults` (options of `tests.support.faulty`, e.g.
    `["--exit-after-writes", "3"]`) run it with that crash injected."""

    def __init__(self, cluster: LocalCluster, namespaces: list[str], log_path: Path,
                 extra_args: list[str] | None = None, env: dict[str, str] | None = None,
                 kubeconfig: str | None = None, faults: list[str] | None = None):
        self.cluster = cluster
        self.kubeconfig = kubeconfig or cluster.kubeconfig
        self.namespaces = namespaces
        self.log_path = log_path
        self.extra_args = extra_args or []
        self.env = env or {}
        self.faults = faults
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, extra_env: dict[str, str] | None = None) -> None:
        entry = ["-m", "rayop.cli"] if self.faults is None else ["-m", "tests.support.faulty", *self.faults]
        args = [sys.executable, *entry, "run", "--kubeconfig", self.kubeconfig,
                "--no-leader-elect", "--metrics-bind-address", "127.0.0.1:0", "--log-format", "json",
                "--kube-api-qps", "200", "--kube-api-burst", "400"]
        for ns in self.namespaces:
            args += ["--namespace", ns]
        env = dict(os.environ, **self.env, **(extra_env or {}))
        env.pop("KUBERNETES_SERVICE_HOST", None)
        if self.faults is not None:
            env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(args + self.extra_args, stdout=log, stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True)

    def wait_exit(self, timeout: float = 60) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def metrics_text(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return r.read().decode()


def now() -> float:
    return time.monotonic()
