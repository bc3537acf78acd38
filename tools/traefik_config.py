"""The Traefik files of the blue/green setup: render them, read the active colour, write atomically.

One module for both runtimes. compose uses ``traefik/traefik.yml`` as it is and the live
``traefik/dynamic/chat.yml`` rendered from ``traefik/chat.yml.template``; the local stack
renders the same files with only addresses, ports and the dynamic directory changed.
Everything here is pure except reading the template and ``atomic_write``.
"""

from __future__ import annotations

import os
import re
import shutil
import string
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tools import ROOT

TRAEFIK_DIR = ROOT / "traefik"
STATIC_FILE = TRAEFIK_DIR / "traefik.yml"
# compose's live routing directory (its files are untracked: host state, not repository state).
DYNAMIC_DIR = TRAEFIK_DIR / "dynamic"
# The one dynamic file a deploy rewrites; its routers and service name the active colour.
ACTIVE_FILE_NAME = "chat.yml"
# The committed template every live file is rendered from.
TEMPLATE_FILE = TRAEFIK_DIR / "chat.yml.template"
# The header that picks a colour's probe router on the internal entry point.
PROBE_HEADER = "X-Parley-Colour"
# The header that picks one replica's router (its /readyz and /metrics) on the internal
# entry point: "<colour>-<n>", n from 1, in the order the colour's addresses are listed.
REPLICA_HEADER = "X-Parley-Replica"
# Paths a replica router serves on the internal entry point: readiness for the deploy,
# metrics to see what each replica carries.
REPLICA_PATHS = ("/readyz", "/metrics")
# A dynamic file beside the live routing that gives Traefik's default TLS store a
# certificate (see ensure_default_certificate).
DEFAULT_CERT_FILE_NAME = "default-certificate.yml"
# Where a write to a watched directory is staged (a subdirectory: Traefik's watch is not
# recursive, so only the final rename is an event; see write_watched).
STAGING_DIR = ".staging"

COLORS = ("blue", "green")
APP_PORT = 8000  # the port the app listens on inside its container
PUBLIC_ENTRYPOINT = "web"
# Internal entry point: ping, the API (never published publicly) and /readyz of the active
# colour, which the deploy procedure reads to confirm a switch.
OPS_ENTRYPOINT = "traefik"
READY_PATH = "/readyz"
# Probes and metrics are internal: the public router refuses them (Traefik answers 404).
INTERNAL_PATHS = ("/healthz", "/readyz", "/accept-traffic", "/metrics")
# The active colour's health check, only when it has several servers (health_check_yaml).
# A dead, hung, starting, draining, failed or full process leaves the rotation one interval
# (plus the timeout, for a hung one) after it fails; the timeout sits below the interval, yet
# far above what the probe takes (precomputed bytes): a loop busy with a broadcast to
# ~19,000 sockets stalls ~0.5 s, and one failed check takes a server out (all of them, if
# every replica stalls at once).
HEALTH_CHECK_MIN_SERVERS = 2
# Not /readyz: a Redis outage makes every process unready at once, and Traefik has no "fail
# open", so it answered 503 "no available server" to every client, the page included. This
# one is out only for a process's own state: starting, draining, full (app/process/lifecycle.py).
HEALTH_CHECK_PATH = "/accept-traffic"
HEALTH_CHECK_INTERVAL = "2s"
HEALTH_CHECK_TIMEOUT = "1500ms"

_ACTIVE = re.compile(r"^\s*service:\s*chat-(\w+)\s*$", re.MULTILINE)


class ConfigProblem(ValueError):
    """A Traefik file is not what the blue/green procedure relies on."""


def check_color(color: str) -> str:
    """Return ``color`` if it is blue or green, else raise ConfigProblem."""
    if color not in COLORS:
        raise ConfigProblem(f"colour must be one of {', '.join(COLORS)}, got {color!r}")
    return color


def other_color(color: str) -> str:
    """green for blue, blue for green."""
    return COLORS[1 - COLORS.index(check_color(color))]


def compose_url(color: str) -> str:
    """The address of a colour's service on the compose network (its name: Docker's DNS
    answers with every replica, so it balances only per new connection, at random)."""
    return f"http://app_{check_color(color)}:{APP_PORT}"


def compose_replica_url(project: str, color: str, number: int, separator: str = "-") -> str:
    """The address of one replica of a colour on the compose network: its container name,
    ``<project>-app_<colour>-<n>``, which Docker's DNS resolves to that container alone."""
    if number < 1:
        raise ConfigProblem(f"replicas are numbered from 1, got {number}")
    return f"http://{project}{separator}app_{check_color(color)}{separator}{number}:{APP_PORT}"


def local_url(port: int) -> str:
    """The address of a colour's app process on the local stack."""
    return f"http://127.0.0.1:{port}"


