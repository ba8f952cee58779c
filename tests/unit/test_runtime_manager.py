"""Controller outcomes (success, requeue, errors, panics, terminal errors), metrics and the HTTP endpoints.

No API server is involved: the controller is fed keys directly and its informers are never started.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest
from kubernetes import client as k8s_client

from rayop.runtime.kube import ApiError, KubeClient
from rayop.runtime.manager import Controller, Manager, Result, TerminalError, parse_address
from rayop.runtime.metrics import Metrics
from rayop.runtime.store import ObjectKey
from rayop.runtime.workqueue import ExponentialBackoff, MaxOfLimiter
from tests.support.clock import FakeClock

KEY = ObjectKey("ns", "r")


def offline_client() -> KubeClient:
    configuration = k8s_client.Configuration()
    configuration.host = "http://127.0.0.1:9"
    return KubeClient(configuration)


class FakeRecorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, str]] = []

    def record(self, obj: Any, type_: str, reason: str, message: str) -> None:
        self.events.append((type_, reason, message))


def controller(outcome: Any, clock: FakeClock) -> tuple[Controller, Metrics]:
    metrics = Metrics(process=False)

    def reconcile(key: ObjectKey) -> Result | None:
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome  # type: ignore[no-any-return]

    c = Controller("test", reconcile, metrics=metrics, clock=clock,
                   rate_limiter=MaxOfLimiter(ExponentialBackoff(1.0, 100.0)))
    return c, metrics


def sample(metrics: Metrics, metric: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(metric, labels)
    return 0.0 if value is None else value


@pytest.mark.parametrize(
    "outcome,result,retried_after,errors,panics",
    [
        (None, "success", None, 0, 0),
        (Result(), "success", None, 0, 0),
        (Result(requeue_after=30), "requeue_after", 30.0, 0, 0),
        (Result(requeue=True), "requeue", 1.0, 0, 0),
        (ApiError(409, "Conflict", "stale"), "error", 1.0, 1, 0),
        (OSError("connection reset"), "error", 1.0, 1, 0),
        (KeyError("spec"), "error", 1.0, 1, 1),
        (TerminalError("bad config", "InvalidConfiguration"), "error", None, 1, 0),
    ],
    ids=["none", "result", "requeue-after", "requeue", "api-error", "os-error", "panic", "terminal"],
)
def test_outcomes(outcome: Any, result: str, retried_after: float | None, errors: int, panics: int) -> None:
    clock = FakeClock()
    c, metrics = controller(outcome, clock)
    c.queue.add(KEY)
    assert c.process_next(timeout=0)
    assert sample(metrics, "controller_runtime_reconcile_total", controller="test", result=result) == 1
    assert sample(metrics, "controller_runtime_reconcile_errors_total", controller="test") == errors
    assert sample(metrics, "controller_runtime_reconcile_panics_total", controller="test") == panics
    assert sample(metrics, "controller_runtime_reconcile_time_seconds_count", controller="test") == 1
    if retried_after is None:
        assert c.queue.pending_delayed() == 0
        assert c.queue.num_requeues(KEY) == 0
    else:
        assert c.queue.pending_delayed() == 1
        clock.step(retried_after - 0.001)
        assert c.queue.get(0.02) is None
        clock.step(0.001)
        assert c.queue.get(1) == KEY


def test_errors_back_off_exponentially_and_success_forgets() -> None:
    clock = FakeClock()
    failing = [True]

    def reconcile(key: ObjectKey) -> None:
        if failing[0]:
            raise OSError("down")

    metrics = Metrics(process=False)
    c = Controller("t", reconcile, metrics=metrics, clock=clock,
                   rate_limiter=MaxOfLimiter(ExponentialBackoff(1.0, 100.0)))
    c.queue.add(KEY)
    assert c.process_next(timeout=0)  # first failure: retry in 1 s
    for delay in (1.0, 2.0, 4.0):
        clock.step(delay - 0.01)
        assert c.queue.get(0.02) is None
        clock.step(0.01)
        assert c.process_next(timeout=1)  # fails again, next delay doubles
    failing[0] = False
    clock.step(8.0)
    assert c.process_next(timeout=1)
    assert c.queue.num_requeues(KEY) == 0
    assert c.queue.pending_delayed() == 0
    assert sample(metrics, "workqueue_retries_total", controller="t", name="t") == 4


def test_terminal_error_records_a_warning_event_on_the_cached_object() -> None:
    clock = FakeClock()
    c, _ = controller(TerminalError("spec.configuration is not YAML", "InvalidConfiguration"), clock)
    recorder = FakeRecorder()
    c.recorder = recorder  # type: ignore[assignment]

    class Primary:
        class store:
            @staticmethod
            def get(key: ObjectKey) -> dict[str, Any]:
                return {"metadata": {"name": key.name, "namespace": key.namespace, "uid": "u"}}

    c.primary = Primary  # type: ignore[assignment]
    c.queue.add(KEY)
    c.process_next(timeout=0)
    assert recorder.events == [("Warning", "InvalidConfiguration", "spec.configuration is not YAML")]


def test_parse_address() -> None:
    assert parse_address(":8080") == ("", 8080)
    assert parse_address("127.0.0.1:0") == ("127.0.0.1", 0)
    assert parse_address("[::1]:9") == ("::1", 9)
    assert parse_address("0") is None
    assert parse_address("") is None


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_health_ready_and_metrics_endpoints() -> None:
    manager = Manager(offline_client(), metrics_address="127.0.0.1:0", shutdown_timeout=5)
    manager.controller("ray", lambda key: None, workers=2)
    informer = manager.informer(__import__("rayop.runtime.kube", fromlist=["Resource"]).Resource(
        "", "v1", "pods", "Pod"))
    assert manager.informer(informer.resource) is informer, "informers are shared"
    manager.start()  # its reflector finds no server and backs off; readiness is driven by hand below
    port = manager.metrics_port
    assert port
    try:
        assert get(port, "/healthz") == (200, "ok\n")
        assert get(port, "/readyz")[0] == 503
        for r in informer.reflectors:
            r.synced.set()
        assert get(port, "/readyz") == (200, "ok\n")
        status, text = get(port, "/metrics")
        assert status == 200
        for name in (
            'controller_runtime_reconcile_total{controller="ray",result="success"} 0.0',
            'controller_runtime_max_concurrent_reconciles{controller="ray"} 2.0',
            'workqueue_depth{controller="ray",name="ray"} 0.0',
            "workqueue_longest_running_processor_seconds",
            "workqueue_unfinished_work_seconds",
            'rayop_informer_objects{informer="pods"} 0.0',
        ):
            assert name in text, name
        assert get(port, "/nope")[0] == 404
    finally:
        manager.stop()
        assert manager.wait(30) == 0
    assert not manager.healthy()


def test_logging_json_is_one_object_per_line(capsys: pytest.CaptureFixture[str]) -> None:
    import io

    import structlog

    from rayop.runtime.logging import configure_logging

    stream = io.StringIO()
    configure_logging("json", "info", stream=stream)
    structlog.get_logger("x").info("reconciled", key="ns/r", result="success", duration=0.1)
    structlog.get_logger("x").debug("hidden")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["event"] == "reconciled" and record["key"] == "ns/r" and record["level"] == "info"
    assert "timestamp" in record
    configure_logging("console", "info", stream=io.StringIO())


def test_resync_schedules_a_successful_key_again_after_the_period_with_jitter() -> None:
    clock = FakeClock()
    metrics = Metrics(process=False)
    c = Controller("t", lambda key: None, metrics=metrics, clock=clock, resync_period=100.0)
    c.queue.add(KEY)
    assert c.process_next(timeout=0)
    assert c.queue.pending_delayed() == 1
    clock.step(99.9)
    assert c.queue.get(0.02) is None
    clock.step(10.2)  # period + 10 % jitter at most
    assert c.queue.get(1) == KEY
    c.queue.done(KEY)
    # An earlier requeue_after wins over the resync; the queue keeps one pending time per key.
    c.reconcile = lambda key: Result(requeue_after=5)
    c.queue.add(KEY)
    assert c.process_next(timeout=0)
    assert c.queue.pending_delayed() == 1
    clock.step(5.0)
    assert c.queue.get(1) == KEY
    c.queue.done(KEY)


def test_no_resync_for_an_error_or_without_a_period() -> None:
    clock = FakeClock()
    c = Controller("t", lambda key: None, metrics=Metrics(process=False), clock=clock)
    c.queue.add(KEY)
    assert c.process_next(timeout=0)
    assert c.queue.pending_delayed() == 0
