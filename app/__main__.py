"""``python -m app``: run the chat service on uvicorn. ``python -m app token ...``: mint a JWT."""

from __future__ import annotations

import logging
import os
import sys


def main(argv: list[str]) -> int:
    if argv[:1] == ["token"]:
        from app.chat.tokens import main as token_main

        return token_main(argv[1:])
    try:
        from app.config import CONFIG
    except ValueError as exc:  # ConfigError: say what is wrong, don't print a traceback
        print(f"parley: configuration error: {exc}", file=sys.stderr)
        return 2
    from app.asgi import application
    from app.process import server

    status = server.run(CONFIG, application)
    # Every socket and Redis connection is closed by now. Skip the interpreter's teardown,
    # which with thousands of connection objects to collect can take longer than the drain.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
