"""A swarm of chat WebSocket clients spread over worker processes, driven phase by phase.

The coordinator (``Swarm``) splits N connections over as many processes as the open-file
limit needs, then runs phases in all of them at once: ``connect``, ``broadcast`` (one sender
per room, every member must receive), ``await_close`` (the server closes us: which codes?)
and ``close``. Workers talk to it over a multiprocessing pipe, one command at a time. The
worker class is a parameter: ``Swarm(..., worker=CutoverWorker, extra={...})`` runs another
one's phases through ``call`` (tools/cutover_clients.py).

Each connection is a ``tools.wsclient.WebSocket``: frames arrive through a synchronous
callback, because a general-purpose client's per-message queue and task switch cost more
client CPU than the server spends, and the client would be what the benchmark measured.

Messages are matched by their text, ``lt:<run>:<room>:<seq>:<sent monotonic ns>``, never by
id, so Parley's ``{"type":"message",...}`` frames and the floor's ``{"message":...}`` count
alike. CLOCK_MONOTONIC is system-wide on Linux, so a receiving process can subtract the
sender's timestamp directly.
"""

from __future__ import annotations

import asyncio
import json
import math
import multiprocessing
import os
import resource
import secrets
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from multiprocessing.connection import Connection
from typing import Any

from tools import wsclient

# Sockets a worker keeps back under its open-file limit for everything else it opens.
FD_MARGIN = 100
PREFIX = "lt"
# How app.protocol.message_template starts a chat message, and the key before its text.
MESSAGE_HEAD = '{"type":"message",'
MESSAGE_KEY = ',"message":"'
# How bench/floor.py writes one (json.dumps of {"message": text}), and how it ends.
FLOOR_HEAD, FLOOR_TAIL = '{"message": "', '"}'


