"""Chat clients that stay connected across a blue/green cutover: a worker class for ``Swarm``.

Each client reconnects as the reference client does (docs/CLIENT.md, "Reconnecting"): after
close 1012 it waits uniform in [0, restart_jitter); after a failed attempt (refused, timed
out, closed before ``ready``) full jitter, uniform in [0, min(cap, base * 2**attempt)), then
``attempt += 1``; ``attempt`` goes back to 0 on ``ready``. An attempt lasts from the TCP
connect to ``ready`` (the connect timeout), and counts against the in-flight gate for all
that time. It resumes with ``?since=<last id>&epoch=<epoch>``, is *live* only once ``ready``
arrives, and then resends every unacknowledged message with its original ``client_id``.

Every ``ready`` and every close is stamped with ``time.monotonic_ns()`` in the socket's own
callback: CLOCK_MONOTONIC is system-wide on Linux, so the coordinator can measure from the
moment another process sent SIGTERM. What each client sent, had acknowledged and received
comes back by ``report`` for the zero-loss checks (scripts/drill.py's ``verify``).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from tools import wsclient
from tools.backoff import failure_delay, restart_delay
from tools.ledger import Ledger
from tools.swarm import describe_error

T = TypeVar("T")

RESTART = 1012
RETRY_LATER = ("unavailable", "rate_limited")  # the message stays first in the outbox
SEND_RETRY_DELAY = 1.0  # docs/CLIENT.md's sendRetryDelay
POLL = 0.05  # seconds between checks of a phase's condition; stamps never depend on it


def first_not_done(items: Sequence[T], done: Callable[[T], bool], start: int = 0) -> int:
    """The index of the first of ``items`` from ``start`` on that is not ``done`` (their
    length when all are); items before ``start`` are known done, and stay so."""
    while start < len(items) and done(items[start]):
        start += 1
    return start


def trickle_share(rate: float, mine: int, senders: int) -> float:
    """Messages per second a worker holding ``mine`` of all ``senders`` sends, so that all
    workers together send ``rate`` (each worker used to send all of it: 4 workers, 4x)."""
    return rate * mine / senders if senders and mine and rate > 0 else 0.0


@dataclass
class Client(Ledger):
    """One resuming client and everything it saw."""

    index: int
    room: str
    token: str | None = None
    ws: wsclient.WebSocket | None = None
    live: bool = False
    became_ready: asyncio.Event | None = None  # the current attempt's ``ready``
    transmitted: set[str] = field(default_factory=set)
    sent: int = 0
    resent: int = 0
    retried: int = 0  # ``unavailable`` / ``rate_limited`` answers, resent after a delay
    failed_attempts: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    readies: list[int] = field(default_factory=list)  # monotonic ns of every ``ready``
    closes: list[tuple[int, int]] = field(default_factory=list)  # (code, monotonic ns)

    def url(self, base: str) -> str:
        url = f"{base}/ws/chat/{self.room}/?since={self.last_id}"
        if self.epoch is not None:
            url += f"&epoch={self.epoch}"
        if self.token:
            url += f"&token={self.token}"
        return url

    def handle(self, raw: str) -> None:
        """One server frame, from the socket's callback (synchronous: no task per frame)."""
        frame = json.loads(raw)
        kind = frame.get("type")
        if self.book(frame):
            pass
        elif kind == "ready":
            self.readies.append(time.monotonic_ns())
            self.epoch = frame.get("epoch")
            if self.became_ready is not None:
                self.became_ready.set()
            if self.ws is not None:  # else ``ready`` came with the 101: see ``attach``
                self.go_live()
        elif kind == "error" and frame.get("code") in RETRY_LATER:
            # An error names no client_id: the outbox goes out again, same client_ids, and
            # the server's idempotency turns what it already stored into its first ack.
            self.retried += 1
            asyncio.get_running_loop().call_later(SEND_RETRY_DELAY, self.resend)
        elif kind == "error":
            self.errors.append(f"error frame {frame}")
        # presence, join, leave, presence_diff, typing: not what this measures

    def new_message(self) -> None:
        """Queue one message; it goes out now if live, else after the next ``ready``."""
        self.sent += 1
        client_id = secrets.token_hex(16)  # unguessable, as PROTOCOL.md asks
        self.pending[client_id] = f"cutover {self.index} #{self.sent}"
        if self.live:
            self.transmit(client_id, self.pending[client_id])

    def attach(self, ws: wsclient.WebSocket) -> None:
        """The attempt's socket is open; if its ``ready`` came in the same read as the 101
        (before ``connect`` returned it), the client goes live now."""
        self.ws = ws
        if self.became_ready is not None and self.became_ready.is_set():
            self.go_live()

    def resend(self) -> None:
        if self.live:
            for client_id, text in list(self.pending.items()):
                self.transmit(client_id, text)

    def go_live(self) -> None:
        """``ready`` on the current socket: live, and the outbox goes out in order."""
        self.live = True
        for client_id, text in list(self.pending.items()):
            self.transmit(client_id, text)

    def transmit(self, client_id: str, text: str) -> None:
        if self.ws is None:
            return
        try:
            self.ws.send(json.dumps({"message": text, "client_id": client_id}))
        except ConnectionError:
            return  # still pending: sent again after the next ready
        if client_id in self.transmitted:
            self.resent += 1  # written before, never acknowledged: the same client_id again
        self.transmitted.add(client_id)

    def closed(self, ws: wsclient.WebSocket) -> None:
        # Only a live socket's close is the server's doing; an attempt that never got its
        # ``ready`` (we abort it at the connect timeout) is counted as a failed attempt.
        if self.live:
            self.closes.append((ws.close_code or 1006, time.monotonic_ns()))
        self.live = False

    def record(self) -> dict[str, Any]:
        """What the coordinator's checks need, as plain data."""
        return {"index": self.index, "room": self.room, "received": self.received, "acked": self.acked,
                "pending": list(self.pending), "sent": self.sent, "resets": self.resets,
                "resent": self.resent, "retried": self.retried, "failed_attempts": self.failed_attempts,
                "failures": dict(self.failures), "closes": self.closes, "readies": self.readies,
                "errors": self.errors[:5]}


