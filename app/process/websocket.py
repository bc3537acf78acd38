"""uvicorn's websockets-sansio protocol, guarded (``GuardedWebSocketProtocol``, made for uvicorn
by ``app.process.handshake.guarded_protocols``):

- it sends the handshake rejections websockets itself produces (request
  line or a header line over 8 KB, more than 128 headers), and treats an HTTP refusal sent by
  the application as a finished handshake (uvicorn logged every refusal as an ERROR);
- it stamps each ``websocket.receive`` event with when its frame was read, for the rate limit
  (app.chat.ratelimit);
- when a WebSocket is lost, it closes websockets' parser, a generator holding the connection:
  without that every closed WebSocket was a cycle left to the cyclic garbage collector;
- its keepalive pings come from the process's one timer wheel (app.process.keepalive), not
  from two timers of its own per ping;
- the peer's pings (and pongs nobody asked for) are metered like its messages: past the
  connection's rate and burst it is closed 1008 ``rate limit`` at once (a control frame has
  no error frame to answer it). While the peer is not reading what is sent to it, only the
  latest ping's pong is kept, and sent when it reads again (RFC 6455, 5.5.3): websockets
  queues a pong per ping and uvicorn wrote each one to the transport's buffer, so a client
  that pinged without reading made the server buffer its pongs without limit.
- a message may come in at most ``MAX_FRAGMENTS`` frames (close 1009 past it), and the
  continuation frames are metered like pings: uvicorn appended every fragment to a list and
  websockets' size limit counts bytes, so a message left open with endless empty
  continuation frames (6 bytes each) was read forever, never reaching the application or
  its rate limit (17.9 million frames in 60 s pinned a core and grew the process by 140 MB).
- while the application has messages waiting, at most ``PARSE_AHEAD`` of a read is parsed;
  the rest waits as bytes, with reading paused, until it has taken them;
- its receive queue is a Mailbox, and it lets go of the handshake's request and response
  once the socket is open (docs/ARCHITECTURE.md, "Small idle sockets").
"""

from __future__ import annotations

import time
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import State

from app import metrics
from app.chat.ratelimit import ARRIVED, TokenBucket
from app.mailbox import Mailbox, Message
from app.process.cuts import DRAINING, count_cut, response
from app.process.keepalive import Action, Keepalive, Ping, keepalive_for, step

# websockets' close code for a policy violation, as the consumer's flood close uses.
CLOSE_POLICY = 1008
# A message in more pieces than this is one the server will not put back together: closed
# 1009, as a message over CHAT_MAX_FRAME_BYTES is (a client treats both alike: too big to
# send as it is). Browsers never fragment what they send; libraries that do cut a message
# into pieces of their write buffer (4 KB for Go's gorilla), 16 for the largest message.
MAX_FRAGMENTS = 64
CLOSE_TOO_BIG = 1009
# Of what one read brought, at most this much is parsed while the application has messages
# waiting; the rest waits as bytes until it has taken them (``_parse_ahead``). A read is up to
# 256 KB (uvloop's), and websockets parsed all of it before uvicorn could pause reading: every
# frame a message dict of ~110 bytes, so a read of empty 6-byte frames held ~40,000 of them,
# 20 times what was sent (a probe: +335 MB for 100 sockets sending 256 KB each).
PARSE_AHEAD = 8 * 1024


class ArrivalStamps(Mailbox):
    """uvicorn's receive queue, each ``websocket.receive`` stamped with when it was queued.

    uvicorn queues every frame of a read as it parses it, pauses reading until the
    application has taken them all, and hands them over one ``receive()`` at a time: a
    burst of 150 frames reaches the consumer over as long as it takes to handle them (0.3 to
    0.5 s with 100 flooders on 2 cores). The rate limit must see when the client sent them,
    and this is the closest the server knows: when they were read.

    A Mailbox (app/mailbox.py: the part of ``asyncio.Queue`` uvicorn uses, one
    receiver) rather than uvicorn's ``asyncio.Queue``, which holds four deques and an Event
    even when empty, as an open socket's queue nearly always is: 3 KB per open socket.
    """

    __slots__ = ()

    def put_nowait(self, message: Message) -> None:
        if message.get("type") == "websocket.receive":
            message[ARRIVED] = time.monotonic()
        super().put_nowait(message)


class GuardedWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websockets-sansio protocol that answers every handshake it refuses,
    stamps each frame with when it was read (``ArrivalStamps``), and is pinged from the
    process's keepalive wheel."""

    keepalive_slot: int | None = None
    _keepalive: Keepalive | None = None
    # The peer's control frames: set by ``guarded_protocols`` from the chat rate limit.
    control_rate: float = 20.0
    control_burst: int = 40
    _control: TokenBucket | None = None  # made at the peer's first ping: most never send one
    # The peer's continuation frames, which the consumer's rate limit never sees (only whole
    # messages reach it): MAX_FRAGMENTS for each message the chat rate and burst allow, so a
    # client within its message rate is never refused here.
    _fragments: TokenBucket | None = None  # made at the first continuation frame: most never send one
    _held_pong: bytes = b""
    # Read but not parsed yet (``_parse_ahead``), from ``_unparsed_at`` on.
    _unparsed: bytes = b""
    _unparsed_at: int = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # uvicorn calls put_nowait, get and empty on it: the part a Mailbox has.
        self.queue = ArrivalStamps()  # type: ignore[assignment]

    def start_keepalive(self) -> None:
        # uvicorn calls this once the handshake's 101 is written, and would keep that
        # handshake's request and response (their headers: some thirty objects) for the
        # socket's life, though nothing reads them again: 2 KB per open socket (measured at
        # 5,000), and objects that every garbage collection walks while the socket is young.
        del self.request, self.response
        if self.ping_interval:
            self._keepalive = keepalive_for(self.loop, self.ping_interval, self.ping_timeout or None)
            self._keepalive.start(self)

    def stop_keepalive(self) -> None:
        if self._keepalive is not None:
            self._keepalive.stop(self)
        super().stop_keepalive()

    def keepalive_due(self, now: float, ping: Ping) -> float | None:
        """The wheel's hook: ping, wait, or close 1011 as ``keepalive.step`` says."""
        if self.close_sent or self.transport.is_closing():
            return None
        assert self.ping_interval is not None
        sent_at = self.ping_sent_at or None
        action, at = step(
            now, sent_at, self.pending_ping_payload is None, self.ping_interval, self.ping_timeout or None
        )
        if action is Action.EXPIRE:
            self.keepalive_timeout()  # uvicorn's: close 1011 "keepalive ping timeout"
            return None
        if action is Action.PING:
            # uvicorn's handle_pong clears the payload when it comes back (and, with no pong
            # timer of its own here, schedules nothing).
            self.pending_ping_payload = ping.payload
            self.ping_sent_at = now
            conn = self.conn
            if conn.state is State.OPEN and not conn.writes:
                self.transport.write(ping.frame)  # what websockets would write, built once
            else:
                conn.send_ping(ping.payload)
                self.transport.write(b"".join(conn.data_to_send()))
        return at

    def handle_ping(self) -> None:
        # websockets queued this read's pongs as it parsed it; uvicorn wrote them all, always.
        output = b"".join(self.conn.data_to_send())
        if not self._control_allowed() or not output:  # a read's first ping took them all
            return
        if self.writable.is_set() or self.conn.state is not State.OPEN:
            self.transport.write(output)
        else:
            # The peer is not reading (the transport's buffer is over its high-water mark): a
            # pong answers the latest ping only, so these replace any held before them.
            self._held_pong = output

    def handle_pong(self, event: Any) -> None:
        if self.pending_ping_payload is None or bytes(event.data) != self.pending_ping_payload:
            # Unsolicited or stale (RFC 6455 allows them as a heartbeat): metered, then ignored.
            self._control_allowed()
            return
        super().handle_pong(event)

    def resume_writing(self) -> None:
        super().resume_writing()
        held, self._held_pong = self._held_pong, b""
        if held and not self.transport.is_closing():
            self.transport.write(held)

    def _control_allowed(self) -> bool:
        """Take a token for one of the peer's control frames; past the budget, close 1008."""
        now = time.monotonic()
        if self._control is None:
            self._control = TokenBucket(self.control_rate, self.control_burst, now)
        if self._control.take(now):
            return True
        if not self.close_sent and not self.transport.is_closing():
            metrics.RATE_LIMITED.inc()
            self._fail(CLOSE_POLICY, "rate limit", "control_flood")
        return False

    def _fail(self, code: int, reason: str, label: str) -> None:
        """Close the connection for what the peer sent: the close frame, then the socket."""
        metrics.FRAMES_REJECTED.labels(label).inc()
        self.conn.fail(code, reason)
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        self.transport.close()

    def handle_cont(self, event: Any) -> None:
        # Only fragmented messages come here: single-frame ones (all a browser sends) never do.
        # One read is parsed whole before its frames are handled, so after a close the rest
        # of that read's frames still arrive here: dropped unlooked-at.
        if self.close_sent:
            return
        if len(self.frames) >= MAX_FRAGMENTS:  # the frames so far, the first one included
            self._fail(CLOSE_TOO_BIG, "too many fragments", "too_many_fragments")
            return
        now = time.monotonic()
        if self._fragments is None:
            self._fragments = TokenBucket(
                self.control_rate * MAX_FRAGMENTS, self.control_burst * MAX_FRAGMENTS, now
            )
        if not self._fragments.take(now):
            metrics.RATE_LIMITED.inc()
            self._fail(CLOSE_POLICY, "rate limit", "fragment_flood")
            return
        super().handle_cont(event)

    def data_received(self, data: bytes) -> None:
        if self.handshake_complete and not self.close_sent:
            data = self._unparsed[self._unparsed_at:] + data if self._unparsed else data
            self._unparsed, self._unparsed_at = data, 0
            self._parse_ahead()
            return
        super().data_received(data)
        if not self.handshake_initiated and self.conn.handshake_exc is not None:
            # websockets rejected the request itself (414 or 431) and queued its answer; for a
            # request it cannot read at all (a handshake with a body) it queues none: a 400,
            # not a connection closed without a word.
            count_cut("handshake_rejected", self.client)
            queued = b"".join(self.conn.data_to_send())
            self.transport.write(queued or response(400, b"not a WebSocket handshake\n"))
            self.handshake_complete = self.close_sent = True
            self.transport.close()

    def _parse_ahead(self) -> None:
        """Parse what was read PARSE_AHEAD at a time while the application has nothing
        waiting (all of it once the close is sent: the peer's reply is in there); keep the
        rest, with reading paused, for ``receive`` to parse once what waits is taken."""
        data, at = self._unparsed, self._unparsed_at
        while at < len(data) and (self.close_sent or self.queue.empty()) and not self.transport.is_closing():
            chunk = data[at:at + PARSE_AHEAD] if not self.close_sent else data[at:]
            at += len(chunk)
            super().data_received(chunk)
        if at >= len(data) or self.transport.is_closing():
            self._unparsed, self._unparsed_at = b"", 0
            return
        self._unparsed_at = at
        if not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()

    async def receive(self) -> Any:
        # uvicorn's, but what was read and not parsed yet is parsed before reading resumes.
        message = await self.queue.get()
        if self._unparsed and self.queue.empty():
            self._parse_ahead()
        if self.read_paused and self.queue.empty() and not self._unparsed:
            self.read_paused = False
            self.transport.resume_reading()
        return message

    def shutdown(self) -> None:
        """The server's shutdown reaching this connection, for the two states uvicorn's own
        step gets wrong (it runs after the drain's closes, for what is left)."""
        if not self.handshake_complete and self.initial_response is None:
            # A handshake the application has not answered yet (waiting for warm-up, say):
            # uvicorn answered it 500, and the application's own refusal then failed with a
            # traceback. It is a handshake during a drain: 503 draining, as the router says.
            self.transport.write(DRAINING)
            self.handshake_complete = self.close_sent = True
            self.disconnected = True  # the application's next send ends it quietly
            self.queue.put_nowait({"type": "websocket.disconnect", "code": 1006})
            self.transport.close()
            return
        if self.handshake_complete and not self.close_sent and self.conn.state is not State.OPEN:
            # The client closed first and the answer to its close is still being flushed (to
            # a client that may not read): websockets refuses a second close (InvalidState),
            # which ended the whole shutdown with status 1. Its close handshake is done.
            self.stop_keepalive()
            self.transport.abort()
            return
        super().shutdown()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._unparsed, self._unparsed_at = b"", 0
        # websockets' parser is a generator whose frame holds the connection it parses for
        # (``conn.parser = conn.parse()``, ``conn.discard()`` once closed): a cycle per socket,
        # with its reader, frames and buffers, left to the cyclic GC. Most of them live
        # through a collection and are promoted, so they waited for a full one, interleaved
        # with live objects: pymalloc's arenas crept up under churn (issue #16). Nothing
        # parses after the connection is lost; closing the generator ends its frame, and
        # refcounting frees the connection's state at once.
        self.conn.parser.close()

    async def send(self, message: Any) -> None:
        await super().send(message)
        if message["type"] == "websocket.http.response.body" and not message.get("more_body", False):
            # A refusal the application answered over HTTP is a finished handshake.
            self.handshake_complete = True
        elif message["type"] == "websocket.close" and self._unparsed:
            self._parse_ahead()  # the peer's answer to the close may be in what waits
