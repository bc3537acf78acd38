"""scripts/deploy.py: the blue/green procedure on the local stack (real Traefik), and the order
of compose commands with a stand-in ``docker`` that records them (fast, no engine needed;
tests/e2e/test_compose.py runs the compose runtime in a real engine)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosedError

from scripts.compose_runtime import PS_FORMAT
from scripts.deploy import deploy
from scripts.local_runtime import LocalRuntime
from scripts.stack import start_app, traefik_color, wait_app_ready
from scripts.stack_state import StackState, locked, routed_record
from tests.support import Client, run_script
from tools import ROOT
from tools import traefik_config as tc
from tools.net import http_get, wait_until
from tools.procs import spawn


def ws_url(state: StackState, room: str, since: int | None = None) -> str:
    query = "" if since is None else f"?since={since}"
    return f"{state.web_url.replace('http://', 'ws://')}/ws/chat/{room}/{query}"


async def test_deploy_with_clients_connected_loses_nothing(local_stack: StackState) -> None:
    state = local_stack
    members = [await Client.connect(ws_url(state, "cutover")) for _ in range(3)]
    for n in range(1, 4):
        assert (await members[0].post(f"before {n}", client_id=f"b{n}"))["id"] == n

    report = await asyncio.to_thread(deploy, LocalRuntime(state), "green")
    assert report["ok"] and (report["from"], report["to"]) == ("blue", "green")
    assert report["old"] == "drained"
    for key in ("time_to_ready_s", "switch_latency_s", "drain_s", "total_s"):
        assert report[key] >= 0
    assert state.active == "green" and traefik_color(state) == "green"
    assert "blue" not in state.procs

    resumed = []
    for member in members:
        with pytest.raises(ConnectionClosedError) as closed:
            while True:
                member.skipped.append(await member.recv())
        assert closed.value.rcvd.code == 1012
        seen = [f["id"] for f in member.skipped if f["type"] == "message"]
        resumed.append(await Client.connect(ws_url(state, "cutover", since=max(seen))))
        assert seen == [1, 2, 3]
    # The new colour shares Redis: ids continue, everyone gets the new message once.
    assert (await resumed[1].post("after", client_id="a1"))["id"] == 4
    for member in resumed:
        [message] = await member.messages(1)
        assert message["id"] == 4 and message["message"] == "after"
        await member.close()


async def test_failover_after_the_active_colour_was_killed(local_stack: StackState) -> None:
    state = local_stack
    member = await Client.connect(ws_url(state, "crash"))
    assert (await member.post("before", client_id="k1"))["id"] == 1
    blue = state.procs["blue"]
    os.kill(blue.pid, signal.SIGKILL)
    with pytest.raises(ConnectionClosedError) as closed:
        while True:
            member.skipped.append(await member.recv())
    assert closed.value.rcvd is None  # no close frame, no drain: the client sees 1006
    assert blue.wait(10) and traefik_color(state) is None

    report = await asyncio.to_thread(deploy, LocalRuntime(state), "green")
    assert report["ok"] and (report["from"], report["to"], report["old"]) == ("blue", "green", "already gone")
    assert traefik_color(state) == "green"
    saved = StackState.load(state.dir)
    assert saved.active == "green" and set(saved.procs) == {"redis", "traefik", "green"}

    resumed = await Client.connect(ws_url(state, "crash", since=1))
    # A resend of what the client could not be sure of is acknowledged with the first id.
    assert (await resumed.post("before", client_id="k1"))["id"] == 1
    assert (await resumed.post("after", client_id="k2"))["id"] == 2
    assert [m["id"] for m in await resumed.messages(1)] == [2]
    await resumed.close()


async def test_failover_past_a_colour_that_does_not_answer(local_stack: StackState) -> None:
    state = local_stack
    blue = state.procs["blue"]
    os.kill(blue.pid, signal.SIGSTOP)  # hung: the process is there, nothing answers
    try:
        # SIGTERM, then SIGKILL once its drain budget is over (SHUTDOWN_TIMEOUT and a slack).
        report = await asyncio.to_thread(deploy, LocalRuntime(state), "green")
    finally:
        if blue.alive():
            os.kill(blue.pid, signal.SIGCONT)
    assert (report["to"], report["old"]) == ("green", "stopped, was not answering")
    assert not blue.alive() and traefik_color(state) == "green"


@pytest.mark.parametrize(("setting", "reason"), [
    ("CHAT_LAYER=bogus", "CHAT_LAYER must be"),
    ("REDIS_URL=redis://127.0.0.1:1/0", "redis unavailable"),
])
async def test_a_failing_colour_leaves_the_old_one_serving(
        local_stack: StackState, setting: str, reason: str) -> None:
    state = local_stack
    member = await Client.connect(ws_url(state, "steady"))
    before = state.dynamic_file.read_text()
    # An earlier start's last words are not this start's.
    with open(state.log("app_green"), "a") as log:
        log.write("Traceback: words of an earlier start\n")

    code, _, output = await asyncio.to_thread(
        run_script, "deploy", "green", "--state-dir", str(state.dir),
        "--app-env", setting, "--ready-timeout", "3")
    assert code == 1, output
    result = json.loads(output.splitlines()[0])
    assert not result["ok"] and "nothing was switched" in result["error"] and reason in result["error"]
    assert "an earlier start" not in result["error"]

    assert state.dynamic_file.read_text() == before
    assert traefik_color(state) == "blue"
    saved = StackState.load(state.dir)
    assert saved.active == "blue" and "green" not in saved.procs
    # The connected client never noticed.
    assert (await member.post("still here", client_id="s1"))["type"] == "ack"
    await member.close()


def test_deploying_the_active_colour_is_refused(local_stack: StackState) -> None:
    before = local_stack.dynamic_file.stat().st_mtime_ns
    code, _, output = run_script("deploy", "blue", "--state-dir", str(local_stack.dir))
    assert code == 2
    assert "blue is already the active colour and nothing of green runs: nothing to deploy" in output
    assert "deploy green instead" not in output  # after an interrupted deploy, that would roll it back
    assert local_stack.dynamic_file.stat().st_mtime_ns == before
    assert StackState.load(local_stack.dir).procs["blue"].alive()


# -- compose runtime, with a stand-in docker ------------------------------------------------
# The order of compose commands against the routing, checked fast and without an engine;
# tests/e2e/test_compose.py runs the same procedure in a real one.

FAKE_DOCKER = """#!{python}
# Stand-in docker: records argv, PARLEY_TAG, the per-replica connection cap and the colour
# the live routing names then; keeps each colour's containers in FAKE_STATE.
import json, os, re, sys, time
path = os.environ["FAKE_DYNAMIC"]
dynamic = open(path).read() if os.path.exists(path) else ""
found = re.search(r"service: chat-(\\w+)", dynamic)
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(json.dumps({{"argv": sys.argv[1:], "routed": found and found.group(1),
                          "tag": os.environ.get("PARLEY_TAG"),
                          "cap": os.environ.get("PARLEY_CONNECTIONS_PER_REPLICA")}}) + "\\n")
