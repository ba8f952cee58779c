"""Reading Ray's state API answers (pure)."""

from __future__ import annotations

from typing import Any

from rayop.runtime.raystate import parse_busy


def answer(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {"result": True, "msg": "", "data": {"result": {"total": len(rows), "result": rows}}}


def test_busy_nodes_run_tasks_or_hold_actors() -> None:
    nodes = answer([{"node_id": "a", "node_ip": "10.0.0.1"}, {"node_id": "b", "node_ip": "10.0.0.2"},
                    {"node_id": "c", "node_ip": "10.0.0.3"}])
    tasks = answer([{"state": "RUNNING", "node_id": "a"}, {"state": "FINISHED", "node_id": "c"}])
    actors = answer([{"state": "ALIVE", "node_id": "b"}, {"state": "DEAD", "node_id": "c"}])
    assert parse_busy(nodes, tasks, actors) == {"10.0.0.1", "10.0.0.2"}


def test_malformed_answers_mean_nothing_is_known() -> None:
    for junk in (None, [], "x", {"data": 3}, {"data": {"result": {"result": ["x", 1]}}}):
        assert parse_busy(junk, junk, junk) == frozenset()
    assert parse_busy(answer([]), answer([{"state": "RUNNING", "node_id": "zz"}]), None) == frozenset()
