"""The Prometheus metrics, all prefixed ``chat_``. Loaded through ``app.metrics``."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Iterator

from prometheus_client import REGISTRY, Counter, Gauge, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from app.metrics import CUTS

disable_created_metrics()

# The process points this at its socket registry (app.process.warmup): read at scrape time
# rather than counted up and down beside it, so it cannot drift from the sockets held.
CONNECTIONS_OPEN = Gauge("chat_connections_open", "Chat WebSockets open now")
CONNECTIONS_OPENED = Counter("chat_connections_opened", "Chat WebSockets accepted")
CONNECTIONS_CLOSED = Counter("chat_connections_closed", "Chat WebSockets closed", ["code"])
HANDSHAKES_REFUSED = Counter(
    "chat_handshakes_refused", "WebSocket handshakes refused", ["reason"]
)
MESSAGES_RECEIVED = Counter("chat_messages_received", "Chat messages accepted from clients")
MESSAGES_BROADCAST = Counter("chat_messages_broadcast", "Chat messages recorded and broadcast")
GAPS_FILLED = Counter("chat_gaps_filled", "Live-stream holes filled from history")
RESETS = Counter("chat_resets", "Members reset to a room's new epoch (its ids started over)")
PRESENCE_REPAIRS = Counter(
    "chat_presence_repairs",
    "Repair presence frames sent: to a room's members here after announcements were lost, "
    "or to those a frame was dropped for",
)
FRAMES_REJECTED = Counter("chat_frames_rejected", "Client frames refused", ["reason"])
STARTUP_SECONDS = Gauge("chat_startup_seconds", "Seconds from process start to ready")
DRAIN_SECONDS = Gauge("chat_drain_seconds", "Seconds the last graceful drain took")
READY = Gauge("chat_ready", "1 when /readyz answers 200")
SLOW_CLIENTS = Counter("chat_slow_clients", "Clients closed for not reading (1008 slow)")
RATE_LIMITED = Counter("chat_rate_limited", "Frames refused by the per-connection rate limit")
TASKS = Gauge("chat_asyncio_tasks", "asyncio tasks alive in the server's event loop")
TASKS.set_function(lambda: len(asyncio.all_tasks()) if _loop_running() else 0)


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


# Close codes counted under their own label: RFC 6455's (1000-1015) and Parley's 4001 (token
# expired). A client may close with any of ~4,000 others; each would be a series for good.
NAMED_CLOSE_CODES = frozenset((*range(1000, 1016), 4001))


@functools.lru_cache(maxsize=64)
def closed(code: int) -> Counter:
    """The ``chat_connections_closed`` child for a close code (label lookups are not free):
    ``other`` for a code outside ``NAMED_CLOSE_CODES``."""
    return CONNECTIONS_CLOSED.labels(str(code) if code in NAMED_CLOSE_CODES else "other")


class Tally:
    """Plain counters for the per-delivery hot path (a prometheus Counter takes a lock)."""

    deliveries = 0


TALLY = Tally()


class _TallyCollector(Collector):
    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "chat_deliveries", "Message frames sent to clients (live and replayed)",
            value=TALLY.deliveries,
        )
        cut = CounterMetricFamily(
            "chat_connections_cut",
            "Connections cut: request late or head oversize, or answer left unread",
            labels=["reason"],
        )
        for reason, count in sorted(CUTS.items()):
            cut.add_metric([reason], count)
        yield cut


REGISTRY.register(_TallyCollector())
