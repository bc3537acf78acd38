"""Churn: clients connect, send one message, see it through and close, over and over; RSS per 100,000.

Each of ``-c`` loops, against Parley: connect, wait for ``ready``, send a message with a random
``client_id``, wait for its ``ack``, close; against the floor (``--target floor``): connect,
send, wait for the echo, close. Bounded by ``--duration`` seconds and ``--count`` connections,
loopback only. The server's RSS is sampled every ``--sample`` connections; after the warm-up
(the first ``--warmup`` fraction of samples) a least-squares line through the samples gives the
growth per 100,000 connections: a leak shows as a steady slope, noise as a small one of either
sign. Every ``--quiet-every`` connections the churn also pauses: no client connected for
``--settle`` seconds, then a "quiet" RSS sample, fitted on its own (the first leg's left out:
it only lifts the idle process to its working size). Samples taken mid-churn include whatever
is in flight at that instant; quiet ones hold only what stayed behind. That is a leak, or
memory the allocators keep once they were given it (pymalloc arenas, the C heap): RSS alone
cannot tell those apart, the server's own in-use figures can (README, Benchmarks). Exit status
1 when any round failed, 2 for a refused target.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
import time
from typing import Any

from tools import cli
from tools.procs import RedisServer
from tools.report import log, machine, table
from tools.swarm import raise_nofile
from tools.targets import KINDS, require_loopback, start_server, usage
from tools.wsclient import connect

PER = 100_000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", choices=KINDS, default="app", help="what to start")
    parser.add_argument("--redis", action="store_true", help="the app on a throwaway redis-server")
    parser.add_argument("--url", help="an already running server on loopback (needs --server-pid)")
    parser.add_argument("--server-pid", type=int, help="pid of the server behind --url")
    parser.add_argument("-c", "--concurrency", type=int, default=200, help="clients churning at once")
    parser.add_argument("-r", "--rooms", type=int, default=20)
    parser.add_argument("--duration", type=float, default=120.0, help="stop after this many seconds")
    parser.add_argument("--count", type=int, default=1_000_000, help="stop after this many connections")
    parser.add_argument("--sample", type=int, default=10_000, help="connections between RSS samples")
    parser.add_argument("--warmup", type=float, default=0.2, help="fraction of samples left out of the fit")
    parser.add_argument("--quiet-every", type=int, default=20_000,
                        help="connections between pauses for a quiet RSS sample (0: never pause)")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds of a pause before its sample")
    parser.add_argument("--no-client-id", action="store_true",
                        help="send without client_id: no dedupe entries (in-memory mode keeps them)")
    parser.add_argument("--round-timeout", type=float, default=10.0, help="longest one round may take")
    parser.add_argument("--json", metavar="PATH", help="write the JSON here ('-': stdout)")
    return parser.parse_args(argv)


def slope(points: list[tuple[int, int]]) -> float | None:
    """Least-squares slope of RSS (bytes) over connections; None with fewer than 3 points."""
    if len(points) < 3:
        return None
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    if spread == 0:
        return None
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / spread


class Churn:
    """The client side: ``concurrency`` loops of one connection each, counted as they finish."""

    def __init__(self, url: str, kind: str, args: argparse.Namespace) -> None:
        self.url, self.kind, self.args = url, kind, args
        self.done = self.started = 0
        self.leg_end = args.count
        self.errors: dict[str, int] = {}
        self.samples: list[tuple[int, int]] = []
        self.quiet: list[tuple[int, int]] = []
        self.stop_at = time.monotonic() + args.duration

    def _more(self) -> bool:
        return self.done < self.args.count and time.monotonic() < self.stop_at and not self.errors

    def _next_round(self) -> bool:
        """Claim one more round of this leg, or say the leg (or the run) is over."""
        if not self._more() or self.started >= min(self.leg_end, self.args.count):
            return False
        self.started += 1
        return True

    async def _round(self, room: str) -> None:
        loop = asyncio.get_running_loop()
        waiting: asyncio.Future[None] = loop.create_future()
        client_id = secrets.token_hex(8)
        sent_id = None if self.args.no_client_id else client_id
        ready_needed = self.kind == "app"

        def on_text(text: str) -> None:
            nonlocal ready_needed
            frame = json.loads(text)
            if waiting.done():
                return
            if ready_needed and frame.get("type") == "ready":
                ready_needed = False
                waiting.set_result(None)
            elif self.kind == "app" and frame.get("type") == "ack" and frame.get("client_id") == sent_id:
                waiting.set_result(None)
            elif self.kind == "floor" and frame.get("message") == client_id:
                waiting.set_result(None)

        ws = await connect(f"{self.url}/ws/chat/{room}/", on_text, open_timeout=self.args.round_timeout)
        try:
            if self.kind == "app":
                await waiting
                waiting = loop.create_future()
            outgoing: dict[str, Any] = {"message": client_id}
            if sent_id is not None:
                outgoing["client_id"] = sent_id
            ws.send(json.dumps(outgoing))
            await waiting
        finally:
            await ws.close()

    async def _loop(self, index: int, pid: int | None) -> None:
        room = f"soak{index % self.args.rooms}"
        while self._next_round():
            try:
                async with asyncio.timeout(self.args.round_timeout):
                    await self._round(room)
            except Exception as exc:  # any failed round ends the run: it is reported, not retried
                name = type(exc).__name__
                self.errors[name] = self.errors.get(name, 0) + 1
                return
            self.done += 1
            if self.done % self.args.sample == 0:
                reading = usage(pid)
                if reading is not None:
                    self.samples.append((self.done, reading.rss))

    async def run(self, pid: int | None) -> None:
        first = usage(pid)
        if first is not None:
            self.samples.append((0, first.rss))
        every = self.args.quiet_every
        while self._more():
            self.leg_end = self.started + every if every > 0 else self.args.count
            await asyncio.gather(*(self._loop(i, pid) for i in range(self.args.concurrency)))
            if every <= 0 or self.errors:
                break
            # Every client has closed: let the server finish what closing left it, then read.
            await asyncio.sleep(self.args.settle)
            reading = usage(pid)
            if reading is not None:
                self.quiet.append((self.done, reading.rss))


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start (or find) the server, churn, and fit the RSS samples."""
    raise_nofile()
    redis = RedisServer().start() if args.redis and not args.url and args.target == "app" else None
    server = None
    try:
        if args.url:
            url, pid = require_loopback(args.url), args.server_pid
        else:
            server = start_server(args.target, redis_url=redis.url if redis else None)
            url = require_loopback(server.base)
            pid = server.process.pid if server.process else None
        kind = args.target
        log(f"soak {kind}: {args.concurrency} loops, up to {args.count} connections / {args.duration:.0f}s")
        churn = Churn(url, kind, args)
        started = time.monotonic()
        asyncio.run(churn.run(pid))
        elapsed = time.monotonic() - started
        skip = int(len(churn.samples) * args.warmup)
        fitted = churn.samples[skip:]
        per_connection = slope(fitted)
        # The first leg raises the high-water mark from the idle process's; only later legs
        # say whether what stays behind grows.
        quiet_slope = slope(churn.quiet[1:])
        return {
            "ok": not churn.errors and churn.done > 0,
            "target": kind,
            "redis": bool(redis) or None,
            "connections": churn.done,
            "seconds": round(elapsed, 1),
            "connections_per_s": round(churn.done / elapsed, 1) if elapsed else None,
            "errors": churn.errors,
            "rss_mb_first": round(churn.samples[0][1] / 2**20, 2) if churn.samples else None,
            "rss_mb_last": round(churn.samples[-1][1] / 2**20, 2) if churn.samples else None,
            "samples_fitted": len(fitted),
            "rss_kb_per_100k": None if per_connection is None else round(per_connection * PER / 1024, 1),
            "rss_kb_per_100k_quiet": None if quiet_slope is None else round(quiet_slope * PER / 1024, 1),
            "samples": [{"connections": x, "rss_mb": round(y / 2**20, 3)} for x, y in churn.samples],
            "quiet_samples": [{"connections": x, "rss_mb": round(y / 2**20, 3)} for x, y in churn.quiet],
            "machine": machine(),
        }
    finally:
        if server is not None:
            server.cleanup()
        if redis is not None:
            redis.cleanup()


def render(result: dict[str, Any]) -> str:
    rows = [[
        result["target"] + (" + redis" if result["redis"] else ""), result["connections"],
        result["connections_per_s"], result["rss_mb_first"], result["rss_mb_last"],
        result["rss_kb_per_100k"], result["rss_kb_per_100k_quiet"], result["errors"] or "none",
    ]]
    headers = ["target", "connections", "conn/s", "RSS MB first", "RSS MB last",
               "RSS KB per 100k (fit)", "RSS KB per 100k (quiet fit)", "errors"]
    return table(headers, rows)


def main(argv: list[str] | None = None) -> int:
    return cli.main("soak", argv, parse_args, run, render)


if __name__ == "__main__":
    sys.exit(main())
