"""The agent's kubelet endpoint (process mode): what the API server proxies `kubectl logs` to.

Guarantees:
- HTTPS on 127.0.0.1:<port> with a serving certificate signed by the cluster CA; clients must present a
  certificate signed by the same CA (the API server's kubelet client certificate); nothing else is authorised.
- `GET /containerLogs/{namespace}/{pod}/{container}` serves a container's log with `previous`, `tailLines`,
  `limitBytes`, `sinceSeconds`, `timestamps` and `follow` (until the container's run ends or the client leaves).
- `GET /healthz` answers ok; `/exec`, `/attach` and `/portForward` answer 501 with a pointer to
  `hack/local-cluster.sh exec`, since the streaming protocols are not implemented.
"""

from __future__ import annotations

import datetime
import logging
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, unquote, urlsplit

log = logging.getLogger("node-agent.kubelet")


def _stamp_of(line: bytes) -> float | None:
    head = line.split(b" ", 1)[0].decode(errors="replace")
    try:
        return datetime.datetime.strptime(head, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
            tzinfo=datetime.timezone.utc).timestamp()
    except ValueError:
        return None


def select_lines(lines: list[bytes], tail: int | None, since: float | None) -> list[bytes]:
    if since is not None:
        lines = [ln for ln in lines if (_stamp_of(ln) or 0) >= since]
    if tail is not None:
        lines = lines[-tail:] if tail > 0 else []
    return lines


def strip_stamp(line: bytes) -> bytes:
    return line.split(b" ", 1)[1] if b" " in line else line


def kubelet_server(runtime: Any, port: int, pki: Path) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def log_message(self, fmt: str, *args: Any) -> None:
            log.debug("kubelet: " + fmt, *args)

        def plain(self, code: int, text: str) -> None:
            data = text.encode()
            self.send_response(code)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802
            url = urlsplit(self.path)
            parts = [unquote(p) for p in url.path.strip("/").split("/")]
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            if parts == ["healthz"]:
                self.plain(200, "ok")
            elif len(parts) == 4 and parts[0] == "containerLogs":
                self.logs(parts[1], parts[2], parts[3], query)
            elif parts and parts[0] in ("exec", "attach", "portForward", "run"):
                self.plain(501, "streaming is not implemented by the rayop node agent; use "
                                "`hack/local-cluster.sh exec POD [-n NS] [-c CONTAINER] -- CMD`")
            else:
                self.plain(404, "not found")

        do_POST = do_GET  # noqa: N815

        def logs(self, ns: str, pod: str, container: str, q: dict[str, str]) -> None:
            truthy: Callable[[str], bool] = lambda k: q.get(k, "false").lower() in ("1", "true")
            try:
                path, growing = runtime.log_file(ns, pod, container, truthy("previous"))
            except KeyError as e:
                self.plain(404, str(e).strip("'\""))
                return
            except ValueError as e:
                self.plain(400, str(e))
                return
            tail = int(q["tailLines"]) if q.get("tailLines", "").lstrip("-").isdigit() else None
            limit = int(q["limitBytes"]) if q.get("limitBytes", "").isdigit() else None
            since = time.time() - int(q["sinceSeconds"]) if q.get("sinceSeconds", "").isdigit() else None
            stamps = truthy("timestamps")
            follow = truthy("follow")
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Connection", "close")
            self.end_headers()
            sent = 0

            def emit(lines: list[bytes]) -> bool:
                nonlocal sent
                data = b"".join(ln if stamps else strip_stamp(ln) for ln in lines)
                if limit is not None:
                    data = data[: max(0, limit - sent)]
                sent += len(data)
                if data:
                    self.wfile.write(data)
                    self.wfile.flush()
                return limit is None or sent < limit

            try:
                with open(path, "rb") if path.exists() else _Empty() as f:
                    content = f.read()
                    complete, _, rest = content.rpartition(b"\n")
                    lines = [ln + b"\n" for ln in complete.split(b"\n")] if complete or content[:1] == b"\n" else []
                    if not emit(select_lines(lines, tail, since)):
                        return
                    pending = rest
                    while follow:
                        chunk = f.read()
                        if chunk:
                            pending += chunk
                            complete, _, pending = pending.rpartition(b"\n")
                            if complete or chunk.startswith(b"\n"):
                                if not emit([ln + b"\n" for ln in complete.split(b"\n")]):
                                    return
                            continue
                        if not growing():
                            time.sleep(0.2)
                            tail_bytes = f.read()
                            if tail_bytes:
                                pending += tail_bytes
                                complete, _, pending = pending.rpartition(b"\n")
                                emit([ln + b"\n" for ln in complete.split(b"\n")] if complete else [])
                            return
                        time.sleep(0.2)
            except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
                return

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(pki / "kubelet.crt"), str(pki / "kubelet.key"))
    ctx.load_verify_locations(str(pki / "ca.crt"))
    ctx.verify_mode = ssl.CERT_REQUIRED
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, name="kubelet", daemon=True).start()
    return server


class _Empty:
    def __enter__(self) -> _Empty:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def read(self) -> bytes:
        return b""
