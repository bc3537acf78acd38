"""The pub/sub layer delivers a ``send`` to a channel made by another event loop (a thread, a
sync view's ``async_to_sync``) or another process, as channels-redis's stock pub/sub layer
does, with one SUBSCRIBE per event loop rather than one per channel."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from asgiref.sync import async_to_sync

from app.layers.pubsub import PubSubLayer

ROOT = Path(__file__).resolve().parents[2]

# A worker in another process: makes a channel, prints its name, prints what it receives.
WORKER = """
import asyncio, json, sys
from app.layers.pubsub import PubSubLayer

async def main():
    layer = PubSubLayer(hosts=[sys.argv[1]])
    channel = await layer.new_channel()
    print(channel, flush=True)
    message = await asyncio.wait_for(layer.receive(channel), 20)
    print(json.dumps(message), flush=True)
    await layer.flush()

asyncio.run(main())
"""

# A sender in another process: one send to the channel named on the command line.
SENDER = """
import asyncio, sys
from app.layers.pubsub import PubSubLayer

async def main():
    layer = PubSubLayer(hosts=[sys.argv[1]])
    await layer.send(sys.argv[2], {"type": "from.elsewhere", "n": int(sys.argv[3])})
    await layer.flush()

asyncio.run(main())
"""


@pytest.fixture
async def layer(redis_server: Any) -> AsyncIterator[PubSubLayer]:
    layer = PubSubLayer(hosts=[redis_server.url], capacity=1)
    yield layer
    await layer.flush()


async def python(script: str, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, *args, cwd=ROOT, stdout=asyncio.subprocess.PIPE
    )


async def sent_from_another_process(url: str, channel: str, n: int) -> None:
    sender = await python(SENDER, url, channel, str(n))
    assert await asyncio.wait_for(sender.wait(), 30) == 0


def url_of(layer: PubSubLayer) -> str:
    return str(layer._kwargs["hosts"][0])


async def test_a_send_from_another_process_reaches_a_channel_made_here(layer: PubSubLayer) -> None:
    channel = await layer.new_channel()
    await sent_from_another_process(url_of(layer), channel, 1)
    assert await asyncio.wait_for(layer.receive(channel), 10) == {"type": "from.elsewhere", "n": 1}


async def test_a_send_from_here_reaches_a_worker_in_another_process(layer: PubSubLayer) -> None:
    worker = await python(WORKER, url_of(layer))
    assert worker.stdout is not None
    channel = (await asyncio.wait_for(worker.stdout.readline(), 30)).decode().strip()
    await layer.send(channel, {"type": "job", "n": 2})
    line = await asyncio.wait_for(worker.stdout.readline(), 30)
    assert json.loads(line) == {"type": "job", "n": 2}
    assert await asyncio.wait_for(worker.wait(), 30) == 0


async def test_a_send_from_another_threads_event_loop_arrives(layer: PubSubLayer) -> None:
    channel = await layer.new_channel()
    # As a synchronous Django view or a worker thread would send.
    await asyncio.to_thread(async_to_sync(layer.send), channel, {"type": "from.thread"})
    assert await asyncio.wait_for(layer.receive(channel), 10) == {"type": "from.thread"}


async def test_one_subscription_per_event_loop_not_per_channel(layer: PubSubLayer) -> None:
    channels = [await layer.new_channel() for _ in range(50)]
    client = aioredis.from_url(url_of(layer))
    try:
        subscribed = await client.pubsub_channels()
    finally:
        await client.aclose()
    heads = {channel[: channel.index("!") + 1] for channel in channels}
    assert len(heads) == 1 and [name.decode() for name in subscribed] == list(heads)


async def test_a_send_from_elsewhere_to_a_full_channel_is_dropped_and_the_rest_arrive(
    layer: PubSubLayer,
) -> None:
    channel = await layer.new_channel()  # capacity 1
    send = async_to_sync(layer.send)
    await asyncio.to_thread(send, channel, {"type": "m", "n": 1})
    await asyncio.to_thread(send, channel, {"type": "m", "n": 2})  # full: the sender can't be told
    assert await asyncio.wait_for(layer.receive(channel), 10) == {"type": "m", "n": 1}
    await asyncio.to_thread(send, channel, {"type": "m", "n": 3})
    # One subscriber gets one publisher's messages in order: 2 would have come before 3.
    assert await asyncio.wait_for(layer.receive(channel), 10) == {"type": "m", "n": 3}


async def test_a_general_channel_keeps_its_subscription_after_a_timed_out_receive(
    layer: PubSubLayer, redis_server: Any
) -> None:
    other = PubSubLayer(hosts=[redis_server.url])
    try:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(layer.receive("tasks"), 0.3)
        await other.send("tasks", {"type": "task"})
        assert await asyncio.wait_for(layer.receive("tasks"), 10) == {"type": "task"}
    finally:
        await other.flush()