state_file = os.environ["FAKE_STATE"]
def load():
    return json.load(open(state_file))
def save(state):
    with open(state_file + ".tmp", "w") as handle:
        json.dump(state, handle)
    os.replace(state_file + ".tmp", state_file)
def mark(names, value):  # each <project>-<service>-<n> named is now in state ``value``
    state = load()
    for name in names:
        service, number = name.rsplit("-", 2)[1:]
        state[service][int(number) - 1] = value
    save(state)
args = sys.argv[1:]
project = os.environ.get("COMPOSE_PROJECT_NAME") or "fromconfig"
if args[:2] == ["image", "inspect"]:
    sys.exit(1 if os.environ.get("FAKE_NO_IMAGE") else 0)
if args[0] == "ps":  # docker ps --filter label=...service=app_<colour>
    service = [a.split("=", 2)[2] for a in args if a.startswith("label=com.docker.compose.service=")][0]
    pause = os.environ.get("FAKE_PAUSE")  # once: the first look at blue once green is routed
    if pause and service == "app_blue" and found and found.group(1) == "green" and not os.path.exists(pause):
        open(pause, "w").close()  # the deploy is paused here, after its switch
        while not os.path.exists(pause + ".release"):
            time.sleep(0.01)
    for number, state in enumerate(load().get(service, []), start=1):
        # "exited:137": exited with that status (killed), plain "exited" with 0.
        state, _, code = state.partition(":")
        status = f"Exited ({{code or 0}}) 2 seconds ago" if state == "exited" else "Up 2 seconds"
        print("\\t".join([f"{{project}}-{{service}}-{{number}}", state, "parley:r1", "h1", status]))
    sys.exit(0)
if args[0] == "start":  # docker start <names>
    mark(args[1:], "running")
    sys.exit(0)
if args[0] == "stop":  # docker stop <names>: each says it drains, then exits
    mark(args[1:], "draining")
    while os.environ.get("FAKE_HOLD_STOP") and not os.path.exists(os.environ["FAKE_HOLD_STOP"]):
        time.sleep(0.01)
    codes = os.environ.get("FAKE_STOP_EXIT", "").split(",")  # each one's exit status, by number
    for name in args[1:]:
        number = int(name.rsplit("-", 1)[1])
        code = codes[number - 1] if number <= len(codes) and codes[number - 1] else "0"
        mark([name], "exited" if code == "0" else f"exited:{{code}}")
    sys.exit(0)
if "config" in args and "--hash" in args:
    print(args[-1], os.environ.get("FAKE_CONFIG_HASH", "h1"))
    sys.exit(0)
if "config" in args:
    print(json.dumps({{"name": "fromconfig", "services": {{}}}}))
    sys.exit(0)
fail = os.environ.get("FAKE_FAIL", "")
if fail and fail in args and "up" in args:
    print("container app_green exited (2)", file=sys.stderr)
    sys.exit(1)
if "up" in args:
    scale = [a for a in args if re.fullmatch(r"app_\\w+=\\d+", a)][0]
    service, count = scale.split("=")
    state = load()
    state[service] = ["running"] * int(count)
    save(state)
if "stop" in args:  # docker compose stop app_<colour>
    state = load()
    state[args[-1]] = ["exited"] * len(state.get(args[-1], []))
    save(state)