class CutoverWorker:
    """The clients of one process. Spec keys beyond Swarm's own: ``tokens`` (one per client
    index, or empty), ``room_size``, ``restart_jitter``, ``backoff_base``, ``backoff_cap``."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        tokens = spec.get("tokens") or []
        self.clients = [Client(i, f"cut-{spec['run']}-{i // spec['room_size']}",
                               tokens[i] if tokens else None) for i in spec["indices"]]
        self.by_index = {c.index: c for c in self.clients}
        self.gate = asyncio.Semaphore(spec["concurrency"])
        self.finishing = False
        self.tasks: list[asyncio.Task[None]] = []
        self.trickle: asyncio.Task[None] | None = None

    async def connect(self, timeout: float) -> dict[str, Any]:
        """Start every client at once (the gate bounds attempts in flight); wait until each
        has been ready once. The first ``ready`` stamp of each, None for the ones never ready."""
        self.tasks = [asyncio.create_task(self._stay(c)) for c in self.clients]
        await self._until_all(lambda c: bool(c.readies), timeout)
        return {"ready_ns": [c.readies[0] if c.readies else None for c in self.clients]}

    async def _stay(self, client: Client) -> None:
        attempt = 0
        timeout = self.spec["open_timeout"]
        while not self.finishing:
            client.became_ready = asyncio.Event()
            async with self.gate:
                failure = await self._attempt(client, timeout)
            if self.finishing:
                return
            if failure is not None:
                client.failed_attempts += 1
                client.failures[failure] += 1
                await asyncio.sleep(self._backoff(attempt))
                attempt += 1
                continue
            attempt = 0
            assert client.ws is not None
            await client.ws.closed
            if self.finishing:
                return
            code = client.closes[-1][0] if client.closes else 1006  # live until this close
            if code == RESTART:
                await asyncio.sleep(restart_delay(self.spec["restart_jitter"]))
            else:
                client.errors.append(f"closed with {code}")
                await asyncio.sleep(self._backoff(attempt))
                attempt += 1

    def _backoff(self, attempt: int) -> float:
        return failure_delay(attempt, self.spec["backoff_base"], self.spec["backoff_cap"])

    async def _attempt(self, client: Client, timeout: float) -> str | None:
        """One connect, until ``ready``; None when live, else what went wrong."""
        started = time.monotonic()
        client.ws = None  # nothing is written to the old socket from here on
        try:
            ws = await wsclient.connect(client.url(self.spec["url"]), client.handle, timeout,
                                        on_close=client.closed)
        except Exception as exc:
            return describe_error(exc)
        client.attach(ws)
        assert client.became_ready is not None
        ready: asyncio.Future[Any] = asyncio.ensure_future(client.became_ready.wait())
        either: set[asyncio.Future[Any]] = {ready, ws.closed}
        left = max(0.0, timeout - (time.monotonic() - started))
        await asyncio.wait(either, timeout=left, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        if client.became_ready.is_set():
            return None
        if not ws.closed.done() and ws.transport is not None:
            ws.transport.abort()  # the connect timeout passed: this attempt failed
            await ws.closed
        return "no ready frame"

    async def send(self, senders: list[int], messages: int) -> dict[str, Any]:
        """``messages`` new messages from each of ``senders`` that lives here."""
        mine = [self.by_index[i] for i in senders if i in self.by_index]
        for client in mine:
            for _ in range(messages):
                client.new_message()
        return {"queued": len(mine) * messages}

    async def await_acks(self, timeout: float) -> dict[str, Any]:
        """Wait until nothing here awaits an ack; the highest acknowledged id per room."""
        await self._until(lambda: not any(c.pending for c in self.clients), timeout)
        tops: dict[str, int] = {}
        for client in self.clients:
            tops[client.room] = max([tops.get(client.room, 0), *client.acked.values()])
        return {"tops": tops, "unacked": sum(len(c.pending) for c in self.clients)}

    async def await_received(self, tops: dict[str, int], timeout: float) -> dict[str, Any]:
        """Wait until every client here has received its room's ``tops`` id."""
        def behind() -> int:
            return sum(1 for c in self.clients if c.last_id < tops.get(c.room, 0))

        await self._until(lambda: behind() == 0, timeout)
        return {"behind": behind()}

    async def start_trickle(self, senders: list[int], rate: float) -> dict[str, Any]:
        """Keep sending from this worker's ``senders``, in turn, its share of ``rate``
        messages per second over all workers (``trickle_share``), until ``stop_trickle``:
        messages that meet a client offline wait in its outbox and go out after its ``ready``."""
        mine = [self.by_index[i] for i in senders if i in self.by_index]
        share = trickle_share(rate, len(mine), len(senders))

        async def run() -> None:
            turn = 0
            while share > 0:
                await asyncio.sleep(1 / share)
                mine[turn % len(mine)].new_message()
                turn += 1

        self.trickle = asyncio.create_task(run())
        return {"senders": len(mine), "rate": share}

    async def stop_trickle(self) -> dict[str, Any]:
        if self.trickle is not None:
            self.trickle.cancel()
        return {"sent": sum(c.sent for c in self.clients)}

    async def recovery(self, since_ns: int, timeout: float) -> dict[str, Any]:
        """Wait until every client here was closed after ``since_ns`` and got ``ready``
        again after that close; for each, (first close after since, first ready after it)."""
        def back(client: Client) -> tuple[int | None, int | None]:
            close = next((ns for _, ns in client.closes if ns >= since_ns), None)
            if close is None:
                return None, None
            return close, next((ns for ns in client.readies if ns > close), None)

        await self._until_all(lambda c: back(c)[1] is not None, timeout)
        pairs = [back(c) for c in self.clients]
        return {"closed_ns": [p[0] for p in pairs], "ready_ns": [p[1] for p in pairs]}

    async def report(self) -> dict[str, Any]:
        return {"clients": [c.record() for c in self.clients]}

    async def close(self) -> dict[str, Any]:
        """Stop reconnecting and close every socket."""
        self.finishing = True
        if self.trickle is not None:
            self.trickle.cancel()
        gate = asyncio.Semaphore(self.spec["concurrency"])

        async def one(client: Client) -> None:
            if client.ws is not None:
                async with gate:
                    await client.ws.close()

        await asyncio.gather(*(one(c) for c in self.clients), return_exceptions=True)
        for task in self.tasks:
            task.cancel()
        return {"closed": len(self.clients)}

    async def _until_all(self, done: Callable[[Client], bool], timeout: float) -> bool:
        """``_until`` every client is ``done``, a condition that stays true once met: each
        poll goes on from the first client not yet done (``first_not_done``), so a phase's
        polls cost the clients once, not all of them every POLL (at 2,250 clients a worker
        spent ~50 ms a second rescanning during the recovery, on the measured machine)."""
        cursor = 0

        def finished() -> bool:
            nonlocal cursor
            cursor = first_not_done(self.clients, done, cursor)
            return cursor == len(self.clients)

        return await self._until(finished, timeout)

    @staticmethod
    async def _until(predicate: Any, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(POLL)
        return True
