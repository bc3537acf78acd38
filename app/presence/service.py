"""A process's presence: its members' sockets, the store's steps, and the announcements.

Joins and departures are written to the store in one batch per event-loop turn (as
app/history/batch.py does for last-id reads): a burst of 5,000 joins is a few hundred script
calls, not 5,000, and every joiner of a room in one turn shares one snapshot frame. A loop
refreshes this process's holds (when the store needs heartbeats), notices departures when
they fall due, and sends big rooms' diffs. Announcements go through the channel layer to the
room's group as ``presence.event`` messages carrying a ready-made frame and the steps they
cover; the layer's tap shows each one to this process once, and a room whose members here
missed one (app/presence/repair.py) is sent a fresh snapshot, as ``presence.repair``, by the
same loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

from app import metrics
from app.layers.api import GroupTap
from app.presence.base import PresenceStore, RoomChange, RoomState
from app.presence.listing import MemberLists
from app.presence.repair import RepairWatch, repair_after
from app.presence.rules import (
    MEMBERS_MAX,
    Announcement,
    Coalescer,
    LocalUsers,
    Outcome,
    heartbeat_interval,
    longest_round,
    tick_interval,
)
from app.protocol import (
    join_frame,
    leave_frame,
    presence_body,
    presence_diff_frame,
    presence_frame,
    typing_frame,
)
from app.rooms import group_name
from app.throttled_log import Throttled

logger = logging.getLogger("parley")
# A tick's step fails every tick while the store is away: a line per 10 s says so.
_tick_failures = Throttled(logger, interval=10.0)

EVENT = "presence.event"
# A fresh snapshot for this process's members of a room, after announcements were lost here.
REPAIR = "presence.repair"
# In a room of more than MEMBERS_MAX, joiners are shown "any 100" members: names read up to
# this long ago serve every joiner meanwhile (reading and decoding 100 names from Redis cost
# ~0.5 ms per batch). Counts are always read fresh.
NAMES_MAX_AGE = 1.0


class Snapshot(NamedTuple):
    """A room's ``presence`` frame and the version it shows."""

    frame: str
    version: int


def _unseen(event: dict[str, Any]) -> None:
    """A repair reaching the members here tells the chain nothing (``_repair`` restarted it)."""


