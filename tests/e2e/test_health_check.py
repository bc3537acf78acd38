"""Traefik's health check on a colour of two processes, with the real Traefik and app
processes of the local stack: a dead process stops getting new connections once Traefik has
noticed, and a switch to a checked colour refuses none while its first check is pending
(Traefik counts each server up until then)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import threading
from collections import Counter

from scripts.deploy import deploy
from scripts.local_runtime import LocalRuntime
from scripts.stack_state import StackState
from tests.support import http_get, wait_until
from tests.wsraw import HANDSHAKE

# Bounds only: each stops a broken setup hanging the test. Traefik notices within an interval
# of 2 s (docs/DEPLOY.md, "Traefik's health check").
NOTICED_WITHIN = 15.0
# New connections in a row that must all open: three rounds of the round robin over two
# processes, so a dead one in the rotation fails at least one of them, every time.
IN_A_ROW = 6


def open_status(port: int, room: str = "checked") -> int:
    """Open a chat WebSocket on ``port`` (Traefik's public entry point) as a new connection and
    close it at once: the handshake's HTTP status (101: opened; 502: a dead process; 503: no
    server, or the app refused), 0 if the connection itself failed."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(HANDSHAKE.format(path=f"/ws/chat/{room}/", port=port).encode())
            head = b""
            while b"\r\n" not in head:
                chunk = sock.recv(1024)
                if not chunk:
                    return 0
                head += chunk
    except OSError:
        return 0
    return int(head.split()[1])


def all_open(port: int, count: int = IN_A_ROW) -> bool:
    """Whether ``count`` new connections in a row all open."""
    return all(open_status(port) == 101 for _ in range(count))


def server_status(state: StackState, color: str) -> dict[str, str]:
    """What Traefik's API says of each server of ``color``'s chat service (``UP``/``DOWN``)."""
    status, body = http_get(f"{state.ops_url}/api/http/services/chat-{color}@file", timeout=2.0)
    return json.loads(body).get("serverStatus", {}) if status == 200 else {}


def kill(state: StackState, name: str) -> None:
    """SIGKILL one app process of the stack (a crash: no drain) and wait for it to be gone."""
    os.kill(state.procs[name].pid, signal.SIGKILL)
    assert state.procs[name].wait(10)


def test_a_dead_process_gets_no_new_connection_once_traefik_notices(two_process_stack: StackState) -> None:
    state = two_process_stack
    port = state.ports["web"]
    assert all_open(port)
    kill(state, "blue.1")
    # Without a check Traefik sends every second new connection to the dead process (502)
    # until an operator repairs it, and this never comes true.
    wait_until(lambda: all_open(port), NOTICED_WITHIN, "every new connection through Traefik to open")
    dead = state.app_url("blue.1")
    assert server_status(state, "blue") == {state.app_url("blue"): "UP", dead: "DOWN"}
    assert all_open(port, 4 * IN_A_ROW)


async def test_a_switch_to_a_checked_colour_refuses_no_connection_before_its_first_check(
    two_process_stack: StackState,
) -> None:
    """New connections through Traefik all open throughout a deploy to a colour of two
    processes (its old colour, checked too, drains unrouted) and on until Traefik's first
    check of the new colour has run, which green.1's death makes visible: had Traefik
    counted the new servers down until their first check, the switch would have answered
    503 for a whole interval."""
    state = two_process_stack
    port = state.ports["web"]
    seen: dict[str, Counter[int]] = {"before the kill": Counter(), "after it": Counter()}
    killing, done = threading.Event(), threading.Event()

    def connect_on() -> None:
        while not done.is_set():
            status = open_status(port)
            # Read after the answer: one that came before the kill was begun cannot be its.
            seen["after it" if killing.is_set() else "before the kill"][status] += 1

    hammer = threading.Thread(target=connect_on, daemon=True)
    hammer.start()
    try:
        report = await asyncio.to_thread(deploy, LocalRuntime(state), "green")
        assert (report["to"], report["old"]) == ("green", "drained")
        assert server_status(state, "blue") == {}  # the old colour is unrouted, its check gone
        killing.set()
        kill(state, "green.1")
        await asyncio.to_thread(
            wait_until, lambda: server_status(state, "green").get(state.app_url("green.1")) == "DOWN",
            NOTICED_WITHIN, "Traefik's first check of green to find green.1 dead")
    finally:
        done.set()
        hammer.join(15)
    before, after = seen["before the kill"], seen["after it"]
    assert set(before) == {101} and before[101] > 0, seen
    assert set(after) <= {101, 502}, seen  # the dead process, until Traefik noticed
    assert all_open(port, 4 * IN_A_ROW)


def checks_failed(state: StackState, server: str) -> int:
    """How many of Traefik's health checks of ``server`` failed so far (its log says each)."""
    lines = state.log("traefik").read_text(errors="replace").splitlines()
    return sum(1 for line in lines if "Health check failed" in line and server in line)


def test_a_redis_outage_takes_no_process_out_of_the_rotation(two_process_stack: StackState) -> None:
    # Checked on /readyz, every process went out at once (a Redis outage is all of theirs)
    # and Traefik answered 503 "no available server" to everyone, the page included; the app
    # itself holds a join up to 10 s for Redis and serves the page.
    state = two_process_stack
    port = state.ports["web"]
    kill(state, "blue.1")  # a server whose every check fails and is logged: checks are seen
    wait_until(lambda: all_open(port), NOTICED_WITHIN, "Traefik to take the dead process out")
    kill(state, "redis")
    blue = state.app_url("blue")
    wait_until(lambda: http_get(f"{blue}/readyz", timeout=2.0)[0] == 503, NOTICED_WITHIN,
               "blue to notice Redis is gone")
    seen = checks_failed(state, state.app_url("blue.1"))
    wait_until(lambda: checks_failed(state, state.app_url("blue.1")) >= seen + 2, NOTICED_WITHIN,
               "two more rounds of Traefik's checks")
    assert server_status(state, "blue")[blue] == "UP"
    status, _ = http_get(f"http://127.0.0.1:{port}/?room=outage", timeout=5.0)
    assert status == 200  # the page
