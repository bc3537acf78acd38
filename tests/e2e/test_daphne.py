"""daphne serves the same application (without graceful drain: see README)."""

from __future__ import annotations

import sys
from collections.abc import Callable

from tests.support import Client
from tools.net import free_port
from tools.procs import AppServer


async def test_daphne_serves_a_chat_round_trip(make_app: Callable[..., AppServer]) -> None:
    port = free_port()
    server = make_app(
        port=port,
        command=[sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "app.asgi:application"],
    )
    alice = await Client.connect(server.ws_url("lobby"))
    bob = await Client.connect(server.ws_url("lobby"))
    assert (await alice.post("over daphne"))["id"] == 1
    [got] = await bob.messages(1)
    assert got["message"] == "over daphne"
    assert server.get("/healthz") == (200, {"status": "ok"})
