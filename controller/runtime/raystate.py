"""Which Ray nodes are busy, asked of the head's dashboard (Ray's state API over HTTP; no Ray library needed).

Guarantees:
- `busy_node_ips(host, port)` returns the IPs of the nodes that run a task (state RUNNING) or hold a live actor,
  from `GET /api/v0/tasks`, `/api/v0/actors` and `/api/v0/nodes` on the dashboard, each bounded by `timeout`;
  None when the dashboard does not answer or answers something unreadable (the caller then knows nothing, and
  orders as if every node were idle).
- `parse_busy` is the pure part: never raises on malformed input.
- Used only when the operator is about to remove a running, ready worker itself (scale-down, rolling update), so an
  idle cluster costs no request.
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any

LIMIT = 10000


def _rows(payload: Any) -> list[Mapping[str, Any]]:
    """The rows of a state API answer: {"data": {"result": {"result": [...]}}} (or a bare list)."""
    node: Any = payload
    for key in ("data", "result", "result"):
        if isinstance(node, Mapping) and key in node:
            node = node[key]
    if isinstance(node, list):
        return [r for r in node if isinstance(r, Mapping)]
    return []


def parse_busy(nodes: Any, tasks: Any, actors: Any) -> frozenset[str]:
    """IPs of the nodes that run a RUNNING task or hold an ALIVE actor."""
    ip_of = {str(n.get("node_id")): str(n.get("node_ip") or "") for n in _rows(nodes) if n.get("node_id")}
    busy: set[str] = set()
    for row in _rows(tasks):
        if row.get("state") == "RUNNING" and row.get("node_id"):
            busy.add(ip_of.get(str(row["node_id"]), ""))
    for row in _rows(actors):
        if row.get("state") == "ALIVE" and row.get("node_id"):
            busy.add(ip_of.get(str(row["node_id"]), ""))
    busy.discard("")
    return frozenset(busy)


def _get(base: str, path: str, params: Mapping[str, str], timeout: float) -> Any:
    query = urllib.parse.urlencode({"limit": str(LIMIT), **params})
    with urllib.request.urlopen(f"{base}{path}?{query}", timeout=timeout) as response:  # noqa: S310
        return json.loads(response.read())


def busy_node_ips(host: str, port: int, timeout: float = 3.0) -> frozenset[str] | None:
    base = f"http://{host}:{port}"
    try:
        nodes = _get(base, "/api/v0/nodes", {}, timeout)
        tasks = _get(base, "/api/v0/tasks", {"filter_keys": "state", "filter_predicates": "=",
                                             "filter_values": "RUNNING"}, timeout)
        actors = _get(base, "/api/v0/actors", {"filter_keys": "state", "filter_predicates": "=",
                                               "filter_values": "ALIVE"}, timeout)
    except (OSError, ValueError):
        return None
    return parse_busy(nodes, tasks, actors)
