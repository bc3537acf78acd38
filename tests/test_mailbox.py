"""The channel inbox: order, bound, waking its receiver, and nothing lost to cancellation."""

from __future__ import annotations

import asyncio

import pytest

from app.mailbox import Mailbox

pytestmark = pytest.mark.unit


async def test_messages_come_out_in_order_and_sizes_follow() -> None:
    box = Mailbox()
    assert box.empty() and box.qsize() == 0
    for n in range(3):
        box.put_nowait({"n": n})
    assert not box.empty() and box.qsize() == 3
    assert [(await box.get())["n"] for _ in range(3)] == [0, 1, 2]
    assert box.empty() and box.qsize() == 0


async def test_a_bounded_mailbox_refuses_beyond_maxsize_and_keeps_what_it_has() -> None:
    box = Mailbox(maxsize=2)
    box.put_nowait({"n": 1})
    box.put_nowait({"n": 2})
    with pytest.raises(asyncio.QueueFull):
        box.put_nowait({"n": 3})
    assert [(await box.get())["n"] for _ in range(2)] == [1, 2]
    box.put_nowait({"n": 4})  # room again
    assert (await box.get())["n"] == 4


async def test_unbounded_takes_any_number() -> None:
    box = Mailbox()
    for n in range(10_000):
        box.put_nowait({"n": n})
    assert box.qsize() == 10_000


async def test_a_waiting_receiver_is_woken_by_put() -> None:
    box = Mailbox()
    receiver = asyncio.ensure_future(box.get())
    await asyncio.sleep(0)  # let it start waiting
    assert not receiver.done()
    box.put_nowait({"n": 1})
    assert await receiver == {"n": 1}


async def test_a_message_arriving_as_the_receiver_is_cancelled_stays_for_the_next() -> None:
    box = Mailbox()
    receiver = asyncio.ensure_future(box.get())
    await asyncio.sleep(0)
    box.put_nowait({"n": 1})  # wakes the waiter ...
    receiver.cancel()  # ... which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await receiver
    assert box.qsize() == 1 and await box.get() == {"n": 1}


async def test_a_second_concurrent_receiver_is_an_error() -> None:
    box = Mailbox()
    first = asyncio.ensure_future(box.get())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="one receiver"):
        await box.get()
    box.put_nowait({"n": 1})
    assert await first == {"n": 1}
