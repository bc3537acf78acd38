"""Core pinning for benchmarks: off unless asked, and then server and client apart."""

from __future__ import annotations

import os

import pytest

from tools import pinning

pytestmark = pytest.mark.unit


def test_off_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PARLEY_BENCH_PIN", raising=False)
    assert pinning.plan() is None
    assert pinning.server_command(["python", "-m", "app"]) == ["python", "-m", "app"]


def test_when_asked_the_server_and_the_client_get_different_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARLEY_BENCH_PIN", "1")
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        pytest.fail("this test needs a machine with two cores or more")
    plan = pinning.plan()
    assert plan == {"server": cores[:1], "client": cores[1:]}
    assert pinning.server_command(["x"]) == ["taskset", "-c", str(cores[0]), "x"]
