"""A stand-in for Ray's Job Submission REST API, for benchmarks on a sim-mode control plane (no real Ray there).

    .venv/bin/python bench/jobstub.py [--port 0] [--pending-seconds 1] [--run-seconds 2]

It answers the three calls the operator makes (rayop.jobsubmit), on the paths Ray serves them:

- `POST /api/jobs/` with `{"submission_id": ..., "entrypoint": ..., "metadata": ...}`: 200 `{"submission_id",
  "job_id"}`; a submission id it has already is refused with 400 "... already exists", as Ray does; a body without
  `submission_id` or `entrypoint` is refused with 400.
- `GET /api/jobs/<submission id>`: 200 with Ray's JobDetails fields (`submission_id`, `job_id`, `status`,
  `message`, `entrypoint`, `metadata`, `start_time`, `end_time`, `driver_exit_code`), 404 for an unknown id.
- `POST /api/jobs/<submission id>/stop`: 200 `{"stopped": true}` when the job was PENDING or RUNNING (it is
  STOPPED from then on), `{"stopped": false}` when it had ended; 404 for an unknown id.

A job is PENDING for `pending_seconds` after its submission, RUNNING for `run_seconds` more, then SUCCEEDED (driver
exit code 0). The state is a function of the clock (injectable), keyed by submission id; jobs never go away.

One stub serves many clusters: a path may start with `/dash/<host:port>` (the dashboard the caller meant, see
bench/rayjob_operator.py), which is recorded with each submission. Every POST of a submission is counted per
submission id, the refused duplicates included (`submissions`), so a benchmark can check that each RayJob was
submitted exactly once. `GET /stub/stats` returns the counts as JSON.
"""

from __future__ import annotations

import argparse
import json
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PENDING, RUNNING, STOPPED, SUCCEEDED = "PENDING", "RUNNING", "STOPPED", "SUCCEEDED"
TERMINAL = frozenset({STOPPED, SUCCEEDED})

_PATH = re.compile(r"^(?:/dash/(?P<dash>[^/]+))?/api/jobs/(?:(?P<sid>[^/]+)/?(?P<stop>stop)?)?/?$")


@dataclass
class StubJob:
    submission_id: str
    job_id: str
    entrypoint: str
    metadata: dict[str, str]
    dashboard: str
    submitted_at: float
    stopped_at: float | None = None


