"""The process-wide parts chat needs once warm: channel layer, history, WebSocket routes."""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from app import metrics
from app.config import CONFIG
from app.history import Appended, History
from app.protocol import FrameTemplate
from app.rooms import group_name

logger = logging.getLogger("parley")

READINESS_GROUP = "parley.readiness"

ASGIApp = Callable[[dict, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]


@dataclass
class Services:
    """What a chat connection uses; built once, in a worker thread, by ``load``."""

    layer: Any
    history: History
    websocket_app: ASGIApp

    async def check(self, timeout: float) -> None:
        """One channel-layer round trip and a history ping; raise if either fails."""

        async def round_trip() -> None:
            # Through a group: with Redis that is a real SUBSCRIBE, PUBLISH and delivery.
            channel = await self.layer.new_channel()
            await self.layer.group_add(READINESS_GROUP, channel)
            try:
                await self.layer.group_send(READINESS_GROUP, {"type": "probe"})
                await self.layer.receive(channel)
            finally:
                await self.layer.group_discard(READINESS_GROUP, channel)

        await asyncio.wait_for(round_trip(), timeout)
        await asyncio.wait_for(self.history.ping(), timeout)

    async def post(self, room: str, template: FrameTemplate, client_id: str | None) -> Appended:
        """Record a message, then broadcast it to the room unless it was a resend.

        Raises HistoryUnavailable when the message could not be made durable: it is then
        never broadcast, so no client sees a message that could be lost.
        """
        appended = await self.history.append(room, template, client_id)
        if not appended.duplicate:
            event = {"type": "chat.message", "id": appended.id, "frame": appended.frame}
            try:
                await self.layer.group_send(group_name(room), event)
                metrics.MESSAGES_BROADCAST.inc()
            except Exception as exc:
                # Durable already: members fill the hole from history (next message or tick).
                logger.warning("broadcast of %s#%d failed: %s", room, appended.id, exc)
        return appended

    async def close(self) -> None:
        await self.history.close()
        flush = getattr(self.layer, "flush", None)
        if flush is not None and CONFIG.redis_enabled:
            await flush()


_services: Services | None = None


def load() -> Services:
    """Set Django up and import the chat stack. Blocking: run it in a thread."""
    global _services
    if _services is None:
        _setup_django()
        from channels.layers import get_channel_layer

        from app.history import create_history
        from app.routing import websocket_application

        if CONFIG.auth == "jwt":
            import app.auth  # noqa: F401  (PyJWT: ~40 ms, paid only when tokens are used)

        _services = Services(
            layer=get_channel_layer(),
            history=create_history(CONFIG),
            websocket_app=websocket_application,
        )
    return _services


def _setup_django() -> None:
    """``django.setup(set_prefix=False)``, minus its unconditional ``import django.urls``.

    That import pulls in django.http and django.db.models (~100 ms here) that chat never
    uses; the HTTP app, built after ready, imports them then.
    """
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "app.settings")
    from django.apps import apps
    from django.conf import settings

    if settings.LOGGING_CONFIG:  # None here: uvicorn's logging setup stays in charge
        from django.utils.log import configure_logging

        configure_logging(settings.LOGGING_CONFIG, settings.LOGGING)
    apps.populate(settings.INSTALLED_APPS)


def get() -> Services:
    """The loaded services; only called by code that runs after warm-up."""
    if _services is None:
        raise RuntimeError("chat services are not loaded yet")
    return _services
