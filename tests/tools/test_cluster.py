"""cluster_port: a node's port and its cluster-bus port both stay free for it."""

from __future__ import annotations

from tools.cluster import BUS_OFFSET, cluster_port
from tools.net import ephemeral_range


def test_a_nodes_bus_port_lies_outside_the_ephemeral_range_too() -> None:
    low, high = ephemeral_range()
    for _ in range(20):
        port = cluster_port()
        assert not low <= port + BUS_OFFSET <= high
        assert port + BUS_OFFSET <= 65535
