"""scripts/stack.py: redis-server, a real Traefik and the active colour, on loopback."""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from scripts.stack import down, status, traefik_color, up
from scripts.stack_state import STATE_FILE, StackError, StackState, locked
from tests.support import Client
from tools import traefik_config as tc
from tools.net import http_get, wait_until


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
    "drains": "import signal, sys, time\n"
              "def stop(*_):\n    print('INFO: drained 0 websocket(s) in 0.001s', flush=True)\n"
              "    sys.exit(0)\n"
              "signal.signal(signal.SIGTERM, stop)\nprint('ready', flush=True)\ntime.sleep(60)",
    "fails": "import signal, sys, time\n"
             "def stop(*_):\n    print('ERROR: exiting with status 1', flush=True)\n    sys.exit(1)\n"
             "signal.signal(signal.SIGTERM, stop)\nprint('ready', flush=True)\ntime.sleep(60)",
    "hangs": "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
             "print('ready', flush=True)\ntime.sleep(60)",
    # SIGKILLed by someone else while it drains: it never says it drained.
    "is killed": "import os, signal, time\n"
                 "signal.signal(signal.SIGTERM, lambda *_: os.kill(os.getpid(), signal.SIGKILL))\n"
                 "print('ready', flush=True)\ntime.sleep(60)",
}


def test_a_drain_reports_each_process_as_it_ended(tmp_path: Path) -> None:
    import os
    import sys

    from scripts.stack import drain
    from tools.net import wait_until
    from tools.procs import spawn
    from tools.termination import DRAIN_SLACK

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
        "is killed": "ended without logging its drain (killed by another signal?)",
    }
    assert not any(proc.alive() for proc in state.procs.values())


# -- up on a stack that exists ----------------------------------------------------------------

def test_up_on_a_degraded_stack_restarts_only_what_is_dead(two_process_stack: StackState) -> None:
    state = two_process_stack
    before = {name: proc.pid for name, proc in state.procs.items()}
    os.kill(state.procs["blue.1"].pid, signal.SIGKILL)
    assert state.procs["blue.1"].wait(10)

    again = up(state.dir)
    assert again.restarted == ["blue.1"]
    # The live process, Traefik and Redis were never touched: same processes, same ports.
    assert {n: again.procs[n].pid for n in ("redis", "traefik", "blue")} == {
        n: before[n] for n in ("redis", "traefik", "blue")}
    assert again.ports == state.ports
    restarted = again.procs["blue.1"]
    assert restarted.pid != before["blue.1"] and restarted.listens_on(state.ports["blue.1"])
    assert status(state.dir)["up"] and traefik_color(again) == "blue"


def test_a_repair_that_cannot_be_recorded_leaves_nothing_running(local_stack: StackState) -> None:
    # `make stack` restarted a dead app process, then failed to write state.json (a full
    # disk): the new process ran on, recorded nowhere, so `stack down` never stopped it.
    from scripts.stack import unrecorded
    from tests.support import run_script

    state = local_stack
    os.kill(state.procs["blue"].pid, signal.SIGKILL)
    assert state.procs["blue"].wait(10)
    try:
        code, _, output = run_script("stack", "up", "--state-dir", str(state.dir), disk_full_past=100)
        apps = [pid for what, pid in unrecorded(state.dir) if what == "app"]
    finally:
        for what, pid in unrecorded(state.dir):  # the old code's leftover
            if what == "app":
                os.kill(pid, signal.SIGKILL)
    assert code == 1 and "Traceback" not in output
    error = json.loads(output.splitlines()[0])["error"]
    assert "could not be recorded" in error and "File too large" in error and "blue" in error
    assert apps == []
    assert StackState.load(state.dir).procs["blue"].pid == state.procs["blue"].pid  # the record as it was


def test_up_with_another_process_count_or_redis_refuses_and_says_what_works(local_stack: StackState) -> None:
    with pytest.raises(StackError, match=r"make stack-down && make stack PROCESSES=2"):
        up(local_stack.dir, processes=2)
    # --cluster on a stack with one redis-server was ignored (exit 0, still redis://).
    with pytest.raises(StackError, match=r"make stack-down && make stack STACK_ARGS=--cluster"):
        up(local_stack.dir, cluster=True)
    assert StackState.load(local_stack.dir).processes == 1 and local_stack.procs["blue"].alive()


