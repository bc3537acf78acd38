"""A pipeline with Lua scripts in it, without a ``SCRIPT EXISTS`` round trip per execute.

redis-py's pipeline asks Redis ``SCRIPT EXISTS`` for every script queued in it before each
execute: one more round trip each time, for scripts that are nearly always loaded. Joins
and presence steps pipeline scripts for every batch (thousands of batches in a burst of
joins), so here scripts are queued as plain ``EVALSHA``, and the rare call that Redis
answers ``NOSCRIPT`` (its script cache was emptied: a restart, ``SCRIPT FLUSH``) is run once
more by itself through the script object, which loads the script. A call answered NOSCRIPT
did not run, so running it again is its first run.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError


class ScriptPipeline:
    """Commands (``pipe``, redis-py's own pipeline) and scripts (``script``), one round trip."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.pipe = client.pipeline(transaction=False)
        self._reruns: dict[int, Callable[[], Awaitable[Any]]] = {}

    def script(self, script: AsyncScript, keys: Sequence[Any], args: Sequence[Any]) -> None:
        """Queue ``script`` on ``keys`` with ``args``."""
        self._reruns[len(self.pipe)] = functools.partial(script, keys=list(keys), args=list(args))
        self.pipe.evalsha(script.sha, len(keys), *keys, *args)

    async def execute(self) -> list[Any]:
        """Every command's reply, in order; raises the first error other than NOSCRIPT."""
        replies = list(await self.pipe.execute(raise_on_error=False))
        for index, reply in enumerate(replies):
            if isinstance(reply, NoScriptError) and index in self._reruns:
                replies[index] = await self._reruns[index]()
            elif isinstance(reply, Exception):
                raise reply
        return replies
