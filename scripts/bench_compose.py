"""Benchmarks of the compose path in a real engine; the table goes into BENCHMARKS.md.

    python -m scripts.bench_compose [--runs 7] [--deploys 6] [--sockets 1000] [--write]
    make bench-compose BENCH_ARGS="--write"

On a throwaway project of the real compose.yml plus an override file that adds a floor
container (the same image, so the same base and interpreter, running bench/floor.py: the
bare uvicorn app) behind the same Traefik, everything reached through Traefik's ports
published on 127.0.0.1:

- start to ready: ``docker start`` of a stopped colour until its ``/readyz`` answers 200
  through Traefik's internal entry point (the probe router), median of ``--runs``; the same
  for the floor container, in the same run, alternating;
- deploy: ``scripts/deploy.py --runtime compose`` wall time (the release built already),
  blue <-> green ``--deploys`` times, with its own switch latency; the deploy returns once
  the old colour confirmed it drains, and the next one starts only once it has exited (as
  deploys minutes apart would find it), the time that took reported beside;
- stop: ``docker stop`` of the active colour holding ``--sockets`` WebSockets through
  Traefik: how long it took, the container's exit code, every client's close code;
- the image's size, and whether the base images are local stand-ins.

Not a test: timings depend on the machine and on what else runs on it (the load average
is reported beside them).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from app.chat.auth import mint
from scripts.compose_drill import ComposeStack
from scripts.compose_runtime import get_json
from scripts.docker_env import docker_environment, state_dir
from tools import traefik_config
from tools.docker.base_images import is_stand_in
from tools.report import median, table, write_section
from tools.swarm import Swarm

ROOT = Path(__file__).resolve().parent.parent
FLOOR = "floor"
MARK_BEGIN = "<!-- bench-compose: begin (scripts/bench_compose.py --write) -->"
MARK_END = "<!-- bench-compose: end -->"

FLOOR_OVERRIDE = """\
# Written by scripts/bench_compose.py: the floor container beside the colours.
services:
  floor:
    image: parley:${PARLEY_TAG:-latest}
    init: true
    command: ["python", "/bench/floor.py", "--host", "0.0.0.0", "--port", "8000"]
    volumes:
      - ./bench/floor.py:/bench/floor.py:ro
    expose:
      - "8000"
"""

FLOOR_ROUTE = f"""\
# Written by scripts/bench_compose.py: the floor's /readyz on the internal entry point.
http:
  routers:
    probe-floor:
      entryPoints: [{traefik_config.OPS_ENTRYPOINT}]
      rule: "Path(`/readyz`) && Header(`{traefik_config.PROBE_HEADER}`, `{FLOOR}`)"
      service: probe-floor
  services:
    probe-floor:
      loadBalancer:
        servers:
          - url: "http://{FLOOR}:8000"
"""


class BenchStack(ComposeStack):
    """The drill's throwaway project plus the floor override (via COMPOSE_FILE, which
    deploy.py leaves to compose), on the release the first deploy built."""

    tag: str = ""

    def env(self) -> dict[str, str]:
        files = os.pathsep.join([str(ROOT / "compose.yml"), str(self.directory / "floor.override.yml")])
        extra = {"PARLEY_TAG": self.tag} if self.tag else {}
        return {**super().env(), "COMPOSE_FILE": files, **extra}

    def container(self, service: str) -> str:
        done = self.compose("ps", "--all", "--quiet", service)
        return done.stdout.strip().splitlines()[0]


def ready_after_start(stack: BenchStack, service: str, header: str, timeout: float = 60.0) -> float:
    """``docker start`` of the stopped ``service`` until /readyz 200 through Traefik; seconds."""
    container = stack.container(service)
    url = stack.ops_url + traefik_config.READY_PATH
    began = time.monotonic()
    subprocess.run(["docker", "start", container], check=True, capture_output=True)
    while time.monotonic() - began < timeout:
        if get_json(url, {traefik_config.PROBE_HEADER: header}, timeout=1.0)[0] == 200:
            return time.monotonic() - began
        time.sleep(0.005)
    raise TimeoutError(f"{service} not ready {timeout:.0f}s after docker start")


def stop(stack: BenchStack, service: str) -> None:
    subprocess.run(["docker", "stop", stack.container(service)], check=True, capture_output=True)


def stop_with_sockets(stack: BenchStack, color: str, count: int) -> dict[str, Any]:
    """``docker stop`` of ``color`` while it holds ``count`` WebSockets through Traefik.

    The sockets are the lean load client's (tools/swarm.py), as in ``make bench``'s shutdown
    leg: the ``websockets`` client, one process answering 1,000 close frames, was measured
    there as most of such a figure.
    """
    token = mint("bench", "*", 3600, stack.secret)
    url = stack.web_url.replace("http://", "ws://", 1)
    with Swarm(url, count, 10, 100, query=f"last=0&token={token}") as swarm:
        connected = swarm.connect(True)["connected"]
        container = stack.container(f"app_{color}")
        began = time.monotonic()
        done = subprocess.run(["docker", "stop", container], capture_output=True)
        took = time.monotonic() - began
        codes = swarm.await_close(10)["close_codes"]
    inspect = subprocess.run(["docker", "inspect", "--format", "{{.State.ExitCode}}", container],
                             capture_output=True, text=True)
    return {"sockets": connected, "stop_s": round(took, 3), "docker_stop_exit": done.returncode,
            "container_exit_code": int(inspect.stdout.strip() or -1),
            "close_codes": {str(k): v for k, v in sorted(codes.items())}}


def restart_gap(stack: BenchStack, color: str, timeout: float = 60.0) -> dict[str, Any]:
    """``docker restart`` of the only (active) colour: when its own /readyz answers 200
    through the probe router, when the public router forwards to it again, and what the
    public router answered in between (a Traefik health check, which only a colour of two or
    more replicas gets, would add 503s here)."""
    container = stack.container(f"app_{color}")
    public = stack.web_url.replace("ws://", "http://") + "/"
    subprocess.run(["docker", "restart", container], check=True, capture_output=True)
    began = time.monotonic()
    ready_at = forwarded_at = None
    seen: Counter[int] = Counter()
    while time.monotonic() - began < timeout and (ready_at is None or forwarded_at is None):
        if ready_at is None:
            status, _ = get_json(stack.ops_url + traefik_config.READY_PATH,
                                 {traefik_config.PROBE_HEADER: color}, timeout=1.0)
            if status == 200:
                ready_at = time.monotonic() - began
        status, _ = get_json(public, timeout=1.0)
        seen[status] += 1
        if status == 200 and forwarded_at is None:
            forwarded_at = time.monotonic() - began
        time.sleep(0.005)
    return {"ready_s": round(ready_at or -1, 3), "public_200_s": round(forwarded_at or -1, 3),
            "public_statuses": {str(k): v for k, v in sorted(seen.items())}}


def image_size_mb(tag: str) -> float:
    done = subprocess.run(["docker", "image", "inspect", "--format", "{{.Size}}", tag],
                          capture_output=True, text=True, check=True)
    return round(int(done.stdout.strip()) / 1e6, 1)


def run(stack: BenchStack, runs: int, deploys: int, sockets: int) -> dict[str, Any]:
    (stack.directory / "floor.override.yml").write_text(FLOOR_OVERRIDE)
    (stack.dynamic_dir / "floor.yml").write_text(FLOOR_ROUTE)
    first = stack.deploy("blue")
    if not first.get("ok"):
        raise RuntimeError(f"first start failed: {first.get('error')}")
    tag = first["image"]
    stack.tag = tag.split(":", 1)[1]
    # Create green and the floor once (stopped), so that every sample is a `docker start`.
    for service in ("app_green", FLOOR):
        done = stack.compose("up", "--detach", "--no-build", "--no-deps", service)
        if done.returncode != 0:
            raise RuntimeError(done.stderr.strip()[-300:])
        stop(stack, service)
    ours: list[float] = []
    floor: list[float] = []
    for _ in range(runs):
        floor.append(ready_after_start(stack, FLOOR, FLOOR))
        stop(stack, FLOOR)
        ours.append(ready_after_start(stack, "app_green", "green"))
        stop(stack, "app_green")
    reports = []
    color = "blue"
    for _ in range(deploys):
        color = traefik_config.other_color(color)
        reports.append(stack.deploy(color))
        if not reports[-1].get("ok"):
            raise RuntimeError(f"deploy to {color} failed: {reports[-1].get('error')}")
        ended = stack.await_exit(traefik_config.other_color(color))
        codes = {c["exit_code"] for c in ended["containers"].values()}
        reports[-1]["old_exited_after_s"] = ended["after_s"] if codes == {0} else f"exit {sorted(codes)}"
    restarted = restart_gap(stack, color)
    stopped = stop_with_sockets(stack, color, sockets)
    base = "python:3.11-slim"
    return {
        "runtime": "compose",
        "image": tag,
        "image_size_mb": image_size_mb(tag),
        "base_image": base,
        "base_image_size_mb": image_size_mb(base),
        "base_is_local_stand_in": is_stand_in(base),
        "start_to_ready_s": {"ours": [round(v, 3) for v in ours], "floor": [round(v, 3) for v in floor],
                             "ours_median": round(median(ours) or 0, 3),
                             "floor_median": round(median(floor) or 0, 3)},
        "deploys": [{k: r.get(k) for k in ("from", "to", "old", "time_to_ready_s", "switch_latency_s",
                                           "drain_s", "total_s", "wall_s", "old_exited_after_s")}
                    for r in reports],
        "deploy_wall_median_s": median([r["wall_s"] for r in reports]),
        "deploy_switch_median_s": median([r["switch_latency_s"] for r in reports]),
        "restart": restarted,
        "stop": stopped,
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "cpus": os.cpu_count(),
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def markdown(result: dict[str, Any]) -> str:
    start = result["start_to_ready_s"]
    ratio = round(start["ours_median"] / start["floor_median"], 2) if start["floor_median"] else None
    stop_ = result["stop"]
    rows = [
        ["`docker start` -> /readyz 200 via Traefik, median", "<= 0.5 s, <= 1.5x floor",
         f"{start['ours_median']:.3f} s", f"{start['floor_median']:.3f} s", ratio],
        ["`make deploy RUNTIME=compose` wall, median", "<= 1.5 s", f"{result['deploy_wall_median_s']:.3f} s",
         "-", None],
        ["switch latency (deploy's own), median", "<= 0.2 s", f"{result['deploy_switch_median_s']:.3f} s",
         "-", None],
        [f"`docker stop` with {stop_['sockets']} sockets via Traefik", "<= 1 s, all 1012, exit 0",
         f"{stop_['stop_s']:.3f} s, closes {stop_['close_codes']}, exit {stop_['container_exit_code']}",
         "-", None],
        ["`docker restart` of the only colour: public 200 after", "= its readiness (no 503 window)",
         f"{result['restart']['public_200_s']:.3f} s (ready {result['restart']['ready_s']:.3f} s), "
         f"public saw {result['restart']['public_statuses']}", "-", None],
        ["image size", "(425 MB before)", f"{result['image_size_mb']} MB",
         f"base {result['base_image_size_mb']} MB", None],
    ]
    deploy_rows = [[d["from"], d["to"], d["old"], d["time_to_ready_s"], d["switch_latency_s"], d["drain_s"],
                    d["total_s"], d["wall_s"], d.get("old_exited_after_s")] for d in result["deploys"]]
    stand_in = ("local stand-ins built by scripts/docker_env.py (no image registry here)"
                if result["base_is_local_stand_in"] else "the official images")
    return "\n".join([
        MARK_BEGIN,
        "## Containers (make bench-compose)",
        "",
        f"Measured {result['when']} on this machine ({result['cpus']} CPUs, load average "
        f"{' / '.join(str(v) for v in result['load_average'])} at the end: other work shared the "
        f"cores), with a real Docker engine; base images: {stand_in}. Image `{result['image']}`. "
        "Everything reached through Traefik's ports published on 127.0.0.1; the floor is the "
        "same image running bench/floor.py (bare uvicorn) behind the same Traefik.",
        "",
        "```",
        table(["what", "target", "ours", "floor", "ratio"], rows),
        "```",
        "",
        "Each deploy (`scripts/deploy.py --runtime compose`, seconds; drain: until every old "
        "replica confirmed it drains; old exited: after the deploy returned, until the old "
        "colour's containers had exited, status 0):",
        "",
        "```",
        table(["from", "to", "old", "ready", "switch", "drain", "total", "wall", "old exited"], deploy_rows),
        "```",
        "",
        f"Start-to-ready samples, ours: {start['ours']}; floor: {start['floor']}.",
        "",
        "Targets met in this run: " + ", ".join(f"{name} {'yes' if ok else 'no'}" for name, ok in [
            ("start <= 0.5 s", start["ours_median"] <= 0.5),
            ("start <= 1.5x floor", ratio is not None and ratio <= 1.5),
            ("deploy <= 1.5 s", result["deploy_wall_median_s"] <= 1.5),
            ("switch <= 0.2 s", result["deploy_switch_median_s"] <= 0.2),
            ("stop <= 1 s, all 1012, exit 0", stop_["stop_s"] <= 1 and stop_["container_exit_code"] == 0
             and stop_["close_codes"] == {"1012": stop_["sockets"]}),
        ]) + ". The floor's own start-to-ready shows how loaded the machine was: absolute "
        "times scale with it; the ratio does not.",
        MARK_END,
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7, help="docker start samples each (default 7)")
    parser.add_argument("--deploys", type=int, default=6, help="deploys, alternating (default 6)")
    parser.add_argument("--sockets", type=int, default=1000, help="held while docker stop runs")
    parser.add_argument("--write", action="store_true", help="put the table into BENCHMARKS.md")
    parser.add_argument("--state-dir", help="docker state (default $PARLEY_DOCKER_DIR or .docker/)")
    args = parser.parse_args(argv)
    directory = state_dir(args.state_dir)
    with docker_environment(directory):
        stack = BenchStack(directory / "benches" / f"b{os.getpid()}")
        stack.dynamic_dir.mkdir(parents=True)
        try:
            result = run(stack, args.runs, args.deploys, args.sockets)
        finally:
            stack.down()
    section = markdown(result)
    print(section, file=sys.stderr)
    if args.write:
        write_section(ROOT / "BENCHMARKS.md", "bench-compose", section)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
