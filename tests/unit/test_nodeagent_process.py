"""The pure parts of the node agent's process mode: env resolution, hosts files, volume plans, log selection."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "hack" / "nodeagent"))

from kubelet import select_lines, strip_stamp  # noqa: E402
from podspec import (  # noqa: E402
    SA_MOUNT,
    ConfigError,
    Mount,
    command_line,
    container_mounts,
    endpoints_of,
    expand,
    render_hosts,
    render_resolv,
    resolve_env,
    volume_files,
)


class FakeLookup:
    def __init__(self) -> None:
        self.configmaps = {("ns", "cfg"): {"a": "1", "b": "two"}, ("ns", "kube-root-ca.crt"): {"ca.crt": "CA"}}
        self.secrets = {("ns", "sec"): {"user": b"alice", "pass": b"s3cret"}}
        self.tokens: list[tuple[str | None, int]] = []

    def configmap(self, namespace: str, name: str) -> dict[str, str] | None:
        return self.configmaps.get((namespace, name))

    def secret(self, namespace: str, name: str) -> dict[str, bytes] | None:
        return self.secrets.get((namespace, name))

    def token(self, pod: dict[str, Any], audience: str | None, expiration: int) -> str:
        self.tokens.append((audience, expiration))
        return f"token-for-{pod['metadata']['name']}"


def make_pod(**spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "head-0", "namespace": "ns", "uid": "u-1", "labels": {"ray.io/node-type": "head"},
                     "annotations": {"note": "x"}},
        "spec": {"nodeName": "rayop-node-1", "serviceAccountName": "ray", "containers": [{"name": "ray"}], **spec},
    }


def test_env_from_fields_resources_configmaps_and_secrets() -> None:
    pod = make_pod()
    container = {
        "name": "ray",
        "resources": {"limits": {"cpu": "1500m", "memory": "2Gi"}, "requests": {"cpu": "500m"}},
        "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "CFG_"}, {"secretRef": {"name": "sec"}}],
        "env": [
            {"name": "NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "SA", "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}},
            {"name": "TYPE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['ray.io/node-type']"}}},
            {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
            {"name": "CPU_REQ_M", "valueFrom": {"resourceFieldRef": {"resource": "requests.cpu", "divisor": "1m"}}},
            {"name": "MEM_MI", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
            {"name": "GPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.nvidia.com/gpu"}}},
            {"name": "B", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "b"}}},
            {"name": "PASS", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "pass"}}},
            {"name": "GONE", "valueFrom": {"configMapKeyRef": {"name": "nope", "key": "x", "optional": True}}},
            {"name": "ADDR", "value": "$(IP):6379 $$(IP) $(UNDEFINED)"},
        ],
    }
    env = resolve_env(pod, container, "10.244.1.7", FakeLookup(), {"PATH": "/venv/bin:/usr/bin"},
                      {"nvidia.com/gpu": "8"})
    assert env == {
        "PATH": "/venv/bin:/usr/bin", "CFG_a": "1", "CFG_b": "two", "user": "alice", "pass": "s3cret",
        "NAME": "head-0", "NS": "ns", "UID": "u-1", "IP": "10.244.1.7", "NODE": "rayop-node-1", "SA": "ray",
        "TYPE": "head", "CPU": "2", "CPU_REQ_M": "500", "MEM_MI": "2048", "GPU": "8", "B": "two",
        "PASS": "s3cret", "ADDR": "10.244.1.7:6379 $(IP) $(UNDEFINED)",
    }


@pytest.mark.parametrize("ref", [
    {"configMapKeyRef": {"name": "nope", "key": "x"}},
    {"configMapKeyRef": {"name": "cfg", "key": "missing"}},
    {"secretKeyRef": {"name": "sec", "key": "missing"}},
])
def test_missing_required_references_are_config_errors(ref: dict[str, Any]) -> None:
    container = {"name": "ray", "env": [{"name": "X", "valueFrom": ref}]}
    with pytest.raises(ConfigError, match="not found"):
        resolve_env(make_pod(), container, "10.244.1.7", FakeLookup(), {})


def test_command_line_expands_and_falls_back() -> None:
    env = {"PORT": "6379"}
    assert command_line({"command": ["ray", "start"], "args": ["--port=$(PORT)", "--block"]}, env) == [
        "ray", "start", "--port=6379", "--block"]
    assert command_line({"args": ["python", "-V"]}, env) == ["python", "-V"]
    assert command_line({}, env) == ["sleep", "infinity"]
    assert expand("$(PORT)$$", env) == "6379$"


def test_hosts_lists_services_under_their_names() -> None:
    services = {
        ("ns", "head-svc"): [("10.244.1.3", None), ("10.244.1.9", None)],
        ("ns", "workers"): [("10.244.1.4", "w-0")],
        ("other", "db"): [("10.244.2.5", None)],
        ("ns", "empty"): [],
        ("default", "kubernetes"): [("10.244.0.1", None)],
    }
    pod = make_pod(hostname="h0", subdomain="workers")
    text = render_hosts(pod, "10.244.1.7", services)
    lines = text.splitlines()
    assert "127.0.0.1\tlocalhost" in lines
    assert "10.244.1.7\th0.workers.ns.svc.cluster.local h0" in lines
    assert "10.244.1.3\thead-svc.ns.svc.cluster.local head-svc.ns.svc head-svc.ns head-svc" in lines
    assert not any(line.startswith("10.244.1.9") for line in lines)  # one address per name: the first
    assert "10.244.1.4\tw-0.workers.ns.svc.cluster.local" in lines
    assert "10.244.2.5\tdb.other.svc.cluster.local db.other.svc db.other" in lines  # no short name elsewhere
    assert "10.244.0.1\tkubernetes.default.svc.cluster.local kubernetes.default.svc kubernetes.default" in lines
    assert "empty" not in text
    assert render_resolv(pod).startswith("search ns.svc.cluster.local svc.cluster.local cluster.local\n")


def test_endpoint_slices_keep_ready_endpoints_of_their_service() -> None:
    slice_ = {"metadata": {"namespace": "ns", "name": "head-svc-abc",
                           "labels": {"kubernetes.io/service-name": "head-svc"}},
              "endpoints": [{"addresses": ["10.244.1.3"], "conditions": {"ready": True}},
                            {"addresses": ["10.244.1.8"], "conditions": {"ready": False}},
                            {"addresses": ["10.244.1.9"], "hostname": "h"}]}
    assert endpoints_of(slice_) == (("ns", "head-svc"), [("10.244.1.3", None), ("10.244.1.9", "h")])
    assert endpoints_of({"metadata": {"namespace": "ns", "name": "x"}}) is None


def test_projected_service_account_volume() -> None:
    lookup = FakeLookup()
    volume = {"name": "kube-api-access-x", "projected": {"defaultMode": 0o644, "sources": [
        {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
        {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
        {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}},
    ]}}
    files = volume_files(make_pod(), volume, "10.244.1.7", lookup)
    assert files == {"token": (b"token-for-head-0", 0o644), "ca.crt": (b"CA", 0o644), "namespace": (b"ns", 0o644)}
    assert lookup.tokens == [(None, 3607)]
    aud = {"name": "t", "projected": {"sources": [
        {"serviceAccountToken": {"audience": "vault", "expirationSeconds": 600, "path": "t"}}]}}
    volume_files(make_pod(), aud, "10.244.1.7", lookup)
    assert lookup.tokens[-1] == ("vault", 600)


def test_configmap_secret_and_downward_volumes() -> None:
    lookup = FakeLookup()
    pod = make_pod()
    assert volume_files(pod, {"name": "c", "configMap": {"name": "cfg"}}, "ip", lookup) == {
        "a": (b"1", 0o644), "b": (b"two", 0o644)}
    assert volume_files(pod, {"name": "c", "configMap": {"name": "cfg", "defaultMode": 0o600,
                                                         "items": [{"key": "b", "path": "sub/b.txt"}]}},
                        "ip", lookup) == {"sub/b.txt": (b"two", 0o600)}
    assert volume_files(pod, {"name": "s", "secret": {"secretName": "sec", "items": [
        {"key": "user", "path": "u", "mode": 0o400}]}}, "ip", lookup) == {"u": (b"alice", 0o400)}
    assert volume_files(pod, {"name": "o", "configMap": {"name": "nope", "optional": True}}, "ip", lookup) == {}
    with pytest.raises(ConfigError):
        volume_files(pod, {"name": "o", "secret": {"secretName": "nope"}}, "ip", lookup)
    labels = volume_files(pod, {"name": "d", "downwardAPI": {"items": [
        {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]}}, "ip", lookup)
    assert labels == {"labels": (b'ray.io/node-type="head"', 0o644)}
    assert volume_files(pod, {"name": "e", "emptyDir": {}}, "ip", lookup) is None


def test_container_mounts_plan() -> None:
    pod = make_pod(volumes=[
        {"name": "shm", "emptyDir": {"medium": "Memory"}},
        {"name": "cfg", "configMap": {"name": "cfg"}},
        {"name": "kube-api-access-x", "projected": {"sources": []}},
        {"name": "host", "hostPath": {"path": "/data"}},
    ])
    container = {"name": "ray", "volumeMounts": [
        {"name": "shm", "mountPath": "/dev/shm"},
        {"name": "cfg", "mountPath": "/etc/ray/conf.yaml", "subPath": "a"},
        {"name": "kube-api-access-x", "mountPath": SA_MOUNT, "readOnly": True},
        {"name": "host", "mountPath": "/mnt/data"},
    ]}
    pod_dir, cdir = Path("/state/pods/u-1"), Path("/state/pods/u-1/containers/ray")
    assert container_mounts(pod, container, pod_dir, cdir) == [
        Mount("/state/pods/u-1/containers/ray/tmp", "/tmp"),
        Mount("/state/pods/u-1/volumes/shm", "/dev/shm"),
        Mount("/state/pods/u-1/volumes/cfg/a", "/etc/ray/conf.yaml", True),
        Mount("/state/pods/u-1/volumes/kube-api-access-x", SA_MOUNT, True),
        Mount("/data", "/mnt/data"),
        Mount("/state/pods/u-1/hosts", "/etc/hosts", True),
        Mount("/state/pods/u-1/resolv.conf", "/etc/resolv.conf", True),
    ]
    with pytest.raises(ConfigError):
        container_mounts(pod, {"name": "x", "volumeMounts": [{"name": "missing", "mountPath": "/m"}]}, pod_dir,
                         cdir)


def test_log_selection() -> None:
    lines = [b"2030-01-01T00:00:00.000000Z one\n", b"2030-01-01T00:00:05.000000Z two\n",
             b"2030-01-01T00:00:09.000000Z three\n"]
    assert select_lines(lines, 2, None) == lines[1:]
    assert select_lines(lines, 0, None) == []
    since = 1893456004.0  # 2030-01-01T00:00:04Z
    assert select_lines(lines, None, since) == lines[1:]
    assert strip_stamp(lines[0]) == b"one\n"


def test_a_repository_under_tmp_stays_visible(tmp_path: Path) -> None:
    pod = {"spec": {"containers": [{"name": "c"}]}}
    mounts = container_mounts(pod, {"name": "c"}, tmp_path / "pod", tmp_path / "pod" / "c", Path("/tmp/clone"))
    assert [m.target for m in mounts][:2] == ["/tmp", "/tmp/clone"]
    assert mounts[1].source == "/tmp/clone"
    elsewhere = container_mounts(pod, {"name": "c"}, tmp_path / "pod", tmp_path / "pod" / "c", Path("/work/main"))
    assert "/work/main" not in [m.target for m in elsewhere]


def test_a_failed_container_falls_back_to_its_log_tail_as_termination_message(tmp_path: Path) -> None:
    from process import FALLBACK_LOG_BYTES, termination_message

    log = tmp_path / "0.log"
    lines = [f"2026-01-01T00:00:00.{i:06d}Z line {i}" for i in range(200)]
    log.write_text("\n".join([*lines, '2026-01-01T00:00:01.000000Z {"reason": "WorkersNotJoined"}']) + "\n")
    fallback = {"terminationMessagePolicy": "FallbackToLogsOnError"}
    message = termination_message(fallback, 4, log)
    assert message.endswith('{"reason": "WorkersNotJoined"}') and "2026-01-01T" not in message
    assert len(message.encode()) <= FALLBACK_LOG_BYTES and len(message.splitlines()) <= 80
    assert termination_message(fallback, 0, log) == ""  # only for a failure
    assert termination_message({}, 4, log) == ""  # the File policy: nothing is mounted in process mode
