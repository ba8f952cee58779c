"""Leader election timing on a fake clock, against an in-memory Lease with resourceVersion semantics.

The real Lease API is exercised by tests/integration/test_runtime_leader.py; here only time is faked.
"""

from __future__ import annotations

import copy
import threading
from typing import Any

import pytest

from rayop.runtime.leaderelection import (
    LeaderElectionConfig,
    LeaderElector,
    LeaseConflict,
    micro_time,
)
from tests.support.clock import FakeClock


class MemoryLease:
    """One Lease object: get/create/update with optimistic concurrency, and an outage switch."""

    def __init__(self) -> None:
        self.spec: dict[str, Any] | None = None
        self.rv = 0
        self.down = False
        self.writes = 0

    def _check(self) -> None:
        if self.down:
            raise OSError("connection refused")

    def get(self) -> tuple[dict[str, Any], str] | None:
        self._check()
        return None if self.spec is None else (copy.deepcopy(self.spec), str(self.rv))

    def create(self, spec: dict[str, Any]) -> str:
        self._check()
        if self.spec is not None:
            raise LeaseConflict("exists")
        return self._write(spec)

    def update(self, spec: dict[str, Any], resource_version: str) -> str:
        self._check()
        if self.spec is None or resource_version != str(self.rv):
            raise LeaseConflict("conflict")
        return self._write(spec)

    def _write(self, spec: dict[str, Any]) -> str:
        self.spec = copy.deepcopy(spec)
        self.rv += 1
        self.writes += 1
        return str(self.rv)


CFG = dict(lease_duration=15.0, renew_deadline=10.0, retry_period=2.0)


def elector(name: str, lease: MemoryLease, clock: FakeClock, **kwargs: Any) -> LeaderElector:
    config = LeaderElectionConfig(name="l", namespace="ns", identity=name, **CFG)  # type: ignore[arg-type]
    return LeaderElector(config, lease, clock=clock, rand=lambda: 0.0, **kwargs)


def test_config_is_validated() -> None:
    with pytest.raises(ValueError):
        LeaderElectionConfig(identity="a", lease_duration=10, renew_deadline=10)
    with pytest.raises(ValueError):
        LeaderElectionConfig(identity="a", renew_deadline=2, retry_period=2)


def test_first_candidate_creates_the_lease() -> None:
    lease, clock = MemoryLease(), FakeClock()
    a = elector("a", lease, clock)
    assert a.try_acquire_or_renew()
    assert a.is_leader()
    assert lease.spec is not None
    assert lease.spec["holderIdentity"] == "a"
    assert lease.spec["leaseDurationSeconds"] == 15
    assert lease.spec["leaseTransitions"] == 0
    assert lease.spec["acquireTime"] == lease.spec["renewTime"]
    assert lease.spec["renewTime"].endswith("Z") and len(lease.spec["renewTime"]) == 27


def test_standby_takes_over_exactly_one_lease_duration_after_the_last_change_it_saw() -> None:
    lease, clock = MemoryLease(), FakeClock()
    a, b = elector("a", lease, clock), elector("b", lease, clock)
    assert a.try_acquire_or_renew()
    clock.step(1)
    assert a.try_acquire_or_renew()  # last renewal at t=1
    clock.step(1)
    assert not b.try_acquire_or_renew()  # b first sees the record at t=2
    clock.step(14.9)  # t=16.9: 14.9 s since b saw it change
    assert not b.try_acquire_or_renew()
    assert not b.is_leader()
    clock.step(0.1)  # t=17: 15 s since b saw it
    assert b.try_acquire_or_renew()
    assert b.is_leader()
    assert lease.spec is not None and lease.spec["holderIdentity"] == "b"
    assert lease.spec["leaseTransitions"] == 1
    assert not a.is_leader(), "a's renew deadline passed long ago"


def test_renewals_seen_by_the_standby_restart_its_timer() -> None:
    lease, clock = MemoryLease(), FakeClock()
    a, b = elector("a", lease, clock), elector("b", lease, clock)
    a.try_acquire_or_renew()
    for _ in range(20):
        clock.step(2)
        assert a.try_acquire_or_renew()
        assert not b.try_acquire_or_renew()
    assert lease.spec is not None and lease.spec["holderIdentity"] == "a"
    assert lease.spec["leaseTransitions"] == 0


