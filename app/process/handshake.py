"""Connections that stall or overflow before their request is complete are cut, with an answer.

uvicorn's httptools protocol waits forever for a request to arrive (idle sockets, a handshake
sent a byte a second), buffers request lines and headers of any size, and a WebSocket request
line over websockets' 8 KB limit got no answer at all: websockets writes its 414 into a buffer
uvicorn never sends. ``guarded_protocols`` returns the two protocol classes that close these:

- the HTTP protocol arms a timer when a connection is accepted (again when a kept-alive
  connection goes idle, and at the first byte of each later request) and cancels it once a
  request has fully arrived or has been handed to the WebSocket protocol; past it, the
  socket is closed, counted and logged (throttled);
- once upgraded, it drops its parser, whose bound callbacks made a cycle: without that every
  WebSocket left its HTTP state to the cyclic garbage collector;
- it answers 414 to a URL over ``MAX_URL_BYTES`` and 431 to a request head over
  ``MAX_HEAD_BYTES``, at once, without buffering more;
- it parses at most ``MAX_PIPELINED`` pipelined requests ahead of the one being answered,
  and reads nothing more until the queue is back under that: uvicorn queued every request of
  every read, resumed reading after each answer, and so read a client's whole pipeline (16 MB
  of ``GET /healthz`` from 4 sockets queued 417,724 requests, 1.16 GB). When the connection
  is lost, the requests it still had queued go at once (each held the protocol in a cycle);
- a client that does not read its answer (less than ``MIN_READ_BYTES`` taken in
  ``send_timeout``, CHAT_SEND_TIMEOUT, while the socket is backed up) has its connection
  aborted: ``close()`` waits for the buffer to be sent, which for such a client is never, so
  each one held its whole answer (24 MB for a full room's history) for good;
- the WebSocket protocol's own guards are in app.process.websocket.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

import httptools
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from app.process.cuts import count_cut, response
from app.process.websocket import GuardedWebSocketProtocol
from app.throttled_log import Throttled

# Beyond these, a request is refused rather than buffered. 8 KB is websockets' own request-line
# limit (and nginx's default buffer); the page's longest legitimate URL is a JWT naming rooms.
MAX_URL_BYTES = 8 * 1024
MAX_HEAD_BYTES = 32 * 1024

# Requests parsed and queued behind the one being answered, per connection; past it the
# connection reads nothing more until one is answered, so a client pipelining without end
# waits in its own socket buffers (TCP flow control) as with nginx, which parses the next
# request only once the current one is done, or h11, which pauses after each. Answers go one
# at a time, so a deeper queue gains a client nothing once the next few requests are at
# hand, and each queued request costs ~3 KB (its scope, headers, cycle and event): 16 is
# ~50 KB, under the one unparsed read (at most 256 KB) a connection holds while it waits.
# Clients that pipeline at all (browsers stopped; Traefik never does) keep a few in flight.
MAX_PIPELINED = 16

# The end of a request head. llhttp, as httptools sets it up, takes no head without it (a bare
# LF or CR is refused), so a read cut after the n-th of these completes at most n requests.
_HEAD_END = b"\r\n\r\n"

# A client must take at least this much of an answer per ``send_timeout`` while its socket is
# backed up (uvloop's high-water mark: 6.5 KB/s at the default 10 s), or it is cut. Any
# progress at all would let a client hold an answer for hours by reading a few bytes at a time.
MIN_READ_BYTES = 64 * 1024

logger = logging.getLogger("parley")
_client_log = Throttled(logger, interval=10.0)


class _Oversize(Exception):
    """Raised from a parser callback to stop parsing a request that is too large to keep."""


class _HeldFlow(FlowControl):
    """uvicorn's flow control, whose ``resume_reading`` waits while the connection holds
    back a pipeline. uvicorn resumes reading after every answer (``on_response_complete``)
    and whenever an application asks for a request's body (``receive``), which undid any
    pause while the queue was still full."""

    holding = False

    def resume_reading(self) -> None:
        if not self.holding:
            super().resume_reading()


def _no_response() -> None:
    """A dropped request's ``on_response``: the protocol it was bound to is gone."""


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a request deadline and request-head size limits."""

    handshake_timeout: float = 5.0
    send_timeout: float = 10.0
    flow: _HeldFlow  # made in connection_made

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._stall: asyncio.TimerHandle | None = None  # armed only while the answer is backed up
        self._unsent = 0  # the write buffer when ``_stall`` was armed
        self._head_open = True
        self._head_bytes = 0
        self._oversize = 0
        self._served = False
        self._reparse = False  # this request asks for an upgrade we ignore: parsed again without it
        self._held = b""  # read, not yet parsed: the pipeline was full (``_feed``)

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.handshake_timeout, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self.transport.close()  # first: nothing after it may keep the socket open
            count_cut("handshake_timeout", self.client)
            # close() waits for what is still buffered to be sent: if the client takes it
            # (a big answer, read slowly) it gets all of it; if not, the watchdog aborts it.
            self._watch_unsent()

    def _watch_unsent(self) -> None:
        if self._stall is None and self.transport.get_write_buffer_size():
            self._unsent = self.transport.get_write_buffer_size()
            self._stall = self.loop.call_later(self.send_timeout, self._check_unsent)

    def _unwatch(self) -> None:
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None

    def _check_unsent(self) -> None:
        self._stall = None
        unsent = self.transport.get_write_buffer_size()
        if not unsent:
            return
        if self._unsent - unsent < MIN_READ_BYTES:
            # Not reading: abort, which drops the buffer (close() would keep it for good).
            self.transport.abort()
            count_cut("send_timeout", self.client, "not reading its answer")
            return
        self._unsent = unsent
        self._stall = self.loop.call_later(self.send_timeout, self._check_unsent)

    def pause_writing(self) -> None:
        super().pause_writing()
        self._watch_unsent()

    def resume_writing(self) -> None:
        super().resume_writing()
        self._unwatch()

    def _refuse(self, status: int) -> None:
        self._disarm()
        reason = "uri_too_long" if status == 414 else "headers_too_large"
        count_cut(reason, self.client)
        limit = MAX_URL_BYTES if status == 414 else MAX_HEAD_BYTES
        what = "URL" if status == 414 else "request head"
        self.transport.write(response(status, f"{what} longer than {limit} bytes\n".encode()))
        self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.flow = _HeldFlow(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._unwatch()
        super().connection_lost(exc)
        # Requests still queued will never be answered. uvicorn left them in the pipeline,
        # and each one's ``on_response`` is bound to this protocol: a cycle (protocol,
        # pipeline, cycles, scopes, bodies) that only a full collection freed, so a dropped
        # pipelining client's queue outlived it. Unbound and dropped, they go at once; the
        # request being answered unbinds its own when its task ends (uvicorn's run_asgi).
        for cycle, _ in self.pipeline:
            cycle.on_response = _no_response
        self.pipeline.clear()
        self._held = b""

    def data_received(self, data: bytes) -> None:
        if self._oversize:
            return
        if self.flow.holding:  # reading is paused: only what a read had in hand comes here
            self._held += data
            return
        self._unset_keepalive_if_required()
        self._feed(data)

    def _feed(self, data: bytes) -> None:
        """Parse ``data`` up to ``MAX_PIPELINED`` queued requests; hold what is left, and
        pause reading, until the queue is back under it.

        Pausing the transport stops the next read, not the parse of this one: a read holds
        up to 256 KB, thousands of small requests. So the parser gets a read in pieces that
        each end at most as many heads as the queue has room for (the usual read, a request
        or a few, in one piece), and the queue is checked after each: it never passes the
        bound by more than one (a head whose CRLF CRLF the previous read began).
        """
        view = memoryview(data)
        start = 0
        while start < len(data):
            room = MAX_PIPELINED - len(self.pipeline)
            if room <= 0:
                self._held = bytes(view[start:])
                self.flow.holding = True
                self.flow.pause_reading()
                return
            stop = start
            for _ in range(room):
                end = data.find(_HEAD_END, stop)
                if end < 0:
                    stop = len(data)
                    break
                stop = end + len(_HEAD_END)
            if not self._parse(view[start:stop], view[stop:]):
                return
            start = stop

    def _parse(self, piece: memoryview, rest: memoryview) -> bool:
        """uvicorn's ``data_received`` for one piece, with the head counted and oversize
        requests answered by their status: False once nothing more is to be parsed."""
        if self._head_open:
            self._head_bytes += len(piece)
        try:
            self.parser.feed_data(piece)
        except httptools.HttpParserError:
            if self._oversize:
                self._refuse(self._oversize)
            else:
                self._disarm()
                # uvicorn's warning, one per request: a client can send thousands a second.
                _client_log.info("invalid_request", "invalid HTTP request received (last from %s)",
                                 self.client[0] if self.client else "?")
                self.send_400_response("Invalid HTTP request received.")
            return False
        except httptools.HttpParserUpgrade as exc:
            if self._reparse:
                self._parse_without_upgrade(bytes(piece[exc.args[0]:]) + bytes(rest))
            elif self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return False
        if self._head_open and self._head_bytes > MAX_HEAD_BYTES:
            self._oversize = 431
            self._refuse(431)
            return False
        return True

    def _release(self) -> None:
        """The queue is under ``MAX_PIPELINED`` again: parse what was held, and read again
        unless that fills it."""
        held, self._held = self._held, b""
        self.flow.holding = False
        self._feed(held)
        if not self.flow.holding and not self.transport.is_closing():
            self.flow.resume_reading()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        # A later request on a kept-alive connection (a proxy's pooled one) gets the whole
        # window from its own first byte, not what is left of the idle wait before it.
        if self._served:
            self._arm()

    def on_url(self, url: bytes) -> None:
        if len(self.url) + len(url) > MAX_URL_BYTES:
            self._oversize = 414
            raise _Oversize
        super().on_url(url)

    def on_headers_complete(self) -> None:
        self._head_open = False
        if sum(len(name) + len(value) + 4 for name, value in self.headers) > MAX_HEAD_BYTES:
            self._oversize = 431
            raise _Oversize
        if self.parser.should_upgrade() and not self._should_upgrade() and any(
            name == b"upgrade" for name, _ in self.headers
        ):
            # An upgrade other than WebSocket (h2c: curl --http2 asks on every request).
            # httptools stops at the head of any upgrade, so the application got the request
            # with an empty body (a valid POST answered invalid_json). A server may ignore
            # Upgrade (RFC 9110, 7.8): the request is not started here, but parsed again
            # without that header (data_received), body and all.
            self._reparse = True
            return
        super().on_headers_complete()

    def _parse_without_upgrade(self, rest: bytes) -> None:
        self._reparse = False
        version = self.parser.get_http_version().encode()
        head = [self.parser.get_method(), b" ", self.url, b" HTTP/", version, b"\r\n"]
        for name, value in self.headers:
            if name != b"upgrade":
                head += [name, b": ", value, b"\r\n"]
        head.append(b"\r\n")
        self.parser = httptools.HttpRequestParser(self)
        self.data_received(b"".join(head) + rest)

    def _unsupported_upgrade_warning(self) -> None:
        # uvicorn's warning, one per request (CONNECT, the one upgrade not ignored above).
        _client_log.info("unsupported_upgrade", "unsupported upgrade request (last from %s)",
                         self.client[0] if self.client else "?")

    def on_message_complete(self) -> None:
        if self._reparse:  # httptools ends an upgrade's message at its head: not this one's end
            return
        # The request has fully arrived: what happens next is the application's time.
        self._disarm()
        self._head_open, self._head_bytes = True, 0
        super().on_message_complete()

    def on_response_complete(self) -> None:
        self._served = True
        super().on_response_complete()  # starts the next queued request; reading stays held
        if self.transport.is_closing():
            return
        if self.flow.holding and len(self.pipeline) < MAX_PIPELINED:
            self._release()
            if self.parser is None or self.transport.is_closing():  # upgraded, or refused
                return
        # A kept-alive connection waits for its next request on the same deadline.
        if not self.pipeline:
            self._arm()

    def shutdown(self) -> None:
        """The server's shutdown reaching this connection. A request still arriving (a body
        sent slowly) held it until the request deadline, every drain as long as its budget:
        the server is going, so such a request ends here (its application sees the client
        gone)."""
        if self._deadline is not None and self.cycle is not None and not self.cycle.response_complete:
            self._disarm()
            self.transport.close()
            return
        super().shutdown()

    def handle_websocket_upgrade(self) -> None:
        self._disarm()
        super().handle_websocket_upgrade()
        # This protocol is done: the WebSocket protocol owns the transport now, so uvicorn never
        # calls our connection_lost, which is what drops the parser. The parser holds our bound
        # callbacks, a cycle that left every upgraded connection's HTTP state (parser, deques,
        # flow control, a transport reference) for the cyclic GC, and whatever a collection
        # promoted waited for a full one. Dropped here, refcounting frees it at once.
        self.parser = None  # type: ignore[assignment]


def guarded_protocols(
    handshake_timeout: float, control_rate: float = 20.0, control_burst: int = 40,
    send_timeout: float = 10.0,
) -> tuple[type[HttpToolsProtocol], type[WebSocketsSansIOProtocol]]:
    """The HTTP and WebSocket protocol classes for uvicorn's ``http=`` and ``ws=``: the
    request deadline, the rate and burst of the peer's pings, and how long an HTTP client
    may leave its answer unread."""
    http_class = type(
        "GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,),
        {"handshake_timeout": handshake_timeout, "send_timeout": send_timeout},
    )
    ws_class = type(
        "GuardedWebSocketProtocol", (GuardedWebSocketProtocol,),
        {"control_rate": control_rate, "control_burst": control_burst},
    )
    return http_class, ws_class
