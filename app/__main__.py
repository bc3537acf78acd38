"""``python -m app``: run the chat service on uvicorn. ``python -m app token ...``: mint a JWT."""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    if argv[:1] == ["token"]:
        from app.tokens import main as token_main

        return token_main(argv[1:])
    try:
        from app.config import CONFIG
    except ValueError as exc:  # ConfigError: say what is wrong, don't print a traceback
        print(f"parley: configuration error: {exc}", file=sys.stderr)
        return 2
    from app import server
    from app.asgi import application

    return server.run(CONFIG, application)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
