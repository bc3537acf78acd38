"""The chat consumer: one per WebSocket, the Channels tutorial's shape plus history.

Connect joins the room's group and replays what the client missed; receive validates,
records and broadcasts; ``chat_message`` delivers in id order, filling holes from history;
disconnect leaves the group. Frame parsing and building live in app.protocol.

Ids count within the room's epoch (app.history.base). A member that meets another epoch than
its own (at connect, in the live stream, from the tail watcher) is sent ``reset`` and then
everything the new epoch holds, as a member that has just joined: it never skips silently.
The same happens when the store is found to hold another message under an id the member was
shown (it went back in time and kept its epoch: app/history/lineage.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
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
from app.history import HistoryUnavailable, Replay, RoomState
from app.history.lineage import diverged, tag_at
from app.history.pages import PAGE_FRAMES, fill_pages, fitting, read_page
from app.layers.api import Write
from app.presence import Snapshot
from app.protocol import (
    ConnectParams,
    FrameError,
    ack_frame,
    anonymous_name,
    dedupe_key,
    error_frame,
    gap_frame,
    is_typing_frame,
    message_template,
    parse_client_frame,
    parse_connect_params,
    ready_frame,
    repair_text,
    reset_frame,
)
from app.rooms import group_name, is_valid_room
from app.throttled_log import Throttled

logger = logging.getLogger("parley")
_unavailable = Throttled(logger, interval=10.0)

CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_TOKEN_EXPIRED = 4001
# Epochs a member has left, with its last id in each: a late event from one of them is stale,
# not a new restart.
RETIRED_EPOCHS = 4


def _answered(entering: asyncio.Future[Snapshot] | None) -> Snapshot | None:
    """The presence snapshot if the store has already answered (then it goes out in the same
    write as ``ready``); None while it has not, or when it failed."""
    if entering is None or not entering.done() or entering.cancelled() or entering.exception():
        return None
    return entering.result()


class ChatConsumer(SerialConsumer):
    """A member of one room. ``last_id`` is the newest id this client has been sent."""

    room: str = ""
    group: str = ""
    user: str = ""
    owner: str | None = None  # who sends, when known (a token's sub): dedupe is per owner
    epoch: str = ""
    retired: tuple[tuple[str, int], ...] = ()
    expires_at: float = float("inf")  # the token's exp (unix seconds), with CHAT_AUTH=jwt
    expiry: asyncio.TimerHandle | None = None
    last_id: int = 0
    # The tag (``ts``) of the message ``last_id`` names, as this client was shown it; None when
    # unknown (then nothing is checked against it): app/history/lineage.py.
    last_ts: int | None = None
    joined: bool = False
    slow: bool = False
    live: bool = False
    # What the close is counted as: the disconnect event's code, or 1006 if none came.
    close_code: int = 1006
    present: bool = False
    # The version of the last ``presence`` snapshot this client was sent (-1: none yet): a
    # repair no newer than it would show nothing new, or take the list back.
    presence_version: int = -1
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
            params = parse_connect_params(self.scope.get("query_string", b""), CONFIG.history_max,
                                          anonymous=CONFIG.auth != "jwt")
        except FrameError as exc:
            return await self._refuse(400, exc.code)
        if CONFIG.auth == "jwt":
            from app.chat.auth import AuthError, authorize  # loaded at warm-up only in jwt mode

            try:
                identity = authorize(params.token, room, CONFIG.jwt_secret, audience=CONFIG.jwt_audience)
            except AuthError as exc:
                return await self._refuse(403, exc.reason)
            self.user = self.owner = identity.sub
            self.expires_at = identity.exp
        elif params.anon is not None:
            # The client's own secret names it: the same member across reconnects and deploys.
            self.user = anonymous_name(params.anon)
        else:
            self.user = f"anon-{secrets.token_hex(4)}"
        self.room, self.group = room, group_name(room)
        self.history = self.services.history
        self.bucket = TokenBucket(CONFIG.rate_per_second, CONFIG.rate_burst, time.monotonic())
        self.strikes = 0

        try:
            # Joined only once group_add returns: Parley's layers undo a join that raises, so
            # there is nothing to discard (channels-redis's core layer, kept for comparison
            # only, can keep a member whose EXPIRE failed after its ZADD; it lapses with
            # group_expiry).
            await self.channel_layer.group_add(self.group, self.channel_name)
            self.joined = True
            reset, replay, live_from = await self._catch_up(params)
        except Exception as exc:  # history or channel layer (Redis) unreachable
            # Every client of a process reconnects into an outage: one line per interval.
            _unavailable.warning("storage", "refusing joins: storage unavailable (%s: %s, room %s)",
                                 type(exc).__name__, exc, self.room)
            logger.debug("join to %s refused", self.room, exc_info=True)
            await self._leave()
            return await self._refuse(503, "unavailable")
        # Counted only once the join is sure to be accepted: a refused one was announced
        # to the room as a join, and a leave after the grace.
        entering = self._enter_presence()

        # Registered from the accept on, not only once live: the replay below is sent to
        # a client that may never read it, and the watchdog and the drain see members here.
        REGISTRY.add(self)
        metrics.CONNECTIONS_OPENED.inc()
        await self.accept()
        self.epoch = replay.state.epoch
        presence = _answered(entering)
        if presence is not None:
            self.presence_version = presence.version
        presence_frame = presence.frame if presence is not None else None
        rest = await self._replay(reset, replay, live_from, presence_frame)
        if rest is not None:
            del replay  # the first page: not held while the next ones are read and sent
            await self._replay_rest(rest, presence_frame)
        if CONFIG.auth == "jwt":
            self._expire_at(self.expires_at)
        if entering is not None and presence is None:
            await self._send_presence(entering)
        self.live = True

    async def _replay(self, reset: bool, replay: Replay, live_from: int, presence: str | None) -> int | None:
        """What the client missed, then ``ready``: reset, gap, the replayed messages in id
        order, ``ready`` and the ``presence`` frame when the store has already answered,
        written together while the socket takes them (one write for a join's or a
        reconnect's few frames), the rest sent one by one as the client reads.

        ``replay`` is the first page of what was missed (app/history/pages.py). When more
        follows, this sends the page alone and returns the id the replay is to reach, for
        ``_replay_rest`` to send the rest and then ``ready``; else None."""
        texts = []
        if reset:
            texts.append(reset_frame(self.room, self.epoch, replay.state.base))
        if replay.missing is not None:
            texts.append(gap_frame(*replay.missing))
        first = len(texts)  # texts[first + i] is replay.frames[i]
        texts += [frame for _, frame in replay.frames]
        # The read stopped at a page: the room held more, up to its newest id as read then.
        rest = replay.state.last_id if replay.frames and replay.frames[-1][0] < replay.state.last_id else None
        if rest is None:
            top = replay.frames[-1][0] if replay.frames else self.last_id
            texts.append(ready_frame(self.room, max(self.last_id, top, live_from), self.user, self.epoch,
                                     CONFIG.max_message_chars))
            if presence is not None:
                texts.append(presence)
        await self._send_frames(texts, replay.frames, first)
        if rest is None:
            self.last_id = max(self.last_id, live_from)
        self.last_ts = tag_at(replay, self.last_id)
        return rest

    async def _replay_rest(self, upto: int, presence: str | None) -> None:
        """The rest of a replay longer than a page, up to ``upto`` (the room's newest id when
        the first page was read), then ``ready`` and ``presence``.

        Read and sent as a gap is filled (``_fill``): a page at a time, each read once the one
        before was written, so a client that does not read holds one page, not its replay.
        Live messages meanwhile wait in this member's queue (the join holds the turn), and
        those the replay sent are dropped by id when their turn comes, as any duplicate. An
        epoch change between pages resets the member and sends the new epoch; another message
        under an id it was sent restarts the room (``_diverged``). History not answering: the
        member was accepted already, so ``ready`` says how far it got (its ``last_id``) and
        the next message or the tail watcher's nudge fills the rest once history answers, as
        after any fill that failed."""
        await self._fill(upto + 1)
        texts = [ready_frame(self.room, self.last_id, self.user, self.epoch, CONFIG.max_message_chars)]
        if presence is not None:
            texts.append(presence)
        await self._send_frames(texts)

    async def _send_frames(self, texts: list[str], frames: list[tuple[int, str]] | None = None,
                           first: int = 0) -> None:
        """Write ``texts`` in order: together while the socket takes them, the rest one by
        one as the client reads. ``texts[first + i]`` is ``frames[i]``: once it is sent, the
        member is at its id."""
        frames = frames or []
        written = self.send_all_now(texts)
        for index, text in enumerate(texts):
            if index >= written:
                await self._send_text(text)
            if first <= index < first + len(frames):
                self.last_id = frames[index - first][0]
                metrics.TALLY.deliveries += 1

    async def _catch_up(self, params: ConnectParams) -> tuple[bool, Replay, int]:
        """What to send before going live: (reset first?, the replay, id live starts after)."""
        if params.since is not None:
            since = params.since
            replay, _ = await read_page(functools.partial(self.history.resume, self.room, since))
            state = replay.state
            # Another epoch, or ids the room never reached in its own (the client's ids are
            # from a past the store lost): reset, and replay the epoch from its start.
            # (Ids given but not shown yet count as the room's: a client can hold one whose
            # note that it is shown a failover lost.)
            # Or history holds another message under ``since`` than the client says it showed
            # (the store went back in time and gave its ids again): this client alone is reset
            # and sent the epoch from its start. Never the room, on a client's word: any client
            # could then reset everyone at will. Live members the store misled find it from
            # what the server itself sent them (``_diverged``).
            reset = ((params.epoch is not None and params.epoch != state.epoch) or since > state.top
                     or diverged(params.ts, tag_at(replay, since)))
            if reset:
                since = state.base
                replay, _ = await read_page(functools.partial(self.history.after, self.room, since))
            start = replay.frames[-1][0] if replay.frames else min(since, replay.state.top)
            if replay.missing and not replay.frames:
                start = max(start, replay.missing[1])
            return reset, replay, start
        if params.last:
            replay = await self._window(params.last)
            start = replay.frames[-1][0] if replay.frames else replay.state.last_id
            return False, replay, start
        state = await self.history.state_for_join(self.room)
        return False, Replay(state=state), state.last_id

    async def _window(self, count: int) -> Replay:
        """The first page of the newest ``count`` messages (``?last=``). One read when they
        fit in a page, as ever; else the page that starts them, read as a resume from just
        below them: the rest follows a page at a time. Never a ``gap``: a window shows what
        history holds (``latest`` returns fewer when it holds fewer)."""
        if count <= PAGE_FRAMES:
            replay = await self.history.latest(self.room, count)
            if fitting(replay.frames) == len(replay.frames):
                return replay
            since = replay.frames[0][0] - 1
            del replay  # not held while its first page is read
        else:
            since = max((await self.history.state(self.room)).last_id - count, 0)
        # Read after the room's state: newer messages may come with the window, and are then
        # not sent live again (their ids are the member's); an epoch drawn in between is the
        # one the member joins (the page's state).
        replay, _ = await read_page(functools.partial(self.history.after, self.room, since))
        return dataclasses.replace(replay, missing=None)

    async def _refuse(self, status: int, code: str) -> None:
        # websocket.connect was already received: this is its answer.
        await refuse(self.scope, self.base_send, status, code)
        raise StopConsumer()

    # -- receive -------------------------------------------------------------------------

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if text_data is not None and is_typing_frame(text_data):
            return await self._typing()
        # Metered by when the frame arrived: see app.chat.ratelimit.
        if not self.bucket.take(self.arrived):
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
            appended = await self.services.post(self.room, template, dedupe_key(self.owner, chat.client_id))
        except HistoryUnavailable as exc:
            # Redis refusing writes (out of memory, too few replicas) leaves nothing else in
            # the log: the reason, once per interval, as for joins refused.
            _unavailable.warning("send", "refusing sends: storage unavailable (%s, room %s)", exc, self.room)
            return await self._reject("unavailable", "message not stored: storage unavailable, retry")
        # Recorded in an epoch this member has not met yet: the reset comes before the ack,
        # so the client never sees an id of the new epoch while it still counts in the old.
        await self._in_epoch(appended.state.epoch, appended.state.base)
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
        if not await self._in_epoch(event.get("epoch", self.epoch), event.get("base", 0)):
            return
        message_id: int = event["id"]
        if message_id <= self.last_id:
            # Already sent; unless the store gave this member's newest id to another message.
            if message_id == self.last_id and diverged(self.last_ts, event.get("ts")):
                await self._diverged()
            return
        if message_id > self.last_id + 1 and not await self._fill_gap(message_id):
            return
        if message_id == self.last_id + 1 and diverged(self.last_ts, event.get("prev")):
            await self._diverged()
            return
        await self._deliver(message_id, event["frame"], event.get("ts"))

    async def _in_epoch(self, epoch: str, base: int, store_at: int | None = None) -> bool:
        """Follow the room into ``epoch`` (reset) unless it is one this member has left.

        ``store_at``: the room's last id in ``epoch`` as history holds it now (the tail
        watcher's read). An epoch left can come back: a slot migration cut short by a
        failover hands the room's old keys back after a new epoch was drawn meanwhile. Once
        history is past where this member left that epoch, the member returns to it, from
        there: nothing it was shown is shown again, nothing after is skipped."""
        if epoch == self.epoch:
            return True
        left_at = dict(self.retired).get(epoch)
        if left_at is None:
            await self._reset(epoch, base)
            return True
        if store_at is None or store_at <= left_at:
            return False  # a late event from before a reset: its epoch is gone
        await self._reset(epoch, left_at)
        return True

    async def _reset(self, epoch: str, base: int) -> None:
        """The room's ids started over: say so; ids of ``epoch`` follow ``base``."""
        metrics.RESETS.inc()
        kept = [left for left in self.retired if left[0] != epoch][-(RETIRED_EPOCHS - 1):]
        self.retired = (*kept, (self.epoch, self.last_id))
        self.epoch, self.last_id, self.last_ts = epoch, base, None
        await self._send_text(reset_frame(self.room, epoch, base))

    def idle(self) -> bool:
        """Live, with nothing in flight to this client and nothing queued for it."""
        if self.sending_since or not self.live:
            return False
        return self.direct is None or self.direct.backlog(self.channel_name) == 0

    async def nudge(self, state: RoomState) -> None:
        """Tail-watcher hook: the room is at ``state``; queue a catch-up."""
        await self.channel_layer.send(self.channel_name, {
            "type": "chat.sync", "epoch": state.epoch, "base": state.base, "last_id": state.last_id,
        })

    async def chat_sync(self, event: dict[str, Any]) -> None:
        """From the tail watcher: history holds up to ``last_id``; catch up if behind."""
        if not await self._in_epoch(event["epoch"], event["base"], store_at=event["last_id"]):
            return
        if event["last_id"] > self.last_id:
            await self._fill_gap(event["last_id"] + 1)

    def deliver_now(self, message: dict[str, Any]) -> bool | Write:
        """The fan-out's fast path: the next message in order, to an idle, writable socket."""
        if not self.live or self.closing or self._turn.locked():
            return False
        if message.get("type") != "chat.message":
            return self._presence_now(message)
        if message.get("epoch", self.epoch) != self.epoch:
            return False  # a reset to send, or a stale event to drop: the ordered path
        message_id = message["id"]
        if message_id <= self.last_id:
            # Already sent: a duplicate; unless its id is our newest and the message is
            # another (the store went back in time): the ordered path checks.
            return message_id < self.last_id or message.get("ts", self.last_ts) == self.last_ts
        # A message whose predecessor is not what this member was shown last (or unknown to
        # it) takes the ordered path too, which decides (app/history/lineage.py).
        if message_id != self.last_id + 1 or message.get("prev", self.last_ts) != self.last_ts:
            return False  # a gap to fill: the ordered path
        taken = self.send_shared(message["frame"])
        if not taken:
            return False  # a socket that would block: the ordered path
        self.last_id = message_id
        self.last_ts = message.get("ts")
        metrics.TALLY.deliveries += 1
        return taken

    async def _fill_gap(self, upto: int) -> bool:
        """Send the messages between ``last_id`` and ``upto`` from history. False when history
        is in another epoch: the member was reset to it and caught up there instead, so
        whatever was to follow the gap belongs to an epoch that is gone."""
        metrics.GAPS_FILLED.inc()
        return await self._fill(upto)

    async def _fill(self, upto: int) -> bool:
        """``_fill_gap``'s work (and a long replay's): a page at a time (app/history/pages.py),
        each read once the one before was written, so a member far behind, or one that does
        not read, holds one page rather than all it lacks. Every page is checked as one fill
        was: another epoch resets the member, another message under its ``last_id`` restarts
        the room, history not answering leaves it where it got to."""
        count = PAGE_FRAMES
        while self.last_id < upto - 1 and not self.closing:
            since = self.last_id
            try:
                replay, count = await read_page(
                    fill_pages(self.history, self.room, self.epoch, since, upto), count)
                if replay.state.epoch != self.epoch:
                    await self._reset(replay.state.epoch, replay.state.base)
                    if replay.state.last_id > self.last_id:
                        await self._fill_gap(replay.state.last_id + 1)
                    return False
            except HistoryUnavailable:
                # Not a gap: the messages are durable, history just did not answer this time.
                # The member stays where it is; the next message or the tail watcher's nudge
                # fills it once history answers, so nothing is skipped.
                return False
            if diverged(self.last_ts, tag_at(replay, since)):
                await self._diverged()
                return False
            texts = []
            if replay.missing is not None:
                texts.append(gap_frame(replay.missing[0], min(replay.missing[1], upto - 1)))
            frames = [(message_id, frame) for message_id, frame in replay.frames if since < message_id < upto]
            await self._send_frames(texts + [frame for _, frame in frames], frames, len(texts))
            if replay.frames:
                self.last_ts = tag_at(replay, self.last_id)
            if not frames:
                if replay.missing is not None:
                    # All it lacks below ``upto`` is gone, and it was told so: past it, so a
                    # later fill does not say so again.
                    self.last_id, self.last_ts = max(self.last_id, min(replay.missing[1], upto - 1)), None
                break
            if len(replay.frames) < count:
                break  # history holds nothing more (the newest it holds is below ``upto``)
        return True

    async def _diverged(self) -> None:
        """History holds another message under an id this member was shown: the store went
        back in time and kept its epoch. The room gets a new epoch (as the tail watcher does
        for a member found ahead of the room), and this member is reset to it and sent what
        it holds; so are the others, from their own check or the new epoch's next message.
        History not answering: the member stays where it is, and the next message or the
        tail watcher's nudge checks again."""
        try:
            state = await self.history.restart_shared(self.room, self.epoch)
        except HistoryUnavailable:
            return
        if state.epoch == self.epoch:
            return  # not restarted (``restart`` always leaves the stale epoch): never loop
        followed = await self._in_epoch(state.epoch, state.base, store_at=state.last_id)
        if followed and state.last_id > self.last_id:
            await self._fill_gap(state.last_id + 1)

    async def _deliver(self, message_id: int, frame: str, ts: int | None) -> None:
        await self._send_text(frame)
        self.last_id = message_id
        self.last_ts = ts
        metrics.TALLY.deliveries += 1

    async def _send_text(self, text: str) -> None:
        try:
            # Written at once when the socket can take it (the ready, presence and ack
            # frames, a resume's replay), as a fan-out writes; else the ordered ASGI send.
            if self.closing or not self.send_now(text):
                await self.send_event({"type": "websocket.send", "text": text})
        except UnicodeEncodeError:
            # Frames are built encodable (app.protocol); this guard means no record, however
            # it was stored, can end a member's connection. Nothing was written.
            await self.send_event({"type": "websocket.send", "text": repair_text(text)})

    def stalled(self) -> None:
        """Watchdog hook: this client has not accepted a frame for too long."""
        if not self.slow:
            self.slow = True
            self.stop()

    async def finish(self) -> None:
        """Leave the registry (and so the open gauge), the group and, if slow, the socket."""
        code = CLOSE_POLICY if self.slow else self.close_code
        try:
            if REGISTRY.discard_if_present(self):
                metrics.closed(code).inc()
            if self.slow:
                metrics.SLOW_CLIENTS.inc()
                if not self.hang_up(CLOSE_POLICY, "slow", linger=CONFIG.send_timeout):
                    try:
                        async with asyncio.timeout(CONFIG.send_timeout):
                            await self.close(code=CLOSE_POLICY, reason="slow")
                    except TimeoutError:
                        pass  # still not reading: the server closes the transport when we return
        finally:
            # Whatever the close did (a server other than uvicorn may raise on a socket
            # already gone), the group and presence are left: the cluster layer has no
            # expiry that would ever drop a member left behind.
            await self._leave()

    # -- close ---------------------------------------------------------------------------

    async def close_for_restart(self, code: int, reason: str) -> None:
        """Drain hook: tell the client to reconnect elsewhere, without waiting for it.

        A socket that cannot take the close frame now has a client that is not reading:
        the drain does not spend its budget on it, the connection is dropped at once.
        """
        if self.writable() is False and self.hang_up(code, reason, linger=0.0):
            return
        await self.close(code=code, reason=reason)

    async def websocket_disconnect(self, message: dict[str, Any]) -> None:
        self.close_code = message.get("code", 1005)
        raise StopConsumer()

    def _expire_at(self, exp: float) -> None:
        """Close the connection when its token expires: the client fetches a new one and
        resumes (PROTOCOL.md, close 4001)."""
        loop = asyncio.get_running_loop()
        self.expiry = loop.call_later(max(exp - time.time(), 0), self._expired)

    def _expired(self) -> None:
        self.expiry = None
        asyncio.ensure_future(self._close_expired())

    async def _close_expired(self) -> None:
        async with self._turn:  # between two handlers, never inside one
            if self.joined:
                await self.close(code=CLOSE_TOKEN_EXPIRED, reason="token expired")

    async def _leave(self) -> None:
        if self.expiry is not None:
            self.expiry.cancel()
            self.expiry = None
        self._exit_presence()
        if self.joined:
            self.joined = False
            try:
                await self.channel_layer.group_discard(self.group, self.channel_name)
            except Exception:
                logger.debug("group_discard failed for %s", self.group, exc_info=True)

    # -- presence and typing -------------------------------------------------------------

    def _enter_presence(self) -> asyncio.Future[Snapshot] | None:
        """Count this socket in the room's presence; the future is its ``presence`` snapshot."""
        presence = self.services.presence
        if presence is None:
            return None
        self.present = True
        return presence.enter(self.room, self.user)

    async def _send_presence(self, entering: asyncio.Future[Snapshot]) -> None:
        """The room's ``presence`` frame, once the store has answered (after ``ready``, so a
        busy store never delays it); without it when presence storage is unavailable."""
        try:
            snapshot = await entering
        except Exception as exc:  # works without presence; a repair sends it once the store answers
            logger.warning("no presence frame for %s: %s", self.room, exc)
            return
        self.presence_version = snapshot.version
        await self._send_text(snapshot.frame)

    def _exit_presence(self) -> None:
        if self.present:
            self.present = False
            if self.services.presence is not None:
                self.services.presence.leave(self.room, self.user)

    async def _typing(self) -> None:
        """A typing notice: never stored, relayed at most once per interval per user, and
        flood-limited by a bucket of its own so it never costs the user a message."""
        if self.typing_bucket is None:
            self.typing_bucket = TokenBucket(CONFIG.rate_per_second, CONFIG.rate_burst, self.arrived)
        if not self.typing_bucket.take(self.arrived):
            return await self._rate_limited()
        if self.live and self.services.presence is not None:
            await self.services.presence.typing(self.room, self.user)

    async def presence_event(self, event: dict[str, Any]) -> None:
        """A join, leave, diff or typing frame for the room (never stored, no id)."""
        if event.get("skip") != self.user:
            await self._send_text(event["frame"])

    async def presence_repair(self, event: dict[str, Any]) -> None:
        """The room's snapshot again: announcements to this process were lost. Always through
        the queue, so it follows whatever reached this member before it; a member whose own
        snapshot is as new (one that joined meanwhile) is not sent it, nor is a member it is
        not ``to`` (sent to those a frame was dropped for)."""
        to = event.get("to")
        if to is not None and self.channel_name not in to:
            return
        if event["version"] > self.presence_version:
            self.presence_version = event["version"]
            await self._send_text(event["frame"])

    def _presence_now(self, message: dict[str, Any]) -> bool | Write:
        """``deliver_now`` for presence events: written at once to a writable socket."""
        if message.get("type") != "presence.event":
            return False  # a repair takes the ordered path
        return message.get("skip") == self.user or self.send_shared(message["frame"])
