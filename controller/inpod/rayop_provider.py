"""rayop's node provider for Ray's autoscaler (v1): Ray nodes are the pods of one `Ray` object.

Loaded by Ray's `StandardAutoscaler` from the config's `provider: {type: external, module:
rayop_provider.RayopNodeProvider, namespace, ray_name, ...}` and constructed once as `RayopNodeProvider(provider_config,
cluster_name)`. Standalone: Python's standard library and `ray` only.

Guarantees:
- It never creates or deletes pods. Each autoscaler iteration it reads the `Ray` and lists the pods labelled
  `ray.k8s.io/cluster=<name>` (a consistent read, not a cache); a pod is one Ray node: its name is the node id, the
  `ray.k8s.io/node-kind` label its kind, the `ray.k8s.io/group` label its type (`head` for the head), its pod IP the
  node's IP. Status: `up-to-date` when Running and Ready, `update-failed` when Failed or Succeeded (Ray is gone),
  `pending` otherwise. Pods being deleted are not nodes any more.
- A scale request becomes one merge patch of the `Ray` guarded by its `metadata.resourceVersion`: the desired count
  of each group the autoscaler changed (`spec.desiredWorkers`) and the pods it drained (`spec.workersToDelete`). On
  a conflict it re-reads the `Ray` and tries again (3 attempts), then raises; the autoscaler logs it and retries on
  its next iteration.
- Scaling up never lowers a count the operator is still working towards (pods not created yet); scaling down writes
  exactly what the autoscaler saw minus the workers it named.
- While a named worker still exists the autoscaler's update is skipped (`safe_to_scale` is False); once all are gone
  the list is cleared (guarded the same way) and the update goes on.
- It talks to the API server with plain HTTPS: the service account's token (re-read for every request, so rotated
  tokens keep working) and CA, at KUBERNETES_SERVICE_HOST/PORT. Outside a pod (tests, debugging) RAYOP_API_SERVER,
  RAYOP_API_CA_FILE, RAYOP_API_TOKEN_FILE, RAYOP_API_CLIENT_CERT and RAYOP_API_CLIENT_KEY replace them, and tests may
  set `RayopNodeProvider.api_factory`. Needed RBAC: pods get/list in the namespace, get/patch on this `Ray` only.
"""

from __future__ import annotations

import json
import logging
import os
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from ray.autoscaler.batching_node_provider import BatchingNodeProvider, NodeData, ScaleRequest

logger = logging.getLogger(__name__)

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
DEFAULT_API_VERSION = "ray.k8s.io/v1alpha1"
DEFAULT_PLURAL = "rays"
LABEL_CLUSTER = "ray.k8s.io/cluster"
LABEL_NODE_KIND = "ray.k8s.io/node-kind"
LABEL_GROUP = "ray.k8s.io/group"
HEAD_NODE_TYPE = "head"
KIND_HEAD = "head"
KIND_WORKER = "worker"
STATUS_UP_TO_DATE = "up-to-date"
STATUS_UPDATE_FAILED = "update-failed"
STATUS_PENDING = "pending"
MERGE_PATCH = "application/merge-patch+json"
CONFLICT_ATTEMPTS = 3
REQUEST_TIMEOUT_SECONDS = 30.0

JSON = dict[str, Any]


class ApiError(Exception):
    """A non-2xx answer from the API server."""

    def __init__(self, status: int, reason: str, message: str):
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


class KubeApi:
    """A minimal JSON client for the Kubernetes API over HTTPS (urllib + ssl)."""

    def __init__(
        self,
        server: str,
        context: ssl.SSLContext,
        token_file: str | None = None,
        timeout: float = REQUEST_TIMEOUT_SECONDS,
    ):
        self.server = server.rstrip("/")
        self.context = context
        self.token_file = token_file
        self.timeout = timeout

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> KubeApi:
        """In a pod: the service account. With RAYOP_API_SERVER set: that server and the RAYOP_API_* files."""
        env = os.environ if environ is None else environ
        server = env.get("RAYOP_API_SERVER")
        if server:
            context = ssl.create_default_context(cafile=env.get("RAYOP_API_CA_FILE") or None)
            cert = env.get("RAYOP_API_CLIENT_CERT")
            if cert:
                context.load_cert_chain(cert, env.get("RAYOP_API_CLIENT_KEY") or None)
            return cls(server, context, env.get("RAYOP_API_TOKEN_FILE") or None)
        host = env.get("KUBERNETES_SERVICE_HOST")
        port = env.get("KUBERNETES_SERVICE_PORT", "443")
        if not host:
            raise RuntimeError("not in a pod (KUBERNETES_SERVICE_HOST is not set) and RAYOP_API_SERVER is not set")
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        context = ssl.create_default_context(cafile=os.path.join(SERVICE_ACCOUNT_DIR, "ca.crt"))
        return cls(f"https://{host}:{port}", context, os.path.join(SERVICE_ACCOUNT_DIR, "token"))

    def request(self, method: str, path: str, body: Any = None, content_type: str | None = None, **query: str) -> JSON:
        url = self.server + path
        if query:
            url += "?" + urllib.parse.urlencode(query)
        headers = {"Accept": "application/json"}
        if self.token_file:
            with open(self.token_file, encoding="utf-8") as f:
                headers["Authorization"] = "Bearer " + f.read().strip()
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = content_type or "application/json"
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout, context=self.context) as response:
                raw = response.read()
        except urllib.error.HTTPError as e:
            raise _api_error(e.code, e.read()) from None
        decoded: JSON = json.loads(raw) if raw else {}
        return decoded

    def get(self, path: str, **query: str) -> JSON:
        return self.request("GET", path, **query)

    def patch(self, path: str, body: Any, content_type: str = MERGE_PATCH) -> JSON:
        return self.request("PATCH", path, body, content_type)


