"""A Locust user that joins a chat room over WebSocket and chats.

Each user opens ``/ws/chat/<room>/`` (room ``locust-<k>``, k < ``--rooms``), then sends
messages and waits for its own copy to come back. Both are Locust request events of type
``WS``: ``connect`` (the WebSocket handshake) and ``message round trip`` (send until the
same text comes back; Parley's ``ready`` and ``ack`` frames are skipped, so the floor works
too), so Locust's statistics, charts and UI show them.

    locust -f scripts/locustfile.py --host ws://127.0.0.1:8000
    make locust          # a short bounded headless run (python -m scripts.locust_run)
"""

from __future__ import annotations

import json
import random
import secrets
import time
from contextlib import ExitStack
from typing import Any

from locust import User, between, events, task
from websockets.sync.client import connect

RECV_TIMEOUT = 10.0


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    parser.add_argument("--rooms", type=int, default=10, help="rooms the users spread over")


class ChatUser(User):
    """One chat member: connects once, then sends and awaits its echo, over and over."""

    wait_time = between(0.5, 1.5)

    def on_start(self) -> None:
        base = (self.host or "ws://127.0.0.1:8000").replace("http://", "ws://").rstrip("/")
        self.room = f"locust-{random.randrange(max(1, self.environment.parsed_options.rooms))}"
        self.ws = None
        self.sockets = ExitStack()
        started = time.perf_counter()
        try:
            self.ws = self.sockets.enter_context(
                connect(f"{base}/ws/chat/{self.room}/", open_timeout=RECV_TIMEOUT, compression=None)
            )
            self._fire("connect", started, None)
        except Exception as exc:  # Locust counts it as a failure; the user then idles
            self._fire("connect", started, exc)

    def on_stop(self) -> None:
        self.sockets.close()

    @task
    def chat(self) -> None:
        if self.ws is None:
            return
        nonce = f"locust-{secrets.token_hex(6)}"
        started = time.perf_counter()
        try:
            self.ws.send(json.dumps({"message": nonce}))
            deadline = started + RECV_TIMEOUT
            while True:
                frame = json.loads(self.ws.recv(timeout=max(deadline - time.perf_counter(), 0.01)))
                if frame.get("message") == nonce:
                    break
            self._fire("message round trip", started, None)
        except Exception as exc:
            self._fire("message round trip", started, exc)
            self.sockets.close()
            self.ws = None

    def _fire(self, name: str, started: float, exc: Exception | None) -> None:
        self.environment.events.request.fire(
            request_type="WS", name=name, response_time=(time.perf_counter() - started) * 1000,
            response_length=0, exception=exc, context={"room": self.room},
        )
