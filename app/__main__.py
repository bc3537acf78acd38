"""``python -m app``: run the chat service on uvicorn. ``python -m app token ...``: mint a JWT."""

from __future__ import annotations

import gc
import os
import signal
from types import FrameType

# CPython collects the youngest generation every 700 net allocations, and each connection
# holds a few hundred long-lived objects: at thousands of sockets, collections dominated a
# broadcast (measured: 74 µs → 35 µs of server CPU per delivery, no memory cost). Set before
# the imports: start-up allocates enough for ~3 % of its instructions to go to collections.
GC_THRESHOLDS = (50_000, 20, 100)


def _stop_before_serving(sig: int, frame: FrameType | None) -> None:
    # Nothing listens and nothing is held yet, so stopping now is a clean exit; without this,
    # SIGTERM during the imports below killed the process by the signal (status 143), and
    # Ctrl-C raised KeyboardInterrupt wherever the imports were (a traceback, status -2).
    os._exit(0)


# First, before the imports that make up most of start-up; uvicorn's own handlers replace
# this one once the server runs. Only as the entry point: importing this module changes nothing.
if __name__ == "__main__":
    # SIGINT first: Python catches it from the start (KeyboardInterrupt), so a caught
    # SIGTERM is what tells that both are ours.
    signal.signal(signal.SIGINT, _stop_before_serving)
    signal.signal(signal.SIGTERM, _stop_before_serving)
    gc.set_threshold(*GC_THRESHOLDS)

import logging  # noqa: E402 - after the handler on purpose: see above
import sys  # noqa: E402

USAGE = """\
usage: python -m app                 run the chat service (configured by environment variables)
       python -m app token --help    mint a JWT for CHAT_AUTH=jwt
       python -m app --help          print this help

Every setting is an environment variable (HOST, PORT, LOG_LEVEL, REDIS_URL, CHAT_*, SHUTDOWN_*):
see the configuration table in README.md. A bad value exits with status 2.
"""


def main(argv: list[str]) -> int:
    if argv[:1] == ["token"]:
        from app.chat.tokens import main as token_main

        return token_main(argv[1:])
    if argv[:1] in (["--help"], ["-h"]):
        print(USAGE, end="")
        return 0
    if argv:
        print(f"parley: unknown argument {argv[0]!r}\n{USAGE}", end="", file=sys.stderr)
        return 2
    try:
        from app.config import CONFIG
    except ValueError as exc:  # ConfigError: say what is wrong, don't print a traceback
        print(f"parley: configuration error: {exc}", file=sys.stderr)
        return 2
    from app.asgi import application
    from app.process import server

    log = logging.getLogger("parley")
    try:
        status = server.run(CONFIG, application)
    except SystemExit as exc:  # uvicorn's own exit: 3 when it cannot bind
        status = exc.code if isinstance(exc.code, int) else 1
    except Exception:
        log.exception("the server failed")
        status = 1
    if status:
        # Said in the log for whoever stopped it: a deploy reads it to report a failed drain.
        log.error("exiting with status %d", status)
    # Every socket and Redis connection is closed by now. Skip the interpreter's teardown,
    # which with thousands of connection objects to collect can take longer than the drain.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
