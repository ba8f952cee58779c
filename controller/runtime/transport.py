"""Keep-alive connections to one API server for requests whose whole answer is read at once.

`KubeClient.request` (every GET, create, patch, delete) goes through `Connections`, on the standard library's
`http.client`; watches, which stream, stay on urllib3 (`KubeClient.watch`). Measured on the bench's API server
(a small GET, same TLS connection reused): 284 us of client CPU per request through urllib3's pool, 167 us through
`http.client` directly, 62 us for the bytes alone: urllib3's layers above `http.client` (its retry and timeout
objects, its response wrapper and header copy) were the larger part of what the operator spent per request, and the
operator sends about eleven per `Ray` (docs/benchmarks.md).

Guarantees:
- TLS as the kubeconfig says: the server verified against its CA file (or the system's when none is named) and its
  name, or not verified at all when the kubeconfig says `insecure-skip-tls-verify`; a client certificate and key
  when given; `tls-server-name` checked instead of the host when given.
- One request per connection at a time; an idle connection is reused (last in, first out) unless the server closed
  it meanwhile (checked before each reuse, as urllib3 does) or its last answer asked to close. At most `maxsize`
  idle connections are kept; more can be open while more threads send at once.
- Nothing is sent twice: a request that fails is raised, never retried here (a retried POST of a pod with a
  generated name would be a second pod).
- Errors are urllib3's, as when urllib3 sent the requests (callers and users of `KubeClient` catch
  `urllib3.exceptions.HTTPError`): no connection is `NewConnectionError`, a failed TLS handshake `SSLError`, no
  answer in time `ReadTimeoutError`, a connection lost or an answer malformed `ProtocolError`; the standard
  library's error is the cause.
"""

from __future__ import annotations

import http.client
import ssl
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import urllib3
from urllib3.util.wait import wait_for_read

CONNECT_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    reason: str
    data: bytes
    headers: Any  # http.client.HTTPMessage: .get(name) is case-insensitive


class _TLSConnection(http.client.HTTPConnection):
    """`http.client`'s connection with TLS from `context()`, checking `server_hostname` when one is named."""

    def __init__(self, host: str, port: int, timeout: float, context: Callable[[], ssl.SSLContext],
                 server_hostname: str | None):
        super().__init__(host, port, timeout=timeout)
        self._context = context
        self._server_hostname = server_hostname

    def connect(self) -> None:
        context = self._context()  # first, so an unreadable CA or key file fails like a failed handshake
        super().connect()  # TCP, with TCP_NODELAY
        self.sock = context.wrap_socket(self.sock, server_hostname=self._server_hostname or self.host)


def ssl_context(*, verify: bool, ca_file: str | None = None, cert_file: str | None = None,
                key_file: str | None = None) -> ssl.SSLContext:
    if verify:
        context = ssl.create_default_context(cafile=ca_file or None)
    else:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if cert_file:
        context.load_cert_chain(cert_file, key_file or None)
    return context


class Connections:
    """See the module docstring."""

    def __init__(self, scheme: str, host: str, port: int | None, *,
                 context: Callable[[], ssl.SSLContext] | None = None, server_hostname: str | None = None,
                 maxsize: int = 128):
        self.scheme = scheme
        self.host = host
        self.port = port or (443 if scheme == "https" else 80)
        # Built at the first connection, as urllib3 did: a kubeconfig whose CA or key file cannot be read fails the
        # requests (an error the caller handles and logs), not the client's construction.
        self._make_context = context
        self._context: ssl.SSLContext | None = None
        self._server_hostname = server_hostname
        self._maxsize = maxsize
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def _tls_context(self) -> ssl.SSLContext:
        if self._context is None:
            assert self._make_context is not None, "https without a TLS context"
            self._context = self._make_context()
        return self._context

    def _new(self) -> http.client.HTTPConnection:
        if self.scheme == "https":
            return _TLSConnection(self.host, self.port, CONNECT_TIMEOUT_SECONDS, self._tls_context,
                                  self._server_hostname)
        return http.client.HTTPConnection(self.host, self.port, timeout=CONNECT_TIMEOUT_SECONDS)

    def _get(self) -> http.client.HTTPConnection:
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                return self._new()
            # Readable while idle means the server closed it (or sent what it should not have): not reusable.
            if conn.sock is not None and not wait_for_read(conn.sock, timeout=0.0):
                return conn
            conn.close()

    def _put(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if len(self._idle) < self._maxsize:
                self._idle.append(conn)
                return
        conn.close()

    def request(self, method: str, target: str, body: bytes | None, headers: Mapping[str, str],
                timeout: float | None) -> Answer:
        conn = self._get()
        if conn.sock is None:
            try:
                conn.connect()
            except ssl.SSLError as e:
                conn.close()
                raise urllib3.exceptions.SSLError(f"{self.host}:{self.port}: {e}") from e
            except OSError as e:
                conn.close()
                message = f"{self.host}:{self.port}: {e}"
                raise urllib3.exceptions.NewConnectionError(conn, message) from e  # type: ignore[arg-type]
        try:
            conn.sock.settimeout(timeout)
            conn.request(method, target, body=body, headers=dict(headers))
            response = conn.getresponse()
            data = response.read()
        except TimeoutError as e:
            conn.close()
            message = f"{method} {target}: no answer in {timeout} s"
            raise urllib3.exceptions.ReadTimeoutError(None, target, message) from e  # type: ignore[arg-type]
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            raise urllib3.exceptions.ProtocolError(f"{method} {target}: {e!r}", e) from e
        except BaseException:
            conn.close()
            raise
        if response.will_close:
            conn.close()
        else:
            self._put(conn)
        return Answer(response.status, response.reason, data, response.headers)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
