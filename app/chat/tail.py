"""Delivers the tail a lost broadcast leaves behind.

A consumer fills a hole when the next message arrives; if the lost message was the room's
last, nothing arrives. Once a second this watcher reads, in one batch, the newest id
history holds for every room with members here, and nudges each member that is still
behind what history held a tick ago *and* has nothing queued or in flight: that member
lost a message, rather than being in the middle of receiving it. Busy rooms and slow
readers cost nothing; the nudged consumer fills the gap from history.

The same read watches epochs (app.history.base). A member in another epoch than the room's
(the room's state was lost and drawn again, and no message has said so yet) is nudged with
the room's state and resets. A member found *ahead* of the room in the room's own epoch saw
ids the store no longer has (a failover to a replica that lacked the last writes): the room
gets a new epoch, so nobody silently drops the ids that will be given again. Both checks use
member positions noted before the read, so an append between the two is never mistaken for
either: within an epoch the store's newest id only grows.

A member level with the room is checked by tag too (app/history/lineage.py): one shown the
room's newest id under another tag than history's saw a message the store lost, and the ids
given again since were all lost on their way here too (else its own check would have caught
the first). That is the same evidence as a member ahead: the room gets a new epoch.

"Behind" and "ahead" use different tops: members are nudged only up to the newest id the
store *shows* (acked on replicas), while ahead means past the newest id it *gave*. Ids given
and left unshown for a whole tick are confirmed in the background (app/chat/confirms.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from app.chat.confirms import Confirms
from app.chat.registry import Member, Registry
from app.history import History, RoomState
from app.history.lineage import diverged

logger = logging.getLogger("parley")

Top = tuple[int, set[int | None]]  # the level members' highest id, and their tags for it
Noted = tuple[Member, str, int, int | None]  # a member, its epoch, last id and its tag when noted


def saw_lost(state: RoomState, position: int, tags: Iterable[int | None]) -> bool:
    """Whether members at ``position`` in the room's epoch, holding it under ``tags``, were
    shown ids the store lost: past the newest it gave, or its newest under another tag."""
    return position > state.top or (position == state.last_id and any(diverged(t, state.tip) for t in tags))


class TailWatcher:
    """Per-process loop; one batched history read per tick for all rooms with members."""

    def __init__(self, registry: Registry, history: History, interval: float) -> None:
        self.registry = registry
        self.history = history
        self.interval = interval
        self._held: dict[str, RoomState] = {}
        # Rooms found settled at the last tick: history unchanged for a tick and every member
        # level with it. Until a read shows their state changed, nobody in them can be behind
        # (a member never goes back within an epoch, and a joiner starts level), so their
        # members are not looked at one by one: at 16,667 sockets, reading each one's
        # position every second was ~2.5 % of a core.
        self._settled: set[str] = set()
        self.confirms = Confirms(history)

    def _note(self, rooms: dict[str, list[Member]]) -> tuple[dict[str, Top], dict[str, list[Noted]]]:
        """Members' positions, per room: the highest among those level with what history
        held a tick ago with the tags they hold it under, and the others one by one (a tuple
        per member per tick was most of this loop's cost at 5,000 members)."""
        tops: dict[str, Top] = {}
        noted: dict[str, list[Noted]] = {}
        for room, members in rooms.items():
            state = self._held.get(room)
            level_epoch, floor = (state.epoch, state.last_id) if state is not None else (None, 0)
            top, tags, others = -1, set(), []
            for member in members:
                epoch, last = member.epoch, member.last_id
                if epoch == level_epoch and last >= floor:
                    if last > top:
                        top, tags = last, {member.last_ts}
                    elif last == top:
                        tags.add(member.last_ts)
                else:
                    others.append((member, epoch, last, member.last_ts))
            tops[room], noted[room] = (top, tags), others
        return tops, noted

    async def tick(self) -> int:
        """One comparison; returns how many members were nudged."""
        names = self.registry.rooms()
        # Settled rooms' members are not even listed (at 16,667 sockets, copying every
        # room's members each second was a third of this loop's cost).
        rooms = {r: self.registry.members(r) for r in names if r not in self._settled}
        # Positions before the read: the read is then at least as new as each of them.
        tops, noted = self._note(rooms)
        read = dict(zip(names, await self.history.states(names) if names else [], strict=True))
        # A settled room whose state moved is looked at now, positions first and read again.
        woke = [r for r in names if r in self._settled and read[r] != self._held.get(r)]
        if woke:
            woken = {r: self.registry.members(r) for r in woke}
            rooms.update(woken)
            more_tops, more_noted = self._note(woken)
            tops.update(more_tops)
            noted.update(more_noted)
            read.update(zip(woke, await self.history.states(woke), strict=True))
        held_now: dict[str, RoomState] = {}
        settled: set[str] = set()
        nudged = 0
        for room in names:
            state = read[room]
            if room not in tops:  # settled, and its state has not moved
                held_now[room] = self._held[room]  # equal to what was just read
                settled.add(room)
                continue
            if state is None:  # the room's state is gone and nothing drew it again yet
                state = await self.history.state(room)
            held_before = self._held.get(room)
            level_epoch = held_before.epoch if held_before is not None else None
            top, tags = tops[room]
            if (level_epoch == state.epoch and saw_lost(state, top, tags)) or any(
                epoch == state.epoch and saw_lost(state, last, (ts,)) for _, epoch, last, ts in noted[room]
            ):
                state = await self.history.restart(room, state.epoch)
            elif state.unshown and state == held_before:
                # Ids unshown for a whole tick: no append is waiting for them any more.
                # Confirmed in the background: shown from a later read on.
                self.confirms.request(room)
            elif state == held_before and not noted[room]:
                settled.add(room)  # unchanged for a tick, everyone level with it
            held_now[room] = state
            candidates = noted[room]
            if held_before is not None and level_epoch != state.epoch:
                # The room is in another epoch now: the level members are behind it too.
                apart = {id(member) for member, _, _, _ in candidates}
                candidates = candidates + [(member, held_before.epoch, held_before.last_id, None)
                                           for member in rooms[room] if id(member) not in apart]
            for member, epoch, last, _ in candidates:
                if epoch != state.epoch:
                    target = state
                elif held_before is not None and held_before.epoch == epoch and last < held_before.last_id:
                    target = held_before
                else:
                    continue
                if member.epoch != epoch or not member.idle():
                    continue  # moved on since noted, or busy receiving: its own path decides
                await member.nudge(target)
                nudged += 1
        self._held = held_now
        self._settled = settled
        self.confirms.keep(names)
        self.confirms.start()
        return nudged

    async def run(self) -> None:
        try:
            while True:
                await asyncio.sleep(self.interval)
                try:
                    await self.tick()
                except Exception as exc:  # Redis away: readiness reports it; try again next tick
                    logger.debug("tail check skipped: %s", exc)
        finally:
            await self.confirms.close()
