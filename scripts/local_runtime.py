"""The local stack's colours as a deploy's runtime: processes on loopback (scripts/stack.py).

The stack's module (psutil, the process tools) is imported inside the methods: a compose
deploy, which never builds this runtime, starts ~30 ms sooner without it.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from scripts.runtime import READY_TIMEOUT, DeployError
from tools import traefik_config

if TYPE_CHECKING:
    from scripts.stack_state import StackState
    from tools.procs import Proc


class LocalRuntime:
    """The colours as processes of the local stack (scripts.stack), on loopback."""

    name = "local"
    record = "Traefik's file and state.json agree"
    drain_over = True  # stop() waits for every process to end

    def __init__(self, state: StackState, app_env: dict[str, str] | None = None,
                 ready_timeout: float = READY_TIMEOUT) -> None:
        self.state = state
        self.app_env = app_env or {}
        self.ready_timeout = ready_timeout
        self.drain_failed = ""
        self.notes: dict[str, Any] = {}
        self.per_process: dict[str, str] = {}
        self.before: dict[str, str] = {}  # each old process before the deploy: serves() says

    def active(self) -> str:
        return self.state.active  # the live dynamic file's colour (StackState.load)

    def serves(self, color: str) -> bool:
        """Ask each of the colour's processes itself: dead, not answering, draining (it got
        SIGTERM: its 503 says so) or answering (a round robin through Traefik would pick one
        at random)."""
        from tools.net import http_get

        for name in self.state.members(color):
            if not self._running(name):
                self.before[name] = "dead"
                continue
            url = traefik_config.local_url(self.state.ports[name]) + traefik_config.READY_PATH
            status, body = http_get(url, timeout=1.0)
            self.before[name] = ("answering" if status == 200 else
                                 "draining" if status == 503 and _reason(body) == "draining" else
                                 "not answering")
        return "answering" in (self.before.get(name) for name in self.state.members(color))

    def _running(self, name: str) -> bool:
        proc = self.state.procs.get(name)
        return proc is not None and proc.alive()

    def lingers(self, color: str) -> bool:
        return any(self._running(name) for name in self.state.members(color))

    repair_hint = "`make stack` restarts them in place"

    def edge_down(self) -> str:
        from scripts.stack import last_words

        traefik = self.state.procs.get("traefik")
        if traefik is not None and traefik.alive():
            return ""
        return (f"Traefik is not running ({last_words(self.state, 'traefik')}): nothing reaches either "
                f"colour; `make stack` restarts it in place")

    def members(self, color: str) -> list[str]:
        return self.state.members(color)

    def dead(self, color: str) -> dict[str, str]:
        from scripts.stack import last_words

        return {name: f"exited ({last_words(self.state, name)})" for name in self.state.members(color)
                if not self._running(name)}

    def start(self, color: str) -> None:
        from scripts.stack import drain, start_app, wait_app_ready
        from scripts.stack_state import StackError, routed_record

        if routed_record(self.state.dynamic_file) == color:
            raise DeployError(f"Traefik routes to {color}: its processes are not to be replaced")
        # A process of this colour still running holds its port: one draining from the
        # deploy before gets its own drain budget to finish (a second SIGTERM does not
        # cut it short), one left running by an interrupted deploy drains now.
        alive = [name for name in self.state.members(color)
                 if name in self.state.procs and self.state.procs[name].alive()]
        if alive:
            self.notes["stopped_first"] = drain(self.state, alive)
        self._take(color)
        start_app(self.state, color, self.app_env)
        try:
            wait_app_ready(self.state, color, self.ready_timeout)
        except StackError as exc:
            raise DeployError(str(exc)) from None

    def _take(self, color: str) -> list[Proc]:
        """Remove every process of ``color`` from the stack's record; the removed ones."""
        return [self.state.procs.pop(name) for name in self.state.members(color) if name in self.state.procs]

    def abandon(self, color: str) -> None:
        from tools.termination import stop_together

        stop_together(self._take(color))
        self.state.save()

    def switch(self, color: str) -> None:
        traefik_config.write_watched(
            self.state.dynamic_file,
            traefik_config.render_dynamic(color, self.state.app_urls()),
        )

    def routed_color(self, timeout: float | None = None) -> str | None:
        from scripts.stack import traefik_color

        return traefik_color(self.state, timeout or 1.0)

    def stop(self, color: str) -> bool:
        """Drain the colour's live processes at once; ``per_process`` says what became of
        each, by what it was before the deploy (``serves``): ``already gone`` (dead then),
        ``stopped, was not answering``, or its drain's outcome (also for one draining
        already: its 503 was no failure to answer). False if none was left."""
        from scripts.stack import drain

        names = [name for name in self.state.members(color)
                 if name in self.state.procs and self.state.procs[name].alive()]
        outcomes = drain(self.state, names) if names else {}  # all of the colour drain at once
        self._take(color)
        self.state.save()
        for name in self.state.members(color):
            before = self.before.get(name, "answering")
            if before == "dead":
                self.per_process[name] = "already gone"
            elif name not in outcomes:
                self.per_process[name] = (
                    "ended its drain on its own during the deploy" if before == "draining"
                    else "ended during the deploy, before its drain (see its log)")
            elif before == "not answering":
                self.per_process[name] = "stopped, was not answering"
            else:
                self.per_process[name] = outcomes[name]
        self.drain_failed = "; ".join(f"{name} {outcome}" for name, outcome in self.per_process.items()
                                      if outcome != "drained")
        return bool(names)  # False: killed or crashed, its clients were cut off, not drained

    def record_active(self, color: str) -> None:
        self.state.active = color
        self.state.save()


def _reason(body: bytes) -> str:
    """The ``reason`` of a /readyz answer, or ""."""
    try:
        found = json.loads(body).get("reason", "")
    except (ValueError, AttributeError):
        return ""
    return found if isinstance(found, str) else ""
