"""Reading history a page at a time, so a reader holds one page, not everything it sends.

A join's replay, a gap fill and the HTTP history API each read all they were to send in one
read and held it until it was sent: up to ``CHAT_HISTORY_MAX`` frames (a full room of the
largest messages is 16-24 MB), for as long as the client took to read it, which a client
that never reads makes up to twice ``CHAT_SEND_TIMEOUT``. A hostile probe pinned ~16 MB per
``?since=0`` joiner that never read. Now each reads a page, sends it, and reads the next
only once the page was written (the socket took it).

A page is at most ``PAGE_FRAMES`` frames and ``PAGE_BYTES`` of them in memory (at least one
frame). 64 frames: the chat page's window (``?last=50``) and a reconnect's few missed
messages are still one read, as before, so ordinary joins pay no extra round trip. 256 KiB:
the same order as what the transport already buffers for a client before it waits (its
64 KiB high-water mark plus one joined write of up to 64 KiB, app/chat/wire.py), so a
stalled client holds its socket's buffers and one page, ~0.4 MB, whatever the room holds
(a hostile probe's 20 stalled joiners: ~8 MB of heap in all, against ~290 MB before); and
a full room of the largest messages (16 KB each, 16 to a page) takes ~64 reads, which cost
far less than writing its 16 MB.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable, Sequence

from app.history.base import History, Replay

PAGE_FRAMES = 64
PAGE_BYTES = 256 * 1024

# A read of up to ``count`` frames (``functools.partial`` of ``History.after``, ``resume``, ...).
PageRead = Callable[[int], Awaitable[Replay]]


def fitting(frames: Sequence[tuple[int, str]], budget: int = PAGE_BYTES) -> int:
    """How many of ``frames``, from the first, fit in ``budget`` bytes of memory (the str
    objects' own size: what holding them costs); at least one, as any single frame is sent."""
    size = 0
    for index, (_, frame) in enumerate(frames):
        size += sys.getsizeof(frame)
        if index and size > budget:
            return index
    return len(frames)


def fill_pages(history: History, room: str, epoch: str, since: int, upto: int) -> PageRead:
    """The read of a page of the ids after ``since`` and below ``upto`` in ``epoch``:
    ``History.fill``, whose identical reads at once (members, or requests, asking the same
    page) are shared."""

    async def read(count: int) -> Replay:
        return await history.fill(room, epoch, since, min(since + count + 1, upto))

    return read


async def read_page(read: PageRead, count: int = PAGE_FRAMES) -> tuple[Replay, int]:
    """``read(count)`` as a page: read again with fewer frames while they do not fit in
    ``PAGE_BYTES``; the page and the count it was read with (the next page's, so a room of
    large messages is not read twice per page).

    Read again rather than cut: a read knows the tags (app/history/lineage.py) of its own
    first and last frames only, and a cut page would not know its last frame's, which the
    next page is checked against. Each read asks for fewer frames than the last, so this
    ends (one frame always fits)."""
    while True:
        replay = await read(count)
        fit = fitting(replay.frames)
        if fit == len(replay.frames):
            return replay, count
        count = fit
        del replay  # not held while the smaller page is read
