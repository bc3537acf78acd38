"""Warm-up's steps that can be shown without a process."""

from __future__ import annotations

import errno

import pytest

from app.process.warmup import load_metrics

pytestmark = pytest.mark.unit


async def test_loading_the_metrics_is_retried_while_descriptors_run_out() -> None:
    # A flood right after ready can take every descriptor before the metrics are imported;
    # the import fails with EMFILE until the flood is cut, and warm-up must outlast that.
    attempts: list[int] = []

    def load() -> None:
        attempts.append(1)
        if len(attempts) < 3:
            raise OSError(errno.EMFILE, "Too many open files")

    await load_metrics(load)
    assert len(attempts) == 3


async def test_a_metrics_import_that_cannot_succeed_is_not_retried() -> None:
    def load() -> None:
        raise ImportError("no prometheus_client")

    with pytest.raises(ImportError):
        await load_metrics(load)
