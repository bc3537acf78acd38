"""scripts/shutdown.py at a small size: SIGTERM with sockets open, ours and the floor."""

from __future__ import annotations

from pathlib import Path

from tests.support import run_script


def test_sigterm_closes_every_socket_with_1012_and_exits_0(tmp_path: Path) -> None:
    status, result, output = run_script("shutdown", "-n", "50", "-r", "5", "--per-process", "20",
                                        json_path=tmp_path / "sd.json")

    assert status == 0, output
    ours = result["results"]["app"]
    assert (ours["connected"], ours["attempted"]) == (50, 50)
    assert ours["exit_status"] == 0 and ours["exited"] is True
    assert ours["close_codes"] == {"1012": 50}
    assert ours["exit_ms"] > 0 and ours["last_client_closed_ms"] > 0
    floor = result["results"]["floor"]
    assert floor["connected"] == 50 and floor["exited"] is True
    assert sum(floor["close_codes"].values()) == 50
    assert set(result["ratio_to_floor"]) == {"exit_ms", "last_client_closed_ms"}
    assert result["ok"] is True and "close codes" in output
