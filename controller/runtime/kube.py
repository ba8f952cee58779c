"""A lean Kubernetes REST client that speaks raw JSON.

Guarantees:
- Configuration (kubeconfig, in-cluster service account) is loaded by the official `kubernetes` package's loaders
  (imported without its generated API and models: `official_config_loaders`); requests go straight to the server
  on keep-alive connections (`rayop.runtime.transport`, on the standard library's http.client; watches on one
  urllib3 pool) and return plain `dict`s decoded by `loads`: msgspec's JSON decoder, about
  twice as fast as `json.loads` and sharing one copy of most short dict keys, with `json.loads` for what msgspec
  refuses (e.g. a number beyond 64 bits). No model objects are built, so a 2,000-pod list costs what its JSON
  costs.
- Every non-2xx answer raises `ApiError` carrying the HTTP status, the Status reason and the server's message.
- Requests are paced by a token bucket (`qps`, `burst`) shared by all threads using the client, like client-go's
  default rate limiter; `qps <= 0` turns pacing off. A 429 (the server's priority and fairness, or its in-flight
  limit, did not take the request) is sent again after the server's Retry-After, up to `THROTTLE_RETRIES` times,
  before it is raised: the server sets the pace when it is the bottleneck.
- In-cluster tokens are re-read through the official configuration's refresh hook, so bound service-account
  tokens that rotate keep working.
- `watch()` yields decoded watch events line by line; it ends when the server closes the stream. `on_open`
  receives the open response so another thread can end a watch at once (`abort_response`).
- An optional `write_gate` is asked before every request that is not a GET; when it answers False the request is
  not sent and `WritesForbidden` is raised. Leader election uses it so a replica that lost (or never had) the
  lease cannot write.
- `clone()` gives an independent client (own pool, own QPS bucket, own counters) on the same configuration.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import msgspec
import urllib3

from rayop.runtime.transport import Connections, ssl_context

JSON = dict[str, Any]

_decoder = msgspec.json.Decoder()


def loads(raw: bytes | str) -> Any:
    """Decoded JSON, as `json.loads` gives it; raises ValueError on malformed input."""
    try:
        return _decoder.decode(raw)
    except msgspec.DecodeError:
        return json.loads(raw)  # e.g. an integer beyond 64 bits or 1e400, which msgspec refuses and json does not


_encoder = msgspec.json.Encoder()


def dumps(body: Any) -> bytes:
    """Compact JSON bytes of `body`, keys in their order. Raises ValueError for a NaN or an infinity, which JSON
    cannot say (msgspec would write `null`, and the server would store something the caller did not send: a spec
    of -inf became an empty spec), and TypeError for what is not a JSON value."""
    try:
        out = _encoder.encode(body)
    except (TypeError, OverflowError):
        return json.dumps(body, separators=(",", ":"), allow_nan=False).encode()  # e.g. an integer beyond 64 bits
    if b"null" in out:  # a None, or a float msgspec wrote as null: json says which (ValueError for the float)
        json.dumps(body, allow_nan=False)
    return out

CONTENT_JSON = "application/json"
# Asks the API server to answer a write with the object's metadata only (the server's own PartialObjectMetadata
# transform): a caller that only needs the name or resourceVersion of what it wrote does not download, decode and
# have the server encode a whole pod or ConfigMap. JSON stays acceptable, so a server without it answers in full.
ACCEPT_METADATA = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json"
CONTENT_MERGE_PATCH = "application/merge-patch+json"
CONTENT_STRATEGIC_PATCH = "application/strategic-merge-patch+json"
CONTENT_JSON_PATCH = "application/json-patch+json"
CONTENT_APPLY_PATCH = "application/apply-patch+yaml"


class ApiError(Exception):
    """A non-2xx answer from the API server."""

    def __init__(self, status: int, reason: str, message: str, body: JSON | None = None):
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.body = body or {}

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        return self.status == 409

    @property
    def already_exists(self) -> bool:
        return self.status == 409 and self.reason == "AlreadyExists"

    @property
    def gone(self) -> bool:
        return self.status == 410

    @property
    def namespace_terminating(self) -> bool:
        """A create refused because its namespace is being deleted: the NamespaceLifecycle admission's cause (a
        StatusCause, whose type is serialized as `reason`)."""
        causes = (self.body.get("details") or {}).get("causes") or []
        return self.status == 403 and any(isinstance(c, dict) and c.get("reason") == "NamespaceTerminating"
                                          for c in causes)

    @property
    def too_many_requests(self) -> bool:
        return self.status == 429

    @property
    def retry_after(self) -> float | None:
        details = self.body.get("details") or {}
        seconds = details.get("retryAfterSeconds")
        return float(seconds) if seconds else None


class WritesForbidden(RuntimeError):
    """A write was refused locally because the client's write gate is closed (e.g. leadership lost)."""


