"""The whole-answer transport (rayop.runtime.transport) against local sockets that misbehave on purpose: a server
that closes idle connections, one that hangs up without answering, one that answers garbage, and TLS with a
certificate for another name (faults and set-ups the local control plane does not produce on demand; the normal
path is every request of the integration suite)."""

from __future__ import annotations

import socket
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import urllib3
from kubernetes import client as k8s_client

from rayop.runtime.kube import KubeClient
from rayop.runtime.transport import Connections, ssl_context

OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


class Server:
    """Accepts connections on 127.0.0.1 and answers each request with `answer(n)` (n: the request's number, from
    0); an answer of None hangs up without answering; `close_after_answer` hangs up after answering."""

    def __init__(self, answer: Callable[[int], bytes | None], *, close_after_answer: bool = False,
                 tls: ssl.SSLContext | None = None):
        self.answer = answer
        self.close_after_answer = close_after_answer
        self.tls = tls
        self.requests: list[tuple[int, bytes]] = []  # (connection number, request head)
        self.connections = 0
        self.hung_up = threading.Semaphore(0)  # released each time the server closed a connection
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                number = self.connections
            threading.Thread(target=self._serve, args=(conn, number), daemon=True).start()

    def _serve(self, conn: socket.socket, number: int) -> None:
        try:
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
            reader = conn.makefile("rb")
            while True:
                head = b""
                while not head.endswith(b"\r\n\r\n"):
                    line = reader.readline()
                    if not line:
                        return
                    head += line
                length = next((int(h.split(b":")[1]) for h in head.split(b"\r\n")
                               if h.lower().startswith(b"content-length:")), 0)
                reader.read(length)
                with self._lock:
                    self.requests.append((number, head))
                    n = len(self.requests) - 1
                data = self.answer(n)
                if data is None:
                    return
                conn.sendall(data)
                if self.close_after_answer:
                    return
        except (OSError, ssl.SSLError):
            return
        finally:
            conn.close()
            self.hung_up.release()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    made: list[Server] = []
    yield made
    for server in made:
        server.close()


def client_for(server: Server) -> KubeClient:
    return KubeClient(k8s_client.Configuration(host=f"http://127.0.0.1:{server.port}"), qps=0)


def test_one_connection_is_kept_and_reused(servers: list[Server]) -> None:
    servers.append(server := Server(lambda n: OK))
    kube = client_for(server)
    for _ in range(5):
        assert kube.get("/api/v1/namespaces/a/pods/p") == {}
    assert server.connections == 1
    assert [number for number, _ in server.requests] == [1] * 5


def test_a_connection_the_server_closed_while_idle_is_not_reused(servers: list[Server]) -> None:
    servers.append(server := Server(lambda n: OK, close_after_answer=True))
    kube = client_for(server)
    for _ in range(3):
        assert kube.create("/api/v1/namespaces/a/pods", {"metadata": {"generateName": "p-"}}) == {}
        assert server.hung_up.acquire(timeout=5)  # closed while idle, before the next request
    # each POST reached the server once, each on a new connection: none was sent into a closed one and repeated
    assert [number for number, _ in server.requests] == [1, 2, 3]
    assert kube.request_counts() == {("POST", 200): 3}


def test_an_answer_asking_to_close_closes_the_connection(servers: list[Server]) -> None:
    closing = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}"
    servers.append(server := Server(lambda n: closing))
    kube = client_for(server)
    assert kube.get("/a") == {} and kube.get("/a") == {}
    assert [number for number, _ in server.requests] == [1, 2]


def test_a_hang_up_without_an_answer_is_raised_and_not_sent_again(servers: list[Server]) -> None:
    servers.append(server := Server(lambda n: None))
    kube = client_for(server)
    with pytest.raises(urllib3.exceptions.ProtocolError):
        kube.create("/api/v1/namespaces/a/pods", {"metadata": {"generateName": "p-"}})
    assert len(server.requests) == 1
    assert kube.request_counts() == {("POST", 0): 1}


