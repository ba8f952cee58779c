"""Host clean-up shared by the node agent's process runtime and `hack/local-cluster.sh down`.

Guarantees:
- `remove_netns` kills every process left in a network namespace, then deletes it.
- `remove_created` removes the mount points the runtime had to create on the host (deepest first), but never one
  that another mount namespace still mounts on: removing such a directory succeeds and silently detaches the mount
  there (Linux 3.18+), which would pull files out from under another cluster's containers.
- Standard library only (`local-cluster.sh` runs before any virtualenv exists).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path


def netns_pids(name: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True)
    return [int(x) for x in out.stdout.split()] if out.returncode == 0 else []


def kill_netns_processes(name: str, attempts: int = 100) -> None:
    """SIGKILL whatever runs in the network namespace until nothing does (or `attempts` rounds passed)."""
    for _ in range(attempts):
        pids = netns_pids(name)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)


def remove_netns(name: str) -> None:
    kill_netns_processes(name)
    subprocess.run(["ip", "netns", "del", name], capture_output=True)


def mount_points_elsewhere() -> set[str]:
    """Every mount point of the machine's other mount namespaces (containers of another agent, say). Removing a
    directory that is a mount point in another namespace succeeds and silently detaches that mount there (Linux
    3.18+), so a mount point created on the host must stay while anyone else mounts on it."""
    seen = set()
    try:
        seen.add(os.readlink("/proc/self/ns/mnt"))
    except OSError:
        pass
    points: set[str] = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            ns = os.readlink(f"/proc/{entry.name}/ns/mnt")
            if ns in seen:
                continue
            seen.add(ns)
            with open(f"/proc/{entry.name}/mountinfo") as f:
                points.update(line.split()[4].replace("\\040", " ") for line in f)
        except OSError:
            continue
    return points


def remove_created(state_dir: Path) -> None:
    """rmdir (or unlink, if empty) the mount points the runtime had to create on the host, deepest first; not those
    another mount namespace mounts on (another agent's containers)."""
    path = state_dir / "created-paths"
    if not path.exists():
        return
    busy = mount_points_elsewhere()
    for line in sorted(set(path.read_text().split("\n")) - {""}, key=len, reverse=True):
        p = Path(line)
        if line in busy or os.path.realpath(line) in busy:
            continue
        try:
            if p.is_dir() and not p.is_symlink():
                p.rmdir()
            elif p.is_file() and p.stat().st_size == 0:
                p.unlink()
        except OSError:
            pass
    path.unlink()
