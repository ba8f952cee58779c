"""The in-pod node provider (controller/inpod/rayop_provider.py), against a fake API and a tiny local HTTP server."""

from __future__ import annotations

import copy
import http.server
import json
import ssl
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("ray")

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "controller" / "inpod"))
import rayop_provider as rp  # noqa: E402
from ray.autoscaler.batching_node_provider import ScaleRequest  # noqa: E402
from ray.autoscaler.tags import TAG_RAY_NODE_KIND, TAG_RAY_USER_NODE_TYPE  # noqa: E402

NS = "ns"
NAME = "demo"
RAY_PATH = f"/apis/ray.k8s.io/v1alpha1/namespaces/{NS}/rays/{NAME}"
PODS_PATH = f"/api/v1/namespaces/{NS}/pods"

CONFIG = {
    "type": "external",
    "module": "rayop_provider.RayopNodeProvider",
    "namespace": NS,
    "ray_name": NAME,
    "disable_node_updaters": True,
    "disable_launch_config_check": True,
    "foreground_node_launch": True,
    "worker_liveness_check": False,
}


def make_pod(name: str, kind: str | None = "worker", group: str | None = "worker", phase: str | None = "Running",
             ready: bool = True, ip: str | None = "10.0.0.1", deleting: bool = False) -> dict[str, Any]:
    labels = {"ray.k8s.io/cluster": NAME}
    if kind:
        labels["ray.k8s.io/node-kind"] = kind
    if group:
        labels["ray.k8s.io/group"] = group
    meta: dict[str, Any] = {"name": name, "labels": labels}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    status: dict[str, Any] = {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}
    if phase:
        status["phase"] = phase
    if ip:
        status["podIP"] = ip
    return {"metadata": meta, "status": status}


class FakeApi(rp.KubeApi):
    """The `Ray` and pods in memory; merge patches honour the resourceVersion guard like the API server."""

    def __init__(self, ray: dict[str, Any], pods: list[dict[str, Any]]):
        self.ray = ray
        self.pods = pods
        self.version = 1
        self.ray["metadata"]["resourceVersion"] = "1"
        self.calls: list[tuple[str, str, Any]] = []
        self.fail_patches: list[rp.ApiError] = []
        self.bump_before_patch = 0

    def get(self, path: str, **query: str) -> dict[str, Any]:
        self.calls.append(("GET", path, query))
        if path == RAY_PATH:
            return copy.deepcopy(self.ray)
        assert path == PODS_PATH and query == {"labelSelector": f"ray.k8s.io/cluster={NAME}"}
        return {"items": copy.deepcopy(self.pods)}

    def patch(self, path: str, body: Any, content_type: str = rp.MERGE_PATCH) -> dict[str, Any]:
        self.calls.append(("PATCH", path, copy.deepcopy(body)))
        assert path == RAY_PATH and content_type == rp.MERGE_PATCH
        if self.bump_before_patch:
            self.bump_before_patch -= 1
            self.bump()
        if self.fail_patches:
            raise self.fail_patches.pop(0)
        if body["metadata"]["resourceVersion"] != self.ray["metadata"]["resourceVersion"]:
            raise rp.ApiError(409, "Conflict", "the object has been modified")
        spec = self.ray.setdefault("spec", {})
        for key, value in body.get("spec", {}).items():
            if value is None:
                spec.pop(key, None)
            elif isinstance(value, dict):
                merged = dict(spec.get(key) or {})
                merged.update(value)
                spec[key] = merged
            else:
                spec[key] = value
        self.bump()
        return copy.deepcopy(self.ray)

    def bump(self) -> None:
        self.version += 1
        self.ray["metadata"]["resourceVersion"] = str(self.version)

    def patches(self) -> list[Any]:
        return [c[2] for c in self.calls if c[0] == "PATCH"]


@pytest.fixture
def api() -> Iterator[FakeApi]:
    fake = FakeApi(
        {"metadata": {"name": NAME, "namespace": NS}, "spec": {"minWorkers": 0, "maxWorkers": 3}},
        [make_pod("demo-head-a", "head", "head", ip="10.0.0.9"), make_pod("demo-worker-a", ip="10.0.0.1")],
    )
    rp.RayopNodeProvider.api_factory = lambda config: fake
    yield fake
    rp.RayopNodeProvider.api_factory = None


def provider() -> rp.RayopNodeProvider:
    return rp.RayopNodeProvider(dict(CONFIG), NAME)


