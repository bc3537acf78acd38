"""The chat consumer: one per WebSocket, the Channels tutorial's shape plus history.

Connect joins the room's group and replays what the client missed; receive validates,
records and broadcasts; ``chat_message`` delivers in id order, filling holes from history;
disconnect leaves the group. Frame parsing and building live in app.protocol.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import Any

from channels.exceptions import StopConsumer

from app import metrics
from app.chat.admission import refuse
from app.chat.ratelimit import TokenBucket
from app.chat.registry import REGISTRY
from app.chat.serial import SerialConsumer
from app.chat.services import ChatServices
from app.config import CONFIG
from app.history import HistoryUnavailable
from app.protocol import (
    ConnectParams,
    FrameError,
    ack_frame,
    error_frame,
    gap_frame,
    is_typing_frame,
    message_template,
    parse_client_frame,
    parse_connect_params,
    ready_frame,
)
from app.rooms import group_name, is_valid_room

logger = logging.getLogger("parley")

CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009


class ChatConsumer(SerialConsumer):
    """A member of one room. ``last_id`` is the newest id this client has been sent."""

    room: str = ""
    group: str = ""
    user: str = ""
    last_id: int = 0
    joined: bool = False
    slow: bool = False
    live: bool = False
    sending_since: float = 0.0
    present: bool = False
    typing_bucket: TokenBucket | None = None

    def __init__(self, services: ChatServices) -> None:
        super().__init__()
        self.services = services

    # -- connect -------------------------------------------------------------------------

    async def websocket_connect(self, message: dict[str, Any]) -> None:
        room = self.scope["url_route"]["kwargs"]["room_name"]
        if not is_valid_room(room):
            return await self._refuse(400, "bad_room")
        try:
            params = parse_connect_params(self.scope.get("query_string", b""), CONFIG.history_max)
        except FrameError as exc:
            return await self._refuse(400, exc.code)
        if CONFIG.auth == "jwt":
            from app.chat.auth import AuthError, authorize  # loaded at warm-up only in jwt mode

            try:
                self.user = authorize(params.token, room, CONFIG.jwt_secret).sub
            except AuthError as exc:
                return await self._refuse(403, exc.reason)
        else:
            self.user = f"anon-{secrets.token_hex(4)}"
        self.room, self.group = room, group_name(room)
        self.history = self.services.history
        self.bucket = TokenBucket(CONFIG.rate_per_second, CONFIG.rate_burst, time.monotonic())
        self.strikes = 0

        try:
            await self.channel_layer.group_add(self.group, self.channel_name)
            self.joined = True
            entering = self._enter_presence()
            missing, frames, live_from = await self._catch_up(params)
        except Exception:  # history or channel layer (Redis) unreachable
            logger.warning("refusing %s: storage unavailable", self.room, exc_info=True)
            await self._leave()
            return await self._refuse(503, "unavailable")

        await self.accept()
        if missing is not None:
            await self._send_text(gap_frame(*missing))
        for message_id, frame in frames:
            await self._deliver(message_id, frame)
        self.last_id = max(self.last_id, live_from)
        await self._send_text(ready_frame(self.room, self.last_id, self.user))
        if entering is not None:
            await self._send_presence(entering)
        REGISTRY.add(self)
        self.live = True
        metrics.CONNECTIONS_OPENED.inc()
        metrics.CONNECTIONS_OPEN.inc()

    async def _catch_up(self, params: ConnectParams) -> tuple[tuple[int, int] | None, list, int]:
        """What to send before going live: (ids no longer held, frames, id live starts after)."""
        if params.since is not None:
            replay = await self.history.after(self.room, params.since, CONFIG.history_max)
            last = await self.history.last_id_for_join(self.room)
            start = replay.frames[-1][0] if replay.frames else min(params.since, last)
            if replay.missing and not replay.frames:
                start = max(start, replay.missing[1])
            return replay.missing, replay.frames, start
        if params.last:
            frames = await self.history.latest(self.room, params.last)
            start = frames[-1][0] if frames else await self.history.last_id_for_join(self.room)
            return None, frames, start
        return None, [], await self.history.last_id_for_join(self.room)

    async def _refuse(self, status: int, code: str) -> None:
        # websocket.connect was already received: this is its answer.
        await refuse(self.scope, self.base_send, status, code)
        raise StopConsumer()

    # -- receive -------------------------------------------------------------------------

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if text_data is not None and is_typing_frame(text_data):
            return await self._typing()
        if not self.bucket.take(time.monotonic()):
            return await self._rate_limited()
        self.strikes = 0
        if text_data is None:
            return await self._reject("binary_frame", "binary frames are not supported; send JSON text")
        if len(text_data) * 4 > CONFIG.max_frame_bytes and len(text_data.encode()) > CONFIG.max_frame_bytes:
            # uvicorn enforces this before the app sees the frame; daphne does not.
            metrics.FRAMES_REJECTED.labels("frame_too_large").inc()
            return await self.close(code=CLOSE_TOO_BIG, reason="frame too large")
        try:
            chat = parse_client_frame(text_data, CONFIG.max_message_chars)
        except FrameError as exc:
            return await self._reject(exc.code, exc.detail)
        metrics.MESSAGES_RECEIVED.inc()
        template = message_template(
            self.room, chat.text, int(time.time() * 1000), self.user, chat.client_id
        )
        try:
            appended = await self.services.post(self.room, template, chat.client_id)
        except HistoryUnavailable:
            return await self._reject("unavailable", "message not stored: storage unavailable, retry")
        await self._send_text(ack_frame(appended.id, chat.client_id))

    async def _rate_limited(self) -> None:
        metrics.RATE_LIMITED.inc()
        self.strikes += 1
        if self.strikes >= CONFIG.rate_strikes:
            # Kept flooding after being told: a client bug or abuse either way.
            return await self.close(code=CLOSE_POLICY, reason="rate limit")
        await self._reject("rate_limited", f"over {CONFIG.rate_per_second:g} frames/s; slow down")

    async def _reject(self, code: str, detail: str) -> None:
        metrics.FRAMES_REJECTED.labels(code).inc()
        await self._send_text(error_frame(code, detail))

    # -- deliver -------------------------------------------------------------------------

    async def chat_message(self, event: dict[str, Any]) -> None:
        """A room message from the channel layer: deliver it once, in id order."""
        message_id: int = event["id"]
        if message_id <= self.last_id:
            return
        if message_id > self.last_id + 1:
            await self._fill_gap(message_id)
        await self._deliver(message_id, event["frame"])

    def idle(self) -> bool:
        """Nothing in flight to this client and nothing queued for it."""
        if self.sending_since:
            return False
        return self.direct is None or self.direct.backlog(self.channel_name) == 0

    async def nudge(self, last_id: int) -> None:
        """Tail-watcher hook: history holds up to ``last_id``; queue a catch-up."""
        await self.channel_layer.send(self.channel_name, {"type": "chat.sync", "last_id": last_id})

    async def chat_sync(self, event: dict[str, Any]) -> None:
        """From the tail watcher: history holds up to ``last_id``; catch up if behind."""
        if event["last_id"] > self.last_id:
            await self._fill_gap(event["last_id"] + 1)

    def deliver_now(self, message: dict[str, Any]) -> bool:
        """The fan-out's fast path: the next message in order, to an idle, writable socket."""
        if not self.live or self._turn.locked():
            return False
        if message.get("type") != "chat.message":
            return self._presence_now(message)
        message_id = message["id"]
        if message_id <= self.last_id:
            return True  # already sent: a duplicate
        if message_id != self.last_id + 1 or not self.send_now(message["frame"]):
            return False  # a gap to fill, or a socket that would block: the ordered path
        self.last_id = message_id
        metrics.TALLY.deliveries += 1
        return True

    async def _fill_gap(self, upto: int) -> None:
        """Send the messages between ``last_id`` and ``upto`` from history."""
        metrics.GAPS_FILLED.inc()
        try:
            replay = await self.history.after(self.room, self.last_id, upto - self.last_id - 1)
        except HistoryUnavailable:
            await self._send_text(gap_frame(self.last_id + 1, upto - 1))
            return
        if replay.missing is not None:
            await self._send_text(gap_frame(replay.missing[0], min(replay.missing[1], upto - 1)))
        for message_id, frame in replay.frames:
            if self.last_id < message_id < upto:
                await self._deliver(message_id, frame)

    async def _deliver(self, message_id: int, frame: str) -> None:
        await self._send_text(frame)
        self.last_id = message_id
        metrics.TALLY.deliveries += 1

    async def _send_text(self, text: str) -> None:
        # A send waits while the socket's write buffer is full (the client is not reading).
        # The watchdog drops a client stuck here too long; a timestamp costs less than a
        # timeout per send.
        self.sending_since = time.monotonic()
        try:
            await self.base_send({"type": "websocket.send", "text": text})
        except OSError:
            pass  # the client is gone; its disconnect event is already queued
        finally:
            self.sending_since = 0.0

    def stalled(self) -> None:
        """Watchdog hook: this client has not accepted a frame for too long."""
        self.slow = True
        self.stop()

    async def finish(self) -> None:
        await self._leave()
        if self.slow:
            metrics.SLOW_CLIENTS.inc()
            self._forget(CLOSE_POLICY)
            try:
                async with asyncio.timeout(CONFIG.send_timeout):
                    await self.close(code=CLOSE_POLICY, reason="slow")
            except (TimeoutError, OSError, RuntimeError):
                pass  # still not reading: uvicorn closes the transport when we return
        self._forget(1006)  # no-op unless the connection ended without a disconnect event

    def _forget(self, code: int) -> None:
        if REGISTRY.discard_if_present(self):
            metrics.CONNECTIONS_OPEN.dec()
            metrics.closed(code).inc()

    # -- close ---------------------------------------------------------------------------

    async def close_for_restart(self, code: int, reason: str) -> None:
        """Drain hook: tell the client to reconnect elsewhere."""
        try:
            await self.close(code=code, reason=reason)
        except (OSError, RuntimeError):
            pass  # already closing

    async def websocket_disconnect(self, message: dict[str, Any]) -> None:
        self._forget(message.get("code", 1005))
        await self._leave()
        raise StopConsumer()

    async def _leave(self) -> None:
        self._exit_presence()
        if self.joined:
            self.joined = False
            try:
                await self.channel_layer.group_discard(self.group, self.channel_name)
            except Exception:
                logger.debug("group_discard failed for %s", self.group, exc_info=True)

    # -- presence and typing -------------------------------------------------------------

    def _enter_presence(self) -> asyncio.Future[str] | None:
        """Count this socket in the room's presence; the future is its ``presence`` frame."""
        presence = self.services.presence
        if presence is None:
            return None
        self.present = True
        return presence.enter(self.room, self.user)

    async def _send_presence(self, entering: asyncio.Future[str]) -> None:
        """The room's ``presence`` frame, once the store has answered (after ``ready``, so a
        busy store never delays it); without it when presence storage is unavailable."""
        try:
            frame = await entering
        except Exception as exc:  # the socket works without presence; the next step repairs it
            logger.warning("no presence frame for %s: %s", self.room, exc)
            return
        await self._send_text(frame)

    def _exit_presence(self) -> None:
        if self.present:
            self.present = False
            if self.services.presence is not None:
                self.services.presence.leave(self.room, self.user)

    async def _typing(self) -> None:
        """A typing notice: never stored, relayed at most once per interval per user, and
        flood-limited by a bucket of its own so it never costs the user a message."""
        if self.typing_bucket is None:
            self.typing_bucket = TokenBucket(CONFIG.rate_per_second, CONFIG.rate_burst, time.monotonic())
        if not self.typing_bucket.take(time.monotonic()):
            return await self._rate_limited()
        if self.live and self.services.presence is not None:
            await self.services.presence.typing(self.room, self.user)

    async def presence_event(self, event: dict[str, Any]) -> None:
        """A join, leave, diff or typing frame for the room (never stored, no id)."""
        if event.get("skip") != self.user:
            await self._send_text(event["frame"])

    def _presence_now(self, message: dict[str, Any]) -> bool:
        """``deliver_now`` for presence events: written at once to a writable socket."""
        if message.get("type") != "presence.event":
            return False
        return message.get("skip") == self.user or self.send_now(message["frame"])