class TokenBucket:
    """Allows `qps` requests per second on average with bursts of `burst`; thread-safe."""

    def __init__(self, qps: float, burst: int, clock: Any = time.monotonic, sleep: Any = time.sleep):
        self.qps = qps
        self.burst = max(1, burst)
        self._tokens = float(self.burst)
        self._clock = clock
        self._sleep = sleep
        self._last = clock()
        self._lock = threading.Lock()

    def reserve(self) -> float:
        """Take one token and return how long the caller must wait before using it."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.qps)
            self._last = now
            self._tokens -= 1.0
            if self._tokens >= 0:
                return 0.0
            return -self._tokens / self.qps

    def take(self) -> None:
        if self.qps <= 0:
            return
        wait = self.reserve()
        if wait > 0:
            self._sleep(wait)


# A request answered 429 (Too Many Requests) is sent again this many times, after the server's Retry-After (at most
# this long each; 1 s when it names none), before the 429 is raised like any other refusal.
THROTTLE_RETRIES = 5
THROTTLE_WAIT_MAX_SECONDS = 10.0


def _retry_after_seconds(value: str | None) -> float:
    try:
        return max(0.0, float(value)) if value else 1.0
    except ValueError:
        return 1.0  # an HTTP date: not sent by the API server


def _message_of(status: int, raw: bytes) -> tuple[str, str, JSON]:
    try:
        body = loads(raw)
    except ValueError:
        return "", raw.decode("utf-8", "replace")[:500], {}
    if isinstance(body, dict):
        return str(body.get("reason", "")), str(body.get("message", "")), body
    return "", str(body)[:500], {}


def official_config_loaders() -> tuple[type, Any]:
    """The official package's `Configuration` class and its `kubernetes.config` module (kubeconfig and in-cluster
    loaders: exec plugins, auth providers, token refresh hooks), imported without its generated API classes and
    pydantic models.

    `import kubernetes.config` runs the package's `__init__`, which imports `kubernetes.client` and with it 847
    model modules (24 MiB of the operator's memory, 40% of an idle operator's RSS) that this client never uses. The
    loaders need only `kubernetes.client.configuration` (and `ApiClient`, to refresh an OIDC token): while they are
    imported, `kubernetes` and `kubernetes.client` are module objects made from their own specs but not executed,
    then taken out of `sys.modules` again, so a later `import kubernetes` (a test, a library) runs the real package
    and finds the same loaders and the same `Configuration` class. When the package was imported already, or its
    layout is not the expected one, it is imported as usual."""
    import importlib
    import importlib.machinery
    import importlib.util
    import sys

    def plain() -> tuple[type, Any]:
        from kubernetes import client, config

        return client.Configuration, config

    if "kubernetes" in sys.modules:
        return plain()
    package_spec = importlib.util.find_spec("kubernetes")
    locations = package_spec.submodule_search_locations if package_spec is not None else None
    client_spec = importlib.machinery.PathFinder.find_spec("kubernetes.client", locations) if locations else None
    if package_spec is None or client_spec is None:
        return plain()
    shells = {"kubernetes": importlib.util.module_from_spec(package_spec),
              "kubernetes.client": importlib.util.module_from_spec(client_spec)}
    sys.modules.update(shells)
    loaders: Any = None
    try:
        configuration = importlib.import_module("kubernetes.client.configuration").Configuration

        class ApiClient:  # the real one (and the models) only when an OIDC token is refreshed
            def __new__(cls, *args: Any, **kwargs: Any) -> Any:
                from kubernetes.client.api_client import ApiClient as real

                return real(*args, **kwargs)

        shells["kubernetes.client"].Configuration = configuration  # type: ignore[attr-defined]
        shells["kubernetes.client"].ApiClient = ApiClient  # type: ignore[attr-defined]
        loaders = importlib.import_module("kubernetes.config")
    except (ImportError, AttributeError):
        pass
    finally:
        for name, shell in shells.items():
            if sys.modules.get(name) is shell:
                del sys.modules[name]
    if loaders is None:  # another layout of the package: the plain import
        return plain()
    return configuration, loaders


class KubeClient:
    """A thread-safe client for the Kubernetes REST API returning decoded JSON."""

    def __init__(
        self,
        configuration: Any,
        *,
        qps: float = 50.0,
        burst: int = 100,
        user_agent: str = "rayop",
        pool_maxsize: int = 128,
    ):
        self.configuration = configuration
        self.host: str = str(configuration.host).rstrip("/")
        self.user_agent = user_agent
        self.bucket = TokenBucket(qps, burst)
        self.requests: Counter[tuple[str, int]] = Counter()
        self._requests_lock = threading.Lock()
        self.write_gate: Callable[[], bool] | None = None
        self.throttle_retries = THROTTLE_RETRIES
        self._sleep: Callable[[float], None] = time.sleep
        self._init_kwargs = {"qps": qps, "burst": burst, "user_agent": user_agent, "pool_maxsize": pool_maxsize}
        # Every watch holds a connection while it runs (one per informer and watched namespace), so the pool keeps
        # up to `pool_maxsize` of them alive; it is a cap, nothing is opened in advance.
        kwargs: dict[str, Any] = {"maxsize": pool_maxsize, "block": False}
        # One connection pool for the one server (not a PoolManager: it parsed every URL and looked its pool up
        # again, 4% of the operator's CPU in bench/); requests carry the path only, after the server's own path
        # prefix if its URL has one (e.g. a proxy's /k8s/clusters/<id>).
        url = urllib3.util.parse_url(self.host)
        self._base = (url.path or "").rstrip("/")
        scheme = url.scheme or "https"
        origin = f"{scheme}://{url.netloc}"
        host = url.host or ""
        if url.scheme == "http":
            self._pool: urllib3.HTTPConnectionPool = urllib3.connection_from_url(origin, **kwargs)
            self._conns = Connections("http", host, url.port, maxsize=pool_maxsize)
            return
        if configuration.verify_ssl:
            kwargs["cert_reqs"] = "CERT_REQUIRED"
            if configuration.ssl_ca_cert:
                kwargs["ca_certs"] = configuration.ssl_ca_cert
        else:
            kwargs["cert_reqs"] = "CERT_NONE"
        if configuration.cert_file:
            kwargs["cert_file"] = configuration.cert_file
        if configuration.key_file:
            kwargs["key_file"] = configuration.key_file
        server_name = getattr(configuration, "tls_server_name", None) or None
        if server_name:
            kwargs["server_hostname"] = server_name
        self._pool = urllib3.connection_from_url(origin, **kwargs)
        # Whole-answer requests on http.client (rayop.runtime.transport), same TLS settings; watches on the pool.
        verify, ca, cert, key = (bool(configuration.verify_ssl), configuration.ssl_ca_cert, configuration.cert_file,
                                 configuration.key_file)
        self._conns = Connections(scheme, host, url.port,
                                  context=lambda: ssl_context(verify=verify, ca_file=ca, cert_file=cert, key_file=key),
                                  server_hostname=server_name,
                                  maxsize=pool_maxsize)

    # -- construction -------------------------------------------------------------------------------------------

    @classmethod
    def load(cls, kubeconfig: str | None = None, context: str | None = None, **kwargs: Any) -> KubeClient:
        """In-cluster config when running in a pod and no kubeconfig is named, else the kubeconfig."""
        import os

        configuration_class, k8s_config = official_config_loaders()
        configuration = configuration_class()
        if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST") and not os.environ.get("KUBECONFIG"):
            k8s_config.load_incluster_config(client_configuration=configuration)
        else:
            k8s_config.load_kube_config(
                config_file=kubeconfig, context=context, client_configuration=configuration
            )
        return cls(configuration, **kwargs)

    def clone(self, **overrides: Any) -> KubeClient:
        """A new client on the same configuration, with its own pool, QPS bucket and request counters."""
        kwargs: dict[str, Any] = dict(self._init_kwargs)
        kwargs.update(overrides)
        return KubeClient(self.configuration, **kwargs)

    # -- low level ----------------------------------------------------------------------------------------------

    def _headers(self, content_type: str | None, accept: str = CONTENT_JSON) -> dict[str, str]:
        headers = {"Accept": accept, "User-Agent": self.user_agent}
        if content_type:
            headers["Content-Type"] = content_type
        auth = self.configuration.auth_settings().get("BearerToken")
        if auth and auth.get("value"):
            headers["Authorization"] = str(auth["value"])
        return headers

    def url(self, path: str, params: Mapping[str, Any] | None = None) -> str:
        query = {k: _query_value(v) for k, v in (params or {}).items() if v is not None}
        return self._base + path + ("?" + urlencode(query) if query else "")

    def _count(self, method: str, status: int) -> None:
        with self._requests_lock:
            self.requests[(method, status)] += 1

    def request_counts(self) -> dict[tuple[str, int], int]:
        """Requests sent so far by (verb, HTTP status); status 0 means no answer (connection error)."""
        with self._requests_lock:
            return dict(self.requests)

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
        content_type: str | None = None,
        timeout: float | None = 60.0,
        accept: str = CONTENT_JSON,
        decode: Callable[[bytes], Any] | None = None,
    ) -> Any:
        """Send one request and return the decoded JSON answer (None for an empty body); `decode` replaces `loads`
        for a 2xx answer (e.g. `Projection.page`)."""
        if method != "GET" and self.write_gate is not None and not self.write_gate():
            raise WritesForbidden(f"{method} {path}: writes are not allowed (not the leader)")
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else dumps(body)
            content_type = content_type or CONTENT_JSON
        for attempt in range(self.throttle_retries + 1):
            self.bucket.take()
            try:
                response = self._conns.request(method, self.url(path, params), data,
                                               self._headers(content_type, accept), timeout)
            except (urllib3.exceptions.HTTPError, OSError):
                self._count(method, 0)
                raise
            self._count(method, response.status)
            if response.status != 429 or attempt == self.throttle_retries:
                break
            # 429: the API server (priority and fairness, or max-inflight) did not take the request; it says when
            # to try again. Waiting here is the adaptive part of the client's rate: every request of this client
            # shares the bucket, and the server's answer, not a fixed limit, sets the pace.
            self._sleep(min(_retry_after_seconds(response.headers.get("Retry-After")), THROTTLE_WAIT_MAX_SECONDS))
        if response.status >= 300:
            reason, message, decoded = _message_of(response.status, response.data)
            raise ApiError(response.status, reason or response.reason or "", message, decoded)
        if not response.data:
            return None
        return (decode or loads)(response.data)

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params)

    def create(self, path: str, body: JSON, *, metadata_only: bool = False, **params: Any) -> Any:
        """POST; with `metadata_only` the answer is the created object's kind, apiVersion and metadata."""
        return self.request("POST", path, params=params, body=body,
                            accept=ACCEPT_METADATA if metadata_only else CONTENT_JSON)

    def replace(self, path: str, body: JSON, **params: Any) -> Any:
        return self.request("PUT", path, params=params, body=body)

    def patch(self, path: str, body: Any, content_type: str = CONTENT_MERGE_PATCH, *, metadata_only: bool = False,
              **params: Any) -> Any:
        """PATCH; with `metadata_only` the answer is the patched object's kind, apiVersion and metadata."""
        return self.request("PATCH", path, params=params, body=body, content_type=content_type,
                            accept=ACCEPT_METADATA if metadata_only else CONTENT_JSON)

    def delete(self, path: str, body: JSON | None = None, **params: Any) -> Any:
        return self.request("DELETE", path, params=params, body=body)

    def watch(
        self,
        path: str,
        params: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
        on_open: Callable[[Any], None] | None = None,
        decode_event: Callable[[bytes], JSON] | None = None,
    ) -> Iterator[JSON]:
        """Stream watch events (`{"type": ..., "object": {...}}`) until the server ends the watch.

        `timeout` bounds the wait for each chunk; pass the server-side `timeoutSeconds` in `params` to bound the
        whole watch. A 410 inside the stream is raised as `ApiError(410)`. `decode_event` replaces `loads` for each
        event line (e.g. `Projection.event`).
        """
        self.bucket.take()
        query = dict(params or {})
        query["watch"] = "true"
        response = self._pool.request(
            "GET",
            self.url(path, query),
            headers=self._headers(None),
            timeout=urllib3.Timeout(connect=10.0, read=timeout),
            retries=False,
            preload_content=False,
        )
        self._count("WATCH", response.status)
        if on_open is not None:
            on_open(response)
        try:
            if response.status >= 300:
                reason, message, decoded = _message_of(response.status, response.read())
                raise ApiError(response.status, reason or response.reason or "", message, decoded)
            buffer = b""
            for chunk in response.stream(64 * 1024, decode_content=True):
                if buffer:
                    chunk = buffer + chunk
                lines = chunk.split(b"\n")
                buffer = lines.pop()
                for line in lines:
                    if line.strip():
                        yield _decode_event(line, decode_event)
            if buffer.strip():
                yield _decode_event(buffer, decode_event)
        finally:
            response.release_conn()
            response.close()

    def close(self) -> None:
        self._conns.close()
        self._pool.close()


