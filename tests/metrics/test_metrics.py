"""The metrics stand-in: nothing imported until asked, then plain attributes."""

from __future__ import annotations

import pytest

from tests.support import run_python


def test_metrics_load_on_first_use_and_then_are_plain_attributes() -> None:
    code = (
        "import sys; from app import metrics; "
        "assert 'prometheus_client' not in sys.modules; "
        "counter = metrics.MESSAGES_RECEIVED; "
        "assert 'prometheus_client' in sys.modules; "
        "assert 'MESSAGES_RECEIVED' in vars(metrics) and metrics.TALLY.deliveries == 0; "
        "print('ok')"
    )
    out = run_python(code)
    assert out.stdout.strip() == "ok", out.stderr


@pytest.mark.unit
def test_an_unknown_metric_is_an_attribute_error() -> None:
    from app import metrics

    with pytest.raises(AttributeError):
        metrics.NO_SUCH_METRIC  # noqa: B018
