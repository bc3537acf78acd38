"""Parley's tooling, shared by ``scripts/`` (the command-line tools) and ``tests/``.

Nothing here is part of the chat service: it starts, drives and measures it. The real
processes a test or a benchmark needs (``procs``: redis-server, ``python -m app``, any
long-lived child), loopback helpers (``net``), the lean load client (``wsclient``) and the
swarm of clients built on it (``swarm``; ``cutover_clients`` are its clients that reconnect
and resume across a deploy), what a measurement targets (``targets``), how results are
reported (``report``, ``cli``, ``pinning``, ``cpu_sampler``) and the blue/green Traefik files
(``traefik_config``). Scripts and tests import from here; scripts never import tests, and
nothing edits ``sys.path``: run everything from the repository root (``python -m scripts.x``).
"""

from __future__ import annotations

from pathlib import Path

# The repository root: the working directory of every process the tools start.
ROOT = Path(__file__).resolve().parent.parent
