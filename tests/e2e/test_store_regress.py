"""A Redis that goes back in time and keeps its epoch loses no acked message.

Restored from an older snapshot (what ``appendfsync everysec`` leaves after a host crash, or a
failover that lost writes), a room's log lacks its newest ids while its epoch is unchanged:
the next sends are given those ids again. Members shown the lost ones must not drop the new
ones as already seen (app/history/lineage.py): they are reset and sent everything history
holds, on every process; and so is a client that resumes with the ``ts`` of its last message.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from app.history.redis import RedisHistory
from app.protocol import message_template
from app.rooms import group_name
from tests.support import AppServer, Client, RedisServer, subscribers_reach

HISTORY_MAX = 100


async def _save(url: str) -> None:
    client = aioredis.from_url(url)
    try:
        await client.save()
    finally:
        await client.aclose()


async def _post(client: Client, text: str) -> dict[str, Any]:
    """Post until acked, resending under the same client_id (Redis may be coming back)."""
    while True:
        answer = await client.post(text, client_id=f"c-{text}")
        if answer["type"] == "ack":
            return answer
        assert answer["code"] == "unavailable", answer


async def _shown_after_reset(client: Client, texts: set[str]) -> list[dict[str, Any]]:
    """Frames up to the point where ``texts`` have all been shown since the last ``reset``
    (what a client keeps on screen), which must come. Fails (timeout) if they never are."""
    frames: list[dict[str, Any]] = [f for f in client.skipped if f["type"] in {"reset", "message"}]
    client.skipped.clear()
    while True:
        reset_at = max((i for i, f in enumerate(frames) if f["type"] == "reset"), default=None)
        if reset_at is not None:
            shown = {f["message"] for f in frames[reset_at:] if f["type"] == "message"}
            if texts <= shown:
                return frames
        frame = await client.recv()
        if frame["type"] in {"reset", "message"}:
            frames.append(frame)


async def _snapshot_at_ten(main: RedisServer, side: RedisServer, client: Client, prefix: str) -> Path:
    """Post 1..10, keep a snapshot of the store then, and post 11..13 after it."""
    for i in range(1, 11):
        await _post(client, f"{prefix} {i}")
    await _save(main.url)
    snapshot = Path(side.dir) / "snapshot.rdb"
    shutil.copy(Path(main.dir) / "dump.rdb", snapshot)
    for i in range(11, 14):
        await _post(client, f"{prefix} {i}")
    return snapshot


async def _back_to_snapshot(main: RedisServer, side: RedisServer, snapshot: Path, room: str | None) -> None:
    """Restart ``main`` on ``snapshot`` (ids up to 10). With ``room``, another process has given
    11..13 of it to new messages before ours reconnect: they find their members level with
    the room, not ahead of it, so only the check on which message an id names can tell."""
    main.stop()
    if room is not None:
        shutil.copy(snapshot, Path(side.dir) / "dump.rdb")
        side.start()
        elsewhere = RedisHistory((side.url,), max_len=HISTORY_MAX, ttl=3600, dedupe_ttl=600)
        for i in range(11, 14):
            template = message_template(room, f"new {room} {i}", int(time.time() * 1000), "elsewhere")
            assert (await elsewhere.append(room, template, None)).id == i
        await elsewhere.close()
        await _save(side.url)
        side.stop()
        snapshot = Path(side.dir) / "dump.rdb"
    shutil.copy(snapshot, Path(main.dir) / "dump.rdb")
    main.start()


async def _shown_thirteen(make_app: Callable[..., AppServer], main: RedisServer, side: RedisServer,
                          room: str) -> tuple[list[Client], Path]:
    """Members of ``room`` on two processes, shown 1..13 (posted by the first), and the
    snapshot of the store at 10."""
    env = {"REDIS_URL": main.url, "CHAT_HISTORY_MAX": str(HISTORY_MAX)}
    one, two = make_app(env=env), make_app(env=env)
    members = [await Client.connect(one.ws_url(room)), await Client.connect(two.ws_url(room))]
    snapshot = await _snapshot_at_ten(main, side, members[0], room)
    for member in members:
        assert [m["id"] for m in await member.messages(13)] == list(range(1, 14))
    return members, snapshot


async def test_members_on_two_processes_get_every_acked_message_after_the_store_went_back(
    make_app: Callable[..., AppServer],
) -> None:
    main = RedisServer().start()
    side = RedisServer()
    try:
        members, snapshot = await _shown_thirteen(make_app, main, side, "live")
        await _back_to_snapshot(main, side, snapshot, "live")
        await subscribers_reach(main.url, f"parley__group__{group_name('live')}", 2)
        # 14..18, acked, from a member on the first process.
        for i in range(14, 19):
            await _post(members[0], f"new live {i}")

        acked = {f"new live {i}" for i in range(11, 19)}
        for client in members:
            frames = await _shown_after_reset(client, acked)
            # Nothing history holds is skipped after the reset: 1..10, then the new ones.
            reset_at = max(i for i, f in enumerate(frames) if f["type"] == "reset")
            shown = [f["message"] for f in frames[reset_at:] if f["type"] == "message"]
            assert shown[:10] == [f"live {i}" for i in range(1, 11)]
    finally:
        side.cleanup()
        main.cleanup()


async def test_members_level_with_a_store_that_went_back_are_reset_with_no_message_to_follow(
    make_app: Callable[..., AppServer],
) -> None:
    # The ids given again (11..13) were all lost on their way to both processes, and nobody
    # posts after them: no message will arrive to carry the mismatch. The tail watcher's read
    # finds members at the room's newest id under another message's tag.
    main = RedisServer().start()
    side = RedisServer()
    try:
        members, snapshot = await _shown_thirteen(make_app, main, side, "quiet")
        await _back_to_snapshot(main, side, snapshot, "quiet")
        given_again = {f"new quiet {i}" for i in range(11, 14)}
        for member in members:
            frames = await _shown_after_reset(member, given_again)
            reset_at = max(i for i, f in enumerate(frames) if f["type"] == "reset")
            shown = [f["message"] for f in frames[reset_at:] if f["type"] == "message"]
            assert shown == [f"quiet {i}" for i in range(1, 11)] + sorted(given_again)
    finally:
        side.cleanup()
        main.cleanup()


async def test_a_resume_with_ts_is_reset_when_the_store_went_back(make_app: Callable[..., AppServer]) -> None:
    main = RedisServer().start()
    side = RedisServer()
    try:
        env = {"REDIS_URL": main.url, "CHAT_HISTORY_MAX": str(HISTORY_MAX)}
        one, two = make_app(env=env), make_app(env=env)
        away = await Client.connect(two.ws_url("away"))
        snapshot = await _snapshot_at_ten(main, side, away, "away")
        [*_, last] = await away.messages(13)
        assert last["id"] == 13 and away.ready is not None
        epoch = away.ready["epoch"]
        await away.close()

        # Nobody watches the room while the store goes back and 11..15 are posted anew.
        await _back_to_snapshot(main, side, snapshot, None)
        poster = await Client.connect(one.ws_url("away"))
        for i in range(11, 16):
            await _post(poster, f"new away {i}")

        # Resumed from 13 with the ts of the message it showed as 13: reset, then all history
        # (in the room's epoch: a client's word resets that client alone).
        url = two.ws_url("away", since=13, epoch=epoch, ts=last["ts"])
        back = await Client.connect(url, wait_ready=False)
        first = await back.recv()
        assert first["type"] == "reset" and first["last_id"] == 0
        replayed = [m["message"] for m in await back.messages(15)]
        assert replayed == [f"away {i}" for i in range(1, 11)] + [f"new away {i}" for i in range(11, 16)]
        assert (await back.recv_type("ready"))["epoch"] == first["epoch"]
    finally:
        side.cleanup()
        main.cleanup()


async def test_a_resume_with_a_wrong_ts_resets_that_client_alone(make_app: Callable[..., AppServer]) -> None:
    # A client's word is not evidence: a forged ts restarted the room, so one client (or one
    # unauthenticated GET) could send every member a reset and the whole history at will.
    redis = RedisServer().start()
    try:
        server = make_app(env={"REDIS_URL": redis.url})
        member = await Client.connect(server.ws_url("calm"))
        for i in range(1, 4):
            await _post(member, f"calm {i}")
        await member.messages(3)
        epoch = member.ready["epoch"]
        liar = await Client.connect(server.ws_url("calm", since=2, epoch=epoch, ts=1), wait_ready=False)
        first = await liar.recv()
        assert first == {"type": "reset", "room": "calm", "epoch": epoch, "last_id": 0}
        assert [m["id"] for m in await liar.messages(3)] == [1, 2, 3]
        assert (await liar.recv_type("ready"))["epoch"] == epoch
        status, page = server.get("/api/rooms/calm/messages?since=2&ts=1")
        assert status == 200 and page["reset"] is True and page["epoch"] == epoch
        # The member hears nothing of it: the next thing it gets is the next message.
        await _post(liar, "calm 4")
        assert [(f["type"], f.get("id")) for f in [await member.recv()]] == [("message", 4)]
        await liar.close()
        await member.close()
    finally:
        redis.cleanup()
