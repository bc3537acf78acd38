"""What a chat connection uses once the process is warm, and the "record, then broadcast" rule."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from app import metrics
from app.history import Appended, History
from app.layers.api import GroupOrder
from app.presence import Presence
from app.protocol import FrameTemplate
from app.rooms import group_name

logger = logging.getLogger("parley")

READINESS_GROUP = "parley.readiness"
# How long a message published before the one ahead of it in its room waits for it, before
# members are left to fill the hole from history (app/layers/sequencer.py). Two appends'
# answers, or two processes' publishes, come out of order by well under a millisecond; a
# hole pub/sub really lost (an outage) costs its members this much more delay.
ORDER_HOLD = 0.05


def position(event: dict[str, Any]) -> tuple[str, int] | None:
    """A ``chat.message`` event's place in its room: its epoch and id (``post`` sets both)."""
    epoch, message_id = event.get("epoch"), event.get("id")
    if isinstance(epoch, str) and type(message_id) is int:
        return epoch, message_id
    return None


@dataclass
class ChatServices:
    """The channel layer and history, shared by every connection and the HTTP API."""

    layer: Any
    history: History
    # Redis layers hold connections and subscriptions to release at exit; the local one not.
    flush_layer_on_close: bool = False
    # Who is here and who is typing (None with CHAT_PRESENCE=false).
    presence: Presence | None = None

    def order_broadcasts(self) -> None:
        """On the serving event loop: have the layer hand each room's messages to the members
        here in id order, when it can (``GroupOrder``), so that two published out of it do
        not send every member to history for the first."""
        if isinstance(self.layer, GroupOrder):
            self.layer.order("chat.message", position, ORDER_HOLD)

    async def check(self, timeout: float) -> None:
        """One channel-layer round trip and a history ping; raise if either fails."""

        async def round_trip() -> None:
            # Through a group: with Redis that is a real SUBSCRIBE, PUBLISH and delivery.
            channel = await self.layer.new_channel()
            await self.layer.group_add(READINESS_GROUP, channel)
            try:
                await self.layer.group_send(READINESS_GROUP, {"type": "probe"})
                await self.layer.receive(channel)
            finally:
                await self.layer.group_discard(READINESS_GROUP, channel)

        await asyncio.wait_for(round_trip(), timeout)
        await asyncio.wait_for(self.history.ping(), timeout)

    async def post(self, room: str, template: FrameTemplate, dedupe: str | None) -> Appended:
        """Record a message, then broadcast it to the room unless it was a resend.

        ``dedupe`` is app.protocol.dedupe_key of the sender and its ``client_id``. The event
        carries the room's epoch (and its base), so members notice a sequence that started
        over from the live stream itself; and the message's tag and its predecessor's
        (``ts``, ``prev``: app/history/lineage.py), so they notice a store that went back in
        time and gave their ids to other messages.

        Raises HistoryUnavailable when the message could not be made durable: it is then
        never broadcast, so no client sees a message that could be lost.
        """
        appended = await self.history.append(room, template, dedupe)
        if not appended.duplicate:
            event = {
                "type": "chat.message", "id": appended.id, "frame": appended.frame,
                "epoch": appended.state.epoch, "base": appended.state.base, "ts": template.ts,
            }
            if appended.prev is not None:  # absent, not None: members then check nothing
                event["prev"] = appended.prev
            try:
                await self.layer.group_send(group_name(room), event)
                metrics.MESSAGES_BROADCAST.inc()
            except Exception as exc:
                # Durable already: members fill the hole from history (next message or tick).
                logger.warning("broadcast of %s#%d failed: %s", room, appended.id, exc)
        return appended

    async def close(self) -> None:
        """Release history's connections and the layer's subscriptions."""
        await self.history.close()
        if self.presence is not None:
            await self.presence.close()
        if self.flush_layer_on_close:
            await self.layer.flush()
