"""The uvicorn entry point: probes through start-up, and the ordered SIGTERM drain."""

from __future__ import annotations

import asyncio
import signal
import struct
import time
from collections.abc import Callable

import pytest
import redis.asyncio as aioredis
from websockets.exceptions import ConnectionClosed

from tests import wsraw
from tests.support import Client
from tools.net import free_port, http_get, wait_until
from tools.procs import AppServer, RedisServer


def test_healthz_answers_while_redis_is_down_and_readyz_follows_redis(
    make_app: Callable[..., AppServer],
) -> None:
    redis = RedisServer()  # its port is reserved, nothing listens yet
    try:
        server = make_app(env={"REDIS_URL": redis.url}, wait="/healthz")
        assert server.get("/readyz")[0] == 503

        def says_redis() -> bool:
            return server.get("/readyz")[1].get("reason", "").startswith("redis unavailable")

        wait_until(says_redis, 10, "/readyz to blame Redis")
        status, body = server.get("/readyz")
        assert status == 503 and body["ready"] is False and body["color"] == "blue"
        assert server.process.poll() is None

        redis.start()
        server.wait_status("/readyz", 200)
        assert server.get("/readyz")[1] == {"ready": True, "color": "blue"}
    finally:
        redis.cleanup()


def test_readyz_names_the_colour(make_app: Callable[..., AppServer]) -> None:
    server = make_app(env={"APP_COLOR": "green"})
    assert server.get("/readyz") == (200, {"ready": True, "color": "green"})
    assert server.get("/healthz") == (200, {"status": "ok"})


def test_readyz_turns_503_when_redis_goes_away_and_back_when_it_returns(
    make_app: Callable[..., AppServer], redis_server: RedisServer
) -> None:
    server = make_app(env={"REDIS_URL": redis_server.url})
    redis_server.stop()
    server.wait_status("/readyz", 503)
    assert server.get("/healthz")[0] == 200
    redis_server.start()
    server.wait_status("/readyz", 200)


def test_readyz_is_503_on_a_read_only_replica_that_answers_ping(
    make_app: Callable[..., AppServer], redis_server: RedisServer
) -> None:
    # A REDIS_URL left pointing at a demoted master: PING answered, every append refused
    # (READONLY), and /readyz said 200 (a hostile probe).
    replica = RedisServer().start()
    try:
        replica.cli("REPLICAOF", "127.0.0.1", str(redis_server.port))
        server = make_app(env={"REDIS_URL": replica.url}, wait="/healthz")

        def blames_read_only() -> bool:
            return "read only replica" in server.get("/readyz")[1].get("reason", "")

        wait_until(blames_read_only, 10, "/readyz to name the read-only replica")
        assert server.get("/readyz")[0] == 503
    finally:
        replica.cleanup()


def test_an_evicting_redis_is_named_in_the_log_once_ready(
    make_app: Callable[..., AppServer], redis_server: RedisServer
) -> None:
    redis_server.cli("CONFIG", "SET", "maxmemory-policy", "allkeys-lru")
    server = make_app(env={"REDIS_URL": redis_server.url})
    wait_until(lambda: "maxmemory-policy is allkeys-lru" in server.output(), 10, "the warning")
    assert "set maxmemory-policy noeviction" in server.output()


async def test_sigterm_flips_readiness_then_closes_every_socket_with_1012(
    make_app: Callable[..., AppServer],
) -> None:
    # A drain delay holds the sockets open after readiness flips, so the order is observable.
    server = make_app(env={"SHUTDOWN_DRAIN_DELAY": "1", "SHUTDOWN_TIMEOUT": "5"})
    clients = [await Client.connect(server.ws_url(f"room{i % 3}")) for i in range(12)]

    readiness_at_close: list[int] = []

    async def closed(client: Client) -> tuple[int | None, str | None]:
        try:
            while True:  # presence frames may come first; the close is what is awaited
                await client.ws.recv()
        except ConnectionClosed as exc:
            readiness_at_close.append(http_get(server.base + "/readyz")[0])
            return (exc.rcvd.code, exc.rcvd.reason) if exc.rcvd else (None, None)

    waiting = [asyncio.create_task(closed(c)) for c in clients]
    server.signal(signal.SIGTERM)
    await asyncio.to_thread(server.wait_status, "/readyz", 503, 5)
    # Readiness said 503 while every socket was still open.
    assert not any(task.done() for task in waiting)

    results = await asyncio.gather(*waiting)
    assert results == [(1012, "server restart")] * len(clients)
    assert await asyncio.to_thread(server.wait, 10) == 0
    assert "drained 12 websocket(s)" in server.output()


