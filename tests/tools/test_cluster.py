"""cluster_port: a node's port and its cluster-bus port both stay free for it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tools import net
from tools.cluster import BUS_OFFSET, cluster_port
from tools.net import ephemeral_range


def test_a_nodes_bus_port_lies_outside_the_ephemeral_range_too() -> None:
    low, high = ephemeral_range()
    for _ in range(20):
        port = cluster_port()
        assert not low <= port + BUS_OFFSET <= high
        assert port + BUS_OFFSET <= 65535


def test_a_host_with_no_bus_port_outside_the_ephemeral_range_still_gets_one(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    ranges = tmp_path / "ip_local_port_range"
    ranges.write_text("1024 65000\n")
    monkeypatch.setattr(net, "EPHEMERAL_RANGE", ranges)
    port = cluster_port()
    assert port + BUS_OFFSET <= 65535
