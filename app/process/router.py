"""The ASGI application: a small router in front of Django.

Probes and metrics are answered here from memory; chat WebSockets go to the chat routes once
the process is warm; every other HTTP path goes to the Django ASGI app, built lazily.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from typing import TYPE_CHECKING

from app import metrics
from app.chat.admission import JSON_HEADERS, Receive, Scope, Send, deny, header, origin_allowed
from app.config import Config
from app.process.budget import ShutdownBudget
from app.process.lifecycle import HEALTHZ, Lifecycle

if TYPE_CHECKING:  # wiring imports the chat stack, which /healthz must not wait for
    from app.process.wiring import WebSocketApp, Wired

logger = logging.getLogger("parley")

WS_READY_WAIT = 10.0


Headers = list[tuple[bytes, bytes]]


async def respond(send: Send, status: int, body: bytes, headers: Headers | None = None) -> None:
    headers = (headers or JSON_HEADERS) + [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Router:
    """ASGI entry point. Owns the process lifecycle and starts warm-up on first need."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.lifecycle = Lifecycle(config.color)
        self.budget = ShutdownBudget(config.shutdown_timeout)
        self.defer_start = False
        self.wired: Wired | None = None
        self._wiring_done = asyncio.Event()  # set once warm-up has wired the chat (or failed)
        self._warmup: asyncio.Task[None] | None = None
        self._http_app: WebSocketApp | None = None
        self._http_app_task: asyncio.Future[WebSocketApp] | None = None
        # Admitted chat sockets, counted from admission to exit so the cap is exact even for
        # a burst of handshakes that are all still replaying history.
        self.admitted = 0

    def start(self) -> None:
        """Begin warm-up (idempotent). The uvicorn entry point calls this once listening."""
        if self._warmup is None:
            self._warmup = asyncio.get_running_loop().create_task(self._warm_up())
            self._warmup.add_done_callback(self._warmup_done)

    async def _warm_up(self) -> None:
        # Importing warm-up (and with it the chat protocol, history and watchers) takes
        # ~9 ms: in a thread, so the first probes after listen don't queue behind it.
        warmup = await asyncio.to_thread(importlib.import_module, "app.process.warmup")
        await warmup.warm_up(self.config, self.lifecycle, self._loaded, self._build_http_app)

    def _loaded(self, wired: Wired) -> None:
        self.wired = wired
        self._wiring_done.set()

    def _warmup_done(self, task: asyncio.Task[None]) -> None:
        self._wiring_done.set()  # an HTTP request waiting on a failed warm-up gets its error
        if not task.cancelled() and task.exception() is not None:
            logger.error("warm-up failed", exc_info=task.exception())
            self.lifecycle.set_failed(f"warm-up failed: {task.exception()}"[:200])

    def _build_http_app(self) -> asyncio.Future[WebSocketApp]:
        if self._http_app_task is None:
            self._http_app_task = asyncio.ensure_future(self._http_app_when_wired())
        return self._http_app_task

    async def _http_app_when_wired(self) -> WebSocketApp:
        # The views need the wired chat services; a request before that waits for warm-up.
        await self._wiring_done.wait()
        if self.wired is None:
            raise RuntimeError("warm-up failed: the HTTP app has no chat services")
        from app.process.wiring import django_http_app

        return await asyncio.to_thread(django_http_app, self.wired.chat)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            path = scope["path"]
            if path == "/healthz":
                return await respond(send, 200, HEALTHZ)
            if self._warmup is None and not self.defer_start:
                self.start()
            if path == "/readyz":
                status, body = self.lifecycle.readyz
                return await respond(send, status, body)
            if path == "/accept-traffic":
                full = self.admitted >= self.config.max_connections
                status, body = self.lifecycle.full if full else self.lifecycle.accept_traffic
                return await respond(send, status, body)
            if path == "/metrics":
                return await _metrics(send)
            if self._http_app is None:
                self._http_app = await self._build_http_app()
            return await self._http_app(scope, receive, send)
        if kind == "websocket":
            return await self._websocket(scope, receive, send)
        if kind == "lifespan":
            return await self._lifespan(receive, send)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._warmup is None and not self.defer_start:
            self.start()
        if self.lifecycle.draining:
            return await deny(scope, receive, send, 503, "draining")
        if not await self.lifecycle.wait_ready(WS_READY_WAIT) or self.wired is None:
            code = "draining" if self.lifecycle.draining else "not_ready"
            return await deny(scope, receive, send, 503, code)
        origin = header(scope, b"origin")
        if not origin_allowed(origin, header(scope, b"host"), self.config.allowed_origins):
            return await deny(scope, receive, send, 403, "origin_not_allowed")
        if self.admitted >= self.config.max_connections:
            return await deny(scope, receive, send, 503, "too_many_connections")
        self.admitted += 1
        try:
            await self.wired.websocket_app(scope, receive, send)
        finally:
            self.admitted -= 1

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        try:
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    if not self.defer_start:
                        self.start()
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await self._close_services()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        except asyncio.CancelledError:
            # A forced exit (a second Ctrl-C) skips lifespan shutdown and cancels this task
            # at the end: uvicorn logged that as an error in the application, with a traceback.
            return

    async def _close_services(self) -> None:
        if self._warmup is not None:
            self._warmup.cancel()
        if self.wired is None:
            return
        try:
            # The last step of the drain: whatever the budget has left, never a fixed time.
            await asyncio.wait_for(self.wired.chat.close(), max(self.budget.remaining(), 0.01))
        except Exception:  # Redis already gone or out of time: exiting either way
            logger.debug("closing services did not finish", exc_info=True)


async def _metrics(send: Send) -> None:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    metrics.load()  # the collectors must be registered before the first scrape
    await respond(send, 200, generate_latest(), [(b"content-type", CONTENT_TYPE_LATEST.encode())])


def create_application(config: Config) -> Router:
    return Router(config)