def test_a_malformed_answer_is_a_protocol_error(servers: list[Server]) -> None:
    servers.append(server := Server(lambda n: b"HTTP/1.1 2x0 Okay\r\n\r\n" if n == 0 else OK))
    kube = client_for(server)
    with pytest.raises(urllib3.exceptions.ProtocolError):
        kube.get("/a")
    assert kube.get("/a") == {}  # the next request is sent on a new connection
    assert server.connections == 2


def test_no_server_is_a_connection_error() -> None:
    port = socket.create_server(("127.0.0.1", 0))
    address = port.getsockname()[1]
    port.close()  # nothing listens there now
    kube = KubeClient(k8s_client.Configuration(host=f"http://127.0.0.1:{address}"), qps=0)
    with pytest.raises(urllib3.exceptions.NewConnectionError):
        kube.get("/a")
    assert kube.request_counts() == {("GET", 0): 1}


def test_a_read_timeout_is_raised(servers: list[Server]) -> None:
    hold = threading.Event()
    servers.append(server := Server(lambda n: OK if hold.wait(5) else None))
    kube = client_for(server)
    with pytest.raises(urllib3.exceptions.ReadTimeoutError):
        kube.request("GET", "/a", timeout=0.2)
    hold.set()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for the name kube.test (not for 127.0.0.1)."""
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "2", "-subj", "/CN=kube.test", "-addext", "subjectAltName=DNS:kube.test",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


def tls_server(certificate: tuple[Path, Path]) -> Server:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(certificate[0]), str(certificate[1]))
    return Server(lambda n: OK, tls=context)


def test_tls_checks_the_named_server_name(certificate: tuple[Path, Path], servers: list[Server]) -> None:
    servers.append(server := tls_server(certificate))
    ca = str(certificate[0])
    named = Connections("https", "127.0.0.1", server.port, server_hostname="kube.test",
                        context=lambda: ssl_context(verify=True, ca_file=ca))
    assert named.request("GET", "/a", None, {}, 5).status == 200
    by_address = Connections("https", "127.0.0.1", server.port, context=lambda: ssl_context(verify=True, ca_file=ca))
    with pytest.raises(urllib3.exceptions.SSLError, match="CERTIFICATE_VERIFY_FAILED"):
        by_address.request("GET", "/a", None, {}, 5)
    unverified = Connections("https", "127.0.0.1", server.port, context=lambda: ssl_context(verify=False))
    assert unverified.request("GET", "/a", None, {}, 5).status == 200


def test_tls_settings_come_from_the_configuration(certificate: tuple[Path, Path], servers: list[Server]) -> None:
    servers.append(server := tls_server(certificate))
    configuration = k8s_client.Configuration(host=f"https://127.0.0.1:{server.port}")
    configuration.ssl_ca_cert = str(certificate[0])
    with pytest.raises(urllib3.exceptions.SSLError, match="CERTIFICATE_VERIFY_FAILED"):
        KubeClient(configuration, qps=0).get("/a")
    configuration.tls_server_name = "kube.test"
    assert KubeClient(configuration, qps=0).get("/a") == {}
    configuration.tls_server_name = None
    configuration.verify_ssl = False
    assert KubeClient(configuration, qps=0).get("/a") == {}


def test_an_unreadable_ca_file_fails_the_requests_not_the_client(certificate: tuple[Path, Path],
                                                                  servers: list[Server]) -> None:
    servers.append(server := tls_server(certificate))
    configuration = k8s_client.Configuration(host=f"https://127.0.0.1:{server.port}")
    configuration.ssl_ca_cert = str(certificate[0].parent / "missing-ca.pem")
    kube = KubeClient(configuration, qps=0)
    with pytest.raises(urllib3.exceptions.HTTPError, match="missing-ca.pem|No such file"):
        kube.get("/a")
    assert kube.request_counts() == {("GET", 0): 1}
