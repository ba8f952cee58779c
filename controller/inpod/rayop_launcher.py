"""rayop's launcher: validate the autoscaler config with Ray, wait for the head and the initial workers, report.

    python /etc/rayop/rayop_launcher.py --config /etc/rayop/autoscaler.yaml --address <head>:6379 \
        --expect-workers N [--timeout S]

Runs in the cluster's own Ray image (the launcher pod); standalone: Python's standard library and `ray` only.

Guarantees:
- Steps, each bounded by the one deadline (--timeout, default 600 s): read the config and check it with Ray's own
  `validate_config`; wait until the head's GCS answers at --address; wait until at least N worker nodes are alive
  in Ray (the head does not count).
- It always ends with exactly one line of JSON on stdout, also written to --termination-log (default
  /dev/termination-log, at most 4096 bytes) so the operator reads it from the pod's terminated state:
  {"succeeded", "reason", "message", "workersExpected", "workersJoined", "nodes", "resources", "rayVersion",
  "address", "elapsedSeconds"}. Reasons: Launched (exit 0), InvalidConfig (2), HeadUnreachable (3),
  WorkersNotJoined (4), LauncherError (1, anything unexpected).
- `wait_for_gcs`, `alive_nodes` and `config_error` are shared with rayop_monitor.py.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

logger = logging.getLogger("rayop.launcher")

TERMINATION_LOG = "/dev/termination-log"
TERMINATION_LOG_LIMIT = 4096
HEAD_RESOURCE = "node:__internal_head__"

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_INVALID_CONFIG = 2
EXIT_HEAD_UNREACHABLE = 3
EXIT_WORKERS_NOT_JOINED = 4
REASONS = {
    EXIT_OK: "Launched",
    EXIT_ERROR: "LauncherError",
    EXIT_INVALID_CONFIG: "InvalidConfig",
    EXIT_HEAD_UNREACHABLE: "HeadUnreachable",
    EXIT_WORKERS_NOT_JOINED: "WorkersNotJoined",
}


class LaunchFailed(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


# -- shared with the monitor ----------------------------------------------------------------------------------------


def load_config(path: str) -> Any:
    """The config file's content (YAML, or JSON when PyYAML is missing)."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        import yaml
    except ImportError:
        return json.loads(text)
    return yaml.safe_load(text)


def config_error(config: Any) -> str | None:
    """Ray's own verdict on an autoscaler config: None when it accepts it, else its message."""
    from ray.autoscaler._private.util import validate_config

    try:
        validate_config(config)
    except Exception as e:  # jsonschema.ValidationError, ValueError, RuntimeError
        message = getattr(e, "message", None)
        if isinstance(message, str):
            path = ".".join(str(p) for p in getattr(e, "absolute_path", ()) or ())
            return f"{path}: {message}" if path else message
        return str(e) or type(e).__name__
    return None


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host:
        return address.strip("[]"), 6379
    return host.strip("[]"), int(port)


def gcs_client(address: str) -> Any:
    try:
        from ray._raylet import GcsClient  # type: ignore[attr-defined]
    except ImportError:  # older Ray
        from ray._private.gcs_utils import GcsClient  # type: ignore[attr-defined]
    return GcsClient(address=address)


def wait_for_gcs(address: str, deadline: float | None, interval: float = 2.0) -> Any:
    """Wait until the GCS at `address` accepts connections and answers; return a GCS client.

    `deadline` is a time.monotonic() value (None: wait forever). Raises TimeoutError with the last error.
    """
    host, port = split_address(address)
    last = "no attempt"
    while True:
        try:
            with socket.create_connection((host, port), timeout=5):
                pass
            client = gcs_client(address)
            client.internal_kv_get(b"session_name", b"session", timeout=5)
            return client
        except Exception as e:  # DNS not yet resolvable, connection refused, GCS still starting
            last = f"{type(e).__name__}: {e}"
        if deadline is not None and time.monotonic() + interval > deadline:
            raise TimeoutError(f"the head's GCS at {address} did not answer: {last}")
        time.sleep(interval)


def alive_nodes(client: Any) -> list[dict[str, Any]]:
    """The alive Ray nodes: [{"ip", "head", "resources"}].

    Asks the GCS for the cluster resource state (what the v1 monitor itself reads in recent Ray); where that API is
    missing, reads the GCS node table (protobuf messages or, in some versions, plain dicts).
    """
    try:
        from ray.autoscaler.v2.sdk import get_cluster_resource_state
        from ray.core.generated.autoscaler_pb2 import NodeStatus  # type: ignore[attr-defined]
    except ImportError:
        return _alive_nodes_from_node_table(client)
    out: list[dict[str, Any]] = []
    for node in get_cluster_resource_state(client).node_states:
        if node.status == NodeStatus.DEAD:
            continue
        resources = dict(node.total_resources)
        out.append({"ip": node.node_ip_address, "head": HEAD_RESOURCE in resources, "resources": resources})
    return out


