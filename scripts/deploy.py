"""Blue/green deploy behind Traefik: the one procedure, on the local stack or on docker compose.

    python -m scripts.deploy green                      # local stack (make stack)
    python -m scripts.deploy --runtime compose green    # docker compose (compose.yml)

1. start (or rebuild and start) the target colour and wait for its own /readyz 200;
2. switch Traefik to it atomically (the dynamic file, temp file + rename);
3. confirm through Traefik that the new colour answers (/readyz names it);
4. wait ``IN_FLIGHT`` (0.5 s) for handshakes Traefik forwarded to the old colour just before
   the switch, then stop the old colour with SIGTERM: it drains, its clients get 1012 and
   reconnect through Traefik to the new colour, resuming by id (compose: the deploy returns
   once every old replica confirms it is draining; ``--wait-drain`` waits until they have
   exited);
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
still can) and the exit status is 1 with the reason. On the local stack, a deploy with
Traefik dead is refused (1) before anything starts; after the drain, a new colour that lost
processes or that Traefik no longer routes to fails the deploy (1) instead of a report.
Deploying the colour that is already active is refused (2), unless processes of the other
colour still run (a deploy interrupted after its switch): then the deploy finishes, draining
them once it sees the routed colour serve (none of its processes dead, Traefik routing to
it); if it does not, the other colour is routed again (if it still answers), the routed
one's processes are stopped, exit 1.

The live dynamic file is the record of the active colour (state.json follows it). Ctrl-C,
SIGTERM or SIGHUP stop a deploy with one line saying what it left and exit status 130:
before the switch, the new colour's processes are stopped and the old one still serves;
after it, the new colour is routed (it serves, once Traefik confirmed the switch; the line
says which) and running the same deploy again finishes it. The switch
and its record are written with those signals held back, so they never disagree. A deploy
holds a lock (the local stack's; compose: its live routing directory's): a second one fails
at once (1), naming the first.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

from scripts.compose_runtime import ComposeError, ComposeRuntime
from scripts.local_runtime import LocalRuntime
from scripts.runtime import CONFIRM_TIMEOUT, READY_TIMEOUT, DeployError, Interrupted, Refused, Runtime
from tools import traefik_config
from tools.lock import Busy
from tools.lock import locked as locked_dir
from tools.report import table

# The local stack's module (psutil, the process tools) is imported only by the local
# runtime (scripts/local_runtime.py, inside its methods): a compose deploy starts ~30 ms
# sooner without it.

# Between a confirmed switch and the old colour's SIGTERM. A handshake Traefik forwarded to
# the old colour just before the switch is still on its way there when the switch is seen,
# and a draining process refuses it (503 draining: a failed connect, to a browser). Nothing
# tells when the last one has landed; a forward on loopback takes milliseconds, under load
# tens of them (tests/e2e/test_health_check.py saw one refused without this wait).
IN_FLIGHT = 0.5

# What stops a deploy part-way: each of them becomes KeyboardInterrupt (see main).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextmanager
def signals_held() -> Iterator[None]:
    """Hold back the stop signals for the block (they arrive right after it): the switch
    and its record are written together or not at all, whatever an operator presses."""
    held = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def _route(runtime: Runtime, color: str) -> str:
    """Route Traefik to ``color`` and record it as the active colour; ``color``. Callers hold
    the stop signals around it and the assignment of what it returns, so an interrupt never
    falls between the switch and what the deploy reports as routed."""
    runtime.switch(color)
    runtime.record_active(color)
    return color


def _listed(dead: dict[str, str]) -> str:
    """``runtime.dead``'s answer as a phrase: each process and how it ended."""
    return "; ".join(f"{name} {how}" for name, how in dead.items())


