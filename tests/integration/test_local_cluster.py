"""`hack/local-cluster.sh` itself: up is idempotent, down leaves nothing behind.

Runs a second, private control plane in its own state folder, so the session's shared one is untouched.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

from tests.support.cluster import SCRIPT


def run(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SCRIPT), *args], env=env, capture_output=True, text=True, check=check, timeout=300)


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"


def links() -> set[str]:
    return {line.split(":")[1].strip() for line in subprocess.run(
        ["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout.splitlines()}


def ours(lines: set[str], marks: tuple[str, ...]) -> set[str]:
    """The mounts or links of this test's cluster only: other control planes (the e2e tests' private ones) may come
    and go on the same machine meanwhile."""
    return {line for line in lines if any(mark in line for mark in marks)}


def test_up_twice_then_down_leaves_nothing(tmp_path: Path) -> None:
    env = dict(os.environ, RAYOP_CLUSTER_DIR=str(tmp_path / "cluster"), RAYOP_NODES="1")
    try:
        run(env, "up")
        state = json.loads((tmp_path / "cluster" / "state.json").read_text())
        assert run(env, "status").returncode == 0

        second = run(env, "up")
        assert "already up" in second.stderr
        assert json.loads((tmp_path / "cluster" / "state.json").read_text())["pids"] == state["pids"]

        exports = run(env, "env").stdout
        assert f"KUBECONFIG={tmp_path / 'cluster' / 'admin.kubeconfig'}" in exports
        kubectl = subprocess.run(
            ["bash", "-c", exports + "\nkubectl get nodes -o name"], capture_output=True, text=True, check=True)
        assert kubectl.stdout.split() == ["node/rayop-node-1"]
    finally:
        run(env, "down", check=False)

    assert not (tmp_path / "cluster").exists()
    assert not [name for name, pid in state["pids"].items() if alive(pid)]
    assert not [port for port in state["ports"].values() if listening(port)]
    marks = tuple(m for m in (str(tmp_path), state.get("netns_prefix")) if m)
    assert not ours(set(Path("/proc/mounts").read_text().splitlines()), marks)
    assert not ours(links(), marks)
    assert run(env, "status", check=False).returncode != 0
