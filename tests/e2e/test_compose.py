"""The compose path in a real Docker engine: `make compose-drill` at CI size, its faults.

Each test runs scripts/compose_drill.py as a process, as CI and people do: the real
compose.yml, the real images (local stand-ins of the base images where no registry can be
reached), clients through Traefik's port published on 127.0.0.1. Skipped only where no
engine answers and there is no dockerd to start (.ci/run installs Debian's docker.io).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from scripts.compose_drill import ComposeStack
from scripts.compose_runtime import release_tag
from scripts.docker_env import docker_environment, state_dir
from tools.docker.engine import Engine, answers

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.skipif(not answers() and shutil.which("dockerd") is None,
                       reason="no Docker engine answers and no dockerd to start (apt-get install docker.io)"),
    pytest.mark.timeout(900),
]


def tracked_changes() -> str:
    return subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                          capture_output=True, text=True, check=True).stdout


def compose_drill(tmp_path: Path, *args: str) -> dict[str, Any]:
    """Run the compose drill; its report (the last stdout line, the same as --json)."""
    engine_before = answers()
    before = tracked_changes()
    report_file = tmp_path / "report.json"
    done = subprocess.run([sys.executable, "-m", "scripts.compose_drill", *args, "--json", str(report_file)],
                          cwd=ROOT, capture_output=True, text=True, timeout=840)
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == json.loads(report_file.read_text())
    assert done.returncode == (0 if report["ok"] else 1)
    assert report["ok"], json.dumps(report.get("problems"), indent=2) + done.stderr[-2000:]
    assert report["runtime"] == "compose" and report["lost"] == 0 and report["duplicated"] == 0
    assert report["down_exit"] == 0
    # Nothing of the checkout changed: the live routing went to the drill's own directory.
    assert tracked_changes() == before
    # Whatever started the engine stopped it; an engine that was running still is.
    assert answers() == engine_before
    assert Engine(state_dir() / "engine").owned() is None or engine_before
    project = report["project"]
    left = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={project}"],
                          capture_output=True, text=True) if engine_before else None
    assert left is None or left.stdout.strip() == "", "down -v left containers behind"
    return report


def test_compose_drill_blue_green_blue_loses_nothing(tmp_path: Path) -> None:
    """`make compose-drill` at CI size: 100 clients, blue -> green -> blue, zero loss."""
    report = compose_drill(tmp_path, "--clients", "100")
    assert report["first_start"]["ok"] and report["first_start"]["to"] == "blue"
    # Each deploy returned once the old colour confirmed it drains; the drill then saw its
    # container exit by itself, status 0 (checked in the drill: report["ok"]).
    assert [(d["from"], d["to"], d["old"]) for d in report["deploys"]] == [
        ("blue", "green", "draining"), ("green", "blue", "draining")]
    assert [stop["color"] for stop in report["old_colour_exits"]] == ["blue", "green"]
    for stop in report["old_colour_exits"]:
        assert [c["exit_code"] for c in stop["containers"].values()] == [0]
    reproducible = release_tag()[1]  # a clean checkout: one image per release, built once
    for deploy in report["deploys"]:
        assert deploy["runtime"] == "compose" and deploy["built"] is not reproducible
        for key in ("time_to_ready_s", "switch_latency_s", "drain_s", "total_s", "wall_s"):
            assert deploy[key] >= 0
    assert report["close_codes"] == {"1012": 200}
    assert report["acked"] > 0 and report["received"] == report["expected_deliveries"]


def test_docker_kill_of_the_active_colour_fails_over_with_nothing_lost(tmp_path: Path) -> None:
    report = compose_drill(tmp_path, "--clients", "60", "--fault", "kill")
    [kill] = report["killed"]
    assert kill["color"] == "blue" and kill["state_after"] != "running"
    [failover] = report["deploys"]
    assert (failover["from"], failover["to"]) == ("blue", "green")
    assert failover["old"] == "already gone (exited 137)"
    assert report["close_codes"] == {"1006": 60}


def test_a_release_that_fails_to_start_never_takes_traffic(tmp_path: Path) -> None:
    report = compose_drill(tmp_path, "--clients", "40", "--fault", "bad-image")
    [refused] = report["refused_deploys"]
    assert not refused["ok"] and refused["exit"] == 1
    assert "nothing was switched, blue still serves" in refused["error"]
    assert "broken release" in refused["error"]  # the container's own last words
    # Nobody was moved by it: two reconnects each, from the two ordinary deploys only.
    assert report["close_codes"] == {"1012": 80}


def test_two_replicas_per_colour_share_the_clients_and_switch_together(tmp_path: Path) -> None:
    """`make compose-drill DRILL_ARGS="--processes 2"`: every deploy runs two containers of
    the colour, waits for each one's own /readyz, switches once, stops both old ones at once."""
    report = compose_drill(tmp_path, "--clients", "60", "--processes", "2")
    assert report["processes"] == 2 and report["first_start"]["replicas"] == 2
    assert [(d["from"], d["to"], d["old"], d["replicas"]) for d in report["deploys"]] == [
        ("blue", "green", "draining", 2), ("green", "blue", "draining", 2)]
    # Both replicas of the new colour serve: each one's own chat_connections_open, read
    # through its replica router, is part of the 60 (Traefik balances round-robin).
    for spread, color in zip(report["replica_connections"], ("green", "blue"), strict=True):
        assert spread["color"] == color
        counts = spread["connections"]
        assert sorted(counts) == [f"{color}-1", f"{color}-2"]
        assert sum(counts.values()) == 60 and all(counts.values())
    # Both old replicas drained and exited by themselves.
    for stop in report["old_colour_exits"]:
        assert len(stop["containers"]) == 2
        assert all(c["state"] == "exited" and c["exit_code"] == 0 for c in stop["containers"].values())
    assert report["close_codes"] == {"1012": 120}


def test_a_killed_replica_of_the_old_colour_is_named_in_the_deploys_report(tmp_path: Path) -> None:
    """Two replicas of blue, one `docker kill`ed (its clients saw 1006): the deploy to green
    names it, by Docker's own state, and the other as draining. Asked through the colour's
    round robin instead, the report was a coin flip and named neither."""
    with docker_environment(state_dir()):
        stack = ComposeStack(tmp_path / "stack", processes=2)
        stack.dynamic_dir.mkdir(parents=True)
        try:
            first = stack.deploy("blue")
            assert first["exit"] == 0 and first["replicas"] == 2, first
            killed = f"{stack.project}-app_blue-1"
            subprocess.run(["docker", "kill", killed], capture_output=True, check=True)
            # Its exit, awaited: `docker wait` returns its status once it has exited.
            waited = subprocess.run(["docker", "wait", killed], capture_output=True, text=True, check=True)
            assert waited.stdout.strip() == "137"

            report = stack.deploy("green")
            assert report["exit"] == 0 and (report["from"], report["to"]) == ("blue", "green"), report
            assert report["old_processes"] == {"blue-1": "already gone (exited 137)", "blue-2": "draining"}
            assert report["old"] == "blue-1 already gone (exited 137); blue-2 draining"
            exits = stack.await_exit("blue")["containers"]
            assert {name: c["exit_code"] for name, c in exits.items()} == {
                killed: 137, f"{stack.project}-app_blue-2": 0}
        finally:
            assert stack.down() == 0
