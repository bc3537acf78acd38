"""Which message an id names: the check that catches a store that went back in time.

An id names one message only while the store keeps every write it acknowledged. Restored from
an older snapshot (``appendfsync everysec`` on a host crash) or failed over to a replica that
lacked the last writes, a room's log loses its newest ids *and keeps its epoch*: the next
sends are given those ids again, and a member that was shown the lost ones would drop the new
ones as already seen. So a member and the store agree on more than an id, as Raft's
AppendEntries does with (prevLogIndex, prevLogTerm): each message carries a **tag** (its
``ts``, unix ms, which clients already have), each entry the tag of its predecessor, and a
member about to be shown ``last_id + 1`` checks that its predecessor is the message it was
shown as ``last_id``. When they differ the store diverged from what the member saw, and the
room starts a new epoch (members are reset and sent everything history holds).

A tag is ``None`` when unknown: entries written before tags existed, the first entry after a
room's state was drawn again, a member just reset. Unknown never counts as a mismatch.
"""

from __future__ import annotations

from app.history.base import Replay


def diverged(shown: int | None, stored: int | None) -> bool:
    """Whether the message a member was shown under an id is not the one the store now holds
    under it: both tags known, and different."""
    return shown is not None and stored is not None and shown != stored


def tag_at(replay: Replay, at: int) -> int | None:
    """The tag of the message with id ``at``, as ``replay`` read it from history: the last
    frame's, the predecessor noted on the first frame, or the room's newest when ``at`` is
    the room's newest id; None when the read does not say (or ``at`` is not next to it)."""
    frames = replay.frames
    if frames:
        if frames[-1][0] == at:
            return replay.tag
        if frames[0][0] == at + 1:
            return replay.prev
    if at == replay.state.last_id:
        return replay.state.tip
    return None
