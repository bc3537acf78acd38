"""The composition root: set Django up and build what chat needs, once, in a worker thread.

Everything below the process (the consumer, the HTTP views) gets the built services passed
in; nothing there imports this module.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from app.chat.admission import Receive, Scope, Send
from app.chat.services import ChatServices
from app.config import Config

WebSocketApp = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass(frozen=True)
class Wired:
    """The warm process's parts: chat services and the WebSocket application using them."""

    chat: ChatServices
    websocket_app: WebSocketApp


def load(config: Config) -> Wired:
    """Set Django up and import the chat stack. Blocking: run it in a thread."""
    setup_django()
    from channels.layers import get_channel_layer

    from app.chat.routes import websocket_application
    from app.history import create_history
    from app.presence import create_presence

    if config.auth == "jwt":
        import app.chat.auth  # noqa: F401  (PyJWT: ~40 ms, paid only when tokens are used)

    layer = get_channel_layer()
    chat = ChatServices(
        layer=layer,
        history=create_history(config),
        flush_layer_on_close=config.redis_enabled,
        presence=create_presence(config, layer),
    )
    return Wired(chat=chat, websocket_app=websocket_application(chat))


def setup_django() -> None:
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


def django_http_app(chat: ChatServices) -> WebSocketApp:
    """Django's ASGI app with its URLconf imported and its views given ``chat``. Blocking:
    run it in a thread. Not on the way to ready: the views import django.http (~100 ms)."""
    setup_django()
    from django.core.asgi import get_asgi_application
    from django.urls import get_resolver

    from app.web import views
    from app.web.body_limit import BodyLimit

    views.configure(chat)

    handler = BodyLimit(get_asgi_application(), views.body_rule)
    _ = get_resolver().url_patterns  # import the URLconf and views now, not on a user's request
    return handler
