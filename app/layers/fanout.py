"""Local fan-out of one group message to the members of a group in this process.

Each member first gets a chance to take the message by a plain synchronous call (its
consumer hands back the write of the frame to a socket that can take it now, with no task
switch); a member that cannot (busy with a handler, something already queued, a gap to fill
first, a socket that would block) gets it queued, up to its mailbox's bound, as a channel
layer always does. The consumer's id checks keep every member's stream exactly-once and in
order either way. A tap (``GroupTap``) sees a message of its type once, before the members
get it.

The writes are made back to back once every member is decided, not one per decision. A
write to a loopback (or a VM's) socket wakes its reader, and that wakeup is most of the
write's cost when the reader is asleep: spaced by the deciding's Python work, each write
found its reader asleep again (one process, 16,667 sockets in rooms of 167: 25.5-26.1 us of
server CPU per delivery with a write per decision, 19.5-20.3 back to back; docs/
ARCHITECTURE.md). Each member takes at most one frame of a fan-out, and nothing else writes
meanwhile (it is one synchronous call), so no socket's frames change order. They go out
``WRITES_AT_ONCE`` at a time, so a room of thousands does not hold its first member's frame
until its last member is decided.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from app.layers.api import Direct, Tap, Watch, Write
from app.mailbox import Mailbox

logger = logging.getLogger("parley")

# Writes made together at most (the deciding of 256 members takes ~1 ms).
WRITES_AT_ONCE = 256


def fan_out(
    members: Iterable[str],
    message: dict[str, Any],
    queues: Mapping[str, Mailbox],
    direct: Mapping[str, Direct],
    open_inbox: Callable[[str], Mailbox],
    taps: Mapping[str, Watch] | None = None,
) -> None:
    """Deliver ``message`` to every member: directly where it can, else to its mailbox
    (``open_inbox`` makes one for a member that has none yet); first to the tap for its
    type in ``taps``, if any (``GroupTap``), once for all of them, and after to its
    ``missed`` hook if some members' mailboxes were full."""
    watch = taps.get(message.get("type", "")) if taps else None
    if watch is not None:
        tap(watch.seen, message)
    dropped: list[str] = []
    writes: list[Write] = []
    for channel in members:
        queue = queues.get(channel)
        if queue is None or queue.empty():  # nothing queued for it that this could overtake
            deliver = direct.get(channel)
            if deliver is not None:
                try:
                    taken = deliver(message)
                except Exception:  # a member's bug must not cost the others their message
                    logger.exception("direct delivery failed; queueing instead")
                else:
                    if taken:
                        if isinstance(taken, tuple):
                            writes.append(taken)
                            if len(writes) == WRITES_AT_ONCE:
                                write_all(writes)
                                writes.clear()
                        continue
            if queue is None:
                queue = open_inbox(channel)
        try:
            queue.put_nowait(message)
        except asyncio.QueueFull:
            dropped.append(channel)  # far behind, not reading: history refills messages
    if writes:
        write_all(writes)
    missed = watch.missed if watch is not None else None
    if dropped and missed is not None:
        tap(lambda m: missed(m, dropped), message)  # presence has no history: its tap says


def tap(hook: Tap, message: dict[str, Any]) -> None:
    """Show ``message`` to a hook of the tap for its type (``GroupTap``), once for all local
    members."""
    try:
        hook(message)
    except Exception:  # the tap's bug must not cost the members their message
        logger.exception("group tap failed")


def write_all(writes: list[Write]) -> None:
    """Make the fan-out's writes, back to back."""
    for transport, data in writes:
        try:
            transport.write(data)
        except Exception:  # one socket's failure must not cost the others their frame
            # Its member counts the frame as sent: only a transport closed since its
            # member was decided fails here, and its client resumes from history.
            logger.exception("a fan-out's write failed")
