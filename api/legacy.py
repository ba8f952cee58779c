"""What `ray up` did with a Kubernetes cluster config, and how rayop honours it (pure helpers of the
`configuration` form: `rayop.api.configstart`, `rayop.api.configpods`).

`ray up` on Kubernetes (Ray 0.8 to 1.x) created the pods of `head_node`/`worker_nodes` (or `node_config`) with a
container command that only kept them alive, then ran `setup_commands` and `head_start_ray_commands` /
`worker_start_ray_commands` in them over `kubectl exec`, with `RAY_HEAD_IP` exported and every other `$VAR` expanded
by the container's shell. rayop starts Ray itself, from those same commands:

- `keep_alive(command)` tells a container command that only keeps the pod alive (`sleep infinity`, `tail -f
  /dev/null`, ...) from one that does work.
- `RAY_START_FLAGS` are the flags `ray start` takes in the Ray release rayop is built and tested with (2.60);
  `RENAMED_FLAGS` maps flags of Ray before 2.x to today's name, `DROPPED_FLAGS` names the ones that have no meaning
  any more and why. A flag in none of them is unknown to `ray start`: passing it would stop the node from starting,
  so the conversion drops and reports it.
- `container_env(container)` and `expand(value, env)` resolve `$VAR` references the way the container's shell
  would have, as far as the pod template determines them (literal values, `resourceFieldRef` of the container's
  own requests and limits).

Pure: no I/O, no clock, no environment.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

from rayop.api.quantity import parse_quantity

__all__ = [
    "RAY_START_FLAGS",
    "RENAMED_FLAGS",
    "DROPPED_FLAGS",
    "keep_alive",
    "container_env",
    "expand",
    "references",
    "CLIENT_SERVER_MODULE",
]

# `ray start --help` of Ray 2.60 (tests/unit/test_api_legacy.py checks this against the installed Ray).
RAY_START_FLAGS = frozenset(
    {
        "address",
        "autoscaling-config",
        "block",
        "cgroup-path",
        "dashboard-agent-grpc-port",
        "dashboard-agent-listen-port",
        "dashboard-host",
        "dashboard-port",
        "disable-usage-stats",
        "enable-object-reconstruction",
        "enable-resource-isolation",
        "head",
        "include-dashboard",
        "include-log-monitor",
        "labels",
        "labels-file",
        "log-color",
        "log-style",
        "max-worker-port",
        "memory",
        "metrics-export-port",
        "min-worker-port",
        "no-monitor",
        "no-redirect-output",
        "node-ip-address",
        "node-manager-port",
        "node-name",
        "num-cpus",
        "num-gpus",
        "object-manager-port",
        "object-spilling-directory",
        "object-store-memory",
        "plasma-directory",
        "port",
        "proxy-server-url",
        "ray-client-server-port",
        "ray-debugger-external",
        "redis-password",
        "redis-shard-ports",
        "redis-username",
        "resources",
        "runtime-env-agent-port",
        "system-config",
        "system-reserved-cpu",
        "system-reserved-memory",
        "temp-dir",
        "tracing-startup-hook",
        "verbose",
        "worker-port-list",
        "v",
    }
)

# Flags of Ray before 2.x and their name today.
RENAMED_FLAGS: Mapping[str, str] = {
    "redis-port": "port",
    "redis-address": "address",
    "webui-host": "dashboard-host",
    "include-webui": "include-dashboard",
    "internal-config": "system-config",
}

# Flags that exist(ed) but mean nothing for a Ray 2.x node the operator starts: dropped, with the reason.
_NO_REDIS = "Ray 2 keeps cluster state in the GCS, not in Redis"
DROPPED_FLAGS: Mapping[str, str] = {
    "redis-password": f"{_NO_REDIS}; the GCS takes no password (it is only used with an external Redis)",
    "redis-username": f"{_NO_REDIS}; it is only used with an external Redis",
    "redis-shard-ports": _NO_REDIS,
    "num-redis-shards": _NO_REDIS,
    "redis-max-clients": _NO_REDIS,
    "redis-max-memory": _NO_REDIS,
    "lru-evict": "Ray 2 no longer evicts objects by LRU; objects spill to disk",
    "load-code-from-local": "removed in Ray 2",
    "java-worker-options": "removed in Ray 2",
    "code-search-path": "removed in Ray 2; use a runtime_env or the job config",
    "huge-pages": "removed in Ray 2",
    "gcs-server-port": "the GCS listens on the head's --port (6379), set by the operator",
    "dashboard-grpc-port": "removed in Ray 2",
}

# `python -m ray.util.client.server` (Ray 1.x configs started the Ray Client server by hand); `ray start --head`
# runs it itself in Ray 2 on --ray-client-server-port (10001).
CLIENT_SERVER_MODULE = "ray.util.client.server"

_KEEP_ALIVE = (
    re.compile(r"^(trap\s+\S+\s+[A-Z ]+;\s*)?sleep\s+(infinity|inf|\d{4,})\s*(&\s*wait\s*;?)?\s*;?$"),
    re.compile(r"^tail\s+-f\s+/dev/null\s*;?$"),
    re.compile(r"^while\s+(true|:)\s*;\s*do\s+sleep\s+\d+\s*;\s*done\s*;?$"),
    re.compile(r"^(exec\s+)?sleep\s+(infinity|inf|\d{4,})$"),
)
_SHELLS = ("/bin/bash", "/bin/sh", "bash", "sh", "/usr/bin/env bash", "/usr/bin/bash")


def keep_alive(command: object, args: object) -> bool:
    """True when a container's `command` + `args` only keep the container alive (what `ray up` configs used)."""
    parts = [p for p in [*(command if isinstance(command, list) else []), *(args if isinstance(args, list) else [])]]
    if not parts or not all(isinstance(p, str) for p in parts):
        return False
    # Strip a shell and its flags: ["/bin/bash", "-c", "--", "<script>"] -> "<script>".
    while parts and (parts[0] in _SHELLS or parts[0].rsplit("/", 1)[-1] in ("bash", "sh")):
        parts = parts[1:]
        while parts and parts[0].startswith("-"):
            parts = parts[1:]
    script = " ".join(parts).strip()
    return any(p.match(script) for p in _KEEP_ALIVE)


