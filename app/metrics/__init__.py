"""The service's metrics, loaded after ready.

prometheus-client costs 30–50 ms to import, more than the rest of the chat path to ready
in some runs, and no probe needs it. So this module is a stand-in: ``load()`` (warm-up
calls it in a thread right after ready) imports ``app.metrics.prometheus`` and copies its
objects here, after which ``metrics.X`` is a plain attribute read. Anything that touches a
metric earlier loads them on the spot.
"""

from __future__ import annotations

import importlib
from typing import Any

# Connections cut before their request completed, by reason (``chat_connections_cut_total``):
# plain integers here rather than a Counter of the real metrics, because a cut must be
# counted without importing anything. A flood of stalled sockets right after ready can take
# every descriptor before prometheus-client is loaded, and an import needs descriptors
# (EMFILE): counting through the import made each cut raise before it closed its socket.
CUTS: dict[str, int] = {}


def load() -> None:
    """Import the metrics and make them attributes of this module (idempotent)."""
    implementation = importlib.import_module("app.metrics.prometheus")
    names = {name: value for name, value in vars(implementation).items() if not name.startswith("_")}
    globals().update(names)


def __getattr__(name: str) -> Any:
    load()
    try:
        return globals()[name]
    except KeyError:
        raise AttributeError(f"module 'app.metrics' has no attribute {name!r}") from None