# -- pods as nodes ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pod, expected",
    [
        (make_pod("p"), "up-to-date"),
        (make_pod("p", ready=False), "pending"),
        (make_pod("p", phase="Pending", ready=False), "pending"),
        (make_pod("p", phase=None, ready=False), "pending"),
        (make_pod("p", phase="Failed"), "update-failed"),
        (make_pod("p", phase="Succeeded"), "update-failed"),
        ({"metadata": {"name": "p"}}, "pending"),
    ],
    ids=["ready", "not-ready", "pending", "no-phase", "failed", "succeeded", "no-status"],
)
def test_node_status(pod: dict[str, Any], expected: str) -> None:
    assert rp.node_status(pod) == expected


def test_node_data_from_pod() -> None:
    head = rp.node_data_from_pod(make_pod("h", "head", "anything", ip="10.0.0.9"))
    assert head is not None and (head.kind, head.type, head.ip, head.status) == ("head", "head", "10.0.0.9", "up-to-date")
    worker = rp.node_data_from_pod(make_pod("w", group="gpu", phase="Pending", ready=False, ip=None))
    assert worker is not None and (worker.kind, worker.type, worker.ip, worker.status) == ("worker", "gpu", None, "pending")
    assert rp.node_data_from_pod(make_pod("w", group=None)) is None
    assert rp.node_data_from_pod(make_pod("w", kind=None)) is None
    assert rp.node_data_from_pod(make_pod("w", kind="launcher")) is None
    assert rp.node_data_from_pod(make_pod("w", deleting=True)) is None


def test_the_provider_lists_pods_by_label_and_reads_the_ray(api: FakeApi) -> None:
    api.pods += [make_pod("demo-worker-gone", deleting=True), make_pod("demo-launcher-x", kind=None, group=None)]
    p = provider()
    assert sorted(p.non_terminated_nodes({})) == ["demo-head-a", "demo-worker-a"]
    assert p.non_terminated_nodes({TAG_RAY_NODE_KIND: "worker"}) == ["demo-worker-a"]
    assert p.node_tags("demo-worker-a")[TAG_RAY_USER_NODE_TYPE] == "worker"
    assert p.internal_ip("demo-head-a") == "10.0.0.9"
    assert p.ray["spec"]["maxWorkers"] == 3


# -- scale requests -----------------------------------------------------------------------------------------------


def request(desired: dict[str, int], delete: set[str] | None = None) -> ScaleRequest:
    return ScaleRequest(desired_num_workers=dict(desired), workers_to_delete=set(delete or ()))


@pytest.mark.parametrize(
    "spec, status, req, observed, expected",
    [
        ({}, {}, request({"worker": 1}), {"worker": 1}, None),
        ({}, {}, request({"worker": 3, "head": 1}), {"worker": 1}, {"desiredWorkers": {"worker": 3}}),
        # Pods the operator has yet to create already cover the demand: no patch.
        ({"desiredWorkers": {"worker": 4}}, {}, request({"worker": 3}), {"worker": 1}, None),
        # ... and the operator's reported target counts when the spec has none.
        ({}, {"workerGroups": [{"name": "worker", "desiredWorkers": 4}, {"name": "x"}]}, request({"worker": 3}),
         {"worker": 1}, {"desiredWorkers": {"worker": 4}}),
        ({"desiredWorkers": {"worker": 2}}, {}, request({"worker": 5}), {"worker": 2}, {"desiredWorkers": {"worker": 5}}),
        ({"desiredWorkers": {"worker": 3, "gpu": 1}}, {}, request({"worker": 2, "gpu": 1}, {"w-1"}),
         {"worker": 3, "gpu": 1}, {"desiredWorkers": {"worker": 2}, "workersToDelete": ["w-1"]}),
        # Scaling down writes what the autoscaler saw minus what it named, even below a lagging target.
        ({"desiredWorkers": {"worker": 5}}, {}, request({"worker": 1}, {"w-2"}), {"worker": 2},
         {"desiredWorkers": {"worker": 1}, "workersToDelete": ["w-2"]}),
        ({"workersToDelete": ["w-0"]}, {}, request({"worker": 0}, {"w-1"}), {"worker": 1},
         {"desiredWorkers": {"worker": 0}, "workersToDelete": ["w-0", "w-1"]}),
        ({"workersToDelete": ["w-1"], "desiredWorkers": {"worker": 0}}, {}, request({"worker": 0}, {"w-1"}),
         {"worker": 1}, None),
        ({}, {}, request({"new": 2}), {}, {"desiredWorkers": {"new": 2}}),
    ],
    ids=["no-change", "up", "lagging-covers", "status-target", "up-past-target", "down-by-name", "down-below-lag",
         "union-names", "already-written", "new-group"],
)
def test_scale_patch(spec: dict[str, Any], status: dict[str, Any], req: ScaleRequest, observed: dict[str, int],
                     expected: dict[str, Any] | None) -> None:
    patch = rp.scale_patch({"spec": spec, "status": status}, req, observed)
    assert patch == ({"spec": expected} if expected is not None else None)


