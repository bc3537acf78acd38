"""The local stack's record (``state.json``), its directory and its lock: what every script
that drives the stack (scripts/stack.py, the local runtime, the benchmarks) reads."""

from __future__ import annotations

import json
import os
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tools import ROOT, lock, traefik_config
from tools.procs import Proc

DEFAULT_DIR = ROOT / ".stack"
STATE_ENV = "PARLEY_STACK_DIR"
STATE_FILE = "state.json"


class StackError(RuntimeError):
    """The stack cannot do what was asked; the message says why."""


class StackBusy(StackError):
    """Another deploy or ``stack up``/``down`` holds the stack's lock: nothing was done."""


def locked(directory: Path, what: str) -> AbstractContextManager[None]:
    """Hold the stack's exclusive lock (``DIR`` itself, tools/lock.py) for the block; StackBusy
    at once, naming the holder, if another process holds it."""
    return lock.locked(directory, what, owner="the stack", busy=StackBusy)


def resolve_dir(arg: str | None) -> Path:
    """``--state-dir``, else ``$PARLEY_STACK_DIR``, else ``.stack/`` in the repository."""
    chosen = arg or os.environ.get(STATE_ENV) or str(DEFAULT_DIR)
    return Path(chosen).resolve()


@dataclass
class StackState:
    """What ``state.json`` records; every script that drives the stack reads it from here."""

    dir: Path
    ports: dict[str, int]
    active: str
    procs: dict[str, Proc] = field(default_factory=dict)
    app_env: dict[str, str] = field(default_factory=dict)
    processes: int = 1  # app processes per colour
    cluster_url: str = ""  # REDIS_URL of the stack's Redis Cluster, when it runs one
    restarted: list[str] = field(default_factory=list)  # what `up` restarted (not saved)
    rewritten: dict[str, str] = field(default_factory=dict)  # what `up` rewrote, and why (not saved)
    notes: list[str] = field(default_factory=list)  # what `up` did not do as asked, and why (not saved)

    @property
    def redis_url(self) -> str:
        return self.cluster_url or f"redis://127.0.0.1:{self.ports['redis']}/0"

    def members(self, color: str) -> list[str]:
        """Names (in ``procs`` and ``ports``) of a colour's processes: ``blue``, ``blue.1``..."""
        return [color, *(f"{color}.{i}" for i in range(1, self.processes))]

    def color_urls(self, color: str) -> list[str]:
        """The addresses of a colour's processes."""
        return [traefik_config.local_url(self.ports[name]) for name in self.members(color)]

    def redis_names(self) -> list[str]:
        """The names of the stack's Redis processes: ``redis``, or the cluster's nodes."""
        return [name for name in self.procs if name == "redis" or name.startswith("redis-node-")]

    @property
    def web_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['web']}"

    @property
    def ops_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['ops']}"

    def app_url(self, color: str) -> str:
        return traefik_config.local_url(self.ports[color])

    def app_urls(self) -> dict[str, list[str]]:
        """Every colour's addresses: the live routing names both (one probe router each)."""
        return {color: self.color_urls(color) for color in traefik_config.COLORS}

    @property
    def dynamic_file(self) -> Path:
        return self.dir / "traefik" / "dynamic" / traefik_config.ACTIVE_FILE_NAME

    def log(self, name: str) -> Path:
        return self.dir / "logs" / f"{name}.log"

    def save(self) -> None:
        data = asdict(self)
        data["dir"] = str(self.dir)
        del data["restarted"], data["rewritten"], data["notes"]
        traefik_config.atomic_write(self.dir / STATE_FILE, json.dumps(data, indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path) -> StackState:
        path = directory / STATE_FILE
        if not path.exists():
            raise StackError(f"no local stack in {directory}: run `make stack` first")
        data = json.loads(path.read_text())
        return cls(
            dir=directory,
            ports=data["ports"],
            # The live dynamic file is what Traefik routes to: it wins over a record that a
            # deploy killed between its switch and its save did not update.
            active=routed_record(directory / "traefik" / "dynamic" / traefik_config.ACTIVE_FILE_NAME)
            or data["active"],
            procs={name: Proc(**proc) for name, proc in data["procs"].items()},
            app_env=data.get("app_env", {}),
            processes=data.get("processes", 1),
            cluster_url=data.get("cluster_url", ""),
        )


def routed_record(dynamic_file: Path) -> str | None:
    """The colour the live dynamic file routes to (Traefik applies it within milliseconds),
    or None when there is none or it names no single colour."""
    try:
        return traefik_config.active_color(dynamic_file.read_text())
    except (OSError, traefik_config.ConfigProblem):
        return None
