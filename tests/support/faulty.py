"""The real operator with a crash injected, for the tests that prove a crash at any point is repaired by a restart.

    python -m tests.support.faulty [--exit-after-writes N] [--exit-after-submit] run ARGS...

runs `rayop run ARGS...` (the same parser, manager and reconcilers) with
- `--exit-after-writes N`: the Ray reconciler's writer wrapped so the process exits (code 17) right after the
  Nth write the API server accepted (a create, delete, patch or status patch; a refused one does not count);
- `--exit-after-submit`: the RayJob reconciler's Job Submission client wrapped so the process exits (code 17)
  right after Ray accepted a submission, before the status can record it.

The exit is `os._exit`: no drain, no lease release, no flush of queued Events, as a crash.
The module must be importable, so the repository root goes on PYTHONPATH (`tests/support/operator.py` does that).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from collections.abc import Callable, Mapping
from typing import Any

import structlog

from rayop.cli import build_manager, make_parser, serve
from rayop.jobsubmit import JobSubmissionClient
from rayop.reconciler import DeleteOptions, KubeWriter, Writer
from rayop.runtime.kube import KubeClient
from rayop.runtime.logging import configure_logging

log = structlog.get_logger("rayop.faulty")

EXIT_CODE = 17


class ExitAfterWrites:
    """A `rayop.reconciler.Writer` that ends the process right after the `limit`th accepted write of `inner`."""

    def __init__(self, inner: Writer, limit: int, exit: Callable[[int], object] = os._exit) -> None:
        self.inner = inner
        self.limit = limit
        self.count = 0
        self._exit = exit
        self._lock = threading.Lock()

    def _wrote(self) -> None:
        with self._lock:
            self.count += 1
            if self.count >= self.limit:
                log.warning("test hook: exiting after write", writes=self.count)
                self._exit(EXIT_CODE)

    def create(self, kind: str, namespace: str, manifest: Mapping[str, Any]) -> Mapping[str, Any]:
        created = self.inner.create(kind, namespace, manifest)
        self._wrote()
        return created

    def get(self, kind: str, namespace: str, name: str) -> Mapping[str, Any]:
        return self.inner.get(kind, namespace, name)

    def delete(self, kind: str, namespace: str, name: str, options: DeleteOptions) -> None:
        self.inner.delete(kind, namespace, name, options)
        self._wrote()

    def patch(self, kind: str, namespace: str, name: str, patch: Mapping[str, Any]) -> None:
        self.inner.patch(kind, namespace, name, patch)
        self._wrote()

    def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> str:
        made = self.inner.patch_status(namespace, name, status)
        self._wrote()
        return made


class ExitAfterSubmit(JobSubmissionClient):
    """A Job Submission client that ends the process right after Ray accepted a submission."""

    def __init__(self, exit: Callable[[int], object] = os._exit) -> None:
        super().__init__()
        self._exit = exit

    def submit(self, address: str, body: Mapping[str, Any]) -> str:
        sid = super().submit(address, body)
        log.warning("test hook: exiting after submission", submission_id=sid)
        self._exit(EXIT_CODE)
        return sid


def main(argv: list[str] | None = None) -> int:
    faults = argparse.ArgumentParser(prog="python -m tests.support.faulty",
                                     description="rayop run with a crash injected (tests only)")
    faults.add_argument("--exit-after-writes", type=int, default=None, metavar="N")
    faults.add_argument("--exit-after-submit", action="store_true")
    faults.add_argument("command", nargs=argparse.REMAINDER, help="run ARGS...")
    chosen = faults.parse_args(argv)
    args = make_parser().parse_args(chosen.command)
    if args.command != "run":
        faults.error("only `run` can be given a fault")
    configure_logging(args.log_format, args.log_level)
    limit = chosen.exit_after_writes

    def writer(client: KubeClient) -> Writer:
        return KubeWriter(client) if limit is None else ExitAfterWrites(KubeWriter(client), limit)

    submitter = ExitAfterSubmit() if chosen.exit_after_submit else None
    return serve(build_manager(args, writer, submitter))


if __name__ == "__main__":
    sys.exit(main())