def abort_response(response: Any) -> None:
    """End a streaming response from another thread: the blocked reader sees end-of-stream or an error."""
    try:
        shutdown = getattr(response, "shutdown", None)
        if shutdown is not None:
            shutdown()
        else:  # pragma: no cover - urllib3 < 2.3
            response.close()
    except Exception:  # pragma: no cover - best effort
        pass


def _decode_event(line: bytes, decode: Callable[[bytes], JSON] | None = None) -> JSON:
    event = (decode or loads)(line)
    if event.get("type") == "ERROR":
        status = event.get("object") or {}
        code = int(status.get("code") or 500)
        raise ApiError(code, str(status.get("reason", "")), str(status.get("message", "")), status)
    return event


def _query_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def collection_path(
    *, group: str = "", version: str = "v1", plural: str, namespace: str | None = None
) -> str:
    """The REST path of a collection: /api/v1/namespaces/ns/pods or /apis/g/v/namespaces/ns/plural."""
    base = f"/api/{version}" if not group else f"/apis/{group}/{version}"
    if namespace:
        base += f"/namespaces/{quote(namespace, safe='')}"
    return f"{base}/{plural}"


def object_path(
    *, group: str = "", version: str = "v1", plural: str, namespace: str | None = None, name: str
) -> str:
    return collection_path(group=group, version=version, plural=plural, namespace=namespace) + "/" + quote(
        name, safe=""
    )


@dataclass(frozen=True)
class Resource:
    """A kind of object the API serves: where its collection lives and what it is called."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def collection(self, namespace: str | None = None) -> str:
        ns = namespace if self.namespaced else None
        return collection_path(group=self.group, version=self.version, plural=self.plural, namespace=ns)

    def object(self, namespace: str | None, name: str) -> str:
        ns = namespace if self.namespaced else None
        return object_path(group=self.group, version=self.version, plural=self.plural, namespace=ns, name=name)

    def __str__(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural
