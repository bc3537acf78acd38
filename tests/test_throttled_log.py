"""Throttled log lines: the first at once, then one per interval saying how many were held."""

from __future__ import annotations

import logging

import pytest

from app.throttled_log import Throttled

pytestmark = pytest.mark.unit


def test_a_flood_is_one_line_per_interval_counting_the_rest(caplog: pytest.LogCaptureFixture) -> None:
    throttled = Throttled(logging.getLogger("parley.test"), interval=3600)
    with caplog.at_level(logging.INFO, logger="parley.test"):
        for n in range(5):
            throttled.warning("storage", "refused %d", n)
        throttled.info("other", "a key of its own")
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.WARNING, "refused 0"), (logging.INFO, "a key of its own"),
    ]
    throttled._next["storage"] = 0.0  # the interval is over
    with caplog.at_level(logging.INFO, logger="parley.test"):
        throttled.warning("storage", "refused %d", 5)
    assert caplog.records[-1].getMessage() == "refused 5 (and 4 more like it in the last 3600s)"
    assert caplog.records[-1].levelno == logging.WARNING
