"""The uvicorn entry point, with a shutdown that drains chat before uvicorn's own.

uvicorn's ``Server.shutdown`` closes sockets first and runs lifespan shutdown last, which is
too late to flip readiness or choose the close frame. ``ChatServer.shutdown`` does those
steps first, in order, then hands what is left to uvicorn within the same budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import socket
import threading
from collections.abc import Generator
from types import FrameType
from typing import cast

import uvicorn

from app import metrics
from app.chat.registry import REGISTRY
from app.config import Config
from app.process.handshake import guarded_protocols
from app.process.logs import log_config
from app.process.router import Router

logger = logging.getLogger("parley")

RESTART_CODE = 1012
RESTART_REASON = "server restart"
# Kept back from the budget for uvicorn's own steps after our drain (its fixed 0.1 s pause,
# closing leftover transports, lifespan shutdown).
UVICORN_RESERVE = 0.4
# Past the budget by this much, something did not let go (a hung close, a stuck thread):
# the process exits anyway, with status 1, so an orchestrator's SIGKILL is never needed.
HARD_STOP_MARGIN = 1.0


class ChatServer(uvicorn.Server):
    """uvicorn's Server with readiness-first, close-frame-second graceful shutdown."""

    def __init__(self, config: uvicorn.Config, router: Router, chat: Config) -> None:
        super().__init__(config)
        self._wake: tuple[asyncio.AbstractEventLoop, asyncio.Event] | None = None
        self.router = router
        self.chat = chat
        router.defer_start = True

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        logger.info("listening on http://%s:%d (pid %d, color=%s)", self.config.host,
                    self.config.port, os.getpid(), self.chat.color)
        # Warm-up starts once the socket listens, so /healthz never waits behind Django.
        self.router.start()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # The budget starts at the signal; readiness flips in the handler itself, and the
        # main loop wakes now rather than on uvicorn's next 0.1 s tick.
        if self.router.budget.started is None:
            self.router.budget.start()
            _hard_stop_after(self.chat.shutdown_timeout + HARD_STOP_MARGIN)
        self.router.lifecycle.begin_drain()
        super().handle_exit(sig, frame)
        if self._wake is not None:
            self._wake[0].call_soon_threadsafe(self._wake[1].set)

    async def main_loop(self) -> None:
        """uvicorn's tick loop (0.1 s), woken at once by a signal."""
        self._wake = (asyncio.get_running_loop(), asyncio.Event())
        counter = 0
        should_exit = await self.on_tick(counter)
        while not should_exit:
            counter = (counter + 1) % 864000
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.1):
                    await self._wake[1].wait()
            should_exit = await self.on_tick(counter)

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        with super().capture_signals():
            yield
            # A drain that finished is a clean exit: don't re-raise SIGTERM (status 143).
            self._captured_signals.clear()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """The drain, in order, all on the one budget that started at SIGTERM."""
        budget = self.router.budget
        budget.start()  # a shutdown without a signal (uvicorn's own exit) starts it here

        def remaining() -> float:
            return max(budget.remaining(reserve=UVICORN_RESERVE), 0.05)

        logger.info("shutting down: draining %d websocket(s)", len(REGISTRY))
        # 1. Not ready: load balancers stop routing here, new handshakes are refused, and
        # those still waiting for ready (a drain during warm-up) are refused now.
        self.router.lifecycle.begin_drain()
        self.router.lifecycle.release_waiters()
        metrics.READY.set(0)
        # Whatever exists now lives until the exit: no collection may walk it. The drain
        # allocates (a close and a disconnect per socket), and with 9,000 sockets one
        # collection of the middle generation walked their objects for 0.4 s, finding
        # nothing, on cores the clients' new colour needs for their reconnects.
        gc.freeze()

        # 2. Optional grace for the load balancer to notice, probes still answered.
        if self.chat.shutdown_drain_delay > 0:
            await asyncio.sleep(min(self.chat.shutdown_drain_delay, remaining()))

        # 3. Every chat socket gets 1012 "server restart": reconnect, elsewhere; spread over
        # SHUTDOWN_DRAIN_SPREAD, but never over more than half of what the budget leaves, so
        # the last batch's close handshakes still fit in it.
        spread = min(self.chat.shutdown_drain_spread, remaining() / 2)
        closed = await REGISTRY.close_all(RESTART_CODE, RESTART_REASON, timeout=remaining(), spread=spread)
        closes_sent = budget.elapsed()

        # 4. Stop listening, then let the connections accepted meanwhile register: uvicorn
        # stops listening and tells every registered connection to close in one step, and
        # one accepted just before (its connection_made still queued) escaped, held open
        # until its handshake deadline, past the budget (a half-sent handshake at SIGTERM:
        # uvicorn's "timeout graceful shutdown exceeded" after waiting for it).
        for server in self.servers:
            server.close()
        await asyncio.sleep(0)
        # 5. uvicorn's own steps: stop listening (done above: a no-op now), close leftovers,
        # wait, lifespan shutdown (which closes Redis with what is left). uvicorn declares the
        # timeout an int but only hands it to asyncio.wait_for, which takes seconds as a float.
        self.config.timeout_graceful_shutdown = cast(int, remaining())
        await super().shutdown(sockets=sockets)

        elapsed = budget.elapsed()
        metrics.DRAIN_SECONDS.set(elapsed)
        logger.info(
            "drained %d websocket(s) in %.3fs (close frames sent by %.3fs)", closed, elapsed, closes_sent
        )


def _hard_stop_after(seconds: float) -> None:
    def stop() -> None:
        logger.error("shutdown overran its budget by %.1fs; exiting with status 1", HARD_STOP_MARGIN)
        logging.shutdown()
        os._exit(1)

    timer = threading.Timer(seconds, stop)
    timer.daemon = True
    timer.start()


def build(chat: Config, router: Router) -> ChatServer:
    """A ChatServer for ``router`` with the fast protocol stack and the chat limits."""
    # httptools and websockets-sansio, with a request deadline, answered size limits, HTTP
    # answers left unread cut after CHAT_SEND_TIMEOUT, and the peer's pings metered like its frames.
    http_protocol, ws_protocol = guarded_protocols(
        chat.handshake_timeout, chat.rate_per_second, chat.rate_burst, chat.send_timeout
    )
    config = uvicorn.Config(
        router,
        host=chat.host,
        port=chat.port,
        loop="uvloop",
        http=http_protocol,
        ws=ws_protocol,
        lifespan="on",
        ws_max_size=chat.max_frame_bytes,
        # Off by default: chat frames are small, and deflate runs once per recipient.
        ws_per_message_deflate=chat.ws_compression,
        ws_ping_interval=chat.ping_interval or None,
        ws_ping_timeout=chat.ping_timeout or None,
        # uvicorn logs two lines per WebSocket at info; building those records costs more
        # than the filter that would drop them, so its logger is at warning unless
        # debugging. The service's own lifecycle lines come from the ``parley`` logger.
        log_level=chat.log_level if chat.log_level == "debug" else "warning",
        access_log=False,
        log_config=log_config(chat.log_level),
        timeout_graceful_shutdown=cast(int, chat.shutdown_timeout),  # a float is fine: see shutdown
        backlog=4096,
    )
    return ChatServer(config, router, chat)


def run(chat: Config, router: Router) -> int:
    server = build(chat, router)
    server.run()
    return 0 if server.started else 1
