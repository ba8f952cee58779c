"""Pure pieces of the process runtime: what a pod spec turns into, with no processes, namespaces or API calls.

Guarantees:
- `resolve_env` builds a container's environment the way a kubelet does: `envFrom` first, then `env` in order
  (`value` with `$(VAR)` expansion against what is defined so far, `fieldRef`, `resourceFieldRef`,
  `configMapKeyRef`, `secretKeyRef`), on top of a base environment. A missing, non-optional ConfigMap, Secret or
  key raises `ConfigError`, which the runtime reports as `CreateContainerConfigError`.
- `render_hosts` renders a pod's /etc/hosts from the ready endpoints of every Service: own-namespace Services
  under all four names (`svc.ns.svc.cluster.local`, `svc.ns.svc`, `svc.ns`, `svc`), other namespaces' under the
  three qualified ones, each name mapped to one address (the first ready endpoint), plus the pod's own name.
- `volume_files` turns a configMap, secret, downwardAPI or projected volume into the files it holds;
  `container_mounts` says what is bind-mounted where in one container.
- Lookups go through a `Lookup` (ConfigMaps, Secrets, service-account tokens), so all of this is testable offline.
"""

from __future__ import annotations

import base64
import math
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Protocol

CLUSTER_DOMAIN = "cluster.local"
SA_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"


class ConfigError(Exception):
    """The container cannot be configured yet (a referenced ConfigMap, Secret or key is missing)."""


class Lookup(Protocol):
    def configmap(self, namespace: str, name: str) -> dict[str, str] | None: ...

    def secret(self, namespace: str, name: str) -> dict[str, bytes] | None: ...

    def token(self, pod: dict[str, Any], audience: str | None, expiration: int) -> str: ...


# -- quantities ---------------------------------------------------------------------------------------------------

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_QUANTITY = re.compile(r"^([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))(Ki|Mi|Gi|Ti|Pi|Ei|[eE][+-]?[0-9]+|[numkMGTPE]?)$")


def quantity(value: Any) -> Fraction:
    if isinstance(value, (int, float)):
        return Fraction(value)
    m = _QUANTITY.match(str(value).strip())
    if not m:
        raise ValueError(f"{value!r} is not a quantity")
    number, suffix = Fraction(m.group(1)), m.group(2)
    if suffix in _BINARY:
        return number * _BINARY[suffix]
    if suffix[:1] in ("e", "E"):
        return number * Fraction(10) ** int(suffix[1:])
    return number * Fraction(10) ** _DECIMAL[suffix]


# -- env ----------------------------------------------------------------------------------------------------------

_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(text: str, env: dict[str, str]) -> str:
    """Expand `$(VAR)` from `env`; `$$` is a literal `$`; unknown references stay as written."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        return env[name] if name in env else m.group(0)

    return _REF.sub(sub, text)


def field_value(pod: dict[str, Any], path: str, pod_ip: str) -> str:
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    m = re.fullmatch(r"metadata\.(labels|annotations)\[['\"]?(.+?)['\"]?\]", path)
    if m:
        return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
    simple: dict[str, Callable[[], Any]] = {
        "metadata.name": lambda: meta.get("name", ""),
        "metadata.namespace": lambda: meta.get("namespace", ""),
        "metadata.uid": lambda: meta.get("uid", ""),
        "metadata.labels": lambda: _kv_lines(meta.get("labels")),
        "metadata.annotations": lambda: _kv_lines(meta.get("annotations")),
        "spec.nodeName": lambda: spec.get("nodeName", ""),
        "spec.serviceAccountName": lambda: spec.get("serviceAccountName", "default"),
        "status.podIP": lambda: pod_ip,
        "status.podIPs": lambda: pod_ip,
        "status.hostIP": lambda: "127.0.0.1",
        "status.hostIPs": lambda: "127.0.0.1",
    }
    if path not in simple:
        raise ConfigError(f"unsupported fieldRef {path!r}")
    return str(simple[path]())


def _kv_lines(d: dict[str, str] | None) -> str:
    return "\n".join(f'{k}="{v}"' for k, v in sorted((d or {}).items()))


def resource_value(container: dict[str, Any], resource: str, divisor: Any, allocatable: dict[str, str]) -> str:
    """A resourceFieldRef: limits fall back to the node's allocatable, requests to limits; rounded up."""
    res = container.get("resources") or {}
    kind, _, name = resource.partition(".")
    if kind not in ("limits", "requests") or not name:
        raise ConfigError(f"unsupported resourceFieldRef {resource!r}")
    value = (res.get(kind) or {}).get(name)
    if value is None and kind == "requests":
        value = (res.get("limits") or {}).get(name)
    if value is None:
        value = allocatable.get(name, "0") if kind == "limits" else "0"
    div = quantity(divisor) if divisor not in (None, "", 0, "0") else Fraction(1)
    if div <= 0:
        div = Fraction(1)
    return str(math.ceil(quantity(value) / div))


