"""rayop_drain.py's decisions, with a stand-in for Ray's GcsClient (the real one is exercised in tests/e2e)."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import Any

from rayop.inpod import rayop_drain


@dataclass
class NodeId:
    value: str

    def hex(self) -> str:
        return self.value


@dataclass
class Info:
    node_id: NodeId
    node_manager_address: str
    state: int = 0
    is_head_node: bool = False


@dataclass
class Gcs:
    infos: dict[str, Info]
    accept: list[bool]
    calls: list[tuple[str, int]] = field(default_factory=list)

    def get_all_node_info(self, timeout: int = 0) -> dict[str, Info]:
        return self.infos

    def drain_node(self, node_id: str, reason: int, message: str, deadline_ms: int) -> tuple[bool, str]:
        self.calls.append((node_id, reason))
        accepted = self.accept.pop(0)
        return accepted, "" if accepted else "The node to be idle terminated is no longer idle."


def cluster(accept: list[bool]) -> Gcs:
    return Gcs({"h": Info(NodeId("h"), "10.0.0.1", is_head_node=True), "w": Info(NodeId("w"), "10.0.0.2"),
                "d": Info(NodeId("d"), "10.0.0.3", state=1)}, accept)


def test_the_pods_node_is_found_by_ip_never_the_head_or_a_dead_one() -> None:
    gcs = cluster([])
    assert rayop_drain.find_node(gcs, None, "10.0.0.2") == ("w", gcs.infos["w"])
    assert rayop_drain.find_node(gcs, None, "10.0.0.1") is None
    assert rayop_drain.find_node(gcs, None, "10.0.0.3") is None
    assert rayop_drain.find_node(gcs, "w", None) == ("w", gcs.infos["w"])


def test_an_idle_node_is_terminated_at_once_and_a_refused_drain_is_an_error() -> None:
    from ray.core.generated.autoscaler_pb2 import DrainNodeReason

    gcs = cluster([True])
    assert rayop_drain.drain(gcs, "w", 30, 0.1)[0] == "idle"
    assert gcs.calls == [("w", DrainNodeReason.Value("DRAIN_NODE_REASON_IDLE_TERMINATION"))]
    gcs = cluster([False, False])
    outcome, message = rayop_drain.drain(gcs, "w", 30, 0.1)
    assert outcome == "error" and "no longer idle" in message
    assert [c[1] for c in gcs.calls] == [DrainNodeReason.Value("DRAIN_NODE_REASON_IDLE_TERMINATION"),
                                         DrainNodeReason.Value("DRAIN_NODE_REASON_PREEMPTION")]


def test_the_exit_code_reports_a_loss(monkeypatch: Any, tmp_path: Any, capsys: Any) -> None:
    monkeypatch.setattr(rayop_drain, "find_node", lambda client, node_id, ip: ("w", None))
    monkeypatch.setattr(rayop_drain, "drain", lambda client, node, deadline, poll: ("deadline", "still busy"))
    import ray._raylet

    monkeypatch.setattr(ray._raylet, "GcsClient", lambda address: object())
    marker = tmp_path / "marker"
    with socket.socket() as gcs:  # something that accepts connections where the GCS would be
        gcs.bind(("127.0.0.1", 0))
        gcs.listen()
        address = f"127.0.0.1:{gcs.getsockname()[1]}"
        assert rayop_drain.main(["--address", address, "--marker", str(marker)]) == 2
    assert marker.exists() and '"outcome": "deadline"' in capsys.readouterr().out
    # The head already gone (the whole Ray is being deleted): nothing to drain, at once.
    assert rayop_drain.main(["--address", address, "--marker", str(marker)]) == 0
    assert '"outcome": "gone"' in capsys.readouterr().out