def deploy(runtime: Runtime, color: str, confirm_timeout: float = CONFIRM_TIMEOUT) -> dict[str, Any]:
    """Run the blue/green procedure to ``color``; the report, or DeployError (Interrupted
    on KeyboardInterrupt, saying what was left)."""
    traefik_config.check_color(color)
    old = runtime.active()
    if color == old:
        other = traefik_config.other_color(color)
        if not runtime.lingers(other):
            # Also what a deploy interrupted after its switch comes to once the old colour
            # drained on its own: nothing is left to finish, and nothing needs undoing.
            raise Refused(f"{color} is already the active colour and nothing of {other} runs: nothing to "
                          f"deploy or finish (to move to {other}, deploy {other})")
    # Without Traefik no switch is confirmed, and a drain sends the old colour's clients nowhere.
    edge = runtime.edge_down()
    if edge:
        raise DeployError(f"nothing was deployed: {edge}")
    if color == old:
        return finish(runtime, color, traefik_config.other_color(color), confirm_timeout)
    # Each old process asked itself (the local stack), or through Traefik (compose): after
    # a crash this is the failover case.
    old_answered = old is not None and runtime.serves(old)
    old_now = (f"{old} still serves" if old_answered else
               f"{old} was not answering either: nothing serves" if old else "nothing served before")
    began = time.monotonic()
    switched_to = None
    confirmed = False  # Traefik routes to the new colour and none of its processes was lost
    try:
        try:
            runtime.start(color)
        except (DeployError, ComposeError) as exc:
            runtime.abandon(color)
            raise DeployError(f"{color} never got ready, nothing was switched, {old_now}: {exc}") from None
        ready = time.monotonic()

        with signals_held():
            switched_to = _route(runtime, color)
        # A new process that died between its readiness and now: Traefik counts it up until
        # its first health check, so a drain now would send the old colour's clients into it.
        # Switch back while the old colour still holds them (with nothing to go back to, a
        # colour still partly alive goes on: the end reports what it lost).
        why = _confirm(runtime, color, confirm_timeout, any_death=old_answered)
        switched = time.monotonic()
        if old_answered and not why:
            time.sleep(IN_FLIGHT)  # a process that dies meanwhile is seen next, before any drain
        lost = runtime.dead(color) if old_answered and not why else {}
        if lost:
            why = _lost(color, lost)
        if why:
            with signals_held():
                switched_to = old if old is None else _route(runtime, old)
            runtime.abandon(color)
            now = f"{old or 'nothing'} still runs, undrained" if runtime.edge_down() else old_now
            raise DeployError(f"{why}; switched back before draining anything, {now}")
        confirmed = True
        stopped = runtime.stop(old) if old is not None else False
    except KeyboardInterrupt:
        raise interrupted(runtime, color, old, switched_to, confirmed, old_now) from None
    except DeployError:
        raise  # it says what it left, having stopped what had to be
    except Exception as exc:  # a full disk failing state.json's write, a bug: anything else
        error = failed(runtime, color, old, switched_to, old_now, exc)
        if error is exc:
            raise
        raise error from None
    drained = time.monotonic()
    # A new process that died after its readiness was seen (while the old colour drained),
    # or Traefik that did.
    _check_serving(runtime, color, old, confirm_timeout)
    return {
        "ok": True,
        "runtime": runtime.name,
        "from": old,
        "to": color,
        "old": (summary(runtime.per_process) if runtime.per_process else
                old_outcome(old_answered, stopped, runtime.drain_over, runtime.drain_failed)
                if old is not None else "none (first start)"),
        **({"old_processes": runtime.per_process} if runtime.per_process else {}),
        **runtime.notes,
        "time_to_ready_s": round(ready - began, 3),
        "switch_latency_s": round(switched - ready, 3),
        "drain_s": round(drained - switched, 3),
        "total_s": round(drained - began, 3),
    }


def finish(runtime: Runtime, color: str, old: str,
           confirm_timeout: float = CONFIRM_TIMEOUT) -> dict[str, Any]:
    """``color`` is routed but ``old``'s processes still run (a deploy interrupted after its
    switch): drain them, as that deploy would have, once ``color`` is seen serving; the
    report. If it does not serve, ``old`` is not drained into it: routed again if it still
    answers (``color``'s processes stopped), DeployError either way."""
    began = time.monotonic()
    answered = runtime.serves(old)
    # The switch may never have been confirmed (interrupted while Traefik was asked): its
    # colour can have died since, and draining the old one then leaves nothing serving.
    why = _not_serving(runtime, color, confirm_timeout)
    if why:
        if not answered:
            raise DeployError(f"nothing was drained: {color} is routed but does not serve ({why}), and "
                              f"{old} does not answer either: nothing serves. {runtime.repair_hint}")
        with signals_held():
            _route(runtime, old)
            runtime.abandon(color)
        raise DeployError(f"nothing was drained: {color} is routed but does not serve ({why}); switched "
                          f"back to {old}, which still serves, and stopped {color}'s processes")
    try:
        stopped = runtime.stop(old)
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted while draining {old}: {color} serves; {old}'s processes got "
                          f"SIGTERM and drain on their own") from None
    drained = time.monotonic()
    _check_serving(runtime, color, old, confirm_timeout)
    return {
        "ok": True, "runtime": runtime.name, "from": old, "to": color, "finished": True,
        "old": (summary(runtime.per_process) if runtime.per_process else
                old_outcome(answered, stopped, runtime.drain_over, runtime.drain_failed)),
        **({"old_processes": runtime.per_process} if runtime.per_process else {}),
        **runtime.notes,
        "time_to_ready_s": 0.0, "switch_latency_s": 0.0,
        "drain_s": round(drained - began, 3), "total_s": round(drained - began, 3),
    }


