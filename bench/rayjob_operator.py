"""The real operator with its API requests counted by resource, and for the RayJob benchmark its Job Submission
calls sent to a stub, on a sim-mode control plane (bench/reconcile_many.py, bench/rayjobs_many.py).

    .venv/bin/python bench/rayjob_operator.py [--job-api http://127.0.0.1:PORT] run ARGS...

runs `rayop run ARGS...` (the same parser, manager and reconcilers, see rayop.cli.build_manager) with these changes,
both outside the operator's code:

- With `--job-api`, the RayJob reconciler's Job Submission client (rayop.jobsubmit.JobSubmissionClient, unchanged) is given, for a
  dashboard address `http://<host>:<port>` the operator computed (rayop.jobplan.dashboard_address), the address
  `<job-api>/dash/<host>:<port>` instead: in sim mode no Ray runs and the head Service's DNS name does not resolve
  on the host, so every call goes to the stub (bench/jobstub.py), which records the dashboard that was meant.
- The manager's API client counts its requests by verb and resource, exported on the operator's own /metrics as
  `rayop_bench_api_requests_total{verb, resource, subresource}` (verb as the API server names it: GET of a
  collection is LIST, a watch is WATCH). The operator's `rayop_api_requests_total` only has verb and code.
"""

from __future__ import annotations

import argparse
import re
import sys
import threading
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

from prometheus_client.core import CounterMetricFamily

from rayop.cli import build_manager, make_parser, serve
from rayop.jobsubmit import JobSubmissionClient
from rayop.runtime.kube import KubeClient
from rayop.runtime.logging import configure_logging

# /api/v1[/namespaces/<ns>]/<resource>[/<name>[/<subresource>]], /apis/<group>/<version>/... likewise.
_API_PATH = re.compile(r"^/(?:api/[^/]+|apis/[^/]+/[^/]+)(?P<rest>/.*)?$")


def resource_of(method: str, path: str) -> tuple[str, str, str]:
    """(verb, resource, subresource) of a request, named as kube-apiserver's `apiserver_request_total` names them."""
    path = path.split("?", 1)[0].rstrip("/")
    m = _API_PATH.match(path)
    if m is None:
        return method, path or "/", ""
    parts = [p for p in (m["rest"] or "").split("/") if p]
    if len(parts) >= 2 and parts[0] == "namespaces" and len(parts) != 2:
        parts = parts[2:]  # namespaced: drop namespaces/<ns>, except for the namespace object itself
    resource = parts[0] if parts else ""
    name = parts[1] if len(parts) > 1 else ""
    sub = parts[2] if len(parts) > 2 else ""
    verb = "LIST" if method == "GET" and not name else method
    return verb, resource, sub


class RequestsByResource:
    """Counts a KubeClient's requests by (verb, resource, subresource); a Prometheus collector of them."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str, str]] = Counter()
        self._lock = threading.Lock()

    def wrap(self, client: KubeClient) -> None:
        request, watch = client.request, client.watch

        def counted_request(method: str, path: str, **kwargs: Any) -> Any:
            with self._lock:
                self.counts[resource_of(method, path)] += 1
            return request(method, path, **kwargs)

        def counted_watch(path: str, params: Mapping[str, Any] | None = None, **kwargs: Any) -> Iterator[Any]:
            _, resource, sub = resource_of("GET", path)
            with self._lock:
                self.counts[("WATCH", resource, sub)] += 1
            return watch(path, params, **kwargs)

        client.request = counted_request  # type: ignore[method-assign]
        client.watch = counted_watch  # type: ignore[method-assign]

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily("rayop_bench_api_requests",
                                     "Requests of the operator's API client by verb and resource (benchmark hook)",
                                     labels=["verb", "resource", "subresource"])
        with self._lock:
            for (verb, resource, sub), n in sorted(self.counts.items()):
                family.add_metric([verb, resource, sub], n)
        yield family


class StubRoutedClient(JobSubmissionClient):
    """The operator's Job Submission client, its calls sent to the stub at `job_api` with the dashboard meant."""

    def __init__(self, job_api: str) -> None:
        super().__init__()
        self.job_api = job_api.rstrip("/")

    def routed(self, address: str) -> str:
        netloc = urlsplit(address).netloc or address
        return f"{self.job_api}/dash/{netloc}"

    def get_job(self, address: str, submission_id: str) -> dict[str, Any] | None:
        return super().get_job(self.routed(address), submission_id)

    def submit(self, address: str, body: Mapping[str, Any]) -> str:
        return super().submit(self.routed(address), body)

    def stop(self, address: str, submission_id: str) -> bool:
        return super().stop(self.routed(address), submission_id)


def main(argv: list[str] | None = None) -> int:
    hooks = argparse.ArgumentParser(prog="bench/rayjob_operator.py",
                                    description="rayop run with Job Submission sent to a stub (benchmarks only)")
    hooks.add_argument("--job-api", default=None,
                       help="the stub's URL (bench/jobstub.py); without it, Job Submission is the operator's own")
    hooks.add_argument("command", nargs=argparse.REMAINDER, help="run ARGS...")
    chosen = hooks.parse_args(argv)
    args = make_parser().parse_args(chosen.command)
    if args.command != "run":
        hooks.error("only `run` can be given the hooks")
    configure_logging(args.log_format, args.log_level)
    manager = build_manager(args, submitter=StubRoutedClient(chosen.job_api) if chosen.job_api else None)
    counter = RequestsByResource()
    counter.wrap(manager.client)
    manager.metrics.registry.register(counter)
    return serve(manager)


if __name__ == "__main__":
    sys.exit(main())
