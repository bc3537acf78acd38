"""CPU use of a few processes, sampled in a background thread: the peak and the total.

A peak is the busiest sampling window (``interval`` seconds), in percent of one core, so
a process using both cores of a 2-core machine reads 200 %. Processes that end while
sampled (the old colour, after its drain) simply stop contributing.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from tools.targets import usage


def total_cpu(pids: list[int]) -> float:
    """CPU seconds the processes have used; one that is gone reads nothing (what it used is
    counted up to its last reading by whoever read it before)."""
    readings = (usage(pid) for pid in pids)
    return sum(reading.cpu for reading in readings if reading is not None)


class CpuSampler:
    """``with CpuSampler({"green": [pid, ...]}) as s: ...``; then ``s.summary()``."""

    def __init__(self, groups: dict[str, list[int]], interval: float = 0.1) -> None:
        self.interval = interval
        self.groups = groups
        self.peaks = {name: 0.0 for name in groups}
        self.totals = {name: 0.0 for name in groups}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _cpu(self, name: str) -> float:
        return total_cpu(self.groups[name])

    def _run(self) -> None:
        last = {name: self._cpu(name) for name in self.groups}
        last_at = time.monotonic()
        while not self._stop.wait(self.interval):
            now = time.monotonic()
            for name in self.groups:
                cpu = self._cpu(name)
                used = max(0.0, cpu - last[name])
                self.totals[name] += used
                self.peaks[name] = max(self.peaks[name], 100 * used / (now - last_at))
                last[name] = cpu
            last_at = now
            self.samples += 1
        # The last, partial window counts in the totals (a phase shorter than one window
        # read 0 CPU-seconds), not in the peaks: a window of a few ms, at the kernel's 10 ms
        # accounting, would read as several cores.
        for name in self.groups:
            self.totals[name] += max(0.0, self._cpu(name) - last[name])

    def summary(self) -> dict[str, Any]:
        """Per group: peak percent of one core and CPU seconds used while sampled."""
        return {name: {"peak_pct": round(self.peaks[name], 1), "cpu_s": round(self.totals[name], 2)}
                for name in self.groups}


# A server process counts as quiet below this % of one core (pings alone, 20,000 sockets at
# CHAT_PING_INTERVAL=20 s, are ~3 %).
QUIET_PCT = 5.0
# ... and a benchmark waits at most this long for it (seconds).
QUIET_LIMIT = 30.0


def wait_until_quiet(pids: list[int], below_pct: float = QUIET_PCT, window: float = 1.0,
                     limit: float = QUIET_LIMIT) -> float:
    """Block until ``pids`` used less than ``below_pct`` % of one core each, on average, over
    one ``window``, or ``limit`` seconds have passed; the seconds it took (``limit``: never).

    A benchmark that measures one burst of work (a broadcast) waits for the work before it
    (the connect storm's presence rounds, handshakes still finishing) to be done first."""
    began = time.monotonic()
    last = total_cpu(pids)
    while time.monotonic() - began < limit:
        time.sleep(window)
        cpu = total_cpu(pids)
        if 100 * (cpu - last) / window < below_pct * len(pids):
            break
        last = cpu
    return round(min(time.monotonic() - began, limit), 2)
