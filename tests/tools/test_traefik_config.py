"""tools/traefik_config.py: the dynamic file both runtimes write, the static rendering."""

from __future__ import annotations

import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

from tools import traefik_config as tc

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("color", tc.COLORS)
def test_dynamic_file_routes_chat_and_readyz_to_one_colour(color: str) -> None:
    text = tc.render_dynamic(color, tc.compose_urls("parley", {}))
    http = yaml.safe_load(text)["http"]
    routers = http["routers"]
    assert routers["chat"]["entryPoints"] == ["web"]
    assert routers["chat-readyz"]["entryPoints"] == ["traefik"]
    assert routers["chat"]["service"] == routers["chat-readyz"]["service"] == f"chat-{color}"
    service = http["services"][f"chat-{color}"]["loadBalancer"]
    assert service["servers"] == [{"url": f"http://parley-app_{color}-1:8000"}]
    # One server: a health check could only add 503s after a restart.
    assert "healthCheck" not in service
    assert tc.active_color(text) == color


@pytest.mark.parametrize("replicas", [2, 3])
def test_the_active_colour_is_health_checked_only_when_it_has_several_servers(replicas: int) -> None:
    """Two or more: a dead or draining one leaves the rotation and the others take its share.
    Never on the probe and replica services: the deploy asks every replica itself."""
    for runtime_urls in (tc.compose_urls("p", {"blue": replicas, "green": 1}),
                         {"blue": [tc.local_url(port) for port in range(1, replicas + 1)],
                          "green": [tc.local_url(9)]}):
        http = yaml.safe_load(tc.render_dynamic("blue", runtime_urls))["http"]
        check = http["services"]["chat-blue"]["loadBalancer"]["healthCheck"]
        assert check == {"path": "/accept-traffic", "interval": tc.HEALTH_CHECK_INTERVAL,
                         "timeout": tc.HEALTH_CHECK_TIMEOUT}
        checked = [name for name, service in http["services"].items()
                   if "healthCheck" in service["loadBalancer"]]
        assert checked == ["chat-blue"]
        assert tc.active_color(tc.render_dynamic("blue", runtime_urls)) == "blue"
        assert tc.colour_urls(tc.render_dynamic("blue", runtime_urls)) == runtime_urls
    # The colour it switches to decides, whatever the other has.
    green = yaml.safe_load(tc.render_dynamic("green", tc.compose_urls("p", {"blue": replicas})))["http"]
    assert "healthCheck" not in green["services"]["chat-green"]["loadBalancer"]


def test_the_health_check_times_out_within_its_interval() -> None:
    def seconds(duration: str) -> float:
        return float(duration[:-2]) / 1000 if duration.endswith("ms") else float(duration.rstrip("s"))

    # docs/DEPLOY.md: a dead replica is out of the rotation within about two seconds.
    assert 0 < seconds(tc.HEALTH_CHECK_TIMEOUT) < seconds(tc.HEALTH_CHECK_INTERVAL) <= 2
    assert tc.health_check_yaml("http://a:1") == tc.health_check_yaml(["http://a:1"]) == ""


def test_each_colour_can_be_probed_on_the_internal_entry_point_only() -> None:
    http = yaml.safe_load(tc.render_dynamic("blue", {"blue": "http://b:1", "green": "http://g:2"}))["http"]
    for color, url in (("blue", "http://b:1"), ("green", "http://g:2")):
        router = http["routers"][f"probe-{color}"]
        assert router["entryPoints"] == ["traefik"]
        assert f"Header(`{tc.PROBE_HEADER}`, `{color}`)" in router["rule"] and "/readyz" in router["rule"]
        assert http["services"][router["service"]]["loadBalancer"]["servers"] == [{"url": url}]
    with pytest.raises(tc.ConfigProblem):
        tc.render_dynamic("blue", {"blue": "http://b:1"})


def test_every_replica_has_a_router_of_its_own_on_the_internal_entry_point() -> None:
    urls = tc.compose_urls("p", {"blue": 1, "green": 3})
    assert urls["green"] == [f"http://p-app_green-{n}:8000" for n in (1, 2, 3)]
    text = tc.render_dynamic("green", urls)
    http = yaml.safe_load(text)["http"]
    # The chat service balances over all of the colour's replicas, each listed once.
    assert [s["url"] for s in http["services"]["chat-green"]["loadBalancer"]["servers"]] == urls["green"]
    replicas = {name: router for name, router in http["routers"].items() if name.startswith("replica-")}
    assert sorted(replicas) == ["replica-blue-1", "replica-green-1", "replica-green-2", "replica-green-3"]
    for color in tc.COLORS:
        for number, url in enumerate(urls[color], start=1):
            router = replicas[f"replica-{color}-{number}"]
            assert router["entryPoints"] == [tc.OPS_ENTRYPOINT]
            assert f"Header(`{tc.REPLICA_HEADER}`, `{color}-{number}`)" in router["rule"]
            assert all(f"Path(`{path}`)" in router["rule"] for path in tc.REPLICA_PATHS)
            assert http["services"][router["service"]]["loadBalancer"]["servers"] == [{"url": url}]
    # What a deploy reads back: each colour's addresses, as routed.
    assert tc.colour_urls(text) == urls
    assert tc.active_color(text) == "green"
    with pytest.raises(tc.ConfigProblem):
        tc.compose_replica_url("p", "green", 0)


