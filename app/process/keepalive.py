"""WebSocket keepalive pings for every socket of the process, from one timer wheel.

uvicorn's websockets-sansio protocol pings each connection on timers of its own: two
``call_later`` handles per ping (the next ping, the pong deadline), a random payload, and a
frame serialized through websockets for each. At 16,667 idle sockets that is ~830 pings a
second, and the timers and frames were most of an idle process's CPU. Here one timer per
tick walks the sockets due in that tick: the pings of a tick share one payload and one
prebuilt frame, and a socket's next step (its pong deadline, its next ping) is a move to
another slot of the wheel.

The semantics are uvicorn's: a ping ``interval`` after the last one, and a socket that has
not answered within ``timeout`` is closed 1011; without a timeout, pings just go on. Times
are rounded up to the wheel's tick (a tenth of the shorter of the two, at most 1 s).
"""

from __future__ import annotations

import asyncio
import enum
import math
import random
import struct
from typing import Protocol
from weakref import WeakKeyDictionary

TICK_MAX = 1.0
TICK_MIN = 0.01


class Action(enum.Enum):
    PING = "ping"
    WAIT = "wait"
    EXPIRE = "expire"


def step(
    now: float, sent_at: float | None, answered: bool, interval: float, timeout: float | None
) -> tuple[Action, float]:
    """What a socket's keepalive does at ``now``, and when it is next due.

    ``sent_at`` is when its last ping went out (None: never), ``answered`` whether that
    ping's pong came back. After a ping the next look is at the pong deadline or the next
    ping, whichever is sooner; a ping still unanswered is waited for until its deadline
    (no second ping before it), then the socket expires.
    """
    if sent_at is not None and not answered and timeout:
        if now >= sent_at + timeout:
            return Action.EXPIRE, now
        return Action.WAIT, sent_at + timeout
    if sent_at is not None and now < sent_at + interval:
        return Action.WAIT, sent_at + interval
    return Action.PING, now + (min(interval, timeout) if timeout else interval)


def tick_for(interval: float, timeout: float | None) -> float:
    """The wheel's slot width for these settings: fine enough that rounding up to it is
    at most a tenth of either period."""
    shortest = min(interval, timeout) if timeout else interval
    return min(TICK_MAX, max(TICK_MIN, shortest / 10))


class Peer(Protocol):
    """A socket on the wheel (``GuardedWebSocketProtocol``)."""

    keepalive_slot: int | None

    def keepalive_due(self, now: float, ping: Ping) -> float | None:
        """Do what is due at ``now`` (``step``); when it is next due, None to leave."""


class Ping:
    """One tick's ping: a random 4-byte payload (so a stale pong is told from a fresh one)
    and its unmasked server frame, built once for every socket pinged in that tick."""

    __slots__ = ("payload", "frame")

    def __init__(self) -> None:
        self.payload = struct.pack("!I", random.getrandbits(32))
        self.frame = b"\x89\x04" + self.payload  # FIN + ping, 4 bytes, no mask


class Wheel:
    """Sockets by the tick (``slot``) in which they are next due. Pure: no clock, no I/O."""

    def __init__(self, tick: float, now: float) -> None:
        self.tick = tick
        self.slots: dict[int, set[Peer]] = {}
        self.cursor = self.slot(now)  # every slot before it has been taken

    def __len__(self) -> int:
        return sum(len(peers) for peers in self.slots.values())

    def slot(self, at: float) -> int:
        return math.ceil(at / self.tick - 1e-9)

    def put(self, peer: Peer, at: float) -> None:
        """Due at ``at`` (rounded up to a tick; a time already past is due in the next take)."""
        self.remove(peer)
        slot = max(self.slot(at), self.cursor)
        self.slots.setdefault(slot, set()).add(peer)
        peer.keepalive_slot = slot

    def remove(self, peer: Peer) -> None:
        slot = peer.keepalive_slot
        if slot is None:
            return
        peer.keepalive_slot = None
        peers = self.slots.get(slot)
        if peers is not None:
            peers.discard(peer)
            if not peers:
                del self.slots[slot]

    def take_due(self, now: float) -> list[Peer]:
        """Remove and return every socket due by ``now``, the earliest slots first."""
        last = math.floor(now / self.tick + 1e-9)
        due: list[Peer] = []
        if self.slots:
            for slot in sorted(s for s in self.slots if s <= last):
                for peer in self.slots.pop(slot):
                    peer.keepalive_slot = None
                    due.append(peer)
        self.cursor = max(self.cursor, last + 1)
        return due


class Keepalive:
    """The wheel of one event loop, turned by one ``call_later`` per tick while it holds
    sockets."""

    def __init__(self, loop: asyncio.AbstractEventLoop, interval: float, timeout: float | None) -> None:
        self.loop = loop
        self.interval = interval
        self.timeout = timeout
        self.wheel = Wheel(tick_for(interval, timeout), loop.time())
        self._timer: asyncio.TimerHandle | None = None

    def start(self, peer: Peer) -> None:
        """The first ping goes ``interval`` after the handshake, as uvicorn's does."""
        self.wheel.put(peer, self.loop.time() + self.interval)
        if self._timer is None:
            self._timer = self.loop.call_later(self.wheel.tick, self._turn)

    def stop(self, peer: Peer) -> None:
        self.wheel.remove(peer)

    def _turn(self) -> None:
        self._timer = None
        now = self.loop.time()
        due = self.wheel.take_due(now)
        if due:
            ping = Ping()
            for peer in due:
                try:
                    at = peer.keepalive_due(now, ping)
                except Exception:  # one socket's failure must not stop the others' keepalive
                    continue
                if at is not None:
                    self.wheel.put(peer, at)
        if self.wheel.slots:
            self._timer = self.loop.call_later(self.wheel.tick, self._turn)


_BY_LOOP: WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[float, float | None], Keepalive]] = (
    WeakKeyDictionary()
)


def keepalive_for(loop: asyncio.AbstractEventLoop, interval: float, timeout: float | None) -> Keepalive:
    """The process's keepalive for these settings on ``loop`` (one per server, in practice)."""
    wheels = _BY_LOOP.setdefault(loop, {})
    keepalive = wheels.get((interval, timeout))
    if keepalive is None:
        keepalive = wheels[(interval, timeout)] = Keepalive(loop, interval, timeout)
    return keepalive
