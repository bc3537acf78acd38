"""free_port: ports a server can still bind minutes later, whatever clients connect meanwhile."""

from __future__ import annotations

import socket
from contextlib import closing
from pathlib import Path

import pytest

from tools import net
from tools.net import ephemeral_range, free_port, listen_ports


def test_free_ports_lie_outside_the_range_outgoing_connections_take() -> None:
    # A port from the ephemeral range can become any connect()'s source port before its
    # server binds it (a CI run lost a stack's app process to exactly that).
    low, high = ephemeral_range()
    ports = [free_port() for _ in range(50)]
    assert all(not low <= port <= high for port in ports)
    assert all(port >= 1024 for port in ports)


def test_a_port_is_handed_out_once() -> None:
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)


def test_a_port_something_listens_on_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    with closing(socket.socket()) as listener:
        listener.bind(("127.0.0.1", free_port()))
        listener.listen()
        taken = listener.getsockname()[1]
        spare = free_port()
        net._handed_out -= {taken, spare}
        picks = iter([taken, taken, spare])
        monkeypatch.setattr(net.random, "choice", lambda _ports: next(picks))
        port = free_port()
    assert port == spare


def test_the_ports_bind() -> None:
    port = free_port()
    with closing(socket.socket()) as server:
        server.bind(("127.0.0.1", port))
        server.listen()


def test_a_machine_whose_ephemeral_range_starts_low_looks_above_it(monkeypatch: pytest.MonkeyPatch,
                                                                    tmp_path: Path) -> None:
    ranges = tmp_path / "ip_local_port_range"
    ranges.write_text("1024\t49999\n")
    monkeypatch.setattr(net, "EPHEMERAL_RANGE", ranges)
    assert listen_ports() == range(50000, 65536)
    assert 50000 <= free_port() <= 65535


@pytest.mark.parametrize("widened", ["1024\t65535\n", "10000 65535\n", "1024 65000\n"])
def test_a_host_whose_ephemeral_range_leaves_few_ports_outside_gets_the_kernels_pick(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, widened: str) -> None:
    # Widened ranges are common tuning: free_port must still answer, as the kernel's pick did.
    ranges = tmp_path / "ip_local_port_range"
    ranges.write_text(widened)
    monkeypatch.setattr(net, "EPHEMERAL_RANGE", ranges)
    assert len(listen_ports()) == 0
    ports = {free_port() for _ in range(20)}
    assert len(ports) == 20
    for port in ports:
        with closing(socket.socket()) as server:
            server.bind(("127.0.0.1", port))
