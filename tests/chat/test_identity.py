"""Issue 16 items 6 and 7: identities, not guessable strings, decide who owns a send, and a
connection lasts no longer than its token.

Real ``python -m app`` processes with ``CHAT_AUTH=jwt`` and real WebSocket clients.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from websockets.exceptions import ConnectionClosed

from app.chat.auth import mint
from tests.support import AppServer, Client

SECRET = "integrity-secret-" + "x" * 40
API_TOKEN = "backend-token"


@pytest.fixture(params=["memory", "redis"])
def server(request: pytest.FixtureRequest, make_app: Callable[..., AppServer]) -> AppServer:
    env = {"CHAT_AUTH": "jwt", "CHAT_JWT_SECRET": SECRET, "CHAT_API_TOKEN": API_TOKEN}
    if request.param == "redis":
        env["REDIS_URL"] = request.getfixturevalue("redis_server").url
    return make_app(env=env)


def token(sub: str, rooms: list[str] | str = "*", ttl: int = 600) -> str:
    return mint(sub, rooms, ttl, SECRET)


async def test_another_users_client_id_cannot_swallow_yours(server: AppServer) -> None:
    alice = await Client.connect(server.ws_url("r", token=token("alice")))
    bob = await Client.connect(server.ws_url("r", token=token("bob")))
    first = await alice.post("from alice", client_id="c-1")
    second = await bob.post("from bob", client_id="c-1")
    assert (first["id"], second["id"]) == (1, 2)  # bob's is a message of its own
    assert [(m["user"], m["message"]) for m in await alice.messages(2)] == [
        ("alice", "from alice"), ("bob", "from bob")]
    again = await alice.post("from alice", client_id="c-1")  # alice's own resend: deduplicated
    assert again["id"] == 1
    await alice.close()
    await bob.close()


async def test_a_connection_is_closed_when_its_token_expires(server: AppServer) -> None:
    """Close 4001 "token expired": the client fetches a new token and resumes."""
    member = await Client.connect(server.ws_url("r", token=token("ann", ttl=2)))
    with pytest.raises(ConnectionClosed) as info:
        while True:
            await member.recv(timeout=15)
    assert info.value.rcvd is not None
    assert (info.value.rcvd.code, info.value.rcvd.reason) == (4001, "token expired")
    epoch, last = member.ready["epoch"], member.ready["last_id"]
    again = await Client.connect(server.ws_url("r", token=token("ann"), since=last, epoch=epoch))
    assert again.ready["epoch"] == epoch
    await again.close()
