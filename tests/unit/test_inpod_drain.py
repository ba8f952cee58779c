"""rayop_drain.py's decisions, with a stand-in for Ray's GcsClient (the real one is exercised in tests/e2e)."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import Any

import pytest

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


# -- the restart guard ----------------------------------------------------------------------------------------------


@dataclass
class Death:
    reason: int = 0
    reason_message: str = ""


@dataclass
class Snapshot:
    state: int = 1


@dataclass
class Node:
    node_id: NodeId
    instance_id: str
    start_time_ms: int
    state: int = 1  # DEAD
    death_info: Death = field(default_factory=Death)
    state_snapshot: Snapshot = field(default_factory=Snapshot)
    node_manager_address: str = "10.0.0.2"
    is_head_node: bool = False


def ended(reason: str, message: str = "", state: int = 1, snapshot: str = "IDLE") -> Node:
    from ray.core.generated.common_pb2 import NodeDeathInfo
    from ray.core.generated.gcs_pb2 import NodeSnapshot

    return Node(NodeId("n"), "pod-a", 1, state=state, death_info=Death(NodeDeathInfo.Reason.Value(reason), message),
                state_snapshot=Snapshot(NodeSnapshot.State.Value(snapshot)))


@pytest.mark.parametrize("node, drained", [
    # What Ray 2.60 records (tried against a real GCS): each drain, and each end that is not one.
    (ended("AUTOSCALER_DRAIN_IDLE", "idle for 60 s"), True),  # `ray drain-node`, autoscaler v2, the preStop hook
    (ended("AUTOSCALER_DRAIN_PREEMPTED", "spot reclaim"), True),  # a preemption asked for from outside
    (ended("EXPECTED_TERMINATION", "Terminated by autoscaler."), True),  # the v1 autoscaler's `drain_nodes`
    (ended("AUTOSCALER_DRAIN_PREEMPTED", "Node received SIGTERM; draining before shutdown."), False),  # kubelet stop
    (ended("EXPECTED_TERMINATION", "received SIGTERM"), False),  # `ray stop`, a raylet terminated
    (ended("UNEXPECTED_TERMINATION", "health check failed due to missing too many heartbeats"), False),  # a crash
    (ended("UNSPECIFIED", "", state=0), False),  # killed, the GCS has not noticed yet
    (ended("UNSPECIFIED", "", state=0, snapshot="DRAINING"), True),  # its drain still under way
], ids=["idle", "preempted", "v1-autoscaler", "sigterm-self-drain", "sigterm", "crash", "alive", "alive-draining"])
def test_only_a_drain_counts_as_one(node: Node, drained: bool) -> None:
    assert (rayop_drain.drained_by(node) is not None) is drained


def test_the_pods_newest_node_is_the_one_asked_about() -> None:
    old = Node(NodeId("old"), "pod-a", 100)
    new = Node(NodeId("new"), "pod-a", 200)
    other = Node(NodeId("other"), "pod-b", 300, node_manager_address="10.0.0.9")
    head = Node(NodeId("head"), "pod-a", 400, is_head_node=True)
    gcs = Gcs({n.node_id.value: n for n in (old, new, other, head)}, [])  # type: ignore[misc]
    assert rayop_drain.last_node(gcs, "pod-a", "10.0.0.9") is new  # the instance id (pod name) wins
    assert rayop_drain.last_node(gcs, None, "10.0.0.9") is other  # without one, the IP
    assert rayop_drain.last_node(gcs, "pod-c", None) is None


def test_the_guard_writes_the_marker_only_for_a_drain(monkeypatch: Any, tmp_path: Any) -> None:
    import ray._raylet

    nodes: list[Node] = []
    monkeypatch.setattr(ray._raylet, "GcsClient", lambda address: Gcs({n.node_id.value: n for n in nodes}, []))
    marker = tmp_path / "marker"
    with socket.socket() as gcs:
        gcs.bind(("127.0.0.1", 0))
        gcs.listen()
        args = rayop_drain.parse_args(["--address", f"127.0.0.1:{gcs.getsockname()[1]}", "--on-restart",
                                       "--instance-id", "pod-a", "--marker", str(marker)])
        assert rayop_drain.on_restart(args, 0)["outcome"] == "start"  # no node of this pod known: start
        nodes.append(ended("UNEXPECTED_TERMINATION", "health check failed"))
        result = rayop_drain.on_restart(args, 0)
        assert result["outcome"] == "start" and "UNEXPECTED_TERMINATION" in result["message"]
        assert not marker.exists()
        nodes.append(Node(NodeId("m"), "pod-a", 2, death_info=ended("AUTOSCALER_DRAIN_IDLE").death_info))
        assert rayop_drain.on_restart(args, 0)["outcome"] == "drained"
        assert "AUTOSCALER_DRAIN_IDLE" in marker.read_text()
    marker.unlink()
    assert rayop_drain.on_restart(args, 0)["outcome"] == "start"  # the GCS does not answer: start
    assert not marker.exists()
