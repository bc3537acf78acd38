"""Every environment variable the service reads, parsed once at boot.

This is the only module that touches ``os.environ``; everything else imports ``CONFIG``.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field

from app.redis_url import parse_redis_url

MIN_JWT_SECRET_BYTES = 32
# WAIT blocks the connection; it must answer before the client's socket timeout (5 s).
MAX_WAIT_TIMEOUT = 5.0
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


class ConfigError(ValueError):
    """An environment variable has a value the service cannot run with."""


@dataclass(frozen=True)
class Config:
    """The service's settings, with the defaults of the embedded single-process mode."""

    host: str = "127.0.0.1"
    port: int = 8000
    color: str = "blue"
    debug: bool = False
    log_level: str = "info"
    django_secret_key: str = field(default_factory=lambda: secrets.token_urlsafe(48))
    allowed_hosts: tuple[str, ...] = ("*",)
    redis_urls: tuple[str, ...] = ()
    redis_cluster: bool = False  # redis_urls are a Redis Cluster's seed nodes
    redis_min_replicas: int = 0  # replicas that must have a message before it is acked
    redis_wait_timeout: float = 0.5  # seconds an append waits for them
    layer: str = "pubsub"
    layer_capacity: int = 500
    max_message_chars: int = 4000
    max_frame_bytes: int = 65536
    history_max: int = 1000
    history_ttl: int = 7 * 24 * 3600
    dedupe_ttl: int = 600
    api_token: str = ""
    allowed_origins: tuple[str, ...] = ()
    shutdown_drain_delay: float = 0.0
    shutdown_timeout: float = 5.0
    shutdown_drain_spread: float = 0.0  # seconds the 1012 closes are spread over (0: at once)
    auth: str = "none"
    jwt_secret: str = ""
    jwt_audience: str = ""  # the ``aud`` tokens must name; "": tokens must name none
    rate_per_second: float = 20.0
    rate_burst: int = 40
    rate_strikes: int = 50
    max_connections: int = 20000
    send_timeout: float = 10.0
    ping_interval: float = 20.0
    ping_timeout: float = 20.0
    ws_compression: bool = False
    presence: bool = True
    presence_grace: float = 15.0
    handshake_timeout: float = 5.0
    history_max_bytes: int = 256 * 1024 * 1024

    @property
    def redis_enabled(self) -> bool:
        return bool(self.redis_urls)


def _bool(value: str, name: str) -> bool:
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ConfigError(f"{name} must be a boolean (true/false), got {value!r}")


# Above any sensible setting, below where a float stops meaning what it says.
NUMBER_CEILING = 10**12
# The longest SHUTDOWN_* setting, in seconds.
DRAIN_CEILING = 3600


def _number(value: str, name: str, kind: type, minimum: float, maximum: float) -> float | int:
    try:
        parsed = kind(value)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise ConfigError(f"{name} must be {what}, got {value!r}") from None
    # NaN compares false with everything, so it is refused by name rather than by range.
    if parsed != parsed or not minimum <= parsed <= maximum:
        open_ended = maximum == NUMBER_CEILING and not parsed > maximum  # NaN is not > either
        bound = f">= {minimum}" if open_ended else f"from {minimum} to {maximum}"
        raise ConfigError(f"{name} must be {bound}, got {value!r}")
    return parsed


def _header_safe(value: str) -> bool:
    return value.isascii() and value.isprintable() and value == value.strip()


def _list(value: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in value.split(",") if item.strip())


