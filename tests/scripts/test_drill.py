"""scripts/drill.py: the zero-loss checks, and the drill itself on a small N (the CI drill)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from scripts.drill import BACKOFF_BASE, BACKOFF_CAP, Member, backoff, fault_problems, verify
from scripts.stack_state import STATE_FILE
from tests.support import run_script
from tools.procs import Proc


def room(size: int, top: int, name: str = "r") -> list[Member]:
    """Members of one room who together sent ids 1..top and each received all of them."""
    members = [Member(i, name) for i in range(size)]
    for msg_id in range(1, top + 1):
        members[msg_id % size].acked[f"c{msg_id}"] = msg_id
    for member in members:
        member.received = list(range(1, top + 1))
    return members


@pytest.mark.unit
def test_a_clean_run_passes() -> None:
    result = verify(room(3, 10) + room(2, 4, "other"))
    assert result["problems"] == []
    assert result["totals"]["lost"] == 0 and result["totals"]["received"] == 3 * 10 + 2 * 4


@pytest.mark.unit
def test_a_missing_message_is_lost() -> None:
    members = room(3, 10)
    members[1].received.remove(7)
    result = verify(members)
    assert result["totals"]["lost"] == 1 and len(result["problems"]) == 1


@pytest.mark.unit
def test_a_duplicate_and_a_reordering_are_caught() -> None:
    members = room(2, 5)
    members[0].received.insert(3, 3)
    members[1].received[1], members[1].received[2] = 3, 2
    result = verify(members)
    assert result["totals"]["duplicated"] == 1
    assert result["totals"]["out_of_order"] == 1
    assert len(result["problems"]) == 2


@pytest.mark.unit
def test_unacknowledged_sends_and_unacked_ids_fail() -> None:
    members = room(2, 4)
    members[0].pending["c-late"] = "never acked"
    del members[1].acked[next(iter(members[1].acked))]
    problems = verify(members)["problems"]
    assert any("never acknowledged" in p for p in problems)
    assert any("acked ids are not 1..4" in p for p in problems)


@pytest.mark.unit
def test_a_send_dropped_without_an_ack_counts_as_unacknowledged() -> None:
    members = room(2, 4)
    members[0].sent = len(members[0].acked) + 1  # sent, then forgotten instead of resent
    result = verify(members)
    assert result["totals"]["unacked"] == 1
    assert any("1 sent message(s) never acknowledged" in p for p in result["problems"])


@pytest.mark.unit
def test_the_old_colour_must_be_drained_or_killed_as_the_drill_says() -> None:
    drained = {"from": "blue", "to": "green", "old": "drained"}
    gone = {**drained, "old": "already gone"}
    killed = {"color": "blue", "pid": 1, "gone": True, "killed_by": "SIGKILL"}
    assert fault_problems("none", [], [drained]) == []
    assert fault_problems("kill", [killed], [gone]) == []
    assert len(fault_problems("none", [], [gone])) == 1  # a graceful deploy found nothing to drain
    assert len(fault_problems("kill", [killed], [drained])) == 1
    assert len(fault_problems("kill", [{**killed, "gone": False}], [gone])) == 1


@pytest.mark.unit
def test_backoff_is_full_jitter_and_bounded() -> None:
    random.seed(4)
    for attempt in range(12):
        delays = [backoff(attempt) for _ in range(200)]
        bound = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** attempt)
        assert all(0 <= d <= bound for d in delays)
        assert min(delays) < bound / 4 and max(delays) > bound * 3 / 4  # spread, not fixed


def run_drill(tmp_path: Path, *args: str) -> dict[str, Any]:
    """Run scripts/drill.py on its own stack; its report, once the zero-loss checks hold."""
    code, report, output = run_script(
        "drill", *args, "--settle", "1.5", "--state-dir", str(tmp_path / "stack"),
        json_path=tmp_path / "drill.json", timeout=150)
    assert code == 0, output
    assert report["ok"] and report["problems"] == []
    assert report["lost"] == 0 and report["duplicated"] == 0 and report["unacked"] == 0
    assert report["messages_sent"] == report["acked"] > 0
    assert report["received"] == report["expected_deliveries"]
    return report


def test_drill_small(tmp_path: Path) -> None:
    """`make drill` at CI size: 40 clients in 4 rooms, blue -> green -> blue, zero loss."""
    report = run_drill(tmp_path, "--clients", "40", "--rooms", "4")
    assert [(d["from"], d["to"]) for d in report["deploys"]] == [("blue", "green"), ("green", "blue")]
    assert [c["clients_connected_to_it"] for c in report["ended_on"]] == [40, 40]
    assert [d["old"] for d in report["deploys"]] == ["drained", "drained"] and report["killed"] == []
    assert set(report["close_codes"]) == {"1012"} and report["close_codes"]["1012"] >= 80
    # The drill started the stack, so it stopped it again.
    assert report["stack_started_here"] and not (tmp_path / "stack" / STATE_FILE).exists()


def test_drill_kill_fails_over_with_nothing_lost(tmp_path: Path) -> None:
    """`make drill DRILL_ARGS="--fault kill"` at CI size: blue is SIGKILLed mid-chat (no
    drain), the deploy fails over to green, clients resume by id and resend by client_id."""
    report = run_drill(tmp_path, "--fault", "kill", "--clients", "30", "--rooms", "3")
    [kill] = report["killed"]
    assert (kill["color"], kill["signal"], kill["killed_by"]) == ("blue", "SIGKILL", "SIGKILL")
    assert not Proc(kill["pid"], kill["started"]).alive()
    # Every client was cut off once without a close frame, and came back on green.
    assert report["close_codes"] == {"1006": 30}
    assert [(d["from"], d["to"], d["old"]) for d in report["deploys"]] == [("blue", "green", "already gone")]
    assert report["ended_on"] == [
        {"color": "green", "clients_connected_to_it": 30, "old_colour_running": False}
    ]
    # The burst just before the kill was unacknowledged when the process died; those
    # messages were resent with their client_id and (checked above) appear exactly once.
    assert kill["in_flight_at_kill"] > 0 and report["resent"] > 0
    assert set(report["connect_failures"]) <= {"HTTP 502", "HTTP 503"}
    assert report["stack_started_here"] and not (tmp_path / "stack" / STATE_FILE).exists()