async def test_a_spread_drain_still_closes_every_socket_with_1012_within_the_budget(
    make_app: Callable[..., AppServer],
) -> None:
    """SHUTDOWN_DRAIN_SPREAD: the closes go out in batches; every client still gets 1012,
    and the process still exits 0 within SHUTDOWN_TIMEOUT."""
    budget = 3.0
    server = make_app(env={"SHUTDOWN_DRAIN_SPREAD": "1", "SHUTDOWN_TIMEOUT": str(budget)})
    clients = [await Client.connect(server.ws_url(f"room{i % 3}")) for i in range(12)]

    async def closed(client: Client) -> int | None:
        try:
            while True:
                await client.ws.recv()
        except ConnectionClosed as exc:
            return exc.rcvd.code if exc.rcvd else None

    waiting = [asyncio.create_task(closed(c)) for c in clients]
    signalled = time.monotonic()
    server.signal(signal.SIGTERM)
    assert await asyncio.gather(*waiting) == [1012] * len(clients)
    assert await asyncio.to_thread(server.wait, 10) == 0
    assert time.monotonic() - signalled < budget + BUDGET_MARGIN
    assert "drained 12 websocket(s)" in server.output()


async def test_new_handshakes_are_refused_while_draining(make_app: Callable[..., AppServer]) -> None:
    from websockets.exceptions import InvalidStatus

    server = make_app(env={"SHUTDOWN_DRAIN_DELAY": "3"})
    holder = await Client.connect(server.ws_url())
    server.signal(signal.SIGTERM)
    await asyncio.to_thread(server.wait_status, "/readyz", 503, 5)
    with pytest.raises(InvalidStatus) as info:
        await Client.connect(server.ws_url())
    assert info.value.response.status_code == 503
    await holder.close()


# Interpreter start-up and teardown around the drain, not part of the drain's budget.
BUDGET_MARGIN = 1.0


async def test_exits_zero_within_budget_when_a_client_never_answers_the_close(
    make_app: Callable[..., AppServer],
) -> None:
    budget = 2.0
    server = make_app(env={"SHUTDOWN_TIMEOUT": str(budget)})
    # A raw client that completes the handshake (101) and then never reads or answers.
    sock = wsraw.open_socket(server.port)
    signalled = time.monotonic()
    server.signal(signal.SIGTERM)
    assert await asyncio.to_thread(server.wait, 10) == 0
    # The budget is the contract: gone within SHUTDOWN_TIMEOUT, plus process teardown.
    assert time.monotonic() - signalled < budget + BUDGET_MARGIN
    sock.close()


async def test_a_client_whose_own_close_is_still_flushing_does_not_fail_the_exit(
    make_app: Callable[..., AppServer],
) -> None:
    # A client that stopped reading mid-replay and then closed: the answer to its close waits
    # behind megabytes it will never read. uvicorn's shutdown sent that connection a second
    # close, websockets refused it (InvalidState), and the process exited 1 with tracebacks.
    server = make_app(env={"CHAT_MAX_MESSAGE_CHARS": "4000", "CHAT_RATE_PER_SECOND": "10000",
                           "CHAT_RATE_BURST": "10000"})
    seeder = await Client.connect(server.ws_url("big"))
    for i in range(300):  # 16 KB each: 4.8 MB, beyond what the kernel's buffers hold
        await seeder.post("\U0001F600" * 3990, client_id=f"seed-{i}")
    await seeder.close()
    stalled = wsraw.open_socket(server.port, path="/ws/chat/big/?last=300", rcvbuf=4096)
    stalled.sendall(wsraw.frame(struct.pack("!H", 1000), opcode=0x8))  # and never reads
    assert http_get(server.base + "/healthz")[0] == 200  # its close has been read by now
    server.signal(signal.SIGTERM)
    assert await asyncio.to_thread(server.wait, 10) == 0
    assert "Traceback" not in server.output()
    stalled.close()


