"""bench/floor.py: as every benchmark has measured it by default, and with the opt-in
``--ready`` and ``--color`` that let Parley's clients and probes run against it."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from tests.support import AppServer, Client, free_port


def start_floor(*flags: str) -> AppServer:
    port = free_port()
    command = [sys.executable, "-m", "bench.floor", "--port", str(port), *flags]
    return AppServer(port=port, command=command).start()


@pytest.fixture
def plain() -> Iterator[AppServer]:
    server = start_floor()
    yield server
    server.cleanup()


@pytest.fixture
def ready() -> Iterator[AppServer]:
    server = start_floor("--ready", "--color", "green")
    yield server
    server.cleanup()


async def test_by_default_the_first_frame_is_a_broadcast_and_the_probe_names_none(plain: AppServer) -> None:
    client = await Client.connect(plain.ws_url("floor"), wait_ready=False)
    try:
        await client.send("hello")
        assert await client.recv() == {"message": "hello"}  # no ready frame before it
    finally:
        await client.ws.close()
    assert plain.get("/readyz") == (200, {"status": "ok"})


async def test_ready_comes_first_and_the_probe_names_the_colour(ready: AppServer) -> None:
    # The query a resuming cutover client sends (tools/cutover_clients.py) is ignored.
    client = await Client.connect(ready.ws_url("floor", since=0, token="t"), wait_ready=False)
    try:
        assert await client.recv() == {"type": "ready"}
        await client.send("hello")
        assert await client.recv() == {"message": "hello"}
    finally:
        await client.ws.close()
    assert ready.get("/readyz") == ready.get("/healthz") == (200, {"status": "ok", "color": "green"})
