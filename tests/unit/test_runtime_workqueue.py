"""WorkQueue and rate limiters, driven by a fake clock."""

from __future__ import annotations

import threading

import pytest

from rayop.runtime.workqueue import (
    BucketLimiter,
    ExponentialBackoff,
    MaxOfLimiter,
    WorkQueue,
    default_rate_limiter,
)
from tests.support.clock import FakeClock


def make_queue(clock: FakeClock, **kwargs: object) -> WorkQueue[str]:
    return WorkQueue(clock=clock, rate_limiter=MaxOfLimiter(ExponentialBackoff(1.0, 60.0)), **kwargs)  # type: ignore[arg-type]


def test_fifo_and_dedup() -> None:
    q = make_queue(FakeClock())
    for key in ["a", "b", "a", "c", "b"]:
        q.add(key)
    assert len(q) == 3
    assert [q.get(0), q.get(0), q.get(0)] == ["a", "b", "c"]
    assert q.get(0.01) is None


def test_key_added_while_processing_is_held_until_done() -> None:
    q = make_queue(FakeClock())
    q.add("a")
    assert q.get(0) == "a"
    q.add("a")
    assert len(q) == 0, "a key being processed must not be handed out again"
    assert q.get(0.01) is None
    q.done("a")
    assert q.get(0) == "a"
    q.done("a")
    assert q.get(0.01) is None


def test_never_two_workers_on_one_key() -> None:
    q: WorkQueue[int] = WorkQueue()
    busy: set[int] = set()
    overlap: list[int] = []
    lock = threading.Lock()
    processed = [0]
    finished = threading.Event()

    def worker() -> None:
        while (key := q.get()) is not None:
            with lock:
                if key in busy:
                    overlap.append(key)
                busy.add(key)
            q.add(key)  # re-added while processing: must wait for done()
            with lock:
                busy.discard(key)
                processed[0] += 1
                if processed[0] >= 2000:
                    finished.set()
            q.done(key)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for k in range(5):
        q.add(k)
    assert finished.wait(60)
    q.shutdown(drain=True, timeout=10)
    for t in threads:
        t.join(10)
    assert not overlap


def test_delayed_add_waits_for_the_clock() -> None:
    clock = FakeClock()
    q = make_queue(clock)
    q.add_after("a", 10)
    assert q.get(0.02) is None
    clock.step(9.9)
    assert q.get(0.02) is None
    clock.step(0.1)
    assert q.get(0.5) == "a"


def test_earliest_delay_wins() -> None:
    clock = FakeClock()
    q = make_queue(clock)
    q.add_after("a", 10)
    q.add_after("a", 5)
    q.add_after("a", 20)
    assert q.pending_delayed() == 1
    clock.step(5)
    assert q.get(0.5) == "a"
    q.done("a")
    clock.step(20)
    assert q.get(0.05) is None, "the superseded later time must not fire again"


@pytest.mark.parametrize("failures,expected", [(0, 1.0), (1, 2.0), (2, 4.0), (5, 32.0), (6, 60.0), (100, 60.0)])
def test_exponential_backoff(failures: int, expected: float) -> None:
    backoff: ExponentialBackoff[str] = ExponentialBackoff(1.0, 60.0)
    for _ in range(failures):
        backoff.when("k")
    assert backoff.when("k") == expected
    assert backoff.retries("k") == failures + 1


def test_backoff_is_per_key_and_forget_resets() -> None:
    clock = FakeClock()
    q = make_queue(clock)
    for _ in range(3):
        q.add_rate_limited("a")  # delays 1, 2, 4 -> earliest (1) wins
    assert q.num_requeues("a") == 3
    assert q.num_requeues("b") == 0
    clock.step(1)
    assert q.get(0.5) == "a"
    q.done("a")
    q.forget("a")
    assert q.num_requeues("a") == 0
    q.add_rate_limited("a")
    clock.step(0.99)
    assert q.get(0.02) is None
    clock.step(0.01)
    assert q.get(0.5) == "a"


def test_bucket_limiter_paces_overall_retries() -> None:
    clock = FakeClock()
    bucket: BucketLimiter[str] = BucketLimiter(qps=10, burst=2, clock=clock)
    assert bucket.when("a") == 0.0
    assert bucket.when("b") == 0.0
    assert bucket.when("c") == pytest.approx(0.1)
    assert bucket.when("d") == pytest.approx(0.2)
    clock.step(1.0)
    assert bucket.when("e") == 0.0


def test_default_limiter_is_max_of_both() -> None:
    clock = FakeClock()
    limiter = default_rate_limiter(clock)
    delays = [limiter.when(f"k{i}") for i in range(101)]
    assert delays[0] == 0.005
    assert delays[100] == pytest.approx(0.1)  # the 101st retry in the same instant waits for the bucket


def test_shutdown_wakes_getters_and_drains() -> None:
    q = make_queue(FakeClock())
    results: list[object] = []
    t = threading.Thread(target=lambda: results.append(q.get()))
    t.start()
    q.add("a")
    t.join(5)
    assert results == ["a"]
    done = threading.Event()

    def finish_later() -> None:
        done.wait(5)
        q.done("a")

    threading.Thread(target=finish_later).start()
    waiter = threading.Thread(target=lambda: results.append(q.get()))
    waiter.start()
    done.set()
    assert q.shutdown(drain=True, timeout=5) is True
    waiter.join(5)
    assert results == ["a", None]
    q.add("b")
    assert len(q) == 0, "adds after shutdown are ignored"


def test_shutdown_drain_times_out_when_work_is_stuck() -> None:
    q = make_queue(FakeClock())
    q.add("a")
    assert q.get(0) == "a"
    assert q.shutdown(drain=True, timeout=0.05) is False


def test_metric_hooks_and_processing_ages() -> None:
    clock = FakeClock()
    seen: dict[str, list[object]] = {"add": [], "get": [], "done": [], "retry": []}
    q = make_queue(
        clock,
        on_add=lambda k: seen["add"].append(k),
        on_get=lambda k, waited: seen["get"].append(waited),
        on_done=lambda k, took: seen["done"].append(took),
        on_retry=lambda k: seen["retry"].append(k),
    )
    q.add("a")
    q.add("b")
    clock.step(2)
    assert q.get(0) == "a"
    assert q.get(0) == "b"
    clock.step(3)
    assert q.unfinished_work_seconds() == pytest.approx(6.0)
    assert q.longest_running_seconds() == pytest.approx(3.0)
    q.done("a")
    q.done("b")
    q.add_rate_limited("a")
    assert seen["add"] == ["a", "b"]
    assert seen["get"] == [2.0, 2.0]
    assert seen["done"] == [3.0, 3.0]
    assert seen["retry"] == ["a"]
    assert q.longest_running_seconds() == 0.0