def load(environ: Mapping[str, str]) -> Config:
    """Build a Config from an environment mapping; raise ConfigError on any bad value."""
    env = {key: value for key, value in environ.items() if value != ""}
    kwargs: dict[str, object] = {}

    def num(var: str, attr: str, kind: type, minimum: float, maximum: float = NUMBER_CEILING) -> None:
        if var in env:
            kwargs[attr] = _number(env[var], var, kind, minimum, maximum)

    if "HOST" in env:
        kwargs["host"] = env["HOST"]
    num("PORT", "port", int, 0, 65535)
    if "APP_COLOR" in env:
        kwargs["color"] = env["APP_COLOR"]
    if "DEBUG" in env:
        kwargs["debug"] = _bool(env["DEBUG"], "DEBUG")
    if "LOG_LEVEL" in env:
        if env["LOG_LEVEL"].lower() not in LOG_LEVELS:
            raise ConfigError(f"LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, got {env['LOG_LEVEL']!r}")
        kwargs["log_level"] = env["LOG_LEVEL"].lower()
    if "DJANGO_SECRET_KEY" in env:
        kwargs["django_secret_key"] = env["DJANGO_SECRET_KEY"]
    if "DJANGO_ALLOWED_HOSTS" in env:
        kwargs["allowed_hosts"] = _list(env["DJANGO_ALLOWED_HOSTS"])
    if "REDIS_URL" in env:
        try:
            target = parse_redis_url(env["REDIS_URL"])
        except ValueError as exc:
            raise ConfigError(f"REDIS_URL: {exc}") from None
        kwargs["redis_urls"], kwargs["redis_cluster"] = target.urls, target.cluster
        # On a cluster an ack means "on a replica too" unless told otherwise.
        kwargs["redis_min_replicas"] = 1 if target.cluster else 0
    num("CHAT_REDIS_MIN_REPLICAS", "redis_min_replicas", int, 0)
    num("CHAT_REDIS_WAIT_TIMEOUT", "redis_wait_timeout", float, 0.001)
    if "CHAT_LAYER" in env:
        if env["CHAT_LAYER"] not in {"pubsub", "core"}:
            raise ConfigError(f"CHAT_LAYER must be 'pubsub' or 'core', got {env['CHAT_LAYER']!r}")
        kwargs["layer"] = env["CHAT_LAYER"]
    num("CHAT_LAYER_CAPACITY", "layer_capacity", int, 1)
    num("CHAT_MAX_MESSAGE_CHARS", "max_message_chars", int, 1)
    num("CHAT_MAX_FRAME_BYTES", "max_frame_bytes", int, 256)
    num("CHAT_HISTORY_MAX", "history_max", int, 1)
    num("CHAT_HISTORY_TTL", "history_ttl", int, 1)
    num("CHAT_DEDUPE_TTL", "dedupe_ttl", int, 1)
    if "CHAT_API_TOKEN" in env:
        kwargs["api_token"] = env["CHAT_API_TOKEN"]
    if "CHAT_ALLOWED_ORIGINS" in env:
        kwargs["allowed_origins"] = _list(env["CHAT_ALLOWED_ORIGINS"])
    # A drain is bounded by an hour: the hard stop's timer cannot hold more than ~9e9 s (a
    # larger value crashed it and left the drain unbounded), and no deploy should wait longer.
    num("SHUTDOWN_DRAIN_DELAY", "shutdown_drain_delay", float, 0, DRAIN_CEILING)
    num("SHUTDOWN_TIMEOUT", "shutdown_timeout", float, 0.1, DRAIN_CEILING)
    num("SHUTDOWN_DRAIN_SPREAD", "shutdown_drain_spread", float, 0, DRAIN_CEILING)
    if "CHAT_AUTH" in env:
        if env["CHAT_AUTH"] not in {"none", "jwt"}:
            raise ConfigError(f"CHAT_AUTH must be 'none' or 'jwt', got {env['CHAT_AUTH']!r}")
        kwargs["auth"] = env["CHAT_AUTH"]
    if "CHAT_JWT_SECRET" in env:
        kwargs["jwt_secret"] = env["CHAT_JWT_SECRET"]
    if "CHAT_JWT_AUDIENCE" in env:
        kwargs["jwt_audience"] = env["CHAT_JWT_AUDIENCE"]
    num("CHAT_RATE_PER_SECOND", "rate_per_second", float, 0.001)
    num("CHAT_RATE_BURST", "rate_burst", int, 1)
    num("CHAT_RATE_STRIKES", "rate_strikes", int, 1)
    num("CHAT_MAX_CONNECTIONS", "max_connections", int, 1)
    num("CHAT_SEND_TIMEOUT", "send_timeout", float, 0.1)
    num("CHAT_PING_INTERVAL", "ping_interval", float, 0)
    num("CHAT_PING_TIMEOUT", "ping_timeout", float, 0)
    num("CHAT_HANDSHAKE_TIMEOUT", "handshake_timeout", float, 0.05)
    num("CHAT_HISTORY_MAX_BYTES", "history_max_bytes", int, 1024 * 1024)

    if "CHAT_PRESENCE" in env:
        kwargs["presence"] = _bool(env["CHAT_PRESENCE"], "CHAT_PRESENCE")
    # At least a second: below it a hold barely outlives its heartbeat, so users flapped
    # out and back in a quiet room, and a join held for its round came after the leave.
    num("CHAT_PRESENCE_GRACE", "presence_grace", float, 1)

    if "CHAT_WS_COMPRESSION" in env:
        kwargs["ws_compression"] = _bool(env["CHAT_WS_COMPRESSION"], "CHAT_WS_COMPRESSION")

    config = Config(**kwargs)  # type: ignore[arg-type]
    if config.redis_cluster and config.layer == "core":
        raise ConfigError("CHAT_LAYER=core cannot run on a Redis Cluster (channels-redis issue #420)")
    if config.redis_wait_timeout >= MAX_WAIT_TIMEOUT:
        raise ConfigError(f"CHAT_REDIS_WAIT_TIMEOUT must be < {MAX_WAIT_TIMEOUT} (Redis socket timeout)")
    if config.auth == "jwt" and not config.jwt_secret:
        raise ConfigError("CHAT_AUTH=jwt needs CHAT_JWT_SECRET: refusing to start without it")
    if config.jwt_secret and len(config.jwt_secret.encode()) < MIN_JWT_SECRET_BYTES:
        raise ConfigError(f"CHAT_JWT_SECRET must be at least {MIN_JWT_SECRET_BYTES} bytes (HS256)")
    # A client sends it as an HTTP header value, stripped (app.chat.auth.bearer_token) and
    # read as latin-1: outer spaces or anything but printable ASCII could never be matched.
    if config.api_token and not _header_safe(config.api_token):
        raise ConfigError("CHAT_API_TOKEN must be printable ASCII with no leading or trailing spaces")
    return config


CONFIG: Config = load(os.environ)
