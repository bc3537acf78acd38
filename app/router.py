"""The ASGI application: a small router in front of Django.

Probes and metrics are answered here from memory; chat WebSockets go to Channels once the
process is warm; every other HTTP path goes to the Django ASGI app, built lazily.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
from typing import Any, Awaitable, Callable

from app import metrics
from app.config import CONFIG, Config
from app.lifecycle import HEALTHZ, JSON_HEADERS, Lifecycle
from app.origins import header, origin_allowed

logger = logging.getLogger("parley")

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

WS_READY_WAIT = 10.0


async def respond(send: Send, status: int, body: bytes, headers: list | None = None) -> None:
    headers = (headers or JSON_HEADERS) + [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def deny_websocket(scope: dict, receive: Receive, send: Send, status: int, code: str) -> None:
    """Receive the handshake's ``websocket.connect``, then refuse it."""
    message = await receive()
    if message["type"] == "websocket.connect":
        await refuse_handshake(scope, send, status, code)


async def refuse_handshake(scope: dict, send: Send, status: int, code: str) -> None:
    """Refuse a handshake with an HTTP status and a JSON reason where the server can say so."""
    # Counted before answering, so a client that reads the metrics next sees it.
    metrics.HANDSHAKES_REFUSED.labels(code).inc()
    if "websocket.http.response" in scope.get("extensions", {}):
        body = json.dumps({"type": "error", "code": code}).encode()
        await send({"type": "websocket.http.response.start", "status": status, "headers": JSON_HEADERS})
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": 1008 if status == 403 else 1013})


class Router:
    """ASGI entry point. Owns the process lifecycle and starts warm-up on first need."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.lifecycle = Lifecycle(config.color)
        self.defer_start = False
        self._warmup: asyncio.Task[None] | None = None
        self._http_app: Any = None
        self._http_app_task: asyncio.Future[Any] | None = None
        self._sockets = 0

    def start(self) -> None:
        """Begin warm-up (idempotent). The uvicorn entry point calls this once listening."""
        if self._warmup is None:
            self._warmup = asyncio.get_running_loop().create_task(self._warm_up())
            self._warmup.add_done_callback(self._warmup_done)

    async def _warm_up(self) -> None:
        # Importing warm-up (and with it the chat protocol, history and watchers) takes
        # ~9 ms: in a thread, so the first probes after listen don't queue behind it.
        warmup = await asyncio.to_thread(importlib.import_module, "app.warmup")
        await warmup.warm_up(self.lifecycle, self._build_http_app)

    def _warmup_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            logger.error("warm-up failed", exc_info=task.exception())
            self.lifecycle.set_unavailable(f"warm-up failed: {task.exception()}"[:200])

    def _build_http_app(self) -> asyncio.Future[Any]:
        if self._http_app_task is None:
            self._http_app_task = asyncio.ensure_future(asyncio.to_thread(_django_http_app))
        return self._http_app_task

    async def __call__(self, scope: dict, receive: Receive, send: Send) -> None:
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
            if path == "/metrics":
                return await _metrics(send)
            if self._http_app is None:
                self._http_app = await self._build_http_app()
            return await self._http_app(scope, receive, send)
        if kind == "websocket":
            return await self._websocket(scope, receive, send)
        if kind == "lifespan":
            return await self._lifespan(receive, send)

    async def _websocket(self, scope: dict, receive: Receive, send: Send) -> None:
        if self._warmup is None and not self.defer_start:
            self.start()
        if self.lifecycle.draining:
            return await deny_websocket(scope, receive, send, 503, "draining")
        if not await self.lifecycle.wait_ready(WS_READY_WAIT):
            return await deny_websocket(scope, receive, send, 503, "not_ready")
        origin = header(scope, b"origin")
        if not origin_allowed(origin, header(scope, b"host"), self.config.allowed_origins):
            return await deny_websocket(scope, receive, send, 403, "origin_not_allowed")
        # Counted here, from admission to exit, so the cap is exact even for a burst of
        # handshakes that are all still replaying history.
        if self._sockets >= self.config.max_connections:
            return await deny_websocket(scope, receive, send, 503, "too_many_connections")
        from app import services

        self._sockets += 1
        try:
            await services.get().websocket_app(scope, receive, send)
        finally:
            self._sockets -= 1

    async def _lifespan(self, receive: Receive, send: Send) -> None:
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

    async def _close_services(self) -> None:
        if self._warmup is not None:
            self._warmup.cancel()
        from app import services

        try:
            await asyncio.wait_for(services.get().close(), 1.0)
        except Exception:  # nothing to close, or Redis already gone: exiting either way
            pass


def _django_http_app() -> Any:
    from app import services

    services.load()
    from django.core.asgi import get_asgi_application
    from django.urls import get_resolver

    handler = get_asgi_application()
    get_resolver().url_patterns  # import the URLconf and views now, not on a user's request
    return handler


async def _metrics(send: Send) -> None:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    metrics.load()  # the collectors must be registered before the first scrape
    await respond(send, 200, generate_latest(), [(b"content-type", CONTENT_TYPE_LATEST.encode())])


def create_application(config: Config = CONFIG) -> Router:
    return Router(config)