_VAR = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


def references(value: str) -> list[str]:
    """The names of the shell variables `value` refers to (`$X`, `${X}`), in order."""
    return [m.group(1) or m.group(2) for m in _VAR.finditer(value)]


def expand(value: str, env: Mapping[str, str | None]) -> str | None:
    """`value` with every `$X`/`${X}` replaced from `env`; None when one of them is unknown (or backquotes)."""
    if "`" in value or "$(" in value:
        return None
    missing = False

    def one(match: re.Match[str]) -> str:
        nonlocal missing
        known = env.get(match.group(1) or match.group(2))
        if known is None:
            missing = True
            return ""
        return known

    out = _VAR.sub(one, value)
    return None if missing else out


def container_env(container: Mapping[str, object]) -> dict[str, str | None]:
    """The container's variables as far as its manifest determines them: `value` (with `$(X)` expanded from earlier
    ones) and `resourceFieldRef` of its own requests/limits; None for the others (known to exist, value unknown)."""
    env: dict[str, str | None] = {}
    entries = container.get("env")
    if not isinstance(entries, list):
        return env
    for entry in entries:
        if not isinstance(entry, Mapping) or not isinstance(entry.get("name"), str):
            continue
        name = entry["name"]
        if isinstance(entry.get("value"), str):
            env[name] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1)) or m.group(0), entry["value"])
            continue
        source = entry.get("valueFrom")
        ref = source.get("resourceFieldRef") if isinstance(source, Mapping) else None
        env[name] = _resource_field(container, ref) if isinstance(ref, Mapping) else None
    return env


def _resource_field(container: Mapping[str, object], ref: Mapping[str, object]) -> str | None:
    """What the kubelet puts into a `resourceFieldRef` variable (requests default to limits; limits unknown when
    unset: they would be the node's allocatable), rounded up to a whole number of `divisor` as Kubernetes does."""
    resource = ref.get("resource")
    if not isinstance(resource, str) or "." not in resource:
        return None
    kind, _, name = resource.partition(".")
    resources = container.get("resources")
    if not isinstance(resources, Mapping):
        return None
    limits = resources.get("limits") if isinstance(resources.get("limits"), Mapping) else {}
    requests = resources.get("requests") if isinstance(resources.get("requests"), Mapping) else {}
    assert isinstance(limits, Mapping) and isinstance(requests, Mapping)
    if kind == "requests":
        raw = requests.get(name, limits.get(name))
    elif kind == "limits":
        raw = limits.get(name)
    else:
        return None
    if raw is None:
        return None
    try:
        amount = parse_quantity(raw)
        divisor = parse_quantity(ref.get("divisor", 1))
    except ValueError:
        return None
    if divisor <= 0:
        return None
    return str(max(0, math.ceil(amount / divisor - 1e-9)))
