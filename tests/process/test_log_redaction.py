"""Issue 16 item 7: credentials never reach the logs, at any level: a token in the query
(under any spelling the server decodes to ``token``) and the headers that carry one."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable

import pytest

from app.chat.auth import mint
from tests.support import AppServer, Client

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


@pytest.mark.parametrize("level", ["debug", "info"])
async def test_credentials_never_reach_the_logs(
    make_app: Callable[..., AppServer], level: str,
) -> None:
    server = make_app(env={"CHAT_AUTH": "jwt", "CHAT_JWT_SECRET": SECRET, "LOG_LEVEL": level})
    secret_token = token("ann")
    # ``%74oken`` is ``token`` once decoded: it authenticates, so it must be redacted too.
    url = server.ws_url("r") + f"?%74oken={secret_token}"
    member = await Client.connect(
        url,
        additional_headers={"Authorization": "Bearer HEADER-SECRET", "Cookie": "sid=COOKIE-SECRET"},
        subprotocols=["PROTOCOL-SECRET"],  # type: ignore[list-item]
    )
    assert member.ready["user"] == "ann"
    await member.close()
    get(server, "/api/rooms/r/messages", f"Bearer {secret_token}")
    server.stop()
    output = server.output()
    for secret in (secret_token, secret_token.split(".")[2], "HEADER-SECRET", "COOKIE-SECRET",
                   "PROTOCOL-SECRET"):
        assert secret not in output
    if level == "debug":
        assert "[redacted]" in output  # the lines are there, without what they carried
