"""Prometheus metrics for the runtime, one registry per Manager.

Guarantees:
- Reconcile and workqueue series carry the names and labels controller-runtime uses, so existing dashboards
  work: `controller_runtime_reconcile_total{controller,result}` (result: success, error, requeue,
  requeue_after), `controller_runtime_reconcile_errors_total`, `controller_runtime_terminal_reconcile_errors_total`,
  `controller_runtime_reconcile_panics_total`, `controller_runtime_reconcile_time_seconds`,
  `controller_runtime_max_concurrent_reconciles`, `controller_runtime_active_workers`, and `workqueue_depth`,
  `workqueue_adds_total`, `workqueue_queue_duration_seconds`, `workqueue_work_duration_seconds`,
  `workqueue_retries_total`, `workqueue_unfinished_work_seconds`, `workqueue_longest_running_processor_seconds`
  (labels `controller`, `name`).
- Domain series are prefixed `rayop_`: API requests by client, verb and code; objects cached, events and lists per
  informer; leader status. They are read from plain counters at scrape time, so the hot paths pay nothing.
- Nothing is registered in prometheus-client's global registry: several managers can live in one process.
- Text sources (`add_text_source`) add series written directly in the text format, computed at scrape time, after
  the registry's: for families with one series per object (rayop.clustermetrics), where prometheus-client's
  generic path costs most of the scrape.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from rayop.runtime.informer import Informer
from rayop.runtime.kube import KubeClient
from rayop.runtime.workqueue import WorkQueue

RECONCILE_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0,
    1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 15.0, 20.0, 25.0, 30.0,
    40.0, 50.0, 60.0,
)
QUEUE_BUCKETS = tuple(1e-8 * 10**i for i in range(12))

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """The metric objects of one Manager and the things read at scrape time."""

    def __init__(self, registry: CollectorRegistry | None = None, *, process: bool = True) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.reconcile_total = Counter(
            "controller_runtime_reconcile_total", "Total number of reconciliations per controller",
            ["controller", "result"], registry=r,
        )
        self.reconcile_errors = Counter(
            "controller_runtime_reconcile_errors_total", "Total number of reconciliation errors per controller",
            ["controller"], registry=r,
        )
        self.terminal_errors = Counter(
            "controller_runtime_terminal_reconcile_errors_total",
            "Total number of terminal reconciliation errors per controller", ["controller"], registry=r,
        )
        self.reconcile_panics = Counter(
            "controller_runtime_reconcile_panics_total", "Total number of reconciliation panics per controller",
            ["controller"], registry=r,
        )
        self.reconcile_time = Histogram(
            "controller_runtime_reconcile_time_seconds", "Length of time per reconciliation per controller",
            ["controller"], buckets=RECONCILE_BUCKETS, registry=r,
        )
        self.max_concurrent = Gauge(
            "controller_runtime_max_concurrent_reconciles", "Maximum number of concurrent reconciles per controller",
            ["controller"], registry=r,
        )
        self.active_workers = Gauge(
            "controller_runtime_active_workers", "Number of currently used workers per controller",
            ["controller"], registry=r,
        )
        self.queue_adds = Counter(
            "workqueue_adds_total", "Total number of adds handled by workqueue", ["controller", "name"], registry=r
        )
        self.queue_latency = Histogram(
            "workqueue_queue_duration_seconds", "How long in seconds an item stays in workqueue before being requested",
            ["controller", "name"], buckets=QUEUE_BUCKETS, registry=r,
        )
        self.work_duration = Histogram(
            "workqueue_work_duration_seconds", "How long in seconds processing an item from workqueue takes",
            ["controller", "name"], buckets=QUEUE_BUCKETS, registry=r,
        )
        self.queue_retries = Counter(
            "workqueue_retries_total", "Total number of retries handled by workqueue", ["controller", "name"],
            registry=r,
        )
        self._text_sources: list[Callable[[], str]] = []
        self._scraped = _ScrapeTimeCollector()
        r.register(self._scraped)
        if process:
            ProcessCollector(registry=r)

    # -- wiring -------------------------------------------------------------------------------------------------

    def queue_hooks(self, controller: str) -> dict[str, Any]:
        """Keyword arguments for `WorkQueue(...)` that feed this controller's workqueue series."""
        adds = self.queue_adds.labels(controller, controller)
        latency = self.queue_latency.labels(controller, controller)
        work = self.work_duration.labels(controller, controller)
        retries = self.queue_retries.labels(controller, controller)
        return {
            "on_add": lambda key: adds.inc(),
            "on_get": lambda key, waited: latency.observe(waited),
            "on_done": lambda key, took: work.observe(took),
            "on_retry": lambda key: retries.inc(),
        }

    def add_controller(self, controller: str, queue: WorkQueue[Any], workers: int) -> None:
        self.max_concurrent.labels(controller).set(workers)
        self.active_workers.labels(controller).set(0)
        for result in ("success", "error", "requeue", "requeue_after"):
            self.reconcile_total.labels(controller, result)
        self.reconcile_errors.labels(controller)
        self.terminal_errors.labels(controller)
        self.reconcile_panics.labels(controller)
        self._scraped.queues[controller] = queue

    def add_client(self, name: str, client: KubeClient) -> None:
        self._scraped.clients[name] = client

    def add_informer(self, informer: Informer) -> None:
        self._scraped.informers.append(informer)

    def set_leader_source(self, lease: str, is_leader: Any) -> None:
        self._scraped.leader = (lease, is_leader)

    def add_text_source(self, source: Callable[[], str]) -> None:
        """`source()` returns whole families in the text format (HELP, TYPE and samples), names not in the
        registry; it is called on every scrape."""
        self._text_sources.append(source)

    # -- exposition ---------------------------------------------------------------------------------------------

    def exposition(self) -> bytes:
        text = generate_latest(self.registry)
        for source in self._text_sources:
            text += source().encode()
        return text