def test_a_stack_command_while_another_holds_the_lock_does_nothing(local_stack: StackState) -> None:
    from tests.support import run_script

    with locked(local_stack.dir, "a test"):
        code, _, output = run_script("stack", "down", "--state-dir", str(local_stack.dir))
    assert code == 1 and "is busy" in output and f"pid {os.getpid()} (a test" in output
    assert all(proc.alive() for proc in local_stack.procs.values())


def test_stack_down_on_a_full_disk_stops_everything(local_stack: StackState) -> None:
    # The lock's note (who holds it) failed to write on a full disk and took every command
    # with it, `stack down` too: the one an operator runs to free the disk.
    from tests.support import run_script

    code, _, output = run_script("stack", "down", "--state-dir", str(local_stack.dir), disk_full_past=0)
    assert code == 0, output
    assert set(json.loads(output)["stopped"]) == {"redis", "traefik", "blue"}
    assert not any(proc.alive() for proc in local_stack.procs.values())
    assert not (local_stack.dir / STATE_FILE).exists()


@pytest.mark.parametrize("damage", ["deleted", "emptied"])
def test_up_rewrites_a_routing_file_that_routes_nothing(local_stack: StackState, damage: str) -> None:
    # With chat.yml gone Traefik routes nothing (the public port answers 404), yet `stack
    # status` and `make stack` said "up": true, exit 0, and `up` rewrote it only when Traefik
    # itself was dead.
    from tests.support import run_script

    state = local_stack
    pids = {name: proc.pid for name, proc in state.procs.items()}
    if damage == "deleted":
        state.dynamic_file.unlink()
    else:
        state.dynamic_file.write_text("")
    code, _, output = run_script("stack", "status", "--state-dir", str(state.dir))
    report = json.loads(output)
    assert code == 1 and report["up"] is False
    assert report["routing_problem"] == {
        "deleted": "missing",
        "emptied": "unusable: the dynamic file must route to exactly one colour, found []"}[damage]

    code, _, output = run_script("stack", "up", "--state-dir", str(state.dir))
    assert code == 0, output
    result = json.loads(output[: output.rindex("}") + 1])
    assert result["up"] is True and result["routing_problem"] is None and "restarted" not in result
    assert list(result["rewritten"]) == ["traefik/dynamic/chat.yml"]
    assert "stack: rewrote traefik/dynamic/chat.yml" in output
    assert state.dynamic_file.read_text() == tc.render_dynamic("blue", state.app_urls())
    assert traefik_color(state) == "blue" and http_get(state.web_url + "/")[0] == 200
    # Nothing was restarted: the live clients stayed connected.
    assert {name: proc.pid for name, proc in StackState.load(state.dir).procs.items()} == pids


def test_up_says_at_once_why_traefik_could_not_restart(local_stack: StackState) -> None:
    # Traefik dead, its public port taken meanwhile: the restarted Traefik exits at once, but
    # `up` waited its whole 30 s for it and quoted its log as it was at its start ("nothing in
    # its log"), not the reason it wrote since.
    import socket

    from tests.support import run_script

    state = local_stack
    os.kill(state.procs["traefik"].pid, signal.SIGKILL)
    assert state.procs["traefik"].wait(10)
    taken: list[socket.socket] = []

    def take_the_port() -> bool:
        try:
            taken.append(socket.create_server(("127.0.0.1", state.ports["web"])))
        except OSError:  # a killed process's last threads still hold it: gone in a moment
            return False
        return True

    wait_until(take_the_port, 10, "Traefik's public port to be free")
    with taken[0]:
        code, _, output = run_script("stack", "up", "--state-dir", str(state.dir))
    assert code == 1, output
    error = json.loads(output)["error"]
    assert error.startswith("restarting traefik of the stack in")
    assert "Traefik exited: " in error and "address already in use" in error
    assert state.procs["blue"].alive()  # what still ran was left running


