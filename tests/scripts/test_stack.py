"""scripts/stack.py: redis-server, a real Traefik and the active colour, on loopback."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from scripts.stack import STATE_FILE, StackState, down, status, traefik_color, up
from tests.support import Client
from tools import traefik_config as tc
from tools.net import http_get


async def test_chat_goes_through_traefik_and_probes_stay_internal(local_stack: StackState) -> None:
    state = local_stack
    report = status(state.dir)
    assert report["up"] and report["active"] == "blue" and report["traefik_routes_to"] == "blue"

    ws_base = state.web_url.replace("http://", "ws://")
    alice = await Client.connect(f"{ws_base}/ws/chat/lobby/")
    bob = await Client.connect(f"{ws_base}/ws/chat/lobby/")
    ack = await alice.post("hello through traefik", client_id="c-1")
    assert ack["type"] == "ack" and ack["id"] == 1
    [message] = await bob.messages(1)
    assert message["message"] == "hello through traefik"
    await alice.close()
    await bob.close()

    assert http_get(state.web_url + "/")[0] == 200
    for path in tc.INTERNAL_PATHS:
        assert http_get(state.web_url + path)[0] == 404, path
    assert http_get(state.ops_url + "/ping")[0] == 200
    status_code, body = http_get(state.ops_url + "/readyz")
    assert status_code == 200 and json.loads(body)["color"] == "blue"


def test_renders_the_repository_files_with_only_addresses_changed(local_stack: StackState) -> None:
    state = local_stack
    rendered = yaml.safe_load((state.dir / "traefik" / "traefik.yml").read_text())
    assert rendered == tc.render_static(
        tc.load_static(), f"127.0.0.1:{state.ports['web']}", f"127.0.0.1:{state.ports['ops']}",
        state.dynamic_file.parent,
    )
    assert state.dynamic_file.read_text() == tc.render_dynamic("blue", state.app_urls())
    saved = json.loads((state.dir / STATE_FILE).read_text())
    assert saved["active"] == "blue" and set(saved["procs"]) == {"redis", "traefik", "blue"}
    assert len(set(saved["ports"].values())) == len(saved["ports"])


def test_up_is_idempotent_and_down_stops_everything(local_stack: StackState) -> None:
    again = up(local_stack.dir)
    assert {n: p.pid for n, p in again.procs.items()} == {n: p.pid for n, p in local_stack.procs.items()}
    stopped = down(local_stack.dir)
    assert set(stopped) == {"redis", "traefik", "blue"}
    assert not any(proc.alive() for proc in local_stack.procs.values())
    assert not (local_stack.dir / STATE_FILE).exists()
    assert (local_stack.dir / "logs" / "traefik.log").exists()
    assert status(local_stack.dir) == {"up": False, "state_dir": str(local_stack.dir)}
    assert traefik_color(local_stack) is None


def test_cli_up_status_down(tmp_path: Path) -> None:
    from tests.support import run_script

    directory = str(tmp_path / "cli")
    try:
        code, _, output = run_script("stack", "up", "--state-dir", directory, "--color", "green")
        assert code == 0, output
        assert json.loads(output[: output.rindex("}") + 1])["traefik_routes_to"] == "green"
        code, _, output = run_script("stack", "status", "--state-dir", directory)
        assert code == 0 and json.loads(output)["up"] is True
    finally:
        code, _, output = run_script("stack", "down", "--state-dir", directory)
    assert code == 0, output
    code, _, output = run_script("stack", "status", "--state-dir", directory)
    assert code == 1 and json.loads(output)["up"] is False


# -- the drain of a colour, as a deploy reads it ----------------------------------------------

# Stand-ins for an app process at SIGTERM (the service itself no longer fails to drain on
# any input found: these are the ways a process can still end, for the report to tell apart).
ENDINGS = {
    "drains": "import signal, sys, time\nsignal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
              "print('ready', flush=True)\ntime.sleep(60)",
    "fails": "import signal, sys, time\n"
             "def stop(*_):\n    print('ERROR: exiting with status 1', flush=True)\n    sys.exit(1)\n"
             "signal.signal(signal.SIGTERM, stop)\nprint('ready', flush=True)\ntime.sleep(60)",
    "hangs": "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
             "print('ready', flush=True)\ntime.sleep(60)",
}


def test_a_drain_reports_each_process_as_it_ended(tmp_path: Path) -> None:
    import os
    import sys

    from scripts.stack import DRAIN_SLACK, drain
    from tools.net import wait_until
    from tools.procs import spawn

    state = StackState(dir=tmp_path, ports={}, active="blue")
    for name, code in ENDINGS.items():
        log = state.log(f"app_{name}")
        env = {**os.environ, "SHUTDOWN_TIMEOUT": "0.5"}
        state.procs[name] = spawn([sys.executable, "-c", code], log, env)
        wait_until(lambda log=log: log.exists() and "ready" in log.read_text(), 10, f"{name} to start")
    outcomes = drain(state, list(ENDINGS))
    assert outcomes == {
        "drains": "drained",
        "fails": "exited without a clean drain (see its log)",
        "hangs": f"killed: still running {0.5 + DRAIN_SLACK:.0f}s after SIGTERM "
                 f"(its SHUTDOWN_TIMEOUT and {DRAIN_SLACK:.0f}s)",
    }
    assert not any(proc.alive() for proc in state.procs.values())
