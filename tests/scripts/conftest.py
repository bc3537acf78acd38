"""Fixtures of the operator scripts' tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from scripts.stack import StackState


@pytest.fixture
def two_process_stack(tmp_path: Path) -> Iterator[StackState]:
    """The local stack with two app processes per colour (blue and blue.1 serve)."""
    from scripts.stack import down, up

    directory = tmp_path / "stack2"
    try:
        yield up(directory, "blue", processes=2)
    finally:
        down(directory)
