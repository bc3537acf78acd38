"""tools/traefik_config.py: the dynamic file both runtimes write, the static rendering."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tools import traefik_config as tc

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("color", tc.COLORS)
def test_dynamic_file_routes_chat_and_readyz_to_one_colour(color: str) -> None:
    text = tc.render_dynamic(color, f"http://app_{color}:8000")
    http = yaml.safe_load(text)["http"]
    assert http["routers"]["chat"]["entryPoints"] == ["web"]
    assert http["routers"]["chat-readyz"]["entryPoints"] == ["traefik"]
    assert {r["service"] for r in http["routers"].values()} == {f"chat-{color}"}
    service = http["services"][f"chat-{color}"]["loadBalancer"]
    assert service["servers"] == [{"url": f"http://app_{color}:8000"}]
    assert service["healthCheck"]["path"] == "/readyz"
    assert tc.active_color(text) == color


def test_public_router_keeps_probes_and_metrics_internal() -> None:
    rule = tc.public_rule()
    for path in ("/healthz", "/readyz", "/metrics"):
        assert f"!Path(`{path}`)" in rule


def test_committed_dynamic_file_is_what_a_deploy_writes() -> None:
    # The repository's file is compose's live config: exactly the rendering for its colour.
    text = (tc.DYNAMIC_DIR / tc.ACTIVE_FILE_NAME).read_text()
    color = tc.active_color(text)
    assert text == tc.render_dynamic(color, tc.compose_url(color))


def test_colours() -> None:
    assert tc.other_color("blue") == "green" and tc.other_color("green") == "blue"
    with pytest.raises(tc.ConfigProblem):
        tc.check_color("red")
    with pytest.raises(tc.ConfigProblem):
        tc.active_color(tc.render_dynamic("blue", "u") + tc.render_dynamic("green", "u"))
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
