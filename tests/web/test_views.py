"""The chat page and its assets over real HTTP: types, security headers, nothing else served."""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Iterator

import pytest

from tools import ROOT
from tools.net import http_get
from tools.procs import AppServer


@pytest.fixture(scope="module")
def app_server() -> Iterator[AppServer]:
    """One server for the module: these tests only read."""
    server = AppServer().start()
    yield server
    server.cleanup()


def fetch(url: str) -> tuple[int, dict[str, str], bytes]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()


def test_page_is_html_with_a_strict_policy(app_server: AppServer) -> None:
    status, headers, body = fetch(app_server.base + "/")
    assert status == 200
    assert headers["content-type"] == "text/html; charset=utf-8"
    policy = headers["content-security-policy"]
    assert "script-src 'self';" in policy and "style-src 'self';" in policy
    assert "connect-src 'self';" in policy  # its own server only (SECURITY.md quotes it all)
    assert "unsafe-inline" not in policy
    # The policy forbids inline code: the page must carry none for it to work at all.
    assert b"<script>" not in body and b"<style" not in body
    assert re.search(rb"\son[a-z]+\s*=", body) is None, "inline event handler"


def test_security_md_quotes_the_policy_served(app_server: AppServer) -> None:
    _, headers, _ = fetch(app_server.base + "/")
    assert f"`{headers['content-security-policy']}`" in (ROOT / "SECURITY.md").read_text()


def test_every_asset_the_page_references_is_served_with_its_type(app_server: AppServer) -> None:
    _, _, body = fetch(app_server.base + "/")
    references = re.findall(rb'(?:src|href)="(static/[^"]+)"', body)
    assert sorted(references) == [b"static/chat.css", b"static/chat.js", b"static/client.js"]
    assert references.index(b"static/client.js") < references.index(b"static/chat.js")  # it defines Parley
    types = {
        b"static/chat.css": "text/css; charset=utf-8",
        b"static/chat.js": "text/javascript; charset=utf-8",
        b"static/client.js": "text/javascript; charset=utf-8",
    }
    for reference in references:
        status, headers, content = fetch(f"{app_server.base}/{reference.decode()}")
        assert status == 200 and content
        assert headers["content-type"] == types[reference]
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["cache-control"] == "no-cache"


@pytest.mark.parametrize(
    "path",
    [
        "/static/index.html",
        "/static/views.py",
        "/static/..%2Fviews.py",
        "/static/%2e%2e/settings.py",
        "/static/../config.py",
        "/static/chat.js/",
        "/static/",
    ],
)
def test_nothing_but_the_whitelisted_assets_is_served(app_server: AppServer, path: str) -> None:
    status, body = http_get(app_server.base + path)
    assert status == 404
    assert b"import" not in body and b"CONFIG" not in body
