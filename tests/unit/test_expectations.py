"""Expectations keep a stale cache from causing duplicate creates or double deletes."""

from __future__ import annotations

import pytest

from rayop.expectations import Expectations


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_unknown_scope_is_satisfied() -> None:
    assert Expectations().satisfied("g", [])


def test_create_is_outstanding_until_the_cache_shows_it() -> None:
    exp = Expectations()
    exp.expect_created("g", "ray-worker-abcde")
    assert not exp.satisfied("g", [])
    assert not exp.satisfied("g", [("other", "u0", False)])
    assert exp.satisfied("g", [("ray-worker-abcde", "u1", False)])
    assert exp.pending("g") == (0, 0)


def test_delete_is_outstanding_until_the_pod_goes_or_terminates() -> None:
    exp = Expectations()
    exp.expect_deleted("g", "u1")
    assert not exp.satisfied("g", [("p", "u1", False)])
    assert exp.satisfied("g", [("p", "u1", True)])
    exp.expect_deleted("g", "u2")
    assert exp.satisfied("g", [])


def test_failed_writes_withdraw_expectations() -> None:
    exp = Expectations()
    exp.expect_created("g", "a")
    exp.expect_deleted("g", "u")
    exp.creation_failed("g", "a")
    assert exp.pending("g") == (0, 1)
    exp.deletion_failed("g", "u")
    assert exp.satisfied("g", [("p", "u", False)])


def test_expectations_expire() -> None:
    clock = Clock()
    exp = Expectations(ttl=10, clock=clock)
    exp.expect_created("g", "lost")
    clock.t = 5
    assert not exp.satisfied("g", [])
    clock.t = 11
    assert exp.satisfied("g", [])


def test_scopes_are_independent_and_forgettable() -> None:
    exp = Expectations()
    exp.expect_created(("ns/a", "w"), "x")
    exp.expect_created(("ns/b", "w"), "y")
    exp.forget(lambda scope: isinstance(scope, tuple) and scope[0] == "ns/a")
    assert exp.satisfied(("ns/a", "w"), [])
    assert not exp.satisfied(("ns/b", "w"), [])


def test_expires_in_counts_down_from_the_oldest_expectation() -> None:
    now = [100.0]
    e = Expectations(ttl=300.0, clock=lambda: now[0])
    assert e.expires_in("g") is None
    e.expect_created("g", "p1")
    now[0] += 50
    e.expect_deleted("g", "uid")
    assert e.expires_in("g") == pytest.approx(250.0)
    now[0] += 400
    assert e.expires_in("g") == 0.0
    assert e.satisfied("g", [])
    assert e.expires_in("g") is None
