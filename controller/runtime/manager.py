"""The manager: shared informers, controllers (workqueue + workers + reconcile), leader election, health and
metrics on one HTTP port, and an orderly shutdown.

Contract of a reconcile function, `reconcile(key: ObjectKey) -> Result | None`:
- It is level-triggered: it gets a key, never an event, and must read the current state (from the caches) itself.
- Returning None or `Result()` is success: the key's backoff is forgotten.
- `Result(requeue_after=s)` is success plus a delayed retry in `s` seconds (backoff forgotten).
- `Result(requeue=True)` asks for a rate-limited retry without it being an error.
- With a `resync_period`, every successful reconcile of a key whose object still exists also schedules the key
  again after `resync_period` plus up to 10 % jitter (the earlier of that and a `requeue_after` wins), so every
  object is looked at at least once per period even when no event arrives.
- Raising `TerminalError` means retrying cannot help: a Warning Event is recorded on the primary object (when it
  is cached), the key's backoff is forgotten and it is not retried until something changes.
- Raising an expected error (`ApiError`, `WritesForbidden`, network errors, `ReconcileError`) is an error: a
  rate-limited retry (per-key exponential backoff combined with an overall token bucket).
- Raising anything else is a bug (a "panic"): it is caught, logged with its traceback, counted in both the
  panic and the error counters, and retried like an error. A worker thread never dies of it.
Each outcome produces one log line (`reconciled`, with controller, key, result and duration) and the
controller-runtime reconcile metrics.

Guarantees of the manager:
- Informers are shared: asking twice for the same resource and selection returns the same informer.
- Caches start at once on every replica (a standby is warm); workers start only on the leader (or at once with
  leader election off) and only after the informers their controller watches have synced.
- A key is never processed by two workers at once (the work queue's guarantee).
- With leader election on, the client's write gate is the elector's `is_leader`: a replica that is not the leader,
  or whose renewals have failed for the renew deadline, cannot write. Losing the lease stops the manager with
  exit code 1 (the process should exit and be restarted as a fresh candidate).
- `stop()` (SIGTERM in the CLI) drains: no new keys are handed out, reconciles in flight finish (up to
  `shutdown_timeout`), then the lease is released, the informers and the HTTP server stop. Exit code 0.
- `/healthz` answers 200 while the manager runs; `/readyz` answers 200 once every informer has synced, 503
  before; `/metrics` is the Prometheus exposition of this manager's registry.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import structlog
import urllib3

from rayop.runtime.events import WARNING, EventRecorder
from rayop.runtime.handlers import Mapper, Predicate, any_event, own_key
from rayop.runtime.informer import Event, Informer
from rayop.runtime.kube import JSON, ApiError, KubeClient, Resource, WritesForbidden
from rayop.runtime.leaderelection import KubeLeaseClient, LeaderElectionConfig, LeaderElector, LeaseClient
from rayop.runtime.metrics import CONTENT_TYPE, Metrics
from rayop.runtime.projection import Projection
from rayop.runtime.store import IndexFunc, ObjectKey, trim_object
from rayop.runtime.workqueue import Clock, RateLimiter, WorkQueue, jittered

log = structlog.get_logger("rayop.manager")


@dataclass(frozen=True, slots=True)
class Result:
    requeue: bool = False
    requeue_after: float | None = None


class ReconcileError(Exception):
    """An expected, retryable failure raised by a reconciler (retried with backoff, not counted as a panic)."""


class TerminalError(Exception):
    """A failure that retrying cannot fix; recorded as a Warning Event with `reason`."""

    def __init__(self, message: str, reason: str = "ReconcileFailed") -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


Reconcile = Callable[[ObjectKey], Result | None]

EXPECTED_ERRORS: tuple[type[BaseException], ...] = (
    ApiError,
    WritesForbidden,
    ReconcileError,
    OSError,
    urllib3.exceptions.HTTPError,
)


class Controller:
    """A work queue fed by informer events, drained by worker threads that call `reconcile`."""

    def __init__(
        self,
        name: str,
        reconcile: Reconcile,
        *,
        workers: int = 1,
        metrics: Metrics,
        recorder: EventRecorder | None = None,
        rate_limiter: RateLimiter[ObjectKey] | None = None,
        clock: Clock | None = None,
        resync_period: float | None = None,
    ) -> None:
        self.name = name
        # Every key of the primary informer is reconciled again at most this long (plus up to 10 % jitter) after
        # its last successful reconcile, even when no event arrives; None or 0: never.
        self.resync_period = resync_period or None
        self.reconcile = reconcile
        self.workers = max(1, workers)
        self.metrics = metrics
        self.recorder = recorder
        self.queue: WorkQueue[ObjectKey] = WorkQueue(
            name=name, rate_limiter=rate_limiter, clock=clock, **metrics.queue_hooks(name)
        )
        self.primary: Informer | None = None
        self.informers: list[Informer] = []
        self._threads: list[threading.Thread] = []
        self._active = 0
        self._active_lock = threading.Lock()
        self._m_total = {r: metrics.reconcile_total.labels(name, r) for r in ("success", "error", "requeue",
                                                                           "requeue_after")}
        self._m_errors = metrics.reconcile_errors.labels(name)
        self._m_terminal = metrics.terminal_errors.labels(name)
        self._m_panics = metrics.reconcile_panics.labels(name)
        self._m_time = metrics.reconcile_time.labels(name)
        self._m_active = metrics.active_workers.labels(name)
        metrics.add_controller(name, self.queue, self.workers)

    # -- wiring -------------------------------------------------------------------------------------------------

    def watch(self, informer: Informer, mapper: Mapper = own_key, predicate: Predicate = any_event) -> None:
        """Enqueue the keys `mapper` derives from every event of `informer` that passes `predicate`."""
        queue = self.queue

        def handler(event: Event) -> None:
            if predicate(event):
                for key in mapper(event):
                    queue.add(key)

        if informer not in self.informers:
            self.informers.append(informer)
        informer.add_handler(handler)

    def watch_primary(self, informer: Informer, predicate: Predicate = any_event) -> None:
        """Watch the controller's own kind: each object is its own key; TerminalError Events go on it."""
        self.primary = informer
        self.watch(informer, own_key, predicate)

    # -- running ------------------------------------------------------------------------------------------------

    def start(self, stop: threading.Event) -> None:
        """Start workers once every watched informer has synced (in the background)."""
        starter = threading.Thread(target=self._start_when_synced, args=(stop,), name=f"start:{self.name}",
                                   daemon=True)
        starter.start()
        self._threads.append(starter)

    def _start_when_synced(self, stop: threading.Event) -> None:
        for informer in self.informers:
            if not informer.wait_for_sync(stop=stop):
                return
        if stop.is_set() or self.queue.shutting_down:
            return
        log.info("starting workers", controller=self.name, workers=self.workers)
        for i in range(self.workers):
            thread = threading.Thread(target=self._work, name=f"worker:{self.name}:{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _work(self) -> None:
        while self.process_next():
            pass

    def process_next(self, timeout: float | None = None) -> bool:
        """Take one key and reconcile it. False when the queue shut down (or, with a timeout, was empty)."""
        key = self.queue.get(timeout)
        if key is None:
            return False
        with self._active_lock:
            self._active += 1
            self._m_active.set(self._active)
        try:
            self._reconcile_one(key)
        finally:
            self.queue.done(key)
            with self._active_lock:
                self._active -= 1
                self._m_active.set(self._active)
        return True

    def _reconcile_one(self, key: ObjectKey) -> None:
        started = time.monotonic()
        fields: dict[str, Any] = {}
        level = "info"
        try:
            result = self.reconcile(key)
        except TerminalError as e:
            outcome = "terminal"
            self._m_errors.inc()
            self._m_terminal.inc()
            self._m_total["error"].inc()
            self.queue.forget(key)
            fields = {"error": e.message, "reason": e.reason}
            level = "warning"
            self._record_terminal(key, e)
        except EXPECTED_ERRORS as e:
            outcome = "error"
            self._m_errors.inc()
            self._m_total["error"].inc()
            self.queue.add_rate_limited(key)
            fields = {"error": str(e) or type(e).__name__}
            level = "warning"
        except Exception as e:
            outcome = "panic"
            self._m_panics.inc()
            self._m_errors.inc()
            self._m_total["error"].inc()
            self.queue.add_rate_limited(key)
            fields = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
            level = "error"
        else:
            if result is not None and result.requeue_after:
                outcome = "requeue_after"
                self.queue.forget(key)
                self.queue.add_after(key, result.requeue_after)
                fields = {"requeue_after": result.requeue_after}
            elif result is not None and result.requeue:
                outcome = "requeue"
                self.queue.add_rate_limited(key)
            else:
                outcome = "success"
                self.queue.forget(key)
            self._m_total[outcome].inc()
            self._schedule_resync(key)
        duration = time.monotonic() - started
        self._m_time.observe(duration)
        getattr(log, level)(
            "reconciled", controller=self.name, key=str(key), result=outcome, duration=round(duration, 6), **fields
        )

    def _schedule_resync(self, key: ObjectKey) -> None:
        """A delayed add for the bounded resync, while the key's object still exists (an earlier pending add,
        e.g. a requeue_after, wins: the queue keeps one pending time per key)."""
        if self.resync_period is None:
            return
        if self.primary is not None and self.primary.store.get(key) is None:
            return
        self.queue.add_after(key, jittered(self.resync_period))

    def _record_terminal(self, key: ObjectKey, error: TerminalError) -> None:
        if self.recorder is None or self.primary is None:
            return
        obj = self.primary.store.get(key)
        if obj is not None:
            self.recorder.record(obj, WARNING, error.reason, error.message)

    def shutdown(self, timeout: float | None = None) -> bool:
        """Stop handing out keys, wait for reconciles in flight (up to timeout); True if they all finished."""
        drained = self.queue.shutdown(drain=True, timeout=timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return drained


class _HealthServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def parse_address(address: str) -> tuple[str, int] | None:
    """':8080' -> ('', 8080); 'host:port' -> (host, port); '' or '0' -> None (disabled)."""
    if address in ("", "0"):
        return None
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


class Manager:
    """See the module docstring."""

    def __init__(
        self,
        client: KubeClient,
        *,
        namespaces: list[str] | None = None,
        metrics_address: str | None = ":8080",
        leader_election: LeaderElectionConfig | None = None,
        lease_client: LeaseClient | None = None,
        shutdown_timeout: float = 30.0,
        min_watch_timeout: float = 300.0,
        metrics: Metrics | None = None,
    ) -> None:
        self.client = client
        self.namespaces = namespaces or None
        self.metrics = metrics or Metrics()
        self.recorder = EventRecorder(client)
        self.shutdown_timeout = shutdown_timeout
        self.min_watch_timeout = min_watch_timeout
        self.controllers: list[Controller] = []
        self.informers: dict[tuple[Resource, str | None, str | None], Informer] = {}
        self.exit_code = 0
        self._stop = threading.Event()
        self._leading_stop = threading.Event()
        self._started = False
        self._done = threading.Event()
        self._threads: list[threading.Thread] = []
        self._http: _HealthServer | None = None
        self._metrics_address = parse_address(metrics_address or "")
        self.metrics.add_client("main", client)
        self.elector: LeaderElector | None = None
        if leader_election is not None:
            lease_kube = client.clone()
            self.metrics.add_client("leader-election", lease_kube)
            leases = lease_client or KubeLeaseClient(
                lease_kube, leader_election.namespace, leader_election.name, timeout=leader_election.renew_deadline
            )
            self.elector = LeaderElector(
                leader_election,
                leases,
                on_started_leading=self._start_controllers,
                on_stopped_leading=self._stopped_leading,
                on_new_leader=lambda who: log.info("leader is", identity=who, lease=leader_election.name),
            )
            client.write_gate = self.elector.is_leader
            self.metrics.set_leader_source(f"{leader_election.namespace}/{leader_election.name}",
                                           self.elector.is_leader)

    # -- building -----------------------------------------------------------------------------------------------

    def informer(
        self,
        resource: Resource,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        transform: Callable[[JSON], JSON] | None = trim_object,
        indexers: Mapping[str, IndexFunc] | None = None,
        projection: Projection | None = None,
    ) -> Informer:
        """The shared informer for this resource and selection (created on first use, with that call's transform,
        indexers and projection)."""
        key = (resource, label_selector, field_selector)
        informer = self.informers.get(key)
        if informer is None:
            informer = Informer(
                self.client,
                resource,
                namespaces=self.namespaces,
                label_selector=label_selector,
                field_selector=field_selector,
                transform=transform,
                indexers=indexers,
                min_watch_timeout=self.min_watch_timeout,
                projection=projection,
            )
            self.informers[key] = informer
            self.metrics.add_informer(informer)
            if self._started:
                informer.start()
        return informer

    def controller(
        self,
        name: str,
        reconcile: Reconcile,
        *,
        workers: int = 1,
        rate_limiter: RateLimiter[ObjectKey] | None = None,
        resync_period: float | None = None,
    ) -> Controller:
        controller = Controller(
            name, reconcile, workers=workers, metrics=self.metrics, recorder=self.recorder, rate_limiter=rate_limiter,
            resync_period=resync_period,
        )
        self.controllers.append(controller)
        return controller

    # -- state --------------------------------------------------------------------------------------------------

    def ready(self) -> bool:
        return self._started and not self._stop.is_set() and all(i.has_synced() for i in self.informers.values())

    def healthy(self) -> bool:
        return self._started and not self._done.is_set()

    def is_leader(self) -> bool:
        return self.elector.is_leader() if self.elector is not None else self._started

    @property
    def metrics_port(self) -> int | None:
        return self._http.server_address[1] if self._http is not None else None

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # -- running ------------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start serving, caching and (when leading) reconciling; returns at once."""
        if self._started:
            return
        self._started = True
        if self._metrics_address is not None:
            self._serve_http(self._metrics_address)
        for informer in self.informers.values():
            informer.start()
        if self.elector is not None:
            elector = self.elector
            thread = threading.Thread(target=elector.run, args=(self._leading_stop,), name="leader-election",
                                      daemon=True)
            thread.start()
            self._threads.append(thread)
        else:
            self._start_controllers()
        log.info("manager started", informers=[i.name for i in self.informers.values()],
                 controllers=[c.name for c in self.controllers], metrics_port=self.metrics_port,
                 leader_election=self.elector is not None)

    def _start_controllers(self) -> None:
        if self._stop.is_set():
            return
        for controller in self.controllers:
            controller.start(self._stop)

    def _stopped_leading(self) -> None:
        if not self._stop.is_set():
            self.exit_code = 1
            log.error("leadership lost: stopping")
            self._stop.set()

    def stop(self) -> None:
        """Ask the manager to drain and stop; `wait()` does the work and returns the exit code."""
        self._stop.set()

    def wait(self, timeout: float | None = None) -> int | None:
        """Block until stopped, then shut down in order. Returns the exit code (None on timeout)."""
        if not self._stop.wait(timeout):
            return None
        self._shutdown()
        return self.exit_code

    def run(self) -> int:
        self.start()
        code = self.wait()
        assert code is not None
        return code

    def _shutdown(self) -> None:
        if self._done.is_set():
            return
        log.info("shutting down", timeout=self.shutdown_timeout)
        deadline = time.monotonic() + self.shutdown_timeout
        drained = True
        for controller in self.controllers:
            drained &= controller.shutdown(max(0.0, deadline - time.monotonic()))
        if not drained:
            log.warning("reconciles still running at shutdown deadline")
        # Events the reconciles queued still go out under our lease; only then give it up.
        if not self.recorder.flush(max(1.0, deadline - time.monotonic())):
            log.warning("events still queued at shutdown deadline")
        # Only now, with no reconcile running, give up the lease.
        self._leading_stop.set()
        for thread in self._threads:
            thread.join(max(1.0, deadline - time.monotonic()))
        for informer in self.informers.values():
            informer.stop()
        for informer in self.informers.values():
            informer.join(5.0)
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        self._done.set()
        log.info("stopped", exit_code=self.exit_code)

    # -- HTTP -----------------------------------------------------------------------------------------------------

    def _serve_http(self, address: tuple[str, int]) -> None:
        manager = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._answer(200, manager.metrics.exposition(), CONTENT_TYPE)
                elif path == "/healthz":
                    ok = manager.healthy()
                    self._answer(200 if ok else 503, b"ok\n" if ok else b"stopped\n")
                elif path == "/readyz":
                    ok = manager.ready()
                    self._answer(200 if ok else 503, b"ok\n" if ok else b"caches not synced\n")
                else:
                    self._answer(404, b"not found\n")

            def _answer(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._http = _HealthServer(address, Handler)
        thread = threading.Thread(target=self._http.serve_forever, name="http", daemon=True)
        thread.start()
