"""Runs first inside a container's namespaces, then becomes the container's command.

Started by the process runtime as `nsenter --net=NETNS unshare --mount --uts --propagation private -- python
container_init.py SPEC.json`, so it already sits in the pod's network namespace and in a fresh, private mount and
UTS namespace. It:
- sets the hostname;
- detaches, in its own mount namespace only, the network-namespace handles and the mounts under the agent's
  state folder other than its own pod's, so that no container pins another pod's namespace or volumes;
- bind-mounts each planned source at its target (parents first), read-only where asked;
- changes to the working directory and execs the command with the planned environment (PATH from that
  environment), keeping its PID, so the runtime waits on the container itself.
Errors go to stderr (the container's log) with exit code 127 (command not found) or 126 (could not set up).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import shutil
import socket
import sys

MS_RDONLY = 1
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MNT_DETACH = 2

libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def mount(source: str | None, target: str, flags: int) -> None:
    if libc.mount(source.encode() if source else None, target.encode(), None, flags, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {source} -> {target}: {os.strerror(err)}")


def under(point: str, prefix: str) -> bool:
    return point == prefix or point.startswith(prefix.rstrip("/") + "/")


def detach(prefixes: list[str], keep: list[str]) -> None:
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4].replace("\\040", " ") for line in f]
    for point in sorted(set(points), key=len, reverse=True):
        if any(under(point, p) for p in prefixes) and not any(under(point, k) for k in keep):
            libc.umount2(point.encode(), MNT_DETACH)


def main() -> None:
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    try:
        if spec.get("hostname"):
            socket.sethostname(spec["hostname"])
        # Other pods' network namespaces and volumes are not this container's to pin.
        detach(spec.get("detach", []), spec.get("keep", []))
        mounts = sorted(spec["mounts"], key=lambda m: m["target"].rstrip("/").count("/"))
        # Hold every source first: a mount (of /tmp, say) may hide the path of a later one.
        handles = [os.open(m["source"], os.O_PATH) for m in mounts]
        for m, fd in zip(mounts, handles):
            source, target = f"/proc/self/fd/{fd}", m["target"]
            if not os.path.exists(target):
                if os.path.isdir(source):
                    os.makedirs(target, exist_ok=True)
                else:
                    os.makedirs(os.path.dirname(target), exist_ok=True)
                    open(target, "a").close()
            mount(source, target, MS_BIND | MS_REC)
            if m.get("read_only"):
                mount(None, target, MS_BIND | MS_REMOUNT | MS_RDONLY)
        for fd in handles:
            os.close(fd)
        os.chdir(spec.get("workdir") or "/")
    except OSError as e:
        print(f"container setup failed: {e}", file=sys.stderr, flush=True)
        os._exit(126)
    env = spec["env"]
    argv = spec["argv"]
    path = shutil.which(argv[0], path=env.get("PATH")) if "/" not in argv[0] else argv[0]
    if not path:
        print(f'exec: "{argv[0]}": executable file not found in $PATH', file=sys.stderr, flush=True)
        os._exit(127)
    try:
        os.execve(path, argv, env)
    except OSError as e:
        print(f"exec {argv[0]}: {e}", file=sys.stderr, flush=True)
        os._exit(126)


if __name__ == "__main__":
    main()
