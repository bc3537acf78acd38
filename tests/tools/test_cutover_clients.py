"""tools/cutover_clients.py: a client's bookkeeping, without sockets."""

from __future__ import annotations

import json

import pytest

from tools.cutover_clients import Client, first_not_done, trickle_share

pytestmark = pytest.mark.unit


class FakeSocket:
    """What ``Client`` writes to: the frames it sent."""

    def __init__(self) -> None:
        self.sent: list[dict[str, str]] = []

    def send(self, text: str) -> None:
        self.sent.append(json.loads(text))


def test_messages_wait_in_the_outbox_until_ready_and_leave_it_on_ack() -> None:
    client = Client(0, "room")
    client.new_message()
    [client_id] = client.pending
    socket = FakeSocket()
    client.attach(socket)  # type: ignore[arg-type]
    assert socket.sent == []  # open, but not live before `ready`
    client.handle(json.dumps({"type": "ready", "epoch": "e1", "last_id": 0}))
    assert client.live and client.epoch == "e1" and len(client.readies) == 1
    assert [frame["client_id"] for frame in socket.sent] == [client_id]
    client.handle(json.dumps({"type": "ack", "id": 1, "client_id": client_id}))
    client.handle(json.dumps({"type": "message", "id": 1}))
    assert client.pending == {} and client.acked == {client_id: 1}
    assert client.received == [1] and client.last_id == 1
    assert client.url("ws://h") == "ws://h/ws/chat/room/?since=1&epoch=e1"


def test_a_ready_that_came_with_the_101_goes_live_once_the_socket_is_attached() -> None:
    """The server's first frames can arrive in the same read as its 101, before ``connect``
    returned the socket: the outbox must still go out, on the new socket."""
    import asyncio

    client = Client(0, "room")
    client.new_message()
    client.became_ready = asyncio.Event()
    client.handle(json.dumps({"type": "ready", "epoch": "e1", "last_id": 0}))
    assert not client.live
    socket = FakeSocket()
    client.attach(socket)  # type: ignore[arg-type]
    assert client.live and len(socket.sent) == 1 and client.resent == 0


def test_a_message_written_again_after_a_reconnect_counts_as_resent() -> None:
    client = Client(0, "room")
    first, second = FakeSocket(), FakeSocket()
    client.attach(first)  # type: ignore[arg-type]
    client.handle(json.dumps({"type": "ready", "epoch": "e1", "last_id": 0}))
    client.new_message()
    client.live = False  # the socket closed before the ack
    client.attach(second)  # type: ignore[arg-type]
    client.handle(json.dumps({"type": "ready", "epoch": "e1", "last_id": 0}))
    assert first.sent[0]["client_id"] == second.sent[0]["client_id"] and client.resent == 1


def test_the_workers_shares_of_the_trickle_add_up_to_the_rate_asked() -> None:
    holdings = [36, 36, 36, 0, 12]  # senders per worker; one holds none
    shares = [trickle_share(20.0, mine, sum(holdings)) for mine in holdings]
    assert sum(shares) == pytest.approx(20.0) and shares[3] == 0.0
    assert shares[0] == pytest.approx(6.0) and shares[4] == pytest.approx(2.0)
    assert trickle_share(0.0, 36, 120) == 0.0 and trickle_share(20.0, 0, 0) == 0.0


def test_a_phase_wait_goes_on_from_the_first_client_not_yet_done() -> None:
    done = [True, True, False, True, False]
    asked: list[int] = []

    def is_done(index: int) -> bool:
        asked.append(index)
        return done[index]

    indices = list(range(5))
    assert first_not_done(indices, is_done) == 2
    done[2] = True
    asked.clear()
    assert first_not_done(indices, is_done, 2) == 4 and asked == [2, 3, 4]  # 0 and 1 not asked again
    done[4] = True
    assert first_not_done(indices, is_done, 4) == 5
    assert first_not_done([], is_done) == 0
