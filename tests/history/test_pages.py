"""Reading history a page at a time (app/history/pages.py): bounded by frames and by bytes,
and a page cut by bytes is read again, so its tags are its own."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import AsyncIterator

import pytest

from app.history import History, Replay
from app.history.memory import MemoryHistory
from app.history.pages import PAGE_BYTES, PAGE_FRAMES, fitting, read_page
from app.history.redis import RedisHistory
from app.protocol import message_template
from tools.procs import RedisServer

BIG = "\U0001f600" * 4000  # the largest message by default: 16 KB in memory, 16 KB of UTF-8


@pytest.fixture(params=[pytest.param("memory", marks=pytest.mark.unit), "redis"])
async def history(request: pytest.FixtureRequest) -> AsyncIterator[History]:
    if request.param == "memory":
        yield MemoryHistory(max_len=1000, ttl=3600, dedupe_ttl=600)
        return
    redis = RedisServer().start()
    backend = RedisHistory((redis.url,), max_len=1000, ttl=3600, dedupe_ttl=600)
    yield backend
    await backend.close()
    redis.cleanup()


async def post(history: History, texts: list[str]) -> None:
    for ts, text in enumerate(texts, start=1000):
        await history.append("r", message_template("r", text, ts, "u"), None)


def ts_of(frame: str) -> int:
    return int(json.loads(frame)["ts"])


@pytest.mark.unit
def test_fitting_counts_frames_until_the_budget_and_always_one() -> None:
    frames = [(i, "x" * 1000) for i in range(10)]
    each = sys.getsizeof(frames[0][1])
    assert fitting(frames, budget=3 * each) == 3
    assert fitting(frames, budget=3 * each - 1) == 2
    assert fitting(frames, budget=1) == 1  # a single frame is never too big to send
    assert fitting([], budget=1) == 0
    assert fitting(frames, budget=10**9) == 10


async def test_small_messages_come_a_page_of_frames_at_a_time(history: History) -> None:
    await post(history, [f"m{i}" for i in range(100)])
    page, count = await read_page(functools.partial(history.after, "r", 0))
    assert count == PAGE_FRAMES and [i for i, _ in page.frames] == list(range(1, PAGE_FRAMES + 1))
    assert page.tag == ts_of(page.frames[-1][1])


async def test_large_messages_are_read_again_as_a_smaller_page_with_its_own_tags(history: History) -> None:
    await post(history, [f"{i} {BIG}" for i in range(100)])
    reads: list[int] = []

    async def read(count: int) -> Replay:
        reads.append(count)
        return await history.after("r", 10, count)

    page, count = await read_page(read)
    fits = PAGE_BYTES // sys.getsizeof(f"{{{BIG}}}")  # ~16 of the largest messages
    assert reads == [PAGE_FRAMES, count] and count in (fits - 1, fits)
    assert [i for i, _ in page.frames] == list(range(11, 11 + count))
    assert sum(sys.getsizeof(frame) for _, frame in page.frames) <= PAGE_BYTES
    # Read again, not cut: the page knows its own last frame's tag and its first's predecessor,
    # which the next page and the member's own checks compare against.
    assert page.tag == ts_of(page.frames[-1][1])
    assert page.prev == ts_of((await history.after("r", 9, 1)).frames[0][1])
    # The next page, asked with that count, fits at once.
    reads.clear()
    following, again = await read_page(functools.partial(history.after, "r", page.frames[-1][0]), count)
    assert again == count and following.frames[0][0] == page.frames[-1][0] + 1


@pytest.mark.unit
async def test_each_read_again_asks_fewer_frames_so_it_ends() -> None:
    # A store whose frames grow between reads (it changed meanwhile) still ends: one frame
    # always fits.
    asked: list[int] = []

    async def read(count: int) -> Replay:
        asked.append(count)
        return Replay(frames=[(i, "y" * (PAGE_BYTES // 2) * len(asked)) for i in range(1, count + 1)])

    page, count = await read_page(read, 8)
    assert count == 1 and len(page.frames) == 1
    assert asked == sorted(asked, reverse=True) and len(set(asked)) == len(asked)
