"""The node agent's pod address allocation: big enough subnets, lowest first, reuse, never twice."""

from __future__ import annotations

import ipaddress
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "hack" / "nodeagent"))

from main import POD_CIDR, Node, node_prefix  # noqa: E402


@pytest.mark.parametrize(("nodes", "prefix"), [(1, 17), (2, 18), (7, 19), (16, 21)])
def test_subnets_leave_room_for_the_bridge_and_every_node(nodes: int, prefix: int) -> None:
    assert node_prefix(POD_CIDR, nodes) == prefix
    subnets = [Node(f"n{i}", i, {"pods": "5000"}, POD_CIDR, prefix).subnet for i in range(nodes)]
    bridge = ipaddress.ip_address("10.244.0.1")
    assert all(bridge not in s and s.subnet_of(POD_CIDR) for s in subnets)
    assert len(set(subnets)) == nodes


def test_capacity_never_exceeds_addresses() -> None:
    small = Node("n", 0, {"pods": "5000"}, POD_CIDR, 24)
    assert small.capacity["pods"] == "253"
    big = Node("n", 0, {"pods": "5000"}, POD_CIDR, node_prefix(POD_CIDR, 2))
    assert big.capacity["pods"] == "5000"


def test_addresses_are_unique_reused_and_reservable() -> None:
    node = Node("n", 0, {"pods": "10"}, POD_CIDR, 28)  # 10.244.0.16/28: .18 .. .30
    first = [node.allocate_ip() for _ in range(3)]
    assert first == ["10.244.0.18", "10.244.0.19", "10.244.0.20"]
    node.release_ip(first[1])
    assert node.allocate_ip() == first[1]
    assert node.reserve_ip("10.244.0.25") and not node.reserve_ip("10.244.0.25")
    assert not node.reserve_ip("10.1.0.1")
    rest = [node.allocate_ip() for _ in range(9)]
    assert "10.244.0.25" not in rest and len(set(rest)) == 9
    with pytest.raises(RuntimeError, match="no pod address left"):
        node.allocate_ip()