def test_scale_up_is_one_guarded_merge_patch(api: FakeApi) -> None:
    p = provider()
    p.non_terminated_nodes({})
    p.create_node({}, {TAG_RAY_USER_NODE_TYPE: "worker"}, 2)
    p.post_process()
    assert api.patches() == [{"metadata": {"resourceVersion": "1"}, "spec": {"desiredWorkers": {"worker": 3}}}]
    assert api.ray["spec"]["desiredWorkers"] == {"worker": 3}
    # Nothing changed: no patch.
    p.non_terminated_nodes({})
    p.post_process()
    assert len(api.patches()) == 1


def test_scale_down_names_the_worker(api: FakeApi) -> None:
    p = provider()
    p.non_terminated_nodes({})
    p.terminate_node("demo-worker-a")
    p.post_process()
    assert api.ray["spec"]["desiredWorkers"] == {"worker": 0}
    assert api.ray["spec"]["workersToDelete"] == ["demo-worker-a"]


def test_a_conflict_is_retried_on_a_fresh_read(api: FakeApi) -> None:
    p = provider()
    p.non_terminated_nodes({})
    api.bump()  # someone (the operator's status write) changed the Ray meanwhile
    p.create_node({}, {TAG_RAY_USER_NODE_TYPE: "worker"}, 1)
    p.post_process()
    versions = [body["metadata"]["resourceVersion"] for body in api.patches()]
    assert versions == ["1", "2"]
    assert api.ray["spec"]["desiredWorkers"] == {"worker": 2}


def test_repeated_conflicts_raise_for_the_autoscaler_to_retry(api: FakeApi) -> None:
    p = provider()
    p.non_terminated_nodes({})
    api.bump_before_patch = rp.CONFLICT_ATTEMPTS
    p.create_node({}, {TAG_RAY_USER_NODE_TYPE: "worker"}, 1)
    with pytest.raises(rp.ApiError) as e:
        p.post_process()
    assert e.value.status == 409 and len(api.patches()) == rp.CONFLICT_ATTEMPTS
    assert "desiredWorkers" not in api.ray["spec"]


def test_other_errors_are_not_retried(api: FakeApi) -> None:
    p = provider()
    p.non_terminated_nodes({})
    api.fail_patches = [rp.ApiError(403, "Forbidden", "no")]
    p.create_node({}, {TAG_RAY_USER_NODE_TYPE: "worker"}, 1)
    with pytest.raises(rp.ApiError):
        p.post_process()
    assert len(api.patches()) == 1