"""


class OpsEndpoint(BaseHTTPRequestHandler):
    """Stands in for Traefik's internal entry point: /readyz of the replica or colour the
    header names, else of the colour the live file routes to; a replica the stand-in docker
    is stopping answers 503 "draining", one that has exited 502."""

    dynamic: Path
    state: Path

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        replica = self.headers.get(tc.REPLICA_HEADER)
        color = (replica.rsplit("-", 1)[0] if replica else self.headers.get(tc.PROBE_HEADER)
                 or tc.active_color(self.dynamic.read_text()))
        states = json.loads(self.state.read_text()).get(f"app_{color}", [])
        number = int(replica.rsplit("-", 1)[1]) if replica else 1
        state = "running" if not replica else states[number - 1] if number <= len(states) else "gone"
        status, body = {"running": (200, {"ready": True, "color": color}),
                        "draining": (503, {"ready": False, "color": color, "reason": "draining"})}.get(
                            state, (502, {}))
        encoded = json.dumps(body).encode()
        self.send_response(status if self.path == "/readyz" else 404)
        self.send_header("content-length", str(len(encoded)))
        self.end_headers()
        self.wfile.write(encoded)

    def log_message(self, *args: Any) -> None:
        pass


PROJECT = "parley"


@pytest.fixture
def compose_env(tmp_path: Path) -> Iterator[dict[str, Any]]:
    dynamic = tmp_path / "dynamic"
    dynamic.mkdir()
    (dynamic / tc.ACTIVE_FILE_NAME).write_text(tc.render_dynamic("blue", tc.compose_urls(PROJECT, {})))
    state = tmp_path / "containers.json"
    state.write_text(json.dumps({"app_blue": ["running"]}))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    docker = bin_dir / "docker"
    docker.write_text(FAKE_DOCKER.format(python=sys.executable))
    docker.chmod(docker.stat().st_mode | stat.S_IEXEC)
    handler = type("Handler", (OpsEndpoint,), {"dynamic": dynamic / tc.ACTIVE_FILE_NAME, "state": state})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    log = tmp_path / "docker.log"
    hold = tmp_path / "release-stop"
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE_LOG": str(log),
           "FAKE_DYNAMIC": str(dynamic / tc.ACTIVE_FILE_NAME), "FAKE_STATE": str(state),
           "COMPOSE_FILE": "", "COMPOSE_PROJECT_NAME": PROJECT, "FAKE_HOLD_STOP": str(hold)}
    args = ["--runtime", "compose", "--dynamic-dir", str(dynamic), "--tag", "r1",
            "--ops-url", f"http://127.0.0.1:{server.server_address[1]}"]
    yield {"env": env, "args": args, "log": log, "dynamic": dynamic / tc.ACTIVE_FILE_NAME,
           "state": state, "hold": hold}
    hold.touch()  # lets a stand-in `docker stop` still holding finish
    server.shutdown()
    server.server_close()


def recorded(log: Path) -> list[tuple[list[str], str | None]]:
    """Each docker call as (its arguments, compose's after the project directory; routed colour)."""
    calls = []
    for line in log.read_text().splitlines() if log.exists() else []:
        entry = json.loads(line)
        argv = entry["argv"]
        if argv[0] == "compose":
            assert entry["tag"] == "r1", "every compose call runs the release asked for"
            assert argv[1] == "--project-directory"
            argv = argv[3:]
        calls.append((argv, entry["routed"]))
    return calls


def ps(color: str, project: str = PROJECT) -> list[str]:
    return ["ps", "--all", "--filter", f"label=com.docker.compose.project={project}",
            "--filter", f"label=com.docker.compose.service=app_{color}",
            "--filter", "label=com.docker.compose.oneoff=False", "--format", PS_FORMAT]


def test_compose_deploy_runs_the_procedure_in_order(compose_env: dict[str, Any]) -> None:
    code, _, output = run_script("deploy", "green", *compose_env["args"], env=compose_env["env"])
    assert code == 0, output
    report = json.loads(output.splitlines()[0])
    assert report["runtime"] == "compose" and (report["from"], report["to"]) == ("blue", "green")
    assert report["image"] == "parley:r1" and report["built"] is False and report["replicas"] == 1
    # The deploy returned once blue said it drains; its `docker stop` is still under way.
    assert report["old"] == "draining"
    assert json.loads(compose_env["state"].read_text())["app_blue"] == ["draining"]
    assert recorded(compose_env["log"]) == [
        (ps("blue"), "blue"),  # is each replica of blue there to ask?
        (["image", "inspect", "parley:r1"], "blue"),
        (ps("green"), "blue"),  # nothing of green still draining from a deploy before
        # Never `--build`, never `--wait` on a health-check interval: readiness is asked. Blue
        # answered through Traefik, so Traefik and Redis run: `--no-deps` leaves them be.
        (["up", "--detach", "--no-build", "--scale", "app_green=1", "--no-deps", "app_green"], "blue"),
        (ps("green"), "blue"),  # the names compose gave them
        # Once Traefik routes to green: is green still all there? (Else back to blue.)
        (ps("green"), "green"),
        # The old colour is stopped (SIGTERM, its stop_grace_period) only once Traefik
        # routes to the new one, every container of it at once.
        (ps("blue"), "green"),
        (["stop", f"{PROJECT}-app_blue-1"], "green"),
        (ps("green"), "green"),  # green still runs: ready once is not serving now
    ]
    assert compose_env["dynamic"].read_text() == tc.render_dynamic("green", tc.compose_urls(PROJECT, {}))


def test_a_stopped_colour_of_this_release_is_started_without_compose(compose_env: dict[str, Any]) -> None:
    """The rollback case (and every deploy back to a colour of the same release): its
    containers exist, so `docker start`, with compose's config hash checked meanwhile."""
    compose_env["state"].write_text(json.dumps({"app_blue": ["running"], "app_green": ["exited"]}))
    code, _, output = run_script("deploy", "green", *compose_env["args"], env=compose_env["env"])
    assert code == 0, output
    assert json.loads(output.splitlines()[0])["started_by"] == "docker start"
    argvs = [argv for argv, _ in recorded(compose_env["log"])]
    assert ["start", f"{PROJECT}-app_green-1"] in argvs and ["config", "--hash", "app_green"] in argvs
    assert not any("up" in argv for argv in argvs)


def test_containers_made_from_another_configuration_are_recreated(compose_env: dict[str, Any]) -> None:
    compose_env["state"].write_text(json.dumps({"app_blue": ["running"], "app_green": ["exited"]}))
    env = {key: value for key, value in compose_env["env"].items() if key != "FAKE_HOLD_STOP"}
    code, _, output = run_script("deploy", "green", *compose_env["args"],
                                 env={**env, "FAKE_CONFIG_HASH": "changed"})
    assert code == 0, output
    assert json.loads(output.splitlines()[0])["started_by"] == "docker compose up"
    argvs = [argv for argv, _ in recorded(compose_env["log"])]
    # Stopped again before anything asked it anything, then recreated by compose.
    stopped = argvs.index(["stop", f"{PROJECT}-app_green-1"])
    assert argvs.index(["start", f"{PROJECT}-app_green-1"]) < stopped
    assert stopped < next(i for i, argv in enumerate(argvs) if "up" in argv)


def test_compose_deploy_of_several_replicas_waits_for_each_and_drains_all(
    compose_env: dict[str, Any],
) -> None:
    state = json.loads(compose_env["state"].read_text())
    compose_env["state"].write_text(json.dumps({**state, "app_blue": ["running", "running"]}))
    routing = compose_env["dynamic"]
    routing.write_text(tc.render_dynamic("blue", tc.compose_urls(PROJECT, {"blue": 2})))
    code, _, output = run_script("deploy", "green", *compose_env["args"], "--processes", "3",
                                 env=compose_env["env"])
    assert code == 0, output
    report = json.loads(output.splitlines()[0])
    assert report["replicas"] == 3 and report["old"] == "draining"
    calls = recorded(compose_env["log"])
    up = ["up", "--detach", "--no-build", "--scale", "app_green=3", "--no-deps", "app_green"]
    assert (up, "blue") in calls
    assert calls[-2] == (["stop", f"{PROJECT}-app_blue-1", f"{PROJECT}-app_blue-2"], "green")
    # Each replica's cap is a third of the colour's: Traefik's descriptors bound the colour.
    caps = {json.loads(line)["cap"] for line in compose_env["log"].read_text().splitlines()
            if json.loads(line)["argv"][0] == "compose"}
    assert caps == {"3000"}
    urls = tc.colour_urls(routing.read_text())
    assert urls == {"blue": tc.compose_urls(PROJECT, {"blue": 2})["blue"],
                    "green": tc.compose_urls(PROJECT, {"green": 3})["green"]}
    assert tc.active_color(routing.read_text()) == "green"


def test_compose_deploy_keeps_the_active_colours_replica_count(compose_env: dict[str, Any]) -> None:
    compose_env["state"].write_text(json.dumps({"app_blue": ["running", "running"]}))
    compose_env["dynamic"].write_text(tc.render_dynamic("blue", tc.compose_urls(PROJECT, {"blue": 2})))
    code, _, output = run_script("deploy", "green", *compose_env["args"], env=compose_env["env"])
    assert code == 0, output
    assert json.loads(output.splitlines()[0])["replicas"] == 2


def test_compose_deploy_can_wait_for_the_drain(compose_env: dict[str, Any]) -> None:
    env = {key: value for key, value in compose_env["env"].items() if key != "FAKE_HOLD_STOP"}
    code, _, output = run_script("deploy", "green", *compose_env["args"], "--wait-drain", env=env)
    assert code == 0, output
    assert json.loads(output.splitlines()[0])["old"] == "drained"
    assert json.loads(compose_env["state"].read_text())["app_blue"] == ["exited"]


def test_a_colour_still_draining_is_let_finish_before_it_starts_again(compose_env: dict[str, Any]) -> None:
    state = json.loads(compose_env["state"].read_text())
    compose_env["state"].write_text(json.dumps({**state, "app_green": ["running"]}))
    env = {key: value for key, value in compose_env["env"].items() if key != "FAKE_HOLD_STOP"}
    code, _, output = run_script("deploy", "green", *compose_env["args"], env=env)
    assert code == 0, output
    argvs = [argv for argv, _ in recorded(compose_env["log"])]
    stop_green = argvs.index(["stop", f"{PROJECT}-app_green-1"])
    assert stop_green < argvs.index(["start", f"{PROJECT}-app_green-1"])


def test_the_project_name_comes_from_compose_when_no_variable_names_it(compose_env: dict[str, Any]) -> None:
    env = {**compose_env["env"], "COMPOSE_PROJECT_NAME": ""}
    code, _, output = run_script("deploy", "green", *compose_env["args"], env=env)
    assert code == 0, output
    argvs = [argv for argv, _ in recorded(compose_env["log"])]
    assert ["config", "--format", "json"] in argvs
    assert ps("blue", "fromconfig") in argvs
    assert tc.colour_urls(compose_env["dynamic"].read_text())["green"] == [
        tc.compose_replica_url("fromconfig", "green", 1)]


def test_compose_files_are_passed_as_given(compose_env: dict[str, Any], tmp_path: Path) -> None:
    files = [tmp_path / "compose.yml", tmp_path / "compose.prod.yml"]
    extra = [arg for f in files for arg in ("--compose-file", str(f))]
    code, _, output = run_script("deploy", "green", *compose_env["args"], *extra, env=compose_env["env"])
    assert code == 0, output
    compose_calls = [json.loads(line)["argv"] for line in compose_env["log"].read_text().splitlines()
                     if json.loads(line)["argv"][0] == "compose"]
    assert compose_calls
    for argv in compose_calls:
        assert argv[3:7] == ["-f", str(files[0]), "-f", str(files[1])]


def test_compose_deploy_of_an_unhealthy_colour_switches_nothing(compose_env: dict[str, Any]) -> None:
    env = {**compose_env["env"], "FAKE_FAIL": "app_green"}
    code, _, output = run_script("deploy", "green", *compose_env["args"], env=env)
    assert code == 1
    assert "nothing was switched, blue still serves" in output and "exited (2)" in output
    calls = recorded(compose_env["log"])
    assert [argv for argv, _ in calls][-1] == ["stop", "app_green"]
    assert all(routed == "blue" for _, routed in calls)
    assert not any(argv[0] == "stop" and "app_blue" in " ".join(argv) for argv, _ in calls)
    assert tc.active_color(compose_env["dynamic"].read_text()) == "blue"


def test_a_rollback_to_a_missing_release_starts_nothing(compose_env: dict[str, Any]) -> None:
    env = {**compose_env["env"], "FAKE_NO_IMAGE": "1"}
    code, _, output = run_script("deploy", "green", *compose_env["args"], env=env)
    assert code == 1 and "no image parley:r1" in output and "nothing was switched" in output
    assert not any("up" in argv or "build" in argv for argv, _ in recorded(compose_env["log"]))
    assert tc.active_color(compose_env["dynamic"].read_text()) == "blue"


def test_compose_deploy_of_the_active_colour_runs_nothing(compose_env: dict[str, Any]) -> None:
    code, _, output = run_script("deploy", "blue", *compose_env["args"], env=compose_env["env"])
    assert code == 2 and "already the active colour" in output
    assert recorded(compose_env["log"]) == [(ps("green"), "blue")]  # a look: none of green runs


def test_a_replica_count_the_local_stack_does_not_run_is_refused(local_stack: StackState) -> None:
    code, _, output = run_script("deploy", "green", "--state-dir", str(local_stack.dir), "--processes",
                                 str(local_stack.processes + 1))
    # Advice that works on a running stack (`make stack PROCESSES=N` alone leaves it as it is).
    assert code != 0 and "make stack-down && make stack PROCESSES=" in output
    assert "nothing was deployed" in output


def deploy_paused_after_its_switch(compose_env: dict[str, Any]) -> tuple[subprocess.Popen[str], Path]:
    """A compose deploy to green, paused right after its switch (at its first look at blue's
    containers, before blue gets any signal); the file whose creation lets it go on."""
    pause = compose_env["hold"].parent / "paused"
    deploying = subprocess.Popen([sys.executable, "-m", "scripts.deploy", "green", *compose_env["args"]],
                                 cwd=ROOT, env={**os.environ, **compose_env["env"], "FAKE_PAUSE": str(pause)},
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until(lambda: pause.exists() or deploying.poll() is not None, 60, "the deploy to switch")
    assert deploying.poll() is None, deploying.communicate()
    assert tc.active_color(compose_env["dynamic"].read_text()) == "green"
    return deploying, pause.with_name("paused.release")


def interrupt(deploying: subprocess.Popen[str]) -> tuple[str, str]:
    """Ctrl-C to a running deploy; what it printed (killed if it does not end)."""
    try:
        deploying.send_signal(signal.SIGINT)
        return deploying.communicate(timeout=60)
    finally:
        if deploying.poll() is None:
            deploying.kill()


def test_a_compose_deploy_interrupted_after_its_switch_is_finished_by_running_it_again(
    compose_env: dict[str, Any],
) -> None:
    deploying, _ = deploy_paused_after_its_switch(compose_env)
    out, err = interrupt(deploying)
    assert deploying.returncode == 130, out + err
    assert "interrupted after the switch: green serves (Traefik's live file says so)" in err
    assert "state.json" not in err and "deploy green again to finish (it drains blue)" in err
    # Blue was left as it was, undrained, its clients on a colour no longer routed...
    assert json.loads(compose_env["state"].read_text()) == {"app_blue": ["running"], "app_green": ["running"]}

    # ... until the same deploy again drains it, leaving green as it is.
    code, _, output = run_script("deploy", "green", *compose_env["args"], env=compose_env["env"])
    assert code == 0, output
    report = json.loads(output.splitlines()[0])
    assert report["finished"] and (report["from"], report["to"]) == ("blue", "green")
    assert report["old"] == "draining" and report["old_processes"] == {"blue-1": "draining"}
    assert json.loads(compose_env["state"].read_text()) == {"app_blue": ["draining"],
                                                            "app_green": ["running"]}
    assert tc.active_color(compose_env["dynamic"].read_text()) == "green"


def test_a_second_compose_deploy_fails_at_once_while_one_runs(compose_env: dict[str, Any]) -> None:
    """Without the lock the second took green, just started and routed by the first, for a
    leftover and stopped it: both colours down, both deploys exiting 0."""
    deploying, release = deploy_paused_after_its_switch(compose_env)
    try:
        routing = compose_env["dynamic"].read_text()
        code, _, output = run_script("deploy", "green", *compose_env["args"], env=compose_env["env"])
        assert code == 1, output
        assert "is busy" in output and f"pid {deploying.pid} (deploy green" in output
        assert compose_env["dynamic"].read_text() == routing
        assert json.loads(compose_env["state"].read_text())["app_green"] == ["running"]
        release.touch()
        out, err = deploying.communicate(timeout=60)
    finally:
        if deploying.poll() is None:
            deploying.kill()
    assert deploying.returncode == 0, out + err
    assert json.loads(out.splitlines()[0])["old"] == "draining"


def test_each_old_compose_replica_is_reported_as_docker_saw_it(compose_env: dict[str, Any]) -> None:
    """One of blue's two replicas was killed (its clients saw 1006): asking through the
    colour's round robin gave a coin flip between "draining" and "stopped, was not answering"."""
    compose_env["state"].write_text(json.dumps({"app_blue": ["exited:137", "running"]}))
    compose_env["dynamic"].write_text(tc.render_dynamic("blue", tc.compose_urls(PROJECT, {"blue": 2})))
    code, _, output = run_script("deploy", "green", *compose_env["args"], env=compose_env["env"])
    assert code == 0, output
    report = json.loads(output.splitlines()[0])
    assert report["old_processes"] == {"blue-1": "already gone (exited 137)", "blue-2": "draining"}
    assert report["old"] == "blue-1 already gone (exited 137); blue-2 draining"
    # Only the one still running was stopped.
    assert recorded(compose_env["log"])[-2] == (["stop", f"{PROJECT}-app_blue-2"], "green")


def test_a_compose_deploy_that_waits_names_a_replica_that_did_not_drain(compose_env: dict[str, Any]) -> None:
    env = {key: value for key, value in compose_env["env"].items() if key != "FAKE_HOLD_STOP"}
    compose_env["state"].write_text(json.dumps({"app_blue": ["running", "running"]}))
    compose_env["dynamic"].write_text(tc.render_dynamic("blue", tc.compose_urls(PROJECT, {"blue": 2})))
    code, _, output = run_script("deploy", "green", *compose_env["args"], "--wait-drain",
                                 env={**env, "FAKE_STOP_EXIT": "0,137"})
    assert code == 0, output
    assert json.loads(output.splitlines()[0])["old_processes"] == {
        "blue-1": "drained", "blue-2": "exited 137 without a clean drain (docker compose logs app_blue)"}


# -- the operator path: interruptions, strangers, leftovers, locks ----------------------------

def test_a_deploy_killed_between_switch_and_record_is_finished_not_undone(local_stack: StackState) -> None:
    """SIGKILL (nothing to catch) right after the switch: Traefik routes to green, the
    record was not written. The live file is the truth: the routed colour is never
    killed as a leftover, and deploying it again drains what still runs of blue."""
    state = local_stack
    start_app(state, "green")
    wait_app_ready(state, "green", 30)
    green = state.procs["green"]
    LocalRuntime(state).switch("green")  # ... and the deploy dies here
    wait_until(lambda: traefik_color(state) == "green", 15, "Traefik to route to green")
    assert StackState.load(state.dir).active == "green"

    code, _, output = run_script("deploy", "green", "--state-dir", str(state.dir))
    assert code == 0, output
    report = json.loads(output.splitlines()[0])
    assert report["finished"] and report["old"] == "drained"
    assert (report["from"], report["to"]) == ("blue", "green")
    assert green.alive() and traefik_color(state) == "green"
    saved = StackState.load(state.dir)
    assert saved.active == "green" and saved.procs["green"].pid == green.pid and "blue" not in saved.procs
    code, _, output = run_script("deploy", "green", "--state-dir", str(state.dir))
    assert code == 2 and "already the active colour" in output


def test_ctrl_c_right_after_the_switch_leaves_record_and_routing_agreeing(local_stack: StackState) -> None:
    state = local_stack
    command = [sys.executable, "-m", "scripts.deploy", "green", "--state-dir", str(state.dir)]
    deploying = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while routed_record(state.dynamic_file) != "green" and deploying.poll() is None:
        time.sleep(0.001)  # the switch is a rename: watched for, not waited out
    out, err = interrupt(deploying)
    assert deploying.returncode == 130, out + err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    # The switch was written, and Traefik may or may not have confirmed it yet.
    assert ("interrupted after the switch: green serves" in err
            or "interrupted after the switch to green was written, before the deploy confirmed it" in err)
    assert "deploy green again" in err
    assert StackState.load(state.dir).active == "green"
    assert json.loads((state.dir / "state.json").read_text())["active"] == "green"
    wait_until(lambda: traefik_color(state) == "green", 15, "Traefik to route to green")
    assert state.procs["blue"].alive()  # blue was left as it was: not drained, not killed

    code, _, output = run_script("deploy", "green", "--state-dir", str(state.dir))
    assert code == 0, output
    assert json.loads(output.splitlines()[0])["old"] == "drained" and not state.procs["blue"].alive()


class Stranger(BaseHTTPRequestHandler):
    """Another program on the new colour's port, answering everything 200 as if ready."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        body = json.dumps({"ready": True, "color": "green"}).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


async def test_a_stranger_on_the_new_colours_port_is_not_deployed_to(local_stack: StackState) -> None:
    state = local_stack
    member = await Client.connect(ws_url(state, "guarded"))
    before = state.dynamic_file.read_text()
    stranger = ThreadingHTTPServer(("127.0.0.1", state.ports["green"]), Stranger)
    thread = threading.Thread(target=stranger.serve_forever, daemon=True)
    thread.start()
    try:
        code, _, output = await asyncio.to_thread(
            run_script, "deploy", "green", "--state-dir", str(state.dir), "--ready-timeout", "20")
    finally:
        stranger.shutdown()
        stranger.server_close()
    assert code == 1, output
    error = json.loads(output.splitlines()[0])["error"]
    assert "nothing was switched, blue still serves" in error and "address already in use" in error
    assert state.dynamic_file.read_text() == before and traefik_color(state) == "blue"
    assert (await member.post("still here", client_id="g1"))["type"] == "ack"
    await member.close()


# A process of green still draining from an earlier deploy, with a long SHUTDOWN_TIMEOUT:
# it finishes its drain 16 s after SIGTERM, past any fixed limit shorter than its budget.
SLOW_DRAIN = ("import signal, sys, time\n"
              "def stop(*_):\n    time.sleep(16)\n"
              "    print('INFO: drained 0 websocket(s) in 16.000s', flush=True)\n    sys.exit(0)\n"
              "signal.signal(signal.SIGTERM, stop)\nprint('ready', flush=True)\ntime.sleep(120)")


def test_a_colour_still_draining_gets_its_own_budget_before_it_starts_again(local_stack: StackState) -> None:
    state = local_stack
    log = state.log("app_green")
    state.procs["green"] = spawn([sys.executable, "-c", SLOW_DRAIN], log,
                                 {**os.environ, "SHUTDOWN_TIMEOUT": "20"})
    state.save()
    wait_until(lambda: "ready" in log.read_text(), 10, "the draining stand-in to start")

    report = deploy(LocalRuntime(StackState.load(state.dir)), "green")
    assert report["stopped_first"] == {"green": "drained"}
    assert report["old"] == "drained" and traefik_color(state) == "green"


def test_each_old_process_is_reported_as_it_was(two_process_stack: StackState) -> None:
    state = two_process_stack
    os.kill(state.procs["blue.1"].pid, signal.SIGKILL)
    assert state.procs["blue.1"].wait(10)

    code, _, output = run_script("deploy", "green", "--state-dir", str(state.dir))
    assert code == 0, output
    report = json.loads(output.splitlines()[0])
    assert report["old_processes"] == {"blue": "drained", "blue.1": "already gone"}
    assert report["old"] == "blue drained; blue.1 already gone"


def test_a_deploy_while_another_holds_the_lock_changes_nothing(local_stack: StackState) -> None:
    state = local_stack
    before = state.dynamic_file.read_text()
    with locked(state.dir, "deploy green"):
        code, _, output = run_script("deploy", "green", "--state-dir", str(state.dir))
    assert code == 1 and "is busy" in output and f"pid {os.getpid()} (deploy green" in output
    assert state.dynamic_file.read_text() == before
    saved = StackState.load(state.dir)
    assert "green" not in saved.procs and saved.procs["blue"].alive()


def test_a_new_colour_that_dies_during_the_drain_is_not_a_success(two_process_stack: StackState) -> None:
    # Ready once is not serving now: green's processes die while blue drains. The deploy
    # used to report ok (blue "drained") with nothing serving.
    from scripts.runtime import DeployError

    class GreenDiesDuringTheDrain(LocalRuntime):
        def stop(self, color: str) -> bool:
            for name in self.state.members("green"):
                os.kill(self.state.procs[name].pid, signal.SIGKILL)
                assert self.state.procs[name].wait(10)
            return super().stop(color)

    state = two_process_stack
    with pytest.raises(DeployError) as failed:
        deploy(GreenDiesDuringTheDrain(state), "green")
    message = str(failed.value)
    assert "green lost processes since it was ready: green exited" in message
    assert "green.1 exited" in message and "nothing serves" in message and "make stack" in message


def test_a_new_process_that_dies_before_the_drain_sends_nobody_into_it(two_process_stack: StackState) -> None:
    # green.1 found ready, then gone by the switch: Traefik counts it up until its first
    # health check, and a drain then sent blue's clients into it (502s). The deploy now
    # switches back before draining anything.
    from scripts.runtime import DeployError

    class GreenDiesAtTheSwitch(LocalRuntime):
        def switch(self, color: str) -> None:
            if color == "green":
                os.kill(self.state.procs["green.1"].pid, signal.SIGKILL)
                assert self.state.procs["green.1"].wait(10)
            super().switch(color)

    state = two_process_stack
    with pytest.raises(DeployError) as failed:
        deploy(GreenDiesAtTheSwitch(state), "green")
    message = str(failed.value)
    assert "green lost processes after it was ready (green.1 exited" in message
    assert "switched back before draining anything, blue still serves" in message
    assert traefik_color(state) == "blue"
    saved = StackState.load(state.dir)
    assert saved.active == "blue" and all(saved.procs[name].alive() for name in saved.members("blue"))


def test_a_new_process_that_dies_while_handshakes_land_on_the_old_colour_sends_nobody_into_it(
    local_stack: StackState, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The deploy waits IN_FLIGHT after Traefik confirmed green, before blue's SIGTERM: a
    # green that died then was drained into (a hostile probe, 3 of 3: "nothing serves").
    import scripts.deploy
    from scripts.runtime import DeployError

    state = local_stack
    sleep = time.sleep

    def green_dies_in_the_wait(seconds: float) -> None:
        if seconds == scripts.deploy.IN_FLIGHT:
            green = StackState.load(state.dir).procs["green"]
            os.kill(green.pid, signal.SIGKILL)
            assert green.wait(10)
        sleep(seconds)

    monkeypatch.setattr(scripts.deploy.time, "sleep", green_dies_in_the_wait)
    with pytest.raises(DeployError) as failed:
        deploy(LocalRuntime(StackState.load(state.dir)), "green")
    message = str(failed.value)
    assert "green lost processes after it was ready (green exited" in message, message
    assert "switched back before draining anything, blue still serves" in message
    monkeypatch.undo()
    assert traefik_color(state) == "blue"
    saved = StackState.load(state.dir)
    assert saved.active == "blue" and saved.procs["blue"].alive()


async def test_a_deploy_interrupted_before_traefik_confirmed_is_not_finished_into_a_dead_colour(
        local_stack: StackState) -> None:
    # Ctrl-C while the deploy asked Traefik, green dead since its readiness: it used to say
    # "green serves ... deploy green again to finish", and that second deploy drained blue
    # into the dead green and reported success, nothing serving.
    from scripts.runtime import Interrupted

    class GreenDiesThenCtrlC(LocalRuntime):
        def switch(self, color: str) -> None:
            if color == "green":
                os.kill(self.state.procs["green"].pid, signal.SIGKILL)
                assert self.state.procs["green"].wait(10)
            super().switch(color)

        def routed_color(self, timeout: float | None = None) -> str | None:
            raise KeyboardInterrupt  # what Ctrl-C raises in a deploy (scripts.deploy._stop)

    state = local_stack
    member = await Client.connect(ws_url(state, "kept"))
    with pytest.raises(Interrupted) as stopped:
        await asyncio.to_thread(deploy, GreenDiesThenCtrlC(state), "green")
    message = str(stopped.value)
    assert "green serves" not in message
    assert "before the deploy confirmed it: green is routed" in message and "not known to serve" in message
    assert routed_record(state.dynamic_file) == "green" and state.procs["blue"].alive()

    # The advice, followed: green is found dead, blue is routed again, never drained.
    code, _, output = await asyncio.to_thread(run_script, "deploy", "green", "--state-dir", str(state.dir))
    assert code == 1, output
    error = json.loads(output.splitlines()[0])["error"]
    assert "nothing was drained: green is routed but does not serve (green exited" in error
    assert "switched back to blue, which still serves" in error
    wait_until(lambda: traefik_color(state) == "blue", 15, "Traefik to route to blue again")
    saved = StackState.load(state.dir)
    assert saved.active == "blue" and "green" not in saved.procs and saved.procs["blue"].alive()
    assert (await member.post("still here", client_id="d1"))["type"] == "ack"
    await member.close()


def processes_of(color: str, port: int) -> list[int]:
    """Live app processes of ``color`` on ``port``, recorded by the stack or not: found by the
    environment they were started with."""
    import psutil

    found = []
    for process in psutil.process_iter():
        try:
            env = process.environ()
        except psutil.Error:
            continue
        if env.get("APP_COLOR") == color and env.get("PORT") == str(port):
            found.append(process.pid)
    return found


def test_a_deploy_that_cannot_record_its_new_colour_leaves_none_of_it_running(
        local_stack: StackState) -> None:
    # Disk full but for the lock's note: green was started, its record in state.json failed,
    # and the deploy died with a traceback leaving green running, recorded nowhere: its
    # port taken for every later deploy of green, and `stack down` never stopped it.
    state = local_stack
    room = 200  # bytes: the lock's note fits, state.json does not
    assert (state.dir / "state.json").stat().st_size > room
    before = state.dynamic_file.read_text()
    code, _, output = run_script("deploy", "green", "--state-dir", str(state.dir), disk_full_past=room)
    assert code == 1, output
    error = json.loads(output.splitlines()[0])["error"]
    assert "Traceback" not in output
    assert error.startswith("green was not deployed: ")
    assert error.endswith("green's new processes were stopped, nothing was switched, blue still serves")
    assert processes_of("green", state.ports["green"]) == []
    assert state.dynamic_file.read_text() == before and traefik_color(state) == "blue"

    # Once the disk has room again, green deploys on its port.
    code, _, output = run_script("deploy", "green", "--state-dir", str(state.dir))
    assert code == 0, output
    assert json.loads(output.splitlines()[0])["old"] == "drained"


def test_a_new_colour_dead_at_the_switch_is_named_and_switched_back_at_once(local_stack: StackState) -> None:
    # The wait for Traefik's confirmation asked Traefik alone: green, dead since its
    # readiness, gave clients 502 for the whole 15 s wait, then an error blaming Traefik.
    from scripts.runtime import DeployError

    class GreenDiesAtTheSwitch(LocalRuntime):
        def switch(self, color: str) -> None:
            if color == "green":
                os.kill(self.state.procs["green"].pid, signal.SIGKILL)
                assert self.state.procs["green"].wait(10)
            super().switch(color)

    state = local_stack
    with pytest.raises(DeployError) as failed:
        deploy(GreenDiesAtTheSwitch(state), "green")
    message = str(failed.value)
    assert message.startswith("green lost processes after it was ready (green exited")
    assert message.endswith("switched back before draining anything, blue still serves")
    assert "Traefik" not in message
    wait_until(lambda: traefik_color(state) == "blue", 15, "Traefik to route to blue again")
    saved = StackState.load(state.dir)
    assert saved.active == "blue" and "green" not in saved.procs and saved.procs["blue"].alive()


def test_a_deploy_whose_old_colour_lost_its_log_file_succeeds(local_stack: StackState) -> None:
    # An operator freeing the disk deleted the old logs: the drain's read of blue's log raised,
    # a deploy that had switched and drained exited 1 with a traceback.
    state = local_stack
    state.log("app_blue").unlink()
    code, _, output = run_script("deploy", "green", "--state-dir", str(state.dir))
    assert code == 0, output
    report = json.loads(output.splitlines()[0])
    # Its drain is still read: from the process's own output, the deleted file it writes to.
    assert report["old"] == "drained" and traefik_color(state) == "green"


def test_a_deploy_without_traefik_is_refused_with_the_repair(local_stack: StackState) -> None:
    # Traefik dead: the deploy started green, waited 15 s for a confirmation that could not
    # come, and said "switched back, blue still serves" though nothing reached blue.
    state = local_stack
    os.kill(state.procs["traefik"].pid, signal.SIGKILL)
    assert state.procs["traefik"].wait(10)
    before = state.dynamic_file.read_text()
    code, _, output = run_script("deploy", "green", "--state-dir", str(state.dir))
    assert code == 1, output
    error = json.loads(output.splitlines()[0])["error"]
    assert error.startswith("nothing was deployed: Traefik is not running (")
    assert error.endswith("nothing reaches either colour; `make stack` restarts it in place")
    assert state.dynamic_file.read_text() == before
    assert processes_of("green", state.ports["green"]) == [] and state.procs["blue"].alive()


def test_traefik_gone_during_the_drain_is_not_a_success(local_stack: StackState) -> None:
    # Traefik killed while blue drained: the deploy reported ok, nothing routed anywhere.
    from scripts.runtime import DeployError

    class TraefikDiesDuringTheDrain(LocalRuntime):
        def stop(self, color: str) -> bool:
            os.kill(self.state.procs["traefik"].pid, signal.SIGKILL)
            assert self.state.procs["traefik"].wait(10)
            return super().stop(color)

    state = local_stack
    with pytest.raises(DeployError) as failed:
        deploy(TraefikDiesDuringTheDrain(state), "green")
    message = str(failed.value)
    assert message.startswith("switched to green and stopped blue, but Traefik is not running (")
    assert message.endswith("`make stack` restarts it in place")
    assert state.procs["green"].alive()  # green itself was left serving, for Traefik's return


def test_an_old_process_draining_already_is_reported_as_its_drain_went(local_stack: StackState) -> None:
    # Green's processes still run beside the routed blue (a deploy of blue interrupted after
    # green got SIGTERM): green drains cleanly, and the deploy of blue that finishes it
    # reported "stopped, was not answering", its 503 "draining" taken for a hang.
    from tools.net import http_get

    state = local_stack
    # Long enough a drain to still be under way when the deploy asks it.
    start_app(state, "green", {"SHUTDOWN_DRAIN_DELAY": "4", "SHUTDOWN_TIMEOUT": "20"})
    wait_app_ready(state, "green", 30)
    os.kill(state.procs["green"].pid, signal.SIGTERM)
    ready_url = state.app_url("green") + "/readyz"
    wait_until(lambda: http_get(ready_url)[0] == 503, 10, "green to say it drains")

    report = deploy(LocalRuntime(state), "blue")
    assert report["finished"] and (report["from"], report["to"]) == ("green", "blue")
    assert report["old_processes"] == {"green": "drained"} and report["old"] == "drained"


class SlowReadyz(Stranger):
    """Traefik's /readyz when the routed colour is busy with a reconnect storm: green,
    answered only after ``delay`` seconds."""

    delay = 1.5

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        time.sleep(self.delay)
        super().do_GET()


class SlowEdge:
    """The part of a runtime the switch's confirmation asks: Traefik (at ``url``) up, none
    of green's processes dead."""

    def __init__(self, url: str) -> None:
        self.url = url

    def routed_color(self, timeout: float | None = None) -> str | None:
        status, body = http_get(self.url, timeout=timeout or 1.0)
        return json.loads(body)["color"] if status == 200 else None

    def edge_down(self) -> str:
        return ""

    def dead(self, color: str) -> dict[str, str]:
        return {}

    def members(self, color: str) -> list[str]:
        return [color]


def test_a_switch_is_confirmed_when_traefik_answers_slower_than_a_poll_waits() -> None:
    # At 9,000 clients on a slow machine every 1 s poll timed out for the 15 s after the
    # drain, and the deploy failed a switch that had worked.
    from scripts.deploy import _confirm

    server = ThreadingHTTPServer(("127.0.0.1", 0), SlowReadyz)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/readyz"
        assert _confirm(SlowEdge(url), "green", timeout=6.0) == ""  # type: ignore[arg-type]
    finally:
        server.shutdown()
        server.server_close()