class _ScrapeTimeCollector:
    """Series computed when scraped, from counters the runtime keeps anyway."""

    def __init__(self) -> None:
        self.queues: dict[str, WorkQueue[Any]] = {}
        self.clients: dict[str, KubeClient] = {}
        self.informers: list[Informer] = []
        self.leader: tuple[str, Any] | None = None

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily("workqueue_depth", "Current depth of workqueue", labels=["controller", "name"])
        unfinished = GaugeMetricFamily(
            "workqueue_unfinished_work_seconds",
            "How many seconds of work has been done that is in progress and hasn't been observed by "
            "work_duration.", labels=["controller", "name"],
        )
        longest = GaugeMetricFamily(
            "workqueue_longest_running_processor_seconds",
            "How many seconds has the longest running processor for workqueue been running.",
            labels=["controller", "name"],
        )
        for name, queue in list(self.queues.items()):
            depth.add_metric([name, name], len(queue))
            unfinished.add_metric([name, name], queue.unfinished_work_seconds())
            longest.add_metric([name, name], queue.longest_running_seconds())
        yield depth
        yield unfinished
        yield longest

        requests = CounterMetricFamily(
            "rayop_api_requests", "Requests sent to the API server by client, verb and HTTP code (0: no answer)",
            labels=["client", "verb", "code"],
        )
        for client_name, client in list(self.clients.items()):
            counts = client.request_counts().items()
            for (verb, code), n in sorted(counts):
                requests.add_metric([client_name, verb, str(code)], n)
        yield requests

        objects = GaugeMetricFamily("rayop_informer_objects", "Objects cached by informer", labels=["informer"])
        synced = GaugeMetricFamily("rayop_informer_synced", "1 once the informer's first list is done",
                                   labels=["informer"])
        events = CounterMetricFamily("rayop_informer_events", "Events dispatched by informer",
                                     labels=["informer", "type"])
        lists = CounterMetricFamily("rayop_informer_lists", "Completed lists by informer", labels=["informer"])
        gone = CounterMetricFamily("rayop_informer_relists_gone", "Relists forced by 410 Gone",
                                   labels=["informer"])
        watches = CounterMetricFamily("rayop_informer_watches", "Watches started", labels=["informer"])
        errors = CounterMetricFamily("rayop_informer_errors", "Failed lists and watches", labels=["informer"])
        for informer in list(self.informers):
            name = informer.name
            objects.add_metric([name], len(informer.store))
            synced.add_metric([name], 1.0 if informer.has_synced() else 0.0)
            for kind, n in sorted(informer.events.items()):
                events.add_metric([name, kind], n)
            stats = informer.stats()
            lists.add_metric([name], stats.get("lists", 0))
            gone.add_metric([name], stats.get("relists_gone", 0))
            watches.add_metric([name], stats.get("watches", 0))
            errors.add_metric([name], stats.get("errors", 0))
        yield from (objects, synced, events, lists, gone, watches, errors)

        if self.leader is not None:
            lease, is_leader = self.leader
            leader = GaugeMetricFamily("rayop_leader", "1 while this replica holds the leader lease",
                                       labels=["lease"])
            leader.add_metric([lease], 1.0 if is_leader() else 0.0)
            yield leader
