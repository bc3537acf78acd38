"""Parsing the environment into Config."""

import pytest

from app.config import Config, ConfigError, load

pytestmark = pytest.mark.unit


def test_defaults_are_the_embedded_mode() -> None:
    config = load({})
    assert config.redis_urls == ()
    assert not config.redis_enabled
    assert (config.host, config.port, config.color) == ("127.0.0.1", 8000, "blue")
    assert config.debug is False
    assert config.shutdown_timeout == 5.0 and config.shutdown_drain_delay == 0.0
    assert config.shutdown_drain_spread == 0.0  # every 1012 at once unless asked
    assert config.max_message_chars == 4000
    assert config.auth == "none"


def test_values_are_parsed() -> None:
    config = load({
        "PORT": "9001", "APP_COLOR": "green", "DEBUG": "true",
        "REDIS_URL": " redis://a:6379/0 ", "SHUTDOWN_TIMEOUT": "2.5", "SHUTDOWN_DRAIN_SPREAD": "2",
        "CHAT_ALLOWED_ORIGINS": "https://x,https://y", "CHAT_LAYER": "core",
    })
    assert config.port == 9001 and config.color == "green" and config.debug
    assert config.redis_urls == ("redis://a:6379/0",)
    assert config.shutdown_timeout == 2.5 and config.shutdown_drain_spread == 2.0
    assert config.allowed_origins == ("https://x", "https://y")
    assert config.layer == "core"


def test_empty_values_mean_unset() -> None:
    config = load({"REDIS_URL": "", "PORT": ""})
    assert config.redis_urls == () and config.port == Config().port


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"PORT": "http"}, "PORT"),
        ({"DEBUG": "maybe"}, "DEBUG"),
        ({"SHUTDOWN_TIMEOUT": "-1"}, "SHUTDOWN_TIMEOUT"),
        ({"CHAT_LAYER": "bogus"}, "CHAT_LAYER"),
        ({"CHAT_AUTH": "basic"}, "CHAT_AUTH"),
        ({"CHAT_AUTH": "jwt"}, "CHAT_JWT_SECRET"),
        ({"CHAT_AUTH": "jwt", "CHAT_JWT_SECRET": "short"}, "at least 32 bytes"),
        # A client's header could never match these (stripped, read as latin-1).
        ({"CHAT_API_TOKEN": " padded-token "}, "CHAT_API_TOKEN"),
        ({"CHAT_API_TOKEN": "sécret-token"}, "CHAT_API_TOKEN"),
        ({"CHAT_API_TOKEN": "line\nbreak"}, "CHAT_API_TOKEN"),
        ({"PORT": "80000"}, "PORT must be from 0 to 65535"),
        ({"PORT": "-1"}, "PORT"),
        ({"LOG_LEVEL": "loud"}, "LOG_LEVEL must be one of"),
        ({"REDIS_URL": "notaurl"}, "REDIS_URL: expected redis://"),
        ({"REDIS_URL": "redis://a:6379,http://b"}, "'http://b'"),
        ({"REDIS_URL": "redis://"}, "names no host"),
        ({"REDIS_URL": "redis://a:99999"}, "bad port"),
        ({"REDIS_URL": "unix://"}, "no socket path"),
        ({"SHUTDOWN_TIMEOUT": "nan"}, "SHUTDOWN_TIMEOUT"),
        ({"SHUTDOWN_DRAIN_SPREAD": "-1"}, "SHUTDOWN_DRAIN_SPREAD"),
        # The hard stop's timer crashed past ~9e9 s, leaving the drain unbounded.
        ({"SHUTDOWN_TIMEOUT": "1e12"}, "SHUTDOWN_TIMEOUT must be from 0.1 to 3600"),
        ({"SHUTDOWN_DRAIN_DELAY": "3601"}, "SHUTDOWN_DRAIN_DELAY"),
        ({"CHAT_PING_INTERVAL": "inf"}, "CHAT_PING_INTERVAL"),
        ({"CHAT_HANDSHAKE_TIMEOUT": "0"}, "CHAT_HANDSHAKE_TIMEOUT"),
        ({"CHAT_HISTORY_MAX_BYTES": "1000"}, "CHAT_HISTORY_MAX_BYTES"),
        # Below a second, users flapped out and back in quiet rooms (a hold outlived its
        # heartbeat by nothing) and held-back joins reached clients after the leave.
        ({"CHAT_PRESENCE_GRACE": "0"}, "CHAT_PRESENCE_GRACE must be >= 1"),
        ({"CHAT_PRESENCE_GRACE": "0.5"}, "CHAT_PRESENCE_GRACE"),
        # Too big is said as such (it read "must be >= 1"), and a word is "an integer".
        ({"CHAT_HISTORY_TTL": "99999999999999"}, r"CHAT_HISTORY_TTL must be from 1 to 1000000000000"),
        ({"CHAT_HISTORY_MAX": "ten"}, "CHAT_HISTORY_MAX must be an integer"),
    ],
)
def test_bad_values_are_refused_by_name(env: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        load(env)


def test_django_secret_is_random_per_process_when_unset() -> None:
    assert load({}).django_secret_key != load({}).django_secret_key
    assert load({"DJANGO_SECRET_KEY": "k"}).django_secret_key == "k"


def test_redis_url_schemes_and_levels_that_run() -> None:
    for url in ("redis://a:1/0", "rediss://b", "unix:///run/redis.sock"):
        assert load({"REDIS_URL": url}).redis_urls == (url,)
    assert load({"LOG_LEVEL": "WARNING"}).log_level == "warning"
    assert load({"PORT": "65535"}).port == 65535 and load({"PORT": "0"}).port == 0
    assert load({"CHAT_HANDSHAKE_TIMEOUT": "0.5"}).handshake_timeout == 0.5
