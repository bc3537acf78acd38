"""The keepalive wheel's rules, without sockets: when a socket pings, waits or expires, and
which sockets a tick takes. The real pings and the 1011 close are in tests/e2e/test_hardening.py.
"""

from __future__ import annotations

import asyncio

import pytest

from app.process.keepalive import Action, Keepalive, Ping, Wheel, step, tick_for

pytestmark = pytest.mark.unit


class FakePeer:
    def __init__(self, answer: bool = True) -> None:
        self.keepalive_slot: int | None = None
        self.answer = answer
        self.sent_at: float | None = None
        self.answered = True
        self.pings: list[Ping] = []
        self.expired = False
        self.expiry = asyncio.Event()
        self.third_ping = asyncio.Event()

    def keepalive_due(self, now: float, ping: Ping) -> float | None:
        action, at = step(now, self.sent_at, self.answered, interval=1.0, timeout=0.5)
        if action is Action.EXPIRE:
            self.expired = True
            self.expiry.set()
            return None
        if action is Action.PING:
            self.pings.append(ping)
            if len(self.pings) == 3:
                self.third_ping.set()
            self.sent_at, self.answered = now, self.answer  # an answering peer's pong is instant
        return at


def test_the_first_ping_goes_out_when_due() -> None:
    assert step(10.0, None, True, interval=20, timeout=20) == (Action.PING, 30.0)


def test_after_a_ping_the_next_look_is_the_sooner_of_deadline_and_next_ping() -> None:
    assert step(10.0, None, True, interval=20, timeout=5) == (Action.PING, 15.0)
    assert step(10.0, None, True, interval=20, timeout=None) == (Action.PING, 30.0)


def test_an_answered_ping_waits_for_the_interval() -> None:
    assert step(15.0, 10.0, True, interval=20, timeout=5) == (Action.WAIT, 30.0)
    assert step(30.0, 10.0, True, interval=20, timeout=5) == (Action.PING, 35.0)


def test_an_unanswered_ping_expires_at_its_deadline_and_not_before() -> None:
    assert step(14.9, 10.0, False, interval=20, timeout=5) == (Action.WAIT, 15.0)
    assert step(15.0, 10.0, False, interval=20, timeout=5)[0] is Action.EXPIRE


def test_a_deadline_longer_than_the_interval_is_waited_out_without_a_second_ping() -> None:
    assert step(30.0, 10.0, False, interval=20, timeout=30) == (Action.WAIT, 40.0)
    assert step(40.0, 10.0, False, interval=20, timeout=30)[0] is Action.EXPIRE


def test_without_a_timeout_pings_go_on_unanswered() -> None:
    assert step(30.0, 10.0, False, interval=20, timeout=None) == (Action.PING, 50.0)


def test_the_tick_is_a_tenth_of_the_shorter_period_within_bounds() -> None:
    assert tick_for(20, 20) == 1.0
    assert tick_for(0.2, 0.2) == pytest.approx(0.02)
    assert tick_for(5, 1) == pytest.approx(0.1)
    assert tick_for(0.01, None) == 0.01


def test_the_wheel_takes_what_is_due_rounded_up_to_its_tick() -> None:
    wheel = Wheel(tick=1.0, now=0.0)
    early, late = FakePeer(), FakePeer()
    wheel.put(early, 2.2)  # slot 3
    wheel.put(late, 5.0)
    assert wheel.take_due(2.9) == []
    assert wheel.take_due(3.0) == [early]
    assert early.keepalive_slot is None
    assert wheel.take_due(10.0) == [late]
    assert len(wheel) == 0


def test_a_time_already_past_is_due_at_the_next_take() -> None:
    wheel = Wheel(tick=1.0, now=0.0)
    wheel.take_due(5.0)
    peer = FakePeer()
    wheel.put(peer, 1.0)
    assert wheel.take_due(5.0) == []  # slot 6: after what was taken at 5.0
    assert wheel.take_due(6.0) == [peer]


def test_put_moves_and_remove_forgets() -> None:
    wheel = Wheel(tick=1.0, now=0.0)
    peer = FakePeer()
    wheel.put(peer, 3.0)
    wheel.put(peer, 7.0)
    assert len(wheel) == 1
    assert wheel.take_due(5.0) == []
    wheel.remove(peer)
    wheel.remove(peer)  # twice is harmless
    assert wheel.take_due(100.0) == [] and len(wheel) == 0


def test_one_tick_shares_one_ping_frame_and_pings_are_told_apart_across_ticks() -> None:
    ping = Ping()
    assert ping.frame == b"\x89\x04" + ping.payload
    assert len({Ping().payload for _ in range(20)}) > 1


async def test_the_loop_pings_answering_peers_and_expires_silent_ones() -> None:
    loop = asyncio.get_running_loop()
    keepalive = Keepalive(loop, interval=0.1, timeout=0.05)
    good, silent, gone = FakePeer(answer=True), FakePeer(answer=False), FakePeer()
    for peer in (good, silent, gone):
        keepalive.start(peer)
    keepalive.stop(gone)
    await asyncio.wait_for(silent.expiry.wait(), 5)
    assert len(silent.pings) == 1
    await asyncio.wait_for(good.third_ping.wait(), 5)
    assert not good.expired
    assert gone.pings == []
    assert silent.keepalive_slot is None and good.keepalive_slot is not None
    keepalive.stop(good)
    assert len(keepalive.wheel) == 0