async def test_a_handshake_waiting_for_ready_is_refused_as_draining(
    make_app: Callable[..., AppServer],
) -> None:
    # Redis never answers, so a handshake waits (up to 10 s) for ready. A SIGTERM then used
    # to leave it waiting: uvicorn answered it 500, the drain took its whole budget, and the
    # application's own refusal failed with a traceback.
    unanswered = f"redis://127.0.0.1:{free_port()}/0"
    server = make_app(env={"REDIS_URL": unanswered, "SHUTDOWN_TIMEOUT": "5"}, wait="/healthz")
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(wsraw.HANDSHAKE.format(path="/ws/chat/lobby/", port=server.port).encode())
    await writer.drain()
    assert http_get(server.base + "/healthz")[0] == 200  # the handshake has been read by now
    server.signal(signal.SIGTERM)
    answer = await asyncio.wait_for(reader.read(), 10)
    assert answer.startswith(b"HTTP/1.1 503 ")
    assert answer.endswith(b'{"type": "error", "code": "draining"}')
    assert await asyncio.to_thread(server.wait, 10) == 0
    output = server.output()
    assert "Traceback" not in output and "timeout graceful shutdown exceeded" not in output
    assert "not ready: draining" not in output  # warm-up stops trying; Redis's error stays named
    writer.close()


async def test_a_request_body_still_arriving_does_not_hold_the_drain(
    make_app: Callable[..., AppServer],
) -> None:
    # Its deadline (CHAT_HANDSHAKE_TIMEOUT) is longer than the drain's budget here: uvicorn
    # waited for the rest of the body until the budget ran out, then cancelled.
    server = make_app(env={"CHAT_HANDSHAKE_TIMEOUT": "30", "SHUTDOWN_TIMEOUT": "5",
                           "CHAT_API_TOKEN": "t" * 32})
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"POST /api/rooms/lobby/messages HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"message\": ")
    await writer.drain()
    assert http_get(server.base + "/healthz")[0] == 200  # the head has been read by now
    server.signal(signal.SIGTERM)
    await asyncio.wait_for(reader.read(), 10)  # the server ends the connection
    assert await asyncio.to_thread(server.wait, 10) == 0
    assert "timeout graceful shutdown exceeded" not in server.output()
    writer.close()


async def test_a_send_still_waiting_for_replicas_when_the_budget_ends_exits_quietly(
    make_app: Callable[..., AppServer], redis_server: RedisServer
) -> None:
    # Acks wait for a replica this Redis does not have, longer than the shutdown budget: the
    # send is still in its WAIT when uvicorn cancels what is left. Its client was told 1012
    # and resends it; the cancel is the end of that connection, not an application error
    # (it was logged as "Exception in ASGI application" with a traceback per waiting send).
    server = make_app(env={"REDIS_URL": redis_server.url, "CHAT_REDIS_MIN_REPLICAS": "1",
                           "CHAT_REDIS_WAIT_TIMEOUT": "4", "SHUTDOWN_TIMEOUT": "1"})
    client = await Client.connect(server.ws_url())
    await client.send("waits for a replica", client_id="w-1")

    probe = aioredis.from_url(redis_server.url)
    while b"cmd=wait" not in await probe.execute_command("CLIENT", "LIST"):
        await asyncio.sleep(0.02)  # polls Redis for the WAIT's arrival: no event to await
    await probe.aclose()
    server.signal(signal.SIGTERM)
    assert await asyncio.to_thread(server.wait, 10) == 0
    output = server.output()
    assert "Traceback" not in output and "Exception in ASGI application" not in output
    await client.close()


def test_sigint_is_a_graceful_exit_too(make_app: Callable[..., AppServer]) -> None:
    server = make_app()
    server.signal(signal.SIGINT)
    assert server.wait(10) == 0


async def test_a_second_ctrl_c_forces_the_exit_without_a_traceback(
    make_app: Callable[..., AppServer],
) -> None:
    # uvicorn's force exit skips lifespan shutdown and cancels its task: that was logged as
    # "Exception in 'lifespan' protocol" with a CancelledError traceback.
    server = make_app(env={"SHUTDOWN_DRAIN_DELAY": "5", "SHUTDOWN_TIMEOUT": "8"})
    holder = await Client.connect(server.ws_url())
    server.signal(signal.SIGINT)
    await asyncio.to_thread(server.wait_status, "/readyz", 503, 5)
    server.signal(signal.SIGINT)
    await asyncio.to_thread(server.wait, 10)
    output = server.output()
    assert "Exception in 'lifespan'" not in output and "Traceback" not in output
    await holder.close()


def test_configuration_errors_stop_the_process_with_a_clear_message(
    make_app: Callable[..., AppServer],
) -> None:
    server = make_app(env={"CHAT_LAYER": "bogus"}, wait=None)
    assert server.wait(10) == 2
    assert "configuration error: CHAT_LAYER must be" in server.output()


def test_django_pages_are_served_after_ready(app_server: AppServer) -> None:
    status, body = http_get(app_server.base + "/")
    assert status == 200 and b"<html" in body.lower()
    assert http_get(app_server.base + "/no-such-page")[0] == 404
