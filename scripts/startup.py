"""Start the server cold N times: time from exec to /healthz 200, /readyz 200, first chat echo.

Each run is a fresh process. The floor (bench/floor.py: bare ASGI chat on the same uvicorn
stack, no Django, no Redis) runs interleaved with ours in the same session, and our medians
are reported as ratios of the floor's. Exit status 1 when a run does not get that far.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import time
from typing import Any

from tools import cli
from tools.net import http_get
from tools.procs import AppServer, RedisServer
from tools.report import machine, median, ratio, table
from tools.targets import precompile, start_server

PHASES = ("healthz_ms", "readyz_ms", "first_message_ms")
POLL = 0.002


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--runs", type=int, default=5)
    parser.add_argument("--redis", action="store_true", help="our server on a throwaway redis-server")
    parser.add_argument("--no-floor", action="store_true", help="skip the floor")
    parser.add_argument("--timeout", type=float, default=30.0, help="per run")
    parser.add_argument("--json", metavar="PATH", help="write the JSON here ('-': stdout)")
    return parser.parse_args(argv)


def poll(server: AppServer, path: str, deadline: float) -> None:
    """Return as soon as ``path`` answers 200; raise if the server dies or time runs out."""
    while http_get(server.base + path, timeout=1.0)[0] != 200:
        if server.process is not None and server.process.poll() is not None:
            raise RuntimeError(f"server exited with {server.process.returncode}: {server.output()[-2000:]}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not answer 200 in time")
        time.sleep(POLL)


def round_trip(server: AppServer, deadline: float) -> None:
    """Connect to a fresh room, send one message, return when it comes back."""
    from websockets.sync.client import connect

    nonce = f"startup-{secrets.token_hex(4)}"
    while True:
        try:
            with connect(f"ws://127.0.0.1:{server.port}/ws/chat/{nonce}/", open_timeout=5,
                         compression=None) as ws:
                ws.send(json.dumps({"message": nonce}))
                while True:
                    frame = json.loads(ws.recv(timeout=max(deadline - time.monotonic(), 0.1)))
                    if frame.get("message") == nonce:
                        return
        except (OSError, TimeoutError) as exc:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no chat round trip: {exc}") from exc
            time.sleep(POLL)


def one_run(kind: str, redis_url: str | None, timeout: float) -> dict[str, Any]:
    """One cold start of ``kind``: milliseconds from exec to each milestone."""
    started = time.monotonic()
    deadline = started + timeout
    server = start_server(kind, redis_url=redis_url, wait=None)
    marks: dict[str, Any] = {}
    try:
        for name, step in (("healthz_ms", lambda: poll(server, "/healthz", deadline)),
                           ("readyz_ms", lambda: poll(server, "/readyz", deadline)),
                           ("first_message_ms", lambda: round_trip(server, deadline))):
            step()
            marks[name] = round((time.monotonic() - started) * 1000, 1)
        marks["ok"] = True
    except (RuntimeError, TimeoutError) as exc:
        marks.update(ok=False, error=str(exc)[:500])
    finally:
        server.cleanup()
    return marks


def run(args: argparse.Namespace) -> dict[str, Any]:
    """All runs, interleaved (ours, floor, ours, ...) so both see the same machine state."""
    precompile()
    redis = RedisServer().start() if args.redis else None
    kinds = ["app"] + ([] if args.no_floor else ["floor"])
    runs: dict[str, list[dict[str, Any]]] = {kind: [] for kind in kinds}
    try:
        for _ in range(args.runs):
            for kind in kinds:
                runs[kind].append(one_run(kind, redis.url if redis and kind == "app" else None, args.timeout))
    finally:
        if redis is not None:
            redis.cleanup()
    medians = {kind: {phase: median([r[phase] for r in rs if r.get("ok")]) for phase in PHASES}
               for kind, rs in runs.items()}
    ratios = ({phase: ratio(medians["app"][phase], medians["floor"][phase]) for phase in PHASES}
              if "floor" in medians else None)
    failures = [f"{kind} run {i + 1}: {r['error']}" for kind, rs in runs.items()
                for i, r in enumerate(rs) if not r.get("ok")]
    return {
        "tool": "startup",
        "label": f"app/{'redis' if args.redis else 'memory'}",
        "runs_per_target": args.runs,
        "bytecode": "precompiled (tools.targets.precompile, as in the image)",
        "runs": runs,
        "median": medians,
        "ratio_to_floor": ratios,
        "machine": machine(),
        "ok": not failures,
        "failures": failures,
    }


def render(result: dict[str, Any]) -> str:
    """Per-run rows, medians and ratios as a table."""
    rows = []
    for kind, runs in result["runs"].items():
        for i, r in enumerate(runs, 1):
            rows.append((kind, str(i), *(r.get(p) for p in PHASES)))
        rows.append((kind, "median", *(result["median"][kind][p] for p in PHASES)))
    if result["ratio_to_floor"]:
        rows.append(("app/floor", "ratio", *(result["ratio_to_floor"][p] for p in PHASES)))
    text = f"startup {result['label']}: ms from exec\n\n" + table(
        ("target", "run", "/healthz 200", "/readyz 200", "first message"), rows)
    return text + "\n\n" + ("OK" if result["ok"] else "FAILED: " + "; ".join(result["failures"]))


def main(argv: list[str] | None = None) -> int:
    return cli.main("startup", argv, parse_args, run, render)


if __name__ == "__main__":
    sys.exit(main())