def test_up_with_the_other_colour_on_a_running_stack_says_it_keeps_its_own(local_stack: StackState) -> None:
    # `stack up --color green` on a blue stack exited 0 and said nothing: blue kept serving.
    from tests.support import run_script

    code, _, output = run_script("stack", "up", "--state-dir", str(local_stack.dir), "--color", "green")
    assert code == 0, output
    result = json.loads(output[: output.rindex("}") + 1])
    [note] = result["notes"]
    assert "already runs with blue active; --color green is for a new stack and was ignored" in note
    assert "`make deploy COLOR=green` switches to it" in note and f"stack: {note}" in output
    assert result["active"] == "blue" and traefik_color(local_stack) == "blue"


@contextlib.contextmanager
def record_lost(state: StackState) -> Iterator[Path]:
    """The running stack's state.json deleted, and put back afterwards; its path."""
    record = state.dir / STATE_FILE
    kept = record.read_text()
    record.unlink()
    try:
        yield record
    finally:
        record.write_text(kept)


def test_up_without_the_record_of_a_running_stack_refuses_a_second_one(local_stack: StackState) -> None:
    # state.json lost while the stack runs: `make stack` started a second stack on the same
    # state directory, two redis-servers appending to one Redis data directory.
    from tests.support import run_script

    state = local_stack
    with record_lost(state) as record:
        try:
            code, _, output = run_script("stack", "up", "--state-dir", str(state.dir))
            second_stack = record.exists()
        finally:
            if record.exists():
                down(state.dir)  # the second stack, on the old code
    assert code == 1 and not second_stack, output
    error = json.loads(output)["error"]
    assert f"no state.json in {state.dir}, but a stack still runs from it" in error
    for what, name in (("redis-server", "redis"), ("Traefik", "traefik"), ("app", "blue")):
        assert f"{what} (pid {state.procs[name].pid})" in error
    # The advice stops exactly that stack.
    killed = error.split("`kill ")[1].split("`")[0].split()
    assert sorted(killed) == sorted(str(proc.pid) for proc in state.procs.values())
    assert all(proc.alive() for proc in state.procs.values())


def test_down_and_status_without_the_record_of_a_running_stack_name_what_still_runs(
        local_stack: StackState) -> None:
    # They said "stopped": {} and "up": false, exit 0, while the whole stack ran on.
    from tests.support import run_script

    state = local_stack
    with record_lost(state):
        code, _, output = run_script("stack", "down", "--state-dir", str(state.dir))
        _, _, shown = run_script("stack", "status", "--state-dir", str(state.dir))
    assert code == 1, output
    assert f"no state.json in {state.dir}, but a stack still runs from it" in json.loads(output)["error"]
    assert {entry["pid"] for entry in json.loads(shown)["unrecorded"]} == {
        proc.pid for proc in state.procs.values()}
    assert all(proc.alive() for proc in state.procs.values())


def test_a_stack_that_cannot_start_on_a_full_disk_leaves_nothing_running(tmp_path: Path) -> None:
    # state.json's first write failed after redis-server was started, and the cleanup read
    # the record on disk, which did not name it: Redis ran on, recorded nowhere.
    from scripts.stack import unrecorded
    from tests.support import run_script

    directory = tmp_path / "full"
    # Redis' log goes nowhere: past the limit its own writes would kill it (SIGXFSZ), and it
    # is the process that must not be left running. Its data files fit.
    (directory / "logs").mkdir(parents=True)
    (directory / "logs" / "redis.log").symlink_to(os.devnull)
    try:
        code, _, output = run_script("stack", "up", "--state-dir", str(directory), disk_full_past=300)
        left = unrecorded(directory)
    finally:
        for _, pid in unrecorded(directory):  # the old code's leftovers
            os.kill(pid, signal.SIGKILL)
    assert code == 1 and "Traceback" not in output and "File too large" in json.loads(output)["error"]
    assert left == [] and not (directory / STATE_FILE).exists()