def _alive_nodes_from_node_table(client: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    infos = client.get_all_node_info(timeout=10)
    for info in infos.values() if isinstance(infos, Mapping) else infos:
        if isinstance(info, Mapping):
            state, ip, resources = info.get("state"), info.get("node_manager_address"), info.get("resources")
            ip = ip or info.get("node_name")
        else:
            state, ip, resources = info.state, info.node_manager_address, info.resources_total
        if state != 0:  # GcsNodeInfo.ALIVE
            continue
        if isinstance(ip, bytes):
            ip = ip.decode()
        totals = {k.decode() if isinstance(k, bytes) else k: float(v) for k, v in dict(resources or {}).items()}
        out.append({"ip": ip, "head": HEAD_RESOURCE in totals, "resources": totals})
    return out


# -- the launcher ---------------------------------------------------------------------------------------------------


def launch(args: argparse.Namespace, summary: dict[str, Any], started: float) -> None:
    deadline = started + args.timeout
    try:
        config = load_config(args.config)
    except Exception as e:
        raise LaunchFailed(EXIT_INVALID_CONFIG, f"cannot read {args.config}: {e}") from None
    error = config_error(config)
    if error is not None:
        raise LaunchFailed(EXIT_INVALID_CONFIG, f"Ray rejects the autoscaler config: {error}")
    logger.info("Ray accepts the autoscaler config; waiting for the head at %s.", args.address)
    try:
        client = wait_for_gcs(args.address, deadline, args.poll)
    except TimeoutError as e:
        raise LaunchFailed(EXIT_HEAD_UNREACHABLE, f"{e} (waited {args.timeout:g} s)") from None
    logger.info("The head's GCS answers; waiting for %d worker(s) to join.", args.expect_workers)
    while True:
        nodes = alive_nodes(client)
        workers = [n for n in nodes if not n["head"]]
        summary["workersJoined"] = len(workers)
        summary["nodes"] = len(nodes)
        summary["resources"] = _totals(nodes)
        if len(workers) >= args.expect_workers:
            return
        if time.monotonic() + args.poll > deadline:
            raise LaunchFailed(
                EXIT_WORKERS_NOT_JOINED,
                f"{len(workers)} of {args.expect_workers} worker(s) joined Ray within {args.timeout:g} s",
            )
        time.sleep(args.poll)


def _totals(nodes: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    totals: dict[str, float] = {}
    for node in nodes:
        for key in ("CPU", "GPU"):
            if key in node["resources"]:
                totals[key] = totals.get(key, 0.0) + float(node["resources"][key])
    return totals


def finish(summary: dict[str, Any], termination_log: str) -> str:
    line = json.dumps(summary, sort_keys=True)
    if len(line.encode()) > TERMINATION_LOG_LIMIT:
        excess = len(line.encode()) - TERMINATION_LOG_LIMIT + 3
        summary["message"] = summary["message"].encode()[: max(0, len(summary["message"].encode()) - excess)].decode(
            "utf-8", "ignore"
        ) + "..."
        line = json.dumps(summary, sort_keys=True)
    print(line, flush=True)
    try:
        with open(termination_log, "w", encoding="utf-8") as f:
            f.write(line)
    except OSError as e:
        logger.warning("Cannot write %s: %s", termination_log, e)
    return line


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Validate a Ray cluster's autoscaler config and wait for it to launch.")
    parser.add_argument("--config", default="/etc/rayop/autoscaler.yaml")
    parser.add_argument("--address", required=True, help="the head's GCS, host:port")
    parser.add_argument("--expect-workers", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--poll", type=float, default=2.0)
    parser.add_argument("--termination-log", default=TERMINATION_LOG)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    args = parse_args(argv)
    started = time.monotonic()
    summary: dict[str, Any] = {
        "succeeded": False,
        "reason": REASONS[EXIT_ERROR],
        "message": "",
        "workersExpected": args.expect_workers,
        "workersJoined": None,
        "address": args.address,
        "rayVersion": None,
    }
    code = EXIT_OK
    try:
        import ray

        summary["rayVersion"] = getattr(ray, "__version__", None)
        launch(args, summary, started)
        summary["message"] = (
            f"Ray {summary['rayVersion']} accepts the config; the head at {args.address} answers; "
            f"{summary['workersJoined']} of {args.expect_workers} expected worker(s) joined"
        )
    except LaunchFailed as e:
        code, summary["message"] = e.code, e.message
    except Exception as e:
        code, summary["message"] = EXIT_ERROR, f"{type(e).__name__}: {e}"
        logger.exception("The launcher failed.")
    summary["succeeded"] = code == EXIT_OK
    summary["reason"] = REASONS[code]
    summary["elapsedSeconds"] = round(time.monotonic() - started, 1)
    finish(summary, args.termination_log)
    return code


if __name__ == "__main__":
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    sys.exit(main())
