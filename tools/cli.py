"""The measuring scripts' shared ``main``: parse, measure, print table and JSON, exit status."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from tools.pinning import pin_client
from tools.report import emit
from tools.targets import NotLoopback


def main(name: str, argv: list[str] | None,
         parse_args: Callable[[list[str] | None], argparse.Namespace],
         run: Callable[[argparse.Namespace], dict[str, Any]],
         render: Callable[[dict[str, Any]], str]) -> int:
    """0 when the result is ok, 1 when it is not, 2 when the target was refused."""
    args = parse_args(argv)
    pin_client()
    try:
        result = run(args)
    except NotLoopback as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 2
    emit(result, render(result), args.json)
    return 0 if result["ok"] else 1