def raise_nofile() -> tuple[int, int]:
    """Raise this process's open-file soft limit to its hard limit; return (before, now)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1_048_576)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return soft, soft
    return soft, resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def describe_error(exc: BaseException) -> str:
    """A short, countable name for a failed connect."""
    response = getattr(exc, "response", None)
    if response is not None and hasattr(response, "status_code"):
        return f"HTTP {response.status_code} {_reason(response.body or b'')}".rstrip()
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        return "timeout"
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"{type(exc).__name__} errno {exc.errno}"
    return type(exc).__name__


def _reason(body: bytes) -> str:
    """Parley's refusal code (``{"code": ...}``) or the start of a proxy's text body."""
    try:
        return str(json.loads(body)["code"])
    except (ValueError, KeyError, TypeError):
        return body[:40].decode(errors="replace").strip()


@dataclass
class Member:
    """One client connection and what it saw."""

    index: int
    room: str
    ws: wsclient.WebSocket | None = None
    connect_ms: float | None = None
    ready_ms: float | None = None
    error: str | None = None
    seen: set[str] = field(default_factory=set)
    duplicates: int = 0
    close_code: int | None = None
    closed_ns: int | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)


class Worker:
    """The client side in one process: its share of members and the phases run on them."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.members = [Member(i, room_name(spec["run"], i % spec["rooms"])) for i in spec["indices"]]
        self.latencies_ms: list[float] = []
        self.stray = 0
        self.expected: int | None = None  # known once this worker's broadcast command arrives
        self.received = 0
        self.all_received = asyncio.Event()

    async def connect(self, start_ns: int, wait_ready: bool) -> dict[str, Any]:
        """Open every member (bounded, optionally ramped); report latencies and errors."""
        spec = self.spec
        gate = asyncio.Semaphore(spec["concurrency"])
        step_ns = spec["ramp"] * 1e9 / spec["total"] if spec["ramp"] > 0 else 0

        async def one(member: Member) -> None:
            if step_ns:
                delay = (start_ns + member.index * step_ns - time.monotonic_ns()) / 1e9
                if delay > 0:
                    await asyncio.sleep(delay)
            async with gate:
                await self._open(member, wait_ready)

        await asyncio.gather(*(one(m) for m in self.members))
        return {
            "connected": [m.index for m in self.members if m.ws is not None],
            "connect_ms": [m.connect_ms for m in self.members if m.ws is not None],
            "ready_ms": [m.ready_ms for m in self.members if m.ready_ms is not None],
            "errors": dict(Counter(m.error for m in self.members if m.error)),
        }

    async def _open(self, member: Member, wait_ready: bool) -> None:
        url = f"{self.spec['url']}/ws/chat/{member.room}/"
        if self.spec.get("query"):
            url += f"?{self.spec['query']}"
        timeout = self.spec["open_timeout"]
        started = time.perf_counter()
        try:
            member.ws = await wsclient.connect(url, partial(self._read, member), timeout,
                                               deflate=self.spec["deflate"],
                                               on_close=partial(self._closed, member))
            member.connect_ms = (time.perf_counter() - started) * 1000
            if wait_ready:
                # Ready, or the server closed the socket first (then there is no point waiting).
                waiter = asyncio.ensure_future(member.ready.wait())
                either: set[asyncio.Future[Any]] = {waiter, member.ws.closed}
                await asyncio.wait(either, timeout=timeout,
                                   return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                if not member.ready.is_set():
                    raise TimeoutError("no ready frame")
                member.ready_ms = (time.perf_counter() - started) * 1000
        except Exception as exc:  # every failure is counted, none stops the run
            member.error = "no ready frame" if member.ws is not None else describe_error(exc)
            if member.ws is not None:
                await self._drop(member)

    async def _drop(self, member: Member) -> None:
        assert member.ws is not None
        await member.ws.close()
        member.ws = None

    def _read(self, member: Member, raw: str) -> None:
        """Every text frame of ``member``, called synchronously from the socket's protocol."""
        if raw.startswith(MESSAGE_HEAD):
            # A chat message, as app.protocol writes it: its text is found without decoding
            # the JSON (a tenth of the load client's CPU per delivery), unless it has escapes.
            start = raw.find(MESSAGE_KEY)
            end = raw.find('"', start + len(MESSAGE_KEY)) if start >= 0 else -1
            if end >= 0 and "\\" not in raw:
                self._deliver(member, raw[start + len(MESSAGE_KEY):end])
                return
        elif raw.startswith(FLOOR_HEAD) and raw.endswith(FLOOR_TAIL) and "\\" not in raw:
            # The floor's, found as cheaply, so that both legs' clients cost the same.
            self._deliver(member, raw[len(FLOOR_HEAD):-len(FLOOR_TAIL)])
            return
        try:
            frame = json.loads(raw)
        except ValueError:  # not ours to judge; only our nonces count
            return
        if not isinstance(frame, dict):
            return
        if frame.get("type") == "ready":
            member.ready.set()
            return
        # A "reset" (the room's ids started over) needs nothing here: deliveries are counted
        # by nonce, never by id, and the swarm never resumes by id.
        text = frame.get("message")
        if frame.get("type", "message") == "message" and isinstance(text, str):
            self._deliver(member, text)

    @staticmethod
    def _closed(member: Member, ws: wsclient.WebSocket) -> None:
        member.close_code = ws.close_code
        member.closed_ns = time.monotonic_ns()

    def _deliver(self, member: Member, text: str) -> None:
        now = time.monotonic_ns()
        parts = text.split(":")
        # Checked before int(): this runs inside the socket's data_received, where a stray
        # exception would tear the connection down instead of just skipping the frame.
        if (len(parts) != 5 or parts[0] != PREFIX or parts[1] != self.spec["run"]
                or not parts[2].isdigit() or not parts[4].isdigit()):
            return
        if room_name(self.spec["run"], int(parts[2])) != member.room:
            self.stray += 1
            return
        key = parts[3]
        if key in member.seen:
            member.duplicates += 1
            return
        member.seen.add(key)
        self.latencies_ms.append((now - int(parts[4])) / 1e6)
        self.received += 1
        if self.expected is not None and self.received >= self.expected:
            self.all_received.set()

    async def broadcast(self, senders: dict[int, int], messages: int, interval: float,
                        timeout: float) -> dict[str, Any]:
        """Send ``messages`` from this worker's senders; wait for every member's copies."""
        rooms_with_sender = {room_name(self.spec["run"], r) for r in senders}
        live = [m for m in self.members if m.ws is not None and m.room in rooms_with_sender]
        self.expected = len(live) * messages
        if self.received >= self.expected:
            self.all_received.set()
        mine = {m.index: m for m in self.members if m.ws is not None}
        sending = [(r, mine[i]) for r, i in senders.items() if i in mine]

        async def send_all(room: int, member: Member) -> None:
            for seq in range(messages):
                if seq:
                    await asyncio.sleep(interval)
                if member.ws is None:  # dropped since (a refused send raises likewise)
                    raise ConnectionError("not connected")
                text = f"{PREFIX}:{self.spec['run']}:{room}:{seq}:{time.monotonic_ns()}"
                # Unguessable client_ids, as every client of an anonymous service must use.
                member.ws.send(json.dumps({"message": text, "client_id": secrets.token_hex(12)}))

        started = time.monotonic_ns()
        await asyncio.gather(*(send_all(r, m) for r, m in sending), return_exceptions=True)
        try:
            await asyncio.wait_for(self.all_received.wait(), timeout)
        except TimeoutError:
            pass
        missing = sum(max(0, messages - len(m.seen)) for m in live)
        return {
            "expected": self.expected,
            "received": self.received,
            "missing": missing,
            "duplicates": sum(m.duplicates for m in self.members),
            "stray": self.stray,
            "latency_ms": self.latencies_ms,
            "started_ns": started,
            "sent": len(sending) * messages,
        }

    async def await_close(self, timeout: float) -> dict[str, Any]:
        """Wait for the server to close every member; report close codes and when."""
        sockets = [m.ws.closed for m in self.members if m.ws is not None]
        if sockets:
            await asyncio.wait(sockets, timeout=timeout)
        codes: Counter[str] = Counter()
        last_ns = 0
        for member in self.members:
            if member.ws is None:
                continue
            if member.closed_ns is None:
                codes["still open"] += 1
            else:
                codes[str(member.close_code)] += 1
                last_ns = max(last_ns, member.closed_ns)
        return {"close_codes": dict(codes), "last_closed_ns": last_ns or None}

    async def close(self) -> dict[str, Any]:
        """Close every member that is still open (bounded, like connect)."""
        gate = asyncio.Semaphore(self.spec["concurrency"])

        async def one(member: Member) -> None:
            assert member.ws is not None
            async with gate:
                try:
                    await asyncio.wait_for(member.ws.close(), 10)
                except Exception:
                    pass
            member.ws = None

        open_members = [m for m in self.members if m.ws is not None]
        await asyncio.gather(*(one(m) for m in open_members))
        return {"closed": len(open_members)}


def room_name(run: str, room: int) -> str:
    """The room a load run uses: unique per run, so runs on one Redis never mix."""
    return f"{PREFIX}-{run}-{room}"


def _worker_main(pipe: Connection, spec: dict[str, Any], worker_class: type[Any]) -> None:
    raise_nofile()
    try:
        import uvloop

        uvloop.run(_serve(pipe, spec, worker_class))
    except ImportError:
        asyncio.run(_serve(pipe, spec, worker_class))


async def _serve(pipe: Connection, spec: dict[str, Any], worker_class: type[Any]) -> None:
    # Any class with async phase methods and an async close() (``Worker`` is the load one).
    worker = worker_class(spec)
    loop = asyncio.get_running_loop()
    pipe.send({"hello": os.getpid()})
    while True:
        command = await loop.run_in_executor(None, pipe.recv)
        if command["cmd"] == "exit":
            await worker.close()
            pipe.send({"bye": True})
            return
        try:
            result = await getattr(worker, command["cmd"])(**command["args"])
        except Exception:
            result = {"failure": traceback.format_exc()}
        pipe.send(result)


@dataclass
class Plan:
    """How N connections are spread over processes, and why."""

    connections: int
    processes: int
    per_process: int
    nofile_before: int
    nofile_now: int

    def describe(self) -> str:
        limit = (f"open-file soft limit {self.nofile_before}"
                 + (f" raised to {self.nofile_now}" if self.nofile_now != self.nofile_before else ""))
        if self.processes == 1:
            return f"{limit}: all {self.connections} clients in one process"
        return (f"{limit}: at most {self.per_process} clients per process, so "
                f"{self.connections} clients are spread over {self.processes} processes")


def plan(connections: int, per_process: int | None = None) -> Plan:
    """Raise our own limit, then decide how many client processes N connections need."""
    before, now = raise_nofile()
    capacity = max(1, now - FD_MARGIN)
    if per_process:
        capacity = min(capacity, per_process)
    processes = max(1, math.ceil(connections / capacity))
    return Plan(connections, processes, capacity, before, now)


class Swarm:
    """Coordinator of the worker processes; each phase runs in all of them at once."""

    def __init__(self, url: str, connections: int, rooms: int, concurrency: int = 500,
                 ramp: float = 0.0, per_process: int | None = None, open_timeout: float = 30.0,
                 deflate: bool = False, worker: type[Any] = Worker, query: str = "",
                 extra: dict[str, Any] | None = None) -> None:
        self.plan = plan(connections, per_process)
        self.run = secrets.token_hex(3)
        self.url = url
        self.connections = connections
        self.rooms = max(1, min(rooms, connections))
        self.concurrency = concurrency
        self.ramp = ramp
        self.open_timeout = open_timeout
        self.deflate = deflate
        self.query = query  # appended to every chat URL (e.g. ``token=...``)
        self.worker = worker  # the class each process runs; its phases are what ``call`` names
        self.extra = extra or {}  # more of the spec, for another worker class
        self.pipes: list[Connection] = []
        self.processes: list[multiprocessing.process.BaseProcess] = []
        self.connected: list[int] = []

    def __enter__(self) -> Swarm:
        context = multiprocessing.get_context("spawn")
        count = self.plan.processes
        per_worker_concurrency = max(1, math.ceil(self.concurrency / count))
        for k in range(count):
            indices = list(range(k, self.connections, count))
            spec = {
                "run": self.run, "url": self.url, "rooms": self.rooms, "indices": indices,
                "total": self.connections, "concurrency": per_worker_concurrency,
                "ramp": self.ramp, "open_timeout": self.open_timeout, "deflate": self.deflate,
                "query": self.query,
                **self.extra,
            }
            ours, theirs = context.Pipe()
            process = context.Process(target=_worker_main, args=(theirs, spec, self.worker), daemon=True)
            process.start()
            self.pipes.append(ours)
            self.processes.append(process)
        for pipe in self.pipes:
            self._recv(pipe, 60)
        return self

    def __exit__(self, *exc: object) -> None:
        for pipe in self.pipes:
            try:
                pipe.send({"cmd": "exit"})
            except OSError:
                pass
        for pipe in self.pipes:
            try:
                self._recv(pipe, 60)
            except Exception:
                pass
        for process in self.processes:
            process.join(10)
            if process.is_alive():
                process.kill()
                process.join()

    def _recv(self, pipe: Connection, timeout: float) -> dict[str, Any]:
        if not pipe.poll(timeout):
            raise TimeoutError(f"a load worker did not answer within {timeout}s")
        result = pipe.recv()
        if "failure" in result:
            raise RuntimeError(f"a load worker failed:\n{result['failure']}")
        return result

    def call(self, cmd: str, wait: float, **args: Any) -> list[dict[str, Any]]:
        """Run the phase ``cmd`` in every worker at once; each one's answer, in order."""
        for pipe in self.pipes:
            pipe.send({"cmd": cmd, "args": args})
        return [self._recv(pipe, wait) for pipe in self.pipes]

    def connect(self, wait_ready: bool) -> dict[str, Any]:
        """Open all connections; latencies in ms, rate per second, errors by kind."""
        started = time.monotonic_ns()
        budget = self.ramp + self.open_timeout * (1 + self.connections / max(self.concurrency, 1)) + 60
        results = self.call("connect", budget, start_ns=started, wait_ready=wait_ready)
        elapsed = (time.monotonic_ns() - started) / 1e9
        self.connected = sorted(i for r in results for i in r["connected"])
        errors: Counter[str] = Counter()
        for r in results:
            errors.update(r["errors"])
        return {
            "attempted": self.connections,
            "connected": len(self.connected),
            "success_rate": round(len(self.connected) / self.connections, 5),
            "seconds": round(elapsed, 3),
            "rate_per_s": round(len(self.connected) / elapsed, 1) if elapsed else None,
            "connect_ms": [x for r in results for x in r["connect_ms"]],
            "ready_ms": [x for r in results for x in r["ready_ms"]],
            "errors": dict(errors),
        }

    def broadcast(self, messages: int, interval: float, timeout: float) -> dict[str, Any]:
        """One sender per room (its first connected member); every member must receive."""
        senders: dict[int, int] = {}
        for index in self.connected:
            senders.setdefault(index % self.rooms, index)
        started = time.monotonic_ns()
        results = self.call("broadcast", timeout + messages * interval + 60, senders=senders,
                            messages=messages, interval=interval, timeout=timeout)
        elapsed = (time.monotonic_ns() - started) / 1e9
        total = {key: sum(r[key] for r in results)
                 for key in ("expected", "received", "missing", "duplicates", "stray", "sent")}
        return {
            **total,
            "rooms": self.rooms,
            "rooms_with_sender": len(senders),
            "messages_per_room": messages,
            "seconds": round(elapsed, 3),
            "latency_ms": [x for r in results for x in r["latency_ms"]],
        }

    def await_close(self, timeout: float) -> dict[str, Any]:
        """Wait until the server has closed every connection; close codes and the last one."""
        results = self.call("await_close", timeout + 30, timeout=timeout)
        codes: Counter[str] = Counter()
        for r in results:
            codes.update(r["close_codes"])
        last = [r["last_closed_ns"] for r in results if r["last_closed_ns"]]
        return {"close_codes": dict(codes), "last_closed_ns": max(last) if last else None}

    def close(self) -> dict[str, Any]:
        """Close every connection from the client side."""
        results = self.call("close", 120)
        return {"closed": sum(r["closed"] for r in results)}


def detect_ready(url: str, timeout: float = 1.0) -> bool:
    """Does this server send a ``ready`` frame after connect (Parley) or not (the floor)?"""
    from websockets.sync.client import connect

    with connect(f"{url}/ws/chat/{PREFIX}-probe/", open_timeout=10, compression=None) as ws:
        try:
            frame = json.loads(ws.recv(timeout=timeout))
        except TimeoutError:
            return False
        return frame.get("type") == "ready"

