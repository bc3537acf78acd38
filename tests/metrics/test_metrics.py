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


@pytest.mark.unit
def test_close_codes_a_client_picks_are_one_series() -> None:
    # A client chooses its close code (3000-4999 are free): one series per code it picks
    # was a series for good, 2,000 of them from 2,000 clients (a hostile probe).
    from app.metrics import prometheus

    for code in (3000, 4321, 4999):
        prometheus.closed(code).inc()
    prometheus.closed(1012).inc()
    labels = {labels for labels, _ in prometheus.CONNECTIONS_CLOSED._metrics.items()}
    assert ("other",) in labels and ("1012",) in labels
    assert not labels & {("3000",), ("4321",), ("4999",)}
