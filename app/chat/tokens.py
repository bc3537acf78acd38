"""``python -m app token --sub alice --room lobby --ttl 3600``: mint a chat token."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m app token", description=__doc__)
    parser.add_argument("--sub", required=True, help="the user the token speaks for")
    parser.add_argument("--room", action="append", default=[],
                        help="a room it may join (repeat; '*' for every room)")
    parser.add_argument("--ttl", type=int, default=3600, help="seconds until it expires")
    args = parser.parse_args(argv)
    try:
        from app.config import CONFIG
    except ValueError as exc:
        print(f"parley: configuration error: {exc}", file=sys.stderr)
        return 2
    if not CONFIG.jwt_secret:
        print("parley: set CHAT_JWT_SECRET to mint tokens", file=sys.stderr)
        return 2
    if not args.room:
        parser.error("name at least one --room (or --room '*')")
    from app.chat.auth import mint

    rooms: list[str] | str = "*" if args.room == ["*"] else args.room
    print(mint(args.sub, rooms, args.ttl, CONFIG.jwt_secret, audience=CONFIG.jwt_audience))
    return 0