class StubJobs:
    """The stub's state: jobs by submission id and what was asked. Thread-safe."""

    def __init__(self, pending_seconds: float = 1.0, run_seconds: float = 2.0,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time) -> None:
        self.pending_seconds = pending_seconds
        self.run_seconds = run_seconds
        self.clock = clock
        self.wall = wall
        self.jobs: dict[str, StubJob] = {}
        self.submissions: Counter[str] = Counter()
        self.requests: Counter[str] = Counter()  # "POST submit", "GET job", "POST stop", "GET unknown" ...
        self._lock = threading.Lock()
        self._started = clock()
        self._wall_started = wall()

    def status(self, job: StubJob, now: float | None = None) -> str:
        now = self.clock() if now is None else now
        if job.stopped_at is not None:
            return STOPPED
        age = now - job.submitted_at
        if age < self.pending_seconds:
            return PENDING
        if age < self.pending_seconds + self.run_seconds:
            return RUNNING
        return SUCCEEDED

    def _ms(self, t: float) -> int:
        return int((self._wall_started + (t - self._started)) * 1000)

    def submit(self, body: Any, dashboard: str = "") -> tuple[int, Any]:
        with self._lock:
            self.requests["POST submit"] += 1
            if not isinstance(body, dict) or not body.get("submission_id") or not body.get("entrypoint"):
                return 400, "the stub needs submission_id and entrypoint"
            sid = str(body["submission_id"])
            self.submissions[sid] += 1
            if sid in self.jobs:
                return 400, f"a job with submission_id {sid} already exists"
            job = StubJob(sid, f"{len(self.jobs) + 1:08x}", str(body["entrypoint"]),
                          {str(k): str(v) for k, v in (body.get("metadata") or {}).items()}, dashboard,
                          self.clock())
            self.jobs[sid] = job
            return 200, {"submission_id": sid, "job_id": job.job_id}

    def details(self, sid: str) -> tuple[int, Any]:
        with self._lock:
            self.requests["GET job"] += 1
            job = self.jobs.get(sid)
            if job is None:
                return 404, f"Job {sid} does not exist"
            now = self.clock()
            status = self.status(job, now)
            end: float | None = None
            if status == STOPPED:
                end = job.stopped_at
            elif status == SUCCEEDED:
                end = job.submitted_at + self.pending_seconds + self.run_seconds
            return 200, {
                "type": "SUBMISSION",
                "submission_id": sid,
                "job_id": job.job_id if status != PENDING else None,
                "status": status,
                "message": {PENDING: "Job has not started yet.", RUNNING: "Job is currently running.",
                            STOPPED: "Job was intentionally stopped.",
                            SUCCEEDED: "Job finished successfully."}[status],
                "entrypoint": job.entrypoint,
                "metadata": dict(job.metadata),
                "start_time": self._ms(job.submitted_at),
                "end_time": self._ms(end) if end is not None else None,
                "driver_exit_code": 0 if status == SUCCEEDED else None,
            }

    def stop(self, sid: str) -> tuple[int, Any]:
        with self._lock:
            self.requests["POST stop"] += 1
            job = self.jobs.get(sid)
            if job is None:
                return 404, f"Job {sid} does not exist"
            if self.status(job) in TERMINAL:
                return 200, {"stopped": False}
            job.stopped_at = self.clock()
            return 200, {"stopped": True}

    def stats(self) -> dict[str, Any]:
        with self._lock:
            now = self.clock()
            return {
                "jobs": len(self.jobs),
                "states": dict(Counter(self.status(j, now) for j in self.jobs.values())),
                "submissions": dict(self.submissions),
                "requests": dict(self.requests),
                "by_submission": {sid: {"dashboard": j.dashboard, "metadata": dict(j.metadata)}
                                  for sid, j in self.jobs.items()},
            }


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass

    def _answer(self, code: int, payload: Any) -> None:
        data = (json.dumps(payload) if not isinstance(payload, str) else payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json" if not isinstance(payload, str) else "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            return None

    def do_GET(self) -> None:  # noqa: N802 - the base class's name
        jobs = self.server.jobs
        if self.path == "/stub/stats":
            self._answer(200, jobs.stats())
            return
        m = _PATH.match(self.path)
        if m is None or not m["sid"] or m["stop"]:
            with jobs._lock:
                jobs.requests["GET unknown"] += 1
            self._answer(404, f"no such path {self.path}")
            return
        self._answer(*jobs.details(m["sid"]))

    def do_POST(self) -> None:  # noqa: N802 - the base class's name
        jobs = self.server.jobs
        body = self._body()
        m = _PATH.match(self.path)
        if m is None or (m["sid"] and not m["stop"]):
            with jobs._lock:
                jobs.requests["POST unknown"] += 1
            self._answer(404, f"no such path {self.path}")
        elif m["stop"]:
            self._answer(*jobs.stop(m["sid"]))
        else:
            self._answer(*jobs.submit(body, m["dash"] or ""))


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], jobs: StubJobs) -> None:
        super().__init__(address, _Handler)
        self.jobs = jobs


class JobStub:
    """The stub served on 127.0.0.1 (a free port unless given) from a background thread."""

    def __init__(self, jobs: StubJobs | None = None, port: int = 0) -> None:
        self.jobs = jobs or StubJobs()
        self._server = _Server(("127.0.0.1", port), self.jobs)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name="job-stub", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--pending-seconds", type=float, default=1.0)
    parser.add_argument("--run-seconds", type=float, default=2.0)
    args = parser.parse_args()
    stub = JobStub(StubJobs(args.pending_seconds, args.run_seconds), args.port)
    print(f"job submission stub on {stub.url} (stats: {stub.url}/stub/stats)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        stub.close()


if __name__ == "__main__":
    main()