def _api_error(status: int, raw: bytes) -> ApiError:
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if isinstance(body, dict):
        return ApiError(status, str(body.get("reason") or ""), str(body.get("message") or ""))
    return ApiError(status, "", raw.decode("utf-8", "replace")[:500])


# -- pods as Ray nodes ----------------------------------------------------------------------------------------------


def node_status(pod: Mapping[str, Any]) -> str:
    """The autoscaler's status tag for a pod."""
    status = pod.get("status") or {}
    phase = status.get("phase")
    if phase in ("Failed", "Succeeded"):
        return STATUS_UPDATE_FAILED
    if phase == "Running":
        for condition in status.get("conditions") or ():
            if condition.get("type") == "Ready" and condition.get("status") == "True":
                return STATUS_UP_TO_DATE
    return STATUS_PENDING


def node_data_from_pod(pod: Mapping[str, Any]) -> NodeData | None:
    """The Ray node a pod is, or None when it is not one (being deleted, or without kind/group labels)."""
    metadata = pod.get("metadata") or {}
    if metadata.get("deletionTimestamp"):
        return None
    labels = metadata.get("labels") or {}
    kind = labels.get(LABEL_NODE_KIND)
    if kind == KIND_HEAD:
        node_type = HEAD_NODE_TYPE
    elif kind == KIND_WORKER:
        node_type = str(labels.get(LABEL_GROUP) or "")
        if not node_type:
            logger.warning("Pod %s has no %s label; it is not a Ray node of any type.", metadata.get("name"), LABEL_GROUP)
            return None
    else:
        return None
    ip = (pod.get("status") or {}).get("podIP") or None
    return NodeData(kind=kind, type=node_type, ip=ip, status=node_status(pod))


def scale_patch(
    ray: Mapping[str, Any], request: ScaleRequest, observed: Mapping[str, int]
) -> JSON | None:
    """The `spec` changes for a scale request, or None when the `Ray` already says it.

    `observed` counts the worker pods per group the autoscaler saw this iteration; `request.desired_num_workers`
    starts from those counts plus what it launched minus what it terminated.
    """
    spec = ray.get("spec") or {}
    written = spec.get("desiredWorkers") or {}
    targets = _operator_targets(ray)
    changes: dict[str, int] = {}
    for node_type, count in sorted(request.desired_num_workers.items()):
        if node_type == HEAD_NODE_TYPE:
            continue
        seen = observed.get(node_type, 0)
        if count == seen:
            continue  # the autoscaler left this group alone
        target = max(0, count)
        if count > seen:
            # Pods the operator has yet to create will serve this demand too: never lower its target here.
            target = max(target, targets.get(node_type, 0))
        if written.get(node_type) != target:
            changes[node_type] = target
    current_names = sorted(set(spec.get("workersToDelete") or ()))
    names = sorted(set(current_names) | {str(n) for n in request.workers_to_delete})
    out: JSON = {}
    if changes:
        out["desiredWorkers"] = changes
    if names != current_names:
        out["workersToDelete"] = names
    return {"spec": out} if out else None


def _operator_targets(ray: Mapping[str, Any]) -> dict[str, int]:
    """What the operator is working towards per group: spec.desiredWorkers, else what it reported in status."""
    targets: dict[str, int] = {}
    for group in (ray.get("status") or {}).get("workerGroups") or ():
        if isinstance(group, Mapping) and isinstance(group.get("desiredWorkers"), int):
            targets[str(group.get("name"))] = group["desiredWorkers"]
    for name, count in ((ray.get("spec") or {}).get("desiredWorkers") or {}).items():
        if isinstance(count, int):
            targets[name] = count
    return targets


