"""Lua scripts in pipelines: on one Redis without a ``SCRIPT EXISTS`` round trip per execute
(``ScriptPipeline``), on a cluster one pipeline per master (``scripts_by_node``).

redis-py's pipeline asks Redis ``SCRIPT EXISTS`` for every script queued in it before each
execute: one more round trip each time, for scripts that are nearly always loaded. Joins
and presence steps pipeline scripts for every batch (thousands of batches in a burst of
joins), so here scripts are queued as plain ``EVALSHA``, and the rare call that Redis
answers ``NOSCRIPT`` (its script cache was emptied: a restart, ``SCRIPT FLUSH``) is run once
more by itself through the script object, which loads the script. A call answered NOSCRIPT
did not run, so running it again is its first run.

On a cluster, each call through the cluster client is a round of its own Python work (slot,
node, turn, connection: most of a presence step's cost in a join storm, where a step runs per
room). ``scripts_by_node`` sends the calls of each master in one pipeline instead; a call
answered with an error (NOSCRIPT, or a slot moved: it did not run) runs again alone through
the script, which follows MOVED/ASK and loads itself; so does every call of a master whose
pipeline failed, each then failing on its own, as calls made one by one would.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, PipelineCommand, RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from app.redis_clients import by_master, on_node

# A call of ``scripts_by_node``: the script's keys (all in one slot) and its arguments.
Call = tuple[Sequence[Any], Sequence[Any]]


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


async def scripts_by_node(cluster: RedisCluster, script: AsyncScript, calls: Sequence[Call]) -> list[Any]:
    """``script`` once per call, the calls of each master in one pipeline: each call's reply,
    in order, or the exception it failed with."""
    replies: list[Any] = [None] * len(calls)
    by_node = await by_master(cluster, [keys[0] for keys, _ in calls])
    alone = by_node.pop(None, [])  # placed nowhere: each goes alone, and fails alone

    async def on(node: ClusterNode, indices: list[int]) -> None:
        commands = [PipelineCommand(n, "EVALSHA", script.sha, len(calls[i][0]), *calls[i][0], *calls[i][1])
                    for n, i in enumerate(indices)]
        try:
            await on_node(cluster, node, commands)
        except Exception:  # noqa: BLE001  (the connection failed: each goes alone)
            alone.extend(indices)
            return
        for i, command in zip(indices, commands, strict=True):
            if isinstance(command.result, Exception):
                alone.append(i)
            else:
                replies[i] = command.result

    await asyncio.gather(*(on(node, indices) for node, indices in by_node.items() if node is not None))
    answers = await asyncio.gather(*(script(keys=calls[i][0], args=calls[i][1]) for i in alone),
                                   return_exceptions=True)
    for i, answer in zip(alone, answers, strict=True):
        replies[i] = answer
    return replies
