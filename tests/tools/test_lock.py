"""The operator's lock (tools/lock.py): one holder at a time, whatever the lock path has become."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tools.lock import LOCK_FILE, Busy, locked

HOLD = """
import sys, time
from pathlib import Path
from tools.lock import locked
with locked(Path(sys.argv[1]), "a holder"):
    print("held", flush=True)
    sys.stdin.read()
"""


def hold(directory: Path) -> subprocess.Popen[str]:
    """Another process holding the lock until its stdin closes."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(directory)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    return holder


def release(holder: subprocess.Popen[str]) -> None:
    assert holder.stdin is not None
    holder.stdin.close()
    holder.wait(10)


def test_a_second_holder_is_refused_naming_the_first(tmp_path: Path) -> None:
    holder = hold(tmp_path)
    try:
        with pytest.raises(Busy, match=rf"pid {holder.pid} \(a holder, since"), locked(tmp_path, "me"):
            pass
    finally:
        release(holder)
    with locked(tmp_path, "me"):
        assert (tmp_path / LOCK_FILE).read_text().startswith(f"pid {os.getpid()} (me,")


def test_a_lock_file_deleted_under_its_holder_does_not_let_a_second_one_in(tmp_path: Path) -> None:
    holder = hold(tmp_path)
    try:
        (tmp_path / LOCK_FILE).unlink()
        with pytest.raises(Busy, match="another process holds its lock"), locked(tmp_path, "me"):
            pass
    finally:
        release(holder)


def test_a_symlink_or_a_directory_at_the_lock_path_is_left_alone(tmp_path: Path) -> None:
    precious = tmp_path / "precious"
    precious.write_text("precious data")
    (tmp_path / LOCK_FILE).symlink_to(precious)
    with locked(tmp_path, "me"):
        holder = subprocess.run([sys.executable, "-c", HOLD, str(tmp_path)], capture_output=True,
                                text=True, input="")
        assert holder.returncode != 0 and "is busy" in holder.stderr  # still one holder
    assert precious.read_text() == "precious data"
    (tmp_path / LOCK_FILE).unlink()
    (tmp_path / LOCK_FILE).mkdir()
    with locked(tmp_path, "me"):
        pass
