"""The chat page on a server with CHAT_AUTH=jwt (compose's setting), in a real browser."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable

from websockets.sync.client import connect

from app.chat.auth import mint
from tests.support import AppServer
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


def test_another_users_message_with_my_client_id_is_not_shown_as_mine(
    make_app: MakeApp, open_page: OpenPage,
) -> None:
    # bob copies the client_id of alice's message from its broadcast and sends his own text
    # with it: posted (dedupe is per sub), and it must not be styled as alice's own.
    server = jwt_app(make_app)
    tab = open_page(f"{server.base}/?room=design#token={mint('alice', '*', 3600, SECRET)}")
    tab.expect_live()
    with connect(server.ws_url("design", token=mint("bob", "*", 3600, SECRET))) as bob:
        tab.send("see you at 5")
        while (frame := json.loads(bob.recv(WAIT_MS / 1000)))["type"] != "message":
            pass
        bob.send(json.dumps({"message": "alice agrees to pay bob", "client_id": frame["client_id"]}))
        tab.expect_messages(["see you at 5", "alice agrees to pay bob"])
    expect(tab.locator("#messages li.mine .text")).to_have_text(["see you at 5"])
    expect(tab.locator("#outbox li")).to_have_count(0)
    assert tab.errors == []


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
    # Tried once (the server decides, not the page's clock), then asked about, never again.
    assert len(tab.sockets) == 1 and expired in tab.sockets[0]
    tab.locator("#token-input").fill(mint("carol", "*", 3600, SECRET))
    tab.locator("#token-form button").click()
    tab.expect_live()


def test_a_page_whose_clock_is_hours_ahead_still_connects(make_app: MakeApp, open_page: OpenPage) -> None:
    # A laptop with a wrong clock: by its own reckoning the hour-long token expired an hour
    # ago, but the server accepts it, and the server is what counts.
    server = jwt_app(make_app)
    token = mint("erin", "*", 3600, SECRET)
    tab = open_page("about:blank")
    tab.page.context.clock.install(time=time.time() + 2 * 3600)
    tab.page.goto(f"{server.base}/?room=design#token={token}")
    tab.expect_live()
    tab.send("my clock is wrong")
    tab.expect_messages(["my clock is wrong"])
    # Nor does it warn that the token expires soon: the server has just accepted it.
    expect(tab.locator("#messages li.notice")).to_have_count(0)
    assert tab.errors == []


# A hook that answers at once (a cached token) with the next of the tokens the test gives it,
# then the last one again; it counts its calls.
COUNTING_HOOK = """
window.hookCalls = 0;
window.PARLEY_OPTIONS.refreshToken = async () => {
  window.hookCalls += 1;
  return window.hookTokens.length > 1 ? window.hookTokens.shift() : window.hookTokens[0];
};
"""


def test_a_hook_handing_out_expired_tokens_is_asked_once_per_refusal(
    make_app: MakeApp, open_page: OpenPage,
) -> None:
    # The page used to judge tokens by its clock: a hook answering with a token already
    # expired was called again at once, in a loop that froze the tab. Now each token is
    # tried, and the hook asked again only when the server refused the last one.
    server = jwt_app(make_app)
    stale = [mint(f"gus{n}", "*", -30, SECRET) for n in range(3)]
    tab = open_page("about:blank")
    tab.page.context.add_init_script(COUNTING_HOOK + f"window.hookTokens = {json.dumps(stale[1:])};")
    tab.page.goto(f"{server.base}/?room=design#token={stale[0]}")
    expect_state(tab, "sign-in expired")
    # stale[2] given again, the token just refused: nothing usable, so the page stops there.
    assert tab.page.evaluate("window.hookCalls") == 3
    assert [stale.index(next(t for t in stale if t in url)) for url in tab.sockets] == [0, 1, 2]
    expect(tab.locator("#token-form")).to_be_visible()
    assert tab.errors == []


def test_the_server_closing_at_expiry_asks_the_hook_once_and_resumes(
    make_app: MakeApp, open_page: OpenPage,
) -> None:
    server = jwt_app(make_app)
    short = mint("dave", "*", 2, SECRET)  # the server closes the socket 4001 at its exp
    fresh = mint("dave", "*", 3600, SECRET)
    tab = open_page("about:blank")
    tab.page.context.add_init_script(COUNTING_HOOK + f"window.hookTokens = {json.dumps([fresh])};")
    tab.page.goto(f"{server.base}/?room=design#token={short}")
    tab.expect_live()
    tab.page.wait_for_function("() => window.parleyStates.some(s => s.code === 4001)", timeout=WAIT_MS)
    tab.expect_live()
    assert fresh in tab.sockets[-1] and len(tab.sockets) == 2
    assert tab.page.evaluate("window.hookCalls") == 1
    assert tab.page.evaluate("sessionStorage.getItem('parley.token')") == fresh  # a reload keeps it
    tab.send("still here")
    tab.expect_messages(["still here"])
    assert tab.errors == []


def test_without_a_hook_the_page_says_the_server_will_close_then_asks(
    make_app: MakeApp, open_page: OpenPage,
) -> None:
    server = jwt_app(make_app)
    tab = open_page(f"{server.base}/?room=design#token={mint('hal', '*', 3, SECRET)}")
    tab.expect_live()
    # The server closes a socket at its token's exp (4001): the notice must not promise otherwise.
    expect(tab.locator("#messages li.notice")).to_have_text(
        ["Your sign-in token expires soon: the server will then close this connection, "
         "and rejoining will need a fresh token."], timeout=WAIT_MS,
    )
    expect_state(tab, "sign-in expired")
    expect(tab.locator("#token-form")).to_be_visible()
    assert len(tab.sockets) == 1 and tab.errors == []
