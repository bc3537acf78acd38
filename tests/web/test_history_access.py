"""Issue 16 item 7: with ``CHAT_AUTH=jwt`` a room's history is read only with a token that
grants the room (or the backends' ``CHAT_API_TOKEN``). Real ``python -m app`` over HTTP."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable

import pytest

from app.chat.auth import mint
from tests.support import AppServer

SECRET = "integrity-secret-" + "x" * 40
API_TOKEN = "backend-token"


def token(sub: str, rooms: list[str] | str = "*", ttl: int = 600) -> str:
    return mint(sub, rooms, ttl, SECRET)


def get(server: AppServer, path: str, authorization: str | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(server.base + path)
    if authorization is not None:
        request.add_header("Authorization", authorization)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture(params=["memory", "redis"])
def server(request: pytest.FixtureRequest, make_app: Callable[..., AppServer]) -> AppServer:
    env = {"CHAT_AUTH": "jwt", "CHAT_JWT_SECRET": SECRET, "CHAT_API_TOKEN": API_TOKEN}
    if request.param == "redis":
        env["REDIS_URL"] = request.getfixturevalue("redis_server").url
    return make_app(env=env)


def test_history_needs_a_token_that_grants_the_room(server: AppServer) -> None:
    path = "/api/rooms/secret/messages"
    status, body = get(server, path)
    assert (status, body["code"]) == (401, "missing_token")
    assert get(server, path, "Bearer not-a-jwt")[0] == 401
    assert get(server, path, f"Bearer {token('eve', ['other'])}") [0] == 403
    assert get(server, path, f"Bearer {token('eve', ['other'], ttl=-5)}")[0] == 401
    assert get(server, path, f"Bearer {token('ann', ['secret'])}")[0] == 200
    assert get(server, path, f"Bearer {API_TOKEN}")[0] == 200  # backends keep working
    # Read as a chat token's header is: the scheme in any case, spaces around the token.
    assert get(server, path, f"bearer {API_TOKEN} ")[0] == 200
    assert get(server, path, f"Bearer {API_TOKEN}x")[0] == 401


def test_refused_reads_write_no_log_line_each(server: AppServer) -> None:
    # Django logged "Unauthorized: /api/..." for every 4xx of its views: a line per request
    # that anyone could make by the thousand (refused handshakes are throttled lines).
    for _ in range(20):
        assert get(server, "/api/rooms/secret/messages")[0] == 401
        assert get(server, "/api/rooms/secret/messages?limit=0", f"Bearer {API_TOKEN}")[0] == 400
    output = server.output()
    assert "Unauthorized" not in output and "Bad Request" not in output