class RayopNodeProvider(BatchingNodeProvider):
    """Ray nodes are the pods of one `Ray`; scaling means patching that `Ray`."""

    # Tests (and embedders) may replace how the API client is made: called with the provider config.
    api_factory: ClassVar[Callable[[Mapping[str, Any]], KubeApi] | None] = None

    def __init__(self, provider_config: dict[str, Any], cluster_name: str) -> None:
        if provider_config.get("worker_liveness_check", True) is not False:
            raise ValueError("rayop's node provider needs `worker_liveness_check: false` in the provider config")
        BatchingNodeProvider.__init__(self, provider_config, cluster_name)
        self.namespace = str(provider_config.get("namespace") or os.environ.get("RAY_CLUSTER_NAMESPACE") or "")
        self.ray_name = str(provider_config.get("ray_name") or os.environ.get("RAY_CLUSTER_NAME") or cluster_name)
        if not self.namespace:
            self.namespace = _service_account_namespace()
        api_version = str(provider_config.get("api_version") or DEFAULT_API_VERSION)
        plural = str(provider_config.get("plural") or DEFAULT_PLURAL)
        self.ray_path = f"/apis/{api_version}/namespaces/{self.namespace}/{plural}/{self.ray_name}"
        self.pods_path = f"/api/v1/namespaces/{self.namespace}/pods"
        factory = type(self).api_factory
        self.api = factory(provider_config) if factory is not None else KubeApi.from_environment()
        self.ray: JSON = {}
        logger.info("rayop node provider for Ray %s/%s.", self.namespace, self.ray_name)

    # BatchingNodeProvider's two hooks.

    def get_node_data(self) -> dict[str, NodeData]:
        self.ray = self.api.get(self.ray_path)
        pods = self.api.get(self.pods_path, labelSelector=f"{LABEL_CLUSTER}={self.ray_name}")
        nodes: dict[str, NodeData] = {}
        for pod in pods.get("items") or ():
            data = node_data_from_pod(pod)
            if data is not None:
                nodes[pod["metadata"]["name"]] = data
        return nodes

    def submit_scale_request(self, scale_request: ScaleRequest) -> None:
        observed = dict(self._cur_num_workers(self.node_data_dict))
        logger.info(
            "Scale request: desired %s, delete %s (seen %s).",
            dict(scale_request.desired_num_workers),
            sorted(scale_request.workers_to_delete),
            observed,
        )
        self._patch_ray(lambda ray: scale_patch(ray, scale_request, observed))

    # Wait for the operator to delete the workers named last time.

    def safe_to_scale(self) -> bool:
        names = self.workers_to_delete()
        waiting = sorted(n for n in names if n in self.node_data_dict)
        if waiting:
            logger.info("Waiting for the operator to delete %s.", ", ".join(waiting))
            return False
        if names:
            logger.info("Workers %s are gone; clearing spec.workersToDelete.", ", ".join(sorted(names)))
            self._patch_ray(self._clear_patch)
        return True

    def workers_to_delete(self) -> list[str]:
        return [str(n) for n in (self.ray.get("spec") or {}).get("workersToDelete") or ()]

    def _clear_patch(self, ray: Mapping[str, Any]) -> JSON | None:
        names = [str(n) for n in (ray.get("spec") or {}).get("workersToDelete") or ()]
        if not names:
            return None
        remaining = sorted(n for n in names if n in self.node_data_dict)
        return {"spec": {"workersToDelete": remaining or None}}

    def _patch_ray(self, build: Callable[[Mapping[str, Any]], JSON | None]) -> None:
        """Apply `build(current Ray)` as a merge patch guarded by resourceVersion; re-read and rebuild on conflict."""
        for attempt in range(1, CONFLICT_ATTEMPTS + 1):
            patch = build(self.ray)
            if patch is None:
                return
            version = (self.ray.get("metadata") or {}).get("resourceVersion")
            body = dict(patch, metadata={"resourceVersion": version})
            logger.info("Patching Ray %s/%s: %s", self.namespace, self.ray_name, json.dumps(patch, sort_keys=True))
            try:
                self.ray = self.api.patch(self.ray_path, body)
                return
            except ApiError as e:
                if e.status != 409 or attempt == CONFLICT_ATTEMPTS:
                    raise
                logger.info("The Ray changed meanwhile (%s); reading it again.", e.message)
                self.ray = self.api.get(self.ray_path)


def _service_account_namespace() -> str:
    try:
        with open(os.path.join(SERVICE_ACCOUNT_DIR, "namespace"), encoding="utf-8") as f:
            return f.read().strip()
    except OSError:
        raise RuntimeError("the provider config names no namespace and there is no service account") from None