def public_rule() -> str:
    """Every path except the internal probes and metrics."""
    exclusions = " && ".join(f"!Path(`{path}`)" for path in INTERNAL_PATHS)
    return f"PathPrefix(`/`) && {exclusions}"


def listed(urls: str | Sequence[str]) -> list[str]:
    """One address or several, as a list."""
    return [urls] if isinstance(urls, str) else list(urls)


def servers_yaml(urls: str | Sequence[str]) -> str:
    """A load balancer's ``servers`` entries, indented for the template (one or several)."""
    if not listed(urls):
        raise ConfigProblem("a colour with no process to route to")
    return "\n".join(f'          - url: "{url}"' for url in listed(urls))


def health_check_yaml(urls: str | Sequence[str]) -> str:
    """The active colour's ``healthCheck`` (HEALTH_CHECK_PATH), indented for the template and led
    by a newline (it follows the servers), when the colour has two or more servers; "" for one.

    With one server a check could only mark it down: a restart would answer 503 until the
    next check passed, where without one Traefik forwards the moment the app listens (and
    the app refuses handshakes itself until it is ready). With several, the others take a
    failed one's share. Traefik counts every server up until its first check, one interval
    after each configuration it applies, so a switch to a colour the deploy found ready never
    waits for a check (docs/DEPLOY.md, "Traefik's health check")."""
    if len(listed(urls)) < HEALTH_CHECK_MIN_SERVERS:
        return ""
    return (f"\n        healthCheck:\n          path: {HEALTH_CHECK_PATH}\n"
            f"          interval: {HEALTH_CHECK_INTERVAL}\n          timeout: {HEALTH_CHECK_TIMEOUT}")


def replica_name(color: str, number: int) -> str:
    """A replica's router and service name, and its value of REPLICA_HEADER."""
    return f"{color}-{number}"


def replica_rule(color: str, number: int) -> str:
    paths = " || ".join(f"Path(`{path}`)" for path in REPLICA_PATHS)
    return f"({paths}) && Header(`{REPLICA_HEADER}`, `{replica_name(color, number)}`)"


def replicas_yaml(urls: Mapping[str, str | Sequence[str]]) -> tuple[str, str]:
    """The routers and services of every replica of both colours (one server each),
    indented for the template."""
    routers, services = [], []
    for color in COLORS:
        for number, url in enumerate(listed(urls[color]), start=1):
            name = f"replica-{replica_name(color, number)}"
            routers += [f"    {name}:", f"      entryPoints: [{OPS_ENTRYPOINT}]",
                        f'      rule: "{replica_rule(color, number)}"', f"      service: {name}"]
            services += [f"    {name}:", "      loadBalancer:", "        servers:", servers_yaml(url)]
    return "\n".join(routers), "\n".join(services)


def render_dynamic(color: str, urls: Mapping[str, str | Sequence[str]]) -> str:
    """The live dynamic file from the committed template: chat (HTTP and WebSocket) and the
    ops /readyz routed to ``color`` (balanced over its replicas when it has several, with a
    health check then), a probe router per colour and a router per replica (never checked:
    the deploy asks each replica itself); ``urls`` maps each colour to its app address(es),
    one per replica (process or container)."""
    check_color(color)
    missing = [c for c in COLORS if c not in urls]
    if missing:
        raise ConfigProblem(f"no address for {', '.join(missing)}")
    replica_routers, replica_services = replicas_yaml(urls)
    template = string.Template(TEMPLATE_FILE.read_text())
    return template.substitute(color=color, public_rule=public_rule(),
                               active_servers=servers_yaml(urls[color]),
                               active_health_check=health_check_yaml(urls[color]),
                               replica_routers=replica_routers, replica_services=replica_services,
                               **{f"{c}_servers": servers_yaml(urls[c]) for c in COLORS})


def compose_urls(project: str, replicas: Mapping[str, int], separator: str = "-") -> dict[str, list[str]]:
    """Each colour's replica addresses on the compose network: ``replicas`` containers each."""
    return {color: [compose_replica_url(project, color, n, separator)
                    for n in range(1, replicas.get(color, 1) + 1)] for color in COLORS}


def colour_urls(text: str) -> dict[str, list[str]]:
    """Each colour's addresses as a dynamic file rendered here lists them (its probe
    service's servers); a colour it does not list has none. Read with a pattern, not
    PyYAML: a deploy reads it on its critical path and the import alone costs ~40 ms."""
    found = {}
    for color in COLORS:
        head = rf"^    probe-{color}:\n      loadBalancer:\n        servers:\n"
        block = re.search(head + r"((?:          - url: .*\n?)+)", text, re.MULTILINE)
        found[color] = re.findall(r'url: "([^"]*)"', block.group(1)) if block else []
    return found


