"""An exclusive lock on a directory, taken at once or not at all: what keeps two deploys
(or a deploy and ``make stack``) from changing the same thing at the same time.

Its own module so that a compose deploy takes it without importing the local stack's
(psutil and the process tools).
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_FILE = "lock"


class Busy(RuntimeError):
    """Another process holds the lock: nothing was done."""


# Directories whose lock this process holds, and how many blocks hold it: the drill and the
# benchmarks run up, deploy and down in one process.
_held: dict[Path, int] = {}


@contextmanager
def locked(directory: Path, what: str, owner: str = "the stack",
           busy: type[Exception] = Busy) -> Iterator[None]:
    """Hold the exclusive lock (flock on ``DIR/lock``) for the block; ``busy`` at once, naming
    the holder, if another process holds it. Failing at once rather than queueing: a deploy
    behind another would start from a state that changed under its operator's eyes."""
    if directory in _held:
        _held[directory] += 1
        try:
            yield
        finally:
            _held[directory] -= 1
        return
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 300, 0).decode(errors="replace").strip() or "another process"
            raise busy(f"{owner} in {directory} is busy: {holder} holds its lock; nothing was "
                       "done, run this again once that has ended") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} ({what}, since {time.strftime('%H:%M:%S')})\n".encode(), 0)
        _held[directory] = 1
        try:
            yield
        finally:
            del _held[directory]
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the lock, as the kernel does if this process dies
