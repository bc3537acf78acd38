"""tools/swarm.py: what the load swarm sends, against a real server process."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from app.chat.auth import mint
from app.protocol import message_template
from tools.procs import AppServer
from tools.swarm import PREFIX, Member, Swarm, Worker
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


def _worker() -> tuple[Worker, Member]:
    worker = Worker({"run": "r1", "rooms": 1, "indices": [0]})
    return worker, worker.members[0]


def _nonce(worker: Worker, seq: int) -> str:
    return f"{PREFIX}:{worker.spec['run']}:0:{seq}:{time.monotonic_ns()}"


def test_a_worker_counts_the_messages_of_parley_and_of_the_floor_alike() -> None:
    worker, member = _worker()
    first, second, third = (_nonce(worker, seq) for seq in range(3))

    worker._read(member, message_template("lt-r1-0", first, 1, "u", "c1").with_id(1))  # Parley's frame
    worker._read(member, json.dumps({"message": second}))  # the floor's (bench/floor.py)
    worker._read(member, json.dumps({"message": second}))  # a duplicate is not counted again

    assert (worker.received, member.duplicates, member.seen) == (2, 1, {"0", "1"})
    # An escape in the frame takes the JSON path, which must read the same text.
    worker._read(member, json.dumps({"message": third, "x": "\u00e9"}))
    assert worker.received == 3


def test_a_worker_ignores_frames_that_only_look_like_the_floors() -> None:
    worker, member = _worker()
    nonce = _nonce(worker, 0)

    worker._read(member, '{"message": "' + nonce)  # cut short: not JSON, not counted
    worker._read(member, json.dumps({"message": nonce.replace("r1", "other")}))  # another run's

    assert worker.received == 0
