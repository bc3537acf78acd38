"""scripts/loadtest.py at a small size: the JSON users read, the process split, the refusals."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support import run_script
from tools.procs import AppServer
from tools.swarm import plan
from tools.targets import start_server

LATENCY_KEYS = {"p50", "p90", "p99", "max"}


def test_small_run_spread_over_processes_reports_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "load.json"
    status, result, output = run_script(
        "loadtest", "-n", "50", "-r", "5", "--per-process", "20", "--messages", "2",
        json_path=out,
    )

    assert status == 0, output
    assert result["processes"]["count"] == 3
    assert "spread over 3 processes" in output
    connect, broadcast, server = result["connect"], result["broadcast"], result["server"]
    assert (connect["attempted"], connect["connected"], connect["success_rate"]) == (50, 50, 1.0)
    assert connect["rate_per_s"] > 0
    assert set(connect["latency_ms"]) == LATENCY_KEYS and None not in connect["latency_ms"].values()
    assert result["target"]["ready_frame"] is True
    assert (broadcast["rooms_with_sender"], broadcast["sent"]) == (5, 10)
    assert (broadcast["expected"], broadcast["received"], broadcast["missing"]) == (100, 100, 0)
    assert broadcast["duplicates"] == broadcast["stray"] == 0
    assert None not in broadcast["latency_ms"].values()
    for key in ("cpu_ms_per_connection", "rss_kb_per_connection", "cpu_ms_per_delivery"):
        assert server[key] is not None
    assert result["machine"]["cpu_count"] >= 1 and result["machine"]["versions"]["uvicorn"]
    assert result["ok"] is True and "connect ms" in output and "delivery ms" in output


def test_the_floor_is_loaded_the_same_way_through_url_and_pid(tmp_path: Path) -> None:
    floor = start_server("floor")
    try:
        status, result, output = run_script(
            "loadtest", "--url", floor.base, "--server-pid", str(floor.process.pid),
            "-n", "40", "-r", "4", "--ramp", "1.0", "--messages", "3",
            json_path=tmp_path / "floor.json",
        )
    finally:
        floor.cleanup()

    assert status == 0, output
    assert result["target"]["ready_frame"] is False
    assert result["connect"]["connected"] == 40
    assert result["config"]["ramp"] == 1.0
    assert (result["broadcast"]["received"], result["broadcast"]["missing"]) == (120, 0)
    assert result["server"]["pid"] == floor.process.pid
    assert result["server"]["cpu_ms_per_delivery"] is not None


def test_connections_short_of_the_target_exit_non_zero(make_app: Callable[..., AppServer],
                                                       tmp_path: Path) -> None:
    app = make_app(env={"CHAT_MAX_CONNECTIONS": "20"})
    status, result, output = run_script(
        "loadtest", "--url", app.base, "-n", "30", "-r", "3", "--concurrency", "5",
        json_path=tmp_path / "short.json",
    )

    assert status == 1, output
    connected = result["connect"]["connected"]
    assert connected == 20  # the server's cap is exact
    assert result["connect"]["errors"] == {"HTTP 503 too_many_connections": 30 - connected}
    assert result["ok"] is False and f"only {connected} of 30 connected" in result["failures"]
    assert result["broadcast"]["missing"] == 0  # those that got in all received


def test_refuses_a_target_that_is_not_loopback(tmp_path: Path) -> None:
    status, result, output = run_script("loadtest", "--url", "ws://10.1.2.3:8000", "-n", "5",
                                        json_path=tmp_path / "x.json")

    assert status == 2
    assert result is None
    assert "not a loopback address" in output


@pytest.mark.unit
def test_plan_splits_only_when_one_process_cannot_hold_them_all() -> None:
    assert plan(50, per_process=20).processes == 3
    single = plan(50)
    assert single.processes == 1 and "one process" in single.describe()
    assert single.nofile_now >= single.nofile_before
