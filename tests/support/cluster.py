"""Test access to the local control plane (hack/local-cluster.sh).

`LocalCluster.ensure()` reuses a running control plane or starts one; `stop()` brings it down only if this process
started it. Tests talk to the API server through the project's own `KubeClient`, and to the node agent's fault
hooks through `fault()`.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rayop.runtime.kube import ApiError, KubeClient

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "hack" / "local-cluster.sh"


@dataclass
class LocalCluster:
    env: dict[str, str]
    started_here: bool
    _clients: list[KubeClient] = field(default_factory=list)

    @classmethod
    def ensure(cls) -> LocalCluster:
        started = subprocess.run([str(SCRIPT), "status"], capture_output=True).returncode != 0
        if started:
            subprocess.run([str(SCRIPT), "up"], check=True)
        out = subprocess.run([str(SCRIPT), "env"], check=True, capture_output=True, text=True).stdout
        env = {}
        for line in out.splitlines():
            name, _, value = line.removeprefix("export ").partition("=")
            env[name] = value.strip("'").replace(':"$PATH"', ":" + os.environ.get("PATH", ""))
        return cls(env=env, started_here=started)

    @property
    def kubeconfig(self) -> str:
        return self.env["KUBECONFIG"]

    def client(self, **kwargs: Any) -> KubeClient:
        kwargs.setdefault("qps", 0)
        client = KubeClient.load(self.kubeconfig, **kwargs)
        self._clients.append(client)
        return client

    def kubectl(self, *args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, **self.env)
        return subprocess.run(["kubectl", *args], env=env, capture_output=True, text=True, check=check, input=input)

    def script(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(SCRIPT), *args], check=True, capture_output=True, text=True)

    def fault(self, path: str, **body: Any) -> Any:
        """POST to the node agent's fault hooks, e.g. fault('/pods/crash', namespace=..., name=...)."""
        request = urllib.request.Request(
            self.env["RAYOP_NODE_AGENT_URL"] + path,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read() or b"null")

    def etcd(self, path: str, body: dict[str, Any]) -> Any:
        """Call etcd's v3 JSON gateway, e.g. etcd('/v3/kv/compaction', {'revision': n})."""
        request = urllib.request.Request(
            self.env["RAYOP_ETCD_URL"] + path, data=json.dumps(body).encode(), method="POST"
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def compact_etcd(self) -> int:
        """Compact etcd at its current revision; return that revision."""
        revision = int(self.etcd("/v3/kv/range", {"key": "AA=="})["header"]["revision"])
        self.etcd("/v3/kv/compaction", {"revision": str(revision), "physical": True})
        return revision

    def stop(self) -> None:
        for client in self._clients:
            client.close()
        if self.started_here and not os.environ.get("RAYOP_KEEP_CLUSTER"):
            subprocess.run([str(SCRIPT), "down"], check=False)


def wait_until(predicate: Any, timeout: float = 30.0, interval: float = 0.2, message: str = "condition") -> Any:
    """Poll `predicate` until it returns a truthy value, which is returned; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message} (last: {last!r})")


@dataclass
class PrivateCluster(LocalCluster):
    """A control plane of a test's own, in its own state folder (e.g. in process mode), always brought down by
    `stop()`; `script()` runs hack/local-cluster.sh against it."""

    state_dir: Path = Path()

    @classmethod
    def start(cls, state_dir: Path, *up_args: str) -> PrivateCluster:
        env = dict(os.environ, RAYOP_CLUSTER_DIR=str(state_dir))
        subprocess.run([str(SCRIPT), "up", *up_args], check=True, env=env, timeout=600)
        out = subprocess.run([str(SCRIPT), "env"], check=True, capture_output=True, text=True, env=env).stdout
        exports = {}
        for line in out.splitlines():
            name, _, value = line.removeprefix("export ").partition("=")
            exports[name] = value.strip("'").replace(':"$PATH"', ":" + os.environ.get("PATH", ""))
        exports["RAYOP_CLUSTER_DIR"] = str(state_dir)
        return cls(env=exports, started_here=True, state_dir=state_dir)

    def script(self, *args: str, check: bool = True,  # type: ignore[override]
               timeout: float = 300) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, RAYOP_CLUSTER_DIR=str(self.state_dir))
        return subprocess.run([str(SCRIPT), *args], check=check, capture_output=True, text=True, env=env,
                              timeout=timeout)

    def state(self) -> dict[str, Any]:
        return dict(json.loads((self.state_dir / "state.json").read_text()))

    def stop(self) -> None:
        for client in self._clients:
            client.close()
        self.script("down", check=False)


def process_mode_unavailable() -> str | None:
    """Why this machine cannot run the node agent's process mode, or None when it can."""
    import shutil
    import subprocess as sp

    if os.geteuid() != 0:
        return "process mode needs root (network namespaces, veth pairs, bind mounts)"
    for tool in ("ip", "nsenter", "unshare"):
        if not shutil.which(tool):
            return f"process mode needs `{tool}`"
    probe = f"rayop-probe-{os.getpid()}"
    if sp.run(["ip", "netns", "add", probe], capture_output=True).returncode != 0:
        return "`ip netns add` does not work here"
    sp.run(["ip", "netns", "del", probe], capture_output=True)
    return None


# Kinds a test namespace may hold whose deletion makes pods go; deleted before the namespace itself.
OWNER_COLLECTIONS = (
    "/apis/ray.k8s.io/v1alpha1/namespaces/{ns}/rayjobs",
    "/apis/ray.k8s.io/v1alpha1/namespaces/{ns}/rays",
)


def delete_namespace(kube: KubeClient, name: str, timeout: float = 420) -> None:
    """Delete a test namespace and wait until it is gone, its `RayJob`s and `Ray`s first.

    Deleting the namespace alone is slow for a reason outside rayop: when the namespace controller finds pods still
    there, it looks again only after half of their longest grace period (`Estimate/2 + 1` seconds, 166 s for a Ray
    worker's 330 s, whose drain timeout is 300 s), however soon they end. The Ray pods of an idle cluster end within
    seconds of their owner's deletion (workers drain in their preStop hook and end at once when the head goes), so
    once they are gone the namespace goes at once. `timeout` bounds each wait; a busy worker's drain may use its
    whole grace period."""
    for collection in OWNER_COLLECTIONS:
        try:
            kube.delete(collection.format(ns=name))
        except ApiError as err:
            if err.status != 404:  # the kind is not installed in this control plane
                raise
    # Terminal pods (a finished launcher's) do not count: the namespace controller does not wait for them.
    wait_until(lambda: not [p for p in kube.get(f"/api/v1/namespaces/{name}/pods")["items"]
                            if (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")], timeout, 0.5,
               message=f"the running pods of namespace {name} gone")
    kube.delete(f"/api/v1/namespaces/{name}")
    wait_until(lambda: not kube.get("/api/v1/namespaces", fieldSelector=f"metadata.name={name}")["items"], timeout,
               0.5, message=f"namespace {name} deleted")
