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
    """Hold the exclusive lock (flock on ``directory`` itself; ``DIR/lock`` names the holder)
    for the block; ``busy`` at once, naming the holder, if another process holds it. Failing
    at once rather than queueing: a deploy behind another would start from a state that
    changed under its operator's eyes."""
    if directory in _held:
        _held[directory] += 1
        try:
            yield
        finally:
            _held[directory] -= 1
        return
    directory.mkdir(parents=True, exist_ok=True)
    # The lock is the directory's own (flock on its descriptor): no file at the lock path,
    # deleted, replaced by a symlink or a directory, can let a second holder in. The file
    # only says who holds it.
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_note(directory / LOCK_FILE) or "another process"
            raise busy(f"{owner} in {directory} is busy: {holder} holds its lock; nothing was "
                       "done, run this again once that has ended") from None
        _write_note(directory / LOCK_FILE, f"pid {os.getpid()} ({what}, since {time.strftime('%H:%M:%S')})\n")
        _held[directory] = 1
        try:
            yield
        finally:
            del _held[directory]
            _write_note(directory / LOCK_FILE, "")
    finally:
        os.close(fd)  # releases the lock, as the kernel does if this process dies


def _write_note(path: Path, text: str) -> None:
    # Never through a symlink (its target would be overwritten); a path that is not a plain
    # file just goes without the note. The note is only information, the lock is the flock:
    # a full disk failing its write must not stop the command that holds the lock (`stack
    # down` is what an operator runs to free the disk).
    try:
        note = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    except OSError:
        return
    try:
        os.write(note, text.encode())
    except OSError:
        pass
    finally:
        os.close(note)


def _read_note(path: Path) -> str:
    try:
        note = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return ""
    try:
        return os.read(note, 300).decode(errors="replace").strip()
    finally:
        os.close(note)