# How often a wait for Traefik also looks at the new colour's processes (a `docker ps` on
# compose): a process that died is not waited out, it is named at once.
LOOK_EVERY = 0.2


# A poll of Traefik's /readyz that took this long got no answer in time (a refusal or the
# other colour comes back in milliseconds). Right after a drain, the new colour (and Traefik)
# can be that busy with the reconnect storm: at 9,000 clients on a slow machine every 1 s
# poll timed out for 15 s, and the deploy failed a switch that had worked. Each such poll
# makes the next one wait twice as long, up to PATIENCE_CAP: a long wait delays the look at
# the new colour's processes (LOOK_EVERY) by as much.
SLOW_ANSWER = 0.25
PATIENCE_CAP = 8.0


def _lost(color: str, dead: dict[str, str]) -> str:
    return f"{color} lost processes after it was ready ({_listed(dead)})"


def _confirm(runtime: Runtime, color: str, timeout: float, any_death: bool = True) -> str:
    """Wait for Traefik to route to ``color`` (its /readyz through Traefik names it); "" once
    it does, else why not as soon as it is known: Traefik gone, ``color``'s processes that
    died (any one, or with ``any_death`` False only all of them: the rest may still be
    routed to), or ``timeout`` passed."""
    deadline = time.monotonic() + timeout
    look = 0.0
    patience: float | None = None  # the runtime's own short wait, until polls time out
    while True:
        asked = time.monotonic()
        if runtime.routed_color(patience) == color:
            return ""
        now = time.monotonic()
        if now - asked >= SLOW_ANSWER:  # no answer in time: the next poll waits twice as long
            patience = min(2 * (now - asked), PATIENCE_CAP, max(deadline - now, SLOW_ANSWER))
        if now >= look:
            edge = runtime.edge_down()
            if edge:
                return edge
            dead = runtime.dead(color)
            if dead and (any_death or len(dead) == len(runtime.members(color))):
                return _lost(color, dead)
            look = now + LOOK_EVERY
        if now > deadline:
            return f"Traefik did not route to {color} within {timeout:.0f}s"
        time.sleep(0.01)


def _not_serving(runtime: Runtime, color: str, timeout: float) -> str:
    """Why ``color`` does not serve now ("" if it does): a process of it is dead, or
    Traefik does not route to it within ``timeout``."""
    dead = runtime.dead(color)
    if dead:
        return _listed(dead)
    return _confirm(runtime, color, timeout)


def _check_serving(runtime: Runtime, color: str, old: str | None, timeout: float) -> None:
    """DeployError if ``color``, switched to and ``old`` stopped, has lost processes since it
    was ready, or Traefik no longer routes to it: ready once is not serving now, and a
    report of success would leave nothing serving."""
    dead = runtime.dead(color)
    if dead:
        down = _listed(dead)
        serving = ("nothing serves" if len(dead) == len(runtime.members(color))
                   else f"{color} serves on fewer processes")
        raise DeployError(f"switched to {color} and stopped {old or 'nothing'}, but {color} lost processes "
                          f"since it was ready: {down}; {serving}. {runtime.repair_hint}")
    why = _confirm(runtime, color, timeout)
    if why:
        raise DeployError(f"switched to {color} and stopped {old or 'nothing'}, but {why}")


