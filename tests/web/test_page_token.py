"""The chat page on a server with CHAT_AUTH=jwt (compose's setting), in a real browser."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable

from app.chat.auth import mint
from tests.support import AppServer, wait_until
from tests.web.test_page import WAIT_MS, OpenPage, Tab, expect

SECRET = secrets.token_urlsafe(32)
MakeApp = Callable[..., AppServer]


def jwt_app(make_app: MakeApp) -> AppServer:
    return make_app(env={"CHAT_AUTH": "jwt", "CHAT_JWT_SECRET": SECRET})


def expect_state(tab: Tab, text: str) -> None:
    expect(tab.locator("#state")).to_have_text(text, timeout=WAIT_MS)


def test_a_token_on_the_page_url_connects_and_leaves_no_trace(make_app: MakeApp,
                                                              open_page: OpenPage) -> None:
    server = jwt_app(make_app)
    token = mint("alice", ["design"], 3600, SECRET)
    tab = open_page(f"{server.base}/?room=design#token={token}")
    tab.expect_live()
    expect(tab.locator("#who")).to_have_text("you are alice")
    tab.send("signed in")
    tab.expect_messages(["signed in"])
    # Off the address bar at once: in no history entry, bookmark or copied link.
    assert token not in tab.page.url and "room=design" in tab.page.url
    assert token in tab.sockets[-1]  # the WebSocket carries it, as PROTOCOL.md says
    # A reload in the same tab keeps the sign-in (sessionStorage), still off the URL.
    tab.page.reload()
    tab.expect_live()
    assert token not in tab.page.url
    # Never written to the server's logs (a #fragment is not even sent with the page GET).
    assert token not in server.output()
    # The entry the page was opened with was replaced: going back leaves the page.
    tab.page.go_back()
    assert token not in tab.page.url


def test_no_token_or_a_refused_one_says_not_authorised(make_app: MakeApp, open_page: OpenPage) -> None:
    server = jwt_app(make_app)
    tab = open_page(f"{server.base}/?room=design")
    expect_state(tab, "not authorised")
    expect(tab.locator("#token-note")).to_contain_text("needs a sign-in token")
    expect(tab.locator("#token-form")).to_be_visible()
    attempts = len(tab.sockets)
    tab.page.wait_for_timeout(1500)  # no spinning: nothing reconnects on its own
    assert len(tab.sockets) == attempts

    forged = mint("mallory", "*", 3600, secrets.token_urlsafe(32))  # another secret
    tab.locator("#token-input").fill(forged)
    tab.locator("#token-form button").click()
    expect_state(tab, "not authorised")
    expect(tab.locator("#token-note")).to_contain_text("refused your sign-in token")

    tab.locator("#token-input").fill(mint("bob", "*", 3600, SECRET))
    tab.locator("#token-form button").click()
    tab.expect_live()
    expect(tab.locator("#token-form")).to_be_hidden()
    assert "connecting" in tab.states() and tab.errors == []


def test_an_expired_token_asks_for_a_fresh_one(make_app: MakeApp, open_page: OpenPage) -> None:
    server = jwt_app(make_app)
    expired = mint("carol", "*", -60, SECRET)
    tab = open_page(f"{server.base}/?room=design#token={expired}")
    expect_state(tab, "sign-in expired")
    expect(tab.locator("#token-note")).to_contain_text("expired")
    assert tab.sockets == []  # an expired token is not even tried
    tab.locator("#token-input").fill(mint("carol", "*", 3600, SECRET))
    tab.locator("#token-form button").click()
    tab.expect_live()


def test_the_refresh_hook_replaces_an_expiring_token(make_app: MakeApp, open_page: OpenPage) -> None:
    server = jwt_app(make_app)
    fresh = mint("dave", "*", 3600, SECRET)
    short = mint("dave", "*", 2, SECRET)  # expires while the page is live
    hook = f"window.PARLEY_OPTIONS.refreshToken = async () => {json.dumps(fresh)};"
    tab = open_page("about:blank")
    tab.page.context.add_init_script(hook)
    tab.page.goto(f"{server.base}/?room=design#token={short}")
    tab.expect_live()
    wait_until(lambda: tab.page.evaluate("sessionStorage.getItem('parley.token')") == fresh,
               WAIT_MS / 1000, "the refresh hook's token to be kept")
    # The next connection (here: a restart of the room) uses the fresh token.
    tab.page.evaluate("document.getElementById('room-input').value = 'design'")
    tab.page.locator("#room-form button").click()
    tab.expect_live()
    assert fresh in tab.sockets[-1]