def resolve_env(pod: dict[str, Any], container: dict[str, Any], pod_ip: str, lookup: Lookup,
                base: dict[str, str], allocatable: dict[str, str] | None = None) -> dict[str, str]:
    ns = pod["metadata"]["namespace"]
    env = dict(base)
    defined: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        if "configMapRef" in source:
            ref = source["configMapRef"]
            data = lookup.configmap(ns, ref["name"])
            if data is None:
                if ref.get("optional"):
                    continue
                raise ConfigError(f'configmap "{ref["name"]}" not found')
            values = dict(data)
        elif "secretRef" in source:
            ref = source["secretRef"]
            secret = lookup.secret(ns, ref["name"])
            if secret is None:
                if ref.get("optional"):
                    continue
                raise ConfigError(f'secret "{ref["name"]}" not found')
            values = {k: v.decode(errors="replace") for k, v in secret.items()}
        else:
            continue
        for k, v in values.items():
            defined[prefix + k] = v
    for var in container.get("env") or []:
        name = var["name"]
        if "valueFrom" not in var:
            defined[name] = expand(str(var.get("value", "")), {**env, **defined})
            continue
        src = var["valueFrom"]
        if "fieldRef" in src:
            defined[name] = field_value(pod, src["fieldRef"]["fieldPath"], pod_ip)
        elif "resourceFieldRef" in src:
            ref = src["resourceFieldRef"]
            target = container
            if ref.get("containerName"):
                target = next((c for c in (pod["spec"].get("containers") or []) + (
                    pod["spec"].get("initContainers") or []) if c["name"] == ref["containerName"]), container)
            defined[name] = resource_value(target, ref["resource"], ref.get("divisor"), allocatable or {})
        elif "configMapKeyRef" in src:
            ref = src["configMapKeyRef"]
            data = lookup.configmap(ns, ref["name"])
            if data is None or ref["key"] not in data:
                if ref.get("optional"):
                    continue
                what = f'configmap "{ref["name"]}"' if data is None else f'key "{ref["key"]}" in configmap "{ref["name"]}"'
                raise ConfigError(f"{what} not found")
            defined[name] = data[ref["key"]]
        elif "secretKeyRef" in src:
            ref = src["secretKeyRef"]
            secret = lookup.secret(ns, ref["name"])
            if secret is None or ref["key"] not in secret:
                if ref.get("optional"):
                    continue
                what = f'secret "{ref["name"]}"' if secret is None else f'key "{ref["key"]}" in secret "{ref["name"]}"'
                raise ConfigError(f"{what} not found")
            defined[name] = secret[ref["key"]].decode(errors="replace")
    env.update(defined)
    return env


def command_line(container: dict[str, Any], env: dict[str, str]) -> list[str]:
    """The argv a container runs: command + args with `$(VAR)` expanded. The image is never pulled, so a
    container without `command` runs its `args` as the command, and one with neither sleeps forever."""
    command = [expand(str(x), env) for x in container.get("command") or []]
    args = [expand(str(x), env) for x in container.get("args") or []]
    argv = command + args
    return argv or ["sleep", "infinity"]


# -- hosts --------------------------------------------------------------------------------------------------------

Endpoints = dict[tuple[str, str], list[tuple[str, str | None]]]  # (namespace, service) -> [(ip, hostname)]


def pod_hostname(pod: dict[str, Any]) -> tuple[str, str | None]:
    spec = pod.get("spec") or {}
    return (spec.get("hostname") or pod["metadata"]["name"])[:63], spec.get("subdomain")


