"""tools/swarm.py: what the load swarm sends, against a real server process."""

from __future__ import annotations

from collections.abc import Callable

from app.chat.auth import mint
from tools.procs import AppServer
from tools.swarm import Swarm
from tools.targets import require_loopback

SECRET = "s" * 32


def test_a_swarm_puts_its_query_on_every_chat_url(make_app: Callable[..., AppServer]) -> None:
    # With CHAT_AUTH=jwt a socket opens only if the token reaches the server in the URL.
    server = make_app(env={"CHAT_AUTH": "jwt", "CHAT_JWT_SECRET": SECRET})
    url = require_loopback(server.base)
    token = mint("swarm", "*", 60, SECRET)

    with Swarm(url, 4, 2, 4, query=f"last=0&token={token}") as swarm:
        assert swarm.connect(True)["connected"] == 4
    with Swarm(url, 2, 1, 2, open_timeout=5) as swarm:
        assert swarm.connect(True)["connected"] == 0
