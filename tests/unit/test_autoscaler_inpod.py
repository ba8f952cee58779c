"""The in-pod launcher's and monitor's helpers (controller/inpod/rayop_launcher.py, rayop_monitor.py) without a Ray
cluster: config checks, addresses, the summary line, the monitor's arguments."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

pytest.importorskip("ray")

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "controller" / "inpod"))
import rayop_launcher as launcher  # noqa: E402
import rayop_monitor as monitor  # noqa: E402

from rayop.api.convert import effective_cluster  # noqa: E402
from rayop.autoscaler import build_autoscaler_config  # noqa: E402


@pytest.fixture(autouse=True)
def keep_root_logging() -> Iterator[None]:
    """The programs' main() configure the root logger for a container; undo that after each test."""
    handlers, level = logging.root.handlers[:], logging.root.level
    yield
    logging.root.handlers[:] = handlers
    logging.root.setLevel(level)


def good_config() -> dict[str, Any]:
    return build_autoscaler_config(effective_cluster({"metadata": {"name": "d", "namespace": "n"}, "spec": {}}).cluster)


def test_config_error_agrees_with_rays_validator(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(good_config()))
    assert launcher.config_error(launcher.load_config(str(path))) is None
    bad = good_config()
    bad["autoscaling_mode"] = "aggressive"
    assert "Additional properties are not allowed" in (launcher.config_error(bad) or "")
    bad = good_config()
    bad["available_node_types"]["worker"]["resources"]["CPU"] = 0.5
    assert (launcher.config_error(bad) or "").startswith("available_node_types.worker.resources.CPU: 0.5 is not of type")
    bad = good_config()
    del bad["cluster_synced_files"]
    assert "cluster_synced_files" in (launcher.config_error(bad) or "")
    assert launcher.config_error("text") == "Config text is not a dictionary"


def test_load_config_reads_json_without_pyyaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps(good_config()))
    monkeypatch.setitem(sys.modules, "yaml", None)
    assert launcher.load_config(str(path)) == good_config()


@pytest.mark.parametrize(
    "address, expected",
    [("head.ns.svc:6379", ("head.ns.svc", 6379)), ("10.0.0.1:7000", ("10.0.0.1", 7000)),
     ("[fd00::1]:6379", ("fd00::1", 6379)), ("head", ("head", 6379))],
)
def test_split_address(address: str, expected: tuple[str, int]) -> None:
    assert launcher.split_address(address) == expected


def test_wait_for_gcs_gives_up_at_the_deadline() -> None:
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="did not answer: ConnectionRefusedError"):
        launcher.wait_for_gcs("127.0.0.1:1", time.monotonic() + 0.3, interval=0.1)
    assert time.monotonic() - started < 5


def test_the_summary_line_fits_the_termination_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "termination-log"
    summary = {"succeeded": False, "reason": "InvalidConfig", "message": "é" * 5000, "workersExpected": 1}
    line = launcher.finish(summary, str(log))
    assert len(line.encode()) <= launcher.TERMINATION_LOG_LIMIT
    assert json.loads(line)["message"].endswith("...")
    assert log.read_text() == line
    assert capsys.readouterr().out.strip() == line
    # An unwritable termination log is not fatal.
    assert launcher.finish({"message": "ok"}, str(tmp_path / "missing" / "log")) == '{"message": "ok"}'


def test_the_launcher_fails_clearly_on_an_unreadable_or_rejected_config(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "log"
    code = launcher.main(["--config", str(tmp_path / "missing.yaml"), "--address", "127.0.0.1:1",
                          "--termination-log", str(log)])
    summary = json.loads(log.read_text())
    assert (code, summary["reason"], summary["succeeded"]) == (2, "InvalidConfig", False)
    assert "cannot read" in summary["message"]
    bad = good_config()
    bad["max_workers"] = -1
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    code = launcher.main(["--config", str(path), "--address", "127.0.0.1:1", "--termination-log", str(log)])
    summary = json.loads(log.read_text())
    assert (code, summary["reason"]) == (2, "InvalidConfig")
    assert summary["message"].startswith("Ray rejects the autoscaler config: max_workers: -1 is less than")
    assert summary["rayVersion"]


def test_unexpected_errors_become_launcher_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(good_config()))

    def boom(*args: Any) -> Any:
        raise KeyError("surprise")

    monkeypatch.setattr(launcher, "wait_for_gcs", boom)
    log = tmp_path / "log"
    code = launcher.main(["--config", str(path), "--address", "h:1", "--termination-log", str(log)])
    summary = json.loads(log.read_text())
    assert (code, summary["reason"], summary["message"]) == (1, "LauncherError", "KeyError: 'surprise'")


def test_monitor_passes_only_the_arguments_this_ray_accepts(monkeypatch: pytest.MonkeyPatch) -> None:
    class OldMonitor:
        def __init__(self, address: str, autoscaling_config: Any, log_dir: str | None = None) -> None:
            pass

    monkeypatch.setenv("RAY_MONITOR_IP", "10.0.0.5")
    assert monitor.monitor_kwargs(OldMonitor, "/tmp/ray/logs") == {"log_dir": "/tmp/ray/logs"}
    from ray.autoscaler._private.monitor import Monitor

    assert monitor.monitor_kwargs(Monitor, None) == {"log_dir": None, "monitor_ip": "10.0.0.5",
                                                     "retry_on_failure": False}


def test_monitor_defaults_and_giving_up_on_the_gcs(monkeypatch: pytest.MonkeyPatch) -> None:
    args = monitor.parse_args([])
    assert (args.config, args.address, args.wait_timeout) == ("/etc/rayop/autoscaler.yaml", "127.0.0.1:6379", 0.0)
    import os

    assert os.environ["RAY_enable_autoscaler_v2"] == "0"
    assert monitor.main(["--address", "127.0.0.1:1", "--wait-timeout", "0.5"]) == 1


def test_the_node_table_fallback_reads_protobuf_and_dict_forms() -> None:
    from types import SimpleNamespace

    class Client:
        def __init__(self, infos: Any) -> None:
            self.infos = infos

        def get_all_node_info(self, timeout: float) -> Any:
            return self.infos

    proto_head = SimpleNamespace(state=0, node_manager_address="10.0.0.1",
                                 resources_total={"CPU": 1.0, "node:__internal_head__": 1.0})
    proto_dead = SimpleNamespace(state=1, node_manager_address="10.0.0.2", resources_total={})
    dict_worker = {"node_name": b"10.0.0.3", "state": 0, "resources": {b"CPU": 2, "GPU": 1}}
    nodes = launcher._alive_nodes_from_node_table(Client({b"a": proto_head, b"b": proto_dead, b"c": dict_worker}))
    assert nodes == [
        {"ip": "10.0.0.1", "head": True, "resources": {"CPU": 1.0, "node:__internal_head__": 1.0}},
        {"ip": "10.0.0.3", "head": False, "resources": {"CPU": 2.0, "GPU": 1.0}},
    ]
    assert launcher._totals(nodes) == {"CPU": 3.0, "GPU": 1.0}
    assert launcher._alive_nodes_from_node_table(Client([proto_dead])) == []
