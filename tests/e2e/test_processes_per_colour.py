"""Several app processes per colour on the local stack: Traefik balances over all of them,
a deploy starts, switches and drains all of a colour's at once; the drill passes with two
per colour on a Redis Cluster."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import yaml
from websockets.exceptions import ConnectionClosed

from scripts.deploy import deploy
from scripts.drill import connections_at
from scripts.local_runtime import LocalRuntime
from scripts.stack import traefik_color
from scripts.stack_state import STATE_FILE, StackState
from tests.support import Client, run_script
from tools import traefik_config as tc


def test_the_dynamic_file_balances_over_every_process_of_the_colour() -> None:
    urls = {"blue": ["http://127.0.0.1:3"], "green": ["http://127.0.0.1:1", "http://127.0.0.1:2"]}
    http = yaml.safe_load(tc.render_dynamic("green", urls))["http"]
    assert [s["url"] for s in http["services"]["chat-green"]["loadBalancer"]["servers"]] == urls["green"]
    assert http["routers"]["chat"]["service"] == "chat-green"
    assert tc.active_color(tc.render_dynamic("green", urls)) == "green"
    one = {"blue": "http://x", "green": "http://y"}
    assert tc.render_dynamic("blue", one) == tc.render_dynamic("blue", {"blue": ["http://x"], "green": ["http://y"]})


async def test_traefik_balances_and_a_deploy_drains_every_process_at_once(
    two_process_stack: StackState,
) -> None:
    state = two_process_stack
    assert state.members("blue") == ["blue", "blue.1"]
    url = state.web_url.replace("http://", "ws://") + "/ws/chat/spread/"
    clients = [await Client.connect(url) for _ in range(6)]
    per_process = [await asyncio.to_thread(connections_at, url) for url in state.color_urls("blue")]
    counts = [count or 0 for count in per_process]
    assert None not in per_process and sum(counts) == 6 and min(counts) > 0, per_process  # both serve

    old = [state.procs[name] for name in state.members("blue")]
    report = await asyncio.to_thread(deploy, LocalRuntime(state), "green")
    assert (report["to"], report["old"]) == ("green", "drained")
    assert not any(proc.alive() for proc in old)
    for client in clients:  # every client of every blue process was told to reconnect
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await client.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012
    assert traefik_color(state) == "green"
    saved = StackState.load(state.dir)
    assert set(saved.procs) == {"redis", "traefik", "green", "green.1"}
    assert all(saved.procs[name].alive() for name in saved.members("green"))


def test_drill_two_processes_per_colour_on_a_cluster(tmp_path: Path) -> None:
    """`make drill DRILL_ARGS="--processes 2 --cluster"` at CI size: zero loss."""
    code, report, output = run_script(
        "drill", "--processes", "2", "--cluster", "--clients", "40", "--rooms", "4",
        "--settle", "1.5", "--state-dir", str(tmp_path / "stack"),
        json_path=tmp_path / "drill.json", timeout=240)
    assert code == 0, output
    assert report["ok"] and report["problems"] == []
    assert report["lost"] == 0 and report["duplicated"] == 0 and report["unacked"] == 0
    assert report["messages_sent"] == report["acked"] > 0
    assert [(d["from"], d["to"], d["old"]) for d in report["deploys"]] == [
        ("blue", "green", "drained"), ("green", "blue", "drained")]
    assert [c["clients_connected_to_it"] for c in report["ended_on"]] == [40, 40]
    assert report["stack_started_here"] and not (tmp_path / "stack" / STATE_FILE).exists()