def active_color(text: str) -> str:
    """The colour a dynamic file routes to; ConfigProblem if it names none or several."""
    found = set(_ACTIVE.findall(text))
    if len(found) != 1:
        raise ConfigProblem(f"the dynamic file must route to exactly one colour, found {sorted(found)}")
    return check_color(found.pop())


def render_static(static: dict[str, Any], web: str, ops: str, dynamic_dir: Path) -> dict[str, Any]:
    """``static`` (parsed traefik.yml) with only the entry point addresses and directory changed."""
    entry_points = static.get("entryPoints", {})
    for name in (PUBLIC_ENTRYPOINT, OPS_ENTRYPOINT):
        if name not in entry_points:
            raise ConfigProblem(f"traefik.yml has no entry point {name!r}")
    file_provider = static.get("providers", {}).get("file")
    if not file_provider or "directory" not in file_provider:
        raise ConfigProblem("traefik.yml must use the file provider with a directory")
    rendered = {**static}
    rendered["entryPoints"] = {
        **entry_points,
        PUBLIC_ENTRYPOINT: {**entry_points[PUBLIC_ENTRYPOINT], "address": web},
        OPS_ENTRYPOINT: {**entry_points[OPS_ENTRYPOINT], "address": ops},
    }
    rendered["providers"] = {
        **static["providers"],
        "file": {**file_provider, "directory": str(dynamic_dir)},
    }
    return rendered


def load_static(path: Path = STATIC_FILE) -> dict[str, Any]:
    """Parse traefik.yml (PyYAML, a dev dependency: only the local stack and tests need it)."""
    import yaml

    return yaml.safe_load(path.read_text())


def dump_yaml(data: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False)


def default_certificate_yaml(cert_pem: str, key_pem: str) -> str:
    """The dynamic file that names ``cert_pem``/``key_pem`` as the default store's certificate."""
    def block(pem: str) -> str:
        return "\n".join(f"          {line}" for line in pem.strip().splitlines())

    return ("# Written by tools/traefik_config.py on this host, never tracked: a certificate Traefik\n"
            "# never serves (no TLS entry point). Without a default certificate Traefik makes a\n"
            "# new RSA-2048 key on every configuration change: 70-400 ms of every switch.\n"
            "tls:\n  stores:\n    default:\n      defaultCertificate:\n"
            f"        certFile: |\n{block(cert_pem)}\n        keyFile: |\n{block(key_pem)}\n")


def ensure_default_certificate(dynamic_dir: Path, openssl: str = "openssl") -> bool:
    """Give Traefik's default TLS store a certificate in ``dynamic_dir``, made once on this
    host (a self-signed P-256 key: milliseconds); True if it is there.

    Traefik builds its default TLS store on every configuration it applies, and with no
    default certificate it generates one, an RSA-2048 key each time: measured here, a
    switch applied 70-400 ms after the rename without it, 4-18 ms with it. Nothing is
    served with it. Without ``openssl`` nothing is written and switches are just slower.
    """
    target = dynamic_dir / DEFAULT_CERT_FILE_NAME
    if target.exists():
        return True
    if shutil.which(openssl) is None:
        return False
    with tempfile.TemporaryDirectory() as scratch:
        key, cert = Path(scratch) / "key.pem", Path(scratch) / "cert.pem"
        command = [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                   "-subj", "/CN=parley-traefik-default-unused", "-days", "36500",
                   "-keyout", str(key), "-out", str(cert)]
        done = subprocess.run(command, capture_output=True)
        if done.returncode != 0:
            return False
        text = default_certificate_yaml(cert.read_text(), key.read_text())
    write_watched(target, text, mode=0o600)
    return True


def write_watched(path: Path, text: str, mode: int = 0o644) -> None:
    """``atomic_write`` for a file in a directory Traefik watches: staged in a hidden
    subdirectory, so that the rename into place is the only event Traefik sees.

    Every event in the watched directory makes Traefik's file provider re-read it and
    send a configuration; the first one passes at once and starts the
    ``providersThrottleDuration`` window (it applies before unchanged configurations are
    skipped). A temp file beside the target fires events of its own (create, write,
    chmod) that open the window, and the rename then waits for it to close: measured,
    the switch applied ~100 ms later than with the temp file out of sight.
    """
    atomic_write(path, text, staging=path.parent / STAGING_DIR, mode=mode)


def atomic_write(path: Path, text: str, staging: Path | None = None, mode: int = 0o644) -> None:
    """Replace ``path`` in one rename so a watcher never reads a half-written file.

    The temp file lives in the same directory or ``staging``, a subdirectory of it (rename
    is atomic only within a file system), and has a name Traefik's YAML file provider
    ignores (not ``.yml``).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    where = staging or path.parent
    where.mkdir(exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=where)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
