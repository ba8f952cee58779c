"""A client of Ray's Job Submission REST API (the dashboard, port 8265), as Ray 2.x documents and serves it:
`POST /api/jobs/`, `GET /api/jobs/<submission id>`, `POST /api/jobs/<submission id>/stop`.

Guarantees:
- Standard library only (`urllib`), a timeout on every request (`timeout`, default 5 s): a dashboard that does
  not answer never blocks a reconcile for longer.
- Errors are classified, never leaked as library exceptions: `DashboardError` when the dashboard cannot be asked
  (connection refused, timeout, DNS, HTTP 5xx, a body that is not JSON), `SubmissionRejected` when Ray refuses
  the request as invalid (HTTP 400, with the last line of Ray's message).
- `submit` is idempotent: Ray answers a second submission of the same submission id with 400 "... already
  exists"; that answer counts as success (the job is the one submitted before).
- `get_job` returns None for HTTP 404 (Ray has no such submission).
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

DEFAULT_TIMEOUT = 5.0


class DashboardError(Exception):
    """The dashboard could not be asked; try again later."""


class SubmissionRejected(Exception):
    """Ray refused the submission (HTTP 400)."""


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:2000] if lines else "(no message)"


class JobSubmissionClient:
    def __init__(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.timeout = timeout
        self.requests = 0

    def _call(self, method: str, url: str, body: Mapping[str, Any] | None = None) -> tuple[int, str]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(url, data=data, method=method,
                                         headers={"Content-Type": "application/json"} if data else {})
        self.requests += 1
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return int(response.status), response.read().decode(errors="replace")
        except urllib.error.HTTPError as e:
            text = e.read().decode(errors="replace") if e.fp is not None else ""
            if e.code >= 500:
                raise DashboardError(f"HTTP {e.code} from {method} {url}: {_last_line(text)}") from None
            return int(e.code), text
        except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise DashboardError(f"{method} {url}: {reason}") from None

    @staticmethod
    def _json(text: str, what: str) -> Any:
        try:
            return json.loads(text)
        except ValueError:
            raise DashboardError(f"{what}: the answer is not JSON: {text[:200]!r}") from None

    def _found(self, method: str, url: str) -> str | None:
        """The body of a 200 answer; None for a 404 (Ray has no such job); any other status raises."""
        status, text = self._call(method, url)
        if status == 404:
            return None
        if status != 200:
            raise DashboardError(f"HTTP {status} from {method} {url}: {_last_line(text)}")
        return text

    def get_job(self, address: str, submission_id: str) -> dict[str, Any] | None:
        """Ray's JobDetails of a submission, or None when Ray has no such job."""
        url = f"{address}/api/jobs/{submission_id}"
        text = self._found("GET", url)
        if text is None:
            return None
        data = self._json(text, f"GET {url}")
        if not isinstance(data, dict):
            raise DashboardError(f"GET {url}: expected an object, got {text[:200]!r}")
        return data

    def submit(self, address: str, body: Mapping[str, Any]) -> str:
        """Submit a job; return its submission id. A submission id Ray already has counts as submitted."""
        url = f"{address}/api/jobs/"
        status, text = self._call("POST", url, body)
        if status == 200:
            data = self._json(text, f"POST {url}")
            return str(data.get("submission_id") or body.get("submission_id"))
        if status == 400 and "already exists" in text:
            return str(body.get("submission_id"))
        if status == 400:
            raise SubmissionRejected(_last_line(text))
        raise DashboardError(f"HTTP {status} from POST {url}: {_last_line(text)}")

    def stop(self, address: str, submission_id: str) -> bool:
        """Ask Ray to stop a job; False when Ray has no such job or it had ended already."""
        url = f"{address}/api/jobs/{submission_id}/stop"
        text = self._found("POST", url)
        return text is not None and bool(self._json(text, f"POST {url}").get("stopped"))
