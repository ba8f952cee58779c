"""The client's answer to 429 Too Many Requests, against a local HTTP server that throttles on purpose (a fault the
local control plane does not produce on demand)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from kubernetes import client as k8s_client

from rayop.runtime.kube import THROTTLE_RETRIES, ApiError, KubeClient, dumps, loads


class Throttling(ThreadingHTTPServer):
    def __init__(self, refusals: int, retry_after: str | None) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.refusals = refusals
        self.retry_after = retry_after
        self.seen: list[tuple[str, bytes]] = []


class Handler(BaseHTTPRequestHandler):
    server: Throttling

    def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.seen.append((self.path, body))
        if self.server.refusals > 0:
            self.server.refusals -= 1
            data = json.dumps({"kind": "Status", "status": "Failure", "reason": "TooManyRequests",
                               "message": "Too many requests, please try again later.", "code": 429}).encode()
            self.send_response(429)
            if self.server.retry_after is not None:
                self.send_header("Retry-After", self.server.retry_after)
        else:
            data = body
            self.send_response(201)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


def serve(refusals: int, retry_after: str | None = "2") -> Iterator[tuple[Throttling, KubeClient, list[float]]]:
    server = Throttling(refusals, retry_after)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    configuration = k8s_client.Configuration(host=f"http://127.0.0.1:{server.server_address[1]}")
    kube = KubeClient(configuration, qps=0)
    slept: list[float] = []
    kube._sleep = slept.append
    try:
        yield server, kube, slept
    finally:
        kube.close()
        server.shutdown()
        server.server_close()


@pytest.fixture
def twice() -> Iterator[tuple[Throttling, KubeClient, list[float]]]:
    yield from serve(2)


def test_a_throttled_request_is_sent_again_after_the_servers_retry_after(
        twice: tuple[Throttling, KubeClient, list[float]]) -> None:
    server, kube, slept = twice
    made = kube.create("/api/v1/namespaces/a/pods", {"metadata": {"name": "p"}})
    assert made == {"metadata": {"name": "p"}}
    assert slept == [2.0, 2.0]
    assert [path for path, _ in server.seen] == ["/api/v1/namespaces/a/pods"] * 3
    assert len({body for _, body in server.seen}) == 1  # the same body each time
    assert kube.request_counts() == {("POST", 429): 2, ("POST", 201): 1}


def test_throttled_beyond_the_retries_raises_the_429() -> None:
    for server, kube, slept in serve(THROTTLE_RETRIES + 5, retry_after=None):
        with pytest.raises(ApiError) as raised:
            kube.create("/api/v1/namespaces/a/pods", {"metadata": {"name": "p"}})
        assert raised.value.too_many_requests
        assert len(server.seen) == THROTTLE_RETRIES + 1
        assert slept == [1.0] * THROTTLE_RETRIES  # no Retry-After: one second


def test_a_huge_retry_after_is_capped() -> None:
    for _, kube, slept in serve(1, retry_after="3600"):
        kube.create("/api/v1/namespaces/a/pods", {})
        assert slept == [10.0]


def test_loads_and_dumps_round_trip_what_json_does() -> None:
    doc = {"a": [1, 2.5, None, True, "é"], "b": {"c": {}}, "big": 123456789012345678901234567890}
    assert loads(dumps(doc)) == doc
    assert dumps({"z": 1, "a": 2}) == b'{"z":1,"a":2}', "compact, keys in their order"
    assert loads(b'{"x": 1e400}') == {"x": float("inf")}, "what msgspec refuses, json.loads decodes"
    with pytest.raises(ValueError):
        loads(b'{"truncated": ')
    with pytest.raises(TypeError):
        dumps({"x": object()})
    for number in (float("inf"), float("-inf"), float("nan")):
        with pytest.raises(ValueError):  # JSON has no such number: not sent as null
            dumps({"spec": {"a": [None, number]}})
    with pytest.raises(ValueError):
        dumps({"big": 123456789012345678901234567890, "x": float("nan")})
    assert dumps({"a": None}) == b'{"a":null}'
