"""rayop's autoscaler sidecar: Ray's own v1 `Monitor`, driving rayop's node provider.

    python /etc/rayop/rayop_monitor.py --config /etc/rayop/autoscaler.yaml

Runs in the head pod, in the head's own (stock) Ray image, sharing the head's /tmp/ray. Standalone: Python's standard
library and `ray` only; rayop_provider.py and rayop_launcher.py sit beside it.

Guarantees:
- It waits (forever by default) until the head's GCS answers at --address (default 127.0.0.1:6379), then runs
  `ray.autoscaler._private.monitor.Monitor` with the config's path: Ray re-reads the file every iteration, so a
  ConfigMap update reaches the running autoscaler; the provider is built once.
- It never runs autoscaler v2 (which cannot drive this provider): RAY_enable_autoscaler_v2 is forced to 0 here, and
  the head must be started with the same setting and `--no-monitor`.
- A config Ray's validator rejects is logged as an error at start (the launcher reports it in the `Ray`'s status);
  the monitor still runs with it, as Ray does.
- The monitor exits after repeated failures (Ray's limit) so that the container restarts; logs go to stdout/stderr
  and, when the head's session directory is visible, to its logs/monitor.log like Ray's own monitor.
- Identity comes from the config's provider section, else RAY_CLUSTER_NAME / RAY_CLUSTER_NAMESPACE (downward API).
"""

from __future__ import annotations

import argparse
import inspect
import logging
import logging.handlers
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

os.environ["RAY_enable_autoscaler_v2"] = "0"
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from rayop_launcher import config_error, load_config, wait_for_gcs  # noqa: E402

logger = logging.getLogger("rayop.monitor")

LOG_FORMAT = "%(asctime)s\t%(levelname)s %(filename)s:%(lineno)s -- %(message)s"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Run Ray's autoscaler with rayop's node provider.")
    parser.add_argument("--config", default="/etc/rayop/autoscaler.yaml")
    parser.add_argument("--address", default=os.environ.get("RAY_GCS_ADDRESS", "127.0.0.1:6379"))
    parser.add_argument("--wait-timeout", type=float, default=0.0, help="seconds to wait for the GCS; 0: forever")
    parser.add_argument("--ray-temp-dir", default=os.environ.get("RAY_TMPDIR", "/tmp/ray"))
    return parser.parse_args(argv)


def setup_logging(log_dir: str | None) -> None:
    formatter = logging.Formatter(LOG_FORMAT)
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    out = logging.StreamHandler(sys.stdout)
    out.setFormatter(formatter)
    out.addFilter(lambda record: record.levelno < logging.WARNING)
    err = logging.StreamHandler(sys.stderr)
    err.setFormatter(formatter)
    err.setLevel(logging.WARNING)
    root.addHandler(out)
    root.addHandler(err)
    if log_dir:
        try:
            handler = logging.handlers.RotatingFileHandler(
                os.path.join(log_dir, "monitor.log"), maxBytes=512 * 1024 * 1024, backupCount=5
            )
        except OSError as e:
            logger.warning("Cannot log to %s: %s", log_dir, e)
        else:
            handler.setFormatter(formatter)
            root.addHandler(handler)


def monitor_kwargs(monitor_class: Any, log_dir: str | None) -> dict[str, Any]:
    """The keyword arguments this Ray version's Monitor accepts, from the ones we would like to pass."""
    wanted: dict[str, Any] = {
        "log_dir": log_dir,
        "monitor_ip": os.environ.get("RAY_MONITOR_IP") or None,
        "retry_on_failure": False,
    }
    accepted = inspect.signature(monitor_class.__init__).parameters
    return {k: v for k, v in wanted.items() if k in accepted}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    log_dir: str | None = os.path.join(args.ray_temp_dir, "session_latest", "logs")
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, stream=sys.stdout)
    deadline = time.monotonic() + args.wait_timeout if args.wait_timeout > 0 else None
    logger.info("Waiting for the head's GCS at %s.", args.address)
    try:
        wait_for_gcs(args.address, deadline)
    except TimeoutError as e:
        logger.error("%s", e)
        return 1
    if log_dir is not None and not os.path.isdir(log_dir):
        log_dir = None
    logging.getLogger().handlers.clear()
    setup_logging(log_dir)

    import ray
    from ray.autoscaler._private.monitor import Monitor

    logger.info("Ray %s; autoscaler config %s.", getattr(ray, "__version__", "?"), args.config)
    try:
        error = config_error(load_config(args.config))
    except Exception as e:
        logger.error("Cannot read the autoscaler config %s: %s", args.config, e)
        return 1
    if error is not None:
        logger.error("Ray rejects the autoscaler config: %s", error)
    monitor = Monitor(args.address, autoscaling_config=args.config, **monitor_kwargs(Monitor, log_dir))
    monitor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
