"""What a deploy asks of the place its colours run (``Runtime``), and how it fails.

scripts/deploy.py runs one procedure for every runtime: the local stack's processes
(scripts/local_runtime.py) or compose's containers (scripts/compose_runtime.py).
"""

from __future__ import annotations

from typing import Any, Protocol

READY_TIMEOUT = 60.0
CONFIRM_TIMEOUT = 15.0


class DeployError(RuntimeError):
    """The deploy stopped; the message says why and what still serves."""


class Refused(DeployError):
    """The deploy was not attempted (the target colour already serves)."""


class Interrupted(DeployError):
    """A signal stopped the deploy; the message says what it left and what to run."""


class Runtime(Protocol):
    """Where the colours run. The procedure in ``deploy`` is the same for every runtime."""

    name: str
    record: str  # where the active colour is recorded, for the operator (an interrupt's message)

    def active(self) -> str | None: ...  # None: nothing deployed yet (first start)
    def serves(self, color: str) -> bool: ...  # asked before anything changes
    def dead(self, color: str) -> dict[str, str]: ...  # the colour's processes not running, and how
    def lingers(self, color: str) -> bool: ...  # processes (containers) of an unrouted colour still run
    def members(self, color: str) -> list[str]: ...  # the colour's process (replica) names
    repair_hint: str  # what an operator runs when the new colour lost processes
    def edge_down(self) -> str: ...  # why Traefik reaches no colour now, with the way out ("": it can)
    def start(self, color: str) -> None: ...
    def abandon(self, color: str) -> None: ...
    def switch(self, color: str) -> None: ...
    def routed_color(self, timeout: float | None = None) -> str | None: ...  # None: its own short wait
    def stop(self, color: str) -> bool: ...  # False: nothing of that colour was left to stop
    def record_active(self, color: str) -> None: ...
    notes: dict[str, Any]  # runtime-specific facts for the report (image, build time)
    drain_over: bool  # after stop(): False if the old colour confirmed it drains, not done yet
    drain_failed: str  # after stop(): how a process of the old colour failed to drain, or ""
    per_process: dict[str, str]  # after stop(): what became of each old process ({}: not known)
