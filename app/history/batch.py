"""Reads of many keys that arrive together, made as one batch and shared while in flight.

When hundreds of members reconnect at once after a deploy, each join asks history for its
room's last id. Asked one by one, each is a Redis command of its own; here the keys asked for
in one event-loop turn go out as one batch (one pipeline), and a key already queued or in
flight is not asked again: its callers share the answer.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)


class BatchedReads(Generic[T]):
    """``get(key)`` through ``fetch(keys)``: one call per loop turn, one read per key in flight."""

    def __init__(self, fetch: Callable[[list[str]], Awaitable[list[T]]]) -> None:
        self._fetch = fetch
        self._pending: dict[str, asyncio.Future[T]] = {}  # queued or in flight
        self._queued: list[str] = []

    async def get(self, key: str) -> T:
        read = self._pending.get(key)
        if read is None:
            loop = asyncio.get_running_loop()
            read = self._pending[key] = loop.create_future()
            if not self._queued:
                loop.call_soon(self._flush)
            self._queued.append(key)
        return await asyncio.shield(read)  # one caller giving up must not cancel the others' read

    def _flush(self) -> None:
        keys, self._queued = self._queued, []
        batch = asyncio.ensure_future(self._fetch(keys))
        batch.add_done_callback(functools.partial(self._settle, keys))

    def _settle(self, keys: list[str], batch: asyncio.Future[list[T]]) -> None:
        error = None if batch.cancelled() else batch.exception()
        for index, key in enumerate(keys):
            read = self._pending.pop(key)
            if batch.cancelled():
                read.cancel()
            elif error is not None:
                read.set_exception(error)
                read.exception()  # retrieved here too: every caller may have gone meanwhile
            else:
                read.set_result(batch.result()[index])


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
