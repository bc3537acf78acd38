"""compose.yml, docker/Dockerfile and traefik/: what the blue/green procedure depends on.

The compose runtime cannot run here (no Docker engine), so these files are checked as data:
service names, healthchecks, grace periods longer than the drain, routes and health checks.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml

from tools import ROOT
from tools import traefik_config as tc

pytestmark = pytest.mark.unit

COLORS = tc.COLORS


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "compose.yml").read_text())


@pytest.fixture(scope="module")
def static() -> dict[str, Any]:
    return tc.load_static()


def seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)", value)
    assert match, f"not a duration: {value!r}"
    number, unit = float(match[1]), match[2]
    return number * {"ms": 0.001, "s": 1, "m": 60}[unit]


def test_services_and_only_traefik_publishes(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"redis", "traefik", *(f"app_{c}" for c in COLORS)}
    assert [name for name, s in services.items() if "ports" in s] == ["traefik"]
    assert services["traefik"]["image"] == "traefik:v3.7"
    assert services["redis"]["image"] == "redis:7"


def test_redis_persists_and_has_a_healthcheck(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert any(v.endswith(":/data") for v in redis["volumes"])
    assert "ping" in redis["healthcheck"]["test"]


@pytest.mark.parametrize("color", COLORS)
def test_each_colour_can_be_drained(compose: dict[str, Any], color: str) -> None:
    app = compose["services"][f"app_{color}"]
    env = app["environment"]
    assert env["APP_COLOR"] == color
    assert app["stop_signal"] == "SIGTERM"
    # compose kills at stop_grace_period: it must outlast the server's own drain bound.
    assert seconds(app["stop_grace_period"]) > float(env["SHUTDOWN_TIMEOUT"]) + float(
        env.get("SHUTDOWN_DRAIN_DELAY", 0))
    probe = " ".join(app["healthcheck"]["test"])
    assert f"127.0.0.1:{tc.APP_PORT}/readyz" in probe
    assert env["PORT"] == str(tc.APP_PORT) and env["HOST"] == "0.0.0.0"
    assert env["REDIS_URL"] == "redis://redis:6379/0"
    assert app["depends_on"]["redis"]["condition"] == "service_healthy"
    limits = app["deploy"]["resources"]["limits"]
    assert limits["cpus"] and limits["memory"]
    # Production auth: required, no silent default.
    assert env["CHAT_AUTH"] == "jwt"
    assert env["CHAT_JWT_SECRET"].startswith("${CHAT_JWT_SECRET:?")
    assert "ports" not in app


def test_colours_are_the_same_image(compose: dict[str, Any]) -> None:
    blue, green = (compose["services"][f"app_{c}"] for c in COLORS)
    for key in ("build", "image", "healthcheck", "stop_grace_period", "deploy"):
        assert blue[key] == green[key]
    assert blue["build"]["dockerfile"] == "docker/Dockerfile"
    differing = {k for k in blue["environment"] if blue["environment"][k] != green["environment"][k]}
    assert differing == {"APP_COLOR"}


def test_traefik_mounts_the_files_the_procedure_writes(
    compose: dict[str, Any], static: dict[str, Any]
) -> None:
    traefik = compose["services"]["traefik"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in traefik["volumes"]}
    assert mounts["/etc/traefik/traefik.yml"] == "./traefik/traefik.yml"
    # The directory (a rename inside it is seen), where the static file says to watch.
    directory = static["providers"]["file"]["directory"]
    assert mounts[directory] == "./traefik/dynamic"
    assert "healthcheck" in traefik["healthcheck"]["test"]
    published = [str(p) for p in traefik["ports"]]
    web_port = static["entryPoints"]["web"]["address"].rsplit(":", 1)[1]
    ops_port = static["entryPoints"]["traefik"]["address"].rsplit(":", 1)[1]
    assert any(p.endswith(f":{web_port}") and not p.startswith("127.0.0.1") for p in published)
    # The internal entry point (API, ping, /readyz) only on the host's loopback.
    ops = [p for p in published if p.endswith(f":{ops_port}")]
    assert ops and all(p.startswith("127.0.0.1:") for p in ops)


def test_static_config(static: dict[str, Any]) -> None:
    assert static["ping"]["entryPoint"] == "traefik"
    assert static["providers"]["file"]["watch"] is True
    assert seconds(static["providers"]["providersThrottleDuration"]) < 2  # Traefik's default
    # The API only on the internal entry point; no dashboard (its catch-all would hide /readyz).
    assert static["api"].get("insecure") is True and static["api"].get("dashboard") is False
    assert set(static["entryPoints"]) == {"web", "traefik"}


def test_dynamic_file_targets_compose_services(compose: dict[str, Any]) -> None:
    text = (tc.DYNAMIC_DIR / tc.ACTIVE_FILE_NAME).read_text()
    color = tc.active_color(text)
    url = yaml.safe_load(text)["http"]["services"][f"chat-{color}"]["loadBalancer"]["servers"][0]["url"]
    assert url == f"http://app_{color}:{tc.APP_PORT}"
    assert f"app_{color}" in compose["services"]


def dockerfile() -> list[tuple[str, str]]:
    text = (ROOT / "docker" / "Dockerfile").read_text()
    joined = re.sub(r"\\\n", " ", text)
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in joined.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def test_dockerfile_layers_and_process() -> None:
    steps = dockerfile()
    froms = [arg for op, arg in steps if op == "FROM"]
    assert len(froms) >= 2 and all(f.startswith("python:3.11-slim") for f in froms)
    final = steps[max(i for i, (op, _) in enumerate(steps) if op == "FROM"):]
    ops = [op for op, _ in steps]
    # Dependencies are installed from requirements.txt alone, before any code is copied.
    req = next(i for i, (op, arg) in enumerate(steps) if op == "COPY" and "requirements.txt" in arg)
    install = next(i for i, (op, arg) in enumerate(steps) if op == "RUN" and "pip install" in arg)
    code = next(i for i, (op, arg) in enumerate(steps) if op == "COPY" and arg.startswith("app/"))
    assert req < install < code
    # Bytecode compiled at build time, for the dependencies and the code.
    assert sum("compileall" in arg for op, arg in steps if op == "RUN") >= 2
    user = [arg for op, arg in final if op == "USER"]
    assert user and user[-1] not in {"root", "0"}
    cmd = [arg for op, arg in final if op == "CMD"][-1]
    assert json.loads(cmd) == ["python", "-m", "app"], "exec form: the server is PID 1 and gets SIGTERM"
    assert "ENTRYPOINT" not in ops
    assert ("STOPSIGNAL", "SIGTERM") in final


def test_dockerignore_keeps_the_context_small() -> None:
    lines = [line for line in (ROOT / ".dockerignore").read_text().splitlines()
             if line and not line.startswith("#")]
    assert lines[0] == "*"
    assert {"!requirements.txt", "!app/"} <= set(lines)
