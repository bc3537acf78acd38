"""Everything between "listening" and "ready", done off the probes' path.

Order: Django and the chat stack (in a thread, so /healthz keeps answering), one round trip
through the channel layer and history (retried with backoff while Redis is away), ready,
then the Django HTTP app, which no probe needs.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable, Iterator

from app import metrics
from app.chat.registry import REGISTRY
from app.chat.serial import IN_SEND
from app.chat.services import ChatServices
from app.chat.tail import TailWatcher
from app.chat.watchdog import SlowClientWatchdog
from app.config import Config
from app.process import wiring
from app.process.lifecycle import PROCESS_STARTED_AT, Lifecycle

logger = logging.getLogger("parley")

CHECK_TIMEOUT = 2.0
MONITOR_INTERVAL = 1.0
TAIL_INTERVAL = 1.0


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"redis unavailable: {text}"[:200]


def _backoff() -> Iterator[float]:
    """The waits between retries: 50 ms, doubling, at most 2 s."""
    delay = 0.05
    while True:
        yield delay
        delay = min(delay * 2, 2.0)


async def until_answering(chat: ChatServices, lifecycle: Lifecycle) -> None:
    """Retry the services check with capped exponential backoff until it passes."""
    for delay in _backoff():
        try:
            await chat.check(CHECK_TIMEOUT)
            return
        except Exception as exc:  # any failure of the layer or history keeps us unready
            if lifecycle.draining:
                return  # nothing will be ready for: the drain ends warm-up
            lifecycle.set_unavailable(_describe(exc))
            logger.warning("not ready: %s; retrying in %.2fs", _describe(exc), delay)
            await asyncio.sleep(delay)


async def load_metrics(load: Callable[[], object]) -> None:
    """Run ``load`` (the metrics' import) in a thread, retrying with backoff while it fails
    for want of a descriptor. A flood of sockets right after ready can take every one before
    the import has opened its files (EMFILE); once they are cut it succeeds. Failing instead
    ended warm-up: /readyz stayed 503 and the watchers below never started."""
    for delay in _backoff():
        try:
            await asyncio.to_thread(load)
            return
        except OSError as exc:
            logger.warning("metrics not loaded: %s; retrying in %.2fs", exc, delay)
            await asyncio.sleep(delay)


async def monitor(chat: ChatServices, lifecycle: Lifecycle) -> None:
    """While running with Redis, keep /readyz honest about whether chat would work."""
    while not lifecycle.draining:
        await asyncio.sleep(MONITOR_INTERVAL)
        try:
            await asyncio.wait_for(chat.history.ping(), CHECK_TIMEOUT)
        except Exception as exc:
            if lifecycle.ready:
                logger.warning("lost Redis: %s", str(exc) or type(exc).__name__)  # a timeout has no text
            lifecycle.set_unavailable(_describe(exc))
            metrics.READY.set(0)
        else:
            if not lifecycle.ready and not lifecycle.draining:
                logger.info("Redis is back; ready again")
                lifecycle.set_ready()
                metrics.READY.set(1)


async def warm_up(
    config: Config,
    lifecycle: Lifecycle,
    on_loaded: Callable[[wiring.Wired], object],
    on_ready: Callable[[], object],
) -> None:
    """Bring the process to ready, call ``on_ready``, then keep readiness truthful."""
    wired = await asyncio.to_thread(wiring.load, config)
    on_loaded(wired)
    chat = wired.chat
    chat.order_broadcasts()  # per event loop: this one, not the loader's thread
    await until_answering(chat, lifecycle)
    if lifecycle.draining:
        return
    lifecycle.set_ready()
    elapsed = (lifecycle.ready_at or time.time()) - PROCESS_STARTED_AT
    await load_metrics(metrics.load)  # after ready: no probe needs prometheus-client
    metrics.CONNECTIONS_OPEN.set_function(REGISTRY.__len__)
    # Everything loaded so far lives as long as the process: keep collections off it.
    gc.freeze()
    metrics.STARTUP_SECONDS.set(elapsed)
    metrics.READY.set(1)
    logger.info("ready in %.3fs (color=%s, layer=%s)", elapsed, config.color,
                type(chat.layer).__name__)
    on_ready()
    try:  # after ready: a check of the store's setup is nothing a probe waits for
        for warning in await asyncio.wait_for(chat.history.setup_warnings(), CHECK_TIMEOUT):
            logger.warning("%s", warning)
    except TimeoutError:
        pass
    # These loops live as long as this task; lifespan shutdown cancels it, and so them.
    watcher = TailWatcher(REGISTRY, chat.history, TAIL_INTERVAL)
    loops = [watcher.run(), SlowClientWatchdog(REGISTRY, config.send_timeout, IN_SEND).run()]
    if config.redis_enabled:
        loops.append(monitor(chat, lifecycle))
    if chat.presence is not None:
        loops.append(chat.presence.run())
    await asyncio.gather(*loops)
