"""rayop's drain program: ask Ray to drain this pod's Ray node before the pod goes, wait for it, report.

    python /etc/rayop/rayop_drain.py --address <head>:6379 [--node-ip IP] [--node-id HEX] [--deadline S]

Runs as the worker pods' `preStop` hook (the kubelet runs it when the pod is deleted, before SIGTERM, within
terminationGracePeriodSeconds); standalone: Python's standard library and `ray` only.

Guarantees:
- Finds this pod's Ray node (alive, not the head) by --node-id, else by its IP (--node-ip, default $RAYOP_POD_IP).
- Asks the GCS to drain it with Ray's own DrainNode call (`GcsClient.drain_node`, what `ray drain-node` and the
  autoscaler use): first as an idle termination, which Ray accepts only for an idle node (the raylet then exits by
  itself); when Ray refuses because the node is busy, as a preemption with the deadline, so Ray schedules nothing new
  there, and waits until the node runs nothing (no resource of the node in use) or the deadline passes.
- Before it returns, it writes the marker /dev/shm/rayop-drained: the worker's start command finds it and does not
  start Ray again, so a drained raylet never rejoins while its pod is going (restartPolicy Always).
- Ends with one line of JSON on stdout: {"node", "outcome", "message", "elapsedSeconds"}; outcomes `idle` (idle
  termination accepted), `drained` (busy, then idle before the deadline), `deadline` (still busy at the deadline:
  what runs there is lost), `gone` (no such node: nothing to drain), `error`. Exit 0 for `idle`, `drained` and
  `gone`; 2 for `deadline` and 1 for `error`, so the kubelet reports the hook's failure (a `FailedPreStopHook`
  Warning Event on the pod, with this output): a loss is never silent. The pod goes either way.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

MARKER = "/dev/shm/rayop-drained"
# Resources that do not say whether something runs on a node.
PASSIVE_RESOURCES = ("memory", "object_store_memory")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def find_node(client: Any, node_id: str | None, node_ip: str | None) -> tuple[str, Any] | None:
    """(node id hex, GcsNodeInfo) of the alive, non-head node with this id or IP; None when there is none."""
    infos = client.get_all_node_info(timeout=10)
    for key, info in (infos.items() if isinstance(infos, Mapping) else ((None, i) for i in infos)):
        if getattr(info, "state", 1) != 0 or getattr(info, "is_head_node", False):  # 0: ALIVE
            continue
        hex_id = _text(info.node_id.hex()) if hasattr(info.node_id, "hex") else _text(key)
        if node_id and hex_id == node_id:
            return hex_id, info
        if not node_id and node_ip and _text(info.node_manager_address) == node_ip:
            return hex_id, info
    return None


def busy(client: Any, node_id: str) -> str | None:
    """What holds resources on the node (e.g. "CPU 1/2"), or None when nothing does (or the node is gone)."""
    from ray.autoscaler.v2.sdk import get_cluster_resource_state
    from ray.core.generated.autoscaler_pb2 import NodeStatus  # type: ignore[attr-defined]

    for node in get_cluster_resource_state(client).node_states:
        if _text(node.node_id.hex()) != node_id:
            continue
        if node.status == NodeStatus.DEAD:
            return None
        total = dict(node.total_resources)
        available = dict(node.available_resources)
        used = [f"{k} {total[k] - available.get(k, 0.0):g}/{total[k]:g}" for k in sorted(total)
                if k not in PASSIVE_RESOURCES and not k.startswith("node:") and available.get(k, 0.0) < total[k]]
        return ", ".join(used) or None
    return None


def drain(client: Any, node_id: str, deadline_s: float, poll: float) -> tuple[str, str]:
    from ray.core.generated.autoscaler_pb2 import DrainNodeReason  # type: ignore[attr-defined]

    started = time.time()
    deadline_ms = int((started + deadline_s) * 1000)
    accepted, why = client.drain_node(node_id, DrainNodeReason.Value("DRAIN_NODE_REASON_IDLE_TERMINATION"),
                                      "rayop: the pod is being deleted", deadline_ms)
    if accepted:
        return "idle", "the node was idle; Ray accepted the idle termination"
    accepted, why2 = client.drain_node(node_id, DrainNodeReason.Value("DRAIN_NODE_REASON_PREEMPTION"),
                                       "rayop: the pod is being deleted", deadline_ms)
    if not accepted:
        return "error", f"Ray refused to drain the node: {_text(why)}; {_text(why2)}"
    while True:
        holding = busy(client, node_id)
        if holding is None:
            return "drained", f"the node was busy ({_text(why)}); drained in {time.time() - started:.0f} s"
        if time.time() + poll > started + deadline_s:
            return "deadline", f"still busy after {deadline_s:g} s ({holding}): what runs there is lost"
        time.sleep(poll)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Drain this pod's Ray node before the pod goes.")
    parser.add_argument("--address", required=True, help="the head's GCS, host:port")
    parser.add_argument("--node-ip", default=os.environ.get("RAYOP_POD_IP"))
    parser.add_argument("--node-id", default=None)
    parser.add_argument("--deadline", type=float, default=300.0, help="seconds to wait for a busy node")
    parser.add_argument("--poll", type=float, default=1.0)
    parser.add_argument("--marker", default=MARKER)
    return parser.parse_args(argv)


def _gcs_answers(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]") or address, int(port or 6379)), timeout=3):
            return True
    except OSError:
        return False


def _watch_head(address: str, started: float, every: float = 2.0) -> None:
    """When the head's GCS stops answering while we wait on it (the whole Ray is being deleted), the GCS client
    would block in its reconnect loop; there is nothing left to drain, so report `gone` and exit at once."""
    import threading

    def watch() -> None:
        while True:
            time.sleep(every)
            if not _gcs_answers(address):
                summary = {"node": None, "outcome": "gone", "elapsedSeconds": round(time.monotonic() - started, 1),
                           "message": f"the head's GCS at {address} stopped answering while draining"}
                print(json.dumps(summary, sort_keys=True), flush=True)
                os._exit(0)

    threading.Thread(target=watch, name="head-watch", daemon=True).start()


def main(argv: Sequence[str] | None = None, *, watch_head: bool = False) -> int:
    """The hook. `watch_head` (the program's own run only: it may end the process) exits once the head is gone."""
    args = parse_args(argv)
    started = time.monotonic()
    summary: dict[str, Any] = {"node": None, "outcome": "error", "message": ""}
    try:
        try:
            with open(args.marker, "w", encoding="utf-8") as f:
                f.write("drained by rayop_drain.py\n")
        except OSError:
            pass
        host, _, port = args.address.rpartition(":")
        try:
            # The head may be gone already (the whole Ray is being deleted): then there is nothing to drain.
            with socket.create_connection((host.strip("[]") or args.address, int(port or 6379)), timeout=3):
                pass
        except OSError as e:
            summary.update(outcome="gone", message=f"the head's GCS at {args.address} does not answer: {e}")
            summary["elapsedSeconds"] = round(time.monotonic() - started, 1)
            print(json.dumps(summary, sort_keys=True), flush=True)
            return 0
        from ray._raylet import GcsClient  # type: ignore[attr-defined]

        if watch_head:
            _watch_head(args.address, started)
        client = GcsClient(address=args.address)
        found = find_node(client, args.node_id, args.node_ip)
        if found is None:
            summary.update(outcome="gone", message=f"no alive worker node at {args.node_id or args.node_ip}")
        else:
            summary["node"] = found[0]
            outcome, message = drain(client, found[0], args.deadline, args.poll)
            summary.update(outcome=outcome, message=message)
    except Exception as e:  # the pod goes anyway; say why the drain did not happen
        summary.update(outcome="error", message=f"{type(e).__name__}: {e}")
    summary["elapsedSeconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(summary, sort_keys=True), flush=True)
    return {"error": 1, "deadline": 2}.get(summary["outcome"], 0)


if __name__ == "__main__":
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    sys.exit(main(watch_head=True))
