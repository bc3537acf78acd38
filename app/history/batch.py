"""Reads of many keys that arrive together, made as one batch and shared while in flight.

When hundreds of members reconnect at once after a deploy, each join asks history for its
room's last id (or, resuming, for what it missed). Asked one by one, each is a Redis command
of its own; here the keys asked for in one event-loop turn go out as one batch (one
pipeline), and a key asked for twice in that turn is read once: its callers share the
answer. Reads that may be a moment old also share a read already in flight
(``share_in_flight``); the others only share within their turn, so every answer was read
after its caller asked.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)


class BatchedReads(Generic[K, T]):
    """``get(key)`` through ``fetch(keys)``: one call per loop turn, each key once in it.

    ``fetch`` answers each key in order, with its value or with the exception its callers
    get (one key failing need not fail the others); an exception it raises fails them all.
    """

    def __init__(self, fetch: Callable[[list[K]], Awaitable[Sequence[T | BaseException]]],
                 share_in_flight: bool = True, one_at_a_time: bool = False) -> None:
        self._fetch = fetch
        self._share_in_flight = share_in_flight
        # One batch with the store at a time: keys asked meanwhile wait for it and go out
        # together next, so batches grow with load instead of one pipeline per loop turn
        # (each costs ~0.1 ms of client CPU). Every answer is still read after its key was
        # asked, unless shared from the flight (``share_in_flight``).
        self._one_at_a_time = one_at_a_time
        self._flights = 0
        self._queued: dict[K, asyncio.Future[T]] = {}
        self._in_flight: dict[K, asyncio.Future[T]] = {}

    async def get(self, key: K) -> T:
        read = self._queued.get(key)
        if read is None and self._share_in_flight:
            read = self._in_flight.get(key)
        if read is None:
            loop = asyncio.get_running_loop()
            if not self._queued:
                loop.call_soon(self._flush)  # which waits for the flight, when one_at_a_time
            read = self._queued[key] = loop.create_future()
        return await asyncio.shield(read)  # one caller giving up must not cancel the others' read

    def _flush(self) -> None:
        if not self._queued or (self._one_at_a_time and self._flights):
            return
        reads, self._queued = self._queued, {}
        if self._share_in_flight:
            self._in_flight.update(reads)
        self._flights += 1
        batch = asyncio.ensure_future(self._fetch(list(reads)))
        batch.add_done_callback(functools.partial(self._settle, reads))

    def _settle(self, reads: dict[K, asyncio.Future[T]],
                batch: asyncio.Future[Sequence[T | BaseException]]) -> None:
        self._flights -= 1
        if self._queued and self._one_at_a_time:
            asyncio.get_running_loop().call_soon(self._flush)
        error = None if batch.cancelled() else batch.exception()
        answers = batch.result() if not batch.cancelled() and error is None else ()
        for index, (key, read) in enumerate(reads.items()):
            if self._in_flight.get(key) is read:
                del self._in_flight[key]
            if batch.cancelled():
                read.cancel()
                continue
            answer = error if error is not None else answers[index]
            if isinstance(answer, BaseException):
                read.set_exception(answer)
                read.exception()  # retrieved here too: every caller may have gone meanwhile
            else:
                read.set_result(answer)


class SharedCalls(Generic[K, T]):
    """``get(key, call)``: while a call for ``key`` is in flight, callers asking for the same
    key share its answer instead of making their own (a "single flight")."""

    def __init__(self) -> None:
        self._in_flight: dict[K, asyncio.Future[T]] = {}

    async def get(self, key: K, call: Callable[[], Awaitable[T]]) -> T:
        flight = self._in_flight.get(key)
        if flight is None:
            flight = self._in_flight[key] = asyncio.ensure_future(call())
            flight.add_done_callback(functools.partial(self._landed, key))
        return await asyncio.shield(flight)  # one caller giving up must not cancel the others'

    def _landed(self, key: K, flight: asyncio.Future[T]) -> None:
        if self._in_flight.get(key) is flight:
            del self._in_flight[key]
        if not flight.cancelled():
            flight.exception()  # retrieved here too: every caller may have gone meanwhile
