"""The reconciler's pure helpers: the status merge patch and which condition changes deserve a Warning Event."""

from __future__ import annotations

from typing import Any

import pytest

from rayop.reconciler import merge_patch, problems_raised


def cond(kind: str, status: str, reason: str) -> dict[str, Any]:
    return {"type": kind, "status": status, "reason": reason, "message": "m"}


@pytest.mark.parametrize(("old", "new", "patch"), [
    ({}, {"a": 1}, {"a": 1}),
    ({"a": 1}, {"a": 1}, {}),
    ({"a": 1, "b": 2}, {"a": 1}, {"b": None}),
    ({"h": {"x": 1, "y": 2}}, {"h": {"x": 1, "y": 3}}, {"h": {"y": 3}}),
    ({"c": [1, 2]}, {"c": [1]}, {"c": [1]}),
    ({"a": None}, {"a": 0}, {"a": 0}),
], ids=["add", "same", "remove", "nested", "list-replaced", "none-to-zero"])
def test_merge_patch(old: dict[str, Any], new: dict[str, Any], patch: dict[str, Any]) -> None:
    assert merge_patch(old, new) == patch


def test_problem_raised_once_on_transition() -> None:
    ok = {"conditions": [cond("HeadReady", "True", "HeadPodReady")]}
    bad = {"conditions": [cond("HeadReady", "False", "HeadPodUnschedulable")]}
    assert [c["reason"] for c in problems_raised(ok, bad)] == ["HeadPodUnschedulable"]
    assert problems_raised(bad, bad) == []


def test_progress_and_aggregate_are_not_problems() -> None:
    new = {"conditions": [cond("HeadReady", "False", "HeadPodPending"), cond("Ready", "False", "HeadNotReady"),
                          cond("WorkersReady", "False", "WorkersNotReady")]}
    assert problems_raised({}, new) == []


def test_replica_failure_is_a_problem_when_true() -> None:
    new = {"conditions": [cond("ReplicaFailure", "True", "FailedCreate")]}
    assert len(problems_raised({}, new)) == 1
    assert problems_raised({}, {"conditions": [cond("ReplicaFailure", "False", "NoFailures")]}) == []