def interrupted(runtime: Runtime, color: str, old: str | None, switched_to: str | None, confirmed: bool,
                old_now: str) -> Interrupted:
    """The error for a deploy stopped by a signal, having cleaned up what is safe to."""
    if switched_to == color and confirmed:
        return Interrupted(f"interrupted after the switch: {color} serves ({runtime.record}); "
                           f"{old or 'nothing'} may still run, undrained or draining: "
                           f"deploy {color} again to finish (it drains {old or 'nothing'})")
    if switched_to == color:
        # Written is not confirmed: the new colour may have died since its readiness.
        return Interrupted(f"interrupted after the switch to {color} was written, before the deploy "
                           f"confirmed it: {color} is routed ({runtime.record}) but not known to serve; "
                           f"{old or 'nothing'} still runs, undrained: deploy {color} again to finish (it "
                           f"checks {color} first: it drains {old or 'nothing'} only if Traefik routes to a "
                           f"live {color}, else switches back)")
    with signals_held():  # a second Ctrl-C must not leave fresh processes running unrouted
        runtime.abandon(color)
    if switched_to is not None:  # the switch went out, was not confirmed, and was undone
        return Interrupted(f"interrupted during the rollback: Traefik did not confirm {color}, the "
                           f"switch was undone ({switched_to} is routed again), {old_now}; "
                           f"{color}'s new processes were stopped")
    return Interrupted(f"interrupted before the switch: nothing was switched, {old_now}; "
                       f"{color}'s new processes were stopped")


def failed(runtime: Runtime, color: str, old: str | None, switched_to: str | None, old_now: str,
           exc: Exception) -> Exception:
    """The error for a deploy stopped by an unexpected exception: the new colour's processes
    stopped and forgotten unless it is routed (nothing else would: a process the stack does
    not record holds its colour's port for good and outlives ``stack down``). An OSError (a
    full disk) becomes a DeployError saying what was left; anything else is returned as it is."""
    # The live record, not ``switched_to``: a record written after the switch may be what failed.
    if switched_to == color or runtime.active() == color:
        if not isinstance(exc, OSError):
            return exc
        return DeployError(f"the switch to {color} was written, then the deploy failed: {exc}; {color} is "
                           f"routed, {old or 'nothing'} may still run: deploy {color} again to finish (it "
                           f"drains {old or 'nothing'} only if Traefik routes to a live {color}, else "
                           f"switches back)")
    with signals_held():  # a Ctrl-C now must not leave them running either
        try:
            runtime.abandon(color)
        except OSError:
            # They were stopped before the record's write that failed; a record still naming
            # them is harmless: a dead process is never taken for a live one (pid and start time).
            pass
    if not isinstance(exc, OSError):
        return exc
    undone = "nothing was switched" if switched_to is None else f"{switched_to} is routed again"
    return DeployError(f"{color} was not deployed: {exc}; {color}'s new processes were stopped, {undone}, "
                       f"{old_now}")


def summary(outcomes: dict[str, str]) -> str:
    """One line for the report from each process's outcome: the outcome itself when all
    share it, else each named."""
    if len(set(outcomes.values())) == 1:
        return next(iter(outcomes.values()))
    return "; ".join(f"{name} {outcome}" for name, outcome in outcomes.items())


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


def _stop(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


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
        from scripts.stack_state import StackState, resolve_dir

        state = StackState.load(resolve_dir(args.state_dir))
        if args.processes not in (None, state.processes):
            from scripts.stack import resize_advice

            raise SystemExit(f"nothing was deployed: {resize_advice(state, args.processes)}")
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
    errors: tuple[type[Exception], ...] = (DeployError, ComposeError, traefik_config.ConfigProblem, Busy)
    lock: AbstractContextManager[None]
    if args.runtime == "local":
        from scripts.stack_state import StackError, locked, resolve_dir

        errors += (StackError,)
        lock = locked(resolve_dir(args.state_dir), f"deploy {args.color}")
    else:
        # Two compose deploys at once would each take the other's new colour for a leftover
        # and stop it: the lock lives beside the live routing they both write (in its staging
        # directory, which Traefik does not watch).
        lock = locked_dir(Path(args.dynamic_dir).resolve() / traefik_config.STAGING_DIR,
                          f"deploy {args.color}", owner="the live routing")
    previous = {sig: signal.signal(sig, _stop) for sig in STOP_SIGNALS}
    try:
        with lock:
            report = deploy(build_runtime(args), args.color)
    except KeyboardInterrupt:  # before the deploy began or after it ended: nothing half-done
        print(json.dumps({"ok": False, "to": args.color, "error": "interrupted"}))
        print("deploy: interrupted", file=sys.stderr)
        return 130
    except errors as exc:
        print(json.dumps({"ok": False, "to": args.color, "error": str(exc)}))
        print(f"deploy: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, Refused) else 130 if isinstance(exc, Interrupted) else 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print(table(["from", "to", "old", "ready s", "switch s", "drain s", "total s"],
                [[report["from"], report["to"], report["old"], *(f"{report[key]:.3f}" for key in
                  ("time_to_ready_s", "switch_latency_s", "drain_s", "total_s"))]]), file=sys.stderr)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