def render_hosts(pod: dict[str, Any], pod_ip: str, services: Endpoints) -> str:
    ns = pod["metadata"]["namespace"]
    hostname, subdomain = pod_hostname(pod)
    lines = ["# Kubernetes-managed hosts file (rayop node agent, process mode).",
             "127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    own = [hostname]
    if subdomain:
        own.insert(0, f"{hostname}.{subdomain}.{ns}.svc.{CLUSTER_DOMAIN}")
    lines.append(f"{pod_ip}\t{' '.join(own)}")
    lines.append("# Services (name -> first ready endpoint; there is no kube-proxy)")
    for (svc_ns, svc), endpoints in sorted(services.items(), key=lambda kv: (kv[0][0] != ns, kv[0])):
        ready = [e for e in endpoints if e[0]]
        if not ready:
            continue
        names = [f"{svc}.{svc_ns}.svc.{CLUSTER_DOMAIN}", f"{svc}.{svc_ns}.svc", f"{svc}.{svc_ns}"]
        if svc_ns == ns:
            names.append(svc)
        lines.append(f"{ready[0][0]}\t{' '.join(names)}")
        for ip, host in ready:
            if host:
                lines.append(f"{ip}\t{host}.{svc}.{svc_ns}.svc.{CLUSTER_DOMAIN}")
    return "\n".join(lines) + "\n"


def render_resolv(pod: dict[str, Any]) -> str:
    ns = pod["metadata"]["namespace"]
    # No name server: every cluster name is in /etc/hosts, and lookups of anything else fail fast.
    return (f"search {ns}.svc.{CLUSTER_DOMAIN} svc.{CLUSTER_DOMAIN} {CLUSTER_DOMAIN}\n"
            "nameserver 127.0.0.1\noptions ndots:1 timeout:1 attempts:1\n")


def endpoints_of(slice_: dict[str, Any]) -> tuple[tuple[str, str], list[tuple[str, str | None]]] | None:
    """(namespace, service) and the ready endpoints of one EndpointSlice, or None if it belongs to no Service."""
    meta = slice_.get("metadata") or {}
    svc = (meta.get("labels") or {}).get("kubernetes.io/service-name")
    if not svc:
        return None
    out: list[tuple[str, str | None]] = []
    for ep in slice_.get("endpoints") or []:
        if (ep.get("conditions") or {}).get("ready") is False:
            continue
        for addr in ep.get("addresses") or []:
            out.append((addr, ep.get("hostname")))
    return (meta["namespace"], svc), out


# -- volumes ------------------------------------------------------------------------------------------------------

FileSet = dict[str, tuple[bytes, int]]  # relative path -> (content, mode)


def _items(data: dict[str, bytes], items: list[dict[str, Any]] | None, default_mode: int) -> FileSet:
    if not items:
        return {k: (v, default_mode) for k, v in data.items()}
    out: FileSet = {}
    for item in items:
        if item["key"] in data:
            out[item["path"]] = (data[item["key"]], item.get("mode", default_mode))
    return out


def _configmap_files(ns: str, src: dict[str, Any], lookup: Lookup, default_mode: int) -> FileSet:
    data = lookup.configmap(ns, src["name"])
    if data is None:
        if src.get("optional"):
            return {}
        raise ConfigError(f'configmap "{src["name"]}" not found')
    return _items({k: v.encode() for k, v in data.items()}, src.get("items"), src.get("defaultMode", default_mode))


def _secret_files(ns: str, name: str, src: dict[str, Any], lookup: Lookup, default_mode: int) -> FileSet:
    data = lookup.secret(ns, name)
    if data is None:
        if src.get("optional"):
            return {}
        raise ConfigError(f'secret "{name}" not found')
    return _items(data, src.get("items"), src.get("defaultMode", default_mode))


def _downward_files(pod: dict[str, Any], items: list[dict[str, Any]], pod_ip: str, mode: int,
                    allocatable: dict[str, str]) -> FileSet:
    out: FileSet = {}
    for item in items or []:
        if "fieldRef" in item:
            value = field_value(pod, item["fieldRef"]["fieldPath"], pod_ip)
        else:
            ref = item["resourceFieldRef"]
            container: dict[str, Any] = next((c for c in pod["spec"].get("containers") or []
                              if c["name"] == ref.get("containerName")), {})
            value = resource_value(container, ref["resource"], ref.get("divisor"), allocatable)
        out[item["path"]] = (value.encode(), item.get("mode", mode))
    return out


def volume_files(pod: dict[str, Any], volume: dict[str, Any], pod_ip: str, lookup: Lookup,
                 allocatable: dict[str, str] | None = None) -> FileSet | None:
    """The files of a configMap, secret, downwardAPI or projected volume; None for other kinds."""
    ns = pod["metadata"]["namespace"]
    alloc = allocatable or {}
    if "configMap" in volume:
        return _configmap_files(ns, volume["configMap"], lookup, 0o644)
    if "secret" in volume:
        src = volume["secret"]
        return _secret_files(ns, src["secretName"], src, lookup, 0o644)
    if "downwardAPI" in volume:
        src = volume["downwardAPI"]
        return _downward_files(pod, src.get("items") or [], pod_ip, src.get("defaultMode", 0o644), alloc)
    if "projected" in volume:
        proj = volume["projected"]
        mode = proj.get("defaultMode", 0o644)
        out: FileSet = {}
        for source in proj.get("sources") or []:
            if "serviceAccountToken" in source:
                tok = source["serviceAccountToken"]
                token = lookup.token(pod, tok.get("audience"), int(tok.get("expirationSeconds", 3600)))
                out[tok["path"]] = (token.encode(), mode)
            elif "configMap" in source:
                out.update(_configmap_files(ns, {**source["configMap"], "defaultMode": mode}, lookup, mode))
            elif "secret" in source:
                src = source["secret"]
                out.update(_secret_files(ns, src["name"], {**src, "defaultMode": mode}, lookup, mode))
            elif "downwardAPI" in source:
                out.update(_downward_files(pod, source["downwardAPI"].get("items") or [], pod_ip, mode, alloc))
        return out
    return None


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    read_only: bool = False


def volume_kind(volume: dict[str, Any]) -> str:
    for kind in ("emptyDir", "configMap", "secret", "downwardAPI", "projected", "hostPath"):
        if kind in volume:
            return kind
    return "unsupported"


def volume_source_dir(pod_dir: Path, volume: dict[str, Any]) -> str:
    if "hostPath" in volume:
        return str(volume["hostPath"]["path"])
    return str(pod_dir / "volumes" / volume["name"])


def container_mounts(pod: dict[str, Any], container: dict[str, Any], pod_dir: Path,
                     container_dir: Path, runtime_root: Path | None = None) -> list[Mount]:
    """What one container sees: its volumeMounts, a private /tmp, and the pod's /etc/hosts and resolv.conf.

    `runtime_root` is the folder holding the environment commands run with (the repository and its virtualenv);
    when it lives under /tmp, it is mounted back at its own path, so the private /tmp does not hide it."""
    volumes = {v["name"]: v for v in pod["spec"].get("volumes") or []}
    mounts = [Mount(str(container_dir / "tmp"), "/tmp")]
    if runtime_root is not None and (runtime_root == Path("/tmp") or Path("/tmp") in runtime_root.parents):
        mounts.append(Mount(str(runtime_root), str(runtime_root)))
    for vm in container.get("volumeMounts") or []:
        volume = volumes.get(vm["name"])
        if volume is None:
            raise ConfigError(f'volume "{vm["name"]}" not found in the pod')
        source = volume_source_dir(pod_dir, volume)
        if vm.get("subPath"):
            source = str(Path(source) / vm["subPath"])
        read_only = bool(vm.get("readOnly")) or volume_kind(volume) in ("configMap", "secret", "downwardAPI",
                                                                         "projected")
        mounts.append(Mount(source, vm["mountPath"], read_only))
    mounts.append(Mount(str(pod_dir / "hosts"), "/etc/hosts", True))
    mounts.append(Mount(str(pod_dir / "resolv.conf"), "/etc/resolv.conf", True))
    return mounts


def decode_secret(data: dict[str, str] | None) -> dict[str, bytes]:
    return {k: base64.b64decode(v) for k, v in (data or {}).items()}