class Presence:
    """Presence for every chat socket of this process (one instance, built at warm-up)."""

    def __init__(self, store: PresenceStore, layer: Any, grace: float,
                 repair_delay: float | None = None) -> None:
        self.store = store
        self.layer = layer
        self.grace = grace
        self.local = LocalUsers()
        self.coalescer = Coalescer(longest=longest_round(grace))
        # Lost announcements are noticed only where the layer shows this process what reaches
        # its members (not on channels-redis's core layer, kept for comparison).
        self.repairs = (RepairWatch(repair_after(grace) if repair_delay is None else repair_delay)
                        if isinstance(layer, GroupTap) else None)
        self._tapped = False  # the tap is per event loop: set on the first join
        self._asked: set[str] = set()  # rooms whose repair snapshot goes in the next batch
        self._owed: set[str] = set()  # rooms with a joiner whose snapshot failed: asked next tick
        # Room -> members here a frame of it was dropped for (their mailbox full): at the next
        # tick (``_retell``) they alone are sent the room's snapshot (app.layers.api.Watch).
        self._short: dict[str, set[str]] = {}
        self._retell: dict[str, set[str]] = {}
        self._ops: dict[str, dict[str, bool]] = {}  # room -> user -> held (the last word wins)
        self._waiters: dict[str, list[asyncio.Future[Snapshot]]] = {}
        self._scheduled = False
        self._due: dict[str, float] = {}  # room -> when a departure there falls due
        self._next_heartbeat = 0.0
        self._tasks: set[asyncio.Future[None]] = set()
        self._in_flight = False  # a batch is with the store: the next one gathers meanwhile
        self._names: dict[str, tuple[float, str]] = {}  # big room -> (read at, members JSON)
        self._lists = MemberLists(NAMES_MAX_AGE)
        self._rejoined: set[tuple[str, str]] = set()  # (room, user) held again by a heartbeat
        # (room, user) whose first socket here is not through a step yet: a heartbeat that
        # steps them first joins them, but they were never announced gone.
        self._entering: set[tuple[str, str]] = set()
        # Rooms whose users here were to be held by a step that failed: held at the next tick.
        self._unheld: set[str] = set()

    # -- sockets -------------------------------------------------------------------------

    def enter(self, room: str, user: str) -> asyncio.Future[Snapshot]:
        """Count a socket of ``user`` in ``room``; the future is its ``presence`` snapshot (the
        frame and the version it shows)."""
        if self.local.attach(room, user):
            self._ops.setdefault(room, {})[user] = True
            self._entering.add((room, user))
            if self.repairs is not None:
                if not self._tapped:
                    self._tapped = True
                    self.layer.tap(EVENT, self._delivered, self._dropped)
                    self.layer.tap(REPAIR, _unseen, self._dropped)
                self.repairs.watch(room)
        waiter: asyncio.Future[Snapshot] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(room, []).append(waiter)
        self._schedule()
        return waiter

    def leave(self, room: str, user: str) -> None:
        """Undo ``enter``. The user's last socket here starts the grace, not a departure."""
        if self.local.detach(room, user):
            self._ops.setdefault(room, {})[user] = False
            self._schedule()
            if self.repairs is not None and not self.local.holds(room):
                self.repairs.forget(room)  # nobody here to repair for
                self._short.pop(room, None)

    async def typing(self, room: str, user: str) -> None:
        """Relay that ``user`` is typing, at most once per TYPING_INTERVAL per user here (a
        user with sockets in two processes can be relayed by each: typing is a hint, not
        worth a Redis round trip per notice)."""
        if self.local.may_type(room, user, time.monotonic()):
            await self._publish(room, {"type": EVENT, "frame": typing_frame(room, user), "skip": user})

    async def snapshot(self, room: str) -> str:
        """The HTTP API's body: the exact count and up to MEMBERS_MAX names."""
        count, members = await self.store.read(room, MEMBERS_MAX)
        return presence_body(room, count, members)

    # -- the batch of one loop turn --------------------------------------------------------

    def _schedule(self) -> None:
        # One batch with the store at a time: what arrives meanwhile waits for it and goes
        # out together, so batches grow with load (one per loop turn when idle).
        if not self._scheduled and not self._in_flight:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        ops, waiters, asked, short = self._ops, self._waiters, self._asked, self._retell
        if not ops and not waiters and not asked and not short:
            return
        self._ops, self._waiters, self._asked, self._retell = {}, {}, set(), {}
        now = time.monotonic()
        changes = []
        known: dict[str, str] = {}  # rooms whose names are recent enough: their members JSON
        for room in ops.keys() | waiters.keys() | asked | short.keys():
            users = ops.get(room, {})
            cached = self._names.get(room)
            # A repair reads the names afresh: it is sent because the list here is wrong.
            repairing = room in asked or room in short
            joining = room in waiters and not repairing
            if joining and cached is not None and now - cached[0] < NAMES_MAX_AGE:
                known[room] = cached[1]
            changes.append(RoomChange(
                room,
                hold=tuple(u for u, held in users.items() if held),
                release=tuple(u for u, held in users.items() if not held),
                sample=(room in waiters or repairing) and room not in known,
            ))
        self._in_flight = True
        self._spawn(self._sync(changes, waiters, known, asked, short))

    def _batch_done(self) -> None:
        self._in_flight = False
        if self._ops or self._waiters or self._asked or self._retell:
            self._schedule()

    def _spawn(self, step: Any) -> None:
        task = asyncio.ensure_future(step)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _sync(self, changes: list[RoomChange], waiters: dict[str, list[asyncio.Future[Snapshot]]],
                    known: dict[str, str], asked: set[str], short: dict[str, set[str]]) -> None:
        """One step of the store for ``changes``; then the joiners' snapshots (``waiters``),
        the rooms' repairs (``asked``: all members here, or only ``short`` ones) and the
        announcements. A room whose step failed has its joiners refused a snapshot (a repair
        sends them one), and the others go on."""
        stepped, failed = await self._step_store(changes)
        for change, exc in failed:
            self._step_failed(change, exc, waiters, asked, short)
        self._entered(change for change, _ in stepped)
        self._batch_done()
        if failed:
            logger.warning("presence step failed in %d of %d rooms: %s", len(failed), len(changes),
                           failed[-1][1])
        now = time.monotonic()
        for change, state in stepped:
            waiting = waiters.get(change.room)
            if not waiting and change.room not in asked and change.room not in short:
                continue
            listed = self._listed(change, state, known, now)
            frame = presence_frame(change.room, state.count, listed, state.version)
            snapshot = Snapshot(frame, state.version)
            for future in waiting or ():
                if not future.done():
                    future.set_result(snapshot)
            if self.repairs is not None:
                if waiting:
                    self.repairs.baseline(change.room, state.version)
                if change.room in asked:  # all members here, the short ones included
                    if not self._repair(change.room, snapshot) and change.room in short:
                        self._owe(change.room, short[change.room])
                elif change.room in short:
                    self._retell_to(change.room, snapshot, short[change.room])
        await self._settle(stepped)

    async def _step_store(self, changes: list[RoomChange]) -> tuple[list[tuple[RoomChange, RoomState]],
                                                                    list[tuple[RoomChange, BaseException]]]:
        """The store's step for ``changes``: the rooms that stepped, with their states, and
        the rooms that failed, with why (every room, when the store did not answer at all)."""
        results: Sequence[RoomState | BaseException]
        try:
            results = await self.store.sync(changes)
        except Exception as exc:  # noqa: BLE001  (each caller handles it per room)
            results = [exc] * len(changes)
        stepped: list[tuple[RoomChange, RoomState]] = []
        failed: list[tuple[RoomChange, BaseException]] = []
        for change, result in zip(changes, results, strict=True):
            if isinstance(result, RoomState):
                stepped.append((change, result))
            else:
                failed.append((change, result))
        return stepped, failed

    def _step_failed(self, change: RoomChange, exc: BaseException,
                     waiters: dict[str, list[asyncio.Future[Snapshot]]], asked: set[str],
                     short: dict[str, set[str]]) -> None:
        """``change``'s step failed: its joiners get ``exc``, its repairs are asked again, and
        its users here are held again at the next tick (not a heartbeat later)."""
        room = change.room
        for future in waiters.get(room, ()):
            if not future.done():
                future.set_exception(exc)
                future.exception()  # retrieved: its socket may have gone meanwhile
        if change.hold and self.store.heartbeat:
            self._unheld.add(room)
        if self.repairs is not None:
            if room in asked:
                self.repairs.failed(room)
            if room in short:
                self._owe(room, short[room])
            if room in waiters:
                # Its joiners got no snapshot. The room's chain may be whole all the same
                # (another member here had one), so nothing else would ever send them one.
                self._owed.add(room)

    def _listed(self, change: RoomChange, state: RoomState, known: dict[str, str], now: float) -> str:
        """The members JSON of a snapshot: the step's sample, or names read recently."""
        if not change.sample:
            return known[change.room]
        listed = self._lists.json(change.room, state.members, now)
        if state.count > MEMBERS_MAX:
            self._names[change.room] = (now, listed)
        else:
            self._names.pop(change.room, None)
        return listed

    def _entered(self, changes: Iterable[RoomChange]) -> None:
        """The users of ``changes`` are through a step (a failed one leaves them entering)."""
        for change in changes:
            self._entering.difference_update((change.room, user) for user in change.hold + change.release)

    async def _settle(self, stepped: list[tuple[RoomChange, RoomState]]) -> None:
        """Note when each room's next departure is due, and announce what changed."""
        now = time.monotonic()
        for change, state in stepped:
            if state.next_due is None:
                self._due.pop(change.room, None)
            else:
                self._due[change.room] = now + state.next_due
            if self.repairs is not None:
                self.repairs.stored(change.room, state.version, now)
            outcome = Outcome(joined=state.joined, left=state.left, count=state.count)
            link = (state.previous, state.version) if state.joined or state.left else None
            for announcement in self.coalescer.add(change.room, outcome, state.version, now, link):
                await self._announce(change.room, announcement)

    # -- the loop --------------------------------------------------------------------------

    async def run(self) -> None:
        """Heartbeats, departures as they fall due, big rooms' diffs; until cancelled."""
        interval = tick_interval(self.grace)
        while True:
            await asyncio.sleep(interval)
            try:
                await self.tick()
            except Exception:  # not the store (tick handles that): a bug, logged; the loop goes on
                self._next_heartbeat = 0.0  # so this process's users are held again first
                logger.exception("presence tick failed")

    async def tick(self) -> None:
        """One pass: refresh holds if due, step the rooms whose departures are due, send diffs.

        A failed step stops nothing else: rounds due still go out, repairs are still asked,
        caches still swept, and the rooms that answered are settled. A room whose step failed
        is stepped again at the next tick (one attempt a tick): its departure is still due,
        and its users here are held then, while their deadlines still run, not a heartbeat
        later. (Raising here skipped all that, and the next tick retried a whole heartbeat:
        one room failing failed every tick after it.)
        """
        now = time.monotonic()
        heartbeat = self.store.heartbeat and now >= self._next_heartbeat
        if heartbeat:
            self._next_heartbeat = now + heartbeat_interval(self.grace)
            held = set(self.local.rooms())
        else:
            held = {room for room in self._unheld if self.local.holds(room)}
        self._unheld = set()  # what fails from here on is tried again at the next tick
        rooms = held | {room for room, due in self._due.items() if due <= now}
        changes = [RoomChange(room, hold=tuple(self.local.users(room)) if room in held else ())
                   for room in rooms]
        if changes:
            # Who was yet to be through a step when the tick began: a join batch that holds
            # them too may answer first and clear them from ``_entering``, though the store ran
            # the tick's step first (so it is the tick that "joined" them).
            entering = {(change.room, user) for change in changes for user in change.hold
                        if (change.room, user) in self._entering}
            stepped, failed = await self._step_store(changes)
            self._unheld.update(change.room for change, _ in failed if change.hold)
            for change, state in stepped:
                # Whoever else a step of the tick "joined" had a socket here all along.
                self._rejoined.update((change.room, user) for user in state.joined
                                      if (change.room, user) not in entering)
            self._entered(change for change, _ in stepped if change.hold)
            if failed:
                _tick_failures.warning("tick", "presence step failed in %d of %d rooms of a tick (again next "
                                       "tick): %s", len(failed), len(changes), failed[-1][1])
            await self._settle(stepped)
        for room, announcement in self.coalescer.due(time.monotonic()):
            await self._announce(room, announcement)
        if self.repairs is not None:
            due = self.repairs.due(time.monotonic())
            owed, self._owed = self._owed, set()
            if due or owed:
                self._asked.update(due, owed)
                self._schedule()
            if self._short:
                for room, channels in self._short.items():
                    self._retell.setdefault(room, set()).update(channels)
                self._short = {}
                self._schedule()
        stale = [room for room, (read, _) in self._names.items() if now - read >= NAMES_MAX_AGE]
        for room in stale:
            del self._names[room]
        self._lists.sweep(now)

    # -- announcing --------------------------------------------------------------------------

    async def _announce(self, room: str, a: Announcement) -> None:
        skip = None
        if a.kind == "join":
            # Not to the joiner, whose snapshot has it; but a user held again by a heartbeat
            # (announced gone while the store was away, its sockets open all along) is told too.
            rejoined = (room, a.user) in self._rejoined
            self._rejoined.discard((room, a.user))
            skip = None if rejoined else a.user
            frame = join_frame(room, a.user, a.count, a.version, a.changed.get(a.user))
        elif a.kind == "leave":
            frame = leave_frame(room, a.user, a.count, a.version, a.changed.get(a.user))
        else:  # a diff reaches everyone
            self._rejoined.difference_update((room, user) for user in a.joined)
            frame = presence_diff_frame(room, a.count, a.joined, a.left, a.version, a.changed)
        event: dict[str, Any] = {"type": EVENT, "frame": frame, "skip": skip}
        if a.relist:  # every process sends its members of the room the whole list
            event.update(room=room, relist=True)
        if a.links:  # what lets each process tell that its members missed none (repair.py)
            event.update(room=room, links=a.links)
            if a.parts > 1:
                event.update(part=a.part, parts=a.parts)
        await self._publish(room, event)

    async def _publish(self, room: str, event: dict[str, Any]) -> None:
        try:
            await self.layer.group_send(group_name(room), event)
        except Exception as exc:  # lost to every process: each repairs it for its members
            logger.warning("presence announcement to %s failed: %s", room, exc)

    # -- repairing what was lost here ----------------------------------------------------------

    def _delivered(self, event: dict[str, Any]) -> None:
        """The layer's tap: an announcement reached this process's members of its room."""
        links = event.get("links")
        if links and self.repairs is not None:
            self.repairs.delivered(event["room"], links, event.get("part", 0), event.get("parts", 1))
        if event.get("relist") and self.local.holds(event["room"]):
            # The room is small again: its members here were shown any 100 of it, and the
            # changes name only who came and went. The next tick reads it and sends it whole.
            self._owed.add(event["room"])

    def _dropped(self, event: dict[str, Any], channels: list[str]) -> None:
        """The layer's tap: a frame of a room that changes its list (an announcement, or a
        repair) was dropped for the members on ``channels``, whose mailboxes were full."""
        room = event.get("room")
        if room is not None:
            self._owe(room, channels)

    def _owe(self, room: str, channels: Iterable[str]) -> None:
        """The members on ``channels`` are owed ``room``'s snapshot at the next tick (while
        anyone here is in the room: ``leave`` forgets a room emptied here)."""
        if self.local.holds(room):
            self._short.setdefault(room, set()).update(channels)

    def _retell_to(self, room: str, snapshot: Snapshot, channels: set[str]) -> None:
        """Send the fresh ``snapshot`` of ``room`` to the members on ``channels`` alone (a frame
        was dropped for them); asked again at the next tick when a frame newer than it has
        reached the members here, or when it is dropped for them again."""
        if self.repairs is None:
            return
        if self.repairs.newer_reached(room, snapshot.version):
            self._owe(room, channels)
            return
        metrics.PRESENCE_REPAIRS.inc()
        self.layer.fan_out_local(group_name(room), {
            "type": REPAIR, "frame": snapshot.frame, "version": snapshot.version, "room": room,
            "to": sorted(channels),
        })

    def _repair(self, room: str, snapshot: Snapshot) -> bool:
        """Send this process's members of ``room`` the fresh ``snapshot`` (unless a newer
        frame reached them meanwhile: then it is read again at the next tick); whether sent."""
        if self.repairs is not None and self.repairs.repaired(room, snapshot.version):
            metrics.PRESENCE_REPAIRS.inc()
            logger.debug("presence of %s sent again to its members here (announcements lost)", room)
            self.layer.fan_out_local(group_name(room), {
                "type": REPAIR, "frame": snapshot.frame, "version": snapshot.version, "room": room,
            })
            return True
        return False

    async def close(self) -> None:
        """Release the store's connections."""
        await self.store.close()

