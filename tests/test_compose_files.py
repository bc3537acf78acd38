"""compose.yml, docker/Dockerfile and traefik/: what the blue/green procedure depends on.

Checked as data here (service names, healthchecks, grace periods longer than the drain,
routes, ports, limits); tests/e2e/test_compose.py runs them in a real engine.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
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
    # Production auth; the secret is empty when unset, so down/ps/logs need no variable (the
    # app itself refuses to start without it).
    assert env["CHAT_AUTH"] == "jwt"
    assert env["CHAT_JWT_SECRET"] == "${CHAT_JWT_SECRET:-}"
    assert "ports" not in app
    # An init forwards SIGTERM: the app as PID 1 would drop one sent before its handler exists.
    assert app["init"] is True
    # Engine 25+ only: older engines refuse the whole file.
    assert "start_interval" not in app["healthcheck"]
    # One image per release (scripts/compose_runtime.py sets PARLEY_TAG).
    assert app["image"] == "parley:${PARLEY_TAG:-latest}"


def memory_mb(value: str) -> float:
    match = re.fullmatch(r"(\d+)([MG])", value)
    assert match, f"not a memory limit: {value!r}"
    return int(match[1]) * (1024 if match[2] == "G" else 1)


def test_limits_follow_the_connection_cap(compose: dict[str, Any]) -> None:
    """docs/DEPLOY.md, "Limits": the service's own 503 comes before the OOM killer or EMFILE."""
    from scripts.compose_runtime import COLOUR_CONNECTIONS, CONNECTIONS_ENV, connections_per_replica

    app, traefik = compose["services"]["app_blue"], compose["services"]["traefik"]
    # Per replica: deploy.py sets the colour's share; unset (one replica, a hand-run `up`), all.
    cap = int(interpolate(app["environment"]["CHAT_MAX_CONNECTIONS"], {}))
    assert cap == COLOUR_CONNECTIONS == connections_per_replica(1)
    assert interpolate(app["environment"]["CHAT_MAX_CONNECTIONS"], {CONNECTIONS_ENV: "4500"}) == "4500"
    # However many replicas, the colour's total stays within what the one Traefik carries.
    assert all(n * connections_per_replica(n) <= COLOUR_CONNECTIONS for n in range(1, 17))
    assert memory_mb(app["deploy"]["resources"]["limits"]["memory"]) >= 128 + 32 * cap / 1024
    assert app["ulimits"]["nofile"]["soft"] >= cap + 1000
    # Traefik holds two descriptors per proxied WebSocket, under this machine's 20,000 ceiling.
    assert traefik["ulimits"]["nofile"]["soft"] >= 2 * cap + 1000
    assert max(traefik["ulimits"]["nofile"]["soft"], app["ulimits"]["nofile"]["soft"]) <= 20000


def interpolate(value: str, env: dict[str, str]) -> str:
    """compose's ``${VAR:-default}`` for the forms compose.yml uses."""
    return re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: env.get(m[1]) or m[2], value)


def test_ports_are_on_loopback_unless_asked(compose: dict[str, Any]) -> None:
    ports = [str(p) for p in compose["services"]["traefik"]["ports"]]
    assert [interpolate(p, {}) for p in ports] == ["127.0.0.1:80:80", "127.0.0.1:8080:8080"]
    public = interpolate(ports[0], {"PARLEY_HTTP_BIND": "0.0.0.0", "PARLEY_HTTP_PORT": "8000"})
    assert public == "0.0.0.0:8000:80"


def test_no_variable_is_required(compose: dict[str, Any]) -> None:
    # `${VAR:?message}` makes every compose command fail without VAR, down/ps/logs included.
    assert ":?" not in (ROOT / "compose.yml").read_text()


def test_base_images_have_local_stand_ins(compose: dict[str, Any]) -> None:
    from tools.docker.base_images import STAND_INS

    named = {s["image"] for s in compose["services"].values() if "build" not in s}
    assert named | {"python:3.11-slim"} == set(STAND_INS)
    assert all(f.startswith("FROM python:3.11-slim") for f in (ROOT / "docker" / "Dockerfile").read_text()
               .splitlines() if f.startswith("FROM"))


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
    mounts = {v.rsplit(":", 2)[1]: v.rsplit(":", 2)[0] for v in traefik["volumes"]}
    assert mounts["/etc/traefik/traefik.yml"] == "./traefik/traefik.yml"
    # The directory (a rename inside it is seen), where the static file says to watch.
    directory = static["providers"]["file"]["directory"]
    assert interpolate(mounts[directory], {}) == "./traefik/dynamic"
    assert "healthcheck" in traefik["healthcheck"]["test"]
    published = [interpolate(str(p), {}) for p in traefik["ports"]]
    web_port = static["entryPoints"]["web"]["address"].rsplit(":", 1)[1]
    ops_port = static["entryPoints"]["traefik"]["address"].rsplit(":", 1)[1]
    assert any(p.endswith(f":{web_port}") for p in published)
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


@pytest.mark.parametrize("color", COLORS)
def test_dynamic_file_targets_compose_containers(compose: dict[str, Any], color: str) -> None:
    # compose names a service's replicas <project>-<service>-<n> (no container_name may pin one).
    text = tc.render_dynamic(color, tc.compose_urls("proj", {color: 2}))
    services = yaml.safe_load(text)["http"]["services"]
    urls = [server["url"] for server in services[f"chat-{color}"]["loadBalancer"]["servers"]]
    assert urls == [f"http://proj-app_{color}-{n}:{tc.APP_PORT}" for n in (1, 2)]
    for each in COLORS:
        assert f"app_{each}" in compose["services"]
        assert "container_name" not in compose["services"][f"app_{each}"]


def test_dockerfile_needs_no_frontend_image() -> None:
    # A `# syntax=` line makes BuildKit pull a frontend image: impossible without a registry.
    lines = (ROOT / "docker" / "Dockerfile").read_text().splitlines()
    assert not any(line.lower().startswith("# syntax") for line in lines)


def requirement_names(path: Path) -> set[str]:
    names = set()
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-r"):
            names.add(re.split(r"[=<>\[ ]", line, maxsplit=1)[0].lower())
    return names


def test_the_image_installs_the_runtime_alone() -> None:
    runtime = requirement_names(ROOT / "requirements.txt")
    assert {"django", "channels", "uvicorn", "redis"} <= runtime
    assert not runtime & {"daphne", "twisted", "pytest", "playwright", "matplotlib", "locust"}
    ops = requirement_names(ROOT / "requirements-ops.txt")
    assert "-r requirements.txt" in (ROOT / "requirements-ops.txt").read_text()
    assert not ops & {"pytest", "playwright", "matplotlib", "locust", "daphne"}
    assert "daphne" in requirement_names(ROOT / "requirements-dev.txt")  # tests/test_daphne.py


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
