"""Batched, shared reads: one fetch per loop turn, one read per key in flight, errors shared."""

from __future__ import annotations

import asyncio

import pytest

from app.history.batch import BatchedReads, SharedCalls

pytestmark = pytest.mark.unit


class Store:
    """A fetch that records each batch it was asked for and answers when released."""

    def __init__(self, values: dict[str, int]) -> None:
        self.values = values
        self.batches: list[list[str]] = []
        self.release = asyncio.Event()
        self.error: Exception | None = None

    async def fetch(self, keys: list[str]) -> list[int]:
        self.batches.append(list(keys))
        await self.release.wait()
        if self.error is not None:
            raise self.error
        return [self.values.get(key, 0) for key in keys]


async def test_keys_asked_in_one_turn_go_out_as_one_batch_each_key_once() -> None:
    store = Store({"a": 1, "b": 2})
    reads = BatchedReads(store.fetch)
    asked = [asyncio.ensure_future(reads.get(key)) for key in ["a", "b", "a", "c", "b"]]
    store.release.set()
    assert await asyncio.gather(*asked) == [1, 2, 1, 0, 2]
    assert store.batches == [["a", "b", "c"]]


async def test_a_key_in_flight_is_shared_and_a_later_ask_reads_afresh() -> None:
    store = Store({"a": 1})
    reads = BatchedReads(store.fetch)
    first = asyncio.ensure_future(reads.get("a"))
    while not store.batches:  # until the batch is in flight
        await asyncio.sleep(0)
    joined = asyncio.ensure_future(reads.get("a"))  # asks while it is in flight
    store.release.set()
    assert await asyncio.gather(first, joined) == [1, 1]
    assert store.batches == [["a"]]

    store.values["a"] = 2
    assert await reads.get("a") == 2
    assert store.batches == [["a"], ["a"]]


async def test_one_caller_cancelled_leaves_the_read_to_the_others() -> None:
    store = Store({"a": 7})
    reads = BatchedReads(store.fetch)
    asked = [asyncio.ensure_future(reads.get("a")) for _ in range(3)]
    await asyncio.sleep(0)
    asked[0].cancel()
    store.release.set()
    assert await asyncio.gather(*asked[1:]) == [7, 7]
    with pytest.raises(asyncio.CancelledError):
        await asked[0]


async def test_a_failed_batch_fails_every_caller_and_the_next_ask_retries() -> None:
    store = Store({"a": 1})
    store.error = ConnectionError("store down")
    reads = BatchedReads(store.fetch)
    asked = [asyncio.ensure_future(reads.get(key)) for key in ["a", "b"]]
    store.release.set()
    for result in await asyncio.gather(*asked, return_exceptions=True):
        assert isinstance(result, ConnectionError)
    store.error = None
    assert await reads.get("a") == 1
    assert len(store.batches) == 2


async def test_without_sharing_in_flight_a_key_asked_meanwhile_is_read_again_after_it() -> None:
    values = {"a": 1}
    batches: list[list[str]] = []
    release = asyncio.Event()

    async def fetch(keys: list[str]) -> list[int]:
        batches.append(list(keys))
        seen = [values[key] for key in keys]  # what the store held when the read went out
        await release.wait()
        return seen

    reads = BatchedReads(fetch, share_in_flight=False)
    first = [asyncio.ensure_future(reads.get("a")) for _ in range(2)]  # one turn: one read
    while not batches:  # until that read is in flight
        await asyncio.sleep(0)
    values["a"] = 2  # the store changes before the later caller asks
    later = asyncio.ensure_future(reads.get("a"))
    while len(batches) < 2:  # the later caller's own read goes out while the first is out
        await asyncio.sleep(0)
    release.set()
    assert await asyncio.gather(*first, later) == [1, 1, 2]
    assert batches == [["a"], ["a"]]


async def test_an_exception_answered_for_one_key_fails_only_its_callers() -> None:
    async def fetch(keys: list[str]) -> list[int | BaseException]:
        return [ConnectionError(f"{key} is away") if key == "b" else ord(key) for key in keys]

    reads: BatchedReads[str, int] = BatchedReads(fetch)
    asked = [asyncio.ensure_future(reads.get(key)) for key in ["a", "b", "c", "b"]]
    results = await asyncio.gather(*asked, return_exceptions=True)
    assert results[0] == ord("a") and results[2] == ord("c")
    for failed in (results[1], results[3]):
        assert isinstance(failed, ConnectionError) and str(failed) == "b is away"


async def test_identical_calls_in_flight_share_one_and_a_later_call_runs_afresh() -> None:
    calls: list[str] = []
    release = asyncio.Event()

    async def read(key: str) -> str:
        calls.append(key)
        await release.wait()
        return key.upper()

    shared: SharedCalls[str, str] = SharedCalls()
    asked = [asyncio.ensure_future(shared.get(key, lambda key=key: read(key))) for key in ["a", "a", "b"]]
    while len(calls) < 2:
        await asyncio.sleep(0)
    release.set()
    assert await asyncio.gather(*asked) == ["A", "A", "B"]
    assert calls == ["a", "b"]
    assert await shared.get("a", lambda: read("a")) == "A"
    assert calls == ["a", "b", "a"]


async def test_a_shared_call_survives_one_caller_cancelled_and_shares_its_error() -> None:
    release = asyncio.Event()

    async def read() -> int:
        await release.wait()
        raise RuntimeError("store away")

    shared: SharedCalls[str, int] = SharedCalls()
    first = asyncio.ensure_future(shared.get("k", read))
    second = asyncio.ensure_future(shared.get("k", read))
    await asyncio.sleep(0)
    first.cancel()
    release.set()
    with pytest.raises(RuntimeError, match="store away"):
        await second
    assert first.cancelled()


async def test_one_at_a_time_keys_asked_during_a_flight_go_out_together_after_it() -> None:
    store = Store({"a": 1, "b": 2, "c": 3})
    reads = BatchedReads(store.fetch, one_at_a_time=True)
    first = asyncio.ensure_future(reads.get("a"))
    while not store.batches:  # until the first batch is in flight
        await asyncio.sleep(0)
    later = [asyncio.ensure_future(reads.get("b"))]
    for _ in range(5):  # several loop turns: each would have been a batch of its own
        await asyncio.sleep(0)
        later.append(asyncio.ensure_future(reads.get("c")))
    assert store.batches == [["a"]]  # nothing else goes out while the first is with the store
    store.release.set()
    assert await first == 1
    assert await asyncio.gather(*later) == [2, 3, 3, 3, 3, 3]
    assert store.batches == [["a"], ["b", "c"]]


async def test_one_at_a_time_a_failed_flight_still_lets_the_next_batch_go() -> None:
    store = Store({"b": 2})
    store.error = ConnectionError("store away")

    async def fails_once(keys: list[str]) -> list[int]:
        try:
            return await store.fetch(keys)
        finally:
            store.error = None

    reads = BatchedReads(fails_once, one_at_a_time=True)
    first = asyncio.ensure_future(reads.get("a"))
    while not store.batches:
        await asyncio.sleep(0)
    second = asyncio.ensure_future(reads.get("b"))
    await asyncio.sleep(0)
    store.release.set()
    with pytest.raises(ConnectionError):
        await first
    assert await second == 2
    assert store.batches == [["a"], ["b"]]
