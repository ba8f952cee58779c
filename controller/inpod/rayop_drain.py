"""rayop's drain program: ask Ray to drain this pod's Ray node before the pod goes, wait for it, report.

    python /etc/rayop/rayop_drain.py --address <head>:6379 [--node-ip IP] [--node-id HEX] [--deadline S]

Runs as the worker pods' `preStop` hook (the kubelet runs it when the pod is deleted, before SIGTERM, within
terminationGracePeriodSeconds); standalone: Python's standard library and `ray` only.

    python /etc/rayop/rayop_drain.py --address <head>:6379 --on-restart [--instance-id POD] [--node-ip IP]

The second form is the restart guard the worker's start script runs when its container starts again in the same
pod: it asks the GCS how this pod's previous Ray node ended, and when that was a drain (whoever asked for it: Ray's
autoscaler, `ray drain-node`, this hook), it writes the marker so that Ray is not started again.

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
- With --on-restart: finds the newest non-head Ray node of this pod (its instance id is the pod's name, from
  $RAY_CLOUD_INSTANCE_ID, else its IP) and writes the marker when it ended by a drain (see `drained_by`); prints one
  JSON line {"node", "outcome": "drained" | "start", "message"}; always exits 0. When the GCS does not answer (within
  --timeout), the answer is `start`: a crashed node must come back, so doubt restarts Ray as before.
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
# How a Ray node's end reads in the GCS (ray.rpc.NodeDeathInfo), as Ray 2.60 records it:
# - an idle termination (DrainNode, from `ray drain-node`, autoscaler v2 or this hook): AUTOSCALER_DRAIN_IDLE;
# - a preemption (DrainNode): AUTOSCALER_DRAIN_PREEMPTED, with the requester's message; but `ray start --block`
#   drains its own node the same way when it gets SIGTERM (a kubelet stopping the container, e.g. a failed liveness
#   probe), with a message naming SIGTERM: that is a restart, not a drain;
# - the v1 autoscaler's drain (`GcsClient.drain_nodes`, the older DrainNode): EXPECTED_TERMINATION with the message
#   below; a raylet stopped by SIGTERM itself is EXPECTED_TERMINATION too, "received SIGTERM";
# - a crash: UNEXPECTED_TERMINATION (once the GCS's health checks give up, ~15 s; until then the node is ALIVE).
V1_AUTOSCALER_DRAIN_MESSAGE = "Terminated by autoscaler."
SELF_DRAIN_WORD = "SIGTERM"


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


def last_node(client: Any, instance_id: str | None, node_ip: str | None) -> Any | None:
    """The newest non-head Ray node (GcsNodeInfo, alive or dead) this pod ran: by instance id (the pod's name),
    else by IP; None when the GCS knows none (e.g. a head that restarted without its node table)."""
    infos = client.get_all_node_info(timeout=10)
    mine = [info for info in (infos.values() if isinstance(infos, Mapping) else infos)
            if not getattr(info, "is_head_node", False)
            and ((instance_id and _text(getattr(info, "instance_id", "")) == instance_id)
                 or (not instance_id and node_ip and _text(info.node_manager_address) == node_ip))]
    return max(mine, key=lambda info: int(getattr(info, "start_time_ms", 0)), default=None)


def drained_by(info: Any) -> str | None:
    """Why this node's end was a drain (e.g. "AUTOSCALER_DRAIN_IDLE: <message>"); None when it was not: alive and
    not draining, crashed, stopped by a signal."""
    from ray.core.generated.common_pb2 import NodeDeathInfo  # type: ignore[attr-defined]
    from ray.core.generated.gcs_pb2 import NodeSnapshot  # type: ignore[attr-defined]

    if getattr(info, "state", 1) == 0:  # ALIVE: a crash the GCS has not noticed yet, or a drain still under way
        draining = info.state_snapshot.state == NodeSnapshot.State.Value("DRAINING")
        return "DRAINING: the node is being drained" if draining else None
    reason = NodeDeathInfo.Reason.Name(info.death_info.reason)
    message = _text(info.death_info.reason_message)
    if reason == "AUTOSCALER_DRAIN_IDLE" \
            or (reason == "AUTOSCALER_DRAIN_PREEMPTED" and SELF_DRAIN_WORD not in message) \
            or (reason == "EXPECTED_TERMINATION" and message == V1_AUTOSCALER_DRAIN_MESSAGE):
        return f"{reason}: {message}"
    return None


def on_restart(args: argparse.Namespace, started: float) -> dict[str, Any]:
    """The restart guard: write the marker when this pod's previous Ray node ended by a drain."""
    summary: dict[str, Any] = {"node": None, "outcome": "start"}
    if not _gcs_answers(args.address):
        summary["message"] = f"the head's GCS at {args.address} does not answer: Ray starts"
        return summary
    from ray._raylet import GcsClient  # type: ignore[attr-defined]

    info = last_node(GcsClient(address=args.address), args.instance_id, args.node_ip)
    if info is None:
        summary["message"] = f"Ray knows no earlier node of {args.instance_id or args.node_ip}: Ray starts"
        return summary
    summary["node"] = _text(info.node_id.hex())
    why = drained_by(info)
    if why is None:
        if getattr(info, "state", 1) == 0:
            end = "is still alive in the GCS (a crash not yet noticed)"
        else:
            from ray.core.generated.common_pb2 import NodeDeathInfo  # type: ignore[attr-defined]

            end = (f"ended {NodeDeathInfo.Reason.Name(info.death_info.reason)} "
                   f"({_text(info.death_info.reason_message)})")
        summary["message"] = f"the previous node {end}, not by a drain: Ray starts again"
        return summary
    with open(args.marker, "w", encoding="utf-8") as f:
        f.write(f"drained ({why}); found by rayop_drain.py --on-restart\n")
    summary.update(outcome="drained", message=f"the previous node ended by a drain ({why}): Ray is not started "
                                              "again in this pod")
    return summary


def _deadline_exit(seconds: float, summary: Mapping[str, Any]) -> None:
    """After `seconds`, print `summary` and end the process (a GCS call can block in its reconnect loop)."""
    import threading

    def fire() -> None:
        time.sleep(seconds)
        print(json.dumps(dict(summary), sort_keys=True), flush=True)
        os._exit(0)

    threading.Thread(target=fire, name="deadline", daemon=True).start()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Drain this pod's Ray node before the pod goes.")
    parser.add_argument("--address", required=True, help="the head's GCS, host:port")
    parser.add_argument("--node-ip", default=os.environ.get("RAYOP_POD_IP"))
    parser.add_argument("--node-id", default=None)
    parser.add_argument("--deadline", type=float, default=300.0, help="seconds to wait for a busy node")
    parser.add_argument("--poll", type=float, default=1.0)
    parser.add_argument("--marker", default=MARKER)
    parser.add_argument("--on-restart", action="store_true",
                        help="the restart guard: write the marker if this pod's previous Ray node was drained")
    parser.add_argument("--instance-id", default=os.environ.get("RAY_CLOUD_INSTANCE_ID"))
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds the restart guard may take")
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
    """The hook, or the restart guard. `watch_head` (the program's own run only: it may end the process) exits once
    the head is gone (the hook) or the guard's --timeout has passed."""
    args = parse_args(argv)
    started = time.monotonic()
    if args.on_restart:
        if watch_head:
            _deadline_exit(args.timeout, {"node": None, "outcome": "start",
                                          "message": f"no answer from the GCS within {args.timeout:g} s: Ray starts"})
        try:
            result = on_restart(args, started)
        except Exception as e:  # doubt restarts Ray, as before the guard
            result = {"node": None, "outcome": "start", "message": f"{type(e).__name__}: {e}: Ray starts"}
        result["elapsedSeconds"] = round(time.monotonic() - started, 1)
        print(json.dumps(result, sort_keys=True), flush=True)
        return 0
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
