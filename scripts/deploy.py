"""Blue/green deploy behind Traefik: the one procedure, on the local stack or on docker compose.

    python -m scripts.deploy green                      # local stack (make stack)
    python -m scripts.deploy --runtime compose green    # docker compose (compose.yml)

1. start (or rebuild and start) the target colour and wait for its own /readyz 200;
2. switch Traefik to it atomically (the dynamic file, temp file + rename);
3. confirm through Traefik that the new colour answers (/readyz names it);
4. stop the old colour with SIGTERM: it drains, its clients get 1012 and reconnect through
   Traefik to the new colour, resuming by id (compose: the deploy returns once every old
   replica confirms it is draining; ``--wait-drain`` waits until they have exited);
5. print a JSON report: time to ready, switch latency, drain time, total, and what became
   of the old colour ("drained", "draining" or "already gone"; on the local stack, a
   process that did not drain cleanly is named with what happened instead).

Every step covers all of a colour's replicas at once (``--processes N``: the local stack's
count, or the compose replicas of the new colour; default: as many as the active one).

Failover: when the old colour has died without a drain (killed, crashed, hung), the same
command moves traffic: the new colour is started, switched to and confirmed as usual, and
the old one is reported "already gone" (no process left) or "stopped, was not answering".
Its clients were cut off (close 1006) and reconnect to the new colour as after a drain.

If the target never gets ready nothing is switched, the old colour keeps serving (if it
still can) and the exit status is 1 with the reason. Deploying the colour that is already
active is refused (2).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from scripts.compose_runtime import ComposeError, ComposeRuntime
from tools import traefik_config
from tools.report import table

if TYPE_CHECKING:
    from scripts.stack import StackState
    from tools.procs import Proc

# The local stack's module (psutil, the process tools) is imported only by the local
# runtime: a compose deploy starts ~30 ms sooner without it.

READY_TIMEOUT = 60.0
CONFIRM_TIMEOUT = 15.0


class DeployError(RuntimeError):
    """The deploy stopped; the message says why and what still serves."""


class Refused(DeployError):
    """The deploy was not attempted (the target colour already serves)."""


class Runtime(Protocol):
    """Where the colours run. The procedure in ``deploy`` is the same for every runtime."""

    name: str

    def active(self) -> str | None: ...  # None: nothing deployed yet (first start)
    def start(self, color: str) -> None: ...
    def abandon(self, color: str) -> None: ...
    def switch(self, color: str) -> None: ...
    def routed_color(self) -> str | None: ...
    def stop(self, color: str) -> bool: ...  # False: nothing of that colour was left to stop
    def record_active(self, color: str) -> None: ...
    notes: dict[str, Any]  # runtime-specific facts for the report (image, build time)
    drain_over: bool  # after stop(): False if the old colour confirmed it drains, not done yet
    drain_failed: str  # after stop(): how a process of the old colour failed to drain, or ""


def deploy(runtime: Runtime, color: str, confirm_timeout: float = CONFIRM_TIMEOUT) -> dict[str, Any]:
    """Run the blue/green procedure to ``color``; the report, or DeployError."""
    traefik_config.check_color(color)
    old = runtime.active()
    if color == old:
        raise Refused(f"{color} is already the active colour: deploy "
                      f"{traefik_config.other_color(color)} instead")
    # Asked through Traefik, as clients reach it: after a crash this is the failover case.
    old_answered = old is not None and runtime.routed_color() == old
    old_now = (f"{old} still serves" if old_answered else
               f"{old} was not answering either: nothing serves" if old else "nothing served before")
    began = time.monotonic()
    try:
        runtime.start(color)
    except (DeployError, ComposeError) as exc:
        runtime.abandon(color)
        raise DeployError(f"{color} never got ready, nothing was switched, {old_now}: {exc}") from None
    ready = time.monotonic()

    runtime.switch(color)
    routed = _await(lambda: runtime.routed_color() == color, confirm_timeout)
    if not routed:
        if old is not None:
            runtime.switch(old)
        runtime.abandon(color)
        raise DeployError(f"Traefik did not route to {color} within {confirm_timeout:.0f}s; "
                          f"switched back, {old_now}")
    switched = time.monotonic()
    runtime.record_active(color)

    stopped = runtime.stop(old) if old is not None else False
    drained = time.monotonic()
    return {
        "ok": True,
        "runtime": runtime.name,
        "from": old,
        "to": color,
        "old": (old_outcome(old_answered, stopped, runtime.drain_over, runtime.drain_failed)
                if old is not None else "none (first start)"),
        **runtime.notes,
        "time_to_ready_s": round(ready - began, 3),
        "switch_latency_s": round(switched - ready, 3),
        "drain_s": round(drained - switched, 3),
        "total_s": round(drained - began, 3),
    }


def old_outcome(answered: bool, stopped: bool, over: bool = True, failed: str = "") -> str:
    """What became of the old colour, for the report: ``draining`` when it confirmed it got
    SIGTERM and the deploy did not wait for it to exit; ``failed`` (how one of its processes
    failed to drain: killed past its budget, or an unclean exit) overrides ``drained``."""
    if not stopped:
        return "already gone"
    if not answered:
        return "stopped, was not answering"
    if failed:
        return failed
    return "drained" if over else "draining"


def _await(predicate: Any, timeout: float, interval: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


class LocalRuntime:
    """The colours as processes of the local stack (scripts.stack), on loopback."""

    name = "local"
    notes: dict[str, Any] = {}
    drain_over = True  # stop() waits for every process to end

    def __init__(self, state: StackState, app_env: dict[str, str] | None = None,
                 ready_timeout: float = READY_TIMEOUT) -> None:
        self.state = state
        self.app_env = app_env or {}
        self.ready_timeout = ready_timeout
        self.drain_failed = ""

    def active(self) -> str:
        return self.state.active

    def start(self, color: str) -> None:
        from scripts.stack import StackError, start_app, stop_together, wait_app_ready

        leftovers = self._take(color)  # a stale process of this colour would hold its port
        if leftovers:
            stop_together(leftovers)
        start_app(self.state, color, self.app_env)
        try:
            wait_app_ready(self.state, color, self.ready_timeout)
        except StackError as exc:
            raise DeployError(str(exc)) from None

    def _take(self, color: str) -> list[Proc]:
        """Remove every process of ``color`` from the stack's record; the removed ones."""
        return [self.state.procs.pop(name) for name in self.state.members(color) if name in self.state.procs]

    def abandon(self, color: str) -> None:
        from scripts.stack import stop_together

        stop_together(self._take(color))
        self.state.save()

    def switch(self, color: str) -> None:
        traefik_config.write_watched(
            self.state.dynamic_file,
            traefik_config.render_dynamic(color, self.state.app_urls()),
        )

    def routed_color(self) -> str | None:
        from scripts.stack import traefik_color

        return traefik_color(self.state)

    def stop(self, color: str) -> bool:
        from scripts.stack import drain

        names = [name for name in self.state.members(color)
                 if name in self.state.procs and self.state.procs[name].alive()]
        if not names:
            self._take(color)
            self.state.save()
            return False  # killed or crashed: its clients were cut off, not drained
        outcomes = drain(self.state, names)  # all of the colour drain at once
        self._take(color)
        self.state.save()
        self.drain_failed = "; ".join(f"{name} {outcome}" for name, outcome in outcomes.items()
                                      if outcome != "drained")
        return True

    def record_active(self, color: str) -> None:
        self.state.active = color
        self.state.save()


