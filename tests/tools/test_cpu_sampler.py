"""tools.cpu_sampler against real processes: one that spins, one that sleeps."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from tools.cpu_sampler import CpuSampler, wait_until_quiet


def _python(code: str) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen([sys.executable, "-c", code])
    yield process
    process.kill()
    process.wait()


@pytest.fixture
def spinner() -> Iterator[subprocess.Popen[bytes]]:
    yield from _python("while True: pass")


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    yield from _python("import time; time.sleep(60)")


def test_a_busy_process_is_never_quiet(spinner: subprocess.Popen[bytes]) -> None:
    assert wait_until_quiet([spinner.pid], below_pct=5, window=0.2, limit=1.0) == 1.0


def test_a_sleeping_process_is_quiet_after_one_window(sleeper: subprocess.Popen[bytes]) -> None:
    assert wait_until_quiet([sleeper.pid], below_pct=5, window=0.2, limit=5.0) < 5.0


def test_the_sampler_sees_the_busy_process_and_not_the_sleeping_one(
        spinner: subprocess.Popen[bytes], sleeper: subprocess.Popen[bytes]) -> None:
    with CpuSampler({"busy": [spinner.pid], "idle": [sleeper.pid]}, interval=0.1) as sampler:
        while sampler.samples < 5:
            time.sleep(0.05)  # polling the sampler's own count, not a guess at timing
    summary = sampler.summary()
    assert summary["busy"]["cpu_s"] > 0
    assert summary["idle"]["peak_pct"] < summary["busy"]["peak_pct"]


def test_a_phase_shorter_than_one_window_still_counts_its_cpu(spinner: subprocess.Popen[bytes]) -> None:
    # bench-cutover's fresh connect of 50 clients can end within one window: it read 0 CPU-s.
    from tools.cpu_sampler import total_cpu

    before = total_cpu([spinner.pid])
    with CpuSampler({"busy": [spinner.pid]}, interval=60.0) as sampler:
        while total_cpu([spinner.pid]) - before < 0.2:  # the spinner's own clock, not a guess
            time.sleep(0.01)
    assert sampler.samples == 0 and sampler.summary()["busy"]["cpu_s"] >= 0.05
