"""Traefik's entry point cuts stalled requests, and leaves upgraded WebSockets alone."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import yaml

from tests.support import Client
from tools import traefik_config as tc

if TYPE_CHECKING:
    from scripts.stack_state import StackState

# Generous beside the configured readTimeout: it only stops a broken setup hanging the test.
BOUND = 30.0  # under Traefik v3's default readTimeout (60 s): without ours, this fails


def test_the_public_entry_point_has_request_timeouts_and_no_write_timeout() -> None:
    timeouts = tc.load_static()["entryPoints"][tc.PUBLIC_ENTRYPOINT]["transport"]["respondingTimeouts"]
    assert timeouts["readTimeout"] and timeouts["idleTimeout"]
    assert timeouts["writeTimeout"] in ("0s", 0)  # anything else caps a WebSocket's life


async def test_a_stalled_request_is_cut_and_an_idle_websocket_outlives_it(local_stack: StackState) -> None:
    rendered = yaml.safe_load((local_stack.dir / "traefik" / "traefik.yml").read_text())
    assert rendered["entryPoints"][tc.PUBLIC_ENTRYPOINT]["transport"]["respondingTimeouts"]["readTimeout"]
    ws_base = local_stack.web_url.replace("http://", "ws://")
    member = await Client.connect(f"{ws_base}/ws/chat/lobby/")  # idle from here on
    reader, writer = await asyncio.open_connection("127.0.0.1", local_stack.ports["web"])
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never finished
    rest = await asyncio.wait_for(reader.read(), BOUND)
    writer.close()
    assert b" 200 " not in rest  # cut (Traefik may say 408 first), never served
    # The WebSocket opened before the stalled request has now been idle for longer than
    # readTimeout, and still carries chat both ways.
    ack = await member.post("still here", client_id="k-proxy-idle")
    assert ack["type"] == "ack"
    await member.close()