def test_public_router_keeps_probes_and_metrics_internal() -> None:
    rule = tc.public_rule()
    for path in ("/healthz", "/readyz", "/accept-traffic", "/metrics"):
        assert f"!Path(`{path}`)" in rule


def test_live_routing_is_never_tracked() -> None:
    # A checkout or pull must not route back to a stopped colour: the live file is host state.
    root = tc.TRAEFIK_DIR.parent
    tracked = subprocess.run(["git", "-C", str(root), "ls-files", "traefik"], capture_output=True,
                             text=True, check=True).stdout.split()
    assert "traefik/chat.yml.template" in tracked
    assert [p for p in tracked if p.startswith("traefik/dynamic/")] == ["traefik/dynamic/.gitignore"]
    ignored = subprocess.run(["git", "-C", str(root), "check-ignore", "-q",
                              f"traefik/dynamic/{tc.ACTIVE_FILE_NAME}"])
    assert ignored.returncode == 0


def test_colours() -> None:
    assert tc.other_color("blue") == "green" and tc.other_color("green") == "blue"
    with pytest.raises(tc.ConfigProblem):
        tc.check_color("red")
    with pytest.raises(tc.ConfigProblem):
        urls = tc.compose_urls("parley", {})
        tc.active_color(tc.render_dynamic("blue", urls) + tc.render_dynamic("green", urls))
    with pytest.raises(tc.ConfigProblem):
        tc.active_color("http: {}\n")


def test_static_rendering_changes_only_addresses_and_directory(tmp_path: Path) -> None:
    static = tc.load_static()
    rendered = tc.render_static(static, web="127.0.0.1:1", ops="127.0.0.1:2", dynamic_dir=tmp_path)
    assert rendered["entryPoints"]["web"]["address"] == "127.0.0.1:1"
    assert rendered["entryPoints"]["traefik"]["address"] == "127.0.0.1:2"
    assert rendered["providers"]["file"]["directory"] == str(tmp_path)

    def without_overrides(config: dict) -> dict:
        config = yaml.safe_load(yaml.safe_dump(config))
        for name in ("web", "traefik"):
            del config["entryPoints"][name]["address"]
        del config["providers"]["file"]["directory"]
        return config

    assert without_overrides(rendered) == without_overrides(static)
    assert static == tc.load_static(), "rendering must not modify the parsed original"
    with pytest.raises(tc.ConfigProblem):
        tc.render_static({"entryPoints": {"web": {}}}, "a", "b", tmp_path)


def test_atomic_write_replaces_whole_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "dynamic" / "chat.yml"
    tc.atomic_write(target, "one\n")
    before = target.stat().st_ino
    tc.atomic_write(target, "two\n")
    assert target.read_text() == "two\n"
    assert target.stat().st_ino != before, "a new file renamed over the old, not an in-place write"
    with pytest.raises(TypeError):
        tc.atomic_write(target, None)  # type: ignore[arg-type]
    assert target.read_text() == "two\n"
    assert [p.name for p in target.parent.iterdir()] == ["chat.yml"]


def test_a_watched_write_is_staged_out_of_the_watched_directory(tmp_path: Path) -> None:
    """Traefik's watch is not recursive: staged in a subdirectory, the temp file's own events
    never reach it, and the rename into place is the one event it sees."""
    target = tmp_path / "dynamic" / "chat.yml"
    tc.write_watched(target, "one\n")
    before = target.stat().st_ino
    tc.write_watched(target, "two\n")
    assert target.read_text() == "two\n" and target.stat().st_ino != before
    staging = target.parent / tc.STAGING_DIR
    assert sorted(p.name for p in target.parent.iterdir()) == sorted(["chat.yml", tc.STAGING_DIR])
    assert list(staging.iterdir()) == []


@pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl to make the certificate")
def test_traefik_gets_a_default_certificate_made_once_on_this_host(tmp_path: Path) -> None:
    """Without one Traefik makes an RSA key on every configuration it applies (slow switches)."""
    assert tc.ensure_default_certificate(tmp_path)
    target = tmp_path / tc.DEFAULT_CERT_FILE_NAME
    store = yaml.safe_load(target.read_text())["tls"]["stores"]["default"]["defaultCertificate"]
    assert store["certFile"].startswith("-----BEGIN CERTIFICATE-----")
    assert "PRIVATE KEY-----" in store["keyFile"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o600  # a key, if one never served
    before = target.read_text()
    assert tc.ensure_default_certificate(tmp_path) and target.read_text() == before  # once
    assert not tc.ensure_default_certificate(tmp_path / "other", openssl="no-such-openssl")
    assert not (tmp_path / "other" / tc.DEFAULT_CERT_FILE_NAME).exists()
    # Never tracked: it lives in the live routing directory, host state.
    ignored = subprocess.run(["git", "-C", str(tc.TRAEFIK_DIR.parent), "check-ignore", "-q",
                              f"traefik/dynamic/{tc.DEFAULT_CERT_FILE_NAME}"])
    assert ignored.returncode == 0