def test_safe_to_scale_waits_for_named_workers_then_clears_the_list(api: FakeApi) -> None:
    api.ray["spec"]["workersToDelete"] = ["demo-worker-a"]
    p = provider()
    p.non_terminated_nodes({})
    assert p.safe_to_scale() is False
    assert api.patches() == []
    # The operator deleted the pod (it is terminating: no longer a node).
    api.pods[1]["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    p.non_terminated_nodes({})
    assert p.safe_to_scale() is True
    assert api.patches() == [{"metadata": {"resourceVersion": "1"}, "spec": {"workersToDelete": None}}]
    assert "workersToDelete" not in api.ray["spec"]
    p.non_terminated_nodes({})
    assert p.safe_to_scale() is True
    assert len(api.patches()) == 1


def test_clearing_keeps_names_that_reappeared_after_a_conflict(api: FakeApi) -> None:
    api.ray["spec"]["workersToDelete"] = ["gone"]
    p = provider()
    p.non_terminated_nodes({})
    api.ray["spec"]["workersToDelete"] = ["gone", "demo-worker-a"]
    api.bump()
    assert p.safe_to_scale() is True
    assert api.ray["spec"]["workersToDelete"] == ["demo-worker-a"]


def test_identity_comes_from_the_config_then_the_environment(api: FakeApi, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_CLUSTER_NAMESPACE", "other")
    monkeypatch.setenv("RAY_CLUSTER_NAME", "env-name")
    p = rp.RayopNodeProvider({k: v for k, v in CONFIG.items() if k not in ("namespace", "ray_name")}, "cluster")
    assert p.ray_path == "/apis/ray.k8s.io/v1alpha1/namespaces/other/rays/env-name"
    monkeypatch.delenv("RAY_CLUSTER_NAME")
    p = rp.RayopNodeProvider({**CONFIG, "ray_name": None, "api_version": "x.io/v2", "plural": "things"}, "cluster")
    assert p.ray_path == "/apis/x.io/v2/namespaces/ns/things/cluster"


def test_the_namespace_falls_back_to_the_service_account(api: FakeApi, monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path) -> None:
    monkeypatch.delenv("RAY_CLUSTER_NAMESPACE", raising=False)
    config = {k: v for k, v in CONFIG.items() if k != "namespace"}
    monkeypatch.setattr(rp, "SERVICE_ACCOUNT_DIR", str(tmp_path))
    with pytest.raises(RuntimeError, match="no namespace"):
        rp.RayopNodeProvider(dict(config), NAME)
    (tmp_path / "namespace").write_text("from-sa\n")
    assert rp.RayopNodeProvider(dict(config), NAME).namespace == "from-sa"


def test_the_provider_config_must_turn_the_liveness_check_off(api: FakeApi) -> None:
    with pytest.raises(ValueError, match="worker_liveness_check"):
        rp.RayopNodeProvider({**CONFIG, "worker_liveness_check": True}, NAME)
    with pytest.raises(AssertionError, match="foreground_node_launch"):
        rp.RayopNodeProvider({**CONFIG, "foreground_node_launch": False}, NAME)


# -- the HTTPS client -----------------------------------------------------------------------------------------------


class Recorder(http.server.BaseHTTPRequestHandler):
    seen: list[dict[str, Any]] = []
    reply: tuple[int, bytes] = (200, b"{}")

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        Recorder.seen.append({"method": self.command, "path": self.path, "headers": dict(self.headers),
                              "body": self.rfile.read(length) if length else b""})
        status, body = Recorder.reply
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_PATCH = _handle

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    Recorder.seen = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_requests_carry_a_token_read_each_time(server: str, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("first\n")
    api = rp.KubeApi(server, ssl.create_default_context(), str(token))
    Recorder.reply = (200, b'{"items": []}')
    assert api.get("/api/v1/namespaces/ns/pods", labelSelector="ray.k8s.io/cluster=demo") == {"items": []}
    token.write_text("rotated")
    Recorder.reply = (200, b"")
    assert api.patch("/x", {"spec": {"a": 1}}) == {}
    first, second = Recorder.seen
    assert first["path"] == "/api/v1/namespaces/ns/pods?labelSelector=ray.k8s.io%2Fcluster%3Ddemo"
    assert first["headers"]["Authorization"] == "Bearer first"
    assert second["headers"]["Authorization"] == "Bearer rotated"
    assert second["headers"]["Content-Type"] == rp.MERGE_PATCH
    assert json.loads(second["body"]) == {"spec": {"a": 1}}


@pytest.mark.parametrize(
    "reply, expected",
    [
        ((409, b'{"kind": "Status", "reason": "Conflict", "message": "modified"}'), (409, "Conflict", "modified")),
        ((403, b"forbidden by policy"), (403, "", "forbidden by policy")),
        ((500, b'["not", "a", "status"]'), (500, "", '["not", "a", "status"]')),
    ],
    ids=["status", "text", "json-not-status"],
)
def test_errors_carry_status_reason_and_message(server: str, reply: tuple[int, bytes],
                                                expected: tuple[int, str, str]) -> None:
    Recorder.reply = reply
    api = rp.KubeApi(server, ssl.create_default_context())
    with pytest.raises(rp.ApiError) as e:
        api.get("/x")
    assert (e.value.status, e.value.reason, e.value.message) == expected
    assert "Authorization" not in Recorder.seen[0]["headers"]


def test_client_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(RuntimeError, match="not in a pod"):
        rp.KubeApi.from_environment({})
    monkeypatch.setattr(rp, "SERVICE_ACCOUNT_DIR", str(tmp_path))
    calls: list[str | None] = []
    real = ssl.create_default_context

    def fake_context(cafile: str | None = None) -> ssl.SSLContext:
        calls.append(cafile)
        return real()

    monkeypatch.setattr(rp.ssl, "create_default_context", fake_context)
    api = rp.KubeApi.from_environment({"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"})
    assert (api.server, api.token_file, calls[-1]) == ("https://10.96.0.1:443", str(tmp_path / "token"),
                                                        str(tmp_path / "ca.crt"))
    api = rp.KubeApi.from_environment({"KUBERNETES_SERVICE_HOST": "fd00::1"})
    assert api.server == "https://[fd00::1]:443"
    api = rp.KubeApi.from_environment({"RAYOP_API_SERVER": "https://127.0.0.1:6443/", "RAYOP_API_TOKEN_FILE": "/t"})
    assert (api.server, api.token_file, calls[-1]) == ("https://127.0.0.1:6443", "/t", None)