def test_leader_stops_believing_it_leads_at_its_renew_deadline() -> None:
    lease, clock = MemoryLease(), FakeClock()
    a = elector("a", lease, clock)
    a.try_acquire_or_renew()
    lease.down = True
    clock.step(9.99)
    assert not a.try_acquire_or_renew()
    assert a.is_leader()
    clock.step(0.01)
    assert not a.is_leader(), "no writes once renew_deadline has passed without a renewal"


def test_renew_loop_reports_loss_after_the_deadline_and_never_releases() -> None:
    lease, clock = MemoryLease(), FakeClock()
    stop = threading.Event()
    slept: list[float] = []

    def sleep(stop_event: threading.Event, seconds: float) -> bool:
        slept.append(seconds)
        clock.step(seconds)
        if len(slept) == 3:
            lease.down = True  # the API server goes away after two renewals
        return stop_event.is_set()

    events: list[str] = []
    a = elector("a", lease, clock, sleep=sleep, on_started_leading=lambda: events.append("start"),
                on_stopped_leading=lambda: events.append("stop"))
    started = clock.now()
    assert a.run(stop) is False
    assert events == ["start", "stop"]
    # Renewed at +2 and +4; the renewal due at +6 fails and is retried until +4 + renew_deadline.
    assert clock.now() - started == pytest.approx(14.0)
    assert not a.is_leader()
    lease.down = False
    assert lease.spec is not None and lease.spec["holderIdentity"] == "a", "a lost lease is not released"


def test_graceful_stop_releases_so_the_standby_takes_over_at_once() -> None:
    lease, clock = MemoryLease(), FakeClock()
    a, b = elector("a", lease, clock), elector("b", lease, clock)
    a.try_acquire_or_renew()
    assert not b.try_acquire_or_renew()
    assert a.release()
    assert not a.is_leader()
    assert lease.spec is not None and lease.spec["holderIdentity"] == ""
    assert lease.spec["leaseDurationSeconds"] == 1
    assert b.try_acquire_or_renew(), "an empty holder is free at once"
    assert lease.spec["leaseTransitions"] == 1
    assert not a.release(), "only the holder releases"


def test_acquire_loop_retries_with_jittered_period() -> None:
    lease, clock = MemoryLease(), FakeClock()
    a = elector("a", lease, clock)
    a.try_acquire_or_renew()
    slept: list[float] = []

    def sleep(stop_event: threading.Event, seconds: float) -> bool:
        slept.append(seconds)
        clock.step(seconds)
        return False

    config = LeaderElectionConfig(name="l", namespace="ns", identity="b", **CFG)  # type: ignore[arg-type]
    b = LeaderElector(config, lease, clock=clock, sleep=sleep, rand=lambda: 0.5)
    assert b.acquire(threading.Event())
    assert set(slept) == {2.0 * 1.6}
    assert sum(slept) >= 15.0


def test_two_candidates_racing_cannot_both_win() -> None:
    lease, clock = MemoryLease(), FakeClock()
    a, b = elector("a", lease, clock), elector("b", lease, clock)
    a.try_acquire_or_renew()
    clock.step(1)
    b.try_acquire_or_renew()
    c = elector("c", lease, clock)
    c.try_acquire_or_renew()
    clock.step(16)
    # Both read the same expired record; only the first write with that resourceVersion wins.
    current = lease.get()
    assert current is not None
    spec, rv = current
    orig_get = lease.get
    lease.get = lambda: (copy.deepcopy(spec), rv)  # type: ignore[method-assign]
    results = [b.try_acquire_or_renew(), c.try_acquire_or_renew()]
    lease.get = orig_get  # type: ignore[method-assign]
    assert sorted(results) == [False, True]


def test_micro_time_format() -> None:
    from datetime import datetime, timezone

    assert micro_time(datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=timezone.utc)) == "2024-01-02T03:04:05.000006Z"