def parse_env(pairs: list[str]) -> dict[str, str]:
    """``KEY=VALUE`` arguments as a dict."""
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--app-env wants KEY=VALUE, got {pair!r}")
        env[key] = value
    return env


def build_runtime(args: argparse.Namespace) -> Runtime:
    if args.runtime == "local":
        from scripts.stack import StackState, resolve_dir

        state = StackState.load(resolve_dir(args.state_dir))
        if args.processes not in (None, state.processes):
            raise SystemExit(f"the local stack runs {state.processes} process(es) per colour; "
                             f"`make stack PROCESSES={args.processes}` starts one with {args.processes}")
        return LocalRuntime(state, parse_env(args.app_env), ready_timeout=args.ready_timeout)
    if args.app_env:
        raise SystemExit("--app-env is for the local runtime; compose takes compose.yml's environment")
    return ComposeRuntime(Path(args.dynamic_dir).resolve(), args.ops_url,
                          files=[Path(f).resolve() for f in args.compose_file],
                          tag=args.tag or None, ready_timeout=args.ready_timeout,
                          replicas=args.processes, wait_drain=args.wait_drain)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("color", choices=traefik_config.COLORS, help="the colour to deploy")
    parser.add_argument("--runtime", choices=("local", "compose"), default="local")
    parser.add_argument("--state-dir", help="local: the stack's state directory (default .stack/)")
    parser.add_argument("--app-env", action="append", default=[], metavar="KEY=VALUE",
                        help="local: extra environment for the new colour (repeatable)")
    parser.add_argument("--processes", type=int, default=None, metavar="N",
                        help="replicas of the new colour: compose runs N containers (default: as "
                             "many as the active colour, 1 at first); local: must be the stack's")
    parser.add_argument("--wait-drain", action="store_true",
                        help="compose: return once the old colour's containers have exited, not "
                             "as soon as each confirms it is draining")
    parser.add_argument("--ready-timeout", type=float, default=READY_TIMEOUT,
                        help="seconds the new colour gets to answer /readyz 200")
    parser.add_argument("--compose-file", action="append", default=[], metavar="FILE",
                        help="compose: a compose file, repeatable like `docker compose -f` "
                             "(default: compose's own choice, COMPOSE_FILE or compose.yml + override)")
    parser.add_argument("--tag", default="",
                        help="compose: the release to run, parley:<tag>, never rebuilt (a rollback); "
                             "default: this checkout's git revision, built if missing")
    parser.add_argument("--dynamic-dir",
                        default=os.environ.get("PARLEY_DYNAMIC_DIR") or str(traefik_config.DYNAMIC_DIR),
                        help="compose: the directory mounted as Traefik's dynamic config "
                             "($PARLEY_DYNAMIC_DIR, as compose.yml reads it)")
    parser.add_argument("--ops-url", default=os.environ.get("PARLEY_OPS_URL", "http://127.0.0.1:8080"),
                        help="compose: Traefik's internal entry point, published on loopback")
    args = parser.parse_args(argv)
    errors: tuple[type[Exception], ...] = (DeployError, ComposeError, traefik_config.ConfigProblem)
    if args.runtime == "local":
        from scripts.stack import StackError

        errors += (StackError,)
    try:
        report = deploy(build_runtime(args), args.color)
    except errors as exc:
        print(json.dumps({"ok": False, "to": args.color, "error": str(exc)}))
        print(f"deploy: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, Refused) else 1
    print(table(["from", "to", "old", "ready s", "switch s", "drain s", "total s"],
                [[report["from"], report["to"], report["old"], *(f"{report[key]:.3f}" for key in
                  ("time_to_ready_s", "switch_latency_s", "drain_s", "total_s"))]]), file=sys.stderr)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
