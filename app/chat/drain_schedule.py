"""When each batch of a spread drain closes: pure arithmetic, no clock, no sockets.

Closing every socket at once sends every client to the new colour within the client's own
restart jitter: a reconnect storm there. Spreading the closes over a few seconds (AnyCable's
"slow drain") lets the new colour admit them at the rate it can, at the price of the last
clients moving that much later.
"""

from __future__ import annotations

import math

BATCH_INTERVAL = 0.1  # seconds between batches: fine enough that a batch is a small burst


def schedule(count: int, spread: float, interval: float = BATCH_INTERVAL) -> list[tuple[float, int]]:
    """``(offset in seconds from the first batch, sockets in the batch)`` for ``count``
    sockets over ``spread`` seconds, batches ``interval`` apart, sizes differing by at most
    one (larger first); one batch at 0 when ``spread`` is 0. The last batch starts at
    ``spread`` at the latest, and the sizes add up to ``count``."""
    if count <= 0:
        return []
    batches = min(count, 1 + math.floor(max(spread, 0.0) / interval + 1e-9))
    size, extra = divmod(count, batches)
    return [(round(i * interval, 6), size + (1 if i < extra else 0)) for i in range(batches)]
